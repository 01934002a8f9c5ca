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
