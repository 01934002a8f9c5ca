//! Outbound RTMP chunking: a message split into chunks of the connection's chunk size.
//!
//! Pure and shared: the hub serializes a frame's chunks once for every RTMP reader (`hub::packet`), and the
//! RTMP session writes its control messages with the same function. Outbound media always uses a type-0 header
//! on its first chunk, so a message serialized once is valid on any connection with the same chunk size.
//! The reading half (reassembly) is `rtmp::chunk`.

use bytes::BufMut;

fn put_basic_header(out: &mut Vec<u8>, fmt: u8, csid: u32) {
    match csid {
        2..=63 => out.push((fmt << 6) | csid as u8),
        64..=319 => {
            out.push(fmt << 6);
            out.push((csid - 64) as u8);
        }
        _ => {
            out.push((fmt << 6) | 1);
            let v = csid - 64;
            out.push(v as u8);
            out.push((v >> 8) as u8);
        }
    }
}

/// Appends one message, split into chunks of `chunk_size`, to `out`. The body may come in pieces (for example
/// an FLV codec prefix and the shared payload) so that no intermediate copy is needed.
pub fn encode_message(
    out: &mut Vec<u8>,
    chunk_size: u32,
    csid: u32,
    timestamp: u32,
    type_id: u8,
    stream_id: u32,
    body: &[&[u8]],
) {
    let len: usize = body.iter().map(|p| p.len()).sum();
    let extended = timestamp >= 0xFF_FFFF;
    let chunk_size = chunk_size.max(1) as usize;
    out.reserve(len + 16 + (len / chunk_size) * 5);
    put_basic_header(out, 0, csid);
    let ts = if extended { 0xFF_FFFF } else { timestamp };
    out.extend_from_slice(&ts.to_be_bytes()[1..]);
    out.extend_from_slice(&(len as u32).to_be_bytes()[1..]);
    out.push(type_id);
    out.extend_from_slice(&stream_id.to_le_bytes());
    if extended {
        out.put_u32(timestamp);
    }
    let mut in_chunk = 0usize;
    for piece in body {
        let mut p: &[u8] = piece;
        while !p.is_empty() {
            if in_chunk == chunk_size {
                put_basic_header(out, 3, csid);
                if extended {
                    out.put_u32(timestamp);
                }
                in_chunk = 0;
            }
            let n = p.len().min(chunk_size - in_chunk);
            out.extend_from_slice(&p[..n]);
            in_chunk += n;
            p = &p[n..];
        }
    }
}
