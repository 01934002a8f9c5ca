//! The WebRTC bridge: WHEP playback (`whep`) and WHIP ingest (`whip`), ICE-lite, every session on one shared
//! UDP port (`udp_mux`). A WHEP viewer's ICE and DTLS are livegate's own (`lite`) and its media goes out
//! through the stream's fan-out (`fanout`, `media_out`); WHIP publishers and viewers with data channels get a
//! webrtc-rs 0.21 PeerConnection. Pure protocol pieces (`lite::stun`, `lite::sdp`, `depacketize`, `reorder`,
//! `rtp_clock`) are kept apart from the sockets. See `docs/notes/webrtc-rs-0.21.md` for the library's quirks.

pub mod admission;
pub mod depacketize;
pub mod fanout;
pub mod lite;
pub mod media_out;
pub mod mux_socket;
pub mod reorder;
pub mod rtcp_in;
pub mod rtp_clock;
pub mod sei_channel;
pub mod udp_batch;
pub mod udp_mux;
pub mod udp_recv;
pub mod whep;
pub mod whip;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rtc::ice::mdns::MulticastDnsMode;
use rtc::ice::network_type::NetworkType;
use rtc::interceptor::{Attribute, Interceptor, Packet as IPacket, Registry, Slot, StreamInfo, TaggedPacket};
use rtc::media_stream::MediaStreamTrack;
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtcp::receiver_report::ReceiverReport;
use rtc::rtcp::sender_report::SenderReport;
use rtc::rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack;
use rtc::rtp_transceiver::rtp_sender::{
    RTCPFeedback, RTCRtpCodec, RTCRtpCodecParameters, RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
};
use tokio::sync::{mpsc, watch};
use webrtc::data_channel::DataChannel;
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_remote::TrackRemote;
use webrtc::peer_connection::{
    register_default_interceptors, MediaEngine, PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler,
    RTCConfigurationBuilder, RTCIceGatheringState, RTCPeerConnectionState, RTCSessionDescription, SettingEngineBuilder,
};

pub use crate::config::WebrtcConfig;
pub use whep::{Whep, WhepError};
pub use whip::{Whip, WhipError};

const MTU: usize = 1200;

/// How a new session's wait for its peer ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ConnectWait {
    Connected,
    /// The client deleted the session (WHIP/WHEP DELETE) before it connected.
    Deleted,
    TimedOut(Duration),
    Failed(RTCPeerConnectionState),
}

impl ConnectWait {
    /// Why the session ends, unless it connected.
    fn end_reason(self) -> Option<String> {
        match self {
            ConnectWait::Connected => None,
            ConnectWait::Deleted => Some("deleted by the client before it connected".into()),
            ConnectWait::TimedOut(t) => Some(format!("not connected within {t:?}")),
            ConnectWait::Failed(s) => Some(format!("peer connection {s:?} before it connected")),
        }
    }
}

/// Waits until the peer connects, fails, the client deletes the session (`stop`), or `timeout` passes. A
/// DELETE must release the session (and its stream name) at once, not at the connect timeout.
async fn await_connected(
    state: &mut watch::Receiver<RTCPeerConnectionState>,
    stop: &mut watch::Receiver<bool>,
    timeout: Duration,
) -> ConnectWait {
    let settled = |s: &RTCPeerConnectionState| {
        matches!(s, RTCPeerConnectionState::Connected | RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed)
    };
    tokio::select! {
        r = tokio::time::timeout(timeout, state.wait_for(settled)) => match r {
            Err(_) => ConnectWait::TimedOut(timeout),
            Ok(Err(_)) => ConnectWait::Failed(RTCPeerConnectionState::Closed),
            Ok(Ok(s)) if *s == RTCPeerConnectionState::Connected => ConnectWait::Connected,
            Ok(Ok(s)) => ConnectWait::Failed(*s),
        },
        _ = stop.wait_for(|deleted| *deleted) => ConnectWait::Deleted,
    }
}

/// How long a connected peer may send no STUN before ICE calls it Disconnected (sessions end then).
/// An ICE-lite server never sends checks, and webrtc-rs 0.21 counts only inbound STUN as a sign of life
/// (DTLS/SRTP from the peer does not refresh it), so this must outlast the client's consent checks.
/// Chrome pings a stable pair every 2.5 s, but RFC 7675 clients (aiortc/aioice, libnice) check every
/// 5 s randomized to 4–6 s, and do not retransmit a lost check: 5 s here dropped aiortc sessions within
/// seconds of connecting. 13 s outlasts one lost check at the longest interval (2 × 6 s) plus a second.
const ICE_DISCONNECTED_TIMEOUT: Duration = Duration::from_secs(13);

/// Opus as livegate and the load tool's viewers register it.
pub fn opus_codec() -> RTCRtpCodec {
    RTCRtpCodec {
        mime_type: "audio/opus".into(),
        clock_rate: 48_000,
        channels: 2,
        sdp_fmtp_line: "minptime=10;useinbandfec=1".into(),
        rtcp_feedback: vec![],
    }
}

/// H.264 constrained baseline, packetization-mode 1, as browsers offer it.
pub fn h264_codec() -> RTCRtpCodec {
    RTCRtpCodec {
        mime_type: "video/H264".into(),
        clock_rate: 90_000,
        channels: 0,
        sdp_fmtp_line: "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f".into(),
        rtcp_feedback: vec![],
    }
}

fn vp8_codec() -> RTCRtpCodec {
    RTCRtpCodec {
        mime_type: "video/VP8".into(),
        clock_rate: 90_000,
        channels: 0,
        sdp_fmtp_line: String::new(),
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

/// Latches what a session waits for: gathering done, connection state, remote tracks (when `tracks` is set)
/// and the data channels the peer opens (when `channels` is set). Public so that the load tool's viewers use
/// the same one.
pub struct Handler {
    pub gathered: watch::Sender<bool>,
    pub state: watch::Sender<RTCPeerConnectionState>,
    pub tracks: Option<mpsc::UnboundedSender<Arc<dyn TrackRemote>>>,
    pub channels: Option<mpsc::UnboundedSender<Arc<dyn DataChannel>>>,
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
    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        if let Some(tx) = &self.tracks {
            let _ = tx.send(track);
        }
    }
    async fn on_data_channel(&self, dc: Arc<dyn DataChannel>) {
        if let Some(tx) = &self.channels {
            let _ = tx.send(dc);
        }
    }
}

/// What a session's PeerConnection hands back besides its state: remote tracks (WHIP) and the data channels
/// the peer opens (WHEP's `sei` channel).
#[derive(Default)]
pub(crate) struct PeerOutputs {
    pub tracks: Option<mpsc::UnboundedSender<Arc<dyn TrackRemote>>>,
    pub channels: Option<mpsc::UnboundedSender<Arc<dyn DataChannel>>>,
}

/// Bytes a session's data channels may hold unsent: a viewer that stops reading loses messages
/// (`try_send` fails) instead of growing the server's memory. 16 of the largest SEI messages.
const DATA_CHANNEL_SEND_LIMIT: usize = 128 * 1024;

/// Inbound RTCP stops inside the interceptor chain unless marked for the application. livegate wants
/// keyframe requests (PLI/FIR) and receiver reports (a viewer's loss and round trip, for its quality level)
/// on the tracks it sends, and sender reports (A/V sync) of the tracks it receives; everything else flows on
/// untouched.
#[derive(Default)]
struct RtcpToApp {
    reads: VecDeque<TaggedPacket>,
    writes: VecDeque<TaggedPacket>,
}

impl rtc::sansio::Protocol<TaggedPacket, TaggedPacket, ()> for RtcpToApp {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = rtc::shared::error::Error;
    type Time = Instant;

    fn handle_read(&mut self, mut m: TaggedPacket) -> Result<(), Self::Error> {
        if let IPacket::Rtcp(p) = &m.message.packet {
            let wanted: Vec<_> = p
                .iter()
                .filter(|x| {
                    let a = x.as_any();
                    a.is::<PictureLossIndication>()
                        || a.is::<FullIntraRequest>()
                        || a.is::<SenderReport>()
                        || a.is::<ReceiverReport>()
                        || a.is::<TransportLayerNack>()
                })
                .cloned()
                .collect();
            if !wanted.is_empty() {
                m.message.packet = IPacket::Rtcp(wanted);
                m.message.add(Attribute::DeliverToApplication);
            }
        }
        self.reads.push_back(m);
        Ok(())
    }
    fn poll_read(&mut self) -> Option<TaggedPacket> {
        self.reads.pop_front()
    }
    fn handle_write(&mut self, m: TaggedPacket) -> Result<(), Self::Error> {
        self.writes.push_back(m);
        Ok(())
    }
    fn poll_write(&mut self) -> Option<TaggedPacket> {
        self.writes.pop_front()
    }
}

impl Interceptor for RtcpToApp {
    fn bind_local_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_local_stream(&mut self, _info: &StreamInfo) {}
    fn bind_remote_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_remote_stream(&mut self, _info: &StreamInfo) {}
}

/// What a viewer's RTCP says about a track we send it.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct Feedback {
    /// A PLI or FIR: the viewer wants a keyframe.
    pub keyframe: bool,
    /// Sequence numbers of our track the viewer reports lost (NACK), for a retransmission.
    pub nacks: Vec<u16>,
    /// The newest receiver report's fraction lost, in hundredths of a percent.
    pub loss_centi_percent: Option<i64>,
    /// Round trip from that report's LSR/DLSR (RFC 3550 §6.4.1), when it echoes a sender report of ours.
    pub rtt_ms: Option<i64>,
}

/// Reads a batch of RTCP for the track sent with `ssrc`; `now_ntp_mid` is the middle 32 bits of the NTP
/// time now (RFC 3550's compact form, 1/65536 s units), which the report's LSR and DLSR are in.
pub(crate) fn feedback(pkts: &[Box<dyn rtc::rtcp::Packet>], ssrc: u32, now_ntp_mid: u32) -> Feedback {
    let mut f = Feedback::default();
    for p in pkts {
        let a = p.as_any();
        if a.is::<PictureLossIndication>() || a.is::<FullIntraRequest>() {
            f.keyframe = true;
        } else if let Some(n) = a.downcast_ref::<TransportLayerNack>().filter(|n| n.media_ssrc == ssrc) {
            for pair in &n.nacks {
                f.nacks.extend(pair.packet_list());
            }
        } else if let Some(rr) = a.downcast_ref::<ReceiverReport>() {
            for r in rr.reports.iter().filter(|r| r.ssrc == ssrc) {
                f.loss_centi_percent = Some(i64::from(r.fraction_lost) * 10_000 / 256);
                if r.last_sender_report != 0 {
                    let units = now_ntp_mid.wrapping_sub(r.last_sender_report).wrapping_sub(r.delay);
                    // A clock step or a report from before a wrap reads as minutes: ignore it.
                    f.rtt_ms = (units < 60 << 16).then(|| i64::from(units) * 1000 / 65_536);
                }
            }
        }
    }
    f
}

/// The middle 32 bits of the NTP time now (seconds since 1900 in the high half, the fraction in the low).
pub(crate) fn ntp_mid_now() -> u32 {
    let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() + 2_208_988_800;
    let frac = (u64::from(d.subsec_nanos()) << 32) / 1_000_000_000;
    (((secs & 0xffff) << 16) | (frac >> 16)) as u32
}

/// A PeerConnection being set up, with the signals its session task waits on.
/// What a session does: its interceptors and media path differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PeerRole {
    Whep,
    Whip,
}

pub(crate) struct Peer {
    pc: Arc<dyn PeerConnection>,
    /// A WHEP viewer on the shared socket: the socket its media goes out of (`media_out`), and where its
    /// RTCP reader goes (`rtcp_in`).
    own_media: Option<std::io::Result<OwnMedia>>,
    /// Set when the session runs on the shared UDP port.
    mux: Option<Arc<udp_mux::MuxRuntime>>,
    gathered: watch::Receiver<bool>,
    state: watch::Receiver<RTCPeerConnectionState>,
}

/// What a WHEP viewer on the shared socket needs to do its media itself.
pub(crate) struct OwnMedia {
    pub socket: Arc<mux_socket::SharedSocket>,
    pub rtcp: udp_mux::RtcpSlot,
}

/// Builds ICE-lite PeerConnections bound to ports from the configured range (shared by WHEP and WHIP).
pub struct PeerFactory {
    cfg: WebrtcConfig,
    next_port: AtomicU16,
    /// The shared port, when `udp_mux_port` is set (or why it could not be bound).
    mux: Option<Result<Arc<udp_mux::UdpMux>, MuxBindError>>,
    /// The DTLS certificate of livegate's own WHEP sessions (`lite`), when they run.
    identity: Option<lite::Identity>,
}

/// Why the shared WebRTC port could not be bound at start-up: every session is refused with it.
#[derive(Debug, Clone, thiserror::Error)]
#[error("webrtc.udp_mux_port {addr}: {source}")]
pub struct MuxBindError {
    pub addr: std::net::SocketAddr,
    #[source]
    pub source: Arc<std::io::Error>,
}

impl PeerFactory {
    pub fn new(cfg: WebrtcConfig) -> Self {
        let start = cfg.udp_port_min;
        let mux = cfg.udp_mux.then(|| {
            let addr = std::net::SocketAddr::new(cfg.ice_ip, cfg.udp_mux_port);
            udp_mux::UdpMux::bind(addr).map_err(|e| {
                tracing::error!(%addr, error = %e, "cannot bind webrtc.udp_mux_port: WebRTC sessions will fail");
                MuxBindError { addr, source: Arc::new(e) }
            })
        });
        let identity = match (&mux, cfg.whep_engine) {
            (Some(Ok(_)), crate::config::WhepEngine::Livegate) => lite::Identity::generate()
                .inspect_err(
                    |e| tracing::error!(error = %e, "no DTLS certificate: WHEP viewers get webrtc-rs sessions"),
                )
                .ok(),
            _ => None,
        };
        Self { cfg, next_port: AtomicU16::new(start), mux, identity }
    }

    /// The shared port and DTLS identity for livegate's own WHEP sessions, when they run.
    pub(crate) fn lean(&self) -> Option<(&Arc<udp_mux::UdpMux>, &lite::Identity)> {
        match (&self.mux, &self.identity) {
            (Some(Ok(mux)), Some(id)) => Some((mux, id)),
            _ => None,
        }
    }

    /// The shared UDP socket's bind error, if it has one.
    pub fn mux_error(&self) -> Option<MuxBindError> {
        match &self.mux {
            Some(Err(e)) => Some(e.clone()),
            _ => None,
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

    /// `codecs` are registered in order (payload type, codec, kind); remote tracks and data channels go to
    /// `outputs`.
    async fn build(
        &self,
        codecs: &[(u8, RTCRtpCodec, RtpCodecKind)],
        outputs: PeerOutputs,
        role: PeerRole,
    ) -> Result<Peer, PeerError> {
        let (g_tx, g_rx) = watch::channel(false);
        let (s_tx, s_rx) = watch::channel(RTCPeerConnectionState::New);
        let handler =
            Arc::new(Handler { gathered: g_tx, state: s_tx, tracks: outputs.tracks, channels: outputs.channels });
        let mux = match &self.mux {
            Some(Ok(m)) => {
                let inbound = match role {
                    PeerRole::Whep => udp_mux::InboundMedia::Feedback,
                    PeerRole::Whip => udp_mux::InboundMedia::Media,
                };
                Some(udp_mux::MuxRuntime::new(m.clone(), inbound).map_err(PeerError::MuxRuntime)?)
            }
            Some(Err(e)) => return Err(PeerError::MuxBind(e.clone())),
            None => None,
        };
        // Ports in the range may be taken by other sessions or programs: try a few.
        let attempts = if self.cfg.udp_port_min == 0 || mux.is_some() { 1 } else { 16 };
        let mut last_err = String::new();
        for _ in 0..attempts {
            let mut me = MediaEngine::default();
            for (pt, codec, kind) in codecs {
                me.register_codec(RTCRtpCodecParameters { rtp_codec: codec.clone(), payload_type: *pt }, *kind)?;
            }
            // A WHEP viewer on the shared socket gets its media from `media_out`, which answers NACKs and sends
            // sender reports itself: webrtc-rs' interceptors would only add per-packet work (TWCC is for
            // receiving, which a viewer's session never does). The feedback the viewer may send is still
            // announced, or browsers send none.
            let own_media = role == PeerRole::Whep && mux.is_some();
            let registry = if own_media {
                for (typ, parameter) in [("nack", ""), ("nack", "pli"), ("ccm", "fir")] {
                    me.register_feedback(
                        RTCPFeedback { typ: typ.into(), parameter: parameter.into() },
                        RtpCodecKind::Video,
                    );
                }
                Registry::new().with(Slot::from(14_000), RtcpToApp::default())
            } else {
                register_default_interceptors(Registry::new(), &mut me)?.with(Slot::from(14_000), RtcpToApp::default())
            };
            let se = SettingEngineBuilder::new()
                .with_lite(true)
                .with_multicast_dns_mode(MulticastDnsMode::Disabled)
                .with_network_types(vec![NetworkType::Udp4, NetworkType::Udp6])
                .with_ice_timeouts(Some(ICE_DISCONNECTED_TIMEOUT), Some(Duration::from_secs(10)), None)
                .build();
            let mut builder = PeerConnectionBuilder::new();
            let addr = match &mux {
                Some(rt) => {
                    builder = builder.with_runtime(rt.clone());
                    if role == PeerRole::Whep {
                        // livegate sends this session's media itself: the application → driver queue
                        // carries a few control events, and its 256 preallocated slots were 61 KB of
                        // every viewer's memory (heaptrack's largest per-viewer item).
                        builder = builder.with_event_channel_capacity(16);
                        // Its driver (ICE, DTLS, RTCP in) runs on the mux's control lane, ahead of media.
                        builder = builder.with_dedicated_reactor_pool_size(1);
                    }
                    // Only lends its address to the session; the shared port carries the traffic.
                    format!("{}:0", self.cfg.ice_ip)
                }
                None => self.next_udp_addr(),
            };
            let r = builder
                .with_configuration(RTCConfigurationBuilder::new().build())
                .with_media_engine(me)
                .with_setting_engine(se)
                .with_interceptor_registry(registry)
                .with_handler(handler.clone())
                .with_data_channel_send_buffer_limit(DATA_CHANNEL_SEND_LIMIT)
                .with_udp_addrs(vec![addr])
                .build()
                .await;
            match r {
                Ok(pc) => {
                    let own_media = (role == PeerRole::Whep).then(|| mux.as_ref().map(|m| own_media_of(m))).flatten();
                    return Ok(Peer { pc: Arc::new(pc), mux, gathered: g_rx, state: s_rx, own_media });
                }
                Err(e) => last_err = e.to_string(),
            }
        }
        Err(PeerError::NoPort(last_err))
    }
}

fn own_media_of(mux: &udp_mux::MuxRuntime) -> std::io::Result<OwnMedia> {
    let socket = mux.shared_socket()?;
    let rtcp = mux.rtcp_slot().ok_or_else(|| std::io::Error::other("the session has no socket on the mux"))?;
    Ok(OwnMedia { socket, rtcp })
}

/// Why a session's PeerConnection could not be made.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("the shared WebRTC port: {0}")]
    MuxBind(MuxBindError),
    #[error("the shared WebRTC port's runtime: {0}")]
    MuxRuntime(std::io::Error),
    #[error("WebRTC: {0}")]
    WebRtc(#[from] webrtc::error::Error),
    #[error("no UDP port available: {0}")]
    NoPort(String),
}

/// What can go wrong answering an offer: the offer's fault, or ours.
enum AnswerError {
    BadOffer(String),
    Internal(String),
}

/// Applies the remote offer and returns the complete (non-trickle) answer. Closes the peer on failure.
async fn answer(peer: &mut Peer, offer: String) -> Result<String, AnswerError> {
    let pc = peer.pc.clone();
    let r = async {
        let offer = RTCSessionDescription::offer(offer).map_err(|e| AnswerError::BadOffer(e.to_string()))?;
        pc.set_remote_description(offer).await.map_err(|e| AnswerError::BadOffer(e.to_string()))?;
        let answer = pc.create_answer(None).await.map_err(|e| AnswerError::BadOffer(e.to_string()))?;
        pc.set_local_description(answer).await.map_err(|e| AnswerError::Internal(e.to_string()))?;
        // Gathering may complete inside set_local_description: the watch channel latches it.
        if tokio::time::timeout(Duration::from_secs(5), peer.gathered.wait_for(|g| *g)).await.is_err() {
            return Err(AnswerError::Internal("ICE gathering did not complete".into()));
        }
        let sdp = pc
            .local_description()
            .await
            .map(|d| d.sdp)
            .ok_or_else(|| AnswerError::Internal("no local description".into()))?;
        match &peer.mux {
            Some(rt) => rt.attach(&sdp).map_err(|e| AnswerError::Internal(e.to_string())),
            None => Ok(sdp),
        }
    }
    .await;
    if r.is_err() {
        let _ = pc.close().await;
    }
    r
}

/// True when the SDP has an accepted (non-zero port) m-line of this media kind.
pub(crate) fn has_active_media(sdp: &str, media: &str) -> bool {
    let prefix = format!("m={media} ");
    sdp.lines().any(|l| l.starts_with(&prefix) && !l.starts_with(&format!("{prefix}0 ")))
}

/// The RTP payload names (lowercase "h264/90000", "opus/48000/2", …) an offer lists.
pub(crate) fn offered_codecs(sdp: &str) -> Vec<String> {
    sdp.lines()
        .filter_map(|l| l.trim().strip_prefix("a=rtpmap:"))
        .filter_map(|l| l.split_once(' ').map(|(_, c)| c.to_ascii_lowercase()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtc::rtcp::reception_report::ReceptionReport;

    #[test]
    fn receiver_reports_give_loss_and_round_trip_for_our_track_only() {
        let ours = 0x1234;
        let now: u32 = 0x0005_8000; // 5.5 s in 1/65536 s units
        let rr = ReceiverReport {
            ssrc: 9,
            reports: vec![
                ReceptionReport { ssrc: 77, fraction_lost: 255, ..Default::default() },
                // 64/256 lost; our SR echoed 5.0 s, held 0.25 s by the viewer: 250 ms on the wire and back.
                ReceptionReport {
                    ssrc: ours,
                    fraction_lost: 64,
                    last_sender_report: 0x0005_0000,
                    delay: 0x0000_4000,
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let pkts: Vec<Box<dyn rtc::rtcp::Packet>> = vec![Box::new(rr)];
        let f = feedback(&pkts, ours, now);
        assert_eq!(f, Feedback { loss_centi_percent: Some(2500), rtt_ms: Some(250), ..Default::default() });
        let pli: Vec<Box<dyn rtc::rtcp::Packet>> =
            vec![Box::new(PictureLossIndication { sender_ssrc: 1, media_ssrc: ours })];
        assert_eq!(feedback(&pli, ours, now), Feedback { keyframe: true, ..Default::default() });
        // No sender report seen yet (LSR 0): no round trip.
        let rr = ReceiverReport {
            reports: vec![ReceptionReport { ssrc: ours, ..Default::default() }],
            ..Default::default()
        };
        let f = feedback(&[Box::new(rr) as Box<dyn rtc::rtcp::Packet>], ours, now);
        assert_eq!((f.loss_centi_percent, f.rtt_ms), (Some(0), None));
    }

    #[test]
    fn nacks_name_the_lost_sequence_numbers_of_our_track_only() {
        use rtc::rtcp::transport_feedbacks::transport_layer_nack::NackPair;
        let ours = 0x1234;
        let nack = |media_ssrc| TransportLayerNack {
            sender_ssrc: 1,
            media_ssrc,
            // 65535 lost, and of the 16 after it the 1st and 3rd (0 and 2, across the wrap).
            nacks: vec![NackPair { packet_id: 65_535, lost_packets: 0b101 }],
        };
        let pkts: Vec<Box<dyn rtc::rtcp::Packet>> = vec![Box::new(nack(ours)), Box::new(nack(77))];
        assert_eq!(feedback(&pkts, ours, 0).nacks, vec![65_535, 0, 2]);
        assert!(feedback(&pkts[1..], ours, 0).nacks.is_empty());
    }
}
