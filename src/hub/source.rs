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
use super::{Hub, HubError, StreamKey};

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

/// Why a stream this node does not have cannot be served from elsewhere.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum LocateError {
    /// Nobody has it.
    #[error("{0}")]
    NotFound(String),
    /// Where it is cannot be known now.
    #[error("{0}")]
    Unavailable(String),
    /// The request came through this node already.
    #[error("{0}")]
    Loop(String),
}

/// Finds where a stream nobody publishes here is (the cluster's directory), so that a player asking for one
/// that exists nowhere is told so at once instead of waiting for a source that will never publish.
#[async_trait::async_trait]
pub trait Locator: Send + Sync {
    /// A loop error when `via` (the nodes a request came through) names this node.
    fn check_via(&self, via: &[String]) -> Result<(), LocateError>;

    /// `via`: the nodes the request came through (an edge pulling from this node names itself and those before
    /// it), for loop refusal.
    async fn locate(&self, key: &StreamKey, via: &[String]) -> Result<(), LocateError>;
}

/// Starts sources for the stream names it serves.
pub trait SourceFactory: Send + Sync {
    /// A source for `key`: `None` when this factory does not serve that name (the next one is asked), an
    /// error when it does but cannot start. Called with no hub lock held, so it may read and publish streams;
    /// calls for the same hub are serialized.
    fn start(&self, key: &StreamKey) -> Option<Result<SourceHandle, SourceError>>;
}

impl Hub {
    /// Installs the locator (once: the cluster service at start-up).
    pub fn set_locator(&self, l: Arc<dyn Locator>) {
        if self.0.locator.set(l).is_err() {
            tracing::warn!("a stream locator is installed already");
        }
    }

    /// Checks that a player's stream can be served here before it is subscribed: live here, or found by the
    /// locator (a cluster edge: the directory names an origin that has it). Renditions (`a@opus`) are made
    /// here from their source, which is what is looked up.
    pub async fn locate(&self, key: &StreamKey, via: &[String]) -> Result<(), HubError> {
        let Some(locator) = self.0.locator.get().cloned() else { return Ok(()) };
        let to_hub = |e| match e {
            LocateError::NotFound(m) => HubError::Nowhere(m),
            LocateError::Unavailable(m) => HubError::Unavailable(m),
            LocateError::Loop(m) => HubError::Loop(m),
        };
        // A request that came through here is a loop even for a stream this node has.
        locator.check_via(via).map_err(to_hub)?;
        let source = StreamKey::new(&key.app, crate::names::source_name(&key.name));
        if self.get(&source).is_some_and(|s| !s.is_closed()) {
            return Ok(());
        }
        locator.locate(&source, via).await.map_err(to_hub)
    }

    /// The stream `key`, started on demand if a source serves it: for a reader that looks at the stream before
    /// it subscribes (a WHEP viewer chooses renditions by the stream's codecs). Not found: `Ok(None)`.
    pub fn open_stream(&self, key: &StreamKey) -> Result<Option<Arc<Stream>>, HubError> {
        if let Some(s) = self.get(key).filter(|s| !s.is_closed()) {
            return Ok(Some(s));
        }
        Ok(self.start_on_demand(key)?)
    }

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
