//! Many datagrams to one peer in one system call (`sendmmsg`), never waiting: what a full socket buffer
//! refuses is dropped and counted, and the caller sheds load (a viewer skips to the next keyframe) instead of
//! queueing it.

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;

use super::media_out::Datagrams;

/// What became of a batch.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Sent {
    pub sent: usize,
    /// Refused by a full socket buffer (or an error): never sent.
    pub dropped: usize,
}

/// The most datagrams one call takes (the kernel's UIO_MAXIOV is larger; a frame is far smaller).
const MAX_PER_CALL: usize = 64;

/// Sends `d` to `to` on `socket` with as few system calls as it takes.
pub fn send(socket: &tokio::net::UdpSocket, to: SocketAddr, d: &Datagrams) -> Sent {
    let owners = vec![0; d.len()];
    let mut out = Sent::default();
    for_each_refused(socket, d, &[socket2::SockAddr::from(to)], &owners, |_| out.dropped += 1);
    out.sent = d.len() - out.dropped;
    out
}

/// Sends datagram `i` of `d` to `peers[owners[i]]`, all of them with as few system calls as it takes (one
/// `sendmmsg` for up to 64 datagrams, whoever they are for); calls `refused(i)` for each one not sent.
pub fn for_each_refused(
    socket: &tokio::net::UdpSocket,
    d: &Datagrams,
    peers: &[socket2::SockAddr],
    owners: &[usize],
    mut refused: impl FnMut(usize),
) {
    let all: Vec<&[u8]> = d.iter().collect();
    let mut next = 0;
    while next < all.len() {
        let end = all.len().min(next + MAX_PER_CALL);
        // Straight to the socket, not through tokio's readiness (which only learns of writability after a
        // send has once waited): MSG_DONTWAIT makes a full buffer an EAGAIN, which is what sheds load here.
        match sendmmsg(socket.as_raw_fd(), &all[next..end], |i| &peers[owners[next + i]]) {
            Ok(0) => {
                refused(next);
                next += 1;
            }
            Ok(n) => next += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                (next..all.len()).for_each(&mut refused);
                return;
            }
            Err(e) => {
                // An error belongs to the first datagram of the call (a refused peer's ICMP, say): skip it.
                tracing::trace!(error = %e, "a WebRTC datagram was not sent");
                refused(next);
                next += 1;
            }
        }
    }
}

fn sendmmsg<'a>(fd: i32, datagrams: &[&[u8]], addr: impl Fn(usize) -> &'a socket2::SockAddr) -> io::Result<usize> {
    let mut iovs: Vec<libc::iovec> =
        datagrams.iter().map(|d| libc::iovec { iov_base: d.as_ptr() as *mut libc::c_void, iov_len: d.len() }).collect();
    let mut hdrs: Vec<libc::mmsghdr> = iovs
        .iter_mut()
        .enumerate()
        .map(|(i, iov)| {
            let to = addr(i);
            // SAFETY: mmsghdr is plain old data; all-zero is a valid empty header.
            let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
            h.msg_hdr.msg_name = to.as_ptr() as *mut libc::c_void;
            h.msg_hdr.msg_namelen = to.len();
            h.msg_hdr.msg_iov = iov;
            h.msg_hdr.msg_iovlen = 1;
            h
        })
        .collect();
    // SAFETY: every header points at one live iovec, the iovecs at live slices, and the names at live
    // addresses, all outliving the call; the kernel only reads them (and writes msg_len, in memory we own).
    let n = unsafe { libc::sendmmsg(fd, hdrs.as_mut_ptr(), hdrs.len() as libc::c_uint, libc::MSG_DONTWAIT) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_batch_arrives_whole_and_in_order() {
        let tx = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut d = Datagrams::default();
        for i in 0..100u8 {
            d.buf.extend(std::iter::repeat_n(i, 50 + usize::from(i)));
            d.ends.push(d.buf.len());
        }
        let r = send(&tx, rx.local_addr().unwrap(), &d);
        assert_eq!(r, Sent { sent: 100, dropped: 0 });
        let mut buf = [0u8; 2048];
        for i in 0..100u8 {
            let n = rx.recv(&mut buf).unwrap();
            assert_eq!(n, 50 + usize::from(i));
            assert!(buf[..n].iter().all(|&b| b == i));
        }
    }

    #[tokio::test]
    async fn one_batch_reaches_several_peers() {
        let tx = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let rx: Vec<_> = (0..3).map(|_| std::net::UdpSocket::bind("127.0.0.1:0").unwrap()).collect();
        let peers: Vec<_> = rx.iter().map(|r| socket2::SockAddr::from(r.local_addr().unwrap())).collect();
        let mut d = Datagrams::default();
        let mut owners = Vec::new();
        for i in 0..90u8 {
            d.buf.push(i);
            d.ends.push(d.buf.len());
            owners.push(usize::from(i) % 3);
        }
        let mut refused = 0;
        for_each_refused(&tx, &d, &peers, &owners, |_| refused += 1);
        assert_eq!(refused, 0);
        for (k, r) in rx.iter().enumerate() {
            let mut buf = [0u8; 16];
            let got: Vec<u8> = (0..30)
                .map(|_| {
                    let n = r.recv(&mut buf).unwrap();
                    assert_eq!(n, 1);
                    buf[0]
                })
                .collect();
            assert_eq!(got, (0..90u8).filter(|i| usize::from(*i) % 3 == k).collect::<Vec<_>>());
        }
    }

    #[tokio::test]
    async fn a_full_socket_buffer_drops_instead_of_waiting() {
        let tx = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        socket2::SockRef::from(&tx).set_send_buffer_size(4096).unwrap();
        // Nobody reads: the receiver's buffer fills, then the sender's.
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        socket2::SockRef::from(&rx).set_recv_buffer_size(4096).unwrap();
        let mut d = Datagrams::default();
        for _ in 0..2000 {
            d.buf.extend([0u8; 1200]);
            d.ends.push(d.buf.len());
        }
        let r = send(&tx, rx.local_addr().unwrap(), &d);
        assert_eq!(r.sent + r.dropped, 2000);
        // Loopback delivers synchronously; what the receiver could not take is dropped there, not here. What
        // this checks is that the call returned at all, having accounted for every datagram.
        assert!(r.sent > 0);
    }
}
