//! AAC AudioSpecificConfig (ISO/IEC 14496-3 §1.6.2.1), the payload of an
//! FLV/RTMP AAC sequence header.
//!
//! Only the leading fields are interpreted. For HE-AAC (SBR, object type 5)
//! and HE-AACv2 (PS, 29) with explicit signalling, `sample_rate` is the core
//! rate written first; the extension rate that follows is not parsed, since
//! players derive it themselves and RTMP encoders almost always use implicit
//! signalling (plain AAC-LC config) anyway.

/// Samples an AAC encoder emits before the first input sample (FFmpeg's `aac`, behind avenc_aac, and fdk-aac
/// both prime with 1024). FLV has no edit list to skip them, so whoever encodes AAC for the hub stamps its
/// frames that much earlier to keep lip-sync.
pub const ENCODER_PRIMING_SAMPLES: i64 = 1024;

use thiserror::Error;

/// Sampling frequencies for indices 0..=12; 13 and 14 are reserved and 15
/// means an explicit 24-bit rate follows.
pub const SAMPLE_RATES: [u32; 13] =
    [96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350];

const ESCAPE_OBJECT_TYPE: u8 = 31;
const EXPLICIT_FREQUENCY: u8 = 15;

#[derive(Debug, Error, PartialEq)]
pub enum AacError {
    #[error("AudioSpecificConfig truncated")]
    Truncated,
    #[error("reserved AAC sampling frequency index {0}")]
    ReservedFrequencyIndex(u8),
    #[error("AAC object type 0 is invalid")]
    NullObjectType,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AudioSpecificConfig {
    /// Audio object type: 2 = AAC-LC, 5 = SBR, 29 = PS; values 32..=95 come
    /// from the escape form (31 itself is the escape code, not a type).
    pub object_type: u8,
    pub sample_rate: u32,
    /// Channel configuration; 0 means the layout is in a program config
    /// element rather than here.
    pub channels: u8,
    pub frequency_index: u8,
}

impl AudioSpecificConfig {
    pub fn parse(b: &[u8]) -> Result<Self, AacError> {
        let mut r = BitReader { data: b, pos: 0 };
        let mut object_type = r.bits(5)? as u8;
        if object_type == ESCAPE_OBJECT_TYPE {
            object_type = 32 + r.bits(6)? as u8;
        }
        if object_type == 0 {
            return Err(AacError::NullObjectType);
        }
        let frequency_index = r.bits(4)? as u8;
        let sample_rate = match frequency_index {
            EXPLICIT_FREQUENCY => r.bits(24)?,
            i => *SAMPLE_RATES.get(usize::from(i)).ok_or(AacError::ReservedFrequencyIndex(i))?,
        };
        let channels = r.bits(4)? as u8;
        Ok(Self { object_type, sample_rate, channels, frequency_index })
    }

    /// Builds a config for a sample rate, choosing the table index when the
    /// rate is standard and the explicit form otherwise.
    pub fn new(object_type: u8, sample_rate: u32, channels: u8) -> Self {
        let frequency_index =
            SAMPLE_RATES.iter().position(|&r| r == sample_rate).map_or(EXPLICIT_FREQUENCY, |i| i as u8);
        Self { object_type, sample_rate, channels, frequency_index }
    }

    /// Serialises with a GASpecificConfig of three zero bits (1024-sample
    /// frames, no core coder, no extension), which is what every RTMP encoder
    /// sends for AAC-LC. A reserved or out-of-range `frequency_index` is
    /// written as the explicit form so the output always parses; fields too
    /// wide for their bit slots are masked.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = BitWriter::default();
        if self.object_type >= ESCAPE_OBJECT_TYPE {
            w.bits(u32::from(ESCAPE_OBJECT_TYPE), 5);
            w.bits(u32::from(self.object_type.saturating_sub(32)), 6);
        } else {
            w.bits(u32::from(self.object_type), 5);
        }
        if usize::from(self.frequency_index) < SAMPLE_RATES.len() {
            w.bits(u32::from(self.frequency_index), 4);
        } else {
            w.bits(u32::from(EXPLICIT_FREQUENCY), 4);
            w.bits(self.sample_rate.min(0xFF_FFFF), 24);
        }
        w.bits(u32::from(self.channels), 4);
        w.bits(0, 3);
        w.out
    }
}

struct BitReader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl BitReader<'_> {
    fn bits(&mut self, n: u32) -> Result<u32, AacError> {
        let mut v = 0u32;
        for _ in 0..n {
            let byte = self.data.get(self.pos / 8).ok_or(AacError::Truncated)?;
            v = (v << 1) | u32::from((byte >> (7 - self.pos % 8)) & 1);
            self.pos += 1;
        }
        Ok(v)
    }
}

#[derive(Default)]
struct BitWriter {
    out: Vec<u8>,
    nbits: usize,
}

impl BitWriter {
    fn bits(&mut self, v: u32, n: u32) {
        for i in (0..n).rev() {
            if self.nbits.is_multiple_of(8) {
                self.out.push(0);
            }
            if (v >> i) & 1 == 1 {
                if let Some(last) = self.out.last_mut() {
                    *last |= 0x80 >> (self.nbits % 8);
                }
            }
            self.nbits += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn common_configs() {
        // AAC-LC 44.1 kHz stereo, as sent by OBS and ffmpeg.
        let c = AudioSpecificConfig::parse(&[0x12, 0x10]).expect("parses");
        assert_eq!(c, AudioSpecificConfig { object_type: 2, sample_rate: 44100, channels: 2, frequency_index: 4 });
        assert_eq!(c.to_bytes(), vec![0x12, 0x10]);

        // AAC-LC 48 kHz stereo.
        let c = AudioSpecificConfig::parse(&[0x11, 0x90]).expect("parses");
        assert_eq!((c.object_type, c.sample_rate, c.channels), (2, 48000, 2));

        // AAC-LC 8 kHz mono, with trailing extension bytes ignored.
        let c = AudioSpecificConfig::parse(&[0x15, 0x88, 0x56, 0xE5]).expect("parses");
        assert_eq!((c.object_type, c.sample_rate, c.channels), (2, 8000, 1));

        assert_eq!(AudioSpecificConfig::new(2, 44100, 2).to_bytes(), vec![0x12, 0x10]);
    }

    #[test]
    fn explicit_frequency() {
        let c = AudioSpecificConfig::new(2, 50_000, 1);
        assert_eq!(c.frequency_index, 15);
        let bytes = c.to_bytes();
        assert_eq!(bytes.len(), 5); // 5 + 4 + 24 + 4 + 3 = 40 bits
        assert_eq!(AudioSpecificConfig::parse(&bytes), Ok(c));
    }

    #[test]
    fn escaped_object_type() {
        // Object type 42 (USAC) = escape 31, then 42 - 32 = 10.
        let c = AudioSpecificConfig::new(42, 48000, 2);
        let bytes = c.to_bytes();
        assert_eq!(bytes[0] >> 3, 31);
        assert_eq!(AudioSpecificConfig::parse(&bytes), Ok(c));
    }

    #[test]
    fn errors() {
        assert_eq!(AudioSpecificConfig::parse(&[]), Err(AacError::Truncated));
        assert_eq!(AudioSpecificConfig::parse(&[0x12]), Err(AacError::Truncated));
        assert_eq!(AudioSpecificConfig::parse(&[0x00, 0x10]), Err(AacError::NullObjectType));
        // index 13
        assert_eq!(AudioSpecificConfig::parse(&[0x16, 0x90]), Err(AacError::ReservedFrequencyIndex(13)));
        // explicit rate cut short
        assert_eq!(AudioSpecificConfig::parse(&[0x17, 0x80, 0x00]), Err(AacError::Truncated));
    }

    #[test]
    fn reserved_index_serialises_explicitly() {
        let c = AudioSpecificConfig { object_type: 2, sample_rate: 44100, channels: 2, frequency_index: 13 };
        let back = AudioSpecificConfig::parse(&c.to_bytes()).expect("parses");
        assert_eq!((back.frequency_index, back.sample_rate), (15, 44100));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn prop_roundtrip(
            object_type in (1u8..96).prop_filter("31 is the escape code", |t| *t != 31),
            index in prop::sample::select((0u8..13).chain([15]).collect::<Vec<_>>()),
            explicit in 0u32..=0xFF_FFFF,
            channels in 0u8..16,
        ) {
            let sample_rate = SAMPLE_RATES.get(usize::from(index)).copied().unwrap_or(explicit);
            let c = AudioSpecificConfig { object_type, sample_rate, channels, frequency_index: index };
            prop_assert_eq!(AudioSpecificConfig::parse(&c.to_bytes()), Ok(c));
        }

        #[test]
        fn prop_arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..16)) {
            if let Ok(c) = AudioSpecificConfig::parse(&bytes) {
                prop_assert_eq!(AudioSpecificConfig::parse(&c.to_bytes()), Ok(c));
            }
        }
    }
}
