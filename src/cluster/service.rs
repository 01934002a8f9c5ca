//! This node in the origin/edge cluster (docs/cluster.md): it keeps its directory entries alive, holds one
//! publisher per stream cluster-wide, and on an edge serves streams it does not have by pulling them from the
//! node that does.
//!
//! - **Origin** (`origin`, `both`): a publish is claimed in the directory before it is accepted (refused with
//!   the holder's id when another node has the stream; taken over when `hub.allow_takeover`); a heartbeat
//!   renews every stream published here three times per TTL and writes the node's record with its load; an
//!   unpublish releases the stream at once (the publisher may come back on another origin; readers here wait
//!   out the reconnect grace as always).
//! - **Edge** (`edge`, `both`): a player's stream that is not here is looked up first (404 at once when no
//!   origin has it, 503 when the directory cannot say, 508 for a loop), then pulled on demand over HTTP-FLV
//!   from the origin's advertised address (or from `cluster.upstream`), one pull per stream however many
//!   readers, stopped `edge_idle_secs` after the last. Each attempt looks the origin up again, so when an
//!   origin dies and its publisher comes back on another one the pull follows it within a TTL.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;

use super::directory::{Claim, Directory, DirectoryError, NodeLoad, NodeRecord, RoomEntry, RoomRef};
use super::pull::{open_flv, Dialer, Pulls, SourceFailure, TagSource};
use crate::access::{Access, ClaimRefusal, PublishClaim};
use crate::config::{Advertise, ClusterConfig, Config, NodeRole};
use crate::events::Event;
use crate::hub::{Hub, LocateError, Locator, Protocol, SourceError, SourceFactory, SourceHandle, StreamKey};

/// The request header naming the nodes an edge's pull came through (loop refusal).
pub const VIA_HEADER: &str = "x-livegate-via";

/// The tag of another node's pull of `key` here (its HTTP-FLV connection), by which it is put out when this node
/// stops holding the stream: the edge then looks the stream up again at once instead of waiting out this
/// node's reconnect grace for a publisher that went to another origin.
pub fn edge_reader_tag(key: &StreamKey) -> String {
    format!("cluster-edge:{key}")
}

/// Why the cluster could not start.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(transparent)]
    Directory(#[from] DirectoryError),
    #[error("cluster.advertise.{0} is needed: {1} listens on every address, so other nodes cannot tell which")]
    Advertise(&'static str, std::net::SocketAddr),
}

pub struct Cluster {
    role: NodeRole,
    node_id: String,
    advertise: Advertise,
    upstream: String,
    ttl: Duration,
    allow_takeover: bool,
    dir: Directory,
    hub: Hub,
    config: Arc<Config>,
    pulls: Arc<Pulls>,
    /// Whether the directory answered the last call.
    reachable: AtomicBool,
    started_ms: u64,
    load: Mutex<LoadSampler>,
    /// The `via` of the request that made an edge pull start, for the pull to pass on (loop refusal).
    via: Mutex<HashMap<StreamKey, Vec<String>>>,
    /// The rooms open on this node (installed by the process wiring, which knows the room service).
    open_rooms: std::sync::OnceLock<Box<dyn Fn() -> Vec<RoomRef> + Send + Sync>>,
    /// Stream lookups for players: found, not found, directory error.
    lookups: [std::sync::atomic::AtomicU64; 3],
}

/// Where a room lives.
#[derive(Debug, Clone)]
pub enum RoomHome {
    /// On this node (claimed for it now, if it was nowhere).
    Here,
    /// On another node, alive: members enter there.
    Elsewhere(NodeRecord),
}

/// Why a room call could not be sent to the room's node.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("node {node} did not answer: {detail}")]
    Unreachable { node: String, detail: String },
}

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// `advertise` with empty addresses filled from the bound ones, when those name a host.
pub fn resolve_advertise(
    cfg: &ClusterConfig,
    rtmp: std::net::SocketAddr,
    http: std::net::SocketAddr,
) -> Result<Advertise, ClusterError> {
    let mut a = cfg.advertise.clone();
    if a.http.is_empty() {
        if http.ip().is_unspecified() {
            return Err(ClusterError::Advertise("http", http));
        }
        a.http = format!("http://{http}");
    }
    if a.rtmp.is_empty() && !rtmp.ip().is_unspecified() {
        a.rtmp = format!("rtmp://{rtmp}");
    }
    a.http = a.http.trim_end_matches('/').to_owned();
    a.rtmp = a.rtmp.trim_end_matches('/').to_owned();
    Ok(a)
}

impl Cluster {
    /// Joins the cluster `config.cluster` names, if it names one: connects to the directory (an error names its
    /// URL), installs the publish claim, the locator and the edge's source, and starts the heartbeat.
    pub async fn start(
        config: Arc<Config>,
        hub: Hub,
        access: &Access,
        pulls: Arc<Pulls>,
        advertise: Advertise,
    ) -> Result<Option<Arc<Self>>, ClusterError> {
        let cfg = &config.cluster;
        let Some(role) = cfg.role else { return Ok(None) };
        let dir = Directory::connect(cfg).await?;
        let this = Arc::new(Self {
            role,
            node_id: cfg.node_id.clone(),
            advertise,
            upstream: cfg.upstream.trim_end_matches('/').to_owned(),
            ttl: Duration::from_secs_f64(cfg.ttl_secs),
            allow_takeover: config.hub.allow_takeover,
            dir,
            hub: hub.clone(),
            config: config.clone(),
            pulls,
            reachable: AtomicBool::new(true),
            started_ms: unix_ms(),
            load: Mutex::new(LoadSampler::new()),
            via: Mutex::new(HashMap::new()),
            open_rooms: std::sync::OnceLock::new(),
            lookups: Default::default(),
        });
        access.set_claim(this.clone());
        hub.set_locator(this.clone());
        if role.pulls() {
            hub.add_source_factory(Arc::new(EdgeSource(Arc::downgrade(&this))));
        }
        this.heartbeat_once().await;
        tokio::spawn(this.clone().heartbeat());
        tokio::spawn(this.clone().follow_events());
        tracing::info!(node = %this.node_id, role = ?role, directory = %this.dir.url(), http = %this.advertise.http,
            "joined the cluster");
        Ok(Some(this))
    }

    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// Streams whose publisher is here and which the directory should say are here: not an edge's copy, not a
    /// rendition (every edge makes its own).
    fn origin_streams(&self) -> Vec<StreamKey> {
        if !self.role.publishes() {
            return Vec::new();
        }
        self.hub
            .streams()
            .into_iter()
            .filter(|s| !s.is_closed() && !s.key.name.contains('@'))
            .filter(|s| s.publisher().is_some_and(|p| p.protocol != Protocol::Edge))
            .map(|s| s.key.clone())
            .collect()
    }

    fn directory_result<T>(&self, r: Result<T, DirectoryError>) -> Result<T, DirectoryError> {
        let ok = r.is_ok();
        let was = self.reachable.swap(ok, Ordering::AcqRel);
        match (&r, was) {
            (Err(e), true) => tracing::warn!(error = %e, "cluster directory lost: serving what is here"),
            (Ok(_), false) => tracing::info!(directory = %self.dir.url(), "cluster directory back"),
            _ => {}
        }
        r
    }

    fn record(&self, load: NodeLoad) -> NodeRecord {
        NodeRecord {
            id: self.node_id.clone(),
            role: self.role,
            http: self.advertise.http.clone(),
            rtmp: self.advertise.rtmp.clone(),
            load,
            heartbeat_ms: unix_ms(),
            started_ms: self.started_ms,
            version: env!("CARGO_PKG_VERSION").into(),
        }
    }

    /// One heartbeat: the node's record, and its streams renewed (one taken over by another node loses its
    /// publisher here).
    async fn heartbeat_once(&self) {
        let load = self.load.lock().sample(&self.hub);
        let r = self.dir.heartbeat(&self.record(load)).await;
        if self.directory_result(r).is_err() {
            return;
        }
        let mine = self.origin_streams();
        let r = self.dir.renew(&mine).await;
        let Ok(lost) = self.directory_result(r) else { return };
        for (key, holder) in lost {
            tracing::info!(stream = %key, %holder, "another node took the stream over");
            let _ = self.hub.kick_publisher(&key, &format!("another publisher took the stream over on node {holder}"));
            self.hub.kick_tagged(&edge_reader_tag(&key), &format!("the stream moved to node {holder}"));
        }
        let rooms = self.open_rooms.get().map(|f| f()).unwrap_or_default();
        let r = self.dir.renew_rooms(&rooms).await;
        if let Ok(lost) = self.directory_result(r) {
            for (room, holder) in lost {
                // Two nodes opened the room while the directory could not tell them apart (an outage): new
                // members go to the directory's node; the ones here stay until they leave.
                tracing::warn!(app = room.app, room = %room.id, %holder, "room is open on another node too");
            }
        }
    }

    /// Installs what lists the rooms open here (once, at start-up).
    pub fn set_open_rooms(&self, f: impl Fn() -> Vec<RoomRef> + Send + Sync + 'static) {
        let _ = self.open_rooms.set(Box::new(f));
    }

    /// Where room `room` lives, claiming it for this node when it lives nowhere (or on a node that is gone). A
    /// node that takes no publishers sends a new room to the least loaded origin.
    pub async fn room_home(&self, room: &RoomRef) -> Result<RoomHome, DirectoryError> {
        let r = self.dir.room_node(room).await;
        let takeover = match self.directory_result(r)? {
            RoomEntry::Alive(node) if node.id == self.node_id => return Ok(RoomHome::Here),
            RoomEntry::Alive(node) => return Ok(RoomHome::Elsewhere(node)),
            RoomEntry::Gone { .. } => true,
            RoomEntry::Nowhere => false,
        };
        if !self.role.publishes() {
            return self.least_loaded_origin().await.map(RoomHome::Elsewhere);
        }
        let r = self.dir.claim_room(room, takeover).await;
        match self.directory_result(r)? {
            Claim::Claimed | Claim::TakenOver { .. } => Ok(RoomHome::Here),
            // Another node claimed it a moment ago.
            Claim::Held { by } => match self.dir.node(&by).await? {
                Some(node) => Ok(RoomHome::Elsewhere(node)),
                None => Ok(RoomHome::Here),
            },
        }
    }

    /// Records a room just opened here (one with a server-assigned id).
    pub async fn room_opened(&self, room: &RoomRef) {
        let r = self.dir.claim_room(room, false).await;
        let _ = self.directory_result(r);
    }

    /// Whether this node may open rooms (it takes publishers).
    pub fn hosts_rooms(&self) -> bool {
        self.role.publishes()
    }

    /// The origin with the least CPU in use (then the fewest streams), for a room an edge was asked to open.
    pub async fn least_loaded_origin(&self) -> Result<NodeRecord, DirectoryError> {
        let r = self.dir.nodes().await;
        let nodes = self.directory_result(r)?;
        nodes
            .into_iter()
            .filter(|n| n.role.publishes() && n.id != self.node_id)
            .min_by(|a, b| a.load.cpu_percent.total_cmp(&b.load.cpu_percent).then(a.load.streams.cmp(&b.load.streams)))
            .ok_or_else(|| DirectoryError::Unreachable {
                url: self.dir.url().to_owned(),
                detail: "the directory lists no origin to open the room on".into(),
            })
    }

    /// Sends a room call to `node` (the room lives there) as this node received it: `path_and_query` and a JSON
    /// `body`; its answer, status and body, bounded in time and bytes.
    pub async fn forward(
        &self,
        node: &NodeRecord,
        path_and_query: &str,
        body: bytes::Bytes,
    ) -> Result<(http::StatusCode, bytes::Bytes), ForwardError> {
        use http_body_util::{BodyExt, Full, Limited};
        let fail = |detail: String| ForwardError::Unreachable { node: node.id.clone(), detail };
        let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http::<Full<bytes::Bytes>>();
        let req = http::Request::post(format!("{}{path_and_query}", node.http))
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(VIA_HEADER, self.node_id.as_str())
            .body(Full::new(body))
            .map_err(|e| fail(e.to_string()))?;
        let limit = Duration::from_secs(5);
        let resp = tokio::time::timeout(limit, client.request(req))
            .await
            .map_err(|_| fail(format!("no answer within {limit:?}")))?
            .map_err(|e| fail(e.to_string()))?;
        let status = resp.status();
        let body = tokio::time::timeout(limit, Limited::new(resp.into_body(), 256 * 1024).collect())
            .await
            .map_err(|_| fail(format!("the answer did not end within {limit:?}")))?
            .map_err(|e| fail(e.to_string()))?
            .to_bytes();
        Ok((status, body))
    }

    async fn heartbeat(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.ttl / 3);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            self.heartbeat_once().await;
        }
    }

    /// Claims streams published here without a client's publish (an always-on pull of another server) and
    /// releases every stream whose publisher left.
    async fn follow_events(self: Arc<Self>) {
        let mut rx = self.hub.events().subscribe();
        loop {
            let ev = match rx.recv().await {
                Ok(ev) => ev,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            };
            match ev {
                // RTMP and WHIP publishes were claimed by their access check; a pull's was not.
                Event::Publish { stream, protocol: Protocol::Pull, .. }
                    if self.role.publishes() && !stream.name.contains('@') =>
                {
                    if let Err(e) = self.claim(&stream).await {
                        tracing::warn!(%stream, reason = %e, "a stream published here is held elsewhere");
                        let _ = self.hub.kick_publisher(&stream, &e.to_string());
                    }
                }
                Event::Unpublish { stream, .. } if self.role.publishes() && !stream.name.contains('@') => {
                    // Only a stream that has no publisher now (not one taken over here meanwhile).
                    let held = self.hub.get(&stream).is_some_and(|s| s.publisher().is_some());
                    if !held {
                        let r = self.dir.release(&stream).await;
                        let _ = self.directory_result(r);
                        // Edges reading it here look it up again: the publisher may be back on another origin.
                        self.hub.kick_tagged(&edge_reader_tag(&stream), "the publisher left this origin");
                    }
                }
                _ => {}
            }
        }
    }

    /// Prometheus lines: whether the directory answers, and what this node refused for the cluster.
    pub fn render_metrics(&self, o: &mut String) {
        use crate::metrics::family;
        let node = format!("node=\"{}\"", self.node_id);
        let up = [(node.clone(), u64::from(self.reachable.load(Ordering::Relaxed)))];
        family(
            o,
            "livegate_cluster_directory_up",
            "gauge",
            "Whether the cluster directory answered the last call.",
            up,
        );
        let lookups = [
            (format!("{node},result=\"found\""), self.lookups[0].load(Ordering::Relaxed)),
            (format!("{node},result=\"not_found\""), self.lookups[1].load(Ordering::Relaxed)),
            (format!("{node},result=\"error\""), self.lookups[2].load(Ordering::Relaxed)),
        ];
        family(
            o,
            "livegate_cluster_lookups_total",
            "counter",
            "Directory lookups of streams not on this node.",
            lookups,
        );
    }

    /// Leaves the directory (a clean shutdown): other nodes learn at once instead of after the TTL.
    pub async fn leave(&self) {
        let mine = self.origin_streams();
        if let Err(e) = self.dir.leave(&mine).await {
            tracing::warn!(error = %e, "could not leave the cluster directory: its entries expire on their own");
        }
    }

    /// `GET /api/v1/cluster`: this node, the directory's nodes and streams, this node's pulls.
    pub async fn status(&self) -> serde_json::Value {
        let me = serde_json::json!({
            "id": self.node_id,
            "role": self.role,
            "http": self.advertise.http,
            "rtmp": self.advertise.rtmp,
            "upstream": (!self.upstream.is_empty()).then_some(&self.upstream),
        });
        let pulls = self.pulls.list();
        let (nodes, streams) = match (self.dir.nodes().await, self.dir.streams().await) {
            (Ok(n), Ok(s)) => (n, s),
            (Err(e), _) | (_, Err(e)) => {
                let _ = self.directory_result::<()>(Err(e.clone()));
                return serde_json::json!({
                    "node": me, "directory": {"url": self.dir.url(), "reachable": false, "error": e.to_string()},
                    "pulls": pulls,
                });
            }
        };
        let _ = self.directory_result(Ok(()));
        let now = unix_ms();
        let nodes: Vec<_> = nodes
            .into_iter()
            .map(|n| {
                let mut v = serde_json::to_value(&n).unwrap_or_default();
                v["heartbeat_age_ms"] = now.saturating_sub(n.heartbeat_ms).into();
                v
            })
            .collect();
        serde_json::json!({
            "node": me,
            "directory": {"url": self.dir.url(), "reachable": true},
            "nodes": nodes,
            "streams": streams,
            "pulls": pulls,
        })
    }
}

#[async_trait::async_trait]
impl PublishClaim for Cluster {
    async fn claim(&self, key: &StreamKey) -> Result<(), ClaimRefusal> {
        if !self.role.publishes() {
            return Err(ClaimRefusal::NotHere(format!(
                "node {} is an edge: publish to an origin of the cluster",
                self.node_id
            )));
        }
        let r = self.dir.claim(key, self.allow_takeover).await;
        match self.directory_result(r) {
            Ok(Claim::Claimed) => Ok(()),
            Ok(Claim::TakenOver { from }) => {
                tracing::info!(stream = %key, %from, "stream taken over from another node");
                Ok(())
            }
            Ok(Claim::Held { by }) => Err(ClaimRefusal::Held(format!("stream {key} is live on origin {by}"))),
            Err(e) => Err(ClaimRefusal::Unavailable(format!("cannot claim stream {key}: {e}"))),
        }
    }
}

#[async_trait::async_trait]
impl Locator for Cluster {
    fn check_via(&self, via: &[String]) -> Result<(), LocateError> {
        if via.iter().any(|v| v == &self.node_id) {
            return Err(LocateError::Loop(format!(
                "the request came through node {} already (via {}): the cluster's upstreams form a loop",
                self.node_id,
                via.join(",")
            )));
        }
        Ok(())
    }

    async fn locate(&self, key: &StreamKey, via: &[String]) -> Result<(), LocateError> {
        if !self.role.pulls() || self.pulls.get(key).is_some() {
            // An origin serves only what it has; a configured pull serves its stream whatever the directory says.
            return Ok(());
        }
        let r = self.dir.owner(key).await;
        let counter = match &r {
            Ok(Some(_)) => 0,
            Ok(None) => 1,
            Err(_) => 2,
        };
        self.lookups[counter].fetch_add(1, Ordering::Relaxed);
        match self.directory_result(r) {
            Ok(Some(node)) if node.id == self.node_id => {
                Err(LocateError::NotFound(format!("stream {key} is not being published on this node")))
            }
            Ok(Some(_)) => {
                self.via.lock().insert(key.clone(), via.to_vec());
                Ok(())
            }
            Ok(None) => Err(LocateError::NotFound(format!("no origin of the cluster has stream {key}"))),
            Err(e) => Err(LocateError::Unavailable(format!("cannot look stream {key} up: {e}"))),
        }
    }
}

/// The edge's on-demand source: a pull of the stream from the node that has it.
struct EdgeSource(Weak<Cluster>);

impl SourceFactory for EdgeSource {
    fn start(&self, key: &StreamKey) -> Option<Result<SourceHandle, SourceError>> {
        let cluster = self.0.upgrade()?;
        // Renditions are made here from their source stream (which this factory then serves); an unknown app
        // has no streams anywhere; a pull configured here serves its own stream.
        if key.name.contains('@') || cluster.config.app(&key.app).is_none() || cluster.pulls.get(key).is_some() {
            return None;
        }
        let dialer = Arc::new(EdgeDialer(Arc::downgrade(&cluster)));
        Some(Ok(cluster.pulls.start_edge(key, dialer)))
    }
}

/// Opens an edge pull's source: the stream's origin, looked up per attempt, read over HTTP-FLV.
struct EdgeDialer(Weak<Cluster>);

#[async_trait::async_trait]
impl Dialer for EdgeDialer {
    fn accepts(&self, url: &str) -> bool {
        url.starts_with("cluster:")
    }

    async fn open(&self, url: &str, timeout: Duration) -> Result<Box<dyn TagSource>, SourceFailure> {
        let cluster = self.0.upgrade().ok_or_else(|| SourceFailure("the node is shutting down".into()))?;
        let (app, name) = url
            .strip_prefix("cluster:")
            .and_then(|p| p.split_once('/'))
            .ok_or_else(|| SourceFailure(format!("{url:?} names no stream")))?;
        let key = StreamKey::new(app, name);
        let base = if cluster.upstream.is_empty() {
            let r = cluster.dir.owner(&key).await;
            match cluster.directory_result(r) {
                Ok(Some(node)) if node.id != cluster.node_id => node.http,
                Ok(_) => return Err(SourceFailure(format!("no origin of the cluster has stream {key}"))),
                Err(e) => return Err(SourceFailure(e.to_string())),
            }
        } else {
            cluster.upstream.clone()
        };
        // Low latency: every frame written to the edge as it comes (no merged writes), from the newest keyframe
        // (the edge's readers start from its own GOP cache), skipped ahead only when a second behind.
        let mut target = format!("{base}/{}/{}.flv?mode=rtc&min_cache=0&max_cache=1", key.app, key.name);
        if let Some(app) = cluster.config.app(&key.app) {
            let keys = app.play_keys();
            if keys.is_set() {
                let secret = if keys.key.is_empty() { &keys.backup } else { &keys.key };
                let tx_time = format!("{:X}", crate::auth::unix_now() + 3600);
                let tx_secret = crate::auth::sign(secret, &key.name, &tx_time);
                target.push_str(&format!("&txSecret={tx_secret}&txTime={tx_time}"));
            }
        }
        let mut via = cluster.via.lock().get(&key).cloned().unwrap_or_default();
        via.push(cluster.node_id.clone());
        let via = via.join(",");
        let inner = open_flv(&target, &[(VIA_HEADER, via.as_str())], timeout).await?;
        Ok(Box::new(Named { inner, from: target }))
    }
}

/// A source that says which URL it reads.
struct Named {
    inner: Box<dyn TagSource>,
    from: String,
}

#[async_trait::async_trait]
impl TagSource for Named {
    async fn next(&mut self) -> Result<Option<super::pull::SourceTag>, SourceFailure> {
        self.inner.next().await
    }

    fn from(&self) -> Option<String> {
        Some(self.from.clone())
    }
}

/// The node's load between two heartbeats: CPU from the process's own accounting, egress from the metrics.
struct LoadSampler {
    last: Option<(std::time::Instant, f64, u64)>,
}

impl LoadSampler {
    fn new() -> Self {
        Self { last: None }
    }

    fn sample(&mut self, hub: &Hub) -> NodeLoad {
        let m = crate::metrics::global();
        let now = std::time::Instant::now();
        let cpu = cpu_seconds().unwrap_or(0.0);
        let out = m.bytes_out_total();
        let (cpu_percent, egress_bps) = match self.last {
            Some((t, c, o)) if now > t => {
                let secs = (now - t).as_secs_f64();
                (((cpu - c) / secs * 100.0).max(0.0), ((out.saturating_sub(o)) as f64 * 8.0 / secs) as u64)
            }
            _ => (0.0, 0),
        };
        self.last = Some((now, cpu, out));
        let readers = [Protocol::Rtmp, Protocol::HttpFlv, Protocol::Whep].iter().map(|p| m.readers_of(*p)).sum();
        let streams = hub.streams().iter().filter(|s| !s.is_closed()).count() as u64;
        NodeLoad { streams, readers, egress_bps, cpu_percent: (cpu_percent * 10.0).round() / 10.0 }
    }
}

/// User + system CPU seconds of this process so far.
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command (which may hold spaces) start after its closing parenthesis.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let (utime, stime): (u64, u64) = (f.get(11)?.parse().ok()?, f.get(12)?.parse().ok()?);
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (hz > 0).then(|| (utime + stime) as f64 / hz as f64)
}
