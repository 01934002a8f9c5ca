//! Direct fan-out to players that keep up with live.
//!
//! A player whose connection task has sent everything the ring holds *parks* its socket in its stream's group
//! for its wire format. From then on the stream's flusher writes each new batch straight to every parked
//! socket: one non-blocking `writev` per player per flush, from iovecs built once per flush. No task is woken,
//! no per-player batch is collected, nothing is copied. That is what a thousand players of one stream cost
//! in user space: a loop over their sockets.
//!
//! A socket that cannot take a whole batch is handed back to its connection task with the unwritten tail.
//! The task writes the tail (under its stall timeout), then goes on through its [`Reader`](super::Reader),
//! which applies max_cache skips to a backlog, and parks again once it has caught up. Which side may write to
//! the socket is decided under the slot's lock: the flusher only while the slot is parked, the task only
//! after it took the slot back.

use std::io::IoSlice;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::net::TcpStream;
use tokio::sync::Notify;

use super::packet::{HeaderSet, Packet};
use super::stream::Stream;
use super::{ClientHandle, Protocol};
use crate::metrics;

/// iovecs one `writev` may take (Linux IOV_MAX).
const MAX_IOV: usize = 1024;

/// The serialization a parked player receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// FLV tags, optionally in HTTP/1.1 chunked framing.
    Flv,
    /// RTMP chunks (one fixed outbound chunk size for every connection).
    Rtmp,
}

/// When a parked player is written to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// rtc mode: at every video frame.
    Immediate,
    /// Players whose writes may merge two frames: phase 0 is flushed at even video frames, phase 1 at odd
    /// ones, so each flush writes to half of them (half the burst, half the spread of arrival times).
    Merged(usize),
}

/// Merge phases (see [`Class::Merged`]).
pub(crate) const PHASES: usize = 2;
const CLASSES: usize = 1 + PHASES;
/// Fan-out groups per stream: one per format and class.
pub(crate) const GROUPS: usize = 2 * CLASSES;

pub(crate) fn group_index(format: Format, class: Class) -> usize {
    format as usize * CLASSES
        + match class {
            Class::Immediate => 0,
            Class::Merged(p) => 1 + p % PHASES,
        }
}

impl Format {
    fn bytes(self, p: &Packet) -> &Bytes {
        match self {
            Format::Flv => p.flv_tag(),
            Format::Rtmp => p.rtmp_chunks(),
        }
    }

    fn protocol(self) -> Protocol {
        match self {
            Format::Flv => Protocol::HttpFlv,
            Format::Rtmp => Protocol::Rtmp,
        }
    }
}

/// What a connection task gets back when it takes its socket back from the fan-out.
#[derive(Debug, Default)]
pub struct Handback {
    /// The rest of a partly written batch: it must go out before anything else.
    pub tail: Vec<Bytes>,
    /// The sequence number of the first packet the player has not been sent (tail included as sent).
    pub next_seq: u64,
    /// The headers in force at `next_seq`, when the fan-out moved the player past header packets.
    pub headers: Option<Arc<HeaderSet>>,
    /// The socket failed (the player is gone).
    pub error: Option<std::io::Error>,
}

/// A player's side of parking, the same for every fan-out (this one, and another layer's: WHEP's): whether
/// the fan-out or the player's task sends to it, where it is in the ring, and what it was handed back. Kept
/// under its owner's lock; the owner adds the group and the wake-up.
#[derive(Debug, Default)]
pub struct ParkState {
    pub(crate) parked: bool,
    /// In the stream's group (or in a flush that is running): guards against a player entering it twice.
    pub(crate) in_group: bool,
    pub(crate) pos: u64,
    pub(crate) headers: Option<Arc<HeaderSet>>,
    handback: Option<Handback>,
}

impl ParkState {
    /// A handback at the player's current position: nothing half-written.
    pub(crate) fn here(&mut self) -> Handback {
        Handback { next_seq: self.pos, headers: self.headers.take(), ..Default::default() }
    }

    /// Parked at `pos`; true when the player is not in its group yet and must be added.
    pub(crate) fn park(&mut self, protocol: Protocol, pos: u64) -> bool {
        if !self.parked {
            metrics::global().parked(protocol, 1);
        }
        self.parked = true;
        self.pos = pos;
        self.headers = None;
        self.handback = None;
        !std::mem::replace(&mut self.in_group, true)
    }

    /// Taken back by the task: where to go on from, or what the fan-out handed back; `None` if neither.
    pub(crate) fn unpark(&mut self, protocol: Protocol) -> Option<Handback> {
        if self.parked {
            self.parked = false;
            metrics::global().parked(protocol, -1);
            return Some(self.here());
        }
        self.handback.take()
    }

    /// Handed back by the fan-out (the owner wakes its task).
    pub(crate) fn give_back(&mut self, protocol: Protocol, hb: Handback) {
        if self.parked {
            metrics::global().parked(protocol, -1);
        }
        self.parked = false;
        self.in_group = false;
        self.handback = Some(hb);
    }
}

/// One player connection's place in a fan-out group.
#[derive(Debug)]
pub struct Slot {
    sock: Arc<TcpStream>,
    client: Arc<ClientHandle>,
    format: Format,
    /// HTTP/1.1 chunked transfer coding around each batch.
    chunked: bool,
    /// An rtc-mode player: flushed at every video frame, never held for the merge window.
    immediate: bool,
    state: Mutex<ParkState>,
    /// Lock-free copy of `state.pos` for the flusher's first pass.
    pos_hint: AtomicU64,
    /// The player left: a flush that still holds the slot must not put it back into the group.
    gone: AtomicBool,
    wake: Notify,
}

impl Slot {
    pub fn new(
        sock: Arc<TcpStream>,
        client: Arc<ClientHandle>,
        format: Format,
        chunked: bool,
        immediate: bool,
    ) -> Arc<Self> {
        Arc::new(Self {
            sock,
            client,
            format,
            chunked,
            immediate,
            state: Mutex::new(ParkState::default()),
            pos_hint: AtomicU64::new(0),
            gone: AtomicBool::new(false),
            wake: Notify::new(),
        })
    }

    /// Hands the socket to `stream`'s fan-out: the next flushes send it everything from `pos` on.
    pub fn park(self: &Arc<Self>, stream: &Stream, pos: u64) {
        let join = {
            let mut st = self.state.lock();
            self.pos_hint.store(pos, Ordering::Relaxed);
            st.park(self.format.protocol(), pos)
        };
        if join {
            let class = if self.immediate {
                Class::Immediate
            } else {
                Class::Merged(stream.next_phase.fetch_add(1, Ordering::Relaxed))
            };
            stream.fanout[group_index(self.format, class)].lock().push(self.clone());
        }
        // A stream that closed meanwhile will flush nothing more: hand the socket back so the task's Reader
        // ends the player. (`close` sets the flag before it releases the groups, so one of the two sees it.)
        if stream.is_closed() {
            release_all(stream);
        }
    }

    /// Takes the socket back. `None` if it was not parked and nothing was handed back (e.g. a repeated call).
    pub fn unpark(&self) -> Option<Handback> {
        self.state.lock().unpark(self.format.protocol())
    }

    /// Takes the socket back for good (the player is leaving) and drops the group's reference to it at once,
    /// so the socket closes now rather than at the group's next flush.
    pub fn leave(self: &Arc<Self>, stream: &Stream) -> Option<Handback> {
        self.gone.store(true, Ordering::Release);
        let hb = self.unpark();
        let mut removed = false;
        for class in std::iter::once(Class::Immediate).chain((0..PHASES).map(Class::Merged)) {
            let mut g = stream.fanout[group_index(self.format, class)].lock();
            let before = g.len();
            g.retain(|s| !Arc::ptr_eq(s, self));
            removed |= g.len() != before;
        }
        if removed {
            self.state.lock().in_group = false;
        }
        hb
    }

    /// Resolves when the fan-out has handed the socket back (or may have: call [`unpark`](Self::unpark)).
    pub async fn handed_back(&self) {
        self.wake.notified().await
    }

    /// The flusher could not write this player's batch whole: its task takes over (counted in metrics).
    fn hand_back(&self, st: &mut ParkState, hb: Handback) {
        metrics::global().fanout_handbacks.fetch_add(1, Ordering::Relaxed);
        self.give_back(st, hb);
    }

    fn give_back(&self, st: &mut ParkState, hb: Handback) {
        st.give_back(self.format.protocol(), hb);
        self.wake.notify_one();
    }
}

/// One flush's data, shared by whoever writes it (the flusher and the helper threads).
struct Batch {
    bufs: Vec<Bytes>,
    received: Vec<Instant>,
    /// Byte counts of `bufs[k..]`: what a player starting at `bufs[k]` is sent.
    suffix: Vec<usize>,
    /// HTTP/1.1 chunk header for a player starting at `bufs[k]` (FLV only; a flush has a handful of packets).
    chunk_heads: Vec<Bytes>,
    start: u64,
    end: u64,
    headers: Arc<HeaderSet>,
}

/// Writes everything new to `stream`'s parked players of one group. Called by the stream's flusher. A large
/// group is split across helper threads (one per extra core), so the last player of a thousand gets the
/// batch about as soon as the first: the spread of a flush is what its players see as added latency.
pub(crate) fn flush(stream: &Stream, format: Format, class: Class) {
    let group = &stream.fanout[group_index(format, class)];
    let mut members = std::mem::take(&mut *group.lock());
    if members.is_empty() {
        return;
    }
    let Some(start_hint) = members.iter().map(|m| m.pos_hint.load(Ordering::Relaxed)).min() else { return };
    // Take what the batch needs out of the ring, then let go of it: the publisher must not wait for writes.
    let batch = {
        let ring = stream.ring.read();
        let end = ring.next_seq();
        let start = start_hint.max(ring.first_seq).min(end);
        let mut bufs = Vec::with_capacity((end - start) as usize);
        let mut received = Vec::with_capacity((end - start) as usize);
        for seq in start..end {
            if let Some(p) = ring.get(seq) {
                bufs.push(format.bytes(p).clone());
                received.push(p.received);
            }
        }
        let mut suffix = vec![0usize; bufs.len() + 1];
        for k in (0..bufs.len()).rev() {
            suffix[k] = suffix[k + 1] + bufs[k].len();
        }
        let chunk_heads = match format {
            Format::Flv => suffix[..bufs.len()].iter().map(|len| Bytes::from(format!("{len:x}\r\n"))).collect(),
            Format::Rtmp => Vec::new(),
        };
        Batch { bufs, received, suffix, chunk_heads, start, end, headers: ring.headers.clone() }
    };
    let pool = pool();
    let shards = if members.len() >= 2 * SHARD_MIN { (members.len() / SHARD_MIN).min(pool.len() + 1) } else { 1 };
    let (mut keep, total) = if shards > 1 {
        let batch = Arc::new(batch);
        let per = members.len().div_ceil(shards);
        let mut waits = Vec::with_capacity(shards - 1);
        // Only idle helpers: a flush never queues behind another stream's.
        for helper in pool.iter().filter(|h| !h.busy.swap(true, Ordering::AcqRel)).take(shards - 1) {
            let part = members.split_off(members.len().saturating_sub(per));
            let (done_tx, done_rx) = std::sync::mpsc::sync_channel(1);
            let job = Job { batch: batch.clone(), members: part, done: done_tx };
            match helper.tx.lock().send(job) {
                Ok(()) => waits.push(done_rx),
                Err(e) => {
                    helper.busy.store(false, Ordering::Release);
                    members.extend(e.0.members);
                }
            }
        }
        let (mut keep, mut total) = write_members(&batch, members);
        for w in waits {
            if let Ok((k, t)) = w.recv() {
                keep.extend(k);
                total += t;
            }
        }
        (keep, total)
    } else {
        write_members(&batch, members)
    };
    if total > 0 {
        stream.stats.bytes_out.fetch_add(total, Ordering::Relaxed);
        metrics::global().bytes_out(format.protocol(), total);
    }
    keep.retain(|s| !s.gone.load(Ordering::Acquire));
    if !keep.is_empty() {
        group.lock().append(&mut keep);
    }
}

/// Fewest players worth handing to a helper thread.
const SHARD_MIN: usize = 128;

struct Job {
    batch: Arc<Batch>,
    members: Vec<Arc<Slot>>,
    done: std::sync::mpsc::SyncSender<(Vec<Arc<Slot>>, u64)>,
}

struct Helper {
    tx: Mutex<std::sync::mpsc::Sender<Job>>,
    busy: AtomicBool,
}

/// Helper threads for large flushes: one per core beyond the first.
fn pool() -> &'static [Arc<Helper>] {
    static POOL: std::sync::OnceLock<Vec<Arc<Helper>>> = std::sync::OnceLock::new();
    POOL.get_or_init(|| {
        let extra = std::thread::available_parallelism().map_or(1, |n| n.get()).saturating_sub(1);
        (0..extra)
            .filter_map(|i| {
                let (tx, rx) = std::sync::mpsc::channel::<Job>();
                let helper = Arc::new(Helper { tx: Mutex::new(tx), busy: AtomicBool::new(false) });
                let h = helper.clone();
                std::thread::Builder::new()
                    .name(format!("fanout-{i}"))
                    .spawn(move || {
                        for job in rx {
                            let members = job.members.clone();
                            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                                write_members(&job.batch, job.members)
                            }));
                            h.busy.store(false, Ordering::Release);
                            let r = r.unwrap_or_else(|_| {
                                // Never leave a player parked with nobody writing to it.
                                tracing::error!("fan-out helper panicked; its players go back to their tasks");
                                for slot in members {
                                    let mut st = slot.state.lock();
                                    let hb = st.here();
                                    slot.give_back(&mut st, hb);
                                }
                                (Vec::new(), 0)
                            });
                            let _ = job.done.send(r);
                        }
                    })
                    .ok()
                    .map(|_| helper)
            })
            .collect()
    })
}

/// Writes `batch` to each of `members`; returns those still parked and the bytes written.
fn write_members(batch: &Batch, members: Vec<Arc<Slot>>) -> (Vec<Arc<Slot>>, u64) {
    let Batch { bufs, received, suffix, chunk_heads, start, end, headers } = batch;
    let (start, end) = (*start, *end);
    let n = bufs.len();
    // One iovec list, refilled per player from the shared batch: no allocation per player.
    let mut iov: Vec<IoSlice<'_>> = Vec::with_capacity(n.min(MAX_IOV) + 2);
    let mut keep = Vec::with_capacity(members.len());
    let mut total = 0u64;
    for slot in members {
        // Held across the player's one non-blocking sendmsg: it is what keeps the task from writing to the
        // same socket meanwhile (the task waits at most that one syscall).
        let mut st = slot.state.lock();
        if !st.parked {
            // Taken back by its task since it parked.
            st.in_group = false;
            continue;
        }
        if st.pos >= end {
            drop(st);
            keep.push(slot);
            continue;
        }
        if st.pos < start || (st.pos - start) as usize >= n || n - (st.pos - start) as usize + 2 > MAX_IOV {
            // Its packets left the ring, or the backlog is too long for one writev: its Reader deals with it.
            slot.client.player.stalls.fetch_add(1, Ordering::Relaxed);
            let hb = st.here();
            slot.hand_back(&mut st, hb);
            continue;
        }
        let k = (st.pos - start) as usize;
        let head = slot.chunked.then(|| &chunk_heads[k]);
        iov.clear();
        iov.extend(head.map(|h| IoSlice::new(h)));
        iov.extend(bufs[k..].iter().map(|b| IoSlice::new(b)));
        if slot.chunked {
            iov.push(IoSlice::new(b"\r\n"));
        }
        let want = suffix[k] + head.map_or(0, |h| h.len() + 2);
        match crate::netio::send_vectored_now(&slot.sock, &iov) {
            Ok(w) if w == want => {
                st.pos = end;
                st.headers = Some(headers.clone());
                slot.pos_hint.store(end, Ordering::Relaxed);
                drop(st);
                metrics::global().observe_latency(received[k].elapsed());
                slot.client.bytes_out.fetch_add(w as u64, Ordering::Relaxed);
                total += w as u64;
                keep.push(slot);
            }
            Ok(w) => {
                // Part of a tag went out: the rest must follow before anything else, so the task takes over.
                let mut parts: Vec<Bytes> = Vec::with_capacity(n - k + 2);
                parts.extend(head.cloned());
                parts.extend(bufs[k..].iter().cloned());
                if slot.chunked {
                    parts.push(Bytes::from_static(b"\r\n"));
                }
                slot.client.bytes_out.fetch_add(w as u64, Ordering::Relaxed);
                slot.client.player.stalls.fetch_add(1, Ordering::Relaxed);
                total += w as u64;
                let hb =
                    Handback { tail: skip_bytes(parts, w), next_seq: end, headers: Some(headers.clone()), error: None };
                slot.hand_back(&mut st, hb);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                slot.client.player.stalls.fetch_add(1, Ordering::Relaxed);
                let hb = st.here();
                slot.hand_back(&mut st, hb);
            }
            Err(e) => {
                let hb = Handback { next_seq: st.pos, error: Some(e), ..Default::default() };
                slot.hand_back(&mut st, hb);
            }
        }
    }
    (keep, total)
}

/// Hands every parked socket back to its task (the stream ends: each task's Reader finishes it cleanly).
pub(crate) fn release_all(stream: &Stream) {
    for group in &stream.fanout {
        let members = std::mem::take(&mut *group.lock());
        for slot in members {
            let mut st = slot.state.lock();
            if st.parked {
                let hb = st.here();
                slot.give_back(&mut st, hb);
            } else {
                st.in_group = false;
            }
        }
    }
}

/// What is left of `parts` after the first `n` bytes.
fn skip_bytes(parts: Vec<Bytes>, mut n: usize) -> Vec<Bytes> {
    let mut out = Vec::with_capacity(parts.len());
    for mut b in parts {
        if n >= b.len() {
            n -= b.len();
            continue;
        }
        if n > 0 {
            b = b.slice(n..);
            n = 0;
        }
        out.push(b);
    }
    out
}

/// HTTP/1.1 chunked framing of one batch, for a connection task's own writes (the fan-out frames in place).
pub fn chunk_frame(batch: &mut Vec<Bytes>) {
    let len: usize = batch.iter().map(|b| b.len()).sum();
    if len == 0 {
        return;
    }
    batch.insert(0, Bytes::from(format!("{len:x}\r\n")));
    batch.push(Bytes::from_static(b"\r\n"));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::StreamKey;
    use std::time::Duration;

    async fn socket_pair() -> (Arc<TcpStream>, TcpStream) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        (Arc::new(l.accept().await.unwrap().0), c)
    }

    fn stream() -> Stream {
        let d = Duration::from_millis(40);
        Stream::new(StreamKey::new("live", "t"), 1, Duration::from_secs(10), 1 << 20, d, d)
    }

    fn client() -> Arc<ClientHandle> {
        crate::hub::Hub::new(Default::default(), crate::events::EventBus::new())
            .register_client(Protocol::HttpFlv, None)
            .handle
            .clone()
    }

    #[tokio::test]
    async fn parking_on_a_closed_stream_hands_the_socket_straight_back() {
        let (sock, _peer) = socket_pair().await;
        let s = stream();
        s.close();
        let slot = Slot::new(sock, client(), Format::Flv, true, false);
        slot.park(&s, 7);
        tokio::time::timeout(Duration::from_secs(1), slot.handed_back()).await.expect("handed back at once");
        let hb = slot.unpark().expect("a handback");
        assert_eq!(hb.next_seq, 7);
        assert!(s.fanout.iter().all(|g| g.lock().is_empty()), "nothing stays parked on a closed stream");
    }

    fn video(dts: i64, key: bool, len: usize) -> crate::media::Frame {
        crate::media::Frame {
            kind: crate::media::MediaKind::Video,
            codec: crate::media::Codec::H264,
            dts,
            cts: 0,
            keyframe: key,
            config: false,
            payload: Bytes::from(vec![(dts % 251) as u8; len]),
        }
    }

    #[tokio::test]
    async fn a_full_socket_hands_back_exactly_the_unwritten_bytes() {
        use tokio::io::AsyncReadExt;
        let (sock, mut peer) = socket_pair().await;
        socket2::SockRef::from(&*sock).set_send_buffer_size(4096).unwrap();
        socket2::SockRef::from(&peer).set_recv_buffer_size(4096).unwrap();
        let s = stream();
        let slot = Slot::new(sock.clone(), client(), Format::Flv, true, true);
        s.push(video(0, true, 100), Instant::now());
        slot.park(&s, s.ring.read().next_seq());
        // Flushes of growing frames until the socket stops taking them: the fan-out hands the player back.
        let mut expected = Vec::new();
        let mut dts = 33;
        let hb = loop {
            let from = s.ring.read().next_seq();
            s.push(video(dts, false, 50_000), Instant::now());
            let mut batch: Vec<Bytes> =
                (from..s.ring.read().next_seq()).map(|q| s.ring.read().get(q).unwrap().flv_tag().clone()).collect();
            chunk_frame(&mut batch);
            expected.extend(batch.concat());
            dts += 33;
            flush(&s, Format::Flv, Class::Immediate);
            if let Some(hb) = slot.state.lock().handback.take() {
                break hb;
            }
            assert!(dts < 33 * 200, "the socket never filled");
        };
        assert!(hb.error.is_none());
        assert_eq!(hb.next_seq, s.ring.read().next_seq(), "everything up to the flush is written or in the tail");
        // What the peer reads, then the tail, is exactly what was flushed, in order.
        let mut got = Vec::new();
        let unsent: usize = hb.tail.iter().map(|b| b.len()).sum();
        while got.len() + unsent < expected.len() {
            let mut b = vec![0u8; 65536];
            let n = tokio::time::timeout(Duration::from_secs(2), peer.read(&mut b)).await.unwrap().unwrap();
            got.extend_from_slice(&b[..n]);
        }
        got.extend(hb.tail.concat());
        assert_eq!(got.len(), expected.len());
        assert!(got == expected, "written bytes + tail == flushed batches");
        assert!(s.fanout.iter().all(|g| g.lock().is_empty()), "a handed-back player leaves the group");
    }

    #[test]
    fn skip_bytes_cuts_inside_and_between_parts() {
        let parts = vec![Bytes::from_static(b"abc"), Bytes::from_static(b"defg"), Bytes::from_static(b"h")];
        let t = skip_bytes(parts.clone(), 0);
        assert_eq!(t.concat(), b"abcdefgh");
        let t = skip_bytes(parts.clone(), 3);
        assert_eq!(t.concat(), b"defgh");
        let t = skip_bytes(parts.clone(), 5);
        assert_eq!(t.concat(), b"fgh");
        assert_eq!(t.len(), 2);
        assert!(skip_bytes(parts, 8).is_empty());
    }

    #[test]
    fn chunk_frame_wraps_a_batch() {
        let mut b = vec![Bytes::from_static(b"0123456789"), Bytes::from_static(b"abcdef")];
        chunk_frame(&mut b);
        assert_eq!(b.concat(), b"10\r\n0123456789abcdef\r\n");
        let mut empty: Vec<Bytes> = Vec::new();
        chunk_frame(&mut empty);
        assert!(empty.is_empty());
    }
}
