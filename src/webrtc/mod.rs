//! WHEP playback (draft-ietf-wish-whep) on webrtc-rs 0.21: one PeerConnection per viewer, fed by a hub reader.
//!
//! Video passes through: the hub's AVCC access units become Annex-B and are packetized into RTP with the
//! source's presentation time. A viewer starts at the cached keyframe like any reader, and a slow viewer
//! skips to a newer keyframe by the same max_cache policy. Audio comes from the stream's shared AAC→Opus
//! rendition (`crate::transcode`), one transcoder per stream however many viewers. See
//! `docs/notes/webrtc-rs-0.21.md`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use rtc::ice::mdns::MulticastDnsMode;
use rtc::ice::network_type::NetworkType;
use rtc::interceptor::Registry;
use rtc::media_stream::MediaStreamTrack;
use rtc::rtp::codec::h264::H264Payloader;
use rtc::rtp::packetizer::Payloader;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodecParameters, RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
};
use serde::Deserialize;
use tokio::sync::watch;
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_local::TrackLocal;
use webrtc::peer_connection::{
    register_default_interceptors, MediaEngine, PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler,
    RTCConfigurationBuilder, RTCIceGatheringState, RTCPeerConnectionState, RTCSessionDescription, SettingEngineBuilder,
};
use webrtc::rtp_transceiver::RtpSender;

use crate::hub::{CachePolicy, ClientGuard, Hub, HubError, Packet, Protocol, StreamKey};
use crate::media::avc::{self, AvcDecoderConfig};
use crate::media::MediaKind;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebrtcConfig {
    /// The address ICE binds and advertises (the host candidate browsers connect to).
    pub ice_ip: std::net::IpAddr,
    /// UDP ports for sessions, one per viewer; 0/0 lets the OS pick.
    pub udp_port_min: u16,
    pub udp_port_max: u16,
    /// A session that has not connected by then is closed.
    pub connect_timeout_secs: f64,
    /// STUN/TURN servers announced to WHEP clients in `Link: <url>; rel="ice-server"` headers (RFC 9725 §4.6).
    #[serde(default)]
    pub ice_servers: Vec<String>,
    /// Credentials sent with `turn:`/`turns:` entries.
    #[serde(default)]
    pub turn_username: String,
    #[serde(default)]
    pub turn_credential: String,
}

impl WebrtcConfig {
    /// The `Link` header values announcing the configured ICE servers.
    pub fn link_headers(&self) -> Vec<String> {
        self.ice_servers
            .iter()
            .map(|u| {
                if u.starts_with("turn") && !self.turn_username.is_empty() {
                    format!(
                        "<{u}>; rel=\"ice-server\"; username=\"{}\"; credential=\"{}\"; credential-type=\"password\"",
                        self.turn_username, self.turn_credential
                    )
                } else {
                    format!("<{u}>; rel=\"ice-server\"")
                }
            })
            .collect()
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.ice_ip.is_unspecified() {
            return Err("webrtc.ice_ip must be a concrete address browsers can reach, not 0.0.0.0".into());
        }
        if self.udp_port_min > self.udp_port_max {
            return Err(format!(
                "webrtc.udp_port_min {} is above udp_port_max {}",
                self.udp_port_min, self.udp_port_max
            ));
        }
        if (self.udp_port_min == 0) != (self.udp_port_max == 0) {
            return Err("webrtc.udp_port_min and udp_port_max are both 0 (any port) or both set".into());
        }
        for u in &self.ice_servers {
            if !["stun:", "stuns:", "turn:", "turns:"].iter().any(|p| u.starts_with(p))
                || u.contains(['<', '>', '"', ' '])
            {
                return Err(format!("webrtc.ice_servers: {u:?} is not a stun:/turn: URL"));
            }
        }
        if !(self.connect_timeout_secs.is_finite() && (1.0..=300.0).contains(&self.connect_timeout_secs)) {
            return Err(format!("webrtc.connect_timeout_secs {} is outside 1..=300", self.connect_timeout_secs));
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WhepError {
    #[error("{0}")]
    NotFound(String),
    #[error("invalid SDP offer: {0}")]
    BadOffer(String),
    #[error("the offer has no video this server can send (it sends H.264, packetization-mode 1)")]
    NoCodec,
    #[error("WebRTC failure: {0}")]
    Internal(String),
}

const MTU: usize = 1200;

fn opus_codec() -> RTCRtpCodec {
    RTCRtpCodec {
        mime_type: "audio/opus".into(),
        clock_rate: 48_000,
        channels: 2,
        sdp_fmtp_line: "minptime=10;useinbandfec=1".into(),
        rtcp_feedback: vec![],
    }
}

fn h264_codec() -> RTCRtpCodec {
    RTCRtpCodec {
        mime_type: "video/H264".into(),
        clock_rate: 90_000,
        channels: 0,
        sdp_fmtp_line: "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f".into(),
        rtcp_feedback: vec![],
    }
}

/// A track we packetize ourselves; both tracks share one stream id so the browser puts them in one MediaStream.
fn rtp_track(kind: RtpCodecKind, id: &str, codec: RTCRtpCodec, ssrc: u32) -> Arc<TrackLocalStaticRTP> {
    Arc::new(TrackLocalStaticRTP::new(MediaStreamTrack::new(
        "livegate".into(),
        id.into(),
        id.into(),
        kind,
        vec![RTCRtpEncodingParameters {
            rtp_coding_parameters: RTCRtpCodingParameters { ssrc: Some(ssrc), ..Default::default() },
            codec,
            ..Default::default()
        }],
    )))
}

struct Handler {
    gathered: watch::Sender<bool>,
    state: watch::Sender<RTCPeerConnectionState>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_ice_gathering_state_change(&self, s: RTCIceGatheringState) {
        if s == RTCIceGatheringState::Complete {
            let _ = self.gathered.send(true);
        }
    }
    async fn on_connection_state_change(&self, s: RTCPeerConnectionState) {
        let _ = self.state.send(s);
    }
}

struct Session {
    pc: Arc<dyn PeerConnection>,
    key: StreamKey,
}

/// All WHEP sessions.
pub struct Whep {
    hub: Hub,
    cfg: WebrtcConfig,
    transcoders: Arc<crate::transcode::Transcoders>,
    sessions: Mutex<HashMap<String, Session>>,
    next_port: AtomicU16,
}

impl Whep {
    pub fn new(hub: Hub, cfg: WebrtcConfig, transcoders: Arc<crate::transcode::Transcoders>) -> Arc<Self> {
        let start = cfg.udp_port_min;
        Arc::new(Self { hub, cfg, transcoders, sessions: Mutex::new(HashMap::new()), next_port: AtomicU16::new(start) })
    }

    /// Answers a recvonly offer for `key`. Returns (session id, answer SDP).
    pub async fn play(
        self: &Arc<Self>,
        key: &StreamKey,
        offer: String,
        policy: CachePolicy,
        addr: Option<std::net::SocketAddr>,
    ) -> Result<(String, String), WhepError> {
        if !offer.starts_with("v=0") {
            return Err(WhepError::BadOffer("an SDP offer starts with \"v=0\"".into()));
        }
        if !offer.lines().any(|l| l.starts_with("m=video")) || !offer.to_ascii_lowercase().contains("h264/90000") {
            return Err(WhepError::NoCodec);
        }
        // Refuse before doing any WebRTC work when the stream does not exist.
        if self.hub.get(key).filter(|s| !s.is_closed()).is_none() {
            return Err(WhepError::NotFound(format!("stream {key} is not being published")));
        }
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
        // Video: passthrough, unless the source has B-frames, which WebRTC receivers play badly: then the
        // stream's shared constrained-baseline rendition.
        let source_has_bframes = self.hub.get(key).is_some_and(|s| s.has_bframes());
        let video_key = if source_has_bframes {
            match self.transcoders.baseline(key) {
                Ok(Some(k)) => {
                    tracing::info!(stream = %key, rendition = %k, "source has B-frames: WebRTC video is transcoded");
                    k
                }
                Ok(None) => key.clone(),
                Err(e) => return Err(WhepError::Internal(format!("cannot transcode B-frame video: {e}"))),
            }
        } else {
            key.clone()
        };
        let (pc, track, sender, audio, ssrc, mut state_rx, answer) = self.negotiate(offer, opus_key.is_some()).await?;
        let guard = self.hub.register_client(Protocol::Whep, addr);
        let reader = match self.hub.subscribe(&video_key, Protocol::Whep, policy, guard.handle.clone()) {
            Ok(r) => r,
            Err(e) => {
                let _ = pc.close().await;
                return Err(match e {
                    HubError::NotFound(m) => WhepError::NotFound(m),
                    other => WhepError::Internal(other.to_string()),
                });
            }
        };
        let id = format!("{:016x}", rand::random::<u64>());
        self.sessions.lock().insert(id.clone(), Session { pc: pc.clone(), key: key.clone() });
        let this = self.clone();
        let sid = id.clone();
        let connect_timeout = Duration::from_secs_f64(self.cfg.connect_timeout_secs);
        tokio::spawn(async move {
            let connected =
                tokio::time::timeout(connect_timeout, state_rx.wait_for(|s| *s == RTCPeerConnectionState::Connected))
                    .await
                    .is_ok_and(|r| r.is_ok());
            let reason = match connected {
                true => {
                    tracing::info!(session = %sid, client = guard.handle.id, audio = opus_key.is_some(), "whep connected");
                    let audio_task = match (audio, opus_key) {
                        (Some(a), Some(k)) => this.spawn_audio(k, a, &guard),
                        _ => None,
                    };
                    let r = pump(reader, &track, &sender, ssrc, &mut state_rx, &guard).await;
                    if let Some(t) = audio_task {
                        t.abort();
                    }
                    r
                }
                false => format!("not connected within {connect_timeout:?}"),
            };
            tracing::info!(session = %sid, client = guard.handle.id, %reason, "whep session ended");
            // Our own close fires no Closed event: clean up here.
            this.sessions.lock().remove(&sid);
            let _ = pc.close().await;
        });
        Ok((id, answer))
    }

    /// Ends a session (WHEP DELETE). False when there is no such session.
    pub async fn delete(&self, id: &str) -> bool {
        let s = self.sessions.lock().remove(id);
        match s {
            Some(s) => {
                tracing::info!(session = %id, stream = %s.key, "whep session deleted by the client");
                let _ = s.pc.close().await;
                true
            }
            None => false,
        }
    }

    fn next_udp_addr(&self) -> String {
        let port = if self.cfg.udp_port_min == 0 {
            0
        } else {
            let span = (self.cfg.udp_port_max - self.cfg.udp_port_min) as u32 + 1;
            let n = self.next_port.fetch_add(1, Ordering::Relaxed) as u32;
            (self.cfg.udp_port_min as u32 + (n.wrapping_sub(self.cfg.udp_port_min as u32)) % span) as u16
        };
        format!("{}:{port}", self.cfg.ice_ip)
    }

    #[allow(clippy::type_complexity)]
    async fn negotiate(
        &self,
        offer: String,
        with_audio: bool,
    ) -> Result<
        (
            Arc<dyn PeerConnection>,
            Arc<TrackLocalStaticRTP>,
            Arc<dyn RtpSender>,
            Option<AudioOut>,
            u32,
            watch::Receiver<RTCPeerConnectionState>,
            String,
        ),
        WhepError,
    > {
        let internal = |e: webrtc::error::Error| WhepError::Internal(e.to_string());
        let (g_tx, mut g_rx) = watch::channel(false);
        let (s_tx, s_rx) = watch::channel(RTCPeerConnectionState::New);
        // Ports in the range may be taken by other sessions or programs: try a few.
        let attempts = if self.cfg.udp_port_min == 0 { 1 } else { 16 };
        let mut last_err = None;
        let mut built = None;
        for _ in 0..attempts {
            let mut me = MediaEngine::default();
            me.register_codec(
                RTCRtpCodecParameters { rtp_codec: h264_codec(), payload_type: 102 },
                RtpCodecKind::Video,
            )
            .map_err(internal)?;
            if with_audio {
                me.register_codec(
                    RTCRtpCodecParameters { rtp_codec: opus_codec(), payload_type: 111 },
                    RtpCodecKind::Audio,
                )
                .map_err(internal)?;
            }
            let registry = register_default_interceptors(Registry::new(), &mut me).map_err(internal)?;
            let se = SettingEngineBuilder::new()
                .with_lite(true)
                .with_multicast_dns_mode(MulticastDnsMode::Disabled)
                .with_network_types(vec![NetworkType::Udp4, NetworkType::Udp6])
                .with_ice_timeouts(Some(Duration::from_secs(5)), Some(Duration::from_secs(10)), None)
                .build();
            let r = PeerConnectionBuilder::new()
                .with_configuration(RTCConfigurationBuilder::new().build())
                .with_media_engine(me)
                .with_setting_engine(se)
                .with_interceptor_registry(registry)
                .with_handler(Arc::new(Handler { gathered: g_tx.clone(), state: s_tx.clone() }))
                .with_udp_addrs(vec![self.next_udp_addr()])
                .build()
                .await;
            match r {
                Ok(pc) => {
                    built = Some(pc);
                    break;
                }
                Err(e) => last_err = Some(e),
            }
        }
        let pc: Arc<dyn PeerConnection> = match built {
            Some(pc) => Arc::new(pc),
            None => return Err(WhepError::Internal(format!("no UDP port available: {last_err:?}"))),
        };
        let ssrc: u32 = rand::random();
        let track = rtp_track(RtpCodecKind::Video, "video", h264_codec(), ssrc);
        let fail = |pc: Arc<dyn PeerConnection>, e: WhepError| async move {
            let _ = pc.close().await;
            Err(e)
        };
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
        let offer = match RTCSessionDescription::offer(offer) {
            Ok(o) => o,
            Err(e) => return fail(pc, WhepError::BadOffer(e.to_string())).await,
        };
        if let Err(e) = pc.set_remote_description(offer).await {
            return fail(pc, WhepError::BadOffer(e.to_string())).await;
        }
        let answer = match pc.create_answer(None).await {
            Ok(a) => a,
            Err(e) => return fail(pc, WhepError::BadOffer(e.to_string())).await,
        };
        if let Err(e) = pc.set_local_description(answer).await {
            return fail(pc, internal(e)).await;
        }
        if tokio::time::timeout(Duration::from_secs(5), g_rx.wait_for(|g| *g)).await.is_err() {
            return fail(pc, WhepError::Internal("ICE gathering did not complete".into())).await;
        }
        let Some(local) = pc.local_description().await else {
            return fail(pc, WhepError::Internal("no local description".into())).await;
        };
        if !local.sdp.lines().any(|l| l.starts_with("m=video") && !l.starts_with("m=video 0 ")) {
            return fail(pc, WhepError::NoCodec).await;
        }
        Ok((pc, track, sender, audio, ssrc, s_rx, local.sdp))
    }
}

/// The audio side of a session: an Opus track fed from the stream's Opus rendition.
struct AudioOut {
    track: Arc<TrackLocalStaticRTP>,
    sender: Arc<dyn RtpSender>,
    ssrc: u32,
}

impl Whep {
    fn spawn_audio(&self, key: StreamKey, a: AudioOut, guard: &ClientGuard) -> Option<tokio::task::JoinHandle<()>> {
        // Audio follows live closely: start at the newest packet, keep at most half a second of backlog.
        let policy = CachePolicy {
            min_cache: Duration::ZERO,
            max_cache: Duration::from_millis(500),
            max_skips_per_minute: u32::MAX,
        };
        let mut reader = self.hub.subscribe(&key, Protocol::Whep, policy, guard.handle.clone()).ok()?;
        Some(tokio::spawn(async move {
            let Some(pt) = negotiated_pt(&a.sender).await else { return };
            let mut seq: u16 = rand::random();
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

/// Sends the stream's video to one viewer until the stream ends, the viewer goes away or a write fails.
async fn pump(
    mut reader: crate::hub::Reader,
    track: &TrackLocalStaticRTP,
    sender: &Arc<dyn RtpSender>,
    ssrc: u32,
    state: &mut watch::Receiver<RTCPeerConnectionState>,
    guard: &ClientGuard,
) -> String {
    let pt = match negotiated_pt(sender).await {
        Some(pt) => pt,
        None => return "no negotiated payload type".into(),
    };
    let mut cfg: Option<AvcDecoderConfig> = None;
    let mut seq: u16 = rand::random();
    let ts_base: u32 = rand::random();
    let mut batch: Vec<Arc<Packet>> = Vec::new();
    loop {
        tokio::select! {
            r = reader.next_batch(&mut batch) => {
                if let Err(reason) = r {
                    return reason.to_string();
                }
            }
            changed = state.changed() => {
                let s = *state.borrow();
                if changed.is_err() || matches!(s, RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed | RTCPeerConnectionState::Disconnected) {
                    return format!("peer connection {s:?}");
                }
                continue;
            }
        }
        let mut sent = 0usize;
        for p in batch.drain(..) {
            let f = &p.frame;
            if f.kind != MediaKind::Video {
                continue;
            }
            if f.config {
                cfg = AvcDecoderConfig::parse(&f.payload).ok();
                continue;
            }
            let Some(c) = cfg.as_ref() else { continue };
            let parts = p.rtp_payloads(|f| h264_payloads(f, c));
            let ts = ts_base.wrapping_add((f.pts() as u32).wrapping_mul(90));
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
        reader.add_bytes_out(sent);
        guard.handle.bytes_out.fetch_add(sent as u64, Ordering::Relaxed);
    }
}

/// An access unit as H.264 RTP payloads (STAP-A for parameter sets, FU-A above the MTU); empty when the
/// frame cannot be converted.
fn h264_payloads(f: &crate::media::Frame, cfg: &AvcDecoderConfig) -> Vec<Bytes> {
    let mut annexb = Vec::with_capacity(f.payload.len() + 64);
    if avc::avcc_to_annexb(&f.payload, cfg, f.keyframe, false, &mut annexb).is_err() {
        return Vec::new();
    }
    // A fresh payloader per access unit: no state leaks from one frame to the next, so the result can be shared.
    H264Payloader::default().payload(MTU - 12, &Bytes::from(annexb)).unwrap_or_default()
}

/// The payload type the answer settled on: the browser's number for H.264, not the one registered here.
async fn negotiated_pt(sender: &Arc<dyn RtpSender>) -> Option<u8> {
    sender.get_parameters().await.ok()?.rtp_parameters.codecs.first().map(|c| c.payload_type)
}
