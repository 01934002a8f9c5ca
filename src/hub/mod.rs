//! The registry of live streams and connected clients (ARCHITECTURE: one publisher, N readers per stream).

pub mod attach;
pub mod fanout;
pub mod packet;
pub mod reader;
pub mod source;
pub mod stream;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::Waker;
use std::time::{Duration, Instant, SystemTime};

use parking_lot::{Mutex, RwLock};
use serde::Serialize;
use tokio::sync::Notify;

use crate::events::{Event, EventBus};
use crate::health::{HealthChange, PlayerSample, Quality};
use crate::media::{Frame, MediaKind};
pub use attach::{Attachment, AttachmentInfo, Audience, Purpose};
pub use packet::{HeaderSet, Packet};
pub use reader::{CachePolicy, EndReason, Reader, Tracks};
pub use source::{LocateError, Locator, SourceError, SourceFactory, SourceHandle, SourceInfo, SourceKind};
pub use stream::{Health, ParkedGroup, PublisherInfo, SeiInjectError, Stream};

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct StreamKey {
    pub app: String,
    pub name: String,
}

impl StreamKey {
    pub fn new(app: &str, name: &str) -> Self {
        Self { app: app.to_owned(), name: name.to_owned() }
    }
}

/// Serializes a stream key as its path, `app/name` (`#[serde(serialize_with = "hub::key_path")]`).
pub fn key_path<S: serde::Serializer>(k: &StreamKey, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(k)
}

impl std::fmt::Display for StreamKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.app, self.name)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Protocol {
    Rtmp,
    HttpFlv,
    /// The stream's HLS segmenter (one per stream, however many HLS clients fetch its segments).
    Hls,
    /// A recording.
    Record,
    /// A WebRTC (WHEP) viewer.
    Whep,
    /// A WebRTC (WHIP) publisher.
    Whip,
    /// A transcoder making a rendition (it reads the source and publishes the derived stream).
    Transcode,
    /// The room service watching a member's stream for its media (which tracks it carries).
    Room,
    /// A pull publishing another server's stream here.
    Pull,
    /// A relay pushing a stream to another server.
    Relay,
    /// An edge's pull of a stream from the cluster node that has it.
    Edge,
}

impl Protocol {
    pub const COUNT: usize = 11;
    pub const ALL: [Protocol; Self::COUNT] = [
        Protocol::Rtmp,
        Protocol::HttpFlv,
        Protocol::Hls,
        Protocol::Record,
        Protocol::Whep,
        Protocol::Whip,
        Protocol::Transcode,
        Protocol::Room,
        Protocol::Pull,
        Protocol::Relay,
        Protocol::Edge,
    ];
    pub fn as_str(&self) -> &'static str {
        match self {
            Protocol::Rtmp => "rtmp",
            Protocol::HttpFlv => "http-flv",
            Protocol::Hls => "hls",
            Protocol::Record => "record",
            Protocol::Whep => "whep",
            Protocol::Whip => "whip",
            Protocol::Transcode => "transcode",
            Protocol::Room => "room",
            Protocol::Pull => "pull",
            Protocol::Relay => "relay",
            Protocol::Edge => "edge",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Connecting,
    Publisher,
    Player,
}

/// A connection's identity and its off switch, shared between its task and the API.
#[derive(Debug)]
pub struct ClientHandle {
    pub id: u64,
    pub protocol: Protocol,
    pub addr: Option<SocketAddr>,
    pub since: SystemTime,
    kicked: AtomicBool,
    reason: Mutex<String>,
    /// For connection tasks that `select!` on being kicked.
    pub notify: Notify,
    waker: Mutex<Option<Waker>>,
    pub info: Mutex<ClientState>,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    /// Who the connection plays for beyond itself (a room member's key), so a service can end its plays.
    pub tag: std::sync::OnceLock<String>,
    /// What a player's connection counts for its quality level.
    pub player: PlayerStats,
}

/// A player's counters for its quality level (crate::health::PlayerMeter): written with relaxed atomics by
/// its reader (backlog, skips), the fan-out (stalls) and a WebRTC session (receiver-reported loss and RTT);
/// read by the hub's health ticker once a second, which keeps the meter and the level.
#[derive(Debug)]
pub struct PlayerStats {
    pub backlog_ms: AtomicI64,
    pub skips: AtomicU64,
    pub stalls: AtomicU64,
    /// WebRTC datagrams a full socket buffer refused (the viewer then skipped to a keyframe).
    pub dropped_packets: AtomicU64,
    /// Receiver-reported fraction lost in hundredths of a percent; -1 when none came (not a WebRTC viewer).
    pub loss_centi_percent: AtomicI64,
    /// Round-trip time from receiver reports, ms; -1 when unknown.
    pub rtt_ms: AtomicI64,
    level: AtomicU8,
    meter: Mutex<crate::health::PlayerMeter>,
}

impl Default for PlayerStats {
    fn default() -> Self {
        Self {
            backlog_ms: AtomicI64::new(0),
            skips: AtomicU64::new(0),
            stalls: AtomicU64::new(0),
            dropped_packets: AtomicU64::new(0),
            loss_centi_percent: AtomicI64::new(-1),
            rtt_ms: AtomicI64::new(-1),
            level: AtomicU8::new(0),
            meter: Mutex::new(Default::default()),
        }
    }
}

impl PlayerStats {
    /// The level the ticker last judged.
    pub fn quality(&self) -> Quality {
        Quality::from_level(self.level.load(Ordering::Relaxed))
    }

    pub fn loss_percent(&self) -> Option<f64> {
        let c = self.loss_centi_percent.load(Ordering::Relaxed);
        (c >= 0).then(|| c as f64 / 100.0)
    }

    pub fn rtt_ms(&self) -> Option<i64> {
        let r = self.rtt_ms.load(Ordering::Relaxed);
        (r >= 0).then_some(r)
    }

    /// Samples the counters into the meter; the level change, if any.
    fn evaluate(&self, now_ms: u64, bytes_out: u64, stream_head_ms: Option<i64>) -> Option<(Quality, Quality)> {
        let sample = PlayerSample {
            backlog_ms: self.backlog_ms.load(Ordering::Relaxed),
            skips: self.skips.load(Ordering::Relaxed),
            stalls: self.stalls.load(Ordering::Relaxed),
            bytes_out,
            loss_percent: self.loss_percent(),
            stream_head_ms,
        };
        let change = self.meter.lock().evaluate(now_ms, sample);
        if let Some((level, _)) = change {
            self.level.store(level.level(), Ordering::Relaxed);
        }
        change
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ClientState {
    pub role: Role,
    pub stream: Option<String>,
}

impl ClientHandle {
    pub fn kick(&self, reason: &str) {
        *self.reason.lock() = reason.to_owned();
        self.kicked.store(true, Ordering::Release);
        self.notify.notify_waiters();
        self.notify.notify_one();
        if let Some(w) = self.waker.lock().take() {
            w.wake();
        }
    }

    pub fn kicked(&self) -> Option<String> {
        self.kicked.load(Ordering::Acquire).then(|| self.reason.lock().clone())
    }

    pub(crate) fn register_waker(&self, w: &Waker) {
        let mut slot = self.waker.lock();
        if !slot.as_ref().is_some_and(|x| x.will_wake(w)) {
            *slot = Some(w.clone());
        }
    }

    /// Whether this is a player whose quality is judged (an RTMP, HTTP-FLV or WHEP viewer).
    pub fn is_player(&self) -> bool {
        matches!(self.protocol, Protocol::Rtmp | Protocol::HttpFlv | Protocol::Whep)
            && self.info.lock().role == Role::Player
    }

    pub fn set_state(&self, role: Role, stream: Option<&StreamKey>) {
        *self.info.lock() = ClientState { role, stream: stream.map(|s| s.to_string()) };
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HubError {
    #[error("stream {0} is already being published")]
    AlreadyPublishing(String),
    #[error("stream {0} is not being published")]
    NotFound(String),
    #[error("server is shutting down")]
    ShuttingDown,
    #[error("{0}")]
    Source(#[from] SourceError),
    /// Nobody has the stream, here or elsewhere (the cluster directory says why): 404.
    #[error("{0}")]
    Nowhere(String),
    /// The stream is elsewhere but cannot be reached now (the cluster directory is down): 503.
    #[error("{0}")]
    Unavailable(String),
    /// Serving the stream here would pull it from a node that pulls it from here: 508.
    #[error("{0}")]
    Loop(String),
}

/// Tunables the hub needs (from `[hub]` and `[play]` in the config).
#[derive(Debug, Clone)]
pub struct HubOptions {
    pub retention: Duration,
    pub max_stream_bytes: usize,
    pub reconnect_grace: Duration,
    pub allow_takeover: bool,
    pub merge_window: Duration,
    pub audio_hold: Duration,
}

impl HubOptions {
    /// From `[hub]`.
    pub fn from_config(c: &crate::config::HubConfig) -> Self {
        Self {
            retention: Duration::from_secs_f64(c.buffer_secs),
            max_stream_bytes: c.max_stream_mib << 20,
            reconnect_grace: Duration::from_secs_f64(c.reconnect_grace_secs),
            allow_takeover: c.allow_takeover,
            merge_window: Duration::from_millis(c.merge_window_ms),
            audio_hold: Duration::from_millis(c.audio_hold_ms),
        }
    }
}

impl Default for HubOptions {
    fn default() -> Self {
        Self {
            retention: Duration::from_secs(10),
            max_stream_bytes: 64 << 20,
            reconnect_grace: Duration::from_secs(10),
            allow_takeover: false,
            merge_window: Duration::from_millis(40),
            audio_hold: Duration::from_millis(40),
        }
    }
}

struct HubInner {
    opts: HubOptions,
    streams: RwLock<HashMap<StreamKey, Arc<Stream>>>,
    clients: RwLock<HashMap<u64, Arc<ClientHandle>>>,
    /// The clock the health ticker reads players' meters by.
    started: Instant,
    next_id: AtomicU64,
    events: EventBus,
    shutting_down: AtomicBool,
    /// Asked, in order, for streams nobody publishes (see `hub::source`).
    factories: RwLock<Vec<Arc<dyn SourceFactory>>>,
    /// Finds streams this node does not have (the cluster's directory), before a player waits for them.
    locator: std::sync::OnceLock<Arc<dyn Locator>>,
    starting: Mutex<()>,
}

/// The registry: cheap to clone, shared by every task.
#[derive(Clone)]
pub struct Hub(Arc<HubInner>);

impl Hub {
    pub fn new(opts: HubOptions, events: EventBus) -> Self {
        Hub(Arc::new(HubInner {
            opts,
            streams: RwLock::new(HashMap::new()),
            clients: RwLock::new(HashMap::new()),
            started: Instant::now(),
            next_id: AtomicU64::new(1),
            events,
            shutting_down: AtomicBool::new(false),
            factories: RwLock::new(Vec::new()),
            locator: std::sync::OnceLock::new(),
            starting: Mutex::new(()),
        }))
    }

    pub fn options(&self) -> &HubOptions {
        &self.0.opts
    }

    pub fn events(&self) -> &EventBus {
        &self.0.events
    }

    /// Registers a connection; it is listed by the API until the returned guard drops.
    pub fn register_client(&self, protocol: Protocol, addr: Option<SocketAddr>) -> ClientGuard {
        let id = self.0.next_id.fetch_add(1, Ordering::Relaxed);
        let handle = Arc::new(ClientHandle {
            id,
            protocol,
            addr,
            since: SystemTime::now(),
            kicked: AtomicBool::new(false),
            reason: Mutex::new(String::new()),
            notify: Notify::new(),
            waker: Mutex::new(None),
            info: Mutex::new(ClientState { role: Role::Connecting, stream: None }),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            tag: std::sync::OnceLock::new(),
            player: PlayerStats::default(),
        });
        self.0.clients.write().insert(id, handle.clone());
        ClientGuard { hub: self.clone(), handle }
    }

    /// Kicks every connection tagged `tag`; how many.
    pub fn kick_tagged(&self, tag: &str, reason: &str) -> usize {
        let clients: Vec<_> =
            self.0.clients.read().values().filter(|c| c.tag.get().is_some_and(|t| t == tag)).cloned().collect();
        for c in &clients {
            c.kick(reason);
        }
        clients.len()
    }

    pub fn clients(&self) -> Vec<Arc<ClientHandle>> {
        let mut v: Vec<_> = self.0.clients.read().values().cloned().collect();
        v.sort_by_key(|c| c.id);
        v
    }

    pub fn client(&self, id: u64) -> Option<Arc<ClientHandle>> {
        self.0.clients.read().get(&id).cloned()
    }

    pub fn get(&self, key: &StreamKey) -> Option<Arc<Stream>> {
        self.0.streams.read().get(key).cloned()
    }

    pub fn streams(&self) -> Vec<Arc<Stream>> {
        let mut v: Vec<_> = self.0.streams.read().values().cloned().collect();
        v.sort_by(|a, b| a.key.cmp(&b.key));
        v
    }

    /// Claims a stream for a publisher. A stream in its reconnect grace is resumed: its readers carry on.
    pub fn publish(
        &self,
        key: StreamKey,
        info: PublisherInfo,
        handle: Arc<ClientHandle>,
    ) -> Result<Publisher, HubError> {
        if self.0.shutting_down.load(Ordering::Acquire) {
            return Err(HubError::ShuttingDown);
        }
        // What the hub keeps is shown (API, logs, webhooks, recordings' callbacks): never the signature. The
        // authorizing on_publish hook saw the full query before this.
        let info = PublisherInfo { param: crate::names::redact_query(&info.param), ..info };
        let stream = self.get_or_create(&key);
        let resumed;
        let generation;
        {
            let mut st = stream.state.lock();
            if let Some((old, old_handle)) = &st.publisher {
                if !self.0.opts.allow_takeover {
                    return Err(HubError::AlreadyPublishing(key.to_string()));
                }
                tracing::info!(stream = %key, old = old.client_id, new = info.client_id, "publisher taken over");
                old_handle.kick("another publisher took over the stream");
            }
            resumed = stream.last_dts().is_some();
            stream.reset_health();
            st.generation += 1;
            generation = st.generation;
            st.publisher = Some((info.clone(), handle.clone()));
            st.published_at = Instant::now();
            st.published_wall = SystemTime::now();
        }
        handle.set_state(Role::Publisher, Some(&key));
        self.0.events.send(Event::Publish {
            stream: key.clone(),
            client_id: info.client_id,
            protocol: info.protocol,
            addr: info.addr.map(|a| a.to_string()),
            param: info.param.clone(),
        });
        tracing::info!(stream = %key, client = info.client_id, resumed, "publish started");
        Ok(Publisher {
            hub: self.clone(),
            stream,
            generation,
            info,
            offset: None,
            unwrap_last: None,
            waiting_for_key: true,
            video_clock: TrackClock::default(),
            audio_clock: TrackClock::default(),
        })
    }

    /// The live stream `key`, made (waiting for its publisher) if there is none.
    fn get_or_create(&self, key: &StreamKey) -> Arc<Stream> {
        let mut streams = self.0.streams.write();
        match streams.get(key) {
            Some(s) if !s.is_closed() => s.clone(),
            _ => {
                let id = self.0.next_id.fetch_add(1, Ordering::Relaxed);
                let s = Arc::new(Stream::new(
                    key.clone(),
                    id,
                    self.0.opts.retention,
                    self.0.opts.max_stream_bytes,
                    self.0.opts.merge_window,
                    self.0.opts.audio_hold,
                ));
                // Every write to parked players happens on the flusher, never on the publisher's task.
                tokio::spawn(s.clone().run_flusher());
                streams.insert(key.clone(), s.clone());
                s
            }
        }
    }

    /// Re-reads every publisher's health once a second and tells the event bus what changed (quality level,
    /// background/foreground). Renditions and an edge's copies are not publishers of their own.
    pub async fn run_health(self) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tick.tick().await;
            if self.0.shutting_down.load(Ordering::Acquire) {
                return;
            }
            for s in self.streams() {
                let Some(p) = s.publisher() else { continue };
                if crate::names::is_rendition(&s.key.name) || p.protocol == Protocol::Edge {
                    continue;
                }
                for change in s.evaluate_health() {
                    let event = match change {
                        HealthChange::Quality { level, previous } => {
                            tracing::info!(stream = %s.key, client = p.client_id, level = level.level(),
                                quality = level.name(), previous = previous.level(), "publisher quality");
                            Event::Quality {
                                stream: s.key.clone(),
                                client_id: p.client_id,
                                level,
                                previous,
                                quality: level.name(),
                            }
                        }
                        HealthChange::State { state } => {
                            tracing::info!(stream = %s.key, client = p.client_id, ?state, "publisher state");
                            Event::PublisherState { stream: s.key.clone(), client_id: p.client_id, state }
                        }
                    };
                    self.0.events.send(event);
                }
            }
            self.evaluate_players();
        }
    }

    /// Judges every player's quality from its counters (once a second: a thousand players cost a thousand
    /// short lock-free reads and one uncontended lock each) and sends the changes as events.
    fn evaluate_players(&self) {
        let now_ms = self.0.started.elapsed().as_millis() as u64;
        let heads: HashMap<String, Option<i64>> =
            self.streams().iter().map(|s| (s.key.to_string(), s.last_dts())).collect();
        for c in self.clients() {
            if !c.is_player() {
                continue;
            }
            let st = c.info.lock().clone();
            let (Role::Player, Some(stream)) = (st.role, st.stream) else { continue };
            let head = heads.get(&stream).copied().flatten();
            let Some((level, previous)) = c.player.evaluate(now_ms, c.bytes_out.load(Ordering::Relaxed), head) else {
                continue;
            };
            tracing::debug!(%stream, client = c.id, level = level.level(), previous = previous.level(), "player quality");
            self.0.events.send(Event::PlayerQuality {
                stream,
                client_id: c.id,
                protocol: c.protocol,
                level,
                previous,
                quality: level.name(),
            });
        }
    }

    /// Attaches a player of `key` (its `on_play` now, its `on_stop` when the reader drops). Readers may join a
    /// stream in its reconnect grace; a stream nobody publishes is 404.
    pub fn subscribe(
        &self,
        key: &StreamKey,
        protocol: Protocol,
        policy: CachePolicy,
        handle: Arc<ClientHandle>,
    ) -> Result<Reader, HubError> {
        self.subscribe_as(key, protocol, policy, handle, Audience::Player { requested: key.clone() })
    }

    /// Attaches a reader of `key` for `audience`: a player (webhooks name the stream it asked for) or one of
    /// livegate's own readers (listed with the stream, no webhooks).
    pub fn subscribe_as(
        &self,
        key: &StreamKey,
        protocol: Protocol,
        policy: CachePolicy,
        handle: Arc<ClientHandle>,
        audience: Audience,
    ) -> Result<Reader, HubError> {
        let stream = match self.get(key).filter(|s| !s.is_closed()) {
            Some(s) => s,
            None => self.start_on_demand(key)?.ok_or_else(|| HubError::NotFound(key.to_string()))?,
        };
        let shown = match &audience {
            Audience::Player { requested } => requested,
            Audience::Internal(_) => key,
        };
        handle.set_state(Role::Player, Some(shown));
        let attach = attach::AttachGuard::reader(&stream, &self.0.events, protocol, &handle, audience);
        Ok(Reader::new(stream, protocol, policy, handle, attach))
    }

    /// Kicks a stream's publisher. Readers then wait out the reconnect grace as for any drop.
    pub fn kick_publisher(&self, key: &StreamKey, reason: &str) -> Result<(), HubError> {
        let stream = self.get(key).ok_or_else(|| HubError::NotFound(key.to_string()))?;
        let st = stream.state.lock();
        match &st.publisher {
            Some((_, h)) => {
                h.kick(reason);
                Ok(())
            }
            None => Err(HubError::NotFound(key.to_string())),
        }
    }

    fn unpublish(&self, stream: &Arc<Stream>, generation: u64, client_id: u64) {
        let protocol = {
            let mut st = stream.state.lock();
            if st.generation != generation {
                return;
            }
            st.publisher.take().map_or(Protocol::Rtmp, |(info, _)| info.protocol)
        };
        self.0.events.send(Event::Unpublish { stream: stream.key.clone(), client_id, protocol });
        let grace =
            if self.0.shutting_down.load(Ordering::Acquire) { Duration::ZERO } else { self.0.opts.reconnect_grace };
        tracing::info!(stream = %stream.key, client = client_id, grace_secs = grace.as_secs_f64(), "publisher left");
        if grace.is_zero() {
            self.expire(stream, generation);
            return;
        }
        let hub = self.clone();
        let stream = stream.clone();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                tokio::time::sleep(grace).await;
                hub.expire(&stream, generation);
            });
        }
    }

    /// Ends a stream whose publisher did not come back.
    fn expire(&self, stream: &Arc<Stream>, generation: u64) {
        {
            let st = stream.state.lock();
            if st.generation != generation || st.publisher.is_some() {
                return;
            }
        }
        self.close_now(stream);
    }

    /// Ends a stream now: out of the registry, its readers told, its on-demand source stopped.
    fn close_now(&self, stream: &Arc<Stream>) {
        if stream.is_closed() {
            return;
        }
        let mut streams = self.0.streams.write();
        if streams.get(&stream.key).is_some_and(|s| Arc::ptr_eq(s, stream)) {
            streams.remove(&stream.key);
        }
        drop(streams);
        stream.close();
        tracing::info!(stream = %stream.key, "stream closed");
        self.0.events.send(Event::StreamClosed { stream: stream.key.clone() });
    }

    /// SIGTERM: refuse new publishers, end every stream (readers get a clean end), kick publishers.
    pub fn shutdown(&self) {
        self.0.shutting_down.store(true, Ordering::Release);
        for s in self.streams() {
            if let Some((_, h)) = &s.state.lock().publisher {
                h.kick("server shutting down");
            }
            s.close();
        }
        self.0.streams.write().clear();
    }
}

/// Removes a client from the registry when its connection ends.
pub struct ClientGuard {
    hub: Hub,
    pub handle: Arc<ClientHandle>,
}

impl Drop for ClientGuard {
    fn drop(&mut self) {
        self.hub.0.clients.write().remove(&self.handle.id);
    }
}

/// A publisher's hold on a stream. Maps the session's timestamps onto the stream's continuous timeline;
/// dropping it starts the reconnect grace.
pub struct Publisher {
    hub: Hub,
    stream: Arc<Stream>,
    generation: u64,
    info: PublisherInfo,
    /// Added to session timestamps so a resumed stream's timeline continues where it stopped.
    offset: Option<i64>,
    unwrap_last: Option<(u32, i64)>,
    waiting_for_key: bool,
    video_clock: TrackClock,
    audio_clock: TrackClock,
}

/// A media track's repair of its publisher's timestamp jumps and stalls.
#[derive(Debug, Default)]
struct TrackClock {
    /// Added to the track's timestamps since its last jump.
    adjust: i64,
    /// The last frame's timeline position and arrival.
    last: Option<(i64, Instant)>,
    /// The last frame's timestamp as published (before `adjust`), and how many frames in a row did not
    /// advance it.
    last_raw: Option<i64>,
    stuck: u32,
    /// Stalled: frames are placed by their arrival until the publisher's timestamps move again.
    retiming: bool,
}

/// Frames in a row with a timestamp that does not advance before a track counts as stalled (an encoder whose
/// clock stopped while it keeps sending: players would get seconds of frames at one instant).
const STUCK_FRAMES: u32 = 3;

impl Publisher {
    pub fn stream(&self) -> &Arc<Stream> {
        &self.stream
    }

    /// Extends a 32-bit wrapping millisecond timestamp to 64 bits (RTMP wraps after ~49.7 days).
    fn unwrap_ts(&mut self, ts: u32) -> i64 {
        let v = match self.unwrap_last {
            None => ts as i64,
            Some((last_raw, last)) => last + (ts.wrapping_sub(last_raw) as i32) as i64,
        };
        self.unwrap_last = Some((ts, v));
        v
    }

    /// Pushes a frame whose `dts` is the session's raw 32-bit timestamp.
    pub fn push_raw(&mut self, mut frame: Frame, session_ts: u32, received: Instant) {
        let ts = self.unwrap_ts(session_ts);
        let offset = *self.offset.get_or_insert_with(|| match self.stream.last_dts() {
            // Resume 10 ms after the previous session's last frame: continuous for players, no visible gap.
            Some(last) => last + 10 - ts,
            None => 0,
        });
        if frame.kind == MediaKind::Video && !frame.config {
            // Readers must start on a keyframe; a session that begins mid-GOP has nothing decodable yet.
            if self.waiting_for_key && !frame.keyframe {
                return;
            }
            self.waiting_for_key = false;
        }
        let clock = match frame.kind {
            MediaKind::Video => Some(&mut self.video_clock),
            MediaKind::Audio => Some(&mut self.audio_clock),
            MediaKind::Data => None,
        };
        // Metadata follows the timeline as published: only media tracks have their jumps repaired.
        let raw = ts + offset;
        let mut dts = raw + clock.as_ref().map_or(0, |c| c.adjust);
        if let Some(clock) = clock.filter(|_| !frame.config) {
            let not_advancing = clock.last_raw.is_some_and(|r| raw <= r);
            clock.stuck = if not_advancing { clock.stuck + 1 } else { 0 };
            clock.last_raw = Some(raw);
            if let Some((prev, at)) = clock.last {
                // An encoder whose clock jumps (backwards, or far beyond the time that passed) would give
                // players a frozen picture and recordings hours of nothing: continue from where the timeline
                // was, advanced by the wall-clock time that passed. One whose clock stops while frames keep
                // coming is placed by their arrival until it moves again (then once more, to re-anchor).
                let wall = received.saturating_duration_since(at).as_millis() as i64;
                let jumped = dts < prev - 1000 || dts > prev + wall + 10_000;
                let stalled = clock.stuck >= STUCK_FRAMES;
                if stalled && !clock.retiming {
                    tracing::warn!(stream = %self.stream.key, kind = ?frame.kind, frames = clock.stuck,
                        "publisher timestamps stalled; frames placed by their arrival");
                }
                if jumped && !stalled {
                    tracing::warn!(
                        stream = %self.stream.key,
                        kind = ?frame.kind,
                        jump_ms = dts - prev,
                        "publisher timestamps jumped; timeline continued"
                    );
                }
                if jumped || stalled || clock.retiming {
                    let target = prev + wall.max(1);
                    clock.adjust += target - dts;
                    dts = target;
                }
                clock.retiming = stalled;
            }
            clock.last = Some((dts, received));
        }
        frame.dts = dts;
        self.stream.push_session(frame, received, self.generation);
    }

    pub fn info(&self) -> &PublisherInfo {
        &self.info
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.hub.unpublish(&self.stream, self.generation, self.info.client_id);
    }
}
