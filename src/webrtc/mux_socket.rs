//! The shared WebRTC UDP socket, watched by its reactor for reading only.
//!
//! A socket registered for writability too (as `tokio::net::UdpSocket` registers every socket) wakes its
//! reactor each time the kernel frees send-buffer space, and the fan-out frees some with every `sendmmsg`:
//! at 250 WHEP viewers that was ~4,700 wakes a second of the control thread, each a context switch (a
//! third of that thread's time), for a readiness nobody waits on. Sends never wait here anyway: the
//! fan-out sheds what a full buffer refuses (`udp_batch`), and the sessions' own STUN, DTLS and RTCP are
//! retransmitted by their protocols when a full buffer drops them, as the network may.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::Ordering;

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// A non-blocking UDP socket whose reactor hears only of datagrams to read.
#[derive(Debug)]
pub struct SharedSocket {
    fd: AsyncFd<std::net::UdpSocket>,
}

impl SharedSocket {
    /// Registers `socket` with the current tokio runtime's reactor, for reading only.
    pub fn new(socket: std::net::UdpSocket) -> io::Result<Self> {
        socket.set_nonblocking(true)?;
        // SAFETY: the descriptor is the socket's own, open for as long as the AsyncFd owns the socket, and
        // `as_raw_fd` of a std socket always returns that same descriptor.
        let fd = unsafe { AsyncFd::register_with_interest(socket, Interest::READABLE)? };
        Ok(Self { fd })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.fd.get_ref().local_addr()
    }

    /// Reads with `read` (a non-blocking read of the socket) once the reactor says there is something,
    /// until it has read something or failed otherwise than with `WouldBlock`.
    pub async fn read_with<T>(&self, mut read: impl FnMut(&std::net::UdpSocket) -> io::Result<T>) -> io::Result<T> {
        loop {
            let mut ready = self.fd.readable().await?;
            match ready.try_io(|s| read(s.get_ref())) {
                Ok(r) => return r,
                Err(_would_block) => continue,
            }
        }
    }

    /// Sends one datagram now. A full send buffer drops it (counted), as the network may: what goes this way
    /// is STUN, DTLS and RTCP, which their protocols retransmit.
    pub fn send_to(&self, buf: &[u8], to: SocketAddr) -> io::Result<usize> {
        match self.fd.get_ref().send_to(buf, to) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                crate::metrics::global().webrtc_control_datagrams_dropped.fetch_add(1, Ordering::Relaxed);
                Ok(buf.len())
            }
            r => r,
        }
    }
}

impl AsRawFd for SharedSocket {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reads_what_arrives_and_sends_without_waiting() {
        let s = SharedSocket::new(std::net::UdpSocket::bind("127.0.0.1:0").unwrap()).unwrap();
        let peer = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        peer.send_to(b"ping", s.local_addr().unwrap()).unwrap();
        let mut buf = [0u8; 16];
        let (n, from) = s.read_with(|u| u.recv_from(&mut buf)).await.unwrap();
        assert_eq!((&buf[..n], from), (&b"ping"[..], peer.local_addr().unwrap()));
        assert_eq!(s.send_to(b"pong", from).unwrap(), 4);
        let n = peer.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"pong");
    }
}
