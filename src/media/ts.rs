//! MPEG-TS muxing of hub frames (H.264 or H.265, AAC or MP3) for HLS segments.
//!
//! Pure: frames in, 188-byte packets appended to a `Vec<u8>`. H.264 and H.265 leave the hub length-prefixed and
//! go out as Annex-B with an access unit delimiter, and with their parameter sets repeated before every keyframe
//! so each segment decodes on its own; AAC gets an ADTS header per frame.

use super::aac::AudioSpecificConfig;
use super::avc::AvcDecoderConfig;
use super::hevc::HevcDecoderConfig;
use super::{Frame, MediaKind};

pub const PACKET_SIZE: usize = 188;
const PID_PAT: u16 = 0;
const PID_PMT: u16 = 0x1000;
pub const PID_VIDEO: u16 = 0x100;
pub const PID_AUDIO: u16 = 0x101;
const STREAM_TYPE_H264: u8 = 0x1B;
const STREAM_TYPE_H265: u8 = 0x24;
const STREAM_TYPE_AAC: u8 = 0x0F;
/// MPEG-1 audio (MP3 at 32/44.1/48 kHz) and MPEG-2 audio (the half rates, and MPEG-2.5's 8 kHz).
const STREAM_TYPE_MPEG1_AUDIO: u8 = 0x03;
const STREAM_TYPE_MPEG2_AUDIO: u8 = 0x04;
/// Timestamps are offset so that a small negative composition offset never underflows.
const PTS_OFFSET_MS: i64 = 1400;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TsError {
    #[error("video frame before its decoder configuration")]
    NoVideoConfig,
    #[error("AAC frame before its AudioSpecificConfig")]
    NoAudioConfig,
    #[error("malformed video payload: {0}")]
    BadNalus(String),
    #[error("codec cannot be carried in MPEG-TS here")]
    Unsupported,
}

/// The video decoder configuration in force.
#[derive(Debug, Clone)]
enum VideoConfig {
    Avc(AvcDecoderConfig),
    Hevc(HevcDecoderConfig),
}

/// Per-segment muxer state: continuity counters and the codec configurations in force.
#[derive(Debug, Clone)]
pub struct TsMuxer {
    has_video: bool,
    has_audio: bool,
    cc: [u8; 4],
    video: Option<VideoConfig>,
    asc: Option<AudioSpecificConfig>,
    /// The PMT's audio stream type: AAC unless the muxer was told the stream's audio is MP3.
    audio_type: u8,
}

impl TsMuxer {
    pub fn new(has_video: bool, has_audio: bool) -> Self {
        Self { has_video, has_audio, cc: [0; 4], video: None, asc: None, audio_type: STREAM_TYPE_AAC }
    }

    /// Carries the stream's audio as `codec` (AAC by default; MP3 goes in as MPEG audio, untouched). Must be
    /// said before the first tables are written.
    pub fn with_audio_codec(mut self, codec: Option<super::Codec>) -> Self {
        if let Some(super::Codec::OtherAudio { flv_sound_byte }) = codec.filter(|c| c.is_mp3()) {
            // FLV's rate bits: 3 = 44.1 kHz (MPEG-1); lower rates and format 14 (8 kHz) are MPEG-2/2.5.
            let mpeg1 = flv_sound_byte >> 4 == 2 && (flv_sound_byte >> 2) & 3 == 3;
            self.audio_type = if mpeg1 { STREAM_TYPE_MPEG1_AUDIO } else { STREAM_TYPE_MPEG2_AUDIO };
        }
        self
    }

    pub fn set_video_config(&mut self, record: &[u8]) -> Result<(), TsError> {
        self.video =
            Some(VideoConfig::Avc(AvcDecoderConfig::parse(record).map_err(|e| TsError::BadNalus(e.to_string()))?));
        Ok(())
    }

    pub fn set_hevc_config(&mut self, record: &[u8]) -> Result<(), TsError> {
        self.video =
            Some(VideoConfig::Hevc(HevcDecoderConfig::parse(record).map_err(|e| TsError::BadNalus(e.to_string()))?));
        Ok(())
    }

    pub fn set_audio_config(&mut self, asc: &[u8]) -> Result<(), TsError> {
        self.asc = Some(AudioSpecificConfig::parse(asc).map_err(|_| TsError::NoAudioConfig)?);
        Ok(())
    }

    fn cc_slot(pid: u16) -> usize {
        match pid {
            PID_PAT => 0,
            PID_PMT => 1,
            PID_VIDEO => 2,
            _ => 3,
        }
    }

    /// PAT and PMT; every segment starts with them.
    pub fn write_tables(&mut self, out: &mut Vec<u8>) {
        let mut pat = vec![0x00, 0xB0, 0, 0x00, 0x01, 0xC1, 0x00, 0x00, 0x00, 0x01];
        pat.extend_from_slice(&[0xE0 | (PID_PMT >> 8) as u8, PID_PMT as u8]);
        self.write_section(out, PID_PAT, pat);
        let pcr_pid = if self.has_video { PID_VIDEO } else { PID_AUDIO };
        let mut pmt = vec![0x02, 0xB0, 0, 0x00, 0x01, 0xC1, 0x00, 0x00];
        pmt.extend_from_slice(&[0xE0 | (pcr_pid >> 8) as u8, pcr_pid as u8, 0xF0, 0x00]);
        if self.has_video {
            let stream_type = match self.video {
                Some(VideoConfig::Hevc(_)) => STREAM_TYPE_H265,
                _ => STREAM_TYPE_H264,
            };
            pmt.extend_from_slice(&[stream_type, 0xE0 | (PID_VIDEO >> 8) as u8, PID_VIDEO as u8, 0xF0, 0x00]);
        }
        if self.has_audio {
            pmt.extend_from_slice(&[self.audio_type, 0xE0 | (PID_AUDIO >> 8) as u8, PID_AUDIO as u8, 0xF0, 0x00]);
        }
        self.write_section(out, PID_PMT, pmt);
    }

    /// `body` is a PSI section from table_id on, with a placeholder length; length and CRC are filled in here.
    fn write_section(&mut self, out: &mut Vec<u8>, pid: u16, mut body: Vec<u8>) {
        let len = body.len() - 3 + 4;
        body[1] = 0xB0 | ((len >> 8) as u8 & 0x0F);
        body[2] = len as u8;
        let crc = crc32_mpeg2(&body);
        body.extend_from_slice(&crc.to_be_bytes());
        let start = out.len();
        out.extend_from_slice(&[0x47, 0x40 | (pid >> 8) as u8, pid as u8, 0x10 | self.next_cc(pid), 0x00]);
        out.extend_from_slice(&body);
        out.resize(start + PACKET_SIZE, 0xFF);
    }

    fn next_cc(&mut self, pid: u16) -> u8 {
        let slot = &mut self.cc[Self::cc_slot(pid)];
        let v = *slot;
        *slot = (v + 1) & 0x0F;
        v
    }

    /// Appends one frame as a PES packet. Codec configuration frames update the muxer and write nothing.
    pub fn write_frame(&mut self, out: &mut Vec<u8>, frame: &Frame) -> Result<(), TsError> {
        match (frame.kind, frame.config) {
            (MediaKind::Video, true) if frame.codec == super::Codec::H265 => self.set_hevc_config(&frame.payload),
            (MediaKind::Video, true) => self.set_video_config(&frame.payload),
            (MediaKind::Audio, true) => self.set_audio_config(&frame.payload),
            (MediaKind::Video, false) => {
                let es = self.annex_b(frame)?;
                let dts = to_90k(frame.dts);
                let pts = to_90k(frame.pts());
                self.write_pes(out, PID_VIDEO, pts, Some(dts), frame.keyframe, &es);
                Ok(())
            }
            (MediaKind::Audio, false) if frame.codec.is_mp3() => {
                if self.audio_type == STREAM_TYPE_AAC {
                    return Err(TsError::Unsupported);
                }
                // MP3 frames carry their own headers: the PES holds them as they came.
                let pts = to_90k(frame.dts);
                let pcr = !self.has_video;
                self.write_pes(out, PID_AUDIO, pts, None, pcr, &frame.payload);
                Ok(())
            }
            (MediaKind::Audio, false) => {
                if !matches!(frame.codec, super::Codec::Aac) || self.audio_type != STREAM_TYPE_AAC {
                    return Err(TsError::Unsupported);
                }
                let asc = self.asc.as_ref().ok_or(TsError::NoAudioConfig)?;
                let mut es = Vec::with_capacity(frame.payload.len() + 7);
                es.extend_from_slice(&adts_header(asc, frame.payload.len()));
                es.extend_from_slice(&frame.payload);
                let pts = to_90k(frame.dts);
                // Audio carries the PCR only when there is no video.
                let pcr = !self.has_video;
                self.write_pes(out, PID_AUDIO, pts, None, pcr, &es);
                Ok(())
            }
            (MediaKind::Data, _) => Ok(()),
        }
    }

    fn annex_b(&self, frame: &Frame) -> Result<Vec<u8>, TsError> {
        let mut es = Vec::with_capacity(frame.payload.len() + 64);
        let bad = |e: &dyn std::fmt::Display| TsError::BadNalus(e.to_string());
        match (self.video.as_ref(), frame.codec) {
            (Some(VideoConfig::Avc(cfg)), super::Codec::H264) => {
                super::avc::avcc_to_annexb(&frame.payload, cfg, frame.keyframe, true, &mut es).map_err(|e| bad(&e))?
            }
            (Some(VideoConfig::Hevc(cfg)), super::Codec::H265) => {
                super::hevc::to_annexb(&frame.payload, cfg, frame.keyframe, true, &mut es).map_err(|e| bad(&e))?
            }
            (None, _) => return Err(TsError::NoVideoConfig),
            // A frame of another codec than the configuration in force: its decoder would only see garbage.
            _ => return Err(TsError::Unsupported),
        }
        Ok(es)
    }

    fn write_pes(&mut self, out: &mut Vec<u8>, pid: u16, pts: u64, dts: Option<u64>, key: bool, es: &[u8]) {
        let stream_id = if pid == PID_VIDEO { 0xE0 } else { 0xC0 };
        let mut header = Vec::with_capacity(19);
        header.extend_from_slice(&[0, 0, 1, stream_id, 0, 0, 0x80]);
        match dts {
            Some(d) if d != pts => {
                header.extend_from_slice(&[0xC0, 10]);
                put_ts(&mut header, 0x3, pts);
                put_ts(&mut header, 0x1, d);
            }
            _ => {
                header.extend_from_slice(&[0x80, 5]);
                put_ts(&mut header, 0x2, pts);
            }
        }
        // PES_packet_length counts what follows it. Video uses 0 ("unbounded"), as muxers do: a keyframe
        // easily exceeds the 16-bit field.
        let pes_len = header.len() - 6 + es.len();
        let len_field = if stream_id == 0xE0 || pes_len > 0xFFFF { 0 } else { pes_len as u16 };
        header[4..6].copy_from_slice(&len_field.to_be_bytes());
        let pcr = if key || (pid == PID_VIDEO) { Some(dts.unwrap_or(pts)) } else { None };
        let mut payload = header;
        payload.extend_from_slice(es);
        let mut rest: &[u8] = &payload;
        let mut first = true;
        while !rest.is_empty() {
            let start = out.len();
            let pusi = if first { 0x40 } else { 0 };
            out.extend_from_slice(&[0x47, pusi | (pid >> 8) as u8, pid as u8]);
            let cc = self.next_cc(pid);
            // Adaptation field: PCR (+ random access) on the first packet of a PES that carries them, and
            // stuffing on the last packet.
            let mut af: Vec<u8> = Vec::new();
            if first && pcr.is_some() {
                let flags = 0x10 | if key { 0x40 } else { 0 };
                af.push(flags);
                let base = pcr.unwrap_or(0).saturating_sub(PCR_LEAD_90K);
                af.extend_from_slice(&[
                    (base >> 25) as u8,
                    (base >> 17) as u8,
                    (base >> 9) as u8,
                    (base >> 1) as u8,
                    ((base & 1) << 7) as u8 | 0x7E,
                    0,
                ]);
            }
            let room = PACKET_SIZE - 4 - if af.is_empty() { 0 } else { 1 + af.len() };
            if rest.len() < room {
                // Stuff through the adaptation field so the payload ends the packet exactly.
                let need = PACKET_SIZE - 4 - rest.len();
                if af.is_empty() {
                    if need == 1 {
                        out.push(0x30 | cc);
                        out.push(0);
                    } else {
                        out.push(0x30 | cc);
                        out.push((need - 1) as u8);
                        out.push(0x00);
                        out.resize(out.len() + need - 2, 0xFF);
                    }
                } else {
                    out.push(0x30 | cc);
                    out.push((need - 1) as u8);
                    out.extend_from_slice(&af);
                    out.resize(start + 4 + need, 0xFF);
                }
                out.extend_from_slice(rest);
                rest = &[];
            } else {
                if af.is_empty() {
                    out.push(0x10 | cc);
                } else {
                    out.push(0x30 | cc);
                    out.push(af.len() as u8);
                    out.extend_from_slice(&af);
                }
                let n = PACKET_SIZE - (out.len() - start);
                out.extend_from_slice(&rest[..n]);
                rest = &rest[n..];
            }
            debug_assert_eq!(out.len() - start, PACKET_SIZE);
            first = false;
        }
    }
}

/// The PCR runs slightly ahead of decode times so decoders never see a frame after its DTS has passed.
const PCR_LEAD_90K: u64 = 63_000 - 9_000;

fn to_90k(ms: i64) -> u64 {
    ((ms + PTS_OFFSET_MS).max(0) as u64 * 90) & 0x1_FFFF_FFFF
}

fn put_ts(out: &mut Vec<u8>, marker: u8, ts: u64) {
    out.push((marker << 4) | (((ts >> 30) as u8 & 0x07) << 1) | 1);
    out.push((ts >> 22) as u8);
    out.push((((ts >> 15) as u8) << 1) | 1);
    out.push((ts >> 7) as u8);
    out.push(((ts as u8) << 1) | 1);
}

/// The 7-byte ADTS header for one raw AAC frame.
pub fn adts_header(asc: &AudioSpecificConfig, payload_len: usize) -> [u8; 7] {
    let len = payload_len + 7;
    let profile = asc.object_type.saturating_sub(1).min(3);
    let freq = asc.frequency_index.min(12);
    let ch = asc.channels.min(7);
    [
        0xFF,
        0xF1,
        (profile << 6) | (freq << 2) | (ch >> 2),
        ((ch & 3) << 6) | ((len >> 11) as u8 & 0x03),
        (len >> 3) as u8,
        (((len & 7) as u8) << 5) | 0x1F,
        0xFC,
    ]
}

/// CRC-32/MPEG-2, as PSI sections need.
pub fn crc32_mpeg2(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in data {
        crc ^= (b as u32) << 24;
        for _ in 0..8 {
            crc = if crc & 0x8000_0000 != 0 { (crc << 1) ^ 0x04C1_1DB7 } else { crc << 1 };
        }
    }
    crc
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::Codec;
    use bytes::Bytes;

    // A real x264 baseline SPS/PPS pair (320x240).
    const SPS: &[u8] = &[
        0x67, 0x42, 0xC0, 0x0D, 0xDA, 0x05, 0x07, 0xEC, 0x04, 0x40, 0x00, 0x00, 0x03, 0x00, 0x40, 0x00, 0x00, 0x0F,
        0x03, 0xC5, 0x0A, 0xA8,
    ];
    const PPS: &[u8] = &[0x68, 0xCE, 0x0F, 0xC8];

    fn video(dts: i64, key: bool, nal: &[u8]) -> Frame {
        let mut p = (nal.len() as u32).to_be_bytes().to_vec();
        p.extend_from_slice(nal);
        Frame {
            kind: MediaKind::Video,
            codec: Codec::H264,
            dts,
            cts: 0,
            keyframe: key,
            config: false,
            payload: Bytes::from(p),
        }
    }

    #[test]
    fn crc_known_answer() {
        // PAT of a single program 1 on PMT PID 0x1000, as every muxer writes it.
        let pat = [0x00, 0xB0, 0x0D, 0x00, 0x01, 0xC1, 0x00, 0x00, 0x00, 0x01, 0xF0, 0x00];
        assert_eq!(crc32_mpeg2(&pat), 0x2AB1_04B2);
    }

    #[test]
    fn packets_are_aligned_and_counted() {
        let mut m = TsMuxer::new(true, true);
        let cfg = AvcDecoderConfig::from_sps_pps(SPS, PPS).unwrap().to_bytes();
        m.set_video_config(&cfg).unwrap();
        m.set_audio_config(&[0x12, 0x10]).unwrap();
        let mut out = Vec::new();
        m.write_tables(&mut out);
        for (i, size) in [1usize, 100, 170, 171, 183, 184, 5000, 70_000].iter().enumerate() {
            m.write_frame(&mut out, &video(i as i64 * 33, i == 0, &vec![0x65; *size])).unwrap();
            let audio = Frame {
                kind: MediaKind::Audio,
                codec: Codec::Aac,
                dts: i as i64 * 23,
                cts: 0,
                keyframe: false,
                config: false,
                payload: Bytes::from(vec![0x21; *size % 700]),
            };
            m.write_frame(&mut out, &audio).unwrap();
        }
        assert_eq!(out.len() % PACKET_SIZE, 0);
        let mut last_cc = std::collections::HashMap::new();
        for p in out.chunks(PACKET_SIZE) {
            assert_eq!(p[0], 0x47);
            let pid = (((p[1] & 0x1F) as u16) << 8) | p[2] as u16;
            let cc = p[3] & 0x0F;
            if let Some(prev) = last_cc.insert(pid, cc) {
                assert_eq!(cc, (prev + 1) & 0x0F, "continuity on pid {pid:#x}");
            }
        }
    }

    #[test]
    fn keyframes_carry_parameter_sets() {
        let mut m = TsMuxer::new(true, false);
        m.set_video_config(&AvcDecoderConfig::from_sps_pps(SPS, PPS).unwrap().to_bytes()).unwrap();
        let es = m.annex_b(&video(0, true, &[0x65, 0x88])).unwrap();
        assert_eq!(&es[..6], &[0, 0, 0, 1, 0x09, 0xF0]);
        assert_eq!(&es[6..11], &[0, 0, 0, 1, 0x67]);
        assert!(es.ends_with(&[0, 0, 0, 1, 0x65, 0x88]));
        let inter = m.annex_b(&video(33, false, &[0x41, 0x9A])).unwrap();
        assert_eq!(inter, vec![0, 0, 0, 1, 0x09, 0xF0, 0, 0, 0, 1, 0x41, 0x9A]);
        assert_eq!(TsMuxer::new(true, false).annex_b(&video(0, true, &[0x65])), Err(TsError::NoVideoConfig));
    }

    #[test]
    fn hevc_goes_out_as_stream_type_0x24_with_its_parameter_sets() {
        // An hvcC with one 2-byte VPS, SPS and PPS, 4-byte NAL lengths.
        let mut hvcc = vec![1u8];
        hvcc.extend_from_slice(&[0; 20]);
        hvcc.extend_from_slice(&[0x0F, 3]);
        for t in [32u8, 33, 34] {
            hvcc.extend_from_slice(&[t, 0, 1, 0, 2, t << 1, 1]);
        }
        let mut m = TsMuxer::new(true, false);
        let mut out = Vec::new();
        m.write_frame(&mut out, &Frame::config(MediaKind::Video, Codec::H265, Bytes::from(hvcc))).unwrap();
        m.write_tables(&mut out);
        let pmt = &out[PACKET_SIZE..2 * PACKET_SIZE];
        // PMT section: header 5 + 12 bytes of table fields, then the first elementary stream entry.
        assert_eq!(pmt[5 + 12], 0x24, "stream type of the video entry");
        let mut key = video(0, true, &[19 << 1, 1, 0xAF]);
        key.codec = Codec::H265;
        let es = m.annex_b(&key).unwrap();
        let want: &[u8] = &[0, 0, 0, 1, 0x46, 1, 0x50, 0, 0, 0, 1, 0x40, 1, 0, 0, 0, 1, 0x42, 1, 0, 0, 0, 1, 0x44, 1];
        assert_eq!(&es[..want.len()], want);
        // An H.264 frame under an HEVC configuration is refused, not muxed as garbage.
        assert_eq!(m.annex_b(&video(40, false, &[0x41])), Err(TsError::Unsupported));
    }

    #[test]
    fn pes_length_matches_the_header_written() {
        let mut m = TsMuxer::new(false, true);
        m.set_audio_config(&[0x12, 0x10]).unwrap();
        let mut out = Vec::new();
        let audio = Frame {
            kind: MediaKind::Audio,
            codec: Codec::Aac,
            dts: 0,
            cts: 0,
            keyframe: false,
            config: false,
            payload: Bytes::from(vec![0x21; 50]),
        };
        m.write_frame(&mut out, &audio).unwrap();
        let p = &out[..PACKET_SIZE];
        let af = if p[3] & 0x20 != 0 { 1 + p[4] as usize } else { 0 };
        let pes = &p[4 + af..];
        assert_eq!(&pes[..4], &[0, 0, 1, 0xC0]);
        let len = u16::from_be_bytes([pes[4], pes[5]]) as usize;
        assert_eq!(len, pes.len() - 6, "PES length covers exactly the rest of the packet");
    }

    #[test]
    fn adts_header_fields() {
        let asc = AudioSpecificConfig::parse(&[0x12, 0x10]).unwrap(); // AAC-LC 44.1 kHz stereo
        let h = adts_header(&asc, 100);
        assert_eq!(&h[..2], &[0xFF, 0xF1]);
        assert_eq!(h[2] >> 6, 1); // LC
        assert_eq!((h[2] >> 2) & 0x0F, 4); // 44.1 kHz
        let len = (((h[3] & 3) as usize) << 11) | ((h[4] as usize) << 3) | (h[5] >> 5) as usize;
        assert_eq!(len, 107);
    }
}
