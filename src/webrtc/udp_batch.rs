//! Many datagrams to many peers in one system call (`sendmmsg`, with UDP segmentation offload for a peer's
//! consecutive datagrams), never waiting: what a full socket buffer
//! refuses is dropped and counted, and the caller sheds load (a viewer skips to the next keyframe) instead of
//! queueing it.

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};

use super::media_out::Datagrams;

/// What became of a batch.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Sent {
    pub sent: usize,
    /// Refused by a full socket buffer (or an error): never sent.
    pub dropped: usize,
}

/// The most messages one call takes (the kernel's UIO_MAXIOV is 1024).
const MAX_PER_CALL: usize = 128;

/// The most datagrams one GSO message carries (the kernel's UDP_MAX_SEGMENTS), and its most bytes (a UDP
/// datagram's largest payload, which the kernel's segmentation starts from).
const MAX_SEGMENTS: usize = 64;
const MAX_GSO_BYTES: usize = 65_000;

/// Whether the socket's segmentation offload (UDP_SEGMENT) is used: on until the kernel refuses it once
/// (a kernel before 4.18, or an egress device without checksum offload), then off for the process.
static GSO: AtomicBool = AtomicBool::new(true);

/// Datagrams `first..end` of a batch, consecutive in its buffer and for one peer, sent as one message: with
/// segmentation offload (`segment` > 0) the kernel cuts the message into datagrams of `segment` bytes (the
/// last may be shorter), so a viewer's whole frame costs the network stack one pass instead of one per packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Run {
    first: usize,
    end: usize,
    segment: usize,
}

/// The run that starts at datagram `first`: as many of the same peer's datagrams as one message can carry
/// (all the size of the first but the last, which may be shorter), or just `first` without offload.
fn run_at(ends: &[usize], owner: impl Fn(usize) -> usize, first: usize, gso: bool) -> Run {
    let len = |i: usize| ends[i] - start_of(ends, i);
    let size = len(first);
    let mut end = first + 1;
    if gso {
        let mut bytes = size;
        while end < ends.len()
            && end - first < MAX_SEGMENTS
            && owner(end) == owner(first)
            && len(end) <= size
            && bytes + len(end) <= MAX_GSO_BYTES
        {
            bytes += len(end);
            end += 1;
            // A shorter datagram can only be a message's last.
            if len(end - 1) < size {
                break;
            }
        }
    }
    Run { first, end, segment: if end - first > 1 { size } else { 0 } }
}

/// Where datagram `i` starts in its buffer.
fn start_of(ends: &[usize], i: usize) -> usize {
    if i == 0 {
        0
    } else {
        ends[i - 1]
    }
}

/// Sends `d` to `to` on `socket` with as few system calls as it takes.
pub fn send(socket: &impl AsRawFd, to: SocketAddr, d: &Datagrams) -> Sent {
    let mut out = Sent::default();
    for_each_refused(socket, d, &[socket2::SockAddr::from(to)], |_| 0, |_| out.dropped += 1);
    out.sent = d.len() - out.dropped;
    out
}

/// Sends datagram `i` of `d` to `peers[owner(i)]`, all of them with as few system calls as it takes (one
/// `sendmmsg` for up to 128 messages, whoever they are for; a message carries up to 64 consecutive datagrams
/// for one peer with segmentation offload); calls `refused(i)` for each one not sent.
pub fn for_each_refused(
    socket: &impl AsRawFd,
    d: &Datagrams,
    peers: &[socket2::SockAddr],
    owner: impl Fn(usize) -> usize + Copy,
    mut refused: impl FnMut(usize),
) {
    let fd = socket.as_raw_fd();
    let mut runs: Vec<Run> = Vec::with_capacity(MAX_PER_CALL);
    let mut next = 0;
    while next < d.len() {
        let gso = GSO.load(Ordering::Relaxed);
        runs.clear();
        let mut at = next;
        while at < d.len() && runs.len() < MAX_PER_CALL {
            let r = run_at(&d.ends, owner, at, gso);
            at = r.end;
            runs.push(r);
        }
        // Straight to the socket, not through tokio's readiness (which only learns of writability after a
        // send has once waited): MSG_DONTWAIT makes a full buffer an EAGAIN, which is what sheds load here.
        match sendmmsg(fd, d, &runs, |r| &peers[owner(r.first)]) {
            Ok(0) => {
                (runs[0].first..runs[0].end).for_each(&mut refused);
                next = runs[0].end;
            }
            Ok(n) => next = runs[n - 1].end,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                (next..d.len()).for_each(&mut refused);
                return;
            }
            Err(e) if runs[0].segment > 0 && matches!(e.raw_os_error(), Some(libc::EIO | libc::EINVAL)) => {
                // The kernel cannot segment here: every message from now on carries one datagram.
                if GSO.swap(false, Ordering::Relaxed) {
                    tracing::warn!(error = %e, "UDP segmentation offload refused: WebRTC media goes one datagram per message");
                }
            }
            Err(e) => {
                // An error belongs to the first message of the call (a refused peer's ICMP, say): skip it.
                tracing::trace!(error = %e, "a WebRTC datagram was not sent");
                (runs[0].first..runs[0].end).for_each(&mut refused);
                next = runs[0].end;
            }
        }
    }
}

/// Marks the socket's IPv4 datagrams "don't fragment" without taking path-MTU errors (`IP_PMTUDISC_PROBE`):
/// RTP is cut below any path's MTU anyway, and a datagram the kernel may fragment needs a fresh IP
/// identification for each one sent (`__ip_select_ident`, ~5 % of livegate's CPU at 250 viewers).
pub fn dont_fragment(socket: &impl AsRawFd) {
    let set = |level, name, value: libc::c_int| {
        // SAFETY: a c_int option value, its size given; the kernel copies it.
        unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                level,
                name,
                &value as *const libc::c_int as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        }
    };
    // One of the two applies (the socket is IPv4 or IPv6); the other's error says so.
    set(libc::IPPROTO_IP, libc::IP_MTU_DISCOVER, libc::IP_PMTUDISC_PROBE);
    set(libc::IPPROTO_IPV6, libc::IPV6_MTU_DISCOVER, libc::IPV6_PMTUDISC_PROBE);
}

fn sendmmsg<'a>(
    fd: i32,
    d: &Datagrams,
    runs: &[Run],
    addr: impl Fn(&Run) -> &'a socket2::SockAddr,
) -> io::Result<usize> {
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<u16>() as u32) } as usize;
    // u64s: a control message must be aligned like its header.
    let mut control = vec![0u64; runs.len() * space.div_ceil(8)];
    let mut iovs: Vec<libc::iovec> = runs
        .iter()
        .map(|r| {
            let bytes = &d.buf[start_of(&d.ends, r.first)..d.ends[r.end - 1]];
            libc::iovec { iov_base: bytes.as_ptr() as *mut libc::c_void, iov_len: bytes.len() }
        })
        .collect();
    let mut hdrs: Vec<libc::mmsghdr> = Vec::with_capacity(runs.len());
    for (i, (r, iov)) in runs.iter().zip(iovs.iter_mut()).enumerate() {
        let to = addr(r);
        // SAFETY: mmsghdr is plain old data; all-zero is a valid empty header.
        let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
        h.msg_hdr.msg_name = to.as_ptr() as *mut libc::c_void;
        h.msg_hdr.msg_namelen = to.len();
        h.msg_hdr.msg_iov = iov;
        h.msg_hdr.msg_iovlen = 1;
        if r.segment > 0 {
            let words = space.div_ceil(8);
            h.msg_hdr.msg_control = control[i * words..].as_mut_ptr() as *mut libc::c_void;
            h.msg_hdr.msg_controllen = space as _;
            // SAFETY: the header points at `space` zeroed, aligned bytes of `control` that it alone uses;
            // CMSG_FIRSTHDR/CMSG_DATA stay inside them (one control message of a u16).
            unsafe {
                let c = libc::CMSG_FIRSTHDR(&h.msg_hdr);
                (*c).cmsg_level = libc::SOL_UDP;
                (*c).cmsg_type = libc::UDP_SEGMENT;
                (*c).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<u16>() as u32) as _;
                std::ptr::write_unaligned(libc::CMSG_DATA(c) as *mut u16, r.segment as u16);
            }
        }
        hdrs.push(h);
    }
    // SAFETY: every header points at one live iovec, the iovecs at live slices of `d`, the names at live
    // addresses and the control messages at live memory, all outliving the call; the kernel only reads them
    // (and writes msg_len, in memory we own).
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
        for_each_refused(&tx, &d, &peers, |i| owners[i], |_| refused += 1);
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

    fn ends(sizes: &[usize]) -> Vec<usize> {
        sizes.iter().scan(0, |at, n| Some(std::mem::replace(at, *at + n) + n)).collect()
    }

    #[test]
    fn a_message_carries_one_peers_equal_datagrams_and_a_shorter_last() {
        let e = ends(&[1200, 1200, 1200, 700, 1200, 1200, 90, 1200]);
        assert_eq!(run_at(&e, |_| 0, 0, true), Run { first: 0, end: 4, segment: 1200 }, "ends after the shorter");
        assert_eq!(run_at(&e, |_| 0, 4, true), Run { first: 4, end: 7, segment: 1200 });
        assert_eq!(run_at(&e, |_| 0, 7, true), Run { first: 7, end: 8, segment: 0 }, "one datagram: no offload");
        assert_eq!(run_at(&e, |_| 0, 0, false), Run { first: 0, end: 1, segment: 0 }, "without offload");
        let e = ends(&[500, 600, 600]);
        assert_eq!(run_at(&e, |_| 0, 0, true).end, 1, "a longer datagram starts a new message");
        let e = ends(&[1200; 4]);
        assert_eq!(run_at(&e, |i| [0, 0, 1, 1][i], 0, true).end, 2, "another peer's starts a new message");
        let e = ends(&[1200; 200]);
        assert_eq!(run_at(&e, |_| 0, 0, true).end, 54, "at most 65,000 bytes");
        let e = ends(&[100; 200]);
        assert_eq!(run_at(&e, |_| 0, 0, true).end, MAX_SEGMENTS, "at most 64 datagrams");
    }

    /// What a viewer gets from an offloaded message: each datagram on its own, whole and in order, however
    /// the batch interleaves peers and sizes.
    #[tokio::test]
    async fn offloaded_messages_arrive_as_the_datagrams_they_carry() {
        let tx = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let rx: Vec<_> = (0..2).map(|_| std::net::UdpSocket::bind("127.0.0.1:0").unwrap()).collect();
        let peers: Vec<_> = rx.iter().map(|r| socket2::SockAddr::from(r.local_addr().unwrap())).collect();
        let mut d = Datagrams::default();
        let mut owners = Vec::new();
        let mut want: [Vec<Vec<u8>>; 2] = Default::default();
        let mut n = 0u8;
        for (peer, sizes) in [(0, vec![1200; 70]), (1, vec![1200, 1200, 333]), (0, vec![80]), (1, vec![1200; 5])] {
            for size in sizes {
                let bytes: Vec<u8> = (0..size).map(|i| n.wrapping_add(i as u8)).collect();
                d.buf.extend_from_slice(&bytes);
                d.ends.push(d.buf.len());
                owners.push(peer);
                want[peer].push(bytes);
                n = n.wrapping_add(1);
            }
        }
        let mut refused = 0;
        for_each_refused(&tx, &d, &peers, |i| owners[i], |_| refused += 1);
        assert_eq!(refused, 0);
        assert!(GSO.load(Ordering::Relaxed), "the kernel took the offload (loopback has it since Linux 4.18)");
        for (k, r) in rx.iter().enumerate() {
            r.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
            let mut buf = [0u8; 65536];
            for (i, w) in want[k].iter().enumerate() {
                let got = r.recv(&mut buf).unwrap();
                assert_eq!(&buf[..got], &w[..], "peer {k}, datagram {i}");
            }
        }
    }

    #[test]
    fn datagrams_are_marked_dont_fragment() {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let get = |s: &std::net::UdpSocket| {
            let mut v: libc::c_int = -1;
            let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
            // SAFETY: a c_int out-value and its size.
            let r = unsafe {
                libc::getsockopt(
                    s.as_raw_fd(),
                    libc::IPPROTO_IP,
                    libc::IP_MTU_DISCOVER,
                    &mut v as *mut libc::c_int as *mut libc::c_void,
                    &mut len,
                )
            };
            assert_eq!(r, 0);
            v
        };
        assert_ne!(get(&s), libc::IP_PMTUDISC_PROBE);
        dont_fragment(&s);
        assert_eq!(get(&s), libc::IP_PMTUDISC_PROBE);
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
