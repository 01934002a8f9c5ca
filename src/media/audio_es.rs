//! Audio elementary streams as files hold them: ADTS (`.aac`) and MPEG audio Layer III (`.mp3`), each frame with
//! its own header. Pure: the frame lengths and durations crash repair needs to find where a torn file's last
//! whole frame ends, and what it lasts.

/// One frame header read: its length in bytes, its samples and sample rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameInfo {
    pub len: usize,
    pub samples: u32,
    pub sample_rate: u32,
}

const ADTS_RATES: [u32; 13] = [96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350];

/// The ADTS frame starting at `b[0]` (ISO/IEC 13818-7 §6.2): 1,024 samples per raw data block.
pub fn adts_frame(b: &[u8]) -> Option<FrameInfo> {
    if b.len() < 7 || b[0] != 0xFF || b[1] & 0xF6 != 0xF0 {
        return None;
    }
    let sample_rate = *ADTS_RATES.get(usize::from((b[2] >> 2) & 0x0F))?;
    let len = (usize::from(b[3] & 0x03) << 11) | (usize::from(b[4]) << 3) | usize::from(b[5] >> 5);
    let header = if b[1] & 0x01 == 0 { 9 } else { 7 };
    if len < header {
        return None;
    }
    let blocks = u32::from(b[6] & 0x03) + 1;
    Some(FrameInfo { len, samples: 1024 * blocks, sample_rate })
}

/// The MPEG audio Layer III frame starting at `b[0]` (ISO/IEC 11172-3, 13818-3, and MPEG 2.5).
pub fn mp3_frame(b: &[u8]) -> Option<FrameInfo> {
    if b.len() < 4 || b[0] != 0xFF || b[1] & 0xE0 != 0xE0 {
        return None;
    }
    let version = (b[1] >> 3) & 0x03; // 0: MPEG 2.5, 2: MPEG 2, 3: MPEG 1
    let layer = (b[1] >> 1) & 0x03; // 1: Layer III
    if version == 1 || layer != 1 {
        return None;
    }
    const MPEG1: [u32; 15] = [0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320];
    const MPEG2: [u32; 15] = [0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160];
    let kbps = *if version == 3 { &MPEG1 } else { &MPEG2 }.get(usize::from(b[2] >> 4))?;
    let base = *[44100u32, 48000, 32000].get(usize::from((b[2] >> 2) & 0x03))?;
    let sample_rate = match version {
        3 => base,
        2 => base / 2,
        _ => base / 4,
    };
    if kbps == 0 {
        return None; // free format: no length in the header
    }
    let padding = u32::from((b[2] >> 1) & 1);
    let (coef, samples) = if version == 3 { (144, 1152) } else { (72, 576) };
    let len = (coef * kbps * 1000 / sample_rate + padding) as usize;
    Some(FrameInfo { len, samples, sample_rate })
}

/// Walks whole frames from the start of `data`: (bytes they cover, seconds they last). A torn or foreign tail
/// ends the walk.
pub fn scan(data: &[u8], frame: fn(&[u8]) -> Option<FrameInfo>) -> (usize, f64) {
    let (mut at, mut secs) = (0usize, 0f64);
    while let Some(f) = data.get(at..).and_then(frame) {
        if at + f.len > data.len() {
            break;
        }
        at += f.len;
        secs += f64::from(f.samples) / f64::from(f.sample_rate);
    }
    (at, secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adts_headers_as_the_ts_muxer_writes_them() {
        let asc = crate::media::aac::AudioSpecificConfig::parse(&[0x12, 0x10]).unwrap(); // LC 44.1 kHz stereo
        let mut file = Vec::new();
        for n in [100usize, 7, 300] {
            file.extend_from_slice(&crate::media::ts::adts_header(&asc, n));
            file.extend(std::iter::repeat_n(0x21, n));
        }
        let f = adts_frame(&file).unwrap();
        assert_eq!(f, FrameInfo { len: 107, samples: 1024, sample_rate: 44100 });
        let (bytes, secs) = scan(&file, adts_frame);
        assert_eq!(bytes, file.len());
        assert!((secs - 3.0 * 1024.0 / 44100.0).abs() < 1e-9);
        // A torn last frame is not counted.
        assert_eq!(scan(&file[..file.len() - 1], adts_frame).0, 107 + 14);
    }

    #[test]
    fn mp3_frame_lengths() {
        // MPEG-1 Layer III, 128 kbit/s, 44.1 kHz, no padding: 417 bytes; with padding 418.
        assert_eq!(
            mp3_frame(&[0xFF, 0xFB, 0x90, 0x44]),
            Some(FrameInfo { len: 417, samples: 1152, sample_rate: 44100 })
        );
        assert_eq!(mp3_frame(&[0xFF, 0xFB, 0x92, 0x44]).unwrap().len, 418);
        // MPEG-2 Layer III, 64 kbit/s, 22.05 kHz: 72 * 64000 / 22050 = 208.
        assert_eq!(
            mp3_frame(&[0xFF, 0xF3, 0x80, 0x44]),
            Some(FrameInfo { len: 208, samples: 576, sample_rate: 22050 })
        );
        // Layer II, free format, reserved version: not MP3 frames this can measure.
        assert_eq!(mp3_frame(&[0xFF, 0xFD, 0x90, 0x44]), None);
        assert_eq!(mp3_frame(&[0xFF, 0xFB, 0x00, 0x44]), None);
        assert_eq!(mp3_frame(&[0xFF, 0xEB, 0x90, 0x44]), None);
    }

    proptest::proptest! {
        #[test]
        fn garbage_never_panics(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64)) {
            let _ = scan(&data, adts_frame);
            let _ = scan(&data, mp3_frame);
        }
    }
}
