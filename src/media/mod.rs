//! The one media model every ingest produces and every egress reads (ARCHITECTURE invariant 1).

pub mod aac;
pub mod amf0;
pub mod audio_es;
pub mod avc;
pub mod flv;
pub mod hevc;
pub mod mp4;
pub mod rtmp_chunk;
pub mod sei;
pub mod ts;
pub mod ts_demux;

use bytes::Bytes;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MediaKind {
    Audio,
    Video,
    /// Script data such as `onMetaData`.
    Data,
}

/// Codec of a track, as far as the hub needs to know it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    H264,
    /// H.265/HEVC: length-prefixed NAL units, the `hvcC` record as its configuration. Arrives as Enhanced RTMP
    /// (`hvc1`) or as FLV codec id 12; leaves FLV/RTMP as Enhanced RTMP.
    H265,
    Aac,
    /// An audio codec carried through untouched (MP3, G.711, Speex ...). The FLV sound byte is kept so FLV
    /// egress can rebuild the tag exactly.
    OtherAudio {
        flv_sound_byte: u8,
    },
    /// Opus (WebRTC audio, made by the AAC→Opus rendition). FLV cannot carry it.
    Opus,
    /// VP8 (WebRTC video for browsers without H.264, made by the H.264→VP8 rendition): whole frames, no
    /// configuration record. FLV cannot carry it.
    Vp8,
    /// Script data (AMF0).
    Amf0,
}

impl Codec {
    pub fn name(&self) -> &'static str {
        match self {
            Codec::H264 => "H264",
            Codec::H265 => "H265",
            Codec::Aac => "AAC",
            Codec::OtherAudio { flv_sound_byte } => match flv_sound_byte >> 4 {
                2 | 14 => "MP3",
                7 => "PCMA",
                8 => "PCMU",
                11 => "Speex",
                _ => "audio",
            },
            Codec::Opus => "Opus",
            Codec::Vp8 => "VP8",
            Codec::Amf0 => "AMF0",
        }
    }

    /// MP3 as FLV carries it (sound format 2, or 14 for 8 kHz).
    pub fn is_mp3(&self) -> bool {
        matches!(self, Codec::OtherAudio { flv_sound_byte } if matches!(flv_sound_byte >> 4, 2 | 14))
    }
}

/// One access unit (or codec configuration) on the stream's timeline.
///
/// `payload` is codec-level data: AVCC length-prefixed NAL units for H.264 (the AVC decoder configuration
/// record when `config` is set), raw AAC frames (the AudioSpecificConfig when `config` is set), AMF0 bytes for
/// script data. Container framing (FLV tags, RTMP chunks) is added by each egress format, once per frame.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    pub kind: MediaKind,
    pub codec: Codec,
    /// Decode timestamp in milliseconds on the stream's continuous timeline.
    pub dts: i64,
    /// Composition offset (pts - dts) in milliseconds; non-zero means B-frames.
    pub cts: i32,
    pub keyframe: bool,
    /// Codec configuration (sequence header) rather than media.
    pub config: bool,
    pub payload: Bytes,
}

impl Frame {
    /// A codec configuration (sequence header) frame; its timestamp is set when it is published.
    pub fn config(kind: MediaKind, codec: Codec, payload: Bytes) -> Self {
        Self { kind, codec, dts: 0, cts: 0, keyframe: false, config: true, payload }
    }

    pub fn pts(&self) -> i64 {
        self.dts + self.cts as i64
    }
}
