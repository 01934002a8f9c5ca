//! WHEP viewers (`--proto whep`): each is a webrtc-rs PeerConnection on the *offering* side, as a browser is:
//! recvonly video (H.264 packetization-mode 1, profile 42e01f) and, with `--whep-audio`, recvonly Opus; it
//! waits for ICE gathering (non-trickle), POSTs the offer to `/whep/live/NAME`, applies the answer and reads
//! the RTP of the remote tracks (not decoded: it notes each video frame's first packet and counts the rest).
//!
//! Added latency RTMP→WHEP = instant the first RTP packet of a video frame reached the viewer - instant the
//! publisher sent that frame over RTMP. livegate stamps RTP timestamp = pts x 90 + a random base per session,
//! and the viewer does not know the base. Frames 33/34 ms apart would match at many bases (any shift by whole
//! frames), so with `--proto whep` the publisher adds a pseudo-random 0/1 ms code to each video frame's
//! timestamp (`input::ts_code`): the pattern of intervals then fits the sent frames at one base only. See
//! `learn_base`: it pairs the viewer's first frame with each frame sent in the 10 s before it arrived
//! (a frame cannot arrive before it was sent), counts how many of the viewer's first frames land exactly on a
//! sent pts at that base, and keeps the best base if it fits nearly all of them and no other base comes close
//! (a wrong base fits about half of them by chance).
//! This works the same when the video is transcoded (B-frame source): the transcoder keeps pts.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use rtc::ice::mdns::MulticastDnsMode;
use rtc::ice::network_type::NetworkType;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtp_transceiver::rtp_sender::{RTCRtpCodecParameters, RtpCodecKind};
use rtc::rtp_transceiver::{RTCRtpTransceiverDirection, RTCRtpTransceiverInit};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{
    register_default_interceptors, MediaEngine, PeerConnection, PeerConnectionBuilder, RTCConfigurationBuilder,
    RTCPeerConnectionState, RTCSessionDescription, Registry, SettingEngineBuilder,
};

use crate::now_ns;
use crate::reader::{Dechunker, Outcome, ReaderCfg, ACTIVE, KEYED, KEYFRAMES_RX, PLIS_SENT, WIRE_BYTES};
use livegate::webrtc::{h264_codec, opus_codec, Handler};

/// What one WHEP viewer saw.
/// Why viewers that had media lost their connection: ICE Disconnected, Failed, the connection Closed, the
/// video track ended (in that order).
pub static ENDED_BY: [std::sync::atomic::AtomicUsize; 4] = [const { std::sync::atomic::AtomicUsize::new(0) }; 4];

pub struct WhepResult {
    pub start_ns: u64,
    pub end_ns: u64,
    /// POST sent -> 201 answer read.
    pub answer_ns: Option<u64>,
    /// The first RTP packet (video or audio).
    pub first_rtp_ns: Option<u64>,
    /// (RTP timestamp, arrival of its first packet) of every video frame, in arrival order.
    pub frames: Vec<(u32, u64)>,
    pub video_packets: u64,
    /// Video RTP payload bytes (compared with the video bytes the publisher sent meanwhile).
    pub video_bytes: u64,
    /// RTP payload + 12-byte header, video and audio.
    pub wire_bytes: u64,
    pub audio_packets: u64,
    /// The answer accepted an audio m-line.
    pub audio_negotiated: bool,
    /// Video packets missing by sequence number (gaps), and packets older than the newest seen.
    pub lost: u64,
    pub reordered: u64,
    pub outcome: Outcome,
}

pub async fn run(cfg: &ReaderCfg) -> WhepResult {
    ACTIVE.fetch_add(1, Ordering::Relaxed);
    let mut r = WhepResult {
        start_ns: now_ns(),
        end_ns: 0,
        answer_ns: None,
        first_rtp_ns: None,
        frames: Vec::with_capacity(cfg.sample_cap),
        video_packets: 0,
        video_bytes: 0,
        wire_bytes: 0,
        audio_packets: 0,
        audio_negotiated: false,
        lost: 0,
        reordered: 0,
        outcome: Outcome::Ran,
    };
    let res = session(cfg, &mut r).await;
    r.outcome = match res {
        Ok(o) => o,
        Err(e) => Outcome::Error(format!("{e:#}")),
    };
    r.end_ns = now_ns();
    ACTIVE.fetch_sub(1, Ordering::Relaxed);
    r
}

async fn session(cfg: &ReaderCfg, r: &mut WhepResult) -> Result<Outcome> {
    let (g_tx, mut g_rx) = watch::channel(false);
    let (s_tx, mut s_rx) = watch::channel(RTCPeerConnectionState::New);
    let (t_tx, mut t_rx) = mpsc::unbounded_channel();
    let mut me = MediaEngine::default();
    me.register_codec(RTCRtpCodecParameters { rtp_codec: h264_codec(), payload_type: 102 }, RtpCodecKind::Video)?;
    if cfg.whep_audio {
        me.register_codec(RTCRtpCodecParameters { rtp_codec: opus_codec(), payload_type: 111 }, RtpCodecKind::Audio)?;
    }
    // NACK, receiver reports and TWCC feedback, as a browser sends them.
    let registry = register_default_interceptors(Registry::new(), &mut me)?;
    let se = SettingEngineBuilder::new()
        .with_multicast_dns_mode(MulticastDnsMode::Disabled)
        .with_network_types(vec![NetworkType::Udp4])
        .build();
    let pc = PeerConnectionBuilder::new()
        .with_configuration(RTCConfigurationBuilder::new().build())
        .with_media_engine(me)
        .with_setting_engine(se)
        .with_interceptor_registry(registry)
        .with_handler(Arc::new(Handler { gathered: g_tx, state: s_tx, tracks: Some(t_tx), channels: None }))
        .with_udp_addrs(vec!["127.0.0.1:0".to_owned()])
        .build()
        .await
        .context("building the PeerConnection")?;
    let pc: Arc<dyn PeerConnection> = Arc::new(pc);
    let res = play(cfg, r, &pc, &mut g_rx, &mut s_rx, &mut t_rx).await;
    let _ = pc.close().await;
    res
}

async fn play(
    cfg: &ReaderCfg,
    r: &mut WhepResult,
    pc: &Arc<dyn PeerConnection>,
    gathered: &mut watch::Receiver<bool>,
    state: &mut watch::Receiver<RTCPeerConnectionState>,
    tracks: &mut mpsc::UnboundedReceiver<Arc<dyn TrackRemote>>,
) -> Result<Outcome> {
    let recvonly =
        || Some(RTCRtpTransceiverInit { direction: RTCRtpTransceiverDirection::Recvonly, ..Default::default() });
    pc.add_transceiver_from_kind(RtpCodecKind::Video, recvonly()).await?;
    if cfg.whep_audio {
        pc.add_transceiver_from_kind(RtpCodecKind::Audio, recvonly()).await?;
    }
    let answer = before_stop(cfg, async {
        let offer = pc.create_offer(None).await?;
        pc.set_local_description(offer).await?;
        tokio::time::timeout(Duration::from_secs(5), gathered.wait_for(|g| *g))
            .await
            .map_err(|_| anyhow!("ICE gathering did not complete within 5 s"))??;
        let offer = pc.local_description().await.ok_or_else(|| anyhow!("no local description"))?.sdp;
        let t = now_ns();
        let answer = post_offer(cfg.http, &format!("/whep/live/{}{}", cfg.stream, cfg.query), &offer).await?;
        r.answer_ns = Some(now_ns() - t);
        Ok(answer)
    })
    .await?;
    r.audio_negotiated = answer.lines().any(|l| l.starts_with("m=audio ") && !l.starts_with("m=audio 0 "));
    pc.set_remote_description(RTCSessionDescription::answer(answer)?).await.context("applying the answer")?;

    let stop = tokio::time::sleep_until(cfg.stop_at);
    tokio::pin!(stop);
    let mut video: Option<Arc<dyn TrackRemote>> = None;
    let mut audio: Option<Arc<dyn TrackRemote>> = None;
    let mut last_ts: Option<u32> = None;
    let mut next_seq: Option<u16> = None;
    let mut last_key_ts: Option<u32> = None;
    let mut pli = tokio::time::interval(Duration::from_millis(cfg.whep_pli_ms.max(1)));
    pli.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // A track that is not there yet (or ended) never yields.
    async fn next(t: &Option<Arc<dyn TrackRemote>>) -> Option<TrackRemoteEvent> {
        match t {
            Some(t) => t.poll().await,
            None => std::future::pending().await,
        }
    }
    loop {
        tokio::select! {
            biased;
            _ = &mut stop => return Ok(Outcome::Ran),
            t = tracks.recv() => {
                let Some(t) = t else { continue };
                match t.kind().await {
                    RtpCodecKind::Video => video = Some(t),
                    _ => audio = Some(t),
                }
            }
            ev = next(&video) => match ev {
                Some(TrackRemoteEvent::OnRtpPacket(p)) => {
                    let now = now_ns();
                    if r.first_rtp_ns.is_none() {
                        r.first_rtp_ns = Some(now);
                    }
                    // The progress line's count of viewers with video: once per viewer, whether its audio or
                    // its video came first (it counted only viewers whose first packet was video).
                    if r.video_packets == 0 {
                        KEYED.fetch_add(1, Ordering::Relaxed);
                    }
                    let n = p.payload.len() as u64 + 12;
                    r.wire_bytes += n;
                    WIRE_BYTES.fetch_add(n, Ordering::Relaxed);
                    r.video_packets += 1;
                    r.video_bytes += p.payload.len() as u64;
                    let seq = p.header.sequence_number;
                    if let Some(want) = next_seq {
                        let ahead = seq.wrapping_sub(want);
                        if ahead >= 0x8000 {
                            r.reordered += 1;
                            continue;
                        }
                        r.lost += ahead as u64;
                    }
                    next_seq = Some(seq.wrapping_add(1));
                    // One count per access unit: parameter sets and the IDR itself come in separate packets.
                    if starts_idr(&p.payload) && last_key_ts != Some(p.header.timestamp) {
                        last_key_ts = Some(p.header.timestamp);
                        KEYFRAMES_RX.fetch_add(1, Ordering::Relaxed);
                    }
                    let ts = p.header.timestamp;
                    if last_ts != Some(ts) {
                        last_ts = Some(ts);
                        if r.frames.len() < r.frames.capacity() {
                            r.frames.push((ts, now));
                        }
                    }
                }
                Some(TrackRemoteEvent::OnEnded) | None => {
                    ENDED_BY[3].fetch_add(1, Ordering::Relaxed);
                    return Ok(Outcome::Closed);
                }
                Some(_) => {}
            },
            ev = next(&audio) => match ev {
                Some(TrackRemoteEvent::OnRtpPacket(p)) => {
                    if r.first_rtp_ns.is_none() {
                        r.first_rtp_ns = Some(now_ns());
                    }
                    let n = p.payload.len() as u64 + 12;
                    r.wire_bytes += n;
                    WIRE_BYTES.fetch_add(n, Ordering::Relaxed);
                    r.audio_packets += 1;
                }
                Some(TrackRemoteEvent::OnEnded) | None => audio = None,
                Some(_) => {}
            },
            _ = pli.tick(), if cfg.whep_pli_ms > 0 && r.first_rtp_ns.is_some() => {
                if let (Some(t), Some(ssrc)) = (&video, video_ssrc(&video).await) {
                    let pli = PictureLossIndication { sender_ssrc: 0, media_ssrc: ssrc };
                    if t.write_rtcp(vec![Box::new(pli)]).await.is_ok() {
                        PLIS_SENT.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            c = state.changed() => {
                let s = *state.borrow();
                if c.is_err() {
                    return Ok(Outcome::Closed);
                }
                if matches!(s, RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed | RTCPeerConnectionState::Disconnected) {
                    if r.first_rtp_ns.is_some() {
                        let i = match s {
                            RTCPeerConnectionState::Disconnected => 0,
                            RTCPeerConnectionState::Failed => 1,
                            _ => 2,
                        };
                        ENDED_BY[i].fetch_add(1, Ordering::Relaxed);
                    }
                    return if r.first_rtp_ns.is_some() { Ok(Outcome::Closed) } else { bail!("peer connection {s:?} before any RTP") };
                }
            }
        }
    }
}

/// Runs `fut` (session setup) unless the run ends first.
async fn before_stop<T>(cfg: &ReaderCfg, fut: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    match tokio::time::timeout_at(cfg.stop_at, fut).await {
        Ok(r) => r,
        Err(_) => bail!("setup not finished when the run ended"),
    }
}

/// `POST path` with the SDP offer; returns the answer of a 201.
async fn post_offer(http: SocketAddr, path: &str, offer: &str) -> Result<String> {
    let mut sock = TcpStream::connect(http).await.with_context(|| format!("connect {http}"))?;
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: {http}\r\nUser-Agent: livegate-load\r\nContent-Type: application/sdp\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{offer}",
        offer.len()
    );
    sock.write_all(req.as_bytes()).await?;
    let mut resp = Vec::new();
    sock.read_to_end(&mut resp).await.context("reading the WHEP answer")?;
    let end = resp.windows(4).position(|w| w == b"\r\n\r\n").ok_or_else(|| anyhow!("no HTTP header end"))?;
    let head = String::from_utf8_lossy(&resp[..end]).to_ascii_lowercase();
    let body = &resp[end + 4..];
    let status = head.lines().next().unwrap_or("");
    if status.split_whitespace().nth(1) != Some("201") {
        bail!("WHEP POST: {} {}", status.trim(), String::from_utf8_lossy(body).chars().take(200).collect::<String>());
    }
    let chunked = head.lines().any(|l| l.starts_with("transfer-encoding") && l.contains("chunked"));
    let body = if chunked {
        let mut out = Vec::new();
        Dechunker::default().feed(body, |p| out.extend_from_slice(p)).map_err(|e| anyhow!("chunked answer: {e}"))?;
        out
    } else {
        body.to_vec()
    };
    String::from_utf8(body).context("answer is not UTF-8")
}

/// A viewer's RTP timestamp base, as `learn_base` found it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Base {
    pub base: u32,
    /// Probe frames that fit a sent pts at this base, out of `probe`.
    pub fit: usize,
    pub probe: usize,
    /// The best fit of any other base.
    pub runner_up: usize,
}

/// Frames `learn_base` checks a candidate base against.
const PROBE: usize = 90;
/// How far before the first frame's arrival its send instant may lie (GOP cache depth, with slack).
const LOOKBACK_NS: u64 = 10_000_000_000;

/// Finds the base of a viewer's RTP timestamps (RTP ts = base + pts x 90, wrapping). `sent` maps each video
/// pts the publisher sent to its send instant, `sent_order` lists (send instant, pts) sorted by send instant,
/// `frames` are the viewer's (RTP timestamp, arrival) in arrival order. Returns None when no base fits at least
/// 90 % of the probe frames, or when another base fits more than 80 % as many (ambiguous: timestamps without
/// the 0/1 ms code). With the code, a base off by whole frames fits about half of the frames by chance (two
/// frames' codes agree half the time), far below the true base's 100 %.
pub fn learn_base(sent: &HashMap<u32, u64>, sent_order: &[(u64, u32)], frames: &[(u32, u64)]) -> Option<Base> {
    let probe = &frames[..frames.len().min(PROBE)];
    let &(ts0, at0) = probe.first()?;
    // Candidates: frames sent before the first frame arrived, newest first, within the lookback.
    let hi = sent_order.partition_point(|&(at, _)| at <= at0);
    let lo = sent_order.partition_point(|&(at, _)| at + LOOKBACK_NS < at0);
    let fits = |base: u32| {
        probe
            .iter()
            .filter(|&&(ts, _)| {
                let d = ts.wrapping_sub(base);
                d % 90 == 0 && sent.contains_key(&(d / 90))
            })
            .count()
    };
    let (mut best, mut best_fit, mut runner_up) = (0u32, 0usize, 0usize);
    for &(_, pts) in sent_order[lo..hi].iter().rev() {
        let base = ts0.wrapping_sub(pts.wrapping_mul(90));
        if base == best && best_fit > 0 {
            continue;
        }
        let f = fits(base);
        if f > best_fit {
            runner_up = best_fit;
            best = base;
            best_fit = f;
        } else if f > runner_up {
            runner_up = f;
        }
    }
    (best_fit * 10 >= probe.len() * 9 && runner_up * 10 <= best_fit * 8).then_some(Base {
        base: best,
        fit: best_fit,
        probe: probe.len(),
        runner_up,
    })
}

/// Where each of a viewer's frames went, once its base is known.
#[derive(Default, Debug, Clone, Copy, PartialEq, Eq)]
pub struct Matched {
    /// Frames sent before the viewer's first RTP packet (the GOP-cache burst at join): not latency samples.
    pub burst: u64,
    /// Frames whose pts is not among the sent ones.
    pub unmatched: u64,
    /// Arrived before they were sent (a wrong base; should stay 0).
    pub negative: u64,
}

/// Appends the added latency (arrival - send, ns) of every frame sent after `first_rtp_ns` to `lat`.
pub fn latencies(
    sent: &HashMap<u32, u64>,
    base: u32,
    frames: &[(u32, u64)],
    first_rtp_ns: u64,
    lat: &mut Vec<u64>,
) -> Matched {
    let mut m = Matched::default();
    for &(ts, at) in frames {
        let d = ts.wrapping_sub(base);
        let Some(&sent_at) = (d % 90 == 0).then(|| sent.get(&(d / 90))).flatten() else {
            m.unmatched += 1;
            continue;
        };
        if sent_at < first_rtp_ns {
            m.burst += 1;
        } else if at < sent_at {
            m.negative += 1;
        } else {
            lat.push(at - sent_at);
        }
    }
    m
}

/// The SSRC of the viewer's video track, once it has one.
async fn video_ssrc(t: &Option<Arc<dyn TrackRemote>>) -> Option<u32> {
    t.as_ref()?.ssrcs().await.first().copied()
}

/// Whether an H.264 RTP payload starts an IDR access unit (a single IDR NAL, the first FU-A fragment of one,
/// or a STAP-A carrying parameter sets, which livegate sends right before each IDR).
fn starts_idr(p: &[u8]) -> bool {
    match p.first().map(|b| b & 0x1F) {
        Some(5) => true,
        Some(24) => p.get(3).is_some_and(|b| b & 0x1F == 7),
        Some(28) => p.get(1).is_some_and(|b| b & 0x80 != 0 && b & 0x1F == 5),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::input::ts_code;

    /// A publisher's video at 30 fps (timestamps 0, 33, 67, 100, ... + `code`), one frame every 33.3 ms.
    fn sent(n: u64, coded: bool) -> (HashMap<u32, u64>, Vec<(u64, u32)>) {
        let order: Vec<(u64, u32)> = (0..n)
            .map(|i| {
                let pts = (i * 1000 / 30) as u32 + if coded { ts_code(i) } else { 0 };
                (1_000_000_000 + i * 1_000_000_000 / 30, pts)
            })
            .collect();
        (order.iter().map(|&(at, pts)| (pts, at)).collect(), order)
    }

    /// A viewer that joins at frame `join`, gets a burst of `burst` cached frames at once, then every frame
    /// `lat_ns` after it was sent, with RTP timestamps from a random-looking base.
    fn viewer(order: &[(u64, u32)], join: usize, burst: usize, lat_ns: u64, base: u32) -> Vec<(u32, u64)> {
        let t_join = order[join + burst].0 + 5_000_000;
        order[join..]
            .iter()
            .enumerate()
            .map(|(k, &(at, pts))| {
                let arr = if k < burst { t_join + k as u64 * 10_000 } else { at + lat_ns };
                (base.wrapping_add(pts.wrapping_mul(90)), arr)
            })
            .collect()
    }

    #[test]
    fn coded_timestamps_give_the_base_and_the_latency() {
        let (sent, order) = sent(3000, true);
        // Latency of 2.5 frame intervals: a nearest-frame guess would be off by whole frames.
        for (join, burst, lat_ms, base) in [(600, 45, 83, 0xDEAD_BEEF), (61, 0, 5, 7), (1200, 59, 250, u32::MAX - 3)] {
            let frames = viewer(&order, join, burst, lat_ms * 1_000_000, base);
            let b = learn_base(&sent, &order, &frames).expect("a base");
            assert_eq!(b.base, base);
            assert_eq!((b.fit, b.probe), (PROBE, PROBE));
            assert!(b.runner_up * 10 <= b.fit * 8, "{b:?}");
            let first = frames[0].1;
            let mut lat = Vec::new();
            let m = latencies(&sent, b.base, &frames, first, &mut lat);
            assert_eq!(m.negative, 0);
            assert_eq!(m.unmatched, 0);
            assert!(lat.iter().all(|&l| l == lat_ms * 1_000_000), "join {join}");
            assert_eq!(m.burst as usize + lat.len(), frames.len());
        }
    }

    #[test]
    fn plain_30fps_timestamps_are_ambiguous_and_refused() {
        // Without the code the 33/33/34 ms pattern repeats every 3 frames: many bases fit every frame.
        let (sent, order) = sent(3000, false);
        let frames = viewer(&order, 600, 30, 60_000_000, 12345);
        assert_eq!(learn_base(&sent, &order, &frames), None);
    }

    #[test]
    fn frames_the_publisher_never_sent_do_not_fit() {
        let (sent, order) = sent(600, true);
        let mut frames = viewer(&order, 100, 10, 20_000_000, 99);
        // Re-stamp every other frame by a third of a millisecond (as a sender that does not keep pts would):
        // no base fits 90 % of the frames.
        for f in frames.iter_mut().skip(1).step_by(2) {
            f.0 = f.0.wrapping_add(30);
        }
        assert_eq!(learn_base(&sent, &order, &frames), None);
    }
}
