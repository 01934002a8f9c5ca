//! WHEP viewers parked for their stream's fan-out: the same discipline as HTTP-FLV's (`hub::fanout`).
//!
//! A viewer's task sends the join burst and any backlog itself, through its hub reader. Once it has caught up
//! with live it *parks*: from then on the stream's flusher, at every video frame, protects the new packets for
//! every parked viewer (each with its own SRTP context, over the stream's shared RTP payloads) and sends all of
//! them in `sendmmsg` calls of up to 64 datagrams, whoever they are for. No viewer task wakes per frame.
//!
//! A viewer whose packets have left the ring by the time it is flushed, or whose backlog spans more media time
//! than its max_cache (the machine fell behind: UDP never pushes back), is handed back to its task, whose
//! reader applies the cache policy and skips to a newer keyframe. A viewer whose datagrams the socket refuses stays parked and skips to the
//! next keyframe. Which side touches a viewer's RTP state is decided by its mutex: NACK retransmissions, the
//! flusher and the task each take it for one synchronous send.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use parking_lot::Mutex;
use rtc::rtp::codec::h264::H264Payloader;
use rtc::rtp::codec::vp8::Vp8Payloader;
use rtc::rtp::packetizer::Payloader;
use tokio::sync::Notify;

use super::admission::Admission;
use super::media_out::{Datagrams, MediaOutError, TrackOut};
use super::mux_socket::SharedSocket;
use super::{udp_batch, MTU};
use crate::hub::fanout::{Handback, ParkState};
use crate::hub::{ClientHandle, Packet, ParkedGroup, Protocol, Stream};
use crate::media::avc::{self, AvcDecoderConfig};
use crate::media::{Codec, MediaKind};
use crate::metrics;

/// What a viewer's track carries, and what it needs to turn hub packets into RTP.
#[derive(Debug)]
pub enum Media {
    /// H.264 passed through (the decoder configuration comes in the stream) or VP8 (a transcode).
    Video { vp8: bool, cfg: Option<AvcDecoderConfig>, ts_base: u32 },
    /// Opus, from the stream's Opus rendition.
    Audio { ts_base: u32 },
}

struct State {
    out: TrackOut,
    media: Media,
    /// The socket refused datagrams: video waits for a keyframe instead of showing damage.
    skipping: bool,
    /// Parked or not, where, and what was handed back: the same as the hub's players.
    park: ParkState,
    /// Reused per send by the task and the NACK path (the flusher has one buffer for the whole group).
    scratch: Datagrams,
}

/// Hub packets (frames) a viewer's task protects and sends at a time.
const DELIVER_FRAMES: usize = 4;

/// The largest send buffer a viewer keeps between sends: room for a NACK answer of a few datagrams, which is
/// all a parked viewer's task sends (the flusher has the group's buffer). A bigger one, grown by a join burst,
/// is freed: at 16 KiB it was ~10 KB of every viewer's memory (heaptrack, 100 viewers).
const SCRATCH_KEEP_BYTES: usize = 4 * 1024;

/// One track of one viewer on the direct path.
pub struct Member {
    state: Mutex<State>,
    socket: Arc<SharedSocket>,
    /// The selected ICE pair's remote address; it moves if the viewer nominates another pair.
    peer: Mutex<SocketAddr>,
    client: Arc<ClientHandle>,
    /// Its reader's max_cache: a flush that finds it further behind than this hands it back (see `flush`).
    max_behind_ms: i64,
    /// Told how long a flush's packets waited: new viewers are refused while the machine is behind.
    admission: Arc<Admission>,
    pos_hint: AtomicU64,
    gone: AtomicBool,
    wake: Notify,
}

impl std::fmt::Debug for Member {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Member")
            .field("peer", &*self.peer.lock())
            .field("client", &self.client.id)
            .finish_non_exhaustive()
    }
}

impl Member {
    pub fn new(
        socket: Arc<SharedSocket>,
        peer: SocketAddr,
        out: TrackOut,
        media: Media,
        client: Arc<ClientHandle>,
        max_behind: Duration,
        admission: Arc<Admission>,
    ) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(State {
                out,
                media,
                skipping: false,
                park: ParkState::default(),
                scratch: Datagrams::default(),
            }),
            socket,
            peer: Mutex::new(peer),
            client,
            max_behind_ms: i64::try_from(max_behind.as_millis()).unwrap_or(i64::MAX),
            admission,
            pos_hint: AtomicU64::new(0),
            gone: AtomicBool::new(false),
            wake: Notify::new(),
        })
    }

    /// Sends `packets` now (the task's path, before parking); the RTP bytes sent.
    pub fn deliver(&self, packets: &[Arc<Packet>]) -> Result<usize, MediaOutError> {
        let mut bytes = 0;
        // A few frames per send: a join burst (a GOP) protected in one go would grow the viewer's buffer to
        // hundreds of kilobytes, for every viewer that joins at once.
        for chunk in packets.chunks(DELIVER_FRAMES) {
            bytes += self.send_now(|st, d| {
                let now = Instant::now();
                let mut bytes = 0;
                for p in chunk {
                    bytes += st.queue(p, now, d)?;
                }
                st.out.report_if_due(now, SystemTime::now(), d)?;
                Ok(bytes)
            })?;
        }
        Ok(bytes)
    }

    /// Answers a NACK from the history; how many packets went again.
    pub fn resend(&self, seqs: &[u16]) -> Result<usize, MediaOutError> {
        self.send_now(|st, d| st.out.resend(seqs, d))
    }

    /// Sends what `fill` queues, under the state's lock (one synchronous send: the flusher waits at most that).
    fn send_now(
        &self,
        fill: impl FnOnce(&mut State, &mut Datagrams) -> Result<usize, MediaOutError>,
    ) -> Result<usize, MediaOutError> {
        let mut st = self.state.lock();
        let st = &mut *st;
        let mut d = std::mem::take(&mut st.scratch);
        let r = fill(st, &mut d);
        if !d.is_empty() {
            let sent = udp_batch::send(&self.socket, *self.peer.lock(), &d);
            if sent.dropped > 0 {
                self.refused(st, sent.dropped);
            }
        }
        d.clear();
        // Kept for the next send unless a keyframe grew it: a parked viewer's task sends little (NACK answers).
        if d.buf.capacity() <= SCRATCH_KEEP_BYTES {
            st.scratch = d;
        }
        r
    }

    /// Sends to `peer` from now on (the viewer's ICE agent nominated another candidate pair).
    pub fn set_peer(&self, peer: SocketAddr) {
        let mut p = self.peer.lock();
        if *p != peer {
            tracing::info!(client = self.client.id, from = %*p, to = %peer, "WebRTC viewer moved to another path");
            *p = peer;
        }
    }

    fn refused(&self, st: &mut State, n: usize) {
        self.client.player.dropped_packets.fetch_add(n as u64, Ordering::Relaxed);
        metrics::global().whep_datagrams_refused.fetch_add(n as u64, Ordering::Relaxed);
        if matches!(st.media, Media::Video { .. }) && !std::mem::replace(&mut st.skipping, true) {
            self.client.player.skips.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(
                client = self.client.id,
                dropped = n,
                "socket buffer full: the viewer skips to the next keyframe"
            );
        }
    }

    /// Hands the viewer to `stream`'s fan-out: the next flushes send it everything from `pos` on.
    pub fn park(self: &Arc<Self>, stream: &Stream, group: &Group, pos: u64) {
        let join = {
            let mut st = self.state.lock();
            self.pos_hint.store(pos, Ordering::Relaxed);
            st.park.park(Protocol::Whep, pos)
        };
        if join {
            group.members.lock().push(self.clone());
        }
        // A stream that closed meanwhile flushes nothing more: hand the viewer back so its reader ends it.
        if stream.is_closed() {
            group.release(stream);
        }
    }

    /// Takes the viewer back; `None` if it was not parked and nothing was handed back.
    pub fn unpark(&self) -> Option<Handback> {
        self.state.lock().park.unpark(Protocol::Whep)
    }

    /// Resolves when the fan-out has handed the viewer back (or may have: call [`unpark`](Self::unpark)).
    pub async fn handed_back(&self) {
        self.wake.notified().await
    }

    /// The viewer is leaving: out of the group now.
    pub fn leave(self: &Arc<Self>, group: &Group) {
        self.gone.store(true, Ordering::Release);
        self.unpark();
        group.members.lock().retain(|m| !Arc::ptr_eq(m, self));
        self.state.lock().park.in_group = false;
    }

    fn give_back(&self, st: &mut State) {
        let hb = st.park.here();
        st.park.give_back(Protocol::Whep, hb);
        self.wake.notify_one();
    }
}

impl State {
    /// Queues one hub packet as protected RTP; the RTP bytes (payloads and headers).
    fn queue(&mut self, p: &Packet, now: Instant, out: &mut Datagrams) -> Result<usize, MediaOutError> {
        let f = &p.frame;
        match &mut self.media {
            Media::Audio { ts_base } => {
                if f.kind != MediaKind::Audio || f.config {
                    return Ok(0);
                }
                let ts = ts_base.wrapping_add((f.dts as u32).wrapping_mul(48));
                self.out.push(&f.payload, ts, false, now, out)?;
                Ok(f.payload.len() + 12)
            }
            Media::Video { vp8, cfg, ts_base } => {
                if f.kind != MediaKind::Video {
                    return Ok(0);
                }
                if f.config {
                    *cfg = AvcDecoderConfig::parse(&f.payload).ok();
                    return Ok(0);
                }
                if self.skipping {
                    if !f.keyframe {
                        return Ok(0);
                    }
                    self.skipping = false;
                }
                let parts = match (*vp8, f.codec) {
                    (true, Codec::Vp8) => p.rtp_payloads(vp8_payloads),
                    (false, Codec::H264) => match cfg.as_ref() {
                        Some(c) => p.rtp_payloads(|f| h264_payloads(f, c)),
                        None => return Ok(0),
                    },
                    _ => return Ok(0),
                };
                let ts = ts_base.wrapping_add((f.pts() as u32).wrapping_mul(90));
                let last = parts.len().saturating_sub(1);
                let mut bytes = 0;
                for (i, payload) in parts.iter().enumerate() {
                    self.out.push(payload, ts, i == last, now, out)?;
                    bytes += payload.len() + 12;
                }
                Ok(bytes)
            }
        }
    }
}

/// The parked WHEP viewers of one stream.
#[derive(Default)]
pub struct Group {
    members: Mutex<Vec<Arc<Member>>>,
    /// A flush's buffers, kept at their size from one flush to the next (a keyframe for 250 viewers is
    /// megabytes of datagrams: grown afresh each time, it was reallocated and copied a dozen times).
    scratch: Mutex<Scratch>,
}

#[derive(Default)]
struct Scratch {
    all: Datagrams,
    owners: Vec<usize>,
    peers: Vec<socket2::SockAddr>,
    packets: Vec<Arc<Packet>>,
}

impl Group {
    /// `stream`'s group (made on first use); `None` if another layer parks players there.
    pub fn of(stream: &Stream) -> Option<Arc<Group>> {
        stream.parked_group(|| Arc::new(Group::default()))
    }
}

impl ParkedGroup for Group {
    fn flush(&self, stream: &Stream) {
        let mut members = std::mem::take(&mut *self.members.lock());
        let Some(start) = members.iter().map(|m| m.pos_hint.load(Ordering::Relaxed)).min() else { return };
        let mut scratch = self.scratch.lock();
        let Scratch { all, owners, peers, packets } = &mut *scratch;
        all.clear();
        owners.clear();
        peers.clear();
        packets.clear();
        let (start, end, headers) = stream.packets_since(start, packets);
        let socket = members[0].socket.clone();
        let now = Instant::now();
        let wall = SystemTime::now();
        let mut keep: Vec<Arc<Member>> = Vec::with_capacity(members.len());
        let mut total = 0u64;
        for m in members.drain(..) {
            let mut st = m.state.lock();
            if !st.park.parked {
                st.park.in_group = false;
                continue;
            }
            if st.park.pos >= end {
                drop(st);
                peers.push(socket2::SockAddr::from(*m.peer.lock()));
                keep.push(m);
                continue;
            }
            let backlog = &packets[st.park.pos.saturating_sub(start) as usize..];
            let behind = behind_ms(backlog);
            m.admission.flushed(waited(backlog, now), now);
            if st.park.pos < start || behind > m.max_behind_ms {
                // Its packets left the ring, or the machine fell behind (a flush late by more than the viewer's
                // max_cache: UDP never pushes back, so this is where a backlog shows): its reader takes over
                // and skips to a newer keyframe by the cache policy, instead of the viewer getting it all late.
                m.client.player.stalls.fetch_add(1, Ordering::Relaxed);
                m.give_back(&mut st);
                continue;
            }
            let before = all.len();
            let mut bytes = 0;
            let mut failed = None;
            for p in backlog {
                match st.queue(p, now, all) {
                    Ok(n) => bytes += n,
                    Err(e) => failed = Some(e),
                }
            }
            if let Err(e) = st.out.report_if_due(now, wall, all) {
                failed = Some(e);
            }
            if let Some(e) = failed {
                tracing::debug!(client = m.client.id, error = %e, "WHEP media not protected");
            }
            st.park.pos = end;
            st.park.headers = Some(headers.clone());
            m.pos_hint.store(end, Ordering::Relaxed);
            drop(st);
            m.client.bytes_out.fetch_add(bytes as u64, Ordering::Relaxed);
            total += bytes as u64;
            if all.len() > before {
                owners.extend(std::iter::repeat_n(keep.len(), all.len() - before));
            }
            peers.push(socket2::SockAddr::from(*m.peer.lock()));
            keep.push(m);
            if all.buf.len() >= SEND_AT_BYTES {
                send_batch(&socket, all, peers, owners, &keep);
            }
        }
        send_batch(&socket, all, peers, owners, &keep);
        packets.clear();
        drop(scratch);
        if total > 0 {
            stream.count_bytes_out(Protocol::Whep, total);
        }
        keep.retain(|m| !m.gone.load(Ordering::Acquire));
        if !keep.is_empty() {
            self.members.lock().append(&mut keep);
        }
    }

    fn release(&self, _stream: &Stream) {
        for m in std::mem::take(&mut *self.members.lock()) {
            let mut st = m.state.lock();
            if st.park.parked {
                m.give_back(&mut st);
            } else {
                st.park.in_group = false;
            }
        }
    }
}

/// How much media time a backlog spans, first packet to newest (ms).
fn behind_ms(backlog: &[Arc<Packet>]) -> i64 {
    match (backlog.first(), backlog.last()) {
        (Some(a), Some(b)) => b.frame.dts - a.frame.dts,
        _ => 0,
    }
}

/// How long the oldest packet of a backlog had waited since ingest when flushed at `now`: the machine's own
/// lateness, whatever media time the backlog spans (a bursting publisher brings seconds of media at once).
fn waited(backlog: &[Arc<Packet>], now: Instant) -> Duration {
    backlog.first().map_or(Duration::ZERO, |p| now.saturating_duration_since(p.received))
}

/// A flush sends what it has protected once this much is queued: the buffer stays this size however many
/// viewers there are (a keyframe for 250 of them is megabytes), and its datagrams leave while still in cache.
const SEND_AT_BYTES: usize = 256 * 1024;

/// Sends the queued datagrams of `keep`'s members (`owners[i]` is datagram i's, `peers[k]` member k's
/// address), counts what the socket refused against its viewer, and empties the queue.
fn send_batch(
    socket: &SharedSocket,
    all: &mut Datagrams,
    peers: &[socket2::SockAddr],
    owners: &mut Vec<usize>,
    keep: &[Arc<Member>],
) {
    if all.is_empty() {
        return;
    }
    // Refused datagrams, as (member, how many): a member's datagrams are consecutive.
    let mut refused: Vec<(usize, usize)> = Vec::new();
    udp_batch::for_each_refused(
        socket,
        all,
        peers,
        |i| owners[i],
        |i| match refused.last_mut() {
            Some((k, n)) if *k == owners[i] => *n += 1,
            _ => refused.push((owners[i], 1)),
        },
    );
    for (k, n) in refused {
        let m = &keep[k];
        let mut st = m.state.lock();
        m.refused(&mut st, n);
    }
    all.clear();
    owners.clear();
}

/// An access unit as H.264 RTP payloads (STAP-A for parameter sets, FU-A above the MTU); empty when the
/// frame cannot be converted.
pub(crate) fn h264_payloads(f: &crate::media::Frame, cfg: &AvcDecoderConfig) -> Vec<Bytes> {
    let mut annexb = Vec::with_capacity(f.payload.len() + 64);
    if avc::avcc_to_annexb(&f.payload, cfg, f.keyframe, false, &mut annexb).is_err() {
        return Vec::new();
    }
    // A fresh payloader per access unit: no state leaks from one frame to the next, so the result can be shared.
    H264Payloader::default().payload(MTU - 12, &Bytes::from(annexb)).unwrap_or_default()
}

/// A VP8 frame as RTP payloads (RFC 7741 descriptor, split at the MTU).
pub(crate) fn vp8_payloads(f: &crate::media::Frame) -> Vec<Bytes> {
    Vp8Payloader::default().payload(MTU - 12, &f.payload).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::Frame;
    use rtc::srtp::protection_profile::ProtectionProfile;
    use std::time::Duration;

    fn opus(dts: i64) -> Arc<Packet> {
        opus_at(dts, Instant::now())
    }

    fn opus_at(dts: i64, received: Instant) -> Arc<Packet> {
        let payload = Bytes::from(vec![dts as u8; 60]);
        let frame =
            Frame { kind: MediaKind::Audio, codec: Codec::Opus, dts, cts: 0, keyframe: true, config: false, payload };
        Packet::new(dts as u64, frame, received)
    }

    fn admission() -> Arc<Admission> {
        let policy = crate::webrtc::admission::Policy::of(&crate::config::Config::default_config().webrtc);
        Arc::new(Admission::new(policy, Instant::now()))
    }

    #[test]
    fn lateness_is_how_long_the_oldest_packet_waited_not_the_media_it_spans() {
        let t0 = Instant::now();
        // A publisher's burst: three seconds of media handed to the hub within 10 ms, flushed at once.
        let burst: Vec<_> = (0..150).map(|i| opus_at(20 * i, t0 + Duration::from_micros(66 * i as u64))).collect();
        let now = t0 + Duration::from_millis(12);
        assert_eq!(behind_ms(&burst), 2980);
        assert_eq!(waited(&burst, now), Duration::from_millis(12));
        // A machine behind: a packet that waited 1.2 s for its flush.
        let late = [opus_at(0, t0), opus_at(20, t0 + Duration::from_millis(20))];
        assert_eq!(waited(&late, t0 + Duration::from_millis(1200)), Duration::from_millis(1200));
        assert_eq!(waited(&[], now), Duration::ZERO);
    }

    #[test]
    fn a_backlog_is_measured_in_media_time() {
        assert_eq!(behind_ms(&[]), 0);
        assert_eq!(behind_ms(&[opus(20)]), 0, "one frame: nothing to catch up on");
        let backlog: Vec<_> = (0..40).map(|i| opus(1000 + 20 * i)).collect();
        assert_eq!(behind_ms(&backlog), 780);
    }

    #[tokio::test]
    async fn a_member_follows_its_viewer_to_another_path() {
        let socket = Arc::new(SharedSocket::new(std::net::UdpSocket::bind("127.0.0.1:0").unwrap()).unwrap());
        let (a, b) =
            (std::net::UdpSocket::bind("127.0.0.1:0").unwrap(), std::net::UdpSocket::bind("127.0.0.1:0").unwrap());
        let keying = rtc::peer_connection::transport::SrtpLocalKeying {
            peer_addr: a.local_addr().unwrap(),
            ..crate::webrtc::media_out::test_keying(ProtectionProfile::AeadAes128Gcm)
        };
        let out = TrackOut::new(&keying, 7, 111, 48_000, 100, 0).unwrap();
        let hub = crate::hub::Hub::new(Default::default(), crate::events::EventBus::new());
        let client = hub.register_client(Protocol::Whep, None).handle.clone();
        let m = Member::new(
            socket,
            keying.peer_addr,
            out,
            Media::Audio { ts_base: 0 },
            client,
            Duration::from_secs(1),
            admission(),
        );
        let mut buf = [0u8; 1500];
        assert!(m.deliver(&[opus(20)]).unwrap() > 0);
        let n = a.recv(&mut buf).unwrap();
        assert_eq!(u16::from_be_bytes([buf[2], buf[3]]), 100, "seq 100 to the first path ({n} bytes)");
        a.recv(&mut buf).unwrap();
        assert_eq!(buf[1], 200, "and the track's first sender report");
        m.set_peer(b.local_addr().unwrap());
        m.deliver(&[opus(40)]).unwrap();
        b.recv(&mut buf).unwrap();
        assert_eq!(u16::from_be_bytes([buf[2], buf[3]]), 101, "the next packet goes to the new path");
        a.set_nonblocking(true).unwrap();
        assert!(a.recv(&mut buf).is_err(), "nothing more on the old path");
    }
}
