//! Many datagrams in one system call (`recvmmsg`), each with how long it waited in the socket's queue (the
//! kernel's receive timestamp). The shared WebRTC port reads everything through here: when its thread falls
//! behind, the age tells it which RTCP is stale and can be dropped unread, so STUN and DTLS behind it are
//! not delayed by work that no longer matters.

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Datagrams one call reads.
const BATCH: usize = 32;
/// Room for one datagram: larger than any this port is sent (an MTU), so none is truncated unnoticed.
const SLOT: usize = 2048;

/// One datagram of a batch.
pub struct Received<'a> {
    pub data: &'a [u8],
    pub from: SocketAddr,
    /// How long it waited between the kernel receiving it and this read (zero when the kernel gave no time).
    pub waited: Duration,
}

/// The buffers of a receive batch, reused for every call.
pub struct RecvBatch {
    bufs: Vec<u8>,
    names: Vec<libc::sockaddr_storage>,
    /// Bytes of each name the kernel wrote.
    name_lens: Vec<libc::socklen_t>,
    /// Control messages, in u64s: a control message must be aligned like its header.
    control: Vec<u64>,
    lens: Vec<usize>,
    /// Bytes of control messages the kernel wrote for each datagram.
    control_lens: Vec<usize>,
    flags: Vec<i32>,
    n: usize,
}

fn control_words() -> usize {
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<libc::timespec>() as u32) } as usize;
    space.div_ceil(8)
}

impl Default for RecvBatch {
    fn default() -> Self {
        Self {
            bufs: vec![0; BATCH * SLOT],
            // SAFETY: sockaddr_storage is plain old data; all-zero is valid.
            names: vec![unsafe { std::mem::zeroed() }; BATCH],
            name_lens: vec![0; BATCH],
            control: vec![0; BATCH * control_words()],
            lens: vec![0; BATCH],
            control_lens: vec![0; BATCH],
            flags: vec![0; BATCH],
            n: 0,
        }
    }
}

/// Asks the kernel to stamp each datagram with its arrival time (SO_TIMESTAMPNS). Without it, ages read as
/// zero and nothing is dropped for waiting.
pub fn stamp_arrivals(socket: &impl AsRawFd) -> io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: a c_int option value, its size given; the kernel copies it.
    let r = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_TIMESTAMPNS,
            &on as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

impl RecvBatch {
    /// Reads what the socket has, up to a batch, without waiting (`WouldBlock` when there is nothing).
    pub fn recv(&mut self, socket: &impl AsRawFd) -> io::Result<usize> {
        let words = control_words();
        let mut iovs: Vec<libc::iovec> = self
            .bufs
            .chunks_mut(SLOT)
            .map(|b| libc::iovec { iov_base: b.as_mut_ptr() as *mut libc::c_void, iov_len: b.len() })
            .collect();
        let mut hdrs: Vec<libc::mmsghdr> = Vec::with_capacity(BATCH);
        for (i, iov) in iovs.iter_mut().enumerate() {
            // SAFETY: mmsghdr is plain old data; all-zero is a valid empty header.
            let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
            h.msg_hdr.msg_name = &mut self.names[i] as *mut libc::sockaddr_storage as *mut libc::c_void;
            h.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_hdr.msg_iov = iov;
            h.msg_hdr.msg_iovlen = 1;
            h.msg_hdr.msg_control = self.control[i * words..].as_mut_ptr() as *mut libc::c_void;
            h.msg_hdr.msg_controllen = (words * 8) as _;
            hdrs.push(h);
        }
        // SAFETY: every header points at its own slot of `bufs`, name and control space, all owned by `self`
        // and outliving the call; the kernel writes within the lengths given.
        let n = unsafe {
            libc::recvmmsg(
                socket.as_raw_fd(),
                hdrs.as_mut_ptr(),
                BATCH as u32,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            self.n = 0;
            return Err(io::Error::last_os_error());
        }
        self.n = n as usize;
        for (i, h) in hdrs.iter().take(self.n).enumerate() {
            self.lens[i] = h.msg_len as usize;
            self.name_lens[i] = h.msg_hdr.msg_namelen;
            self.flags[i] = h.msg_hdr.msg_flags;
            // socklen_t-sized on musl, usize on glibc.
            #[allow(clippy::unnecessary_cast)]
            let control_len = h.msg_hdr.msg_controllen as usize;
            self.control_lens[i] = control_len.min(words * 8);
        }
        Ok(self.n)
    }

    /// The datagrams of the last read, with their ages at `now`. Truncated ones (larger than a slot) and
    /// ones from an address family this port does not serve are left out.
    pub fn datagrams(&self, now: SystemTime) -> impl Iterator<Item = Received<'_>> {
        let words = control_words();
        (0..self.n).filter_map(move |i| {
            if self.flags[i] & libc::MSG_TRUNC != 0 {
                return None;
            }
            // SAFETY: the kernel wrote this address and its length; both describe a sockaddr of its family.
            let from = unsafe { socket2::SockAddr::new(self.names[i], self.name_lens[i]) }.as_socket()?;
            let waited = arrival(&self.control[i * words..][..words], self.control_lens[i])
                .and_then(|t| now.duration_since(t).ok())
                .unwrap_or_default();
            Some(Received { data: &self.bufs[i * SLOT..][..self.lens[i]], from, waited })
        })
    }
}

/// The SCM_TIMESTAMPNS of a datagram's control messages.
fn arrival(control: &[u64], len: usize) -> Option<SystemTime> {
    // SAFETY: msghdr is plain old data; this one only frames `control` for the CMSG_* walk below.
    let mut h: libc::msghdr = unsafe { std::mem::zeroed() };
    h.msg_control = control.as_ptr() as *mut libc::c_void;
    h.msg_controllen = len.min(std::mem::size_of_val(control)) as _;
    // SAFETY: CMSG_FIRSTHDR/CMSG_NXTHDR stay inside the `len` bytes the kernel wrote (they check against
    // msg_controllen).
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&h);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_TIMESTAMPNS {
                let ts = std::ptr::read_unaligned(libc::CMSG_DATA(c) as *const libc::timespec);
                return Some(UNIX_EPOCH + Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32));
            }
            c = libc::CMSG_NXTHDR(&h, c);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_batch_with_senders_and_arrival_ages() {
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        stamp_arrivals(&rx).unwrap();
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        for i in 0..40u8 {
            tx.send_to(&[i; 100], rx.local_addr().unwrap()).unwrap();
        }
        let mut b = RecvBatch::default();
        let mut got = Vec::new();
        // Loopback delivers before send_to returns: both batches are there.
        while got.len() < 40 {
            b.recv(&rx).unwrap();
            let later = SystemTime::now() + Duration::from_secs(5);
            for d in b.datagrams(later) {
                assert_eq!(d.from, tx.local_addr().unwrap());
                assert_eq!(d.data.len(), 100);
                // Read "5 s later": the kernel's stamp is what the age is measured from.
                assert!(d.waited >= Duration::from_secs(5), "{:?}", d.waited);
                got.push(d.data[0]);
            }
        }
        assert_eq!(got, (0..40).collect::<Vec<u8>>());
        assert_eq!(b.recv(&rx).unwrap_err().kind(), io::ErrorKind::WouldBlock);
    }

    #[test]
    fn without_stamps_a_datagram_has_not_waited() {
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        tx.send_to(b"x", rx.local_addr().unwrap()).unwrap();
        let mut b = RecvBatch::default();
        assert_eq!(b.recv(&rx).unwrap(), 1);
        let d: Vec<_> = b.datagrams(SystemTime::now() + Duration::from_secs(5)).collect();
        assert_eq!((d.len(), d[0].waited, d[0].data), (1, Duration::ZERO, &b"x"[..]));
    }

    #[test]
    fn a_datagram_larger_than_a_slot_is_left_out() {
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        tx.send_to(&[0; SLOT + 1], rx.local_addr().unwrap()).unwrap();
        tx.send_to(b"ok", rx.local_addr().unwrap()).unwrap();
        let mut b = RecvBatch::default();
        assert_eq!(b.recv(&rx).unwrap(), 2);
        let d: Vec<_> = b.datagrams(SystemTime::now()).map(|d| d.data.to_vec()).collect();
        assert_eq!(d, vec![b"ok".to_vec()]);
    }
}
