//! Pulls: another server's live stream, read over HTTP-FLV (or RTMP, through the dialer the RTMP adapter
//! installs), published here as a hub stream. Always on (started
//! when created, kept up with retries) or on demand (a hub source factory: started by the stream's first reader,
//! stopped `cluster.edge_idle_secs` after its last, ARCHITECTURE invariant 9). One pull per stream, however many
//! readers it has here. This is what an edge does for the streams of its origin.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::watch;
use tracing::Instrument;

use crate::config::ClusterConfig;
use crate::hub::StreamKey;
use crate::hub::{Hub, Protocol, PublisherInfo, SourceError, SourceFactory, SourceHandle, SourceInfo, SourceKind};
use crate::media::flv::{frame_from_tag, FlvParser};

/// The longest a pull waits between attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// The longest an edge's pull waits between attempts: its origin may be back (or replaced) any moment, and
/// every retry is one directory lookup and one connection, which the cluster affords.
const EDGE_MAX_BACKOFF: Duration = Duration::from_secs(1);

/// The most a source may have sent without completing a tag: FLV's largest tag (a 24-bit size) and its header.
/// More is garbage (a huge DataOffset, a stream that never completes), and is not buffered.
const MAX_PENDING: usize = (1 << 24) + 64 * 1024;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PullError {
    #[error(
        "url {0:?} is neither an HTTP-FLV URL (http://host[:port]/app/stream.flv), an HLS one \
         (http://host[:port]/app/stream.m3u8) nor an RTMP one (rtmp://host[:port]/app/stream)"
    )]
    BadUrl(String),
    #[error("stream {0} is pulled already (DELETE it first)")]
    Exists(String),
    #[error("no pull of stream {0}")]
    NotFound(String),
    #[error("stream {0} is published here: a pull would take it over")]
    Published(String),
}

/// Where a pull is: its state now, how often it tried, what went wrong last.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PullState {
    /// On demand, with no reader: not running.
    Idle,
    Connecting,
    Live,
    /// The last attempt failed; the next one comes after a backoff.
    Retrying,
}

#[derive(Debug, Clone, Serialize)]
pub struct PullStatus {
    pub state: PullState,
    pub attempts: u64,
    pub last_error: Option<String>,
    /// Unix seconds the current (or last) session went live.
    pub live_since: Option<u64>,
    /// Where the current (or last) session reads from, when the pull's URL names no fixed source (an edge's
    /// pull names its stream; the origin is looked up per attempt).
    pub source: Option<String>,
}

struct Pull {
    key: StreamKey,
    url: String,
    on_demand: bool,
    /// How its stream's publisher is shown (`pull`, or `edge` for a cluster edge's pull).
    protocol: Protocol,
    /// Made for one run of an on-demand stream (an edge's pull) and gone with it, not created by the API.
    transient: bool,
    max_backoff: Duration,
    created: SystemTime,
    status: Mutex<PullStatus>,
    bytes_in: AtomicU64,
    /// The running task's off switch (always-on pulls; on-demand ones are stopped through their SourceHandle).
    stop: Mutex<Option<watch::Sender<bool>>>,
}

impl Pull {
    fn set(&self, state: PullState, error: Option<String>) {
        let mut s = self.status.lock();
        s.state = state;
        if error.is_some() {
            s.last_error = error;
        }
        if state == PullState::Live {
            s.live_since = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).ok().map(|d| d.as_secs());
        }
    }

    pub fn json(&self) -> serde_json::Value {
        let s = self.status.lock().clone();
        serde_json::json!({
            "stream": self.key.to_string(),
            "url": crate::names::redact_url(&self.url),
            "on_demand": self.on_demand,
            "kind": self.protocol,
            "source": s.source,
            "state": s.state,
            "attempts": s.attempts,
            "last_error": s.last_error,
            "live_since": s.live_since,
            "bytes_in": self.bytes_in.load(Ordering::Relaxed),
            "created_at": self.created.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
        })
    }
}

/// Every pull of this node.
pub struct Pulls {
    hub: Hub,
    cfg: ClusterConfig,
    pulls: Mutex<BTreeMap<StreamKey, Arc<Pull>>>,
    dialers: parking_lot::RwLock<Vec<Arc<dyn Dialer>>>,
}

/// One FLV tag (or RTMP media message): type, timestamp, body.
pub type SourceTag = (u8, u32, Bytes);

/// Why a source connection failed or ended (its text is the pull's `last_error`).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SourceFailure(pub String);

/// An open connection to a pull source, yielding its tags.
#[async_trait::async_trait]
pub trait TagSource: Send {
    /// The next tag; `None` when the source ended the stream.
    async fn next(&mut self) -> Result<Option<SourceTag>, SourceFailure>;

    /// The URL this connection reads, when it is not the pull's own (an edge's: the origin it found).
    fn from(&self) -> Option<String> {
        None
    }
}

/// Opens sources of one URL scheme (the RTMP adapter installs `rtmp://`; HTTP-FLV is built in).
#[async_trait::async_trait]
pub trait Dialer: Send + Sync {
    /// Whether `url` is a URL this dialer opens (checked when a pull is created).
    fn accepts(&self, url: &str) -> bool;
    async fn open(&self, url: &str, timeout: Duration) -> Result<Box<dyn TagSource>, SourceFailure>;
}

/// Checks a pull source URL: plain HTTP, a path ending in `.flv`.
pub fn check_url(url: &str) -> Result<(), PullError> {
    let bad = || PullError::BadUrl(crate::names::redact_url(url));
    let uri: http::Uri = url.parse().map_err(|_| bad())?;
    if uri.scheme_str() != Some("http") || uri.host().is_none() || !uri.path().ends_with(".flv") {
        return Err(bad());
    }
    Ok(())
}

impl Pulls {
    pub fn new(hub: Hub, cfg: ClusterConfig) -> Arc<Self> {
        let dialers: Vec<Arc<dyn Dialer>> = vec![Arc::new(HttpFlv), Arc::new(super::hls_source::HlsDialer)];
        let pulls = Arc::new(Self {
            hub: hub.clone(),
            cfg,
            pulls: Mutex::new(BTreeMap::new()),
            dialers: parking_lot::RwLock::new(dialers),
        });
        hub.add_source_factory(Arc::new(OnDemand(Arc::downgrade(&pulls))));
        pulls
    }

    /// Adds a dialer for another URL scheme (the RTMP adapter's `rtmp://`).
    pub fn add_dialer(&self, d: Arc<dyn Dialer>) {
        self.dialers.write().push(d);
    }

    fn dialer(&self, url: &str) -> Option<Arc<dyn Dialer>> {
        self.dialers.read().iter().find(|d| d.accepts(url)).cloned()
    }

    /// Adds a pull of `url` as `key`; an always-on one starts at once.
    pub fn create(&self, key: StreamKey, url: String, on_demand: bool) -> Result<serde_json::Value, PullError> {
        let dialer = self.dialer(&url).ok_or_else(|| PullError::BadUrl(crate::names::redact_url(&url)))?;
        let mut pulls = self.pulls.lock();
        if pulls.contains_key(&key) {
            return Err(PullError::Exists(key.to_string()));
        }
        if !on_demand && self.hub.get(&key).is_some_and(|s| !s.is_closed() && s.publisher().is_some()) {
            return Err(PullError::Published(key.to_string()));
        }
        let state = if on_demand { PullState::Idle } else { PullState::Connecting };
        let pull = Arc::new(Pull {
            key: key.clone(),
            url,
            on_demand,
            created: SystemTime::now(),
            status: Mutex::new(PullStatus { state, attempts: 0, last_error: None, live_since: None, source: None }),
            bytes_in: AtomicU64::new(0),
            stop: Mutex::new(None),
            protocol: Protocol::Pull,
            transient: false,
            max_backoff: MAX_BACKOFF,
        });
        if !on_demand {
            let (tx, rx) = watch::channel(false);
            *pull.stop.lock() = Some(tx);
            spawn(self.hub.clone(), self.cfg.clone(), dialer, pull.clone(), rx);
        }
        pulls.insert(key, pull.clone());
        tracing::info!(stream = %pull.key, url = %crate::names::redact_url(&pull.url), on_demand, "pull added");
        Ok(pull.json())
    }

    pub fn list(&self) -> Vec<serde_json::Value> {
        self.pulls.lock().values().map(|p| p.json()).collect()
    }

    /// Prometheus lines: bytes, attempts and whether live, per pull.
    pub fn render_metrics(&self, o: &mut String) {
        use crate::metrics::family;
        let pulls: Vec<_> = self.pulls.lock().values().cloned().collect();
        if pulls.is_empty() {
            return;
        }
        let label = |p: &Pull| format!("stream=\"{}\"", p.key);
        let bytes = pulls.iter().map(|p| (label(p), p.bytes_in.load(Ordering::Relaxed)));
        family(o, "livegate_pull_bytes_total", "counter", "Bytes a pull received from its source.", bytes);
        let attempts = pulls.iter().map(|p| (label(p), p.status.lock().attempts));
        family(o, "livegate_pull_attempts_total", "counter", "Connections a pull made to its source.", attempts);
        let live = pulls.iter().map(|p| (label(p), u64::from(p.status.lock().state == PullState::Live)));
        family(o, "livegate_pull_live", "gauge", "Whether a pull is receiving its source now.", live);
    }

    pub fn get(&self, key: &StreamKey) -> Option<serde_json::Value> {
        self.pulls.lock().get(key).map(|p| p.json())
    }

    /// Starts an edge's pull of `key` through `dialer` (which finds the node to read from per attempt), listed
    /// with the other pulls for as long as the returned handle lives; dropping it stops the pull.
    pub fn start_edge(self: &Arc<Self>, key: &StreamKey, dialer: Arc<dyn Dialer>) -> SourceHandle {
        let pull = Arc::new(Pull {
            key: key.clone(),
            url: format!("cluster:{key}"),
            on_demand: true,
            protocol: Protocol::Edge,
            transient: true,
            max_backoff: EDGE_MAX_BACKOFF,
            created: SystemTime::now(),
            status: Mutex::new(PullStatus {
                state: PullState::Connecting,
                attempts: 0,
                last_error: None,
                live_since: None,
                source: None,
            }),
            bytes_in: AtomicU64::new(0),
            stop: Mutex::new(None),
        });
        self.pulls.lock().insert(key.clone(), pull.clone());
        let (tx, rx) = watch::channel(false);
        spawn(self.hub.clone(), self.cfg.clone(), dialer, pull.clone(), rx);
        let info = SourceInfo { kind: SourceKind::Pull, from: pull.url.clone() };
        let timeout = Duration::from_secs_f64(self.cfg.pull_timeout_secs);
        let linger = Duration::from_secs_f64(self.cfg.edge_idle_secs);
        let pulls = Arc::downgrade(self);
        SourceHandle::new(info, timeout, linger, move || {
            let _ = tx.send(true);
            if let Some(pulls) = pulls.upgrade() {
                let mut map = pulls.pulls.lock();
                if map.get(&pull.key).is_some_and(|p| Arc::ptr_eq(p, &pull)) {
                    map.remove(&pull.key);
                }
            }
        })
    }

    /// Removes a pull: it stops, and its stream's readers wait out the reconnect grace like any publisher's.
    pub fn delete(&self, key: &StreamKey) -> Result<(), PullError> {
        if self.pulls.lock().get(key).is_some_and(|p| p.transient) {
            // An edge's pull lives and ends with its readers, not by the API.
            return Err(PullError::NotFound(key.to_string()));
        }
        let pull = self.pulls.lock().remove(key).ok_or_else(|| PullError::NotFound(key.to_string()))?;
        if let Some(tx) = pull.stop.lock().take() {
            let _ = tx.send(true);
        }
        if pull.on_demand {
            // A running on-demand pull belongs to its stream's source handle: ending the publisher ends it.
            let _ = self.hub.kick_publisher(key, "the pull was deleted");
        }
        tracing::info!(stream = %key, "pull deleted");
        Ok(())
    }
}

/// The hub's view of the on-demand pulls.
struct OnDemand(std::sync::Weak<Pulls>);

impl SourceFactory for OnDemand {
    fn start(&self, key: &StreamKey) -> Option<Result<SourceHandle, SourceError>> {
        let pulls = self.0.upgrade()?;
        let pull = pulls.pulls.lock().get(key).filter(|p| p.on_demand && !p.transient).cloned()?;
        let dialer = pulls.dialer(&pull.url)?;
        let (tx, rx) = watch::channel(false);
        pull.set(PullState::Connecting, None);
        spawn(pulls.hub.clone(), pulls.cfg.clone(), dialer, pull.clone(), rx);
        let info = SourceInfo { kind: SourceKind::Pull, from: crate::names::redact_url(&pull.url) };
        let timeout = Duration::from_secs_f64(pulls.cfg.pull_timeout_secs);
        let linger = Duration::from_secs_f64(pulls.cfg.edge_idle_secs);
        let p = pull.clone();
        Some(Ok(SourceHandle::new(info, timeout, linger, move || {
            let _ = tx.send(true);
            p.set(PullState::Idle, None);
        })))
    }
}

fn spawn(hub: Hub, cfg: ClusterConfig, dialer: Arc<dyn Dialer>, pull: Arc<Pull>, stop: watch::Receiver<bool>) {
    let span = tracing::info_span!("pull", stream = %pull.key);
    tokio::spawn(run(hub, cfg, dialer, pull, stop).instrument(span));
}

/// Keeps the pull up until stopped: an attempt, and after a failure a backoff (0.5 s doubling to 10 s; back to
/// 0.5 s after a session that was live).
async fn run(hub: Hub, cfg: ClusterConfig, dialer: Arc<dyn Dialer>, pull: Arc<Pull>, mut stop: watch::Receiver<bool>) {
    let timeout = Duration::from_secs_f64(cfg.pull_timeout_secs);
    let mut backoff = Duration::from_millis(500);
    loop {
        if *stop.borrow() {
            return;
        }
        pull.status.lock().attempts += 1;
        pull.set(PullState::Connecting, None);
        let went_live = tokio::select! {
            r = session(&hub, dialer.as_ref(), &pull, timeout) => match r {
                Ok(()) => {
                    pull.set(PullState::Retrying, Some("the source ended the stream".into()));
                    true
                }
                Err(Failure { live, reason }) => {
                    tracing::info!(%reason, "pull attempt failed");
                    pull.set(PullState::Retrying, Some(reason));
                    live
                }
            },
            _ = stop.changed() => return,
        };
        if went_live {
            backoff = Duration::from_millis(500);
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.changed() => return,
        }
        backoff = (backoff * 2).min(pull.max_backoff);
    }
}

/// Why a session ended, and whether it had been live.
struct Failure {
    live: bool,
    reason: String,
}

fn failed(reason: impl Into<String>) -> Failure {
    Failure { live: false, reason: reason.into() }
}

/// One connection to the source: open it, publish, feed its tags to the hub until it ends.
async fn session(hub: &Hub, dialer: &dyn Dialer, pull: &Pull, timeout: Duration) -> Result<(), Failure> {
    let mut source = dialer.open(&pull.url, timeout).await.map_err(|e| failed(e.0))?;
    if let Some(from) = source.from() {
        pull.status.lock().source = Some(crate::names::redact_url(&from));
    }
    let guard = hub.register_client(pull.protocol, None);
    let info = PublisherInfo {
        client_id: guard.handle.id,
        protocol: pull.protocol,
        addr: None,
        param: format!("pull={}", crate::names::redact_url(&pull.url)),
    };
    let mut publisher = hub
        .publish(pull.key.clone(), info, guard.handle.clone())
        .map_err(|e| failed(format!("cannot publish: {e}")))?;
    let mut live = false;
    loop {
        let next = tokio::select! {
            t = tokio::time::timeout(timeout, source.next()) => t,
            _ = guard.handle.notify.notified() => {
                let why = guard.handle.kicked().unwrap_or_default();
                return Err(Failure { live, reason: format!("kicked: {why}") });
            }
        };
        let (tag_type, timestamp, body) = match next {
            Err(_) => return Err(Failure { live, reason: format!("the source sent nothing for {timeout:?}") }),
            Ok(Ok(Some(t))) => t,
            Ok(Ok(None)) if live => return Ok(()),
            Ok(Ok(None)) => return Err(failed("the source ended the stream before any media")),
            Ok(Err(e)) => return Err(Failure { live, reason: e.0 }),
        };
        pull.bytes_in.fetch_add(body.len() as u64 + 11, Ordering::Relaxed);
        guard.handle.bytes_in.fetch_add(body.len() as u64 + 11, Ordering::Relaxed);
        match frame_from_tag(tag_type, 0, body) {
            Ok(Some(f)) => {
                if !live {
                    live = true;
                    pull.set(PullState::Live, None);
                    tracing::info!("pull live");
                }
                publisher.push_raw(f, timestamp, Instant::now());
            }
            Ok(None) => {}
            Err(e) => return Err(Failure { live, reason: format!("the source sent media livegate refuses: {e}") }),
        }
    }
}

/// HTTP-FLV sources: a GET whose body is an FLV stream.
struct HttpFlv;

#[async_trait::async_trait]
impl Dialer for HttpFlv {
    fn accepts(&self, url: &str) -> bool {
        check_url(url).is_ok()
    }

    async fn open(&self, url: &str, timeout: Duration) -> Result<Box<dyn TagSource>, SourceFailure> {
        open_flv(url, &[], timeout).await
    }
}

/// GETs an HTTP-FLV stream with extra request `headers`; the source of its tags. An error answer's JSON
/// `detail` (livegate's, when the source is another livegate) is in the failure.
pub async fn open_flv(
    url: &str,
    headers: &[(&str, &str)],
    timeout: Duration,
) -> Result<Box<dyn TagSource>, SourceFailure> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let mut req = http::Request::get(url)
        .header(http::header::USER_AGENT, concat!("livegate/", env!("CARGO_PKG_VERSION"), " pull"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Empty::new()).map_err(|e| SourceFailure(format!("bad request: {e}")))?;
    let resp = tokio::time::timeout(timeout, client.request(req))
        .await
        .map_err(|_| SourceFailure(format!("no answer within {timeout:?}")))?
        .map_err(|e| SourceFailure(format!("cannot reach the source: {e}")))?;
    let status = resp.status();
    if !status.is_success() {
        // The body of an error answer is small JSON; read at most 4 KiB of it, briefly.
        let body = tokio::time::timeout(
            Duration::from_secs(1),
            http_body_util::Limited::new(resp.into_body(), 4096).collect(),
        )
        .await
        .ok()
        .and_then(Result::ok)
        .map(|b| b.to_bytes());
        let detail = body
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|v| v["detail"].as_str().map(str::to_owned));
        return Err(SourceFailure(match detail {
            Some(d) => format!("the source answered {status}: {d}"),
            None => format!("the source answered {status}"),
        }));
    }
    Ok(Box::new(FlvBody { body: resp.into_body(), parser: FlvParser::new() }))
}

struct FlvBody {
    body: hyper::body::Incoming,
    parser: FlvParser,
}

#[async_trait::async_trait]
impl TagSource for FlvBody {
    async fn next(&mut self) -> Result<Option<SourceTag>, SourceFailure> {
        loop {
            match self.parser.next_tag() {
                Ok(Some(t)) => return Ok(Some((t.tag_type, t.timestamp, t.body))),
                Ok(None) => {}
                Err(e) => return Err(SourceFailure(format!("the source sent bad FLV: {e}"))),
            }
            let data = match self.body.frame().await {
                None => return Ok(None),
                Some(Err(e)) => return Err(SourceFailure(format!("reading the source: {e}"))),
                Some(Ok(f)) => match f.into_data() {
                    Ok(d) => d,
                    Err(_) => continue,
                },
            };
            self.parser.feed(&data);
            if self.parser.pending() > MAX_PENDING {
                let n = self.parser.pending();
                return Err(SourceFailure(format!("the source sent bad FLV: {n} bytes without a complete tag")));
            }
        }
    }
}
