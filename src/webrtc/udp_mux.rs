//! All WebRTC sessions on one UDP port (`webrtc.udp_mux_port`), for servers behind a NAT or firewall that
//! can open one port, not a range.
//!
//! webrtc-rs 0.21 binds a socket per PeerConnection and has no UDP mux of its own, but it does its I/O
//! through a pluggable runtime. Each session gets a runtime whose UDP socket is virtual: sends go out of the
//! shared socket, and receives come from a channel the mux fills. The mux tells sessions apart as ICE-lite
//! servers do: a datagram from an address it has not seen must be a STUN binding request whose USERNAME
//! starts with a session's ICE ufrag; from then on that address belongs to that session. The answer's host
//! candidate is rewritten to the shared port (the session's own bound port is never used).

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::mpsc;

use super::mux_socket::SharedSocket;
use webrtc::runtime::{
    AsyncInterval, AsyncTcpListener, AsyncTcpStream, AsyncUdpSocket, JoinHandle, RecvMeta, Runtime, Transmit,
};

/// The USERNAME of a STUN binding request (RFC 8489), if `p` is one: "receiver-ufrag:sender-ufrag".
pub fn stun_username(p: &[u8]) -> Option<&str> {
    // Binding request, magic cookie, and a length that covers the attributes.
    if p.len() < 20 || p[0..2] != [0x00, 0x01] || p[4..8] != [0x21, 0x12, 0xA4, 0x42] {
        return None;
    }
    let end = (20 + u16::from_be_bytes([p[2], p[3]]) as usize).min(p.len());
    let mut i = 20;
    while i + 4 <= end {
        let (t, len) = (u16::from_be_bytes([p[i], p[i + 1]]), u16::from_be_bytes([p[i + 2], p[i + 3]]) as usize);
        let v = p.get(i + 4..i + 4 + len)?;
        if t == 0x0006 {
            return std::str::from_utf8(v).ok();
        }
        i += 4 + len.div_ceil(4) * 4;
    }
    None
}

/// The `a=ice-ufrag` of an SDP.
pub fn sdp_ufrag(sdp: &str) -> Option<&str> {
    sdp.lines().find_map(|l| l.trim().strip_prefix("a=ice-ufrag:"))
}

/// Points the SDP's host candidates at `ip port` `from` to the shared port.
pub fn rewrite_candidate_port(sdp: &str, ip: std::net::IpAddr, from: u16, to: u16) -> String {
    sdp.replace(&format!(" {ip} {from} typ host"), &format!(" {ip} {to} typ host"))
}

/// A datagram in, with when it was read off the socket.
struct Datagram {
    data: Vec<u8>,
    from: SocketAddr,
    at: Instant,
}

/// A viewer's RTCP that waited longer than this for its session is dropped unread: a receiver report or NACK that
/// old is stale (the NACKed packets are past their use), and working through it would only delay what
/// comes after.
const MEDIA_STALE: Duration = Duration::from_millis(250);

/// Which queue a datagram in takes (RFC 7983 tells them apart by the first byte). STUN keeps ICE and consent
/// alive and DTLS carries handshakes: always delivered, ahead of anything queued. RTP and RTCP are media and
/// its feedback: when a session is behind they are dropped, as a full socket buffer would drop them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    Control,
    Media,
}

impl Lane {
    pub fn of(p: &[u8]) -> Lane {
        match p.first() {
            Some(0..=3) | Some(20..=63) => Lane::Control,
            _ => Lane::Media,
        }
    }
}

/// A session's STUN and DTLS queue: a handshake flight is a few datagrams, a consent check one every few
/// seconds.
const CONTROL_QUEUE: usize = 64;

/// A session's inbound queues on the shared port.
#[derive(Clone)]
struct Inbound {
    control: mpsc::Sender<Datagram>,
    media: mpsc::Sender<Datagram>,
    /// RTP/RTCP older than this is dropped ([`InboundMedia::stale_after`]).
    stale: Option<Duration>,
    /// Who reads the session's RTCP instead of its webrtc-rs driver, once someone does.
    rtcp: RtcpSlot,
}

/// Reads a session's RTCP on the control thread, as it arrives (`rtcp_in`): must not block.
pub trait RtcpSink: Send + Sync {
    fn rtcp(&self, datagram: &[u8]);
}

/// Where a session's RTCP reader is put once its keys are known; shared by every route to the session.
pub type RtcpSlot = Arc<OnceLock<Arc<dyn RtcpSink>>>;

/// How many RTP/RTCP datagrams a session may have waiting. A viewer's only inbound media is RTCP (receiver
/// reports, NACKs, PLIs): a few queued is plenty, and hundreds would be stale work for a session that is
/// behind. A publisher's (WHIP) is its media: a keyframe arrives as a burst of datagrams.
#[derive(Debug, Clone, Copy)]
pub enum InboundMedia {
    Feedback,
    Media,
}

impl InboundMedia {
    fn capacity(self) -> usize {
        match self {
            InboundMedia::Feedback => 64,
            InboundMedia::Media => 1024,
        }
    }

    fn stale_after(self) -> Option<Duration> {
        match self {
            InboundMedia::Feedback => Some(MEDIA_STALE),
            InboundMedia::Media => None,
        }
    }
}

/// Send and receive buffer asked for on the shared socket.
const SOCKET_BUFFER: usize = 8 << 20;

/// A session's STUN and DTLS handled as they arrive, on the control thread (`lite`): must not block.
pub trait ControlSink: Send + Sync {
    /// Returns true when the datagram proves `from` is the session's peer (a check with valid credentials):
    /// the address is routed to the session from then on.
    fn control(&self, datagram: &[u8], from: SocketAddr) -> bool;
}

/// Where a session's datagrams go.
#[derive(Clone)]
enum Target {
    /// Into its webrtc-rs session's queues.
    Queued(Inbound),
    /// Handled here: STUN and DTLS by the session, RTCP by its reader.
    Handled { session: Arc<dyn ControlSink>, rtcp: RtcpSlot },
}

#[derive(Default)]
struct Routes {
    by_ufrag: HashMap<String, Target>,
    /// A known peer address: its session's ufrag (to unregister) and target (no lookup by name per datagram).
    by_addr: HashMap<SocketAddr, (String, Target)>,
    /// How many addresses each session (by ufrag) has in `by_addr`.
    addrs: HashMap<String, usize>,
}

/// Addresses routed to one session at most: a viewer's candidates are a handful, and a peer that sends checks
/// from ever more ports (or forged sources) must not grow the table without bound. Past this, datagrams from
/// a new address still reach the session by its ufrag when they are STUN, and nothing else does.
const ADDRS_PER_SESSION: usize = 8;

impl Routes {
    /// Routes `from` to the session `ufrag`, unless it has its fill of addresses.
    fn add(&mut self, from: SocketAddr, ufrag: &str, target: Target) -> bool {
        let n = self.addrs.entry(ufrag.to_owned()).or_default();
        if *n >= ADDRS_PER_SESSION {
            return false;
        }
        *n += 1;
        self.by_addr.insert(from, (ufrag.to_owned(), target));
        true
    }
}

/// What to do with a datagram once the routes are let go.
enum Deliver {
    Rtcp(Arc<dyn RtcpSink>),
    /// To a session that handles its own; `new_addr` when the address is not routed yet (the ufrag and
    /// target to route it to if the session says it is its peer's).
    Control {
        session: Arc<dyn ControlSink>,
        new_addr: Option<(String, Target)>,
    },
}

/// The shared socket and who gets what arrives on it.
pub struct UdpMux {
    std: Mutex<Option<std::net::UdpSocket>>,
    socket: OnceLock<Arc<SharedSocket>>,
    pub addr: SocketAddr,
    routes: Mutex<Routes>,
    /// The control lane: the receive loop and the WHEP sessions' ICE/DTLS drivers (see [`ControlLane`]).
    control: ControlLane,
}

/// A thread of its own for what keeps sessions alive: the socket's receive loop, and the ICE, DTLS and RTCP
/// drivers of the sessions whose media livegate sends itself. On the media runtime, an overloaded machine
/// starved STUN consent and handshakes along with the media it was shedding, and viewers lost ICE (3×
/// overload: half of 500, benches/README.md). This work is small and wakes rarely; on its own thread the
/// kernel's scheduler runs it promptly however busy the media threads are, while the media sheds load.
struct ControlLane {
    handle: tokio::runtime::Handle,
    /// Dropped with the mux: ends the thread.
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl ControlLane {
    fn start() -> io::Result<Self> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let handle = rt.handle().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new().name("webrtc-control".into()).spawn(move || {
            let _ = rt.block_on(stopped);
        })?;
        Ok(Self { handle, _stop: stop })
    }
}

/// A task on the control lane, as webrtc-rs' runtime interface wants it.
struct ControlTask(tokio::task::JoinHandle<()>);

impl JoinHandle for ControlTask {
    fn detach(&self) {}
    fn abort(&self) {
        self.0.abort();
    }
    fn is_finished(&self) -> bool {
        self.0.is_finished()
    }
}

impl fmt::Debug for UdpMux {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UdpMux").field("addr", &self.addr).finish()
    }
}

impl UdpMux {
    /// Binds the shared port now, so a taken port is a start-up error.
    pub fn bind(addr: SocketAddr) -> io::Result<Arc<Self>> {
        let std = std::net::UdpSocket::bind(addr)?;
        std.set_nonblocking(true)?;
        // Every viewer's media leaves through this one socket, a keyframe for all of them at once: ask for
        // room (the kernel caps it at net.core.wmem_max/rmem_max). A refused datagram is dropped, not queued.
        let sock = socket2::SockRef::from(&std);
        let _ = sock.set_send_buffer_size(SOCKET_BUFFER);
        let _ = sock.set_recv_buffer_size(SOCKET_BUFFER);
        super::udp_batch::dont_fragment(&std);
        let addr = std.local_addr()?;
        Ok(Arc::new(Self {
            std: Mutex::new(Some(std)),
            socket: OnceLock::new(),
            addr,
            routes: Default::default(),
            control: ControlLane::start()?,
        }))
    }

    /// The registered socket, and its receive loop, started on first use. Both belong to the control lane:
    /// the socket's readiness comes from that thread's reactor, not from the busy media runtime's.
    fn socket(self: &Arc<Self>) -> io::Result<Arc<SharedSocket>> {
        if let Some(s) = self.socket.get() {
            return Ok(s.clone());
        }
        let Some(std) = self.std.lock().take() else {
            return self.socket.get().cloned().ok_or_else(|| io::Error::other("UDP mux not ready"));
        };
        let s = {
            let _lane = self.control.handle.enter();
            Arc::new(SharedSocket::new(std)?)
        };
        let _ = self.socket.set(s.clone());
        let this = self.clone();
        let rx = s.clone();
        if let Err(e) = super::udp_recv::stamp_arrivals(&*s) {
            tracing::warn!(error = %e, "no arrival times on the WebRTC UDP mux socket: stale RTCP is not shed");
        }
        self.control.handle.spawn(async move {
            let mut batch = super::udp_recv::RecvBatch::default();
            let mut batches = 0u32;
            loop {
                match rx.read_with(|s| batch.recv(s)).await {
                    Ok(_) => {
                        let (now, at) = (std::time::SystemTime::now(), Instant::now());
                        for d in batch.datagrams(now) {
                            this.route(d.data, d.from, at.checked_sub(d.waited).unwrap_or(at));
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => continue,
                    Err(e) => {
                        tracing::warn!(error = %e, "WebRTC UDP mux socket failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
                // A busy socket is read a few batches at a time: the sessions' drivers share this thread.
                batches = batches.wrapping_add(1);
                if batches.is_multiple_of(8) {
                    tokio::task::yield_now().await;
                }
            }
        });
        Ok(s)
    }

    /// Hands a datagram that arrived at `at` to its session. A viewer's RTCP that already waited too long in
    /// the socket is dropped here, before any session spends work on it; one livegate reads itself is read
    /// after the routes are let go (reading it may ask the stream for a keyframe), as are STUN and DTLS of a
    /// session livegate runs itself.
    fn route(&self, p: &[u8], from: SocketAddr, at: Instant) {
        let lane = Lane::of(p);
        let stale = || {
            crate::metrics::global().webrtc_datagrams_shed.fetch_add(1, Ordering::Relaxed);
        };
        let deliver = {
            let mut routes = self.routes.lock();
            let target = match routes.by_addr.get(&from) {
                Some((_, t)) => t,
                None => {
                    let Some(ufrag) = stun_username(p).and_then(|u| u.split(':').next()) else { return };
                    let Some(t) = routes.by_ufrag.get(ufrag).cloned() else { return };
                    match t {
                        // webrtc-rs checks the request itself: the address is routed to it at once.
                        Target::Queued(ref rx) => {
                            if !routes.add(from, ufrag, t.clone()) {
                                return queue(rx, p, from, at, lane);
                            }
                            &routes.by_addr[&from].1
                        }
                        Target::Handled { ref session, .. } => {
                            // Routed only once the session has checked the request's credentials.
                            let session = session.clone();
                            let new_addr = Some((ufrag.to_owned(), t));
                            drop(routes);
                            return self.deliver(Deliver::Control { session, new_addr }, p, from);
                        }
                    }
                }
            };
            match target {
                Target::Handled { session, rtcp } => match lane {
                    Lane::Control => Deliver::Control { session: session.clone(), new_addr: None },
                    Lane::Media if at.elapsed() > MEDIA_STALE => return stale(),
                    // A viewer sends no RTP; its RTCP before its keys are known has no reader yet.
                    Lane::Media => match rtcp.get().filter(|_| super::rtcp_in::is_rtcp(p)) {
                        Some(sink) => Deliver::Rtcp(sink.clone()),
                        None => return,
                    },
                },
                Target::Queued(rx) => {
                    if lane == Lane::Media && rx.stale.is_some_and(|s| at.elapsed() > s) {
                        return stale();
                    }
                    match rx.rtcp.get() {
                        Some(sink) if lane == Lane::Media && super::rtcp_in::is_rtcp(p) => Deliver::Rtcp(sink.clone()),
                        // Queued under the routes lock, which `try_send` never holds long: no clone of the
                        // session's queues per datagram (a WHIP publisher's media comes this way).
                        _ => return queue(rx, p, from, at, lane),
                    }
                }
            }
        };
        self.deliver(deliver, p, from);
    }

    fn deliver(&self, d: Deliver, p: &[u8], from: SocketAddr) {
        match d {
            Deliver::Rtcp(sink) => sink.rtcp(p),
            Deliver::Control { session, new_addr } => {
                if session.control(p, from) {
                    if let Some((ufrag, target)) = new_addr {
                        let mut routes = self.routes.lock();
                        // Unless the session left meanwhile, or the address is routed already.
                        if routes.by_ufrag.contains_key(&ufrag) && !routes.by_addr.contains_key(&from) {
                            routes.add(from, &ufrag, target);
                        }
                    }
                }
            }
        }
    }

    /// Routes the datagrams of the session whose local ICE ufrag this is to `session` (STUN, DTLS) and
    /// `rtcp` (its RTCP reader, once set), until the returned route is dropped.
    pub fn register_control(
        self: &Arc<Self>,
        ufrag: &str,
        session: Arc<dyn ControlSink>,
        rtcp: RtcpSlot,
    ) -> ControlRoute {
        self.routes.lock().by_ufrag.insert(ufrag.to_owned(), Target::Handled { session, rtcp });
        ControlRoute { mux: self.clone(), ufrag: ufrag.to_owned() }
    }

    /// Runs `task` on the control thread.
    pub fn spawn_control(&self, task: impl Future<Output = ()> + Send + 'static) {
        self.control.handle.spawn(task);
    }

    /// The shared socket (its receive loop started).
    pub fn shared_socket(self: &Arc<Self>) -> io::Result<Arc<SharedSocket>> {
        self.socket()
    }

    fn unregister(&self, ufrag: &str) {
        let mut routes = self.routes.lock();
        routes.by_ufrag.remove(ufrag);
        routes.addrs.remove(ufrag);
        routes.by_addr.retain(|_, (u, _)| u != ufrag);
    }
}

/// Into a webrtc-rs session's queues. A session that does not keep up loses datagrams, as a full socket buffer
/// would.
fn queue(rx: &Inbound, p: &[u8], from: SocketAddr, at: Instant, lane: Lane) {
    let d = Datagram { data: p.to_vec(), from, at };
    let r = match lane {
        Lane::Control => rx.control.try_send(d),
        Lane::Media => rx.media.try_send(d),
    };
    if let Err(mpsc::error::TrySendError::Full(_)) = r {
        crate::metrics::global().webrtc_datagrams_shed.fetch_add(1, Ordering::Relaxed);
    }
}

/// A session's place in the routes; dropping it takes the session off the port.
pub struct ControlRoute {
    mux: Arc<UdpMux>,
    ufrag: String,
}

impl Drop for ControlRoute {
    fn drop(&mut self) {
        self.mux.unregister(&self.ufrag);
    }
}

/// One session's view of the shared socket.
pub struct MuxedSocket {
    mux: Arc<UdpMux>,
    shared: Arc<SharedSocket>,
    /// The address the session's own (unused) socket had: the session keys its candidate by it.
    nominal: SocketAddr,
    rx: Mutex<Queues>,
    tx: Inbound,
    ufrag: Mutex<Option<String>>,
}

/// A session's two inbound queues, both ends.
fn session_queues(inbound: InboundMedia) -> (Inbound, Queues) {
    let (control_tx, control) = mpsc::channel(CONTROL_QUEUE);
    let (media_tx, media) = mpsc::channel(inbound.capacity());
    let stale = inbound.stale_after();
    let rtcp = RtcpSlot::default();
    (Inbound { control: control_tx, media: media_tx, stale, rtcp }, Queues { control, media, stale })
}

struct Queues {
    control: mpsc::Receiver<Datagram>,
    media: mpsc::Receiver<Datagram>,
    /// A viewer's feedback goes stale; a publisher's media is never dropped for waiting.
    stale: Option<Duration>,
}

impl Queues {
    /// The next datagram, STUN and DTLS first; stale RTP/RTCP is dropped on the way.
    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Datagram>> {
        if let Poll::Ready(Some(d)) = self.control.poll_recv(cx) {
            return Poll::Ready(Some(d));
        }
        loop {
            match self.media.poll_recv(cx) {
                Poll::Ready(Some(d)) if self.stale.is_some_and(|s| d.at.elapsed() > s) => {
                    crate::metrics::global().webrtc_datagrams_shed.fetch_add(1, Ordering::Relaxed);
                }
                other => return other,
            }
        }
    }
}

impl fmt::Debug for MuxedSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MuxedSocket").field("nominal", &self.nominal).field("ufrag", &self.ufrag).finish()
    }
}

impl MuxedSocket {
    /// Starts taking the datagrams of the session whose local ICE ufrag this is.
    fn attach(&self, ufrag: &str) {
        *self.ufrag.lock() = Some(ufrag.to_owned());
        self.mux.routes.lock().by_ufrag.insert(ufrag.to_owned(), Target::Queued(self.tx.clone()));
    }
}

impl Drop for MuxedSocket {
    fn drop(&mut self) {
        if let Some(u) = self.ufrag.lock().take() {
            self.mux.unregister(&u);
        }
    }
}

impl AsyncUdpSocket for MuxedSocket {
    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.nominal)
    }

    fn poll_send(&self, _cx: &mut Context<'_>, t: &Transmit<'_>) -> Poll<io::Result<usize>> {
        Poll::Ready(self.shared.send_to(t.contents, t.destination))
    }

    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        let (Some(buf), Some(m)) = (bufs.first_mut(), meta.first_mut()) else { return Poll::Ready(Ok(0)) };
        match self.rx.lock().poll_next(cx) {
            Poll::Ready(Some(Datagram { data, from, .. })) => {
                let n = data.len().min(buf.len());
                buf[..n].copy_from_slice(&data[..n]);
                let mut r = RecvMeta::default();
                r.addr = from;
                r.len = n;
                r.stride = n.max(1);
                r.dst_ip = Some(self.nominal.ip());
                *m = r;
                Poll::Ready(Ok(1))
            }
            Poll::Ready(None) => Poll::Ready(Err(io::Error::other("UDP mux closed"))),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// The runtime of one muxed session: tokio's for everything, except that its UDP socket is a `MuxedSocket`.
pub struct MuxRuntime {
    inner: Arc<dyn Runtime>,
    mux: Arc<UdpMux>,
    inbound: InboundMedia,
    socket: Mutex<Option<Arc<MuxedSocket>>>,
}

impl fmt::Debug for MuxRuntime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MuxRuntime").field("mux", &self.mux).finish()
    }
}

/// Why a session could not be put on the shared port.
#[derive(Debug, thiserror::Error)]
pub enum MuxError {
    #[error("the session bound no UDP socket")]
    NoSocket,
    #[error("the answer has no ICE ufrag")]
    NoUfrag,
}

impl MuxRuntime {
    pub fn new(mux: Arc<UdpMux>, inbound: InboundMedia) -> io::Result<Arc<Self>> {
        let inner = webrtc::runtime::default_runtime().ok_or_else(|| io::Error::other("no async runtime"))?;
        Ok(Arc::new(Self { inner, mux, inbound, socket: Mutex::new(None) }))
    }

    /// The shared socket, for a session that sends its media itself.
    pub fn shared_socket(&self) -> io::Result<Arc<SharedSocket>> {
        self.mux.socket()
    }

    /// Where to put a reader of the session's RTCP (`None` before its socket exists).
    pub fn rtcp_slot(&self) -> Option<RtcpSlot> {
        self.socket.lock().as_ref().map(|s| s.tx.rtcp.clone())
    }

    /// After the answer: routes the session's datagrams to it and returns the answer with the shared port.
    pub fn attach(&self, sdp: &str) -> Result<String, MuxError> {
        let socket = self.socket.lock().clone().ok_or(MuxError::NoSocket)?;
        let ufrag = sdp_ufrag(sdp).ok_or(MuxError::NoUfrag)?;
        socket.attach(ufrag);
        Ok(rewrite_candidate_port(sdp, socket.nominal.ip(), socket.nominal.port(), self.mux.addr.port()))
    }
}

impl Runtime for MuxRuntime {
    fn spawn(&self, future: Pin<Box<dyn Future<Output = ()> + Send>>) -> Box<dyn JoinHandle> {
        self.inner.spawn(future)
    }
    /// A session's driver (webrtc-rs asks for a "dedicated reactor" when the builder is given a pool size)
    /// runs on the control lane.
    fn spawn_reactor(&self, _n: usize, future: Pin<Box<dyn Future<Output = ()> + Send>>) -> Box<dyn JoinHandle> {
        Box::new(ControlTask(self.mux.control.handle.spawn(future)))
    }
    fn wrap_udp_socket(&self, socket: std::net::UdpSocket) -> io::Result<Arc<dyn AsyncUdpSocket>> {
        // The session's own socket only lends its address; everything goes through the shared one.
        let nominal = socket.local_addr()?;
        let (tx, rx) = session_queues(self.inbound);
        let s = Arc::new(MuxedSocket {
            mux: self.mux.clone(),
            shared: self.mux.socket()?,
            nominal,
            rx: Mutex::new(rx),
            tx,
            ufrag: Mutex::new(None),
        });
        *self.socket.lock() = Some(s.clone());
        Ok(s)
    }
    fn wrap_tcp_listener(&self, l: std::net::TcpListener) -> io::Result<Arc<dyn AsyncTcpListener>> {
        self.inner.wrap_tcp_listener(l)
    }
    fn connect_tcp<'a>(
        &'a self,
        remote: SocketAddr,
    ) -> Pin<Box<dyn Future<Output = io::Result<Arc<dyn AsyncTcpStream>>> + Send + 'a>> {
        self.inner.connect_tcp(remote)
    }
    fn resolve_host<'a>(
        &'a self,
        host: &'a str,
    ) -> Pin<Box<dyn Future<Output = io::Result<Vec<SocketAddr>>> + Send + 'a>> {
        self.inner.resolve_host(host)
    }
    fn now(&self) -> Instant {
        self.inner.now()
    }
    fn sleep(&self, d: Duration) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>> {
        self.inner.sleep(d)
    }
    fn interval(&self, period: Duration) -> Box<dyn AsyncInterval> {
        self.inner.interval(period)
    }
    fn block_on(&self, future: Pin<Box<dyn Future<Output = ()> + '_>>) {
        self.inner.block_on(future)
    }
    fn yield_now(&self) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>> {
        self.inner.yield_now()
    }
    fn name(&self) -> &'static str {
        "livegate-udp-mux"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding_request(username: &str) -> Vec<u8> {
        let mut attrs = vec![0x80, 0x22, 0, 4, b't', b'e', b's', b't']; // SOFTWARE first
        attrs.extend_from_slice(&[0x00, 0x06]);
        attrs.extend_from_slice(&(username.len() as u16).to_be_bytes());
        attrs.extend_from_slice(username.as_bytes());
        while attrs.len() % 4 != 0 {
            attrs.push(0);
        }
        let mut p = vec![0x00, 0x01];
        p.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
        p.extend_from_slice(&[0x21, 0x12, 0xA4, 0x42]);
        p.extend_from_slice(&[7; 12]);
        p.extend_from_slice(&attrs);
        p
    }

    #[test]
    fn finds_the_username_of_a_binding_request() {
        assert_eq!(stun_username(&binding_request("srvU:cliU")), Some("srvU:cliU"));
        // Not STUN (an RTP packet), a response, or truncated: nothing.
        assert_eq!(stun_username(&[0x80, 0x60, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0]), None);
        let mut resp = binding_request("a:b");
        resp[0..2].copy_from_slice(&[0x01, 0x01]);
        assert_eq!(stun_username(&resp), None);
        let p = binding_request("srvU:cliU");
        assert_eq!(stun_username(&p[..26]), None);
    }

    /// What the session's queues hold now, in the order the session reads it.
    fn drain(q: &mut Queues) -> Vec<Vec<u8>> {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut out = Vec::new();
        while let Poll::Ready(Some(d)) = q.poll_next(&mut cx) {
            out.push(d.data);
        }
        out
    }

    /// A mux with one session registered under `ufrag`, and that session's queues.
    fn one_session(ufrag: &str, inbound: InboundMedia) -> (Arc<UdpMux>, Queues) {
        let mux = UdpMux::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let (tx, q) = session_queues(inbound);
        mux.routes.lock().by_ufrag.insert(ufrag.into(), Target::Queued(tx));
        (mux, q)
    }

    const RR: [u8; 8] = [0x81, 201, 0, 1, 0, 0, 0, 1];
    const NACK: [u8; 8] = [0x81, 205, 0, 1, 0, 0, 0, 1];
    const DTLS: [u8; 4] = [22, 0xfe, 0xfd, 0];

    #[test]
    fn a_viewers_stale_rtcp_is_shed_and_stun_and_dtls_go_first() {
        let (mux, mut q) = one_session("srvU", InboundMedia::Feedback);
        let peer: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let now = Instant::now();
        let long_ago = now - Duration::from_secs(1);
        let stun = binding_request("srvU:cliU");
        mux.route(&stun, peer, now);
        mux.route(&RR, peer, now);
        // Waited a second in the socket: the NACK is shed, STUN and DTLS never are.
        mux.route(&NACK, peer, long_ago);
        mux.route(&stun, peer, long_ago);
        mux.route(&DTLS, peer, long_ago);
        assert_eq!(drain(&mut q), vec![stun.clone(), stun, DTLS.to_vec(), RR.to_vec()]);
        // An address that never sent a binding request for a session gets nothing through.
        mux.route(&RR, "127.0.0.1:5001".parse().unwrap(), now);
        assert!(drain(&mut q).is_empty());
    }

    #[test]
    fn a_session_gets_a_bounded_number_of_addresses() {
        let (mux, mut q) = one_session("srvU", InboundMedia::Feedback);
        let now = Instant::now();
        let stun = binding_request("srvU:cliU");
        for port in 6000..6000 + 2 * ADDRS_PER_SESSION as u16 {
            let from = SocketAddr::from(([127, 0, 0, 1], port));
            mux.route(&stun, from, now);
            mux.route(&DTLS, from, now);
        }
        // Every check reached the session; only the first addresses' DTLS did.
        let got = drain(&mut q);
        assert_eq!(got.iter().filter(|d| **d == stun).count(), 2 * ADDRS_PER_SESSION);
        assert_eq!(got.iter().filter(|d| d[..] == DTLS[..]).count(), ADDRS_PER_SESSION);
        assert_eq!(mux.routes.lock().by_addr.len(), ADDRS_PER_SESSION);
        mux.unregister("srvU");
        let r = mux.routes.lock();
        assert!(r.by_addr.is_empty() && r.addrs.is_empty());
    }

    #[test]
    fn a_publishers_media_is_never_shed_for_waiting() {
        let (mux, mut q) = one_session("pubU", InboundMedia::Media);
        let peer: SocketAddr = "127.0.0.1:5002".parse().unwrap();
        let long_ago = Instant::now() - Duration::from_secs(1);
        let rtp = [0x80, 96, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1];
        mux.route(&binding_request("pubU:cliU"), peer, long_ago);
        mux.route(&rtp, peer, long_ago);
        assert_eq!(drain(&mut q).len(), 2);
    }

    #[test]
    fn demultiplexes_by_first_byte() {
        assert_eq!(Lane::of(&binding_request("a:b")), Lane::Control);
        assert_eq!(Lane::of(&DTLS), Lane::Control);
        assert_eq!(Lane::of(&RR), Lane::Media);
        assert_eq!(Lane::of(&[]), Lane::Media);
    }

    #[test]
    fn rewrites_only_the_host_candidate_port() {
        let sdp = "a=ice-ufrag:abcd\r\na=candidate:1 1 udp 2130706431 127.0.0.1 40000 typ host\r\n";
        assert_eq!(sdp_ufrag(sdp), Some("abcd"));
        let out = rewrite_candidate_port(sdp, "127.0.0.1".parse().unwrap(), 40000, 8443);
        assert!(out.contains("127.0.0.1 8443 typ host") && !out.contains("40000"), "{out}");
    }

    proptest::proptest! {
        #[test]
        fn never_panics_on_garbage(p in proptest::collection::vec(0u8..=255, 0..200)) {
            let _ = stun_username(&p);
        }
    }
}
