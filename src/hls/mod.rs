//! Live HLS: one segmenter per stream (a hub reader, started by the first playlist request and stopped when
//! nobody has fetched anything for `hls.idle_stop_secs`), MPEG-TS segments cut on keyframes and held in memory.
//!
//! `GET /{app}/{stream}.m3u8` → playlist; segments are `/{app}/{stream}/{instance}-{seq}.ts`, where `instance`
//! is random per segmenter run, so a segment URL always names the same bytes and may be cached for good.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::Notify;

pub use crate::config::HlsConfig;
use crate::hub::{Audience, CachePolicy, EndReason, Hub, HubError, Packet, Protocol, Purpose, Reader, StreamKey};
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

struct Segmenter {
    key: StreamKey,
    instance: String,
    state: Mutex<SegState>,
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
}

/// All segmenters, keyed by stream.
pub struct Hls {
    hub: Hub,
    cfg: HlsConfig,
    segmenters: Mutex<HashMap<StreamKey, Arc<Segmenter>>>,
}

impl Hls {
    pub fn new(hub: Hub, cfg: HlsConfig) -> Arc<Self> {
        Arc::new(Self { hub, cfg, segmenters: Mutex::new(HashMap::new()) })
    }

    /// The playlist of a stream, starting its segmenter if needed and waiting for its first segment.
    pub async fn playlist(self: &Arc<Self>, key: &StreamKey, query: &str) -> Result<String, HlsError> {
        let seg = self.segmenter(key)?;
        seg.touch();
        let deadline = tokio::time::Instant::now() + Duration::from_secs_f64(self.cfg.segment_secs * 3.0 + 2.0);
        loop {
            let notified = seg.new_segment.notified();
            {
                let st = seg.state.lock();
                if !st.segments.is_empty() {
                    return Ok(self.render(&seg, &st, query));
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
        let seg = Arc::new(Segmenter {
            key: key.clone(),
            instance: format!("{:08x}", rand::random::<u32>()),
            state: Mutex::new(SegState::default()),
            new_segment: Notify::new(),
            last_access: AtomicU64::new(0),
            started: Instant::now(),
        });
        map.insert(key.clone(), seg.clone());
        let this = self.clone();
        let s = seg.clone();
        tokio::spawn(async move {
            let _client = handle;
            this.run(&s, reader).await;
            let mut map = this.segmenters.lock();
            if map.get(&s.key).is_some_and(|x| Arc::ptr_eq(x, &s)) {
                map.remove(&s.key);
            }
            tracing::info!(stream = %s.key, "hls segmenter stopped");
        });
        tracing::info!(stream = %key, instance = %seg.instance, "hls segmenter started");
        Ok(seg)
    }

    async fn run(&self, seg: &Segmenter, mut reader: Reader) {
        let mut cut = Cutter::new(self.cfg.segment_secs, self.cfg.window + 2);
        let mut batch: Vec<Arc<Packet>> = Vec::new();
        let idle_stop = Duration::from_secs_f64(self.cfg.idle_stop_secs);
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                r = reader.next_batch(&mut batch) => match r {
                    Ok(()) => {
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
                    Err(reason) => {
                        if let Some(done) = cut.finish() {
                            seg.publish(done, cut.keep);
                        }
                        seg.state.lock().ended = true;
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

impl Segmenter {
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
