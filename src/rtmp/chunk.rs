//! RTMP chunk stream: reassembling inbound chunks into messages and splitting outbound messages into chunks.
//!
//! Sans-IO: the decoder takes bytes from a buffer and hands back whole messages; the encoder writes into a
//! `Vec<u8>`. Outbound media always uses a type-0 header on its first chunk, so a message serialized once is
//! valid on any connection that shares the outbound chunk size: that is what lets one serialization serve every
//! RTMP reader of a stream.

use std::collections::HashMap;

use bytes::{Buf, Bytes, BytesMut};

/// The writer lives with the media model: the hub serializes each frame's chunks once for every RTMP reader.
pub use crate::media::rtmp_chunk::encode_message;

/// Largest chunk size a peer may set; the spec allows 2^31-1 but nothing sane needs more than 16 MiB.
pub const MAX_CHUNK_SIZE: u32 = 16 * 1024 * 1024;
/// Largest message RTMP can describe (24-bit length).
pub const MAX_MESSAGE_LEN: u32 = 0xFF_FFFF;
/// How many chunk streams one connection may have open at once. Real clients use fewer than ten.
const MAX_CHUNK_STREAMS: usize = 64;
/// Bytes of unfinished messages a connection may hold across its chunk streams, unless the owner sets its own
/// limit ([`ChunkDecoder::set_max_pending`]): the session keeps it small until a publish is accepted.
pub const DEFAULT_MAX_PENDING: usize = 32 * 1024 * 1024;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChunkError {
    #[error("chunk size {0} is out of range (1..=16777216)")]
    BadChunkSize(u32),
    #[error("chunk stream {0} continues a message it never started")]
    NoPreviousHeader(u32),
    #[error("more than {MAX_CHUNK_STREAMS} chunk streams in use")]
    TooManyChunkStreams,
    #[error("message on chunk stream {csid} changed length mid-message ({was} -> {now})")]
    LengthChanged { csid: u32, was: u32, now: u32 },
    #[error("unfinished messages would hold {held} bytes, over this connection's limit of {limit}")]
    TooMuchPending { held: usize, limit: usize },
}

/// A complete RTMP message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub csid: u32,
    /// Message timestamp in milliseconds (wraps at 2^32).
    pub timestamp: u32,
    pub type_id: u8,
    pub stream_id: u32,
    pub payload: Bytes,
}

#[derive(Debug, Default)]
struct ChunkStream {
    timestamp: u32,
    /// The value fmt-3 chunks starting a new message add: the last delta, or the absolute timestamp after a
    /// type-0 header (what ffmpeg and SRS do for this unspecified case).
    delta: u32,
    length: u32,
    type_id: u8,
    stream_id: u32,
    extended: bool,
    has_header: bool,
    partial: Option<BytesMut>,
}

/// Reassembles messages from inbound chunks.
#[derive(Debug)]
pub struct ChunkDecoder {
    chunk_size: u32,
    streams: HashMap<u32, ChunkStream>,
    /// Announced bytes of the messages being reassembled (what a lying peer could make us hold).
    pending: usize,
    max_pending: usize,
}

impl Default for ChunkDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl ChunkDecoder {
    pub fn new() -> Self {
        Self { chunk_size: 128, streams: HashMap::new(), pending: 0, max_pending: DEFAULT_MAX_PENDING }
    }

    /// Limits the announced bytes of unfinished messages (every message must fit in it, too). A lower limit
    /// applies to messages that start after the call.
    pub fn set_max_pending(&mut self, bytes: usize) {
        self.max_pending = bytes;
    }

    /// Announced bytes of the messages being reassembled.
    pub fn pending(&self) -> usize {
        self.pending
    }

    pub fn chunk_size(&self) -> u32 {
        self.chunk_size
    }

    /// Applies the peer's Set Chunk Size. Must be called before decoding the chunks that follow it.
    pub fn set_chunk_size(&mut self, size: u32) -> Result<(), ChunkError> {
        if size == 0 || size > MAX_CHUNK_SIZE {
            return Err(ChunkError::BadChunkSize(size));
        }
        self.chunk_size = size;
        Ok(())
    }

    /// Consumes whole chunks from `buf` until a message completes (`Ok(Some)`) or `buf` holds only part of a
    /// chunk (`Ok(None)`; the partial chunk stays in `buf`).
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Message>, ChunkError> {
        loop {
            match self.decode_chunk(buf)? {
                Step::NeedMore => return Ok(None),
                Step::Chunk => continue,
                Step::Message(m) => return Ok(Some(m)),
            }
        }
    }

    fn decode_chunk(&mut self, buf: &mut BytesMut) -> Result<Step, ChunkError> {
        let b = &buf[..];
        let Some(&first) = b.first() else { return Ok(Step::NeedMore) };
        let fmt = first >> 6;
        let (csid, mut pos) = match first & 0x3F {
            0 => match b.get(1) {
                Some(&x) => (64 + x as u32, 2),
                None => return Ok(Step::NeedMore),
            },
            1 => match (b.get(1), b.get(2)) {
                (Some(&x), Some(&y)) => (64 + x as u32 + ((y as u32) << 8), 3),
                _ => return Ok(Step::NeedMore),
            },
            n => (n as u32, 1),
        };
        let header_len = [11usize, 7, 3, 0][fmt as usize];
        if b.len() < pos + header_len {
            return Ok(Step::NeedMore);
        }
        if !self.streams.contains_key(&csid) && self.streams.len() >= MAX_CHUNK_STREAMS {
            return Err(ChunkError::TooManyChunkStreams);
        }
        let prev = self.streams.get(&csid);
        if fmt != 0 && !prev.is_some_and(|p| p.has_header) {
            return Err(ChunkError::NoPreviousHeader(csid));
        }
        let h = &b[pos..pos + header_len];
        let u24 = |x: &[u8]| ((x[0] as u32) << 16) | ((x[1] as u32) << 8) | x[2] as u32;
        let ts_field = if fmt < 3 { Some(u24(&h[0..3])) } else { None };
        let (length, type_id) = if fmt < 2 { (Some(u24(&h[3..6])), Some(h[6])) } else { (None, None) };
        let stream_id = if fmt == 0 { Some(u32::from_le_bytes([h[7], h[8], h[9], h[10]])) } else { None };
        pos += header_len;

        let extended = match ts_field {
            Some(t) => t == 0xFF_FFFF,
            None => prev.is_some_and(|p| p.extended),
        };
        let ext_value = if extended {
            if b.len() < pos + 4 {
                return Ok(Step::NeedMore);
            }
            let v = u32::from_be_bytes([b[pos], b[pos + 1], b[pos + 2], b[pos + 3]]);
            pos += 4;
            Some(v)
        } else {
            None
        };

        // Everything the header says is known; work out how much payload this chunk carries.
        let in_progress = prev.and_then(|p| p.partial.as_ref()).map(|p| p.len() as u32);
        let msg_len = length.or(prev.map(|p| p.length)).unwrap_or(0);
        if let (Some(done), Some(new_len)) = (in_progress, length) {
            let was = prev.map(|p| p.length).unwrap_or(0);
            if new_len != was {
                return Err(ChunkError::LengthChanged { csid, was, now: new_len });
            }
            let _ = done;
        }
        // A new message is checked against the limit as soon as its header is in, before its first chunk
        // is waited for: the caller's input buffer would otherwise hold that chunk (up to the chunk size).
        if in_progress.is_none() && self.pending + msg_len as usize > self.max_pending {
            return Err(ChunkError::TooMuchPending { held: self.pending + msg_len as usize, limit: self.max_pending });
        }
        let already = in_progress.unwrap_or(0);
        let take = (msg_len - already).min(self.chunk_size) as usize;
        if b.len() < pos + take {
            return Ok(Step::NeedMore);
        }

        // Commit: the whole chunk is in the buffer.
        let cs = self.streams.entry(csid).or_default();
        let starting = cs.partial.is_none();
        if starting {
            let field = ext_value.or(ts_field);
            match fmt {
                0 => {
                    let t = field.unwrap_or(0);
                    cs.timestamp = t;
                    cs.delta = t;
                }
                1 | 2 => {
                    let d = field.unwrap_or(0);
                    cs.delta = d;
                    cs.timestamp = cs.timestamp.wrapping_add(d);
                }
                _ => {
                    // fmt 3 starting a message repeats the previous delta; an extended field overrides it.
                    if let Some(d) = ext_value {
                        cs.delta = d;
                    }
                    cs.timestamp = cs.timestamp.wrapping_add(cs.delta);
                }
            }
            if let Some(l) = length {
                cs.length = l;
            }
            if let Some(t) = type_id {
                cs.type_id = t;
            }
            if let Some(s) = stream_id {
                cs.stream_id = s;
            }
            if fmt < 3 {
                cs.extended = extended;
            }
            cs.has_header = true;
            self.pending += cs.length as usize;
            // Grow with the data rather than trusting the announced length up front.
            cs.partial = Some(BytesMut::with_capacity((cs.length as usize).min(1 << 20)));
        }
        buf.advance(pos);
        let data = buf.split_to(take);
        let partial = cs.partial.as_mut().expect("set above");
        partial.extend_from_slice(&data);
        if partial.len() as u32 >= cs.length {
            let payload = cs.partial.take().expect("set above").freeze();
            self.pending = self.pending.saturating_sub(cs.length as usize);
            return Ok(Step::Message(Message {
                csid,
                timestamp: cs.timestamp,
                type_id: cs.type_id,
                stream_id: cs.stream_id,
                payload,
            }));
        }
        Ok(Step::Chunk)
    }
}

enum Step {
    NeedMore,
    Chunk,
    Message(Message),
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BufMut;

    fn roundtrip(chunk_size: u32, ts: u32, len: usize) {
        let body: Vec<u8> = (0..len).map(|i| i as u8).collect();
        let mut wire = Vec::new();
        encode_message(&mut wire, chunk_size, 6, ts, 9, 1, &[&body[..len.min(5)], &body[len.min(5)..]]);
        encode_message(&mut wire, chunk_size, 4, ts.wrapping_add(1), 8, 1, &[b"ab"]);
        let mut d = ChunkDecoder::new();
        d.set_chunk_size(chunk_size).unwrap();
        // Feed byte by byte to exercise every partial-read path.
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for b in wire {
            buf.put_u8(b);
            while let Some(m) = d.decode(&mut buf).unwrap() {
                got.push(m);
            }
        }
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].payload, Bytes::from(body));
        assert_eq!(got[0].timestamp, ts);
        assert_eq!((got[0].type_id, got[0].stream_id, got[0].csid), (9, 1, 6));
        assert_eq!(got[1].timestamp, ts.wrapping_add(1));
    }

    #[test]
    fn roundtrips() {
        roundtrip(128, 0, 0);
        roundtrip(128, 40, 300);
        roundtrip(1, 7, 10);
        roundtrip(4096, 0xFF_FFFF, 10_000);
        roundtrip(60_000, 0xFFFF_FFF0, 70_000);
    }

    #[test]
    fn delta_headers_accumulate() {
        // fmt0 ts=100, then fmt1 delta=40, fmt2 delta=33, fmt3 (new message, repeats delta 33).
        let mut w = vec![0x04, 0, 0, 100, 0, 0, 1, 8, 1, 0, 0, 0, 0xAA];
        w.extend_from_slice(&[0x44, 0, 0, 40, 0, 0, 1, 8, 0xBB]);
        w.extend_from_slice(&[0x84, 0, 0, 33, 0xCC]);
        w.extend_from_slice(&[0xC4, 0xDD]);
        let mut d = ChunkDecoder::new();
        let mut buf = BytesMut::from(&w[..]);
        let ts: Vec<u32> = std::iter::from_fn(|| d.decode(&mut buf).unwrap()).map(|m| m.timestamp).collect();
        assert_eq!(ts, vec![100, 140, 173, 206]);
    }

    #[test]
    fn three_byte_csid() {
        let mut w = Vec::new();
        encode_message(&mut w, 128, 400, 5, 20, 0, &[b"hello"]);
        let mut d = ChunkDecoder::new();
        let m = d.decode(&mut BytesMut::from(&w[..])).unwrap().unwrap();
        assert_eq!(m.csid, 400);
    }

    #[test]
    fn bad_input() {
        let mut d = ChunkDecoder::new();
        assert_eq!(d.set_chunk_size(0), Err(ChunkError::BadChunkSize(0)));
        assert_eq!(d.set_chunk_size(MAX_CHUNK_SIZE + 1), Err(ChunkError::BadChunkSize(MAX_CHUNK_SIZE + 1)));
        let mut buf = BytesMut::from(&[0xC5u8, 1, 2][..]);
        assert_eq!(d.decode(&mut buf), Err(ChunkError::NoPreviousHeader(5)));
    }

    #[test]
    fn length_lies_are_bounded() {
        // Many chunk streams each announcing a 16 MiB message: refused long before memory runs away.
        let mut d = ChunkDecoder::new();
        let mut err = None;
        for csid in 3..40u8 {
            let mut buf = BytesMut::from(&[csid, 0, 0, 0, 0xFF, 0xFF, 0xFF, 9, 1, 0, 0, 0][..]);
            buf.extend_from_slice(&[0u8; 128]);
            if let Err(e) = d.decode(&mut buf) {
                err = Some(e);
                break;
            }
        }
        assert!(matches!(err, Some(ChunkError::TooMuchPending { limit: DEFAULT_MAX_PENDING, .. })));
    }

    #[test]
    fn pending_limit_is_the_owners() {
        // 64 KiB: one announced 100 KB message is refused at its first chunk; pending returns to 0 once a
        // message completes, so many small messages never add up.
        let mut d = ChunkDecoder::new();
        d.set_max_pending(64 * 1024);
        for _ in 0..1000 {
            let mut buf = BytesMut::from(&[3u8, 0, 0, 0, 0, 0, 100, 20, 0, 0, 0, 0][..]);
            buf.extend_from_slice(&[0u8; 100]);
            assert_eq!(d.decode(&mut buf).unwrap().unwrap().payload.len(), 100);
            assert_eq!(d.pending(), 0);
        }
        let mut buf = BytesMut::from(&[4u8, 0, 0, 0, 0x01, 0x86, 0xA0, 9, 1, 0, 0, 0][..]);
        buf.extend_from_slice(&[0u8; 128]);
        assert_eq!(d.decode(&mut buf), Err(ChunkError::TooMuchPending { held: 100_000, limit: 64 * 1024 }));
        // A raised limit takes the same message.
        let mut d = ChunkDecoder::new();
        d.set_max_pending(1 << 20);
        let mut buf = BytesMut::from(&[4u8, 0, 0, 0, 0x01, 0x86, 0xA0, 9, 1, 0, 0, 0][..]);
        buf.extend_from_slice(&[0u8; 128]);
        assert_eq!(d.decode(&mut buf), Ok(None));
        assert_eq!(d.pending(), 100_000);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]
        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512), cs in 1u32..300) {
            let mut d = ChunkDecoder::new();
            d.set_chunk_size(cs).unwrap();
            let mut buf = BytesMut::from(&data[..]);
            while let Ok(Some(_)) = d.decode(&mut buf) {}
        }

        #[test]
        fn encode_decode_any(len in 0usize..5000, cs in 1u32..2000, ts in proptest::prelude::any::<u32>()) {
            roundtrip(cs, ts, len);
        }
    }
}
