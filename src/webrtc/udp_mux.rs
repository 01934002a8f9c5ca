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
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::mpsc;
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

type Datagram = (Vec<u8>, SocketAddr);

/// Send and receive buffer asked for on the shared socket.
const SOCKET_BUFFER: usize = 8 << 20;

#[derive(Default)]
struct Routes {
    by_ufrag: HashMap<String, mpsc::Sender<Datagram>>,
    by_addr: HashMap<SocketAddr, String>,
}

/// The shared socket and who gets what arrives on it.
pub struct UdpMux {
    std: Mutex<Option<std::net::UdpSocket>>,
    socket: OnceLock<Arc<tokio::net::UdpSocket>>,
    pub addr: SocketAddr,
    routes: Mutex<Routes>,
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
        Ok(Arc::new(Self { std: Mutex::new(Some(std)), socket: OnceLock::new(), addr, routes: Default::default() }))
    }

    /// The tokio socket, and its receive loop, started on first use (inside the runtime).
    fn socket(self: &Arc<Self>) -> io::Result<Arc<tokio::net::UdpSocket>> {
        if let Some(s) = self.socket.get() {
            return Ok(s.clone());
        }
        let Some(std) = self.std.lock().take() else {
            return self.socket.get().cloned().ok_or_else(|| io::Error::other("UDP mux not ready"));
        };
        let s = Arc::new(tokio::net::UdpSocket::from_std(std)?);
        let _ = self.socket.set(s.clone());
        let this = self.clone();
        let rx = s.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 2048];
            loop {
                match rx.recv_from(&mut buf).await {
                    Ok((n, from)) => this.route(&buf[..n], from),
                    Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => continue,
                    Err(e) => {
                        tracing::warn!(error = %e, "WebRTC UDP mux socket failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        });
        Ok(s)
    }

    fn route(&self, p: &[u8], from: SocketAddr) {
        let mut routes = self.routes.lock();
        let ufrag = match routes.by_addr.get(&from) {
            Some(u) => u.clone(),
            None => {
                let Some(ufrag) = stun_username(p).and_then(|u| u.split(':').next()) else { return };
                if !routes.by_ufrag.contains_key(ufrag) {
                    return;
                }
                routes.by_addr.insert(from, ufrag.to_owned());
                ufrag.to_owned()
            }
        };
        if let Some(tx) = routes.by_ufrag.get(&ufrag) {
            // A session that does not keep up loses datagrams, as a full socket buffer would.
            let _ = tx.try_send((p.to_vec(), from));
        }
    }

    fn unregister(&self, ufrag: &str) {
        let mut routes = self.routes.lock();
        routes.by_ufrag.remove(ufrag);
        routes.by_addr.retain(|_, u| u != ufrag);
    }
}

/// One session's view of the shared socket.
pub struct MuxedSocket {
    mux: Arc<UdpMux>,
    shared: Arc<tokio::net::UdpSocket>,
    /// The address the session's own (unused) socket had: the session keys its candidate by it.
    nominal: SocketAddr,
    rx: Mutex<mpsc::Receiver<Datagram>>,
    tx: mpsc::Sender<Datagram>,
    ufrag: Mutex<Option<String>>,
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
        self.mux.routes.lock().by_ufrag.insert(ufrag.to_owned(), self.tx.clone());
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

    fn poll_send(&self, cx: &mut Context<'_>, t: &Transmit<'_>) -> Poll<io::Result<usize>> {
        self.shared.poll_send_to(cx, t.contents, t.destination)
    }

    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        let (Some(buf), Some(m)) = (bufs.first_mut(), meta.first_mut()) else { return Poll::Ready(Ok(0)) };
        match self.rx.lock().poll_recv(cx) {
            Poll::Ready(Some((data, from))) => {
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
    pub fn new(mux: Arc<UdpMux>) -> io::Result<Arc<Self>> {
        let inner = webrtc::runtime::default_runtime().ok_or_else(|| io::Error::other("no async runtime"))?;
        Ok(Arc::new(Self { inner, mux, socket: Mutex::new(None) }))
    }

    /// The shared socket, for a session that sends its media itself.
    pub fn shared_socket(&self) -> io::Result<Arc<tokio::net::UdpSocket>> {
        self.mux.socket()
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
    fn spawn_reactor(&self, n: usize, future: Pin<Box<dyn Future<Output = ()> + Send>>) -> Box<dyn JoinHandle> {
        self.inner.spawn_reactor(n, future)
    }
    fn wrap_udp_socket(&self, socket: std::net::UdpSocket) -> io::Result<Arc<dyn AsyncUdpSocket>> {
        // The session's own socket only lends its address; everything goes through the shared one.
        let nominal = socket.local_addr()?;
        let (tx, rx) = mpsc::channel(1024);
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
