//! Live HLS: one segmenter per stream (a hub reader, started by the first playlist request and stopped when
//! nobody has fetched anything for `hls.idle_stop_secs`), segments cut on keyframes and held in memory.
//!
//! Three variants (`hls.variant`, per app `hls_variant`): MPEG-TS segments; CMAF (fMP4) segments; and
//! Low-Latency HLS on CMAF, whose parts are listed as they complete and whose playlist requests may block until
//! a part exists (`_HLS_msn`/`_HLS_part`: one wake-up per part for all waiting requests, not one per request).
//!
//! `GET /{app}/{stream}.m3u8` → playlist; media is `/{app}/{stream}/{instance}-{seq}.ts` (MPEG-TS), or
//! `{instance}-init{n}.mp4`, `{instance}-{msn}.m4s` and parts `{instance}-{msn}.{part}.m4s` (CMAF), where
//! `instance` is random per segmenter run, so a media URL always names the same bytes and may be cached for
//! good. Every part is one `Bytes` shared by all clients; a segment is its parts joined once.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::Notify;

pub use crate::config::HlsConfig;
use crate::config::{HlsVariant, WebrtcAudio};
use crate::hub::{
    Audience, CachePolicy, ClientGuard, EndReason, Hub, HubError, Packet, Protocol, Purpose, Reader, StreamKey,
};
use cmaf::{CmafCutter, CmafEvent};
use playlist::{Blocking, Listing, PartMeta, SegMeta};
pub mod cmaf;
pub mod playlist;

use crate::media::ts::TsMuxer;
use crate::media::{Codec, Frame, MediaKind};

#[derive(Debug, Clone)]
pub(crate) struct Segment {
    pub seq: u64,
    pub duration: f64,
    pub discontinuity: bool,
    pub data: Bytes,
}

#[derive(Default)]
struct SegState {
    segments: VecDeque<Segment>,
    /// Discontinuities that have left the window (EXT-X-DISCONTINUITY-SEQUENCE).
    discontinuity_seq: u64,
    ended: bool,
}

/// A CMAF segment: open (parts still coming) or complete.
struct CmafSeg {
    msn: u64,
    duration_ms: Option<i64>,
    discontinuity: bool,
    init: u32,
    wall_ms: u64,
    /// Its parts while they are listed (dropped once the segment is older than the part window).
    parts: Vec<(PartMeta, Bytes)>,
    part_meta: Vec<PartMeta>,
    /// The whole segment, once complete: its parts joined.
    data: Option<Bytes>,
}

#[derive(Default)]
struct CmafState {
    inits: VecDeque<(u32, Bytes)>,
    segs: VecDeque<CmafSeg>,
    discontinuity_seq: u64,
    ended: bool,
    /// The part that comes next (the preload hint).
    next_part: Option<(u64, u32)>,
    /// Playlist and part requests waiting for a part now.
    waiting: usize,
}

impl CmafState {
    fn complete(&self) -> impl Iterator<Item = &CmafSeg> {
        self.segs.iter().filter(|s| s.duration_ms.is_some())
    }

    fn seg(&self, msn: u64) -> Option<&CmafSeg> {
        self.segs.iter().find(|s| s.msn == msn)
    }

    /// Whether a blocking request for (`msn`, `part`) can be answered: that part exists, or the segment is
    /// complete (a part index past its last part means part 0 of the next segment, as the spec says).
    fn has(&self, msn: u64, part: Option<u32>) -> bool {
        if self.ended || self.segs.front().is_some_and(|s| msn < s.msn) {
            return true;
        }
        match (self.seg(msn), part) {
            (Some(s), None) => s.duration_ms.is_some(),
            (Some(s), Some(p)) if (p as usize) < s.part_meta.len() => true,
            (Some(s), Some(_)) if s.duration_ms.is_some() => self.has(msn + 1, Some(0)),
            _ => false,
        }
    }
}

/// The most requests one stream may hold waiting for a part: beyond, 503 (memory stays bounded).
const MAX_WAITING: usize = 20_000;

struct Segmenter {
    key: StreamKey,
    instance: String,
    variant: HlsVariant,
    state: Mutex<SegState>,
    cmaf: Mutex<CmafState>,
    /// Woken once per segment (and, for CMAF, once per part) for every request waiting.
    new_segment: Notify,
    /// Milliseconds since `started` of the last playlist or segment request.
    last_access: AtomicU64,
    started: Instant,
}

impl Segmenter {
    fn touch(&self) {
        self.last_access.store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn idle_for(&self) -> Duration {
        Duration::from_millis(
            (self.started.elapsed().as_millis() as u64).saturating_sub(self.last_access.load(Ordering::Relaxed)),
        )
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HlsError {
    #[error("{0}")]
    NotFound(String),
    #[error("no segment of {0} was ready in time (is the publisher sending video?)")]
    NotReady(String),
    /// A malformed or impossible blocking request (`_HLS_msn` far in the future …): 400.
    #[error("{0}")]
    BadRequest(String),
    /// The awaited part did not come in time, or too many requests wait already: 503.
    #[error("{0}")]
    Busy(String),
}

/// A media file of a stream's HLS: its bytes and content type.
pub struct MediaFile {
    pub data: Bytes,
    pub content_type: &'static str,
}

/// All segmenters, keyed by stream.
pub struct Hls {
    hub: Hub,
    cfg: HlsConfig,
    /// Apps whose variant is not `cfg.variant`.
    variants: HashMap<String, HlsVariant>,
    segmenters: Mutex<HashMap<StreamKey, Arc<Segmenter>>>,
}

impl Hls {
    pub fn new(hub: Hub, cfg: HlsConfig, variants: HashMap<String, HlsVariant>) -> Arc<Self> {
        Arc::new(Self { hub, cfg, variants, segmenters: Mutex::new(HashMap::new()) })
    }

    /// The variant streams of `app` get.
    pub fn variant(&self, app: &str) -> HlsVariant {
        self.variants.get(app).copied().unwrap_or(self.cfg.variant)
    }

    /// The playlist of a stream, starting its segmenter if needed and waiting for its first segment. `query`
    /// is the request's (its `_HLS_*` parameters block a Low-Latency request until that part exists); the
    /// answer says whether it blocked (such answers are cacheable by their query).
    pub async fn playlist(self: &Arc<Self>, key: &StreamKey, query: &str) -> Result<(String, bool), HlsError> {
        let seg = self.segmenter(key)?;
        seg.touch();
        if seg.variant != HlsVariant::Mpegts {
            return self.cmaf_playlist(&seg, query).await;
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs_f64(self.cfg.segment_secs * 3.0 + 2.0);
        loop {
            let notified = seg.new_segment.notified();
            {
                let st = seg.state.lock();
                if !st.segments.is_empty() {
                    return Ok((self.render(&seg, &st, query), false));
                }
                if st.ended {
                    return Err(HlsError::NotFound(format!("stream {key} ended before its first segment")));
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(HlsError::NotReady(key.to_string()));
            }
        }
    }

    async fn cmaf_playlist(&self, seg: &Segmenter, query: &str) -> Result<(String, bool), HlsError> {
        let low_latency = seg.variant == HlsVariant::Lowlatency;
        let blocking = match Blocking::parse(&crate::names::parse_query(query)) {
            Ok(b) if low_latency => b,
            Ok(_) => Blocking::default(),
            Err(e) => return Err(HlsError::BadRequest(e.to_string())),
        };
        let segment_ms = (self.cfg.segment_secs * 1000.0) as i64;
        // The first complete segment (a player needs one to start), then for a blocking request its part.
        let first_wait = Duration::from_secs_f64(self.cfg.segment_secs * 3.0 + 2.0);
        seg.wait_for(
            first_wait,
            |st| st.complete().next().is_some() || st.ended,
            || HlsError::NotReady(seg.key.to_string()),
        )
        .await?;
        if let Some(msn) = blocking.msn {
            {
                let st = seg.cmaf.lock();
                let last = st.segs.back().map_or(0, |s| s.msn);
                if msn > last + 2 {
                    return Err(HlsError::BadRequest(format!(
                        "_HLS_msn={msn} is more than two segments past the last one ({last})"
                    )));
                }
            }
            // Three target durations, as the spec bounds a blocked reload.
            let limit = Duration::from_secs_f64(3.0 * (self.cfg.segment_secs.ceil()).max(1.0));
            let part = blocking.part;
            let busy = || HlsError::Busy(format!("segment {msn} part {part:?} of {} did not come in time", seg.key));
            seg.wait_for(limit, |st| st.has(msn, part), busy).await?;
        }
        let st = seg.cmaf.lock();
        if st.segs.is_empty() {
            return Err(HlsError::NotFound(format!("stream {} ended before its first segment", seg.key)));
        }
        let window_start = st.complete().count().saturating_sub(self.cfg.window);
        let mut passed = st.discontinuity_seq;
        let mut metas = Vec::with_capacity(st.segs.len());
        let mut complete_seen = 0;
        for s in &st.segs {
            if s.duration_ms.is_some() {
                complete_seen += 1;
                if complete_seen <= window_start {
                    passed += u64::from(s.discontinuity);
                    continue;
                }
            }
            metas.push(SegMeta {
                msn: s.msn,
                duration_ms: s.duration_ms,
                discontinuity: s.discontinuity,
                init: s.init,
                wall_ms: s.wall_ms,
                parts: if low_latency { &s.part_meta[..s.parts.len().min(s.part_meta.len())] } else { &[] },
            });
        }
        if !low_latency {
            metas.retain(|m| m.duration_ms.is_some());
        }
        let base = format!("{}/{}-", seg.key.name, seg.instance);
        let stripped = Blocking::strip(query);
        let q = if stripped.is_empty() { String::new() } else { format!("?{stripped}") };
        let listing = Listing {
            base: &base,
            query: &q,
            low_latency,
            part_target_ms: (self.cfg.part_secs * 1000.0).round() as i64,
            segment_ms,
            segments: &metas,
            discontinuity_seq: passed,
            ended: st.ended,
            skip: blocking.skip,
            preload: st.next_part,
        };
        Ok((playlist::render(&listing), blocking.msn.is_some()))
    }

    /// A CMAF media file by name: `{instance}-init{n}.mp4`, `{instance}-{msn}.m4s` or `{instance}-{msn}.{part}.m4s`.
    /// The part a preload hint names is waited for (until complete, bounded).
    pub async fn media_file(&self, key: &StreamKey, file: &str) -> Option<MediaFile> {
        let seg = self.segmenters.lock().get(key).cloned()?;
        let rest = file.strip_prefix(seg.instance.as_str())?.strip_prefix('-')?;
        seg.touch();
        if let Some(n) = rest.strip_prefix("init").and_then(|r| r.strip_suffix(".mp4")) {
            let n: u32 = n.parse().ok()?;
            let st = seg.cmaf.lock();
            let data = st.inits.iter().find(|(i, _)| *i == n)?.1.clone();
            return Some(MediaFile { data, content_type: "video/mp4" });
        }
        let name = rest.strip_suffix(".m4s")?;
        let file = |data: Bytes| Some(MediaFile { data, content_type: "video/iso.segment" });
        match name.split_once('.') {
            None => {
                let msn: u64 = name.parse().ok()?;
                let st = seg.cmaf.lock();
                file(st.seg(msn)?.data.clone()?)
            }
            Some((msn, part)) => {
                let (msn, part): (u64, u32) = (msn.parse().ok()?, part.parse().ok()?);
                let find = |st: &CmafState| st.seg(msn).and_then(|s| s.parts.get(part as usize)).map(|p| p.1.clone());
                {
                    let st = seg.cmaf.lock();
                    if let Some(d) = find(&st) {
                        return file(d);
                    }
                    // Only the part that comes next is waited for; any other missing part is gone or bogus.
                    if st.next_part != Some((msn, part)) || st.ended {
                        return None;
                    }
                }
                let limit = Duration::from_secs_f64(self.cfg.part_secs * 3.0 + self.cfg.segment_secs);
                seg.wait_for(limit, |st| find(st).is_some() || st.ended, || HlsError::Busy(String::new()))
                    .await
                    .ok()?;
                let st = seg.cmaf.lock();
                file(find(&st)?)
            }
        }
    }

    /// A segment by its file name (`{instance}-{seq}.ts`).
    pub fn segment(&self, key: &StreamKey, file: &str) -> Option<Bytes> {
        let seg = self.segmenters.lock().get(key).cloned()?;
        let (instance, seq) = file.strip_suffix(".ts")?.rsplit_once('-')?;
        if instance != seg.instance {
            return None;
        }
        let seq: u64 = seq.parse().ok()?;
        seg.touch();
        let st = seg.state.lock();
        st.segments.iter().find(|s| s.seq == seq).map(|s| s.data.clone())
    }

    fn segmenter(self: &Arc<Self>, key: &StreamKey) -> Result<Arc<Segmenter>, HlsError> {
        let mut map = self.segmenters.lock();
        if let Some(s) = map.get(key) {
            return Ok(s.clone());
        }
        let handle = self.hub.register_client(Protocol::Hls, None);
        // Start at the newest keyframe; never skip (the segmenter keeps up unless the machine cannot).
        let policy = CachePolicy::internal(self.hub.options().retention);
        let audience = Audience::Internal(Purpose::HlsSegmenter);
        let reader = self.hub.subscribe_as(key, Protocol::Hls, policy, handle.handle.clone(), audience).map_err(
            |e| match e {
                HubError::NotFound(_) => HlsError::NotFound(e.to_string()),
                other => HlsError::NotFound(other.to_string()),
            },
        )?;
        let variant = self.variant(&key.app);
        // A WHIP stream's fMP4 takes the browser's Opus from its `@opus` rendition (the stream itself carries
        // the AAC made for RTMP and FLV readers).
        let opus = match variant {
            HlsVariant::Fmp4 | HlsVariant::Lowlatency if self.cfg.webrtc_audio == WebrtcAudio::Opus => {
                self.whip_opus(key, policy)
            }
            _ => None,
        };
        let seg = Arc::new(Segmenter {
            key: key.clone(),
            instance: format!("{:08x}", rand::random::<u32>()),
            variant,
            state: Mutex::new(SegState::default()),
            cmaf: Mutex::new(CmafState::default()),
            new_segment: Notify::new(),
            last_access: AtomicU64::new(0),
            started: Instant::now(),
        });
        map.insert(key.clone(), seg.clone());
        let this = self.clone();
        let s = seg.clone();
        tokio::spawn(async move {
            let _client = handle;
            this.run(&s, reader, opus).await;
            let mut map = this.segmenters.lock();
            if map.get(&s.key).is_some_and(|x| Arc::ptr_eq(x, &s)) {
                map.remove(&s.key);
            }
            tracing::info!(stream = %s.key, "hls segmenter stopped");
        });
        tracing::info!(stream = %key, instance = %seg.instance, variant = ?seg.variant, "hls segmenter started");
        Ok(seg)
    }

    /// The reader of `key`'s `@opus` rendition when `key` is published over WHIP and the session publishes the
    /// browser's Opus there (not a transcode: an RTMP stream's `@opus` is made from its AAC).
    fn whip_opus(&self, key: &StreamKey, policy: CachePolicy) -> Option<(Reader, ClientGuard)> {
        let whip = |k: &StreamKey| {
            self.hub
                .get(k)
                .filter(|s| !s.is_closed())
                .and_then(|s| s.publisher())
                .is_some_and(|p| p.protocol == Protocol::Whip)
        };
        let opus_key = StreamKey::new(&key.app, &format!("{}@opus", key.name));
        if !whip(key) || !whip(&opus_key) {
            return None;
        }
        let handle = self.hub.register_client(Protocol::Hls, None);
        let audience = Audience::Internal(Purpose::HlsSegmenter);
        // From as far back as the stream keeps: the video reader starts at its cached keyframe, up to a GOP
        // back, and the audio must cover the same time (the cutter drops what comes before that keyframe).
        let policy = CachePolicy { min_cache: policy.max_cache, ..policy };
        match self.hub.subscribe_as(&opus_key, Protocol::Hls, policy, handle.handle.clone(), audience) {
            Ok(r) => Some((r, handle)),
            Err(e) => {
                tracing::info!(stream = %key, error = %e, "fMP4 HLS takes the stream's AAC: its Opus is gone");
                None
            }
        }
    }

    async fn run(&self, seg: &Segmenter, mut reader: Reader, opus: Option<(Reader, ClientGuard)>) {
        let (mut opus, _opus_client) = opus.unzip();
        let mut mux = if seg.variant == HlsVariant::Mpegts {
            SegMux::Ts(Box::new(Cutter::new(self.cfg.segment_secs, self.cfg.window + 2)))
        } else {
            let part_ms = (self.cfg.part_secs * 1000.0).round() as i64;
            let segment_ms = (self.cfg.segment_secs * 1000.0) as i64;
            // Its tracks are set with the stream's first batch (a reader knows them from then on).
            let cut = Box::new(CmafCutter::new(part_ms, segment_ms, false, false));
            SegMux::Cmaf { cut, tracks_known: false, warned: false, own_audio: opus.is_none(), held: VecDeque::new() }
        };
        if opus.is_some() {
            tracing::info!(stream = %seg.key, "fMP4 HLS carries the WHIP publisher's Opus");
        }
        let mut opus_batch: Vec<Arc<Packet>> = Vec::new();
        // CMAF segments kept: the window, and a few more for players a little behind.
        let keep = self.cfg.window + 2;
        let mut batch: Vec<Arc<Packet>> = Vec::new();
        let idle_stop = Duration::from_secs_f64(self.cfg.idle_stop_secs);
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                r = reader.next_batch(&mut batch) => match r {
                    Ok(()) => mux.take(seg, &reader, &mut batch, Batch::Stream, keep),
                    Err(reason) => {
                        mux.end(seg, keep);
                        seg.new_segment.notify_waiters();
                        if reason != EndReason::StreamClosed {
                            tracing::info!(stream = %seg.key, %reason, "hls segmenter ended");
                            return;
                        }
                        // Keep serving the finished playlist until clients stop asking.
                        while seg.idle_for() < idle_stop {
                            tick.tick().await;
                        }
                        return;
                    }
                },
                r = next_of(&mut opus, &mut opus_batch) => match r {
                    Ok(()) => mux.take(seg, &reader, &mut opus_batch, Batch::Opus, keep),
                    Err(reason) => {
                        // The session ended or its Opus stopped: whatever follows on the stream has AAC again.
                        tracing::info!(stream = %seg.key, %reason, "the WHIP Opus ended: fMP4 HLS goes on with the stream's AAC");
                        opus = None;
                        mux.own_audio(seg, &reader, keep);
                    }
                },
                _ = tick.tick() => {
                    if seg.idle_for() >= idle_stop {
                        return;
                    }
                }
            }
        }
    }

    fn render(&self, seg: &Segmenter, st: &SegState, query: &str) -> String {
        use std::fmt::Write;
        let window: Vec<&Segment> =
            st.segments.iter().rev().take(self.cfg.window).collect::<Vec<_>>().into_iter().rev().collect();
        let target = window.iter().map(|s| s.duration).fold(self.cfg.segment_secs, f64::max).ceil() as u64;
        let first = window.first().map(|s| s.seq).unwrap_or(0);
        // Discontinuities in segments that are still held but already outside the window count as passed.
        let passed = st.discontinuity_seq
            + st.segments.iter().take_while(|s| s.seq < first).filter(|s| s.discontinuity).count() as u64;
        let mut o = String::with_capacity(512);
        let _ = writeln!(o, "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:{target}\n#EXT-X-MEDIA-SEQUENCE:{first}");
        if passed > 0 {
            let _ = writeln!(o, "#EXT-X-DISCONTINUITY-SEQUENCE:{passed}");
        }
        let q = if query.is_empty() { String::new() } else { format!("?{query}") };
        for s in window {
            if s.discontinuity {
                let _ = writeln!(o, "#EXT-X-DISCONTINUITY");
            }
            let _ = writeln!(o, "#EXTINF:{:.3},\n{}/{}-{}.ts{q}", s.duration, seg.key.name, seg.instance, s.seq);
        }
        if st.ended {
            let _ = writeln!(o, "#EXT-X-ENDLIST");
        }
        o
    }
}

/// The next batch of a reader that may not be there (then never).
async fn next_of(r: &mut Option<Reader>, batch: &mut Vec<Arc<Packet>>) -> Result<(), EndReason> {
    match r {
        Some(r) => r.next_batch(batch).await,
        None => std::future::pending().await,
    }
}

/// A segmenter's muxer: MPEG-TS segments, or CMAF parts and segments.
enum SegMux {
    Ts(Box<Cutter>),
    /// `own_audio`: the stream's audio goes in (false while a WHIP stream's Opus comes from its rendition);
    /// `held`: the rendition's audio not yet in a part (see `interleave`).
    Cmaf {
        cut: Box<CmafCutter>,
        tracks_known: bool,
        warned: bool,
        own_audio: bool,
        held: VecDeque<Arc<Packet>>,
    },
}

/// Puts held rendition audio into the cutter up to the stream's newest frame, so parts carry the audio of
/// their own time (a WHIP stream's video and Opus come from two readers, in batches of their own). Audio
/// more than a second ahead of the video goes in anyway (video slowed to a still picture, or stopped).
fn interleave(cut: &mut CmafCutter, held: &mut VecDeque<Arc<Packet>>, events: &mut Vec<CmafEvent>) {
    // Without video the audio is what cuts: nothing to wait for.
    let upto = if cut.has_video() { cut.newest_dts() } else { Some(i64::MAX) };
    let Some(upto) = upto else { return };
    while let Some(a) = held.front() {
        let ahead = held.back().map_or(0, |b| b.frame.dts.saturating_sub(upto));
        if a.frame.dts > upto && ahead <= 1000 {
            return;
        }
        let a = held.pop_front().expect("front");
        events.extend(cut.push(&a.frame, wall_ms(a.received)));
    }
}

/// Rendition audio held for interleaving, at most (10 s of 20 ms packets: the reader's first batch).
const MAX_HELD_AUDIO: usize = 500;

/// Where a batch came from: the stream's reader, or its WHIP Opus rendition's.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Batch {
    Stream,
    Opus,
}

impl SegMux {
    /// A batch of the stream's packets into segments (and parts), published as they complete.
    fn take(&mut self, seg: &Segmenter, reader: &Reader, batch: &mut Vec<Arc<Packet>>, from: Batch, keep: usize) {
        match self {
            SegMux::Ts(cut) => {
                if cut.muxer.is_none() {
                    let t = reader.tracks();
                    let audio = reader.stream().audio_codec();
                    cut.muxer = Some(TsMuxer::new(t.video, t.audio).with_audio_codec(audio));
                }
                for p in batch.drain(..) {
                    if let Some(done) = cut.push(&p) {
                        seg.publish(done, cut.keep);
                    }
                }
            }
            SegMux::Cmaf { cut, tracks_known, warned, own_audio, held } => {
                let mut events = Vec::new();
                if from == Batch::Opus {
                    // The rendition's audio goes in beside the stream's frames of its time (see `interleave`).
                    held.extend(batch.drain(..));
                    while held.len() > MAX_HELD_AUDIO {
                        held.pop_front();
                    }
                    if *tracks_known {
                        interleave(cut, held, &mut events);
                    }
                } else {
                    if !*tracks_known {
                        let t = reader.tracks();
                        cut.set_tracks(t.video, t.audio || !*own_audio);
                        if !*own_audio {
                            // The rendition's first packet may come after the first keyframe.
                            cut.push(&cmaf::opus_config(), 0);
                        }
                        *tracks_known = true;
                    }
                    for p in batch.drain(..) {
                        // The rendition's Opus is the only Opus there is; the stream's own AAC waits its turn.
                        let theirs = p.frame.kind == MediaKind::Audio && p.frame.codec != Codec::Opus;
                        if theirs && !*own_audio {
                            continue;
                        }
                        events.extend(cut.push(&p.frame, wall_ms(p.received)));
                        if !held.is_empty() {
                            interleave(cut, held, &mut events);
                        }
                    }
                }
                if let (Some(codec), false) = (cut.skipped_codec, *warned) {
                    tracing::warn!(stream = %seg.key, ?codec, "fMP4 HLS carries H.264, H.265, AAC and Opus: this track is left out");
                    *warned = true;
                }
                if !events.is_empty() {
                    seg.apply(events, keep);
                }
            }
        }
    }

    /// The stream's own audio goes in from now on (a WHIP stream's Opus rendition ended): its configuration
    /// now, so the next keyframe starts a new initialization section with it.
    fn own_audio(&mut self, seg: &Segmenter, reader: &Reader, keep: usize) {
        if let SegMux::Cmaf { cut, own_audio, .. } = self {
            *own_audio = true;
            if let Some(h) = reader.stream().headers().audio.as_ref() {
                let events = cut.push(&h.frame, wall_ms(h.received));
                if !events.is_empty() {
                    seg.apply(events, keep);
                }
            }
        }
    }

    /// The stream ended: the last segment, and the playlist marked ended.
    fn end(&mut self, seg: &Segmenter, keep: usize) {
        match self {
            SegMux::Ts(cut) => {
                if let Some(done) = cut.finish() {
                    seg.publish(done, cut.keep);
                }
                seg.state.lock().ended = true;
            }
            SegMux::Cmaf { cut, .. } => {
                let events = cut.finish();
                seg.apply(events, keep);
                seg.cmaf.lock().ended = true;
            }
        }
    }
}

/// Unix ms of a hub arrival instant (program date-times say when a segment's first frame reached livegate).
fn wall_ms(at: Instant) -> u64 {
    let now = std::time::SystemTime::now();
    let then = now.checked_sub(at.elapsed()).unwrap_or(now);
    then.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl Segmenter {
    /// Waits until `ready` holds for the CMAF state (one wake-up per part for every waiter), bounded by `limit`
    /// and by [`MAX_WAITING`] waiters.
    async fn wait_for(
        &self,
        limit: Duration,
        ready: impl Fn(&CmafState) -> bool,
        late: impl FnOnce() -> HlsError,
    ) -> Result<(), HlsError> {
        let deadline = tokio::time::Instant::now() + limit;
        {
            let mut st = self.cmaf.lock();
            if ready(&st) {
                return Ok(());
            }
            if st.waiting >= MAX_WAITING {
                return Err(HlsError::Busy(format!("{MAX_WAITING} requests of {} wait already", self.key)));
            }
            st.waiting += 1;
        }
        // Counted out however the wait ends, a client that hangs up (the future dropped) included.
        struct Waiting<'a>(&'a Mutex<CmafState>);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.lock().waiting -= 1;
            }
        }
        let _waiting = Waiting(&self.cmaf);
        loop {
            let notified = self.new_segment.notified();
            if ready(&self.cmaf.lock()) {
                return Ok(());
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return if ready(&self.cmaf.lock()) { Ok(()) } else { Err(late()) };
            }
        }
    }

    /// Takes the cutter's events into the served state; wakes every waiting request once.
    fn apply(&self, events: Vec<CmafEvent>, keep: usize) {
        let mut st = self.cmaf.lock();
        for ev in events {
            match ev {
                CmafEvent::Init { number, data } => {
                    st.inits.push_back((number, data));
                }
                CmafEvent::SegmentStart { msn, discontinuity, init, wall_ms } => {
                    st.segs.push_back(CmafSeg {
                        msn,
                        duration_ms: None,
                        discontinuity,
                        init,
                        wall_ms,
                        parts: Vec::new(),
                        part_meta: Vec::new(),
                        data: None,
                    });
                    st.next_part = Some((msn, 0));
                }
                CmafEvent::Part { msn, index, part } => {
                    if let Some(s) = st.segs.back_mut().filter(|s| s.msn == msn) {
                        let meta = PartMeta { duration_ms: part.duration_ms, independent: part.independent };
                        s.part_meta.push(meta);
                        s.parts.push((meta, part.data));
                    }
                    st.next_part = Some((msn, index + 1));
                }
                CmafEvent::SegmentEnd { msn, duration_ms } => {
                    if let Some(s) = st.segs.back_mut().filter(|s| s.msn == msn) {
                        s.duration_ms = Some(duration_ms);
                        let len = s.parts.iter().map(|p| p.1.len()).sum();
                        let mut whole = Vec::with_capacity(len);
                        s.parts.iter().for_each(|p| whole.extend_from_slice(&p.1));
                        s.data = Some(Bytes::from(whole));
                    }
                    st.next_part = Some((msn + 1, 0));
                }
            }
        }
        // Parts are listed (and kept) for the last few segments only; whole segments for the window.
        let complete = st.complete().count();
        let mut seen = 0;
        for s in st.segs.iter_mut() {
            if s.duration_ms.is_some() {
                seen += 1;
                if complete - seen >= 4 {
                    s.parts = Vec::new();
                }
            }
        }
        while st.complete().count() > keep {
            if let Some(old) = st.segs.pop_front() {
                st.discontinuity_seq += u64::from(old.discontinuity);
            }
        }
        let oldest_init = st.segs.front().map_or(u32::MAX, |s| s.init);
        while st.inits.len() > 1 && st.inits.front().is_some_and(|(n, _)| *n < oldest_init) {
            st.inits.pop_front();
        }
        drop(st);
        self.new_segment.notify_waiters();
    }

    fn publish(&self, s: Segment, keep: usize) {
        let mut st = self.state.lock();
        st.segments.push_back(s);
        while st.segments.len() > keep {
            if let Some(old) = st.segments.pop_front() {
                if old.discontinuity {
                    st.discontinuity_seq += 1;
                }
            }
        }
        drop(st);
        self.new_segment.notify_waiters();
    }
}

/// Cuts the packet sequence into segments: on a keyframe once the target duration is reached (on any audio
/// frame for audio-only streams), and at a codec change or timestamp jump, which also marks a discontinuity.
pub(crate) struct Cutter {
    target_ms: i64,
    keep: usize,
    muxer: Option<TsMuxer>,
    buf: Vec<u8>,
    start_dts: Option<i64>,
    last_dts: i64,
    next_seq: u64,
    discontinuity: bool,
    video_config: Option<Bytes>,
    warned: bool,
}

impl Cutter {
    /// A cutter whose track layout is known up front (recordings know it when they open a playlist).
    pub(crate) fn with_tracks(target_secs: f64, has_video: bool, has_audio: bool, audio: Option<Codec>) -> Self {
        let mut c = Self::new(target_secs, 0);
        c.muxer = Some(TsMuxer::new(has_video, has_audio).with_audio_codec(audio));
        c
    }

    /// The next segment starts a new timeline (a resumed push).
    pub(crate) fn mark_discontinuity(&mut self) {
        self.discontinuity = true;
    }

    fn new(target_secs: f64, keep: usize) -> Self {
        Self {
            target_ms: (target_secs * 1000.0) as i64,
            keep,
            muxer: None,
            buf: Vec::new(),
            start_dts: None,
            last_dts: 0,
            next_seq: 0,
            discontinuity: false,
            video_config: None,
            warned: false,
        }
    }

    pub(crate) fn push(&mut self, p: &Packet) -> Option<Segment> {
        self.push_frame(&p.frame)
    }

    pub(crate) fn push_frame(&mut self, f: &Frame) -> Option<Segment> {
        let mut done = None;
        if f.config && f.kind == MediaKind::Video {
            if self.video_config.as_ref().is_some_and(|c| *c != f.payload) {
                // New SPS/PPS (resolution change, new encoder): a fresh segment, flagged for the player.
                done = self.close(f.dts);
                self.discontinuity = true;
            }
            self.video_config = Some(f.payload.clone());
        }
        if !f.config && f.kind != MediaKind::Data {
            if self.start_dts.is_some() && (f.dts < self.last_dts - 1000 || f.dts > self.last_dts + 10_000) {
                done = done.or_else(|| self.close(self.last_dts));
                self.discontinuity = true;
            }
            let has_video = self.video_config.is_some();
            let boundary = match f.kind {
                MediaKind::Video => f.keyframe,
                _ => !has_video,
            };
            if boundary {
                if let Some(start) = self.start_dts {
                    if f.dts - start >= self.target_ms {
                        done = done.or_else(|| self.close(f.dts));
                    }
                }
            }
            // A segment opens on a keyframe (on any audio frame when there is no video), so it decodes alone.
            if self.start_dts.is_none() && boundary {
                self.start_dts = Some(f.dts);
                if let Some(m) = self.muxer.as_mut() {
                    m.write_tables(&mut self.buf);
                }
            }
            if self.start_dts.is_some() {
                self.last_dts = self.last_dts.max(f.dts);
                if f.dts < self.last_dts - 1000 {
                    self.last_dts = f.dts;
                }
            }
        }
        if let Some(m) = self.muxer.as_mut() {
            if f.config || self.start_dts.is_some() {
                if let Err(e) = m.write_frame(&mut self.buf, f) {
                    if !self.warned {
                        tracing::warn!(error = %e, "hls: frame not muxed");
                        self.warned = true;
                    }
                }
            }
        }
        done
    }

    fn close(&mut self, end_dts: i64) -> Option<Segment> {
        let start = self.start_dts.take()?;
        let data = Bytes::from(std::mem::take(&mut self.buf));
        let seq = self.next_seq;
        self.next_seq += 1;
        let discontinuity = std::mem::take(&mut self.discontinuity);
        Some(Segment { seq, duration: ((end_dts - start).max(1)) as f64 / 1000.0, discontinuity, data })
    }

    pub(crate) fn finish(&mut self) -> Option<Segment> {
        let end = self.last_dts + 33;
        self.close(end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segmenter() -> Arc<Segmenter> {
        Arc::new(Segmenter {
            key: StreamKey::new("live", "t"),
            instance: "i".into(),
            variant: HlsVariant::Lowlatency,
            state: Mutex::new(SegState::default()),
            cmaf: Mutex::new(CmafState::default()),
            new_segment: Notify::new(),
            last_access: AtomicU64::new(0),
            started: Instant::now(),
        })
    }

    #[tokio::test]
    async fn waiting_requests_are_counted_out_however_they_end() {
        let seg = segmenter();
        let s = seg.clone();
        let hung_up = tokio::spawn(async move {
            let _ = s.wait_for(Duration::from_secs(60), |_| false, || HlsError::Busy(String::new())).await;
        });
        let s = seg.clone();
        let answered = tokio::spawn(async move {
            s.wait_for(Duration::from_secs(60), |st| st.ended, || HlsError::Busy(String::new())).await
        });
        while seg.cmaf.lock().waiting < 2 {
            tokio::task::yield_now().await;
        }
        // A client that hangs up: its request's future is dropped mid-wait.
        hung_up.abort();
        let _ = hung_up.await;
        assert_eq!(seg.cmaf.lock().waiting, 1);
        // One wake-up answers the rest.
        seg.cmaf.lock().ended = true;
        seg.new_segment.notify_waiters();
        assert_eq!(answered.await.unwrap(), Ok(()));
        assert_eq!(seg.cmaf.lock().waiting, 0);
        // And beyond the bound, a request is turned away at once.
        seg.cmaf.lock().waiting = MAX_WAITING;
        let r = seg.wait_for(Duration::from_secs(60), |_| false, || HlsError::Busy(String::new())).await;
        assert!(matches!(r, Err(HlsError::Busy(m)) if m.contains("wait already")));
    }
}
