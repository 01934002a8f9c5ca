//! WHIP ingest (RFC 9725): a browser publishes into the hub, and RTMP / HTTP-FLV / HLS readers and recordings
//! get H.264 + AAC in A/V sync.
//!
//! Per session: RTP is put back in order (`reorder`), depacketized (`depacketize`), and stamped on one timeline
//! from the RTCP sender reports (`rtp_clock`). H.264 passes through untouched (AVC config rebuilt from the
//! in-band SPS/PPS); VP8 goes through one GStreamer VP8→H.264 transcoder for the stream; Opus goes through one
//! Opus→AAC transcoder and is also published as-is as the `{stream}@opus` rendition, so WebRTC viewers of a
//! WHIP stream get the browser's own audio without a round trip through AAC. Browsers send keyframes only
//! when asked, so the session asks (PLI) at start, after loss, and every `whip_keyframe_interval_secs` so
//! that players joining later start at once and HLS can cut segments.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use parking_lot::Mutex;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtcp::sender_report::SenderReport;
use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;
use tokio::sync::{mpsc, watch};
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{PeerConnection, RTCPeerConnectionState};

use super::depacketize::{H264AccessUnit, H264Depacketizer, Vp8Depacketizer};
use super::reorder::Reorder;
use super::rtp_clock::{SyncOffset, TrackClock};
use super::{
    answer, h264_codec, has_active_media, offered_codecs, opus_codec, vp8_codec, AnswerError, PeerFactory, WebrtcConfig,
};
use crate::hub::{ClientGuard, Hub, HubError, Publisher, PublisherInfo, StreamKey};
use crate::media::avc::{AvcDecoderConfig, NAL_TYPE_PPS, NAL_TYPE_SPS};
use crate::media::{Codec, Frame, MediaKind};
use crate::transcode::{sink_to_channel, Out, Template, TranscodeError};

const OPUS_TO_AAC: &str = include_str!("../../pipelines/opus_to_aac.pipeline");
const VP8_TO_H264: &str = include_str!("../../pipelines/vp8_to_h264.pipeline");

#[derive(Debug, thiserror::Error)]
pub enum WhipError {
    #[error("invalid SDP offer: {0}")]
    BadOffer(String),
    #[error(
        "the offer has no codec livegate takes for {0}: it receives video as H.264 (packetization-mode=1) or \
         VP8, and audio as Opus/48000/2"
    )]
    NoCodec(&'static str),
    #[error("{0}")]
    Taken(String),
    #[error("WebRTC failure: {0}")]
    Internal(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum VideoCodec {
    H264,
    Vp8,
}

struct Entry {
    pc: Arc<dyn PeerConnection>,
    key: StreamKey,
    stop: watch::Sender<bool>,
}

/// All WHIP sessions.
pub struct Whip {
    hub: Hub,
    cfg: WebrtcConfig,
    peers: Arc<PeerFactory>,
    opus_to_aac: Template,
    vp8_to_h264: Template,
    idle: Duration,
    sessions: Mutex<HashMap<String, Entry>>,
}

impl Whip {
    /// Loads and validates the transcoder templates (`pipelines_dir` overrides the built-in ones).
    pub(crate) fn new(
        hub: Hub,
        cfg: WebrtcConfig,
        peers: Arc<PeerFactory>,
        pipelines_dir: &str,
        idle: Duration,
    ) -> Result<Arc<Self>, TranscodeError> {
        gst::init().map_err(|e| TranscodeError::Gst(e.to_string()))?;
        let dir = Path::new(pipelines_dir);
        let opus_to_aac = Template::load(dir, "opus_to_aac", OPUS_TO_AAC)?;
        let vp8_to_h264 = Template::load(dir, "vp8_to_h264", VP8_TO_H264)?;
        let this = Self { hub, cfg, peers, opus_to_aac, vp8_to_h264, idle, sessions: Mutex::new(HashMap::new()) };
        for p in [this.aac_pipeline(), this.vp8_pipeline()] {
            let (p, _, _) = p?;
            let _ = p.set_state(gst::State::Null);
        }
        Ok(Arc::new(this))
    }

    fn aac_pipeline(&self) -> Result<(gst::Pipeline, gst_app::AppSrc, gst_app::AppSink), TranscodeError> {
        let r = self.opus_to_aac.build(&[("bitrate", self.cfg.aac_bitrate.to_string())])?;
        r.1.set_caps(Some(
            &gst::Caps::builder("audio/x-opus")
                .field("channel-mapping-family", 0i32)
                .field("channels", 2i32)
                .field("rate", 48_000i32)
                .build(),
        ));
        Ok(r)
    }

    fn vp8_pipeline(&self) -> Result<(gst::Pipeline, gst_app::AppSrc, gst_app::AppSink), TranscodeError> {
        let gop = (self.cfg.whip_keyframe_interval_secs * 30.0).round().max(1.0) as u32;
        let r = self
            .vp8_to_h264
            .build(&[("bitrate", self.cfg.vp8_transcode_kbps.to_string()), ("gop", gop.to_string())])?;
        r.1.set_caps(Some(&gst::Caps::builder("video/x-vp8").field("framerate", gst::Fraction::new(30, 1)).build()));
        Ok(r)
    }

    /// Whether `key` has a publisher now (a cheap check before any WebRTC work).
    pub fn is_taken(&self, key: &StreamKey) -> bool {
        self.hub.get(key).is_some_and(|s| !s.is_closed() && s.publisher().is_some())
    }

    /// Answers a sendonly offer and publishes the browser's media as `key`. The caller has authorized the
    /// publish for `guard`'s client. Returns (session id, answer SDP).
    pub async fn publish(
        self: &Arc<Self>,
        key: StreamKey,
        offer: String,
        guard: ClientGuard,
        info: PublisherInfo,
    ) -> Result<(String, String), WhipError> {
        if !offer.starts_with("v=0") {
            return Err(WhipError::BadOffer("an SDP offer starts with \"v=0\"".into()));
        }
        let has_video = offer.lines().any(|l| l.starts_with("m=video"));
        let has_audio = offer.lines().any(|l| l.starts_with("m=audio"));
        if !has_video && !has_audio {
            return Err(WhipError::BadOffer("the offer has no audio or video m-line".into()));
        }
        let codecs = offered_codecs(&offer);
        let offers = |name: &str| codecs.iter().any(|c| c.starts_with(name));
        // H.264 first: it passes through untouched, VP8 costs a transcode.
        let video = match has_video {
            false => None,
            true if offers("h264/90000") => Some(VideoCodec::H264),
            true if offers("vp8/90000") => Some(VideoCodec::Vp8),
            true => return Err(WhipError::NoCodec("video")),
        };
        if has_audio && !offers("opus/48000") {
            return Err(WhipError::NoCodec("audio"));
        }
        if self.is_taken(&key) {
            return Err(WhipError::Taken(format!("stream {key} is already being published")));
        }
        let mut reg = Vec::new();
        match video {
            Some(VideoCodec::H264) => reg.push((102, h264_codec(), RtpCodecKind::Video)),
            Some(VideoCodec::Vp8) => reg.push((96, vp8_codec(), RtpCodecKind::Video)),
            None => {}
        }
        if has_audio {
            reg.push((111, opus_codec(), RtpCodecKind::Audio));
        }
        let (tracks_tx, tracks_rx) = mpsc::unbounded_channel();
        let outputs = super::PeerOutputs { tracks: Some(tracks_tx), channels: None };
        let mut peer = self
            .peers
            .build(&reg, outputs, super::PeerRole::Whip)
            .await
            .map_err(|e| WhipError::Internal(e.to_string()))?;
        let sdp = match answer(&mut peer, offer).await {
            Ok(sdp) => sdp,
            Err(AnswerError::BadOffer(e)) => return Err(WhipError::BadOffer(e)),
            Err(AnswerError::Internal(e)) => return Err(WhipError::Internal(e)),
        };
        let pc = peer.pc.clone();
        if video.is_some() && !has_active_media(&sdp, "video") {
            let _ = pc.close().await;
            return Err(WhipError::NoCodec("video"));
        }
        // Claim the stream last, so a failed negotiation never leaves readers waiting on it.
        let publisher = match self.hub.publish(key.clone(), info.clone(), guard.handle.clone()) {
            Ok(p) => p,
            Err(e) => {
                let _ = pc.close().await;
                return Err(match e {
                    HubError::AlreadyPublishing(_) => WhipError::Taken(e.to_string()),
                    other => WhipError::Internal(other.to_string()),
                });
            }
        };
        let opus_key = StreamKey::new(&key.app, &format!("{}@opus", key.name));
        // The browser's own Opus for WebRTC viewers. If that name is taken (a rendition an earlier RTMP
        // publisher's viewers still hold), viewers get Opus transcoded back from the AAC instead.
        let opus_info = PublisherInfo { param: String::new(), ..info };
        let opus_pub = match has_audio {
            true => match self.hub.publish(opus_key, opus_info, guard.handle.clone()) {
                Ok(p) => Some(p),
                Err(e) => {
                    tracing::warn!(stream = %key, error = %e, "the browser's Opus is not published as a rendition");
                    None
                }
            },
            false => None,
        };
        let id = format!("{:016x}", rand::random::<u64>());
        let (stop_tx, stop_rx) = watch::channel(false);
        self.sessions.lock().insert(id.clone(), Entry { pc: pc.clone(), key: key.clone(), stop: stop_tx });
        let this = self.clone();
        let sid = id.clone();
        let span = tracing::info_span!("whip", session = %id, stream = %key, client = guard.handle.id);
        tokio::spawn(tracing::Instrument::instrument(
            async move {
                let reason =
                    this.run(peer.state, tracks_rx, stop_rx, publisher, opus_pub, video, has_audio, &guard).await;
                tracing::info!(%reason, "whip session ended");
                this.sessions.lock().remove(&sid);
                let _ = pc.close().await;
            },
            span,
        ));
        Ok((id, sdp))
    }

    /// Ends a session (WHIP DELETE). False when there is no such session.
    pub async fn delete(&self, id: &str) -> bool {
        let e = self.sessions.lock().remove(id);
        match e {
            Some(e) => {
                tracing::info!(session = %id, stream = %e.key, "whip session deleted by the client");
                let _ = e.stop.send(true);
                let _ = e.pc.close().await;
                true
            }
            None => false,
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn run(
        &self,
        mut state: watch::Receiver<RTCPeerConnectionState>,
        mut tracks: mpsc::UnboundedReceiver<Arc<dyn TrackRemote>>,
        mut stop: watch::Receiver<bool>,
        publisher: Publisher,
        opus_pub: Option<Publisher>,
        video: Option<VideoCodec>,
        audio: bool,
        guard: &ClientGuard,
    ) -> String {
        let connect_timeout = Duration::from_secs_f64(self.cfg.connect_timeout_secs);
        if let Some(reason) = super::await_connected(&mut state, &mut stop, connect_timeout).await.end_reason() {
            return reason;
        }
        tracing::info!(video = ?video, audio, "whip connected");
        let (in_tx, mut in_rx) = mpsc::channel::<Input>(4096);
        let (out_tx, mut out_rx) = mpsc::unbounded_channel::<(MediaKind, Out)>();
        let mut ingest = match Ingest::new(self, publisher, opus_pub, video, audio, out_tx) {
            Ok(i) => i,
            Err(e) => return format!("cannot start a transcoder: {e}"),
        };
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        let stream = ingest.publisher.stream().clone();
        let reason = loop {
            tokio::select! {
                Some(track) = tracks.recv() => {
                    let kind = track.kind().await;
                    if kind == RtpCodecKind::Video {
                        ingest.video_track = Some(track.clone());
                    }
                    tokio::spawn(read_track(track, kind, in_tx.clone()));
                }
                Some(input) = in_rx.recv() => ingest.on_input(input),
                Some((kind, out)) = out_rx.recv() => ingest.on_transcoded(kind, out),
                _ = tick.tick() => {
                    if let Some(reason) = guard.handle.kicked() {
                        break format!("kicked: {reason}");
                    }
                    if ingest.last_media.elapsed() > self.idle {
                        break format!("no media for {:?}", self.idle);
                    }
                    ingest.on_tick(Instant::now());
                }
                r = state.changed() => {
                    let s = *state.borrow();
                    if r.is_err() || matches!(s, RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed | RTCPeerConnectionState::Disconnected) {
                        break format!("peer connection {s:?}");
                    }
                }
                _ = stream.keyframe_requested() => ingest.keyframe_asked(Instant::now()),
                _ = stop.changed() => break "deleted by the client".into(),
            }
        };
        ingest.stop();
        reason
    }
}

enum Input {
    Rtp(RtpCodecKind, rtc::rtp::Packet, Instant),
    SenderReport(RtpCodecKind, u32, u64),
}

async fn read_track(track: Arc<dyn TrackRemote>, kind: RtpCodecKind, tx: mpsc::Sender<Input>) {
    while let Some(ev) = track.poll().await {
        let msg = match ev {
            TrackRemoteEvent::OnRtpPacket(p) => Input::Rtp(kind, p, Instant::now()),
            TrackRemoteEvent::OnRtcpPacket(pkts) => {
                let Some(sr) = pkts.iter().find_map(|p| p.as_any().downcast_ref::<SenderReport>()) else { continue };
                Input::SenderReport(kind, sr.rtp_time, sr.ntp_time)
            }
            TrackRemoteEvent::OnEnded => break,
            _ => continue,
        };
        if tx.send(msg).await.is_err() {
            break;
        }
    }
}

/// A GStreamer transcoder of the session.
struct Pipe {
    pipeline: gst::Pipeline,
    src: gst_app::AppSrc,
    sink: gst_app::AppSink,
    /// The codec_data last published, to publish a new sequence header only when it changes.
    config: Option<Bytes>,
}

impl Pipe {
    fn start(
        (pipeline, src, sink): (gst::Pipeline, gst_app::AppSrc, gst_app::AppSink),
        kind: MediaKind,
        out: &mpsc::UnboundedSender<(MediaKind, Out)>,
    ) -> Result<Self, TranscodeError> {
        let (tx, mut rx) = mpsc::unbounded_channel::<Out>();
        sink_to_channel(&sink, tx);
        let out = out.clone();
        tokio::spawn(async move {
            while let Some(o) = rx.recv().await {
                if out.send((kind, o)).is_err() {
                    break;
                }
            }
        });
        pipeline.set_state(gst::State::Playing).map_err(|e| TranscodeError::Gst(e.to_string()))?;
        Ok(Self { pipeline, src, sink, config: None })
    }

    fn push(&self, data: Bytes, ms: i64, delta: bool) {
        let mut buf = gst::Buffer::from_slice(data);
        if let Some(b) = buf.get_mut() {
            b.set_pts(gst::ClockTime::from_mseconds(ms.max(0) as u64));
            if delta {
                b.set_flags(gst::BufferFlags::DELTA_UNIT);
            }
        }
        let _ = self.src.push_buffer(buf);
    }
}

impl Drop for Pipe {
    fn drop(&mut self) {
        let _ = self.src.end_of_stream();
        let _ = self.pipeline.set_state(gst::State::Null);
    }
}

/// Where a session's timeline starts: its first packet's arrival is this far in. Frames are placed a little
/// before their own arrival (the AAC encoder's priming puts the first AAC frame 21 ms before the Opus it came
/// from; a sender report can move a track back by its network delay), and the hub's session timestamps are
/// 32-bit: a frame before zero would wrap to ~49.7 days and put everything after it there (fMP4 HLS then
/// had video 2³² ms away from the Opus rendition and carried no audio).
const TIMELINE_START_MS: f64 = 1000.0;

/// Session timeline milliseconds of a packet that arrived `since_epoch` after the session began.
fn timeline_ms(since_epoch: Duration) -> f64 {
    TIMELINE_START_MS + since_epoch.as_secs_f64() * 1000.0
}

/// The hub's 32-bit session timestamp of a timeline millisecond. Clamped rather than wrapped: a frame
/// placed before the timeline's start (only a pathological clock mapping can) joins at its start.
fn session_ts(ms: i64) -> u32 {
    ms.clamp(0, u32::MAX as i64) as u32
}

/// One direction's RTP state.
struct TrackIn {
    reorder: Reorder<(rtc::rtp::Packet, Instant)>,
    clock: TrackClock,
}

/// The state of one WHIP session's media, owned by its task.
struct Ingest {
    publisher: Publisher,
    opus_pub: Option<Publisher>,
    epoch: Instant,
    sync: SyncOffset,
    video_codec: Option<VideoCodec>,
    video: TrackIn,
    audio: TrackIn,
    h264: H264Depacketizer,
    vp8: Vp8Depacketizer,
    aac_pipe: Option<Pipe>,
    vp8_pipe: Option<Pipe>,
    video_track: Option<Arc<dyn TrackRemote>>,
    video_ssrc: Option<u32>,
    /// The SPS/PPS in use and whether a config frame for them went out.
    sps: Option<Bytes>,
    pps: Option<Bytes>,
    config_sent: bool,
    /// A frame was lost: drop until the next keyframe.
    need_key: bool,
    pending_loss: bool,
    /// Extended RTP time of the first audio packet: the Opus→AAC transcoder's zero.
    audio_ext0: Option<i64>,
    last_aac_ms: Option<i64>,
    /// AAC waiting for the (transcoded, later) video of the same instant, and the newest video published.
    held_audio: std::collections::VecDeque<(Frame, i64)>,
    last_video_ms: Option<i64>,
    last_key: Option<Instant>,
    last_pli: Option<Instant>,
    keyframe_interval: Duration,
    last_media: Instant,
    frames_dropped: u64,
    /// The last loss reading: when, and (expected, lost or late) packets of both tracks then.
    loss_mark: (Instant, u64, u64),
}

impl Ingest {
    fn new(
        whip: &Whip,
        publisher: Publisher,
        opus_pub: Option<Publisher>,
        video_codec: Option<VideoCodec>,
        audio: bool,
        out: mpsc::UnboundedSender<(MediaKind, Out)>,
    ) -> Result<Self, TranscodeError> {
        let aac_pipe = match audio {
            true => Some(Pipe::start(whip.aac_pipeline()?, MediaKind::Audio, &out)?),
            false => None,
        };
        let vp8_pipe = match video_codec {
            Some(VideoCodec::Vp8) => Some(Pipe::start(whip.vp8_pipeline()?, MediaKind::Video, &out)?),
            _ => None,
        };
        let track = |wait_ms, rate| TrackIn {
            reorder: Reorder::new(Duration::from_millis(wait_ms), 512),
            clock: TrackClock::new(rate),
        };
        Ok(Self {
            publisher,
            opus_pub,
            epoch: Instant::now(),
            sync: SyncOffset::default(),
            video_codec,
            // Video waits longer for a retransmission: a lost video packet costs a whole GOP.
            video: track(150, 90_000),
            audio: track(60, 48_000),
            h264: H264Depacketizer::default(),
            vp8: Vp8Depacketizer::default(),
            aac_pipe,
            vp8_pipe,
            video_track: None,
            video_ssrc: None,
            sps: None,
            pps: None,
            config_sent: false,
            need_key: true,
            pending_loss: false,
            audio_ext0: None,
            last_aac_ms: None,
            held_audio: Default::default(),
            last_video_ms: None,
            last_key: None,
            last_pli: None,
            keyframe_interval: Duration::from_secs_f64(whip.cfg.whip_keyframe_interval_secs),
            last_media: Instant::now(),
            frames_dropped: 0,
            loss_mark: (Instant::now(), 0, 0),
        })
    }

    fn on_input(&mut self, input: Input) {
        match input {
            Input::Rtp(kind, p, at) => {
                self.last_media = at;
                let t = if kind == RtpCodecKind::Video { &mut self.video } else { &mut self.audio };
                if kind == RtpCodecKind::Video {
                    self.video_ssrc = Some(p.header.ssrc);
                }
                t.reorder.push(p.header.sequence_number, (p, at), at);
                self.drain(kind, at);
            }
            Input::SenderReport(kind, rtp, ntp) => {
                let t = if kind == RtpCodecKind::Video { &mut self.video } else { &mut self.audio };
                if !t.clock.has_report() {
                    tracing::info!(track = %kind, "first RTCP sender report: track timed by the sender's clock");
                }
                t.clock.sender_report(rtp, ntp, &mut self.sync);
            }
        }
    }

    fn drain(&mut self, kind: RtpCodecKind, now: Instant) {
        loop {
            let t = if kind == RtpCodecKind::Video { &mut self.video } else { &mut self.audio };
            let Some(((p, at), lost)) = t.reorder.pop(now) else { break };
            if kind == RtpCodecKind::Video {
                self.video_packet(p, at, lost);
            } else {
                self.audio_packet(p, at);
            }
        }
    }

    fn arrival_ms(&self, at: Instant) -> f64 {
        timeline_ms(at.saturating_duration_since(self.epoch))
    }

    fn video_packet(&mut self, p: rtc::rtp::Packet, at: Instant, lost: bool) {
        if p.payload.is_empty() {
            // Padding-only packets (bandwidth probing) take a sequence number and carry nothing; a loss before
            // one belongs to the next media packet.
            self.pending_loss |= lost;
            return;
        }
        let lost = lost || std::mem::take(&mut self.pending_loss);
        let (ts, marker) = (p.header.timestamp, p.header.marker);
        match self.video_codec {
            Some(VideoCodec::H264) => {
                let (units, dropped, err) = self.h264.push(ts, marker, &p.payload, lost);
                if let Some(e) = err {
                    tracing::debug!(error = %e, "bad H.264 RTP payload");
                }
                if dropped > 0 {
                    self.lost_frames(dropped);
                }
                for au in units {
                    self.h264_unit(au, at);
                }
            }
            Some(VideoCodec::Vp8) => {
                let (frame, dropped, err) = self.vp8.push(ts, marker, &p.payload, lost);
                if let Some(e) = err {
                    tracing::debug!(error = %e, "bad VP8 RTP payload");
                }
                if dropped > 0 {
                    self.lost_frames(dropped);
                }
                let Some(f) = frame else { return };
                if self.need_key && !f.keyframe {
                    return;
                }
                if f.keyframe {
                    self.need_key = false;
                    self.last_key = Some(at);
                }
                let arrival = self.arrival_ms(at);
                let ms = self.video.clock.to_ms(f.rtp_ts, arrival, &mut self.sync);
                if let Some(pipe) = &self.vp8_pipe {
                    pipe.push(f.data, ms, !f.keyframe);
                }
            }
            None => {}
        }
    }

    fn lost_frames(&mut self, n: usize) {
        self.frames_dropped += n as u64;
        self.need_key = true;
        tracing::debug!(frames = n, total = self.frames_dropped, "video frames lost; waiting for a keyframe");
    }

    fn h264_unit(&mut self, au: H264AccessUnit, at: Instant) {
        let arrival = self.arrival_ms(at);
        let ms = self.video.clock.to_ms(au.rtp_ts, arrival, &mut self.sync);
        // Readers need increasing DTS even when a clock re-sync steps the mapping back.
        let ms = ms.max(self.last_video_ms.map_or(i64::MIN, |l| l + 1));
        let mut payload = BytesMut::with_capacity(au.nalus.iter().map(|n| n.len() + 4).sum());
        for n in &au.nalus {
            match n.first().map(|b| b & 0x1F) {
                Some(NAL_TYPE_SPS) => {
                    if self.sps.as_ref() != Some(n) {
                        self.sps = Some(n.clone());
                        self.config_sent = false;
                    }
                }
                Some(NAL_TYPE_PPS) => {
                    if self.pps.as_ref() != Some(n) {
                        self.pps = Some(n.clone());
                        self.config_sent = false;
                    }
                }
                // Access unit delimiters and filler carry nothing a reader needs.
                Some(9) | Some(12) | None => {}
                Some(_) => {
                    payload.put_u32(n.len() as u32);
                    payload.extend_from_slice(n);
                }
            }
        }
        if !self.config_sent {
            if let (Some(sps), Some(pps)) = (&self.sps, &self.pps) {
                match AvcDecoderConfig::from_sps_pps(sps, pps) {
                    Ok(cfg) => {
                        let frame = Frame::config(MediaKind::Video, Codec::H264, Bytes::from(cfg.to_bytes()));
                        self.publisher.push_raw(frame, session_ts(ms), at);
                        self.config_sent = true;
                    }
                    Err(e) => tracing::warn!(error = %e, "browser sent an unusable SPS/PPS"),
                }
            }
        }
        if payload.is_empty() {
            return;
        }
        if !self.config_sent || (self.need_key && !au.keyframe) {
            self.need_key = true;
            return;
        }
        if au.keyframe {
            self.need_key = false;
            self.last_key = Some(at);
        }
        let frame = Frame {
            kind: MediaKind::Video,
            codec: Codec::H264,
            dts: 0,
            cts: 0,
            keyframe: au.keyframe,
            config: false,
            payload: payload.freeze(),
        };
        self.publisher.push_raw(frame, session_ts(ms), at);
        self.last_video_ms = Some(ms);
    }

    fn audio_packet(&mut self, p: rtc::rtp::Packet, at: Instant) {
        if p.payload.is_empty() {
            return;
        }
        let arrival = self.arrival_ms(at);
        let ms = self.audio.clock.to_ms(p.header.timestamp, arrival, &mut self.sync);
        let ext = self.audio.clock.unwrap(p.header.timestamp);
        let ext0 = *self.audio_ext0.get_or_insert(ext);
        if let Some(pubr) = self.opus_pub.as_mut() {
            let frame = Frame {
                kind: MediaKind::Audio,
                codec: Codec::Opus,
                dts: 0,
                cts: 0,
                keyframe: false,
                config: false,
                payload: p.payload.clone(),
            };
            pubr.push_raw(frame, session_ts(ms), at);
        }
        // The transcoder is stamped in the track's own RTP time, which is gapless (the sender-report
        // correction would otherwise reach the encoder as a jump); its output is mapped back in on_transcoded.
        if let Some(pipe) = &self.aac_pipe {
            pipe.push(p.payload, (ext - ext0) / 48, false);
        }
    }

    /// AAC from the Opus transcoder, or H.264 from the VP8 one.
    fn on_transcoded(&mut self, kind: MediaKind, (data, pts, dts, key, codec_data): Out) {
        let now = Instant::now();
        let cts = (pts - dts) as i32;
        let (ts, codec) = match kind {
            MediaKind::Audio => {
                let Some(ext0) = self.audio_ext0 else { return };
                let primed = ext0 + dts * 48 - crate::media::aac::ENCODER_PRIMING_SAMPLES;
                let Some(ms) = self.audio.clock.map_ext(primed, &self.sync) else {
                    return;
                };
                // AAC frames are 21.3 ms apart; a backward step of the mapping must not repeat or reverse one.
                let ms = (ms.round() as i64).max(self.last_aac_ms.map_or(i64::MIN, |l| l + 1));
                (ms, Codec::Aac)
            }
            // In the input's time: sink_to_channel hands out running time. Two frames the browser sent less
            // than a millisecond apart (a burst after a stall) would share a millisecond: FLV and MP4 need
            // increasing DTS, so the later one moves up a millisecond, its composition offset kept.
            _ => (dts.max(self.last_video_ms.map_or(i64::MIN, |l| l + 1)), Codec::H264),
        };
        let pipe = match kind {
            MediaKind::Audio => self.aac_pipe.as_mut(),
            _ => self.vp8_pipe.as_mut(),
        };
        let Some(pipe) = pipe else { return };
        if let Some(cd) = codec_data.filter(|cd| pipe.config.as_ref() != Some(cd)) {
            let cfg = Frame::config(kind, codec, cd.clone());
            self.publisher.push_raw(cfg, session_ts(ts), now);
            pipe.config = Some(cd);
        }
        if pipe.config.is_none() {
            return;
        }
        let keyframe = kind == MediaKind::Video && key;
        let frame = Frame { kind, codec, dts: 0, cts, keyframe, config: false, payload: data };
        if kind == MediaKind::Audio {
            self.last_aac_ms = Some(ts);
            if self.vp8_pipe.is_some() {
                // The VP8→H.264 transcode delays video by ~100 ms more than audio: hold audio back so the
                // stream stays in timestamp order, and a player joining at a keyframe gets the audio of
                // that instant right after it.
                self.held_audio.push_back((frame, ts));
                self.release_audio(now, false);
                return;
            }
        }
        self.publisher.push_raw(frame, session_ts(ts), now);
        if kind == MediaKind::Video {
            self.last_video_ms = Some(ts);
            self.release_audio(now, false);
        }
    }

    /// Publishes held audio up to the newest video, or all of it when video stalls (half a second behind).
    fn release_audio(&mut self, now: Instant, all: bool) {
        while let Some((_, ts)) = self.held_audio.front() {
            let behind = self.held_audio.back().map_or(0, |(_, last)| last - ts);
            if !(all || behind > 500 || self.last_video_ms.is_some_and(|v| *ts <= v)) {
                break;
            }
            let (frame, ts) = self.held_audio.pop_front().expect("front exists");
            self.publisher.push_raw(frame, session_ts(ts), now);
        }
    }

    fn on_tick(&mut self, now: Instant) {
        self.drain(RtpCodecKind::Video, now);
        self.drain(RtpCodecKind::Audio, now);
        self.measure_loss(now);
        if self.video_codec.is_none() {
            return;
        }
        let since = |t: Option<Instant>| t.map_or(Duration::MAX, |t| now.saturating_duration_since(t));
        // After loss or before the first keyframe: ask often. Otherwise keep the GOP short for joiners, unless
        // the VP8 transcoder already makes its own keyframes.
        let want = if self.need_key {
            since(self.last_pli) >= Duration::from_millis(300)
        } else {
            self.vp8_pipe.is_none()
                && since(self.last_key) >= self.keyframe_interval
                && since(self.last_pli) >= self.keyframe_interval
        };
        if want {
            self.request_keyframe(now);
        }
    }

    /// Once a second: the share of packets numbered since the last reading that the network lost, repaired
    /// or not (given up on, or arrived late: a NACK's retransmission), for the publisher's quality level.
    fn measure_loss(&mut self, now: Instant) {
        let (at, expected0, lost0) = self.loss_mark;
        if now.saturating_duration_since(at) < Duration::from_secs(1) {
            return;
        }
        let (v, a) = (&self.video.reorder, &self.audio.reorder);
        let expected = v.expected() + a.expected();
        let lost = v.lost + v.late + a.lost + a.late;
        self.loss_mark = (now, expected, lost);
        let numbered = expected.saturating_sub(expected0);
        if numbered > 0 {
            let percent = lost.saturating_sub(lost0) as f64 * 100.0 / numbered as f64;
            tracing::debug!(
                numbered,
                lost_or_late = lost.saturating_sub(lost0),
                video_lost = v.lost,
                video_late = v.late,
                audio_lost = a.lost,
                audio_late = a.late,
                "whip loss"
            );
            self.publisher.stream().observe_loss(percent.min(100.0));
        }
    }

    /// A reader asked (a WebRTC viewer's PLI, a player with nothing to start on): pass it on, at most every
    /// 500 ms however many viewers ask — to the browser for H.264 passthrough, to the H.264 encoder on the
    /// VP8 path (whose keyframes are its own, not the browser's).
    fn keyframe_asked(&mut self, now: Instant) {
        let since = self.last_pli.map_or(Duration::MAX, |t| now.saturating_duration_since(t));
        if since < Duration::from_millis(500) {
            return;
        }
        tracing::debug!("a reader asked for a keyframe");
        match &self.vp8_pipe {
            Some(pipe) => {
                crate::transcode::force_keyframe(&pipe.sink);
                self.last_pli = Some(now);
            }
            None => self.request_keyframe(now),
        }
    }

    fn request_keyframe(&mut self, now: Instant) {
        let (Some(track), Some(ssrc)) = (self.video_track.clone(), self.video_ssrc) else { return };
        self.last_pli = Some(now);
        tokio::spawn(async move {
            let pli = PictureLossIndication { sender_ssrc: 0, media_ssrc: ssrc };
            if let Err(e) = track.write_rtcp(vec![Box::new(pli)]).await {
                tracing::debug!(error = %e, "PLI not sent");
            }
        });
    }

    fn stop(&mut self) {
        self.release_audio(Instant::now(), true);
        tracing::info!(
            video_lost_packets = self.video.reorder.lost,
            audio_lost_packets = self.audio.reorder.lost,
            video_frames_dropped = self.frames_dropped,
            "whip media ended"
        );
        self.aac_pipe = None;
        self.vp8_pipe = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A session whose first Opus packet arrives the moment it begins: the AAC made from it is stamped a
    /// priming delay earlier, and must still be a small positive session timestamp, not one wrapped to the
    /// top of the 32-bit range (which put a WHIP stream's video ~49.7 days from its Opus rendition).
    #[test]
    fn the_first_aac_frame_is_not_stamped_before_the_session() {
        let mut clock = TrackClock::new(48_000);
        let mut sync = SyncOffset::default();
        let first_rtp = 3_000_000_000u32;
        let opus_ms = clock.to_ms(first_rtp, timeline_ms(Duration::ZERO), &mut sync);
        let ext0 = clock.unwrap(first_rtp);
        let aac_ms = clock.map_ext(ext0 - crate::media::aac::ENCODER_PRIMING_SAMPLES, &sync).unwrap().round() as i64;
        assert!(aac_ms < opus_ms, "priming puts the AAC first: {aac_ms} vs {opus_ms}");
        let (aac, opus) = (session_ts(aac_ms), session_ts(opus_ms));
        assert!(aac < opus && opus - aac <= 22, "AAC {aac} and Opus {opus} must be 21 ms apart on one timeline");
    }

    #[test]
    fn session_timestamps_clamp_instead_of_wrapping() {
        assert_eq!(session_ts(-5), 0);
        assert_eq!(session_ts(1234), 1234);
        assert_eq!(session_ts(i64::MAX), u32::MAX);
    }
}
