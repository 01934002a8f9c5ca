//! Relays: a hub stream pushed to another RTMP server (a CDN, an ingest point, another livegate), kept up with
//! retries while it exists. The outbound half of the RTMP adapter: it reads the stream like a player and
//! publishes it like OBS, sending each packet's shared RTMP chunks as they are (serialize once, send many).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::watch;
use tracing::Instrument;

use super::client::{ClientError, RtmpClient, RtmpUrl};
use crate::events::Event;
use crate::hub::packet::{RTMP_MEDIA_STREAM_ID, RTMP_OUT_CHUNK_SIZE};
use crate::hub::{Audience, CachePolicy, Hub, Protocol, Purpose, StreamKey};
use crate::media::MediaKind;

const MAX_BACKOFF: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error(transparent)]
    BadUrl(#[from] ClientError),
    #[error("stream {0} is relayed to that URL already")]
    Exists(String),
    #[error("no relay {0}")]
    NotFound(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RelayState {
    /// The stream is not live here: the relay waits for it.
    Waiting,
    Connecting,
    Live,
    Retrying,
}

struct Relay {
    id: String,
    key: StreamKey,
    url: String,
    created: SystemTime,
    state: Mutex<(RelayState, Option<String>)>,
    attempts: AtomicU64,
    bytes_out: AtomicU64,
    stop: watch::Sender<bool>,
    /// Made by the app's `forward` (ends with its stream) rather than through the API.
    forward: bool,
}

impl Relay {
    fn set(&self, state: RelayState, error: Option<String>) {
        let mut s = self.state.lock();
        s.0 = state;
        if error.is_some() {
            s.1 = error;
        }
    }

    fn json(&self) -> serde_json::Value {
        let (state, last_error) = self.state.lock().clone();
        serde_json::json!({
            "id": self.id,
            "stream": self.key.to_string(),
            "url": crate::names::redact_url(&self.url),
            "state": state,
            "attempts": self.attempts.load(Ordering::Relaxed),
            "last_error": last_error,
            "bytes_out": self.bytes_out.load(Ordering::Relaxed),
            "forward": self.forward,
            "created_at": self.created.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
        })
    }
}

pub struct Relays {
    hub: Hub,
    config: Arc<crate::config::Config>,
    relays: Mutex<BTreeMap<String, Arc<Relay>>>,
    next: AtomicU64,
}

/// The target of a forward: the base with the stream's name appended before its query.
pub fn forward_url(base: &str, stream: &str) -> String {
    match base.split_once('?') {
        Some((b, q)) => format!("{}/{stream}?{q}", b.trim_end_matches('/')),
        None => format!("{}/{stream}", base.trim_end_matches('/')),
    }
}

impl Relays {
    pub fn new(hub: Hub, config: Arc<crate::config::Config>) -> Arc<Self> {
        Arc::new(Self { hub, config, relays: Mutex::new(BTreeMap::new()), next: AtomicU64::new(1) })
    }

    /// Relays each stream of an app with `forward` bases from its publish until it closes.
    pub fn start(self: &Arc<Self>) {
        if self.config.apps.values().all(|a| a.forward.is_empty()) {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            let mut events = this.hub.events().subscribe();
            loop {
                match events.recv().await {
                    // An edge's copy of another node's stream is forwarded where it is published.
                    Ok(Event::Publish { stream, protocol, .. })
                        if !crate::names::is_rendition(&stream.name) && protocol != Protocol::Edge =>
                    {
                        let bases = this.config.app(&stream.app).map(|a| a.forward.clone()).unwrap_or_default();
                        for base in bases {
                            let url = forward_url(&base, &stream.name);
                            // A publisher back within its grace finds its forwards still there.
                            if let Err(e) = this.create_as(stream.clone(), url, true) {
                                tracing::debug!(stream = %stream, error = %e, "forward not added");
                            }
                        }
                    }
                    Ok(Event::StreamClosed { stream }) => {
                        let ids: Vec<String> = this
                            .relays
                            .lock()
                            .values()
                            .filter(|r| r.forward && r.key == stream)
                            .map(|r| r.id.clone())
                            .collect();
                        for id in ids {
                            let _ = this.delete(&id);
                        }
                    }
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
        });
    }

    /// Relays `key` to `url` from now on (waiting for the stream if it is not live).
    pub fn create(&self, key: StreamKey, url: String) -> Result<serde_json::Value, RelayError> {
        self.create_as(key, url, false)
    }

    fn create_as(&self, key: StreamKey, url: String, forward: bool) -> Result<serde_json::Value, RelayError> {
        RtmpUrl::parse(&url)?;
        let mut relays = self.relays.lock();
        if relays.values().any(|r| r.key == key && r.url == url) {
            return Err(RelayError::Exists(key.to_string()));
        }
        let id = format!("r{}", self.next.fetch_add(1, Ordering::Relaxed));
        let (stop, rx) = watch::channel(false);
        let relay = Arc::new(Relay {
            id: id.clone(),
            key,
            url,
            created: SystemTime::now(),
            state: Mutex::new((RelayState::Waiting, None)),
            attempts: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            stop,
            forward,
        });
        let span = tracing::info_span!("relay", stream = %relay.key, id = %id);
        tokio::spawn(run(self.hub.clone(), relay.clone(), rx).instrument(span));
        relays.insert(id, relay.clone());
        Ok(relay.json())
    }

    pub fn list(&self) -> Vec<serde_json::Value> {
        self.relays.lock().values().map(|r| r.json()).collect()
    }

    /// Prometheus lines: bytes, attempts and whether live, per relay.
    pub fn render_metrics(&self, o: &mut String) {
        use crate::metrics::family;
        let relays: Vec<_> = self.relays.lock().values().cloned().collect();
        if relays.is_empty() {
            return;
        }
        let label = |r: &Relay| format!("id=\"{}\",stream=\"{}\"", r.id, r.key);
        let bytes = relays.iter().map(|r| (label(r), r.bytes_out.load(Ordering::Relaxed)));
        family(o, "livegate_relay_bytes_total", "counter", "Bytes a relay sent to its target.", bytes);
        let attempts = relays.iter().map(|r| (label(r), r.attempts.load(Ordering::Relaxed)));
        family(o, "livegate_relay_attempts_total", "counter", "Sessions a relay opened to its target.", attempts);
        let live = relays.iter().map(|r| (label(r), u64::from(r.state.lock().0 == RelayState::Live)));
        family(o, "livegate_relay_live", "gauge", "Whether a relay is pushing now.", live);
    }

    pub fn get(&self, id: &str) -> Option<serde_json::Value> {
        self.relays.lock().get(id).map(|r| r.json())
    }

    pub fn delete(&self, id: &str) -> Result<(), RelayError> {
        let r = self.relays.lock().remove(id).ok_or_else(|| RelayError::NotFound(id.to_owned()))?;
        let _ = r.stop.send(true);
        Ok(())
    }
}

/// Waits for the stream, pushes it while it lasts, retries after failures (1 s doubling to 30 s; a failure is
/// also an `on_relay_failed` event).
async fn run(hub: Hub, relay: Arc<Relay>, mut stop: watch::Receiver<bool>) {
    let url = match RtmpUrl::parse(&relay.url) {
        Ok(u) => u,
        Err(_) => return,
    };
    let mut backoff = Duration::from_secs(1);
    loop {
        let live = hub.get(&relay.key).is_some_and(|s| !s.is_closed() && s.publisher().is_some());
        if !live {
            relay.set(RelayState::Waiting, None);
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(500)) => continue,
                _ = stop.changed() => return,
            }
        }
        relay.attempts.fetch_add(1, Ordering::Relaxed);
        relay.set(RelayState::Connecting, None);
        let r = tokio::select! {
            r = push(&hub, &relay, &url) => r,
            _ = stop.changed() => return,
        };
        let (went_live, failure) = match r {
            Ok(()) => (true, None),
            Err(Failure { live, error }) => (live, Some(error)),
        };
        let reason = failure.as_ref().map_or_else(|| "the stream ended".to_owned(), |e| e.to_string());
        tracing::info!(%reason, "relay session ended");
        relay.set(RelayState::Retrying, Some(reason.clone()));
        // The stream ending is no failure of the relay; anything else is.
        if failure.is_some() {
            hub.events().send(Event::RelayFailed {
                stream: relay.key.clone(),
                url: crate::names::redact_url(&relay.url),
                error: reason,
            });
        }
        if went_live {
            backoff = Duration::from_secs(1);
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.changed() => return,
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

struct Failure {
    live: bool,
    error: ClientError,
}

/// One session: connect, publish, then every packet of the stream until it ends or the server drops us.
async fn push(hub: &Hub, relay: &Relay, url: &RtmpUrl) -> Result<(), Failure> {
    let not_live = |error| Failure { live: false, error };
    let mut c = RtmpClient::connect(url, CONNECT_TIMEOUT).await.map_err(not_live)?;
    c.set_chunk_size(RTMP_OUT_CHUNK_SIZE).await.map_err(not_live)?;
    let sid = c.publish(url).await.map_err(not_live)?;
    let guard = hub.register_client(Protocol::Relay, None);
    let audience = Audience::Internal(Purpose::Relay { to: crate::names::redact_url(&relay.url) });
    // A relay follows live like a player in the default mode: a target that cannot take the rate skips ahead.
    let policy = CachePolicy::internal(Duration::from_secs(3));
    let mut reader = hub
        .subscribe_as(&relay.key, Protocol::Relay, policy, guard.handle.clone(), audience)
        .map_err(|e| not_live(ClientError::Refused(e.to_string())))?;
    relay.set(RelayState::Live, None);
    tracing::info!("relay live");
    let mut batch = Vec::new();
    loop {
        tokio::select! {
            r = reader.next_batch(&mut batch) => {
                if r.is_err() {
                    return Ok(());
                }
            }
            r = c.service() => {
                r.map_err(|error| Failure { live: true, error })?;
                continue;
            }
        }
        for p in batch.drain(..) {
            if p.frame.kind == MediaKind::Data {
                continue; // metadata as livegate stores it is not what a publisher sends (@setDataFrame)
            }
            let n = if sid == RTMP_MEDIA_STREAM_ID {
                // The message livegate's RTMP players get, chunked once for all of them.
                let chunks = p.rtmp_chunks();
                c.write(chunks).await.map_err(|error| Failure { live: true, error })?;
                chunks.len()
            } else {
                let (prefix, plen) = crate::media::flv::body_prefix(&p.frame);
                let csid = if p.frame.kind == MediaKind::Audio { 4 } else { 6 };
                let mut out = Vec::new();
                let ty = crate::media::flv::tag_type(&p.frame);
                let body: [&[u8]; 2] = [&prefix[..plen], &p.frame.payload];
                crate::media::rtmp_chunk::encode_message(
                    &mut out,
                    c.out_chunk,
                    csid,
                    p.frame.dts as u32,
                    ty,
                    sid,
                    &body,
                );
                c.write(&out).await.map_err(|error| Failure { live: true, error })?;
                out.len()
            };
            relay.bytes_out.fetch_add(n as u64, Ordering::Relaxed);
            reader.add_bytes_out(n);
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_forward_appends_the_stream_name_before_the_query() {
        assert_eq!(super::forward_url("rtmp://cdn/live", "cam"), "rtmp://cdn/live/cam");
        assert_eq!(super::forward_url("rtmp://cdn/live/", "cam"), "rtmp://cdn/live/cam");
        assert_eq!(super::forward_url("rtmp://cdn:1936/live?key=1", "cam"), "rtmp://cdn:1936/live/cam?key=1");
    }
}
