//! A frame as it sits in a stream's ring, with each egress format's serialization built at most once.

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use bytes::Bytes;

use crate::media::rtmp_chunk as chunk;
use crate::media::{flv, Frame, MediaKind};

/// Outbound RTMP chunk size for every connection livegate serves. One fixed value is what lets one chunked
/// serialization of a frame serve every RTMP reader.
pub const RTMP_OUT_CHUNK_SIZE: u32 = 60_000;
/// The message stream id livegate hands out from `createStream` (one media stream per connection).
pub const RTMP_MEDIA_STREAM_ID: u32 = 1;
const CSID_AUDIO: u32 = 4;
const CSID_VIDEO: u32 = 6;
const CSID_DATA: u32 = 5;

#[derive(Debug)]
pub struct Packet {
    pub seq: u64,
    /// The publish session (hub generation) the frame came from: recorders start a new file when it changes.
    pub session: u64,
    pub frame: Frame,
    /// A placeholder frame livegate made while the publisher sent no video (recordings may leave it out).
    pub filler: bool,
    /// When ingest handed the frame to the hub; egress measures added latency from here.
    pub received: Instant,
    flv: OnceLock<Bytes>,
    rtmp: OnceLock<Bytes>,
    rtp: OnceLock<Vec<Bytes>>,
    sei: OnceLock<Vec<String>>,
}

impl Packet {
    pub fn new(seq: u64, frame: Frame, received: Instant) -> Arc<Self> {
        Self::with_session(seq, 0, frame, received)
    }

    pub fn with_session(seq: u64, session: u64, frame: Frame, received: Instant) -> Arc<Self> {
        Self::build(seq, session, frame, received, false)
    }

    pub fn build(seq: u64, session: u64, frame: Frame, received: Instant, filler: bool) -> Arc<Self> {
        Arc::new(Self {
            seq,
            session,
            frame,
            filler,
            received,
            flv: OnceLock::new(),
            rtmp: OnceLock::new(),
            rtp: OnceLock::new(),
            sei: OnceLock::new(),
        })
    }

    /// Codec configuration or stream metadata: what a joining reader must receive before media.
    pub fn is_header(&self) -> bool {
        self.frame.config
    }

    /// The complete FLV tag, shared by every HTTP-FLV reader (and recorder).
    pub fn flv_tag(&self) -> &Bytes {
        self.flv.get_or_init(|| flv::build_tag(&self.frame))
    }

    /// The complete chunked RTMP message, shared by every RTMP reader.
    pub fn rtmp_chunks(&self) -> &Bytes {
        self.rtmp.get_or_init(|| {
            let f = &self.frame;
            let (prefix, plen) = flv::body_prefix(f);
            let csid = match f.kind {
                MediaKind::Audio => CSID_AUDIO,
                MediaKind::Video => CSID_VIDEO,
                MediaKind::Data => CSID_DATA,
            };
            let mut out = Vec::new();
            chunk::encode_message(
                &mut out,
                RTMP_OUT_CHUNK_SIZE,
                csid,
                f.dts as u32,
                flv::tag_type(f),
                RTMP_MEDIA_STREAM_ID,
                &[&prefix[..plen], &f.payload],
            );
            Bytes::from(out)
        })
    }
}

impl Packet {
    /// RTP payloads of the frame, packetized once and shared by every WebRTC viewer (each viewer adds only
    /// its own 12-byte headers). `build` runs for the first viewer only; every viewer of a stream uses the
    /// same codec configuration and MTU, so the result is the same for all.
    pub fn rtp_payloads(&self, build: impl FnOnce(&Frame) -> Vec<Bytes>) -> &[Bytes] {
        self.rtp.get_or_init(|| build(&self.frame))
    }

    /// The frame's SEI messages as the texts WebRTC viewers receive on their `sei` data channel, built once
    /// for all of them (by the first viewer that has the channel open).
    pub fn sei_texts(&self, build: impl FnOnce(&Frame) -> Vec<String>) -> &[String] {
        self.sei.get_or_init(|| build(&self.frame))
    }
}

/// The headers a reader needs before media: the newest metadata, video and audio decoder configuration.
#[derive(Debug, Default, Clone)]
pub struct HeaderSet {
    pub data: Option<Arc<Packet>>,
    pub video: Option<Arc<Packet>>,
    pub audio: Option<Arc<Packet>>,
}

impl HeaderSet {
    pub fn has_video(&self) -> bool {
        self.video.is_some()
    }

    pub fn has_audio(&self) -> bool {
        self.audio.is_some()
    }

    /// The header of `kind`'s track.
    pub fn get(&self, kind: MediaKind) -> Option<&Arc<Packet>> {
        match kind {
            MediaKind::Data => self.data.as_ref(),
            MediaKind::Video => self.video.as_ref(),
            MediaKind::Audio => self.audio.as_ref(),
        }
    }

    /// Where a header of `kind` goes.
    pub fn slot_mut(&mut self, kind: MediaKind) -> &mut Option<Arc<Packet>> {
        match kind {
            MediaKind::Data => &mut self.data,
            MediaKind::Video => &mut self.video,
            MediaKind::Audio => &mut self.audio,
        }
    }

    /// The headers present, in the order a joining reader is sent them: metadata, video, audio.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Packet>> {
        [&self.data, &self.video, &self.audio].into_iter().flatten()
    }
}
