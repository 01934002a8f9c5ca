//! WHEP playback (draft-ietf-wish-whep): per viewer, a session of livegate's own (`lite`) on the shared port, or
//! a webrtc-rs 0.21 PeerConnection (data channels, `whep_engine = "webrtc-rs"`, no shared port), fed by a hub
//! reader.
//!
//! Video passes through: the hub's AVCC access units become Annex-B and are packetized into RTP with the
//! source's presentation time. A viewer starts at the cached keyframe like any reader, and a slow viewer
//! skips to a newer keyframe by the same max_cache policy. Audio comes from the stream's shared AAC→Opus
//! rendition (`crate::transcode`), one transcoder per stream however many viewers. See
//! `docs/notes/webrtc-rs-0.21.md`.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use rtc::peer_connection::transport::SrtpLocalKeying;
use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;
use tokio::sync::{mpsc, watch};
use webrtc::data_channel::DataChannel;
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_local::{TrackLocal, TrackLocalEvent};
use webrtc::peer_connection::{PeerConnection, RTCPeerConnectionState};
use webrtc::rtp_transceiver::RtpSender;

use super::admission::{Admission, Overloaded, Policy};
use super::fanout::{self, Media, Member};
use super::lite::Sending;
use super::media_out::{MediaOutError, TrackOut};
use super::mux_socket::SharedSocket;
use super::rtcp_in::RtcpIn;
use super::udp_mux::{RtcpSink, RtcpSlot};
use super::OwnMedia;
use super::{
    answer, h264_codec, has_active_media, opus_codec, rtp_track, sei_channel, vp8_codec, AnswerError, PeerFactory,
    PeerOutputs, WebrtcConfig,
};
use crate::hub::{
    Audience, CachePolicy, ClientGuard, ClientHandle, Hub, HubError, Packet, Protocol, Purpose, StreamKey,
};
use crate::media::avc::AvcDecoderConfig;
use crate::media::{Codec, MediaKind};

#[derive(Debug, thiserror::Error)]
pub enum WhepError {
    #[error("{0}")]
    NotFound(String),
    #[error("invalid SDP offer: {0}")]
    BadOffer(String),
    #[error("the offer has no video this server can send (it sends H.264, packetization-mode 1, or VP8)")]
    NoCodec,
    #[error("WebRTC failure: {0}")]
    Internal(String),
    #[error(transparent)]
    Overloaded(#[from] Overloaded),
}

/// The longest a viewer of a stream started on demand waits for its first media before being answered.
const SOURCE_WAIT: Duration = Duration::from_secs(10);

/// Waits until `stream` has a codec configuration (or ends, or [`SOURCE_WAIT`] passes). The stream has no
/// signal for its first header, and this is once per viewer of a cold stream: a short poll.
async fn wait_for_headers(stream: &crate::hub::Stream) {
    let deadline = tokio::time::Instant::now() + SOURCE_WAIT;
    while !stream.is_closed() && tokio::time::Instant::now() < deadline {
        let h = stream.headers();
        if h.video.is_some() || h.audio.is_some() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A WHEP viewer's reader policy: the play policy without its limit on skips. Over TCP a reader that has to
/// skip keeps its socket full, so skipping often means the player cannot keep up and is let go. UDP never
/// pushes back: a WHEP viewer's backlog is the server's own lateness (an overloaded machine), and cutting its
/// viewers off for it turns load shedding into lost viewers (270 of 500 at 3x overload, benches/README.md).
/// A viewer whose network loses media shows it in its receiver reports, not here.
fn udp_policy(play: CachePolicy) -> CachePolicy {
    CachePolicy { max_skips_per_minute: u32::MAX, ..play }
}

struct Session {
    peer: SessionPeer,
    key: StreamKey,
    /// Set by DELETE: the session's task ends and drops its reader (the viewer's on_stop) at once.
    stop: watch::Sender<bool>,
}

/// Who runs a session's ICE and DTLS.
enum SessionPeer {
    Rtc(Arc<dyn PeerConnection>),
    Lean(Arc<super::lite::Lean>),
}

impl SessionPeer {
    async fn close(&self) {
        match self {
            SessionPeer::Rtc(pc) => {
                let _ = pc.close().await;
            }
            SessionPeer::Lean(l) => l.close(),
        }
    }
}

/// An answered offer.
enum Negotiated {
    Lean(super::lite::Opened),
    Rtc(RtcNegotiated),
}

impl Negotiated {
    async fn close(self) {
        match self {
            Negotiated::Lean(o) => o.session.close(),
            Negotiated::Rtc(r) => {
                let _ = r.pc.close().await;
            }
        }
    }
}

/// A webrtc-rs session's parts.
struct RtcNegotiated {
    pc: Arc<dyn PeerConnection>,
    track: Arc<TrackLocalStaticRTP>,
    sender: Arc<dyn RtpSender>,
    audio: Option<AudioOut>,
    ssrc: u32,
    state: watch::Receiver<RTCPeerConnectionState>,
    answer: String,
    own_media: Option<std::io::Result<OwnMedia>>,
}

/// What a livegate session's answer sends on.
struct LeanSending {
    video: Sending,
    audio: Option<Sending>,
}

/// A viewer, whoever runs its session: what its task serves it with.
struct Viewer {
    sid: String,
    /// The stream it asked for.
    key: StreamKey,
    reader: crate::hub::Reader,
    guard: ClientGuard,
    policy: CachePolicy,
    vp8: bool,
    /// The stream's Opus rendition, when the viewer takes Opus and the stream has audio.
    opus_key: Option<StreamKey>,
    feedback: FeedbackTo,
    /// Taken by the direct path, which answers them.
    nacks: Option<mpsc::Receiver<Vec<u16>>>,
    stop: watch::Receiver<bool>,
}

/// A connected viewer's direct path, and what goes out on it.
struct Direct {
    path: DirectPath,
    video: Sending,
    audio: Option<Sending>,
    followers: Followers,
}

/// The direct tracks of a viewer, kept on its selected address.
#[derive(Clone, Default)]
struct Followers {
    members: Arc<Mutex<Vec<Arc<Member>>>>,
    /// A livegate session's selected address, as it moves (a webrtc-rs session's is polled, `follow_path`).
    peer: Option<watch::Receiver<Option<std::net::SocketAddr>>>,
}

impl Followers {
    /// Adds a track, sending to the address selected now: a move between the keys' export and this is not
    /// missed, since the follower task moves every track added before it and this reads after adding.
    fn add(&self, m: &Arc<Member>) {
        let mut members = self.members.lock();
        members.push(m.clone());
        if let Some(a) = self.peer.as_ref().and_then(|p| *p.borrow()) {
            m.set_peer(a);
        }
    }
}

/// All WHEP sessions.
pub struct Whep {
    hub: Hub,
    cfg: WebrtcConfig,
    transcoders: Arc<crate::transcode::Transcoders>,
    sessions: Mutex<HashMap<String, Session>>,
    peers: Arc<PeerFactory>,
    admission: Arc<Admission>,
}

impl Whep {
    pub fn new(
        hub: Hub,
        cfg: WebrtcConfig,
        transcoders: Arc<crate::transcode::Transcoders>,
        peers: Arc<PeerFactory>,
    ) -> Arc<Self> {
        let admission = Arc::new(Admission::new(Policy::of(&cfg), std::time::Instant::now()));
        Arc::new(Self { hub, cfg, transcoders, sessions: Mutex::new(HashMap::new()), peers, admission })
    }

    /// Why no WebRTC session can be made at all (the shared UDP port could not be bound): a start-up error.
    pub fn start_error(&self) -> Option<super::MuxBindError> {
        self.peers.mux_error()
    }

    /// Answers a recvonly offer for `key`. Returns (session id, answer SDP).
    pub async fn play(
        self: &Arc<Self>,
        key: &StreamKey,
        offer: String,
        policy: CachePolicy,
        addr: Option<std::net::SocketAddr>,
        tag: Option<String>,
    ) -> Result<(String, String), WhepError> {
        if !offer.starts_with("v=0") {
            return Err(WhepError::BadOffer("an SDP offer starts with \"v=0\"".into()));
        }
        let lower = offer.to_ascii_lowercase();
        // H.264 passes through; a browser that offers only VP8 gets the stream's shared VP8 rendition.
        let vp8 = !lower.contains("h264/90000");
        if !offer.lines().any(|l| l.starts_with("m=video")) || (vp8 && !lower.contains("vp8/90000")) {
            return Err(WhepError::NoCodec);
        }
        // Refuse before doing any WebRTC work when the stream does not exist. One started on demand here (an
        // edge's pull) is waited for: which renditions the viewer needs depends on its codecs.
        // A machine too far behind to serve the viewers it has takes no more (`admission`).
        self.admission.admit(std::time::Instant::now())?;
        let not_found = || WhepError::NotFound(format!("stream {key} is not being published"));
        let stream = match self.hub.open_stream(key) {
            Ok(Some(s)) => s,
            Ok(None) | Err(HubError::NotFound(_)) => return Err(not_found()),
            Err(e) => return Err(WhepError::Internal(e.to_string())),
        };
        wait_for_headers(&stream).await;
        // Audio: the stream's shared Opus rendition, when the browser takes Opus and the stream has AAC.
        let wants_opus = offer.to_ascii_lowercase().contains("opus/48000");
        let opus_key = if wants_opus {
            match self.transcoders.opus(key) {
                Ok(k) => k,
                Err(e) => {
                    tracing::warn!(stream = %key, error = %e, "no WebRTC audio for this viewer");
                    None
                }
            }
        } else {
            None
        };
        // Video: passthrough, unless the source has B-frames, which WebRTC receivers play badly, or is H.265,
        // which browsers do not take over WebRTC: then the stream's shared constrained-baseline rendition.
        let source = self.hub.get(key);
        let hevc = source.as_ref().and_then(|s| s.headers().video.as_ref().map(|p| p.frame.codec)) == Some(Codec::H265);
        let source_has_bframes = source.is_some_and(|s| s.has_bframes());
        let video_key = if vp8 {
            match self.transcoders.vp8(key) {
                Ok(Some(k)) => {
                    tracing::info!(stream = %key, rendition = %k, "the browser offers no H.264: WebRTC video is VP8");
                    k
                }
                Ok(None) => key.clone(),
                Err(e) => return Err(WhepError::Internal(format!("cannot transcode to VP8: {e}"))),
            }
        } else if source_has_bframes || hevc {
            match self.transcoders.baseline(key) {
                Ok(Some(k)) => {
                    let why = if hevc { "source is H.265" } else { "source has B-frames" };
                    tracing::info!(stream = %key, rendition = %k, "{why}: WebRTC video is transcoded");
                    k
                }
                Ok(None) if hevc => return Err(WhepError::Internal("no H.264 rendition of H.265 video".into())),
                Ok(None) => key.clone(),
                Err(e) => return Err(WhepError::Internal(format!("cannot transcode B-frame video: {e}"))),
            }
        } else {
            key.clone()
        };
        // An offered Opus section is answered even when the stream has no audio (yet): a track that stays silent
        // is what every WebRTC client handles, while a rejected section trips some (aiortc refuses the answer).
        // A viewer that opened a data channel in its offer may ask for the stream's SEI messages on it.
        let (dc_tx, dc_rx) = if offer.lines().any(|l| l.starts_with("m=application")) {
            let (tx, rx) = mpsc::unbounded_channel();
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        // livegate's own session on the shared port, unless the viewer wants a data channel (webrtc-rs' SCTP).
        let lean = if dc_tx.is_none() { self.peers.lean() } else { None };
        let negotiated = match lean {
            Some((mux, identity)) => {
                let wants = super::lite::sdp::Wants { vp8, audio: wants_opus };
                match super::lite::open(mux, identity, &offer, wants) {
                    Ok(o) => Negotiated::Lean(o),
                    Err(super::lite::OpenError::Offer(super::lite::sdp::OfferError::NoCodec)) => {
                        return Err(WhepError::NoCodec)
                    }
                    Err(super::lite::OpenError::Offer(e)) => return Err(WhepError::BadOffer(e.to_string())),
                    Err(e) => return Err(WhepError::Internal(e.to_string())),
                }
            }
            None => Negotiated::Rtc(self.negotiate(offer, wants_opus, vp8, dc_tx).await?),
        };
        let guard = self.hub.register_client(Protocol::Whep, addr);
        if let Some(tag) = tag {
            let _ = guard.handle.tag.set(tag);
        }
        // One player per viewer, named by the stream it asked for, whatever rendition its video comes from.
        let audience = Audience::Player { requested: key.clone() };
        let policy = udp_policy(policy);
        let reader = match self.hub.subscribe_as(&video_key, Protocol::Whep, policy, guard.handle.clone(), audience) {
            Ok(r) => r,
            Err(e) => {
                negotiated.close().await;
                return Err(match e {
                    HubError::NotFound(m) => WhepError::NotFound(m),
                    other => WhepError::Internal(other.to_string()),
                });
            }
        };
        let id = format!("{:016x}", rand::random::<u64>());
        let (stop_tx, stop_rx) = watch::channel(false);
        // The viewer's RTCP (`FeedbackTo::apply`), read by livegate on the shared port (`read_rtcp_here`), or
        // from its webrtc-rs session on a port of its own.
        let (nack_tx, nacks) = mpsc::channel::<Vec<u16>>(64);
        let feedback = FeedbackTo { stream: reader.stream().clone(), viewer: guard.handle.clone(), nacks: nack_tx };
        let viewer = Viewer {
            sid: id.clone(),
            key: key.clone(),
            reader,
            guard,
            policy,
            vp8,
            opus_key,
            feedback,
            nacks: Some(nacks),
            stop: stop_rx,
        };
        let (answer, peer, task): (_, _, std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>) =
            match negotiated {
                Negotiated::Lean(o) => {
                    let lean = Arc::new(o.session);
                    let sending = LeanSending { video: o.video, audio: o.audio };
                    let task = Box::pin(self.clone().run_lean(viewer, lean.clone(), sending, o.state));
                    (o.answer, SessionPeer::Lean(lean), task)
                }
                Negotiated::Rtc(r) => {
                    let (answer, pc) = (r.answer.clone(), r.pc.clone());
                    (answer, SessionPeer::Rtc(pc), Box::pin(self.clone().run_rtc(viewer, r, dc_rx)))
                }
            };
        // Known before its task runs: the task removes it when the session ends.
        self.sessions.lock().insert(id.clone(), Session { peer, key: key.clone(), stop: stop_tx });
        tokio::spawn(task);
        Ok((id, answer))
    }

    /// Ends a session (WHEP DELETE). False when there is no such session.
    pub async fn delete(&self, id: &str) -> bool {
        let s = self.sessions.lock().remove(id);
        match s {
            Some(s) => {
                tracing::info!(session = %id, stream = %s.key, "whep session deleted by the client");
                let _ = s.stop.send(true);
                s.peer.close().await;
                true
            }
            None => false,
        }
    }

    /// A session of livegate's own (`lite`): connected, its media goes out on the direct path.
    async fn run_lean(
        self: Arc<Self>,
        mut v: Viewer,
        lean: Arc<super::lite::Lean>,
        sending: LeanSending,
        mut state: watch::Receiver<RTCPeerConnectionState>,
    ) {
        let timeout = Duration::from_secs_f64(self.cfg.connect_timeout_secs);
        let mut waited = super::await_connected(&mut state, &mut v.stop, timeout).await;
        // A DELETE also closes the session: the closing must not pass for the viewer's doing.
        if *v.stop.borrow() {
            waited = super::ConnectWait::Deleted;
        }
        let why =
            |s: RTCPeerConnectionState| lean.end().map_or_else(|| format!("peer connection {s:?}"), |e| e.to_string());
        // Watched from before the keys are read: a move after that is seen by the follower task.
        let peer = lean.peer();
        let reason = match (waited.end_reason(), lean.keying()) {
            (Some(_), _) if matches!(waited, super::ConnectWait::Failed(_)) => {
                format!("{} before it connected", why(RTCPeerConnectionState::Failed))
            }
            (Some(reason), _) => reason,
            (None, None) => DirectPathError::NoKeys.to_string(),
            (None, Some(keying)) => {
                read_rtcp_here(&lean.rtcp_slot(), &keying, sending.video.ssrc, v.feedback.clone());
                let followers = Followers { members: Default::default(), peer: Some(lean.peer()) };
                follow_peer(peer, followers.members.clone());
                let direct =
                    Direct { path: (lean.socket(), keying), video: sending.video, audio: sending.audio, followers };
                self.serve_direct(&mut v, direct, &mut state, None, &why).await
            }
        };
        lean.close();
        self.finish(v, reason);
    }

    /// A webrtc-rs session: on the shared socket its media goes out on the direct path, on a port of its own
    /// through webrtc-rs.
    async fn run_rtc(
        self: Arc<Self>,
        mut v: Viewer,
        r: RtcNegotiated,
        dc_rx: Option<mpsc::UnboundedReceiver<Arc<dyn DataChannel>>>,
    ) {
        let RtcNegotiated { pc, track, sender, audio, ssrc, mut state, own_media, .. } = r;
        let (kf_track, to) = (track.clone(), v.feedback.clone());
        tokio::spawn(async move {
            while let Some(ev) = kf_track.poll().await {
                let TrackLocalEvent::OnRtcpPacket(pkts) = ev else { continue };
                to.apply(super::feedback(&pkts, ssrc, super::ntp_mid_now()));
            }
        });
        let timeout = Duration::from_secs_f64(self.cfg.connect_timeout_secs);
        let waited = super::await_connected(&mut state, &mut v.stop, timeout).await;
        let why = |s: RTCPeerConnectionState| format!("peer connection {s:?}");
        let reason = match waited.end_reason() {
            Some(reason) => reason,
            None => match direct_path(&pc, own_media).await {
                Err(e) => e.to_string(),
                Ok(Some(((socket, keying), slot))) => {
                    read_rtcp_here(&slot, &keying, ssrc, v.feedback.clone());
                    let followers = Followers::default();
                    follow_path(pc.clone(), followers.members.clone(), state.clone());
                    match negotiated_pt(&sender).await {
                        None => "no negotiated payload type".into(),
                        Some(pt) => {
                            let audio = match &audio {
                                Some(a) => negotiated_pt(&a.sender).await.map(|pt| Sending { ssrc: a.ssrc, pt }),
                                None => None,
                            };
                            let video = Sending { ssrc, pt };
                            let direct = Direct { path: (socket, keying), video, audio, followers };
                            self.serve_direct(&mut v, direct, &mut state, dc_rx, &why).await
                        }
                    }
                }
                Ok(None) => {
                    tracing::info!(session = %v.sid, client = v.guard.handle.id, audio = v.opus_key.is_some(), direct = false, "whep connected");
                    let audio_task = match (audio, v.opus_key.clone()) {
                        (Some(a), Some(k)) => self.spawn_track_audio(k, a, &v.guard, &v.key),
                        _ => None,
                    };
                    let r = match negotiated_pt(&sender).await {
                        None => "no negotiated payload type".into(),
                        Some(pt) => {
                            let rtp = VideoRtp { ssrc, ts_base: rand::random(), vp8: v.vp8, pt };
                            let mut sink = VideoSink::Track(track.clone());
                            tokio::select! {
                                r = pump(&mut v.reader, &mut sink, rtp, &mut state, dc_rx, &why) => r,
                                _ = v.stop.wait_for(|deleted| *deleted) => "deleted by the client".into(),
                            }
                        }
                    };
                    if let Some(t) = audio_task {
                        t.abort();
                    }
                    r
                }
            },
        };
        self.finish(v, reason);
        let _ = pc.close().await;
    }

    /// Sends a connected viewer its media on the direct path until it or the stream goes away.
    async fn serve_direct(
        &self,
        v: &mut Viewer,
        d: Direct,
        state: &mut watch::Receiver<RTCPeerConnectionState>,
        dc_rx: Option<mpsc::UnboundedReceiver<Arc<dyn DataChannel>>>,
        why: &(dyn Fn(RTCPeerConnectionState) -> String + Sync),
    ) -> String {
        tracing::info!(session = %v.sid, client = v.guard.handle.id, audio = v.opus_key.is_some(), direct = true, "whep connected");
        let audio_task = match (d.audio, v.opus_key.clone()) {
            (Some(a), Some(k)) => self.spawn_direct_audio(k, a, &v.guard, &v.key, d.path.clone(), &d.followers),
            _ => None,
        };
        let ts_base: u32 = rand::random();
        let media = Media::Video { vp8: v.vp8, cfg: None, ts_base };
        let track =
            RtpTrack { ssrc: d.video.ssrc, pt: d.video.pt, clock_rate: 90_000, history: super::media_out::HISTORY };
        let Some(nacks) = v.nacks.take() else { return "the viewer's media is already being served".into() };
        let r = match member(d.path, track, media, v.guard.handle.clone(), v.policy.max_cache, self.admission.clone()) {
            Err(e) => format!("cannot protect media: {e}"),
            Ok(m) => {
                d.followers.add(&m);
                let mut sink = VideoSink::Direct(m, nacks);
                let rtp = VideoRtp { ssrc: d.video.ssrc, ts_base, vp8: v.vp8, pt: d.video.pt };
                // A DELETE also closes the session: the stop is looked at first, or the closing would be
                // reported as the session's reason.
                tokio::select! {
                    biased;
                    _ = v.stop.wait_for(|deleted| *deleted) => "deleted by the client".into(),
                    r = pump(&mut v.reader, &mut sink, rtp, state, dc_rx, why) => r,
                }
            }
        };
        if let Some(t) = audio_task {
            t.abort();
        }
        r
    }

    /// A session's end: the viewer's on_stop with `reason` (the reader's drop), and its id freed.
    fn finish(&self, v: Viewer, reason: String) {
        let Viewer { sid, mut reader, guard, .. } = v;
        tracing::info!(session = %sid, client = guard.handle.id, %reason, "whep session ended");
        reader.set_end_reason(reason);
        drop(reader);
        self.sessions.lock().remove(&sid);
    }

    async fn negotiate(
        &self,
        offer: String,
        with_audio: bool,
        vp8: bool,
        channels: Option<mpsc::UnboundedSender<Arc<dyn DataChannel>>>,
    ) -> Result<RtcNegotiated, WhepError> {
        let video_codec = if vp8 { vp8_codec() } else { h264_codec() };
        let mut codecs = vec![(102, video_codec.clone(), RtpCodecKind::Video)];
        if with_audio {
            codecs.push((111, opus_codec(), RtpCodecKind::Audio));
        }
        let mut peer = self
            .peers
            .build(&codecs, PeerOutputs { tracks: None, channels }, super::PeerRole::Whep)
            .await
            .map_err(|e| WhepError::Internal(e.to_string()))?;
        let pc = peer.pc.clone();
        let internal = |e: webrtc::error::Error| WhepError::Internal(e.to_string());
        let fail = |pc: Arc<dyn PeerConnection>, e: WhepError| async move {
            let _ = pc.close().await;
            Err(e)
        };
        let ssrc: u32 = rand::random();
        let track = rtp_track(RtpCodecKind::Video, "video", video_codec, ssrc);
        let sender = match pc.add_track(track.clone() as Arc<dyn TrackLocal>).await {
            Ok(s) => s,
            Err(e) => return fail(pc, internal(e)).await,
        };
        let audio = if with_audio {
            let assrc: u32 = rand::random();
            let atrack = rtp_track(RtpCodecKind::Audio, "audio", opus_codec(), assrc);
            match pc.add_track(atrack.clone() as Arc<dyn TrackLocal>).await {
                Ok(sender) => Some(AudioOut { track: atrack, sender, ssrc: assrc }),
                Err(e) => return fail(pc, internal(e)).await,
            }
        } else {
            None
        };
        let sdp = match answer(&mut peer, offer).await {
            Ok(sdp) => sdp,
            Err(AnswerError::BadOffer(e)) => return Err(WhepError::BadOffer(e)),
            Err(AnswerError::Internal(e)) => return Err(WhepError::Internal(e)),
        };
        if !has_active_media(&sdp, "video") {
            return fail(pc, WhepError::NoCodec).await;
        }
        let own_media = peer.own_media.take();
        Ok(RtcNegotiated { pc, track, sender, audio, ssrc, state: peer.state, answer: sdp, own_media })
    }
}

/// The audio side of a session: an Opus track fed from the stream's Opus rendition.
struct AudioOut {
    track: Arc<TrackLocalStaticRTP>,
    sender: Arc<dyn RtpSender>,
    ssrc: u32,
}

impl Whep {
    /// A reader of the stream's Opus rendition for a viewer's audio (the viewer's client, its backlog not
    /// reported: that is its video's).
    fn audio_reader(&self, key: &StreamKey, guard: &ClientGuard, viewer_of: &StreamKey) -> Option<crate::hub::Reader> {
        // Audio follows live closely: start at the newest packet, keep at most half a second of backlog.
        let policy = CachePolicy::internal(AUDIO_MAX_BEHIND);
        let audience = Audience::Internal(Purpose::ViewerAudio { viewer_of: viewer_of.to_string() });
        let mut reader = self.hub.subscribe_as(key, Protocol::Whep, policy, guard.handle.clone(), audience).ok()?;
        reader.set_reports_backlog(false);
        Some(reader)
    }

    /// A viewer's Opus on the direct path.
    fn spawn_direct_audio(
        &self,
        key: StreamKey,
        a: Sending,
        guard: &ClientGuard,
        viewer_of: &StreamKey,
        direct: DirectPath,
        followers: &Followers,
    ) -> Option<tokio::task::JoinHandle<()>> {
        let reader = self.audio_reader(&key, guard, viewer_of)?;
        // No history: the answer offers no NACK for audio (browsers conceal a lost Opus packet instead).
        let track = RtpTrack { ssrc: a.ssrc, pt: a.pt, clock_rate: 48_000, history: 0 };
        let media = Media::Audio { ts_base: rand::random() };
        match member(direct, track, media, guard.handle.clone(), AUDIO_MAX_BEHIND, self.admission.clone()) {
            Ok(m) => {
                followers.add(&m);
                Some(tokio::spawn(direct_audio(reader, m)))
            }
            Err(e) => {
                tracing::warn!(error = %e, "no WebRTC audio for this viewer");
                None
            }
        }
    }

    /// A viewer's Opus through its webrtc-rs track (a session on a port of its own).
    fn spawn_track_audio(
        &self,
        key: StreamKey,
        a: AudioOut,
        guard: &ClientGuard,
        viewer_of: &StreamKey,
    ) -> Option<tokio::task::JoinHandle<()>> {
        let mut reader = self.audio_reader(&key, guard, viewer_of)?;
        Some(tokio::spawn(async move {
            let Some(pt) = negotiated_pt(&a.sender).await else { return };
            let mut seq = super::media_out::first_sequence_number();
            let base: u32 = rand::random();
            let mut batch: Vec<Arc<Packet>> = Vec::new();
            while reader.next_batch(&mut batch).await.is_ok() {
                for p in batch.drain(..) {
                    let f = &p.frame;
                    if f.kind != MediaKind::Audio || f.config {
                        continue;
                    }
                    let header = rtc::rtp::header::Header {
                        version: 2,
                        marker: false,
                        payload_type: pt,
                        sequence_number: seq,
                        timestamp: base.wrapping_add((f.dts as u32).wrapping_mul(48)),
                        ssrc: a.ssrc,
                        ..Default::default()
                    };
                    seq = seq.wrapping_add(1);
                    if a.track.write_rtp(rtc::rtp::Packet { header, payload: f.payload.clone() }).await.is_err() {
                        return;
                    }
                }
            }
        }))
    }
}

/// Where a viewer's feedback on its video goes.
#[derive(Clone)]
struct FeedbackTo {
    stream: Arc<crate::hub::Stream>,
    viewer: Arc<ClientHandle>,
    nacks: mpsc::Sender<Vec<u16>>,
}

impl FeedbackTo {
    /// PLI/FIR from the viewer: the stream's publisher makes a keyframe if it can (a transcoder's encoder,
    /// a WHIP browser); a passthrough RTMP source cannot, and the viewer waits for the next GOP. Receiver
    /// reports: the viewer's loss and round trip, for its quality level. NACKs: the viewer's track
    /// retransmits from its history.
    fn apply(&self, f: super::Feedback) {
        if f.keyframe {
            tracing::debug!(stream = %self.stream.key, "keyframe requested by a WebRTC viewer");
            self.stream.request_keyframe();
        }
        if let Some(l) = f.loss_centi_percent {
            self.viewer.player.loss_centi_percent.store(l, Ordering::Relaxed);
        }
        if let Some(r) = f.rtt_ms {
            self.viewer.player.rtt_ms.store(r, Ordering::Relaxed);
        }
        if !f.nacks.is_empty() {
            let _ = self.nacks.try_send(f.nacks);
        }
    }
}

/// A viewer's SRTCP, read on the mux's control thread instead of by its webrtc-rs session.
struct ViewerRtcp {
    rtcp: Mutex<RtcpIn>,
    ssrc: u32,
    to: FeedbackTo,
}

impl RtcpSink for ViewerRtcp {
    fn rtcp(&self, datagram: &[u8]) {
        let m = crate::metrics::global();
        match self.rtcp.lock().read(datagram, self.ssrc, super::ntp_mid_now()) {
            Ok(f) => {
                m.whep_rtcp_read.fetch_add(1, Ordering::Relaxed);
                self.to.apply(f)
            }
            Err(e) => {
                m.whep_rtcp_refused.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(client = self.to.viewer.id, error = %e, "a viewer's RTCP was not read");
            }
        }
    }
}

/// From now on the viewer's RTCP for its video (`ssrc`) is read by livegate (`rtcp_in`); without the keys
/// for that, its webrtc-rs session goes on reading it.
fn read_rtcp_here(slot: &RtcpSlot, keying: &SrtpLocalKeying, ssrc: u32, to: FeedbackTo) {
    match RtcpIn::new(keying) {
        Ok(rtcp) => {
            let _ = slot.set(Arc::new(ViewerRtcp { rtcp: Mutex::new(rtcp), ssrc, to }));
        }
        Err(e) => tracing::warn!(client = to.viewer.id, error = %e, "the viewer's RTCP stays with webrtc-rs"),
    }
}

/// The shared socket and this session's SRTP keys: what a viewer's media needs to go out without webrtc-rs.
pub(crate) type DirectPath = (Arc<SharedSocket>, SrtpLocalKeying);

/// Why a session on the shared socket cannot send its media: its end reason.
#[derive(Debug, thiserror::Error)]
enum DirectPathError {
    #[error("no shared UDP socket: {0}")]
    NoSocket(std::io::Error),
    #[error("DTLS completed without SRTP keys")]
    NoKeys,
}

/// Once connected: the direct path when the session is on the shared socket (`None` on a port of its own,
/// where only webrtc-rs can send).
async fn direct_path(
    pc: &Arc<dyn PeerConnection>,
    own_media: Option<std::io::Result<OwnMedia>>,
) -> Result<Option<(DirectPath, RtcpSlot)>, DirectPathError> {
    match own_media {
        None => Ok(None),
        Some(Err(e)) => Err(DirectPathError::NoSocket(e)),
        Some(Ok(OwnMedia { socket, rtcp })) => {
            pc.srtp_local_keying().await.map(|k| Some(((socket, k), rtcp))).ok_or(DirectPathError::NoKeys)
        }
    }
}

/// How often a direct session checks which ICE pair its viewer has selected.
const PATH_CHECK: Duration = Duration::from_secs(1);

/// Keeps a session's direct tracks sending to the selected ICE pair's remote address: a viewer's ICE agent may
/// nominate another pair (its network changed) while DTLS, and so the keys, stay. Ends with the connection.
fn follow_path(
    pc: Arc<dyn PeerConnection>,
    members: Arc<Mutex<Vec<Arc<Member>>>>,
    mut state: watch::Receiver<RTCPeerConnectionState>,
) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(PATH_CHECK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                r = state.changed() => {
                    let s = *state.borrow();
                    if r.is_err() || matches!(s, RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed) {
                        return;
                    }
                }
            }
            if let Some(k) = pc.srtp_local_keying().await {
                for m in members.lock().iter() {
                    m.set_peer(k.peer_addr);
                }
            }
        }
    });
}

/// Keeps a livegate session's direct tracks sending to the address its viewer's checks select. Ends with the
/// session.
fn follow_peer(mut peer: watch::Receiver<Option<std::net::SocketAddr>>, members: Arc<Mutex<Vec<Arc<Member>>>>) {
    tokio::spawn(async move {
        while peer.changed().await.is_ok() {
            let Some(a) = *peer.borrow_and_update() else { continue };
            for m in members.lock().iter() {
                m.set_peer(a);
            }
        }
    });
}

/// An outgoing RTP track's identity, and how many sent packets it keeps for NACKs.
struct RtpTrack {
    ssrc: u32,
    pt: u8,
    clock_rate: u32,
    history: usize,
}

/// A viewer's track on the direct path.
fn member(
    (socket, keying): DirectPath,
    track: RtpTrack,
    media: Media,
    viewer: Arc<ClientHandle>,
    max_behind: Duration,
    admission: Arc<Admission>,
) -> Result<Arc<Member>, MediaOutError> {
    let first_seq = super::media_out::first_sequence_number();
    let out = TrackOut::new(&keying, track.ssrc, track.pt, track.clock_rate, first_seq, track.history)?;
    Ok(Member::new(socket, keying.peer_addr, out, media, viewer, max_behind, admission))
}

/// A viewer's audio is never more than this behind live.
const AUDIO_MAX_BEHIND: Duration = Duration::from_millis(500);

/// A viewer's video RTP: its SSRC, the random base of its timestamps, VP8 (else H.264), and the payload type
/// the answer settled on.
#[derive(Debug, Clone, Copy)]
struct VideoRtp {
    ssrc: u32,
    ts_base: u32,
    vp8: bool,
    pt: u8,
}

/// Where a viewer's video goes.
enum VideoSink {
    /// Through webrtc-rs: a session on a UDP port of its own.
    Track(Arc<TrackLocalStaticRTP>),
    /// Protected and sent here (parked for the stream's fan-out once caught up), with the viewer's NACKs.
    Direct(Arc<Member>, mpsc::Receiver<Vec<u16>>),
}

/// The next NACK for a direct sink; never for webrtc-rs' (its interceptors answer them).
async fn next_nack(sink: &mut VideoSink) -> Option<Vec<u16>> {
    match sink {
        VideoSink::Direct(_, nacks) => nacks.recv().await,
        VideoSink::Track(_) => std::future::pending().await,
    }
}

/// Resolves when a parked member is handed back; never while it is not parked.
async fn handed_back(m: Option<&Arc<Member>>) {
    match m {
        Some(m) => m.handed_back().await,
        None => std::future::pending().await,
    }
}

/// A direct track's place in its stream's fan-out, from its task's side. Dropping it (the task ends, or is
/// cancelled by a DELETE) takes the track out of the group, so nothing is sent to a viewer that left.
struct Parking {
    member: Arc<Member>,
    group: Option<Arc<fanout::Group>>,
}

impl Parking {
    fn is_parked(&self) -> bool {
        self.group.is_some()
    }

    /// Parks the track when the reader has caught up with live.
    fn park_if_caught_up(&mut self, reader: &crate::hub::Reader) {
        if self.group.is_some() || !reader.caught_up() {
            return;
        }
        let (Some(c), Some(group)) = (reader.cursor(), fanout::Group::of(reader.stream())) else { return };
        self.member.park(reader.stream(), &group, c);
        self.group = Some(group);
    }

    /// Takes the track back (handed back by the fan-out, or wanted back); the reader goes on from there.
    fn take_back(&mut self, reader: &mut crate::hub::Reader) {
        if let Some(hb) = self.member.unpark() {
            reader.resume(hb.next_seq, hb.headers);
        }
        self.group = None;
    }
}

impl Drop for Parking {
    fn drop(&mut self) {
        if let Some(g) = self.group.take() {
            self.member.leave(&g);
        }
    }
}

/// A viewer's Opus audio on the direct path: sent by its task until caught up, then by the fan-out of the
/// stream's Opus rendition.
async fn direct_audio(mut reader: crate::hub::Reader, m: Arc<Member>) {
    let mut batch: Vec<Arc<Packet>> = Vec::new();
    let mut parking = Parking { member: m.clone(), group: None };
    loop {
        if parking.is_parked() {
            m.handed_back().await;
            parking.take_back(&mut reader);
            continue;
        }
        if reader.next_batch(&mut batch).await.is_err() {
            break;
        }
        match m.deliver(&batch) {
            Ok(n) => reader.add_bytes_out(n),
            Err(e) => tracing::debug!(error = %e, "audio not protected"),
        }
        batch.clear();
        parking.park_if_caught_up(&reader);
    }
}

/// The next data channel the viewer opens; never, once it can open none.
async fn next_channel(rx: &mut Option<mpsc::UnboundedReceiver<Arc<dyn DataChannel>>>) -> Option<Arc<dyn DataChannel>> {
    match rx {
        Some(r) => r.recv().await,
        None => std::future::pending().await,
    }
}

/// Sends the stream's video to one viewer until the stream ends, the viewer goes away or a write fails; and
/// its SEI messages as JSON on the viewer's `sei` data channel, once it opens one.
/// `why` says why the session ended when its state does.
async fn pump(
    reader: &mut crate::hub::Reader,
    sink: &mut VideoSink,
    VideoRtp { ssrc, ts_base, vp8, pt }: VideoRtp,
    state: &mut watch::Receiver<RTCPeerConnectionState>,
    mut channels: Option<mpsc::UnboundedReceiver<Arc<dyn DataChannel>>>,
    why: &(dyn Fn(RTCPeerConnectionState) -> String + Sync),
) -> String {
    let mut cfg: Option<AvcDecoderConfig> = None;
    let mut seq = super::media_out::first_sequence_number();
    let mut batch: Vec<Arc<Packet>> = Vec::new();
    let mut sei_dc: Option<Arc<dyn DataChannel>> = None;
    let mut sei_dropped = 0u64;
    let stream = reader.stream().clone();
    let direct = match sink {
        VideoSink::Direct(m, _) => Some(m.clone()),
        VideoSink::Track(_) => None,
    };
    // While parked in the stream's fan-out the flusher sends the viewer's video and this task waits.
    let mut parking = direct.clone().map(|member| Parking { member, group: None });
    let is_parked = |p: &Option<Parking>| p.as_ref().is_some_and(Parking::is_parked);
    loop {
        tokio::select! {
            r = reader.next_batch(&mut batch), if !is_parked(&parking) => {
                if let Err(reason) = r {
                    return reason.to_string();
                }
            }
            _ = handed_back(direct.as_ref().filter(|_| is_parked(&parking))) => {
                if let Some(p) = &mut parking {
                    p.take_back(reader);
                }
                continue;
            }
            dc = next_channel(&mut channels) => {
                match dc {
                    Some(dc) if dc.label().await.is_ok_and(|l| l == sei_channel::LABEL) => {
                        sei_dc = Some(dc);
                        // SEI goes out on this task's path, next to its frame: take the viewer back.
                        if let Some(p) = parking.as_mut().filter(|p| p.is_parked()) {
                            p.take_back(reader);
                        }
                    }
                    Some(_) => {}
                    None => channels = None,
                }
                continue;
            }
            nack = next_nack(sink) => {
                if let (Some(seqs), Some(m)) = (nack, &direct) {
                    match m.resend(&seqs) {
                        Ok(n) => tracing::trace!(asked = seqs.len(), resent = n, "NACK answered"),
                        Err(e) => tracing::debug!(error = %e, "NACK not answered"),
                    }
                }
                continue;
            }
            changed = state.changed() => {
                let s = *state.borrow();
                if changed.is_err() || matches!(s, RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed | RTCPeerConnectionState::Disconnected) {
                    return why(s);
                }
                continue;
            }
        }
        let mut sent = 0usize;
        for p in &batch {
            let f = &p.frame;
            if f.kind != MediaKind::Video {
                continue;
            }
            if f.config {
                cfg = AvcDecoderConfig::parse(&f.payload).ok();
                continue;
            }
            let ts = ts_base.wrapping_add((f.pts() as u32).wrapping_mul(90));
            if let (Some(dc), Some(c)) = (&sei_dc, cfg.as_ref().filter(|_| f.codec == Codec::H264)) {
                let texts = p.sei_texts(|f| {
                    let (texts, bad) = sei_channel::texts(f, usize::from(c.nal_length_size));
                    stream.count_malformed_sei(bad);
                    texts
                });
                for t in texts {
                    // Never waits: a viewer whose channel is full (or not open yet) loses the message.
                    if dc.try_send_text(&sei_channel::finish(t, ts)).await.is_err() {
                        sei_dropped += 1;
                        if sei_dropped.is_power_of_two() {
                            tracing::debug!(stream = %stream.key, dropped = sei_dropped, "SEI not sent: the viewer's data channel is full or closed");
                        }
                    }
                }
            }
            let VideoSink::Track(track) = &*sink else { continue };
            let parts = match (vp8, f.codec) {
                (true, Codec::Vp8) => p.rtp_payloads(fanout::vp8_payloads),
                (false, Codec::H264) => match cfg.as_ref() {
                    Some(c) => p.rtp_payloads(|f| fanout::h264_payloads(f, c)),
                    None => continue,
                },
                _ => continue,
            };
            let last = parts.len().saturating_sub(1);
            for (i, payload) in parts.iter().enumerate() {
                sent += payload.len() + 12;
                let header = rtc::rtp::header::Header {
                    version: 2,
                    marker: i == last,
                    payload_type: pt,
                    sequence_number: seq,
                    timestamp: ts,
                    ssrc,
                    ..Default::default()
                };
                seq = seq.wrapping_add(1);
                if track.write_rtp(rtc::rtp::Packet { header, payload: payload.clone() }).await.is_err() {
                    // The error carries the whole packet: the useful fact is that the connection is gone.
                    return "peer connection closed".into();
                }
            }
        }
        if let Some(m) = &direct {
            match m.deliver(&batch) {
                Ok(n) => sent += n,
                Err(e) => return format!("cannot protect media: {e}"),
            }
        }
        batch.clear();
        reader.add_bytes_out(sent);
        if let Some(p) = parking.as_mut().filter(|_| sei_dc.is_none()) {
            p.park_if_caught_up(reader);
        }
    }
}

/// The payload type the answer settled on: the browser's number for H.264, not the one registered here.
async fn negotiated_pt(sender: &Arc<dyn RtpSender>) -> Option<u8> {
    sender.get_parameters().await.ok()?.rtp_parameters.codecs.first().map(|c| c.payload_type)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_viewer_keeps_its_caches_but_is_never_cut_off_for_skipping() {
        let play = CachePolicy {
            min_cache: Duration::from_millis(100),
            max_cache: Duration::from_millis(500),
            max_skips_per_minute: 6,
            low_latency: true,
        };
        let p = udp_policy(play);
        assert_eq!(p.max_skips_per_minute, u32::MAX);
        assert_eq!((p.min_cache, p.max_cache, p.low_latency), (play.min_cache, play.max_cache, play.low_latency));
    }
}
