//! One live stream: its ring of recent packets (which is also the GOP cache), the keyframe index readers join
//! at, and the wakers of readers waiting for more.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::Waker;
use std::time::{Duration, Instant, SystemTime};

use parking_lot::{Mutex, RwLock};
use tokio::sync::Notify;

use super::attach::{AttachmentInfo, Attachments};
use super::fanout::{self, Class, Format, Slot};
use super::packet::{HeaderSet, Packet};
use super::source::{SourceHandle, SourceInfo};
use super::{ClientHandle, Protocol, StreamKey};
use crate::health::{HealthChange, IngestMeter, IngestWindow, PublisherState, Quality};
use crate::media::{Codec, Frame, MediaKind};

/// A point a reader can start at: a video keyframe (or, in an audio-only stream, any audio frame), with the
/// headers that were in force there.
#[derive(Debug, Clone)]
pub(crate) struct KeyEntry {
    pub seq: u64,
    pub dts: i64,
    pub headers: Arc<HeaderSet>,
    /// The publish session (see [`Packet::session`]) the keyframe came from.
    pub session: u64,
}

#[derive(Debug)]
pub(crate) struct Ring {
    pub packets: VecDeque<Arc<Packet>>,
    /// Sequence number of `packets[0]`; the next packet gets `first_seq + packets.len()`.
    pub first_seq: u64,
    pub keys: VecDeque<KeyEntry>,
    pub headers: Arc<HeaderSet>,
    pub bytes: usize,
    pub has_video: bool,
    pub has_audio: bool,
    /// The codec of the newest audio frame (MP3 and other codecs have no configuration record to say it).
    pub audio_codec: Option<Codec>,
    pub head_dts: i64,
}

impl Ring {
    pub fn next_seq(&self) -> u64 {
        self.first_seq + self.packets.len() as u64
    }

    pub fn get(&self, seq: u64) -> Option<&Arc<Packet>> {
        seq.checked_sub(self.first_seq).and_then(|i| self.packets.get(i as usize))
    }
}

/// What the hub keeps about who is publishing.
#[derive(Debug, Clone)]
pub struct PublisherInfo {
    pub client_id: u64,
    pub protocol: Protocol,
    pub addr: Option<SocketAddr>,
    /// The query string of the publish URL, credentials redacted (`names::redact_query`).
    pub param: String,
}

#[derive(Debug)]
pub(crate) struct PublishState {
    pub publisher: Option<(PublisherInfo, Arc<ClientHandle>)>,
    /// Bumped on every publish, so a grace timer knows whether the publisher it waited for came back.
    pub generation: u64,
    pub published_at: Instant,
    pub published_wall: SystemTime,
}

/// Counters the API and metrics read; written with relaxed atomics on the hot path.
#[derive(Debug, Default)]
pub struct StreamStats {
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    pub frames_in: AtomicU64,
    pub video_frames: AtomicU64,
    pub last_key_interval_ms: AtomicI64,
    pub readers: [AtomicUsize; Protocol::COUNT],
    pub skips: AtomicU64,
    /// SEI NAL units that could not be parsed where livegate reads them (dropped from what it extracts; the
    /// frame is passed on as it is).
    pub sei_malformed: AtomicU64,
}

/// SEI messages waiting for the next video frame, at most.
pub const MAX_PENDING_SEI: usize = 32;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SeiInjectError {
    #[error("SEI messages ride in H.264 video: this stream's video is {0}")]
    NotH264(&'static str),
    #[error("the stream has no video (yet) to carry an SEI message")]
    NoVideo,
    #[error("{0} SEI messages already wait for the next video frame")]
    Busy(usize),
}

/// A publisher's ingest health (the API's `quality`, `publisher_state` and `ingest`).
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Health {
    pub quality: Quality,
    pub publisher_state: PublisherState,
    /// How far behind its own best the newest frame arrived (the publisher's backlog), ms.
    pub delay_ms: f64,
    pub jitter_ms: f64,
    pub last_1s: IngestWindow,
    pub last_10s: IngestWindow,
    /// A WebRTC publisher's packet loss before repair over the last second, percent (none over RTMP).
    pub loss_percent: Option<f64>,
}

/// Bytes-per-second over the last full second, computed lazily from totals.
#[derive(Debug)]
pub(crate) struct RateMeter {
    pub at: Instant,
    pub in_total: u64,
    pub out_total: u64,
    pub frames: u64,
    pub in_rate: f64,
    pub out_rate: f64,
    pub fps: f64,
}

/// Players of a layer above the hub parked for direct fan-out (WHEP viewers: `webrtc::fanout`), so that the
/// hub needs to know nothing of their wire format. The stream's flusher calls `flush` with its rtc-mode
/// players, at every video frame; `release` when the stream closes.
pub trait ParkedGroup: Send + Sync {
    /// Sends everything new in `stream`'s ring to the players parked in the group.
    fn flush(&self, stream: &Stream);
    /// The stream closed: every player goes back to its task.
    fn release(&self, stream: &Stream);
}

pub struct Stream {
    pub key: StreamKey,
    pub id: u64,
    /// The current publish's ingest health (quality level, background state, 1 s / 10 s windows).
    health: Mutex<IngestMeter>,
    /// SEI NAL units to add to the next H.264 video frame (`POST …/sei`), and how many wait (read per frame
    /// without the lock).
    sei_pending: Mutex<Vec<Vec<u8>>>,
    sei_waiting: AtomicUsize,
    pub(crate) ring: RwLock<Ring>,
    wakers: Mutex<Vec<Waker>>,
    /// Players parked for direct fan-out, per wire format and latency class (see `fanout::group_index`).
    pub(crate) fanout: [Mutex<Vec<Arc<Slot>>>; fanout::GROUPS],
    /// Parked players of a layer above the hub (WHEP viewers, `webrtc::fanout`), flushed with rtc players.
    #[allow(clippy::type_complexity)]
    parked_elsewhere: Mutex<Option<(Arc<dyn ParkedGroup>, Arc<dyn std::any::Any + Send + Sync>)>>,
    /// Round-robin of merge phases for players parking.
    pub(crate) next_phase: AtomicUsize,
    /// Bumped on every wake-up, so a reader registers its waker once per wake-up rather than once per poll.
    pub(crate) wake_gen: AtomicU64,
    /// Tells the stream's flusher task that packets arrived.
    pub(crate) flush_signal: Notify,
    /// A reader wants a keyframe now (a WebRTC viewer's PLI, or a player joining a stream whose cache holds
    /// none). Publishers that can make one listen: a WHIP session asks its browser, a transcoder its encoder.
    keyframe_wanted: Notify,
    /// How long a video frame may wait for more media to share its write to parked (non-rtc) players.
    pub(crate) merge_window: Duration,
    /// How long audio may wait for the next video frame before readers are woken for it anyway.
    pub(crate) audio_hold: Duration,
    /// Something that should go out now (video, headers, audio of an audio-only stream) is pending.
    urgent: AtomicBool,
    /// Milliseconds since `created` (+1) of the oldest audio frame held back for the next video frame; 0 = none.
    audio_since: AtomicU64,
    pub(crate) state: Mutex<PublishState>,
    /// Everything reading this stream (see `hub::attach`).
    pub(crate) attachments: Attachments,
    /// Signalled when a reader comes or goes (an on-demand source's watcher counts them).
    pub(crate) readers_changed: Notify,
    /// The source started for this stream's readers, if it is an on-demand stream (see `hub::source`).
    pub(crate) on_demand: Mutex<Option<SourceHandle>>,
    pub(crate) rate: Mutex<RateMeter>,
    pub stats: StreamStats,
    closed: AtomicBool,
    /// A video frame with a non-zero composition offset was seen: the stream has B-frames.
    bframes: AtomicBool,
    last_dts: AtomicI64,
    /// dts of the newest video frame and the interval before it: whether a next frame is due within the
    /// merge window.
    last_video_dts: AtomicI64,
    /// When the publisher's newest video frame arrived (ms since `created`; 0: none yet).
    last_video_at: AtomicU64,
    /// A placeholder picture stands in for the publisher's video (see [`Stream::push_filler`]).
    filling: AtomicBool,
    /// The publisher's video decoder configuration while the placeholder's is in force: sent again before its
    /// first keyframe when it comes back.
    held_video_config: Mutex<Option<Frame>>,
    video_interval_ms: AtomicI64,
    retention_ms: i64,
    max_bytes: usize,
    pub created: Instant,
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stream").field("key", &self.key).field("id", &self.id).finish()
    }
}

impl Stream {
    pub(crate) fn new(
        key: StreamKey,
        id: u64,
        retention: Duration,
        max_bytes: usize,
        merge_window: Duration,
        audio_hold: Duration,
    ) -> Self {
        let now = Instant::now();
        Self {
            key,
            id,
            ring: RwLock::new(Ring {
                packets: VecDeque::new(),
                first_seq: 0,
                keys: VecDeque::new(),
                headers: Arc::new(HeaderSet::default()),
                bytes: 0,
                has_video: false,
                has_audio: false,
                audio_codec: None,
                head_dts: 0,
            }),
            wakers: Mutex::new(Vec::new()),
            fanout: Default::default(),
            parked_elsewhere: Mutex::new(None),
            next_phase: AtomicUsize::new(0),
            wake_gen: AtomicU64::new(0),
            flush_signal: Notify::new(),
            keyframe_wanted: Notify::new(),
            merge_window,
            audio_hold,
            urgent: AtomicBool::new(false),
            audio_since: AtomicU64::new(0),
            state: Mutex::new(PublishState {
                publisher: None,
                generation: 0,
                published_at: now,
                published_wall: SystemTime::now(),
            }),
            attachments: Attachments::default(),
            readers_changed: Notify::new(),
            on_demand: Mutex::new(None),
            rate: Mutex::new(RateMeter {
                at: now,
                in_total: 0,
                out_total: 0,
                frames: 0,
                in_rate: 0.0,
                out_rate: 0.0,
                fps: 0.0,
            }),
            stats: StreamStats::default(),
            health: Mutex::new(IngestMeter::default()),
            sei_pending: Mutex::new(Vec::new()),
            sei_waiting: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
            bframes: AtomicBool::new(false),
            last_dts: AtomicI64::new(i64::MIN),
            last_video_dts: AtomicI64::new(i64::MIN),
            last_video_at: AtomicU64::new(0),
            filling: AtomicBool::new(false),
            held_video_config: Mutex::new(None),
            video_interval_ms: AtomicI64::new(0),
            retention_ms: retention.as_millis() as i64,
            max_bytes,
            created: now,
        }
    }

    /// Whether the stream's video uses B-frames (WebRTC receivers need them transcoded away).
    /// Asks the stream's publisher for a keyframe, if it can make one (coalesced: one pending request).
    pub fn request_keyframe(&self) {
        self.keyframe_wanted.notify_one();
    }

    /// Resolves when a reader asked for a keyframe.
    pub async fn keyframe_requested(&self) {
        self.keyframe_wanted.notified().await
    }

    pub fn has_bframes(&self) -> bool {
        self.bframes.load(Ordering::Relaxed)
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Ends the stream for every reader (they drain nothing more and close cleanly).
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        // An on-demand source has nobody to publish for any more.
        drop(self.on_demand.lock().take());
        self.flush_signal.notify_one();
        // Parked players go back to their tasks, whose Readers send what is left and end cleanly.
        fanout::release_all(self);
        self.release_elsewhere();
        self.wake_readers();
    }

    /// The stream's group of parked players of another layer, made by `make` on first use.
    /// `None` if the stream already has a group of another type (one layer parks players here).
    pub fn parked_group<G: ParkedGroup + 'static>(&self, make: impl FnOnce() -> Arc<G>) -> Option<Arc<G>> {
        let mut g = self.parked_elsewhere.lock();
        let (_, any) = g.get_or_insert_with(|| {
            let made = make();
            (made.clone() as Arc<dyn ParkedGroup>, made as Arc<dyn std::any::Any + Send + Sync>)
        });
        any.clone().downcast::<G>().ok()
    }

    fn release_elsewhere(&self) {
        let g = self.parked_elsewhere.lock().as_ref().map(|(g, _)| g.clone());
        if let Some(g) = g {
            g.release(self);
        }
    }

    /// Media sent to players of `protocol` outside a [`Reader`](super::Reader) (a parked group's flush).
    pub fn count_bytes_out(&self, protocol: super::Protocol, n: u64) {
        self.stats.bytes_out.fetch_add(n, Ordering::Relaxed);
        crate::metrics::global().bytes_out(protocol, n);
    }

    /// The packets from `start` (or the oldest the ring still holds) to the newest, with the headers in force
    /// after them; `start` is returned as it was clamped. For a parked group's flush.
    pub fn packets_since(&self, start: u64, out: &mut Vec<Arc<Packet>>) -> (u64, u64, Arc<HeaderSet>) {
        let ring = self.ring.read();
        let end = ring.next_seq();
        let start = start.max(ring.first_seq).min(end);
        out.extend((start..end).filter_map(|seq| ring.get(seq).cloned()));
        (start, end, ring.headers.clone())
    }

    /// Newest dts pushed so far, if any.
    pub fn last_dts(&self) -> Option<i64> {
        let v = self.last_dts.load(Ordering::Acquire);
        (v != i64::MIN).then_some(v)
    }

    pub fn headers(&self) -> Arc<HeaderSet> {
        self.ring.read().headers.clone()
    }

    /// The codec of the newest audio frame, if audio has come.
    pub fn audio_codec(&self) -> Option<Codec> {
        self.ring.read().audio_codec
    }

    pub fn publisher(&self) -> Option<PublisherInfo> {
        self.state.lock().publisher.as_ref().map(|(p, _)| p.clone())
    }

    /// The publish session media comes from now (see [`Packet::session`]), or, while no one publishes (a
    /// reconnect grace), the one the next publisher will start: what a recording started now may begin with.
    pub fn current_session(&self) -> u64 {
        let st = self.state.lock();
        match st.publisher {
            Some(_) => st.generation,
            None => st.generation + 1,
        }
    }

    /// Adds a frame. Never blocks on readers: the ring lock is held only to append and trim.
    pub fn push(&self, frame: Frame, received: Instant) {
        self.push_session(frame, received, 0)
    }

    /// Adds a frame from publish session `session` (see [`Packet::session`]). While a placeholder stands in,
    /// the publisher's video waits for its next keyframe, which ends the placeholder.
    pub fn push_session(&self, frame: Frame, received: Instant, session: u64) {
        if frame.kind == MediaKind::Video {
            let at = received.saturating_duration_since(self.created).as_millis() as u64;
            self.last_video_at.store(at.max(1), Ordering::Relaxed);
            if self.filling.load(Ordering::Acquire) {
                let mut held = self.held_video_config.lock();
                if frame.config {
                    *held = Some(frame);
                    return;
                }
                if !frame.keyframe {
                    return;
                }
                self.filling.store(false, Ordering::Release);
                let config = held.take();
                drop(held);
                tracing::info!(stream = %self.key, "placeholder ends: the publisher's video is back");
                if let Some(mut c) = config {
                    c.dts = frame.dts;
                    self.push_inner(c, received, session, false);
                }
            }
        }
        self.push_inner(frame, received, session, false)
    }

    /// Whether a placeholder stands in for the publisher's video now.
    pub fn is_filling(&self) -> bool {
        self.filling.load(Ordering::Acquire)
    }

    /// How long ago the publisher's newest video frame arrived (None: no video yet).
    pub fn video_silent_for(&self) -> Option<Duration> {
        match self.last_video_at.load(Ordering::Relaxed) {
            0 => None,
            at => Some(self.created.elapsed().saturating_sub(Duration::from_millis(at))),
        }
    }

    /// Starts standing in for the publisher's video: its current decoder configuration is kept to be sent
    /// again when it comes back, and until its next keyframe only [`push_filler`](Self::push_filler) frames
    /// carry video.
    pub fn start_filling(&self) {
        let mut held = self.held_video_config.lock();
        if held.is_none() {
            *held = self.publisher_video_config();
        }
        self.filling.store(true, Ordering::Release);
    }

    /// Stops standing in without the publisher's return (the stream ends, the placeholder failed).
    pub fn stop_filling(&self) {
        self.filling.store(false, Ordering::Release);
        *self.held_video_config.lock() = None;
    }

    fn publisher_video_config(&self) -> Option<Frame> {
        self.headers().video.as_ref().map(|p| p.frame.clone())
    }

    /// Adds a placeholder frame (marked as such for recorders that leave it out), unless the publisher's video
    /// took over meanwhile: false then. Checked under the lock the publisher's takeover holds, so no placeholder
    /// frame ever follows its keyframe.
    pub fn push_filler(&self, frame: Frame, received: Instant) -> bool {
        let held = self.held_video_config.lock();
        if !self.filling.load(Ordering::Acquire) {
            return false;
        }
        let session = self.state.lock().generation;
        self.push_inner(frame, received, session, true);
        drop(held);
        true
    }

    fn push_inner(&self, mut frame: Frame, received: Instant, session: u64, filler: bool) {
        if frame.kind == MediaKind::Video && !frame.config && self.sei_waiting.load(Ordering::Relaxed) > 0 {
            self.add_pending_sei(&mut frame);
        }
        let urgent;
        let len = frame.payload.len() as u64;
        if !filler {
            // The publisher's health is what it sends, not what stands in for it.
            let at_ms = received.saturating_duration_since(self.created).as_millis() as u64;
            self.health.lock().observe(at_ms, frame.kind, frame.keyframe, frame.config, frame.dts, frame.payload.len());
        }
        self.stats.bytes_in.fetch_add(len, Ordering::Relaxed);
        self.stats.frames_in.fetch_add(1, Ordering::Relaxed);
        if frame.kind == MediaKind::Video && !frame.config {
            self.stats.video_frames.fetch_add(1, Ordering::Relaxed);
            let prev = self.last_video_dts.swap(frame.dts, Ordering::Relaxed);
            if prev != i64::MIN {
                self.video_interval_ms.store(frame.dts - prev, Ordering::Relaxed);
            }
            if frame.cts != 0 {
                self.bframes.store(true, Ordering::Relaxed);
            }
        }
        {
            let mut ring = self.ring.write();
            // Audio rides with the next video frame: one write per video frame instead of one per packet.
            urgent = !(frame.kind == MediaKind::Audio && !frame.config && ring.has_video);
            let seq = ring.next_seq();
            let dts = frame.dts;
            let packet = Packet::build(seq, session, frame, received, filler);
            let f = &packet.frame;
            if f.config {
                let same = ring.headers.get(f.kind).is_some_and(|p| p.frame.payload == f.payload);
                if same {
                    // A republish usually resends identical headers: forwarding them would only reset decoders.
                    return;
                }
                let mut hs = (*ring.headers).clone();
                *hs.slot_mut(f.kind) = Some(packet.clone());
                ring.headers = Arc::new(hs);
            } else {
                match f.kind {
                    MediaKind::Video => ring.has_video = true,
                    MediaKind::Audio => {
                        ring.has_audio = true;
                        ring.audio_codec = Some(f.codec);
                    }
                    MediaKind::Data => {}
                }
                let is_key = match f.kind {
                    MediaKind::Video => f.keyframe,
                    MediaKind::Audio => !ring.has_video,
                    MediaKind::Data => false,
                };
                if is_key {
                    if f.kind == MediaKind::Video {
                        if let Some(prev) = ring.keys.back() {
                            self.stats.last_key_interval_ms.store(dts - prev.dts, Ordering::Relaxed);
                        }
                        // Audio-only start points are useless once video flows: a reader starting there
                        // would get video that begins mid-GOP.
                        let Ring { keys, packets, first_seq, .. } = &mut *ring;
                        keys.retain(|k| ring_is_video_key(packets, *first_seq, k.seq));
                    }
                    let headers = ring.headers.clone();
                    ring.keys.push_back(KeyEntry { seq, dts, headers, session });
                }
                ring.head_dts = ring.head_dts.max(dts);
            }
            ring.bytes += packet.frame.payload.len();
            ring.packets.push_back(packet);
            self.trim(&mut ring);
            self.last_dts.fetch_max(dts, Ordering::AcqRel);
        }
        if urgent {
            self.urgent.store(true, Ordering::Release);
            self.flush_signal.notify_one();
        } else {
            let now = self.created.elapsed().as_millis() as u64 + 1;
            if self.audio_since.compare_exchange(0, now, Ordering::AcqRel, Ordering::Acquire).is_ok() {
                self.flush_signal.notify_one();
            }
        }
    }

    /// Drops what no reader may still need: everything before the newest keyframe that is at least the
    /// retention window old, and (for streams with absurd GOPs) whatever exceeds the byte cap.
    fn trim(&self, ring: &mut Ring) {
        let horizon = ring.head_dts - self.retention_ms;
        while ring.keys.len() >= 2 && ring.keys[1].dts <= horizon {
            ring.keys.pop_front();
        }
        let keep_from = match ring.keys.front() {
            Some(k) => k.seq,
            None => ring.first_seq,
        };
        while ring.first_seq < keep_from || (ring.bytes > self.max_bytes && ring.packets.len() > 1) {
            let Some(p) = ring.packets.pop_front() else { break };
            ring.bytes -= p.frame.payload.len();
            ring.first_seq += 1;
        }
        while ring.keys.front().is_some_and(|k| k.seq < ring.first_seq) {
            ring.keys.pop_front();
        }
    }

    /// Registers a reader's waker for the next wake-up; `gen` is the reader's record of the wake-up it last
    /// registered for, so repeated polls between two wake-ups cost one atomic load.
    pub(crate) fn register_waker(&self, waker: &Waker, gen: &mut u64) {
        let mut w = self.wakers.lock();
        let current = self.wake_gen.load(Ordering::Acquire);
        if *gen != current {
            w.push(waker.clone());
            *gen = current;
        }
    }

    fn flush_class(&self, class: Class) {
        fanout::flush(self, Format::Flv, class);
        fanout::flush(self, Format::Rtmp, class);
        if class == Class::Immediate {
            let g = self.parked_elsewhere.lock().as_ref().map(|(g, _)| g.clone());
            if let Some(g) = g {
                g.flush(self);
            }
        }
    }

    pub(crate) fn wake_readers(&self) {
        let wakers = {
            let mut w = self.wakers.lock();
            self.wake_gen.fetch_add(1, Ordering::AcqRel);
            let n = w.len();
            std::mem::replace(&mut *w, Vec::with_capacity(n))
        };
        for w in wakers {
            w.wake();
        }
    }

    /// Runs for the stream's life and sets the write rate of the whole fan-out (each flush is one write per
    /// player). A video frame (or anything urgent) wakes readers and flushes rtc players at once; audio waits
    /// for the next video frame, at most `audio_hold`. The other parked players are in two phases flushed at
    /// alternate video frames, so each write carries two frames and their audio — when the next frame is due
    /// within `merge_window`; otherwise (low frame rates, or a zero window) every frame flushes both, and a
    /// frame never waits longer than the window.
    pub(crate) async fn run_flusher(self: Arc<Self>) {
        let mut audio_deadline: Option<Instant> = None;
        // Per phase: when the oldest video frame it holds must go out.
        let mut due: [Option<Instant>; fanout::PHASES] = [None; fanout::PHASES];
        let window_ms = self.merge_window.as_millis() as i64;
        loop {
            let deadline = due.iter().chain([&audio_deadline]).flatten().min().copied();
            match deadline {
                Some(d) => {
                    tokio::select! {
                        _ = self.flush_signal.notified() => {}
                        _ = tokio::time::sleep_until(d.into()) => {}
                    }
                }
                None => self.flush_signal.notified().await,
            }
            let closed = self.is_closed();
            let now = Instant::now();
            if self.urgent.swap(false, Ordering::AcqRel) || closed {
                audio_deadline = None;
                self.audio_since.store(0, Ordering::Release);
                self.flush_class(Class::Immediate);
                self.wake_readers();
                let frames = self.stats.video_frames.load(Ordering::Relaxed) as usize;
                let interval = self.video_interval_ms.load(Ordering::Relaxed);
                let merging = interval > 0 && interval <= window_ms && !closed;
                for (p, d) in due.iter_mut().enumerate() {
                    if !merging || frames % fanout::PHASES == p {
                        *d = None;
                        self.flush_class(Class::Merged(p));
                    } else if d.is_none() {
                        *d = Some(now + self.merge_window);
                    }
                }
            } else if audio_deadline.is_none() {
                let since = self.audio_since.load(Ordering::Acquire);
                if since != 0 {
                    audio_deadline = Some(self.created + Duration::from_millis(since - 1) + self.audio_hold);
                }
            }
            if audio_deadline.is_some_and(|d| d <= now) {
                audio_deadline = None;
                self.audio_since.store(0, Ordering::Release);
                self.flush_class(Class::Immediate);
                self.wake_readers();
                // Audio alone (video paused): a phase holding no video frame has nothing to wait for.
                for (p, d) in due.iter().enumerate() {
                    if d.is_none() {
                        self.flush_class(Class::Merged(p));
                    }
                }
            }
            for (p, d) in due.iter_mut().enumerate() {
                if d.is_some_and(|d| d <= now) {
                    *d = None;
                    self.flush_class(Class::Merged(p));
                }
            }
            if closed {
                fanout::release_all(&self);
                self.release_elsewhere();
                return;
            }
        }
    }

    /// The on-demand source publishing this stream, if any.
    pub fn source(&self) -> Option<SourceInfo> {
        self.on_demand.lock().as_ref().map(|h| h.info.clone())
    }

    /// Who is reading this stream now: players and livegate's own readers.
    pub fn attachments(&self) -> Vec<AttachmentInfo> {
        self.attachments.snapshot()
    }

    pub fn reader_count(&self) -> usize {
        self.stats.readers.iter().map(|r| r.load(Ordering::Relaxed)).sum()
    }

    /// Counts SEI NAL units found malformed (`n` of them in one frame), with a warning for the first and then
    /// one per thousand: a publisher sending them in every frame must not flood the log.
    pub fn count_malformed_sei(&self, n: usize) {
        if n == 0 {
            return;
        }
        let before = self.stats.sei_malformed.fetch_add(n as u64, Ordering::Relaxed);
        if before == 0 || before / 1000 != (before + n as u64) / 1000 {
            tracing::warn!(stream = %self.key, total = before + n as u64, "malformed SEI dropped (the frame passes on)");
        }
    }

    /// Queues an SEI NAL unit (built by `media::sei::build_nal`) for the next H.264 video frame, so every
    /// reader gets it with the picture it belongs to.
    pub fn inject_sei(&self, nal: Vec<u8>) -> Result<(), SeiInjectError> {
        match self.headers().video.as_ref().map(|p| p.frame.codec) {
            Some(Codec::H264) => {}
            Some(other) => return Err(SeiInjectError::NotH264(other.name())),
            None => return Err(SeiInjectError::NoVideo),
        }
        let mut q = self.sei_pending.lock();
        if q.len() >= MAX_PENDING_SEI {
            return Err(SeiInjectError::Busy(MAX_PENDING_SEI));
        }
        q.push(nal);
        self.sei_waiting.store(q.len(), Ordering::Relaxed);
        Ok(())
    }

    fn add_pending_sei(&self, frame: &mut Frame) {
        if frame.codec != Codec::H264 {
            return;
        }
        let len_size = self
            .headers()
            .video
            .as_ref()
            .and_then(|p| crate::media::avc::AvcDecoderConfig::parse(&p.frame.payload).ok())
            .map_or(4, |c| usize::from(c.nal_length_size));
        let pending = std::mem::take(&mut *self.sei_pending.lock());
        self.sei_waiting.store(0, Ordering::Relaxed);
        for nal in pending.iter().rev() {
            match crate::media::sei::insert_into(&frame.payload, len_size, nal) {
                Some(p) => frame.payload = p,
                None => tracing::warn!(stream = %self.key, "an injected SEI was dropped: the video frame is malformed"),
            }
        }
    }

    /// The publisher's ingest health now: (quality, state, delay ms, jitter ms, last 1 s, last 10 s).
    pub fn health(&self) -> Health {
        let now = self.created.elapsed().as_millis() as u64;
        let m = self.health.lock();
        Health {
            quality: m.quality(),
            publisher_state: m.state(),
            delay_ms: m.delay_ms().round(),
            jitter_ms: (m.jitter_ms() * 10.0).round() / 10.0,
            last_1s: m.window(now, 1),
            last_10s: m.window(now, 10),
            loss_percent: m.loss_percent(now).map(|p| (p * 10.0).round() / 10.0),
        }
    }

    /// A WebRTC publisher's RTP loss before repair over its last second (percent), for its quality level.
    pub fn observe_loss(&self, percent: f64) {
        let now = self.created.elapsed().as_millis() as u64;
        self.health.lock().observe_loss(now, percent);
    }

    /// Re-reads the publisher's health (the hub's ticker, once a second): what changed.
    pub(crate) fn evaluate_health(&self) -> Vec<HealthChange> {
        let now = self.created.elapsed().as_millis() as u64;
        self.health.lock().evaluate(now)
    }

    /// A new publisher: its health is its own.
    pub(crate) fn reset_health(&self) {
        *self.health.lock() = IngestMeter::default();
    }

    /// Current rates, recomputed when the last sample is at least a second old.
    pub fn rates(&self) -> (f64, f64, f64) {
        let mut r = self.rate.lock();
        let now = Instant::now();
        let elapsed = now.duration_since(r.at).as_secs_f64();
        if elapsed >= 1.0 {
            let inb = self.stats.bytes_in.load(Ordering::Relaxed);
            let outb = self.stats.bytes_out.load(Ordering::Relaxed);
            let frames = self.stats.video_frames.load(Ordering::Relaxed);
            r.in_rate = (inb - r.in_total) as f64 * 8.0 / elapsed;
            r.out_rate = (outb - r.out_total) as f64 * 8.0 / elapsed;
            r.fps = (frames - r.frames) as f64 / elapsed;
            r.in_total = inb;
            r.out_total = outb;
            r.frames = frames;
            r.at = now;
        }
        (r.in_rate, r.out_rate, r.fps)
    }
}

fn ring_is_video_key(packets: &VecDeque<Arc<Packet>>, first_seq: u64, seq: u64) -> bool {
    seq.checked_sub(first_seq).and_then(|i| packets.get(i as usize)).is_some_and(|p| p.frame.kind == MediaKind::Video)
}
