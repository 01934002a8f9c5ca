//! Batched socket writes: a batch of shared `Bytes` goes out in as few `writev` calls as the kernel allows.

use std::io::IoSlice;

use bytes::Bytes;
use tokio::io::{AsyncWrite, AsyncWriteExt};

/// iovecs per writev (Linux IOV_MAX is 1024).
const MAX_IOV: usize = 1024;

/// Writes every buffer in order, using vectored writes. Returns the number of bytes written.
pub async fn write_all_vectored<W: AsyncWrite + Unpin>(w: &mut W, bufs: &[Bytes]) -> std::io::Result<usize> {
    let total: usize = bufs.iter().map(|b| b.len()).sum();
    let mut idx = 0;
    let mut offset = 0;
    let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity(bufs.len().min(MAX_IOV));
    while idx < bufs.len() {
        slices.clear();
        slices.push(IoSlice::new(&bufs[idx][offset..]));
        for b in bufs[idx + 1..].iter().take(MAX_IOV - 1) {
            slices.push(IoSlice::new(b));
        }
        let mut n = w.write_vectored(&slices).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        while n > 0 && idx < bufs.len() {
            let left = bufs[idx].len() - offset;
            if n >= left {
                n -= left;
                idx += 1;
                offset = 0;
            } else {
                offset += n;
                n = 0;
            }
        }
        while idx < bufs.len() && bufs[idx].len() == offset {
            idx += 1;
            offset = 0;
        }
    }
    w.flush().await?;
    Ok(total)
}

/// Send buffer of a player's socket: about a second of a 1 Mbit/s stream. Anything larger only hides a
/// stalled player's backlog from the max_cache policy (and ~128 KiB still fills a 10 Mbit/s, 100 ms path).
pub const PLAYER_SEND_BUFFER: usize = 128 * 1024;

/// Sets the socket options every media connection wants: no Nagle delay (a keyframe must not wait 40 ms for
/// an ACK) and a bounded send buffer, so a stalled player's backlog stays in the hub's ring, where max_cache
/// can skip it, instead of piling up in the kernel.
pub fn tune_media_socket(s: &tokio::net::TcpStream, send_buffer: Option<usize>) {
    let _ = s.set_nodelay(true);
    if let Some(n) = send_buffer {
        let sock = socket2::SockRef::from(s);
        let _ = sock.set_send_buffer_size(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn writes_everything_in_order() {
        let bufs: Vec<Bytes> = (0..3000u32).map(|i| Bytes::from(vec![(i % 251) as u8; (i % 7) as usize])).collect();
        let mut out = Vec::new();
        let n = write_all_vectored(&mut out, &bufs).await.unwrap();
        let expect: Vec<u8> = bufs.iter().flat_map(|b| b.iter().copied()).collect();
        assert_eq!(n, expect.len());
        assert_eq!(out, expect);
    }
}

/// A TCP stream shared between its connection task and a stream's fan-out (which writes to it while the
/// player is parked, see `hub::fanout`). Both sides use only `&TcpStream` operations, so no split halves are
/// needed; which side may write is decided by the fan-out slot, never by this type.
#[derive(Debug, Clone)]
pub struct SharedStream(pub std::sync::Arc<tokio::net::TcpStream>);

impl tokio::io::AsyncRead for SharedStream {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::os::fd::AsRawFd;
        loop {
            std::task::ready!(self.0.poll_read_ready(cx))?;
            // Read into the buffer's uninitialized tail: zero-filling it first would touch every page of a
            // connection's 64 KiB read buffer, which is most of what an idle player costs in RSS.
            let fd = self.0.as_raw_fd();
            // SAFETY: `unfilled_mut` is only written by the kernel, and `assume_init` covers exactly the `n`
            // bytes it wrote.
            let r = self.0.try_io(tokio::io::Interest::READABLE, || unsafe {
                let dst = buf.unfilled_mut();
                let n = libc::recv(fd, dst.as_mut_ptr().cast(), dst.len(), libc::MSG_DONTWAIT);
                if n < 0 {
                    Err(std::io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            });
            match r {
                Ok(n) => {
                    // SAFETY: the kernel initialized these `n` bytes.
                    unsafe { buf.assume_init(n) };
                    buf.advance(n);
                    return std::task::Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => return std::task::Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for SharedStream {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        loop {
            std::task::ready!(self.0.poll_write_ready(cx))?;
            match self.0.try_write(buf) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                r => return std::task::Poll::Ready(r),
            }
        }
    }

    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        loop {
            std::task::ready!(self.0.poll_write_ready(cx))?;
            match self.0.try_write_vectored(bufs) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                r => return std::task::Poll::Ready(r),
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let r = socket2::SockRef::from(&*self.0).shutdown(std::net::Shutdown::Write);
        std::task::Poll::Ready(
            r.or_else(|e| if e.kind() == std::io::ErrorKind::NotConnected { Ok(()) } else { Err(e) }),
        )
    }
}

/// One non-blocking `sendmsg` of `bufs` on a connected socket, straight from the fan-out: no readiness
/// bookkeeping (a player whose socket is full is handed back to its task, which waits for writability the
/// usual way), no SIGPIPE, and none of the VFS layer `writev` goes through.
pub fn send_vectored_now(sock: &tokio::net::TcpStream, bufs: &[IoSlice<'_>]) -> std::io::Result<usize> {
    use std::os::fd::AsRawFd;
    // SAFETY: `IoSlice` is ABI-compatible with `iovec` on Unix; the msghdr only borrows `bufs` for the call.
    let n = unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = bufs.as_ptr() as *mut libc::iovec;
        msg.msg_iovlen = bufs.len() as _;
        libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
    };
    if n < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}
