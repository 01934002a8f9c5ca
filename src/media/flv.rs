//! FLV: tag bodies <-> frames, tag and file-header building, and an incremental FLV stream parser.
//!
//! RTMP carries media as FLV tag bodies, so the same code turns RTMP messages into frames and frames back into
//! HTTP-FLV tags or RTMP message bodies.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::{hevc, Codec, Frame, MediaKind};

pub const TAG_AUDIO: u8 = 8;
pub const TAG_VIDEO: u8 = 9;
pub const TAG_SCRIPT: u8 = 18;
/// Largest tag body FLV can describe (24-bit size).
pub const MAX_TAG_BODY: usize = 0xFF_FFFF;

const VIDEO_CODEC_AVC: u8 = 7;
/// HEVC as Chinese CDNs and encoders sent it before Enhanced RTMP.
const VIDEO_CODEC_HEVC: u8 = 12;
/// Enhanced RTMP video packet types.
const ENH_SEQUENCE_START: u8 = 0;
const ENH_CODED_FRAMES: u8 = 1;
const ENH_CODED_FRAMES_X: u8 = 3;
const SOUND_FORMAT_AAC: u8 = 10;
/// The one sound byte every AAC tag carries: format 10, 44 kHz, 16 bit, stereo (players ignore the rest).
const AAC_SOUND_BYTE: u8 = 0xAF;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FlvError {
    #[error("empty {0} tag body")]
    Empty(&'static str),
    #[error("truncated AVC video tag ({0} bytes, need at least 5)")]
    TruncatedAvc(usize),
    #[error("truncated AAC audio tag ({0} bytes, need at least 2)")]
    TruncatedAac(usize),
    #[error("{name} video (FLV codec id {0}) is not supported", name = video_codec_name(*.0))]
    UnsupportedVideoCodec(u8),
    #[error("{name} video (Enhanced RTMP fourcc {fcc:?}) is not supported yet", name = fourcc_name(.0), fcc = String::from_utf8_lossy(.0))]
    EnhancedVideo([u8; 4]),
    #[error("Enhanced RTMP video packet type {0} (multitrack or a modifier) is not supported")]
    EnhancedPacket(u8),
    #[error("truncated Enhanced RTMP video tag ({0} bytes)")]
    TruncatedEnhanced(usize),
    #[error("invalid HEVC decoder configuration: {0}")]
    BadHevcConfig(String),
    #[error("not an FLV stream (signature {0:02x?})")]
    BadSignature([u8; 3]),
    #[error("FLV tag body of {0} bytes exceeds the limit")]
    TagTooLarge(usize),
}

/// What an FLV video codec id is (12 is HEVC as Chinese CDNs and encoders send it, before Enhanced RTMP).
fn video_codec_name(id: u8) -> &'static str {
    match id {
        2 => "Sorenson H.263",
        3 => "Screen video",
        4 => "On2 VP6",
        5 => "On2 VP6 with alpha",
        6 => "Screen video v2",
        13 => "AV1",
        _ => "Unknown",
    }
}

fn fourcc_name(f: &[u8; 4]) -> &'static str {
    match f {
        b"av01" => "AV1",
        b"vp09" => "VP9",
        _ => "This",
    }
}

/// Turns one FLV tag (or RTMP media message) body into a frame. `Ok(None)` for bodies that carry nothing a
/// player needs (AVC end-of-sequence, video info/command frames).
pub fn frame_from_tag(tag_type: u8, dts: i64, body: Bytes) -> Result<Option<Frame>, FlvError> {
    match tag_type {
        TAG_VIDEO => video_frame(dts, body),
        TAG_AUDIO => audio_frame(dts, body),
        TAG_SCRIPT => Ok(Some(Frame {
            kind: MediaKind::Data,
            codec: Codec::Amf0,
            dts,
            cts: 0,
            keyframe: false,
            config: false,
            payload: body,
        })),
        _ => Ok(None),
    }
}

fn video_frame(dts: i64, body: Bytes) -> Result<Option<Frame>, FlvError> {
    let first = *body.first().ok_or(FlvError::Empty("video"))?;
    if first & 0x80 != 0 {
        return enhanced_video_frame(dts, body);
    }
    let frame_type = first >> 4;
    let codec_id = first & 0x0F;
    if frame_type == 5 {
        return Ok(None);
    }
    let codec = match codec_id {
        VIDEO_CODEC_AVC => Codec::H264,
        VIDEO_CODEC_HEVC => Codec::H265,
        other => return Err(FlvError::UnsupportedVideoCodec(other)),
    };
    if body.len() < 5 {
        return Err(FlvError::TruncatedAvc(body.len()));
    }
    let packet_type = body[1];
    let cts = si24(&body[2..5]);
    let (config, keyframe) = match packet_type {
        0 => (true, false),
        1 => (false, frame_type == 1),
        _ => return Ok(None),
    };
    video(codec, dts, if config { 0 } else { cts }, keyframe, config, body.slice(5..))
}

/// A composition time: a signed 24-bit big-endian integer.
fn si24(b: &[u8]) -> i32 {
    let raw = ((b[0] as u32) << 16) | ((b[1] as u32) << 8) | b[2] as u32;
    ((raw << 8) as i32) >> 8
}

fn video(
    codec: Codec,
    dts: i64,
    cts: i32,
    keyframe: bool,
    config: bool,
    payload: Bytes,
) -> Result<Option<Frame>, FlvError> {
    if config && codec == Codec::H265 {
        // Checked at the door: every HEVC egress (MPEG-TS, MP4, the H.264 rendition) needs its parameter sets.
        hevc::HevcDecoderConfig::parse(&payload).map_err(|e| FlvError::BadHevcConfig(e.to_string()))?;
    }
    Ok(Some(Frame { kind: MediaKind::Video, codec, dts, cts, keyframe, config, payload }))
}

/// An Enhanced RTMP video tag (veovera enhanced-rtmp v1/v2): `1 | frame type (3) | packet type (4)`, a FourCC,
/// then the packet. H.265 (`hvc1`) and H.264 (`avc1`) are carried; the rest is refused by name.
fn enhanced_video_frame(dts: i64, body: Bytes) -> Result<Option<Frame>, FlvError> {
    let frame_type = (body[0] >> 4) & 0x07;
    let packet_type = body[0] & 0x0F;
    if body.len() < 5 {
        return Err(FlvError::TruncatedEnhanced(body.len()));
    }
    let mut fourcc = [0u8; 4];
    fourcc.copy_from_slice(&body[1..5]);
    let codec = match &fourcc {
        b"hvc1" => Codec::H265,
        b"avc1" => Codec::H264,
        _ => return Err(FlvError::EnhancedVideo(fourcc)),
    };
    if frame_type == 5 {
        return Ok(None); // a command frame (seek start/end): nothing a player decodes
    }
    let keyframe = frame_type == 1;
    match packet_type {
        ENH_SEQUENCE_START => video(codec, dts, 0, false, true, body.slice(5..)),
        ENH_CODED_FRAMES => {
            if body.len() < 8 {
                return Err(FlvError::TruncatedEnhanced(body.len()));
            }
            video(codec, dts, si24(&body[5..8]), keyframe, false, body.slice(8..))
        }
        ENH_CODED_FRAMES_X => video(codec, dts, 0, keyframe, false, body.slice(5..)),
        // End of sequence, HDR metadata, MPEG-2 TS sequence start: nothing a player needs.
        2 | 4 | 5 => Ok(None),
        other => Err(FlvError::EnhancedPacket(other)),
    }
}

fn audio_frame(dts: i64, body: Bytes) -> Result<Option<Frame>, FlvError> {
    let first = *body.first().ok_or(FlvError::Empty("audio"))?;
    if first >> 4 == SOUND_FORMAT_AAC {
        if body.len() < 2 {
            return Err(FlvError::TruncatedAac(body.len()));
        }
        return Ok(Some(Frame {
            kind: MediaKind::Audio,
            codec: Codec::Aac,
            dts,
            cts: 0,
            keyframe: false,
            config: body[1] == 0,
            payload: body.slice(2..),
        }));
    }
    Ok(Some(Frame {
        kind: MediaKind::Audio,
        codec: Codec::OtherAudio { flv_sound_byte: first },
        dts,
        cts: 0,
        keyframe: false,
        config: false,
        payload: body.slice(1..),
    }))
}

/// The FLV tag type for a frame.
pub fn tag_type(frame: &Frame) -> u8 {
    match frame.kind {
        MediaKind::Audio => TAG_AUDIO,
        MediaKind::Video => TAG_VIDEO,
        MediaKind::Data => TAG_SCRIPT,
    }
}

/// Longest codec header before a payload: Enhanced RTMP's byte, FourCC and composition time.
pub const MAX_BODY_PREFIX: usize = 8;

/// The codec header that precedes the payload in an FLV tag body (and an RTMP media message).
pub fn body_prefix(frame: &Frame) -> ([u8; MAX_BODY_PREFIX], usize) {
    let mut p = [0u8; MAX_BODY_PREFIX];
    match frame.codec {
        Codec::H264 => {
            let frame_type = if frame.keyframe || frame.config { 1 } else { 2 };
            p[0] = (frame_type << 4) | VIDEO_CODEC_AVC;
            p[1] = if frame.config { 0 } else { 1 };
            let cts = (frame.cts as u32) & 0xFF_FFFF;
            p[2] = (cts >> 16) as u8;
            p[3] = (cts >> 8) as u8;
            p[4] = cts as u8;
            (p, 5)
        }
        Codec::H265 => {
            // Enhanced RTMP, as OBS, ffmpeg 6.1+ and SRS 6 read it.
            let frame_type: u8 = if frame.keyframe || frame.config { 1 } else { 2 };
            let packet_type = if frame.config { ENH_SEQUENCE_START } else { ENH_CODED_FRAMES };
            p[0] = 0x80 | (frame_type << 4) | packet_type;
            p[1..5].copy_from_slice(b"hvc1");
            if frame.config {
                return (p, 5);
            }
            let cts = (frame.cts as u32) & 0xFF_FFFF;
            p[5] = (cts >> 16) as u8;
            p[6] = (cts >> 8) as u8;
            p[7] = cts as u8;
            (p, 8)
        }
        Codec::Aac => {
            p[0] = AAC_SOUND_BYTE;
            p[1] = if frame.config { 0 } else { 1 };
            (p, 2)
        }
        Codec::OtherAudio { flv_sound_byte } => {
            p[0] = flv_sound_byte;
            (p, 1)
        }
        // Not representable in classic FLV; renditions carrying it are never served as FLV/RTMP.
        Codec::Opus | Codec::Vp8 | Codec::Amf0 => (p, 0),
    }
}

/// Size of the tag body (prefix + payload) of a frame.
pub fn body_len(frame: &Frame) -> usize {
    body_prefix(frame).1 + frame.payload.len()
}

/// The 11-byte FLV tag header. FLV timestamps are 32-bit milliseconds (24 bits + an extension byte).
pub fn tag_header(tag_type: u8, body_len: usize, timestamp: u32) -> [u8; 11] {
    let n = body_len as u32;
    [
        tag_type,
        (n >> 16) as u8,
        (n >> 8) as u8,
        n as u8,
        (timestamp >> 16) as u8,
        (timestamp >> 8) as u8,
        timestamp as u8,
        (timestamp >> 24) as u8,
        0,
        0,
        0,
    ]
}

/// A complete FLV tag (header, body, PreviousTagSize) for one frame, in one buffer shared by every reader.
pub fn build_tag(frame: &Frame) -> Bytes {
    let (prefix, plen) = body_prefix(frame);
    let blen = plen + frame.payload.len();
    let mut out = BytesMut::with_capacity(11 + blen + 4);
    out.put_slice(&tag_header(tag_type(frame), blen, frame.dts as u32));
    out.put_slice(&prefix[..plen]);
    out.put_slice(&frame.payload);
    out.put_u32((11 + blen) as u32);
    out.freeze()
}

/// FLV file header plus PreviousTagSize0.
pub fn file_header(has_audio: bool, has_video: bool) -> [u8; 13] {
    let flags = (if has_audio { 4 } else { 0 }) | (if has_video { 1 } else { 0 });
    [b'F', b'L', b'V', 1, flags, 0, 0, 0, 9, 0, 0, 0, 0]
}

/// A tag read back from an FLV byte stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tag {
    pub tag_type: u8,
    pub timestamp: u32,
    pub body: Bytes,
}

/// Incremental FLV stream parser: feed bytes as they arrive, take tags as they complete.
#[derive(Debug, Default)]
pub struct FlvParser {
    buf: BytesMut,
    header_done: bool,
    pub has_audio: bool,
    pub has_video: bool,
}

impl FlvParser {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn feed(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Bytes fed and not yet returned as tags (a caller reading an untrusted stream bounds it).
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// The next complete tag, `Ok(None)` when more bytes are needed.
    pub fn next_tag(&mut self) -> Result<Option<Tag>, FlvError> {
        if !self.header_done {
            if self.buf.len() < 13 {
                return Ok(None);
            }
            if &self.buf[..3] != b"FLV" {
                return Err(FlvError::BadSignature([self.buf[0], self.buf[1], self.buf[2]]));
            }
            self.has_audio = self.buf[4] & 4 != 0;
            self.has_video = self.buf[4] & 1 != 0;
            let offset = u32::from_be_bytes([self.buf[5], self.buf[6], self.buf[7], self.buf[8]]) as usize;
            // DataOffset is normally 9; honour larger values but never trust it past what arrived.
            let skip = offset.max(9) + 4;
            if self.buf.len() < skip {
                return Ok(None);
            }
            self.buf.advance(skip);
            self.header_done = true;
        }
        if self.buf.len() < 11 {
            return Ok(None);
        }
        let size = ((self.buf[1] as usize) << 16) | ((self.buf[2] as usize) << 8) | self.buf[3] as usize;
        if self.buf.len() < 11 + size + 4 {
            return Ok(None);
        }
        let tag_type = self.buf[0] & 0x1F;
        let timestamp = ((self.buf[7] as u32) << 24)
            | ((self.buf[4] as u32) << 16)
            | ((self.buf[5] as u32) << 8)
            | self.buf[6] as u32;
        self.buf.advance(11);
        let body = self.buf.split_to(size).freeze();
        self.buf.advance(4);
        Ok(Some(Tag { tag_type, timestamp, body }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn avc(frame_type: u8, packet_type: u8, cts: i32, data: &[u8]) -> Bytes {
        let c = cts as u32;
        let mut v = vec![(frame_type << 4) | 7, packet_type, (c >> 16) as u8, (c >> 8) as u8, c as u8];
        v.extend_from_slice(data);
        Bytes::from(v)
    }

    #[test]
    fn video_keyframe_roundtrip() {
        let body = avc(1, 1, 80, &[0, 0, 0, 2, 0x65, 0x88]);
        let f = frame_from_tag(TAG_VIDEO, 1000, body.clone()).unwrap().unwrap();
        assert!(f.keyframe && !f.config);
        assert_eq!(f.cts, 80);
        assert_eq!(&f.payload[..], &[0, 0, 0, 2, 0x65, 0x88]);
        let tag = build_tag(&f);
        let mut p = FlvParser::new();
        p.feed(&file_header(true, true));
        p.feed(&tag);
        let t = p.next_tag().unwrap().unwrap();
        assert_eq!(t.tag_type, TAG_VIDEO);
        assert_eq!(t.timestamp, 1000);
        assert_eq!(t.body, body);
        assert!(p.next_tag().unwrap().is_none());
    }

    #[test]
    fn negative_composition_time_is_sign_extended() {
        let f = frame_from_tag(TAG_VIDEO, 0, avc(2, 1, -33, &[1])).unwrap().unwrap();
        assert_eq!(f.cts, -33);
        let (p, n) = body_prefix(&f);
        assert_eq!(&p[..n], &[0x27, 1, 0xFF, 0xFF, 0xDF]);
    }

    #[test]
    fn aac_config_and_raw() {
        let cfg = frame_from_tag(TAG_AUDIO, 0, Bytes::from_static(&[0xAF, 0, 0x12, 0x10])).unwrap().unwrap();
        assert!(cfg.config);
        assert_eq!(&cfg.payload[..], &[0x12, 0x10]);
        let raw = frame_from_tag(TAG_AUDIO, 23, Bytes::from_static(&[0xAF, 1, 0x21])).unwrap().unwrap();
        assert!(!raw.config);
        assert_eq!(build_tag(&raw).len(), 11 + 3 + 4);
    }

    #[test]
    fn extended_timestamp_in_tag_header() {
        let h = tag_header(TAG_AUDIO, 3, 0x1234_5678);
        assert_eq!(&h[4..8], &[0x34, 0x56, 0x78, 0x12]);
    }

    #[test]
    fn bad_bodies_are_errors_not_panics() {
        assert_eq!(frame_from_tag(TAG_VIDEO, 0, Bytes::new()), Err(FlvError::Empty("video")));
        assert_eq!(frame_from_tag(TAG_VIDEO, 0, Bytes::from_static(&[0x17, 1])), Err(FlvError::TruncatedAvc(2)));
        assert_eq!(
            frame_from_tag(TAG_VIDEO, 0, Bytes::from_static(&[0x12, 1])),
            Err(FlvError::UnsupportedVideoCodec(2))
        );
        assert_eq!(frame_from_tag(TAG_AUDIO, 0, Bytes::from_static(&[0xAF])), Err(FlvError::TruncatedAac(1)));
        assert!(frame_from_tag(TAG_VIDEO, 0, avc(1, 2, 0, &[])).unwrap().is_none());
    }

    /// The smallest `hvcC` that parses: a 2-byte VPS, SPS and PPS.
    fn hvcc() -> Vec<u8> {
        let mut r = vec![1u8];
        r.extend_from_slice(&[0; 20]);
        r.extend_from_slice(&[0x0F, 3]);
        for t in [32u8, 33, 34] {
            r.extend_from_slice(&[t, 0, 1, 0, 2, t << 1, 1]);
        }
        r
    }

    #[test]
    fn hevc_arrives_in_both_forms_and_leaves_as_enhanced_rtmp() {
        // Enhanced RTMP: sequence start, coded frames with a composition time, coded frames without one.
        let mut seq = vec![0x90, b'h', b'v', b'c', b'1'];
        seq.extend_from_slice(&hvcc());
        let cfg = frame_from_tag(TAG_VIDEO, 0, Bytes::from(seq.clone())).unwrap().unwrap();
        assert!(cfg.config && cfg.codec == Codec::H265);
        assert_eq!(&cfg.payload[..], &hvcc()[..]);
        let key =
            frame_from_tag(TAG_VIDEO, 40, Bytes::from_static(b"\x91hvc1\xff\xff\xdf\0\0\0\x01\x26")).unwrap().unwrap();
        assert!(key.keyframe && !key.config && key.codec == Codec::H265);
        assert_eq!((key.dts, key.cts), (40, -33));
        assert_eq!(&key.payload[..], b"\0\0\0\x01\x26");
        let inter = frame_from_tag(TAG_VIDEO, 80, Bytes::from_static(b"\xa3hvc1\0\0\0\x01\x02")).unwrap().unwrap();
        assert!(!inter.keyframe && inter.cts == 0 && &inter.payload[..] == b"\0\0\0\x01\x02");
        // Out: the same bytes back (coded frames always with their composition time).
        assert_eq!(&build_tag(&cfg)[11..11 + seq.len()], &seq[..]);
        let (p, n) = body_prefix(&key);
        assert_eq!(&p[..n], b"\x91hvc1\xff\xff\xdf");
        let (p, n) = body_prefix(&inter);
        assert_eq!(&p[..n], b"\xa1hvc1\0\0\0");
        // Legacy FLV codec id 12, laid out like AVC.
        let mut legacy = vec![0x1C, 0, 0, 0, 0];
        legacy.extend_from_slice(&hvcc());
        assert_eq!(frame_from_tag(TAG_VIDEO, 0, Bytes::from(legacy)).unwrap().unwrap(), cfg);
        let f =
            frame_from_tag(TAG_VIDEO, 40, Bytes::from_static(&[0x1C, 1, 0, 0, 40, 0, 0, 0, 1, 0x26])).unwrap().unwrap();
        assert!(f.keyframe && f.codec == Codec::H265 && f.cts == 40);
        // H.264 as Enhanced RTMP is plain H.264.
        let avc1 = frame_from_tag(TAG_VIDEO, 0, Bytes::from_static(b"\xa3avc1\0\0\0\x01\x41")).unwrap().unwrap();
        assert!(avc1.codec == Codec::H264 && !avc1.keyframe);
    }

    #[test]
    fn enhanced_rtmp_that_cannot_be_carried_is_refused_by_name() {
        let refused = |b: &'static [u8]| frame_from_tag(TAG_VIDEO, 0, Bytes::from_static(b)).unwrap_err().to_string();
        assert!(refused(b"\x90av01\x81").contains("AV1"), "{}", refused(b"\x90av01\x81"));
        assert!(refused(b"\x90vp09\x01").contains("VP9"));
        assert!(refused(b"\x96hvc1").contains("multitrack"));
        assert!(refused(b"\x91hvc1\0").contains("truncated"));
        // A sequence start without parameter sets: nothing downstream could decode the stream.
        assert!(refused(b"\x90hvc1\x01\0\0").contains("HEVC decoder configuration"));
        assert!(frame_from_tag(TAG_VIDEO, 0, Bytes::from_static(b"\xd0hvc1")).unwrap().is_none());
        assert!(frame_from_tag(TAG_VIDEO, 0, Bytes::from_static(b"\x92hvc1")).unwrap().is_none());
    }

    #[test]
    fn parser_rejects_non_flv() {
        let mut p = FlvParser::new();
        p.feed(b"HTTP/1.1 200 OK\r\n");
        assert!(matches!(p.next_tag(), Err(FlvError::BadSignature(_))));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]
        #[test]
        fn any_body_never_panics(t in 0u8..20, body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64)) {
            let _ = frame_from_tag(t, 0, Bytes::from(body));
        }

        #[test]
        fn parser_never_panics(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256)) {
            let mut p = FlvParser::new();
            p.feed(b"FLV\x01\x05\x00\x00\x00\x09\x00\x00\x00\x00");
            p.feed(&data);
            while let Ok(Some(_)) = p.next_tag() {}
        }
    }
}
