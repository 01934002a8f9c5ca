//! On-demand sources (ARCHITECTURE invariant 9): something that publishes a stream nobody publishes, started
//! by the stream's first reader and stopped a while after its last one left (MediaMTX's `sourceOnDemand`).
//!
//! The hub asks its [`SourceFactory`]s, in the order they were added, when a reader wants a stream that has no
//! publisher. A factory that serves the name starts a source and hands back a [`SourceHandle`]; the hub makes
//! the stream (waiting for its publisher, so the reader can attach at once) and owns the handle from then on.
//! One watcher per on-demand stream decides its end: no publish within the source's start timeout, or no
//! reader for its linger time. Either way the hub drops the handle (which stops the source) and closes the
//! stream: this is the one place an on-demand source is reaped.
//!
//! Renditions (`live/a@opus`, `@cb`, `@vp8`) are on-demand sources of their derived streams; edge pulls and
//! room mixes plug in the same way.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use super::stream::Stream;
use super::{Hub, StreamKey};

/// What kind of source publishes an on-demand stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceKind {
    /// A transcoder making a rendition of another stream.
    Rendition,
    /// A pull from another server.
    Pull,
}

/// How an on-demand source is shown in the API.
#[derive(Debug, Clone, Serialize)]
pub struct SourceInfo {
    pub kind: SourceKind,
    /// Where its media comes from: the source stream of a rendition, the URL of a pull (without secrets).
    pub from: String,
}

/// A running source; dropping it stops the source.
pub struct SourceHandle {
    pub info: SourceInfo,
    /// How long the source may take to publish before its readers are told the stream is not there.
    pub start_timeout: Duration,
    /// How long the source outlives its last reader (a reader coming back within it finds it running).
    pub linger: Duration,
    stop: Option<Box<dyn FnOnce() + Send + Sync>>,
}

impl SourceHandle {
    pub fn new(
        info: SourceInfo,
        start_timeout: Duration,
        linger: Duration,
        stop: impl FnOnce() + Send + Sync + 'static,
    ) -> Self {
        Self { info, start_timeout, linger, stop: Some(Box::new(stop)) }
    }
}

impl Drop for SourceHandle {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            stop();
        }
    }
}

impl std::fmt::Debug for SourceHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SourceHandle").field("info", &self.info).finish()
    }
}

/// Why a source that should serve a stream could not start.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("{kind:?} source for {stream} could not start: {detail}")]
pub struct SourceError {
    pub kind: SourceKind,
    pub stream: String,
    pub detail: String,
}

/// Starts sources for the stream names it serves.
pub trait SourceFactory: Send + Sync {
    /// A source for `key`: `None` when this factory does not serve that name (the next one is asked), an
    /// error when it does but cannot start. Called with no hub lock held, so it may read and publish streams;
    /// calls for the same hub are serialized.
    fn start(&self, key: &StreamKey) -> Option<Result<SourceHandle, SourceError>>;
}

impl Hub {
    /// Adds a factory asked for streams nobody publishes (after the ones added before it).
    pub fn add_source_factory(&self, f: Arc<dyn SourceFactory>) {
        self.0.factories.write().push(f);
    }

    /// Starts an on-demand source for `key` if a factory serves it. `Ok(None)`: no factory does.
    pub(super) fn start_on_demand(&self, key: &StreamKey) -> Result<Option<Arc<Stream>>, SourceError> {
        // One start at a time: two readers arriving together must not start two sources.
        let _starting = self.0.starting.lock();
        if let Some(s) = self.get(key).filter(|s| !s.is_closed()) {
            return Ok(Some(s));
        }
        let factories = self.0.factories.read().clone();
        for f in factories {
            let Some(started) = f.start(key) else { continue };
            let handle = started?;
            // The source may have published already (a transcoder does so before returning).
            let stream = self.get_or_create(key);
            tracing::info!(stream = %key, kind = ?handle.info.kind, from = %handle.info.from, "on-demand source started");
            let (start_timeout, linger) = (handle.start_timeout, handle.linger);
            *stream.on_demand.lock() = Some(handle);
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(self.clone().watch_on_demand(stream.clone(), start_timeout, linger));
            }
            return Ok(Some(stream));
        }
        Ok(None)
    }

    /// Ends an on-demand stream that never got its publisher, or whose readers have all been gone for `linger`.
    async fn watch_on_demand(self, stream: Arc<Stream>, start_timeout: Duration, linger: Duration) {
        let started = tokio::time::Instant::now();
        let reason = loop {
            if stream.is_closed() {
                break "stream closed";
            }
            let changed = stream.readers_changed.notified();
            let published = stream.last_dts().is_some() || stream.publisher().is_some();
            if !published {
                if started.elapsed() >= start_timeout {
                    break "the source did not publish in time";
                }
                let _ = tokio::time::timeout_at(started + start_timeout, changed).await;
                continue;
            }
            if stream.reader_count() > 0 {
                changed.await;
                continue;
            }
            // Nobody reads: wait out the linger unless a reader comes back.
            if tokio::time::timeout(linger, changed).await.is_err() && stream.reader_count() == 0 {
                break "no readers";
            }
        };
        let handle = stream.on_demand.lock().take();
        drop(handle);
        tracing::info!(stream = %stream.key, %reason, "on-demand source stopped");
        self.close_now(&stream);
    }
}
