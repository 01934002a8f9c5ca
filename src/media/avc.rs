//! H.264 helpers: the AVCDecoderConfigurationRecord carried in FLV/RTMP
//! sequence headers (ISO/IEC 14496-15 §5.2.4.1), SPS parsing for stream info
//! (ITU-T H.264 §7.3.2.1.1 and Annex E), and AVCC length-prefixed NAL
//! iteration.

use bytes::Bytes;
use thiserror::Error;

pub const NAL_TYPE_SPS: u8 = 7;
pub const NAL_TYPE_PPS: u8 = 8;

#[derive(Debug, Error, PartialEq)]
pub enum AvcError {
    #[error("H.264 data truncated")]
    Truncated,
    #[error("unsupported AVC decoder configuration version {0} (expected 1)")]
    BadConfigVersion(u8),
    #[error("expected NAL unit type {expected}, got {got}")]
    WrongNalType { expected: u8, got: u8 },
    #[error("NAL length size {0} is not 1..=4")]
    BadNalLengthSize(u8),
    #[error("NAL unit length {len} overruns the {remaining} bytes left in the payload")]
    NalOverrun { len: usize, remaining: usize },
    #[error("parameter set too long for an avcC record ({0} bytes)")]
    ParamSetTooLong(usize),
    #[error("invalid SPS: {0}")]
    InvalidSps(&'static str),
}

#[derive(Debug, Clone, PartialEq)]
pub struct AvcDecoderConfig {
    pub profile: u8,
    pub compatibility: u8,
    pub level: u8,
    pub nal_length_size: u8,
    pub sps: Vec<Bytes>,
    pub pps: Vec<Bytes>,
}

impl AvcDecoderConfig {
    /// Parses an avcC record. Trailing bytes (the high-profile chroma/bit-depth
    /// extension, or encoder padding) are ignored: everything needed to decode
    /// is in the SPS itself.
    pub fn parse(record: &[u8]) -> Result<Self, AvcError> {
        let mut r = record;
        let [version, profile, compatibility, level, length_byte] = take_array(&mut r)?;
        if version != 1 {
            return Err(AvcError::BadConfigVersion(version));
        }
        let nal_length_size = (length_byte & 0x03) + 1;
        let [num_sps] = take_array(&mut r)?;
        let sps = read_param_sets(&mut r, usize::from(num_sps & 0x1F))?;
        let [num_pps] = take_array(&mut r)?;
        let pps = read_param_sets(&mut r, usize::from(num_pps))?;
        Ok(Self { profile, compatibility, level, nal_length_size, sps, pps })
    }

    /// Serialises without the optional high-profile extension bytes, as most
    /// RTMP encoders do; decoders take chroma format and bit depth from the
    /// SPS. Parameter sets that cannot be represented (over 65535 bytes, or
    /// more than 31 SPS / 255 PPS) are dropped rather than written with a
    /// length that lies; `from_sps_pps` rejects such input up front.
    pub fn to_bytes(&self) -> Vec<u8> {
        let fits = |p: &&Bytes| p.len() <= usize::from(u16::MAX);
        let sps: Vec<&Bytes> = self.sps.iter().filter(fits).take(31).collect();
        let pps: Vec<&Bytes> = self.pps.iter().filter(fits).take(255).collect();

        let mut out = Vec::with_capacity(7 + sps.iter().chain(&pps).map(|p| p.len() + 2).sum::<usize>());
        let length_minus_one = self.nal_length_size.clamp(1, 4) - 1;
        out.extend_from_slice(&[
            1,
            self.profile,
            self.compatibility,
            self.level,
            0xFC | length_minus_one,
            0xE0 | sps.len() as u8,
        ]);
        for p in &sps {
            out.extend_from_slice(&(p.len() as u16).to_be_bytes());
            out.extend_from_slice(p);
        }
        out.push(pps.len() as u8);
        for p in &pps {
            out.extend_from_slice(&(p.len() as u16).to_be_bytes());
            out.extend_from_slice(p);
        }
        out
    }

    /// Builds a record from one SPS and one PPS NAL (header byte included),
    /// e.g. taken from an Annex B stream. A leading start code is tolerated.
    /// Uses 4-byte NAL lengths, which is what FLV muxers conventionally emit.
    pub fn from_sps_pps(sps: &[u8], pps: &[u8]) -> Result<Self, AvcError> {
        let sps = strip_start_code(sps);
        let pps = strip_start_code(pps);
        check_nal_type(sps, NAL_TYPE_SPS)?;
        check_nal_type(pps, NAL_TYPE_PPS)?;
        for p in [sps, pps] {
            if p.len() > usize::from(u16::MAX) {
                return Err(AvcError::ParamSetTooLong(p.len()));
            }
        }
        let (profile, compatibility, level) = match sps {
            [_, p, c, l, ..] => (*p, *c, *l),
            _ => return Err(AvcError::Truncated),
        };
        Ok(Self {
            profile,
            compatibility,
            level,
            nal_length_size: 4,
            sps: vec![Bytes::copy_from_slice(sps)],
            pps: vec![Bytes::copy_from_slice(pps)],
        })
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct SpsInfo {
    pub profile_idc: u8,
    pub constraint_flags: u8,
    pub level_idc: u8,
    /// Display size after frame cropping.
    pub width: u32,
    pub height: u32,
    /// Frame rate from VUI timing info, when present. For x264 output this is
    /// exact; for encoders that signal field rate it may be off by 2x, which
    /// is why it is informational only.
    pub fps: Option<f64>,
}

/// Parses the fields of an SPS needed for stream info.
pub fn parse_sps(nal: &[u8]) -> Result<SpsInfo, AvcError> {
    check_nal_type(nal, NAL_TYPE_SPS)?;
    let rbsp = remove_emulation_prevention(nal.get(1..).unwrap_or_default());
    let mut r = BitReader::new(&rbsp);

    let profile_idc = r.u8()?;
    let constraint_flags = r.u8()?;
    let level_idc = r.u8()?;
    let _sps_id = r.ue()?;

    let mut chroma_format_idc = 1;
    let mut separate_colour_plane = false;
    if matches!(profile_idc, 100 | 110 | 122 | 244 | 44 | 83 | 86 | 118 | 128 | 138 | 139 | 134 | 135) {
        chroma_format_idc = r.ue()?;
        if chroma_format_idc > 3 {
            return Err(AvcError::InvalidSps("chroma_format_idc > 3"));
        }
        if chroma_format_idc == 3 {
            separate_colour_plane = r.flag()?;
        }
        let _bit_depth_luma_minus8 = r.ue()?;
        let _bit_depth_chroma_minus8 = r.ue()?;
        let _qpprime_y_zero_transform_bypass = r.flag()?;
        if r.flag()? {
            let lists = if chroma_format_idc == 3 { 12 } else { 8 };
            for i in 0..lists {
                if r.flag()? {
                    skip_scaling_list(&mut r, if i < 6 { 16 } else { 64 })?;
                }
            }
        }
    }

    let _log2_max_frame_num_minus4 = r.ue()?;
    match r.ue()? {
        0 => {
            let _log2_max_poc_lsb_minus4 = r.ue()?;
        }
        1 => {
            let _delta_pic_order_always_zero = r.flag()?;
            let _offset_for_non_ref_pic = r.se()?;
            let _offset_for_top_to_bottom_field = r.se()?;
            let cycle = r.ue()?;
            if cycle > 255 {
                return Err(AvcError::InvalidSps("num_ref_frames_in_pic_order_cnt_cycle > 255"));
            }
            for _ in 0..cycle {
                let _offset_for_ref_frame = r.se()?;
            }
        }
        2 => {}
        _ => return Err(AvcError::InvalidSps("pic_order_cnt_type > 2")),
    }
    let _max_num_ref_frames = r.ue()?;
    let _gaps_in_frame_num_allowed = r.flag()?;
    let width_mbs = u64::from(r.ue()?) + 1;
    let height_map_units = u64::from(r.ue()?) + 1;
    let frame_mbs_only = r.flag()?;
    if !frame_mbs_only {
        let _mb_adaptive_frame_field = r.flag()?;
    }
    let _direct_8x8_inference = r.flag()?;
    let crop = if r.flag()? { [r.ue()?, r.ue()?, r.ue()?, r.ue()?].map(u64::from) } else { [0; 4] };

    // Crop offsets are in chroma sample units (§7.4.2.1.1), and in field
    // coding each map unit is two macroblock rows tall.
    let chroma_array_type = if separate_colour_plane { 0 } else { chroma_format_idc };
    let (sub_w, sub_h) = match chroma_array_type {
        1 => (2, 2),
        2 => (2, 1),
        _ => (1, 1),
    };
    let field_factor: u64 = if frame_mbs_only { 1 } else { 2 };
    let (crop_unit_x, crop_unit_y) =
        if chroma_array_type == 0 { (1, field_factor) } else { (sub_w, sub_h * field_factor) };
    let [left, right, top, bottom] = crop;
    let full_w = width_mbs * 16;
    let full_h = height_map_units * 16 * field_factor;
    let width = full_w
        .checked_sub(crop_unit_x * (left + right))
        .ok_or(AvcError::InvalidSps("horizontal crop exceeds picture"))?;
    let height = full_h
        .checked_sub(crop_unit_y * (top + bottom))
        .ok_or(AvcError::InvalidSps("vertical crop exceeds picture"))?;
    let width = u32::try_from(width).map_err(|_| AvcError::InvalidSps("width too large"))?;
    let height = u32::try_from(height).map_err(|_| AvcError::InvalidSps("height too large"))?;

    // Some encoders truncate or mangle VUI; the picture size above is still
    // right, so a VUI failure only costs us the frame rate.
    let fps = if r.flag().unwrap_or(false) { parse_vui_fps(&mut r).ok().flatten() } else { None };

    Ok(SpsInfo { profile_idc, constraint_flags, level_idc, width, height, fps })
}

/// Iterates the NAL units of an AVCC payload (each prefixed with a
/// big-endian length of `nal_length_size` bytes). Zero-length units are
/// skipped because nothing downstream can use them. After the first error
/// the iterator ends, since the framing after a bad length is meaningless.
pub fn avcc_nalus(payload: &[u8], nal_length_size: u8) -> impl Iterator<Item = Result<&[u8], AvcError>> {
    AvccNalus { rest: payload, len_size: nal_length_size, done: false }
}

struct AvccNalus<'a> {
    rest: &'a [u8],
    len_size: u8,
    done: bool,
}

impl<'a> Iterator for AvccNalus<'a> {
    type Item = Result<&'a [u8], AvcError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.done || self.rest.is_empty() {
                return None;
            }
            let n = usize::from(self.len_size);
            if !(1..=4).contains(&n) {
                self.done = true;
                return Some(Err(AvcError::BadNalLengthSize(self.len_size)));
            }
            let Some((len_bytes, after)) = self.rest.split_at_checked(n) else {
                self.done = true;
                return Some(Err(AvcError::Truncated));
            };
            let len = len_bytes.iter().fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
            let Some((nal, rest)) = after.split_at_checked(len) else {
                self.done = true;
                return Some(Err(AvcError::NalOverrun { len, remaining: after.len() }));
            };
            self.rest = rest;
            if !nal.is_empty() {
                return Some(Ok(nal));
            }
        }
    }
}

/// Converts a NAL payload to RBSP by dropping the 0x03 byte of every
/// 00 00 03 sequence, which encoders insert so the payload never contains a
/// start code.
pub fn remove_emulation_prevention(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len());
    let mut zeros = 0usize;
    for &b in data {
        if zeros >= 2 && b == 0x03 {
            zeros = 0;
            continue;
        }
        zeros = if b == 0 { zeros + 1 } else { 0 };
        out.push(b);
    }
    out
}

fn strip_start_code(nal: &[u8]) -> &[u8] {
    nal.strip_prefix(&[0, 0, 0, 1]).or_else(|| nal.strip_prefix(&[0, 0, 1])).unwrap_or(nal)
}

fn check_nal_type(nal: &[u8], expected: u8) -> Result<(), AvcError> {
    let header = nal.first().ok_or(AvcError::Truncated)?;
    let got = header & 0x1F;
    if got != expected {
        return Err(AvcError::WrongNalType { expected, got });
    }
    Ok(())
}

fn take_array<const N: usize>(r: &mut &[u8]) -> Result<[u8; N], AvcError> {
    let (head, tail) = r.split_first_chunk::<N>().ok_or(AvcError::Truncated)?;
    *r = tail;
    Ok(*head)
}

fn read_param_sets(r: &mut &[u8], count: usize) -> Result<Vec<Bytes>, AvcError> {
    let mut sets = Vec::with_capacity(count);
    for _ in 0..count {
        let len = usize::from(u16::from_be_bytes(take_array(r)?));
        let (set, tail) = r.split_at_checked(len).ok_or(AvcError::Truncated)?;
        sets.push(Bytes::copy_from_slice(set));
        *r = tail;
    }
    Ok(sets)
}

fn skip_scaling_list(r: &mut BitReader<'_>, size: usize) -> Result<(), AvcError> {
    let mut last: i64 = 8;
    let mut next: i64 = 8;
    for _ in 0..size {
        if next != 0 {
            let delta = r.se()?;
            next = (last + delta).rem_euclid(256);
        }
        if next != 0 {
            last = next;
        }
    }
    Ok(())
}

/// Walks VUI up to timing_info (Annex E.1.1); everything after it is
/// irrelevant for stream info.
fn parse_vui_fps(r: &mut BitReader<'_>) -> Result<Option<f64>, AvcError> {
    if r.flag()? {
        let aspect_ratio_idc = r.u8()?;
        const EXTENDED_SAR: u8 = 255;
        if aspect_ratio_idc == EXTENDED_SAR {
            let _sar_width = r.bits(16)?;
            let _sar_height = r.bits(16)?;
        }
    }
    if r.flag()? {
        let _overscan_appropriate = r.flag()?;
    }
    if r.flag()? {
        let _video_format = r.bits(3)?;
        let _full_range = r.flag()?;
        if r.flag()? {
            let _colour_primaries = r.u8()?;
            let _transfer = r.u8()?;
            let _matrix = r.u8()?;
        }
    }
    if r.flag()? {
        let _chroma_loc_top = r.ue()?;
        let _chroma_loc_bottom = r.ue()?;
    }
    if !r.flag()? {
        return Ok(None);
    }
    let num_units_in_tick = r.bits(32)?;
    let time_scale = r.bits(32)?;
    if num_units_in_tick == 0 || time_scale == 0 {
        return Ok(None);
    }
    // One frame is two ticks (a tick is a field period), per Annex E.
    Ok(Some(f64::from(time_scale) / (2.0 * f64::from(num_units_in_tick))))
}

/// MSB-first bit reader over RBSP bytes; every read is bounds-checked. Shared with the HEVC parser, whose
/// syntax uses the same Exp-Golomb codes.
pub(crate) struct BitReader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> BitReader<'a> {
    pub(crate) fn new(data: &'a [u8]) -> Self {
        Self { data, pos: 0 }
    }

    pub(crate) fn flag(&mut self) -> Result<bool, AvcError> {
        let byte = self.data.get(self.pos / 8).ok_or(AvcError::Truncated)?;
        let bit = (byte >> (7 - (self.pos % 8))) & 1;
        self.pos += 1;
        Ok(bit == 1)
    }

    pub(crate) fn bits(&mut self, n: u32) -> Result<u32, AvcError> {
        let mut v: u32 = 0;
        for _ in 0..n.min(32) {
            v = (v << 1) | u32::from(self.flag()?);
        }
        Ok(v)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, AvcError> {
        Ok(self.bits(8)? as u8)
    }

    /// Unsigned Exp-Golomb. Codes longer than 32 bits cannot occur in a valid
    /// SPS, so they are rejected instead of overflowing.
    pub(crate) fn ue(&mut self) -> Result<u32, AvcError> {
        let mut leading_zeros = 0u32;
        while !self.flag()? {
            leading_zeros += 1;
            if leading_zeros > 31 {
                return Err(AvcError::InvalidSps("Exp-Golomb code longer than 32 bits"));
            }
        }
        let suffix = u64::from(self.bits(leading_zeros)?);
        let v = (1u64 << leading_zeros) - 1 + suffix;
        u32::try_from(v).map_err(|_| AvcError::InvalidSps("Exp-Golomb value overflows u32"))
    }

    pub(crate) fn se(&mut self) -> Result<i64, AvcError> {
        let k = i64::from(self.ue()?);
        Ok(if k % 2 == 1 { (k + 1) / 2 } else { -(k / 2) })
    }
}

/// Appends an AVCC access unit to `out` as Annex-B (start-code delimited) NAL units. With `aud`, an access unit
/// delimiter comes first (MPEG-TS wants one); on a keyframe without in-band SPS/PPS, the configuration's
/// parameter sets are inserted so the access unit decodes on its own.
pub fn avcc_to_annexb(
    payload: &[u8],
    cfg: &AvcDecoderConfig,
    keyframe: bool,
    aud: bool,
    out: &mut Vec<u8>,
) -> Result<(), AvcError> {
    let nalus: Vec<&[u8]> = avcc_nalus(payload, cfg.nal_length_size).collect::<Result<_, _>>()?;
    let nal_type = |n: &[u8]| n.first().map(|b| b & 0x1F);
    let unit = AnnexB {
        aud: aud.then_some(&[0x09, 0xF0][..]),
        is_param: &|n| matches!(nal_type(n), Some(7 | 8)),
        is_aud: &|n| nal_type(n) == Some(9),
    };
    unit.write(&nalus, cfg.sps.iter().chain(&cfg.pps).map(|b| &b[..]), keyframe, out);
    Ok(())
}

/// How a codec's access unit goes out as Annex-B: H.264 and H.265 differ only in which NAL units are parameter
/// sets or delimiters, and in the delimiter they put first.
pub(crate) struct AnnexB<'a> {
    /// The access unit delimiter to write first (its NAL header and payload), if any.
    pub aud: Option<&'a [u8]>,
    pub is_param: &'a dyn Fn(&[u8]) -> bool,
    pub is_aud: &'a dyn Fn(&[u8]) -> bool,
}

impl AnnexB<'_> {
    /// Writes `nalus`; `params`, the configuration's parameter sets, go before a keyframe that carries none of
    /// its own (taken lazily: no allocation per frame).
    pub(crate) fn write<'p>(
        &self,
        nalus: &[&[u8]],
        params: impl Iterator<Item = &'p [u8]>,
        keyframe: bool,
        out: &mut Vec<u8>,
    ) {
        const START: [u8; 4] = [0, 0, 0, 1];
        if let Some(aud) = self.aud {
            out.extend_from_slice(&START);
            out.extend_from_slice(aud);
        }
        if keyframe && !nalus.iter().any(|n| (self.is_param)(n)) {
            for p in params {
                out.extend_from_slice(&START);
                out.extend_from_slice(p);
            }
        }
        for n in nalus {
            // Delimiters are the caller's choice; drop any the encoder put in.
            if (self.is_aud)(n) {
                continue;
            }
            out.extend_from_slice(&START);
            out.extend_from_slice(n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    // Generated with ffmpeg/libx264 from lavfi testsrc2 and pasted here so the
    // tests do not need ffmpeg. Several contain 00 00 03 emulation bytes.
    /// -profile:v high, 1280x720 @ 30
    const SPS_HIGH_720P30: &[u8] = &[
        0x67, 0x64, 0x00, 0x1f, 0xac, 0xd9, 0x40, 0x50, 0x05, 0xbb, 0x01, 0x10, 0x00, 0x00, 0x03, 0x00, 0x10, 0x00,
        0x00, 0x03, 0x03, 0xc0, 0xf1, 0x83, 0x19, 0x60,
    ];
    const PPS_HIGH_720P30: &[u8] = &[0x68, 0xeb, 0xe3, 0xcb, 0x22, 0xc0];
    /// -profile:v baseline, 640x360 @ 30
    const SPS_BASELINE_360P30: &[u8] = &[
        0x67, 0x42, 0xc0, 0x1e, 0xd9, 0x00, 0xa0, 0x2f, 0xf9, 0x70, 0x11, 0x00, 0x00, 0x03, 0x00, 0x01, 0x00, 0x00,
        0x03, 0x00, 0x3c, 0x0f, 0x16, 0x2e, 0x48,
    ];
    const PPS_BASELINE_360P30: &[u8] = &[0x68, 0xcb, 0x83, 0xcb, 0x20];
    /// -profile:v high, 1920x1080 @ 25 (coded 1088, cropped)
    const SPS_HIGH_1080P25: &[u8] = &[
        0x67, 0x64, 0x00, 0x28, 0xac, 0xd9, 0x40, 0x78, 0x02, 0x27, 0xe5, 0xc0, 0x44, 0x00, 0x00, 0x03, 0x00, 0x04,
        0x00, 0x00, 0x03, 0x00, 0xc8, 0x3c, 0x60, 0xc6, 0x58,
    ];
    /// -profile:v high -flags +ildct+ilme, 720x576 @ 25 (frame_mbs_only = 0)
    const SPS_INTERLACED_576I25: &[u8] = &[
        0x67, 0x64, 0x00, 0x1e, 0xac, 0xd9, 0x40, 0xb4, 0x24, 0xd8, 0x08, 0x80, 0x00, 0x00, 0x03, 0x00, 0x80, 0x00,
        0x00, 0x19, 0x0f, 0x8a, 0x14, 0xcb,
    ];
    /// -profile:v high444 -pix_fmt yuv444p, 320x240 @ 30 (chroma_format_idc 3)
    const SPS_HIGH444_240P30: &[u8] = &[
        0x67, 0xf4, 0x00, 0x0d, 0x91, 0x9b, 0x28, 0x28, 0x3f, 0x60, 0x22, 0x00, 0x00, 0x03, 0x00, 0x02, 0x00, 0x00,
        0x03, 0x00, 0x78, 0x1e, 0x28, 0x53, 0x2c,
    ];

    fn info(sps: &[u8]) -> SpsInfo {
        parse_sps(sps).expect("valid SPS")
    }

    #[test]
    fn real_sps_high_720p() {
        let i = info(SPS_HIGH_720P30);
        assert_eq!((i.profile_idc, i.level_idc), (100, 31));
        assert_eq!((i.width, i.height), (1280, 720));
        assert_eq!(i.fps, Some(30.0));
    }

    #[test]
    fn real_sps_baseline_360p() {
        let i = info(SPS_BASELINE_360P30);
        assert_eq!((i.profile_idc, i.constraint_flags, i.level_idc), (66, 0xc0, 30));
        assert_eq!((i.width, i.height), (640, 360));
        assert_eq!(i.fps, Some(30.0));
    }

    #[test]
    fn real_sps_cropped_1080p() {
        let i = info(SPS_HIGH_1080P25);
        assert_eq!((i.width, i.height), (1920, 1080));
        assert_eq!(i.fps, Some(25.0));
    }

    #[test]
    fn real_sps_interlaced() {
        let i = info(SPS_INTERLACED_576I25);
        assert_eq!((i.width, i.height), (720, 576));
        assert_eq!(i.fps, Some(25.0));
    }

    #[test]
    fn real_sps_high444() {
        let i = info(SPS_HIGH444_240P30);
        assert_eq!(i.profile_idc, 244);
        assert_eq!((i.width, i.height), (320, 240));
        assert_eq!(i.fps, Some(30.0));
    }

    #[test]
    fn scaling_lists_are_skipped() {
        // Hand-built high-profile SPS with seq_scaling_matrix_present and one
        // explicit 4x4 list (all delta 0 -> flat 8), 16x16, no VUI.
        let mut w = BitWriter::default();
        w.bits(100, 8); // profile_idc
        w.bits(0, 8);
        w.bits(30, 8);
        w.ue(0); // sps id
        w.ue(1); // chroma_format_idc
        w.ue(0);
        w.ue(0);
        w.bits(0, 1);
        w.bits(1, 1); // seq_scaling_matrix_present
        w.bits(1, 1); // list 0 present
        for _ in 0..16 {
            w.se(0);
        }
        for _ in 1..8 {
            w.bits(0, 1);
        }
        w.ue(0); // log2_max_frame_num
        w.ue(2); // poc type 2
        w.ue(1); // refs
        w.bits(0, 1);
        w.ue(0); // width 1 MB
        w.ue(0); // height 1 MB
        w.bits(1, 1); // frame_mbs_only
        w.bits(1, 1); // direct_8x8
        w.bits(0, 1); // no crop
        w.bits(0, 1); // no vui
        let mut nal = vec![0x67];
        nal.extend(w.finish());
        let i = parse_sps(&nal).expect("parses");
        assert_eq!((i.width, i.height, i.fps), (16, 16, None));
    }

    #[test]
    fn bad_sps_inputs() {
        assert_eq!(parse_sps(&[]), Err(AvcError::Truncated));
        assert_eq!(parse_sps(PPS_HIGH_720P30), Err(AvcError::WrongNalType { expected: 7, got: 8 }));
        assert_eq!(parse_sps(&SPS_HIGH_720P30[..6]), Err(AvcError::Truncated));
        assert!(parse_sps(&[0x67, 0x64, 0, 0x1f, 0, 0, 0, 0, 0, 0]).is_err());
    }

    #[test]
    fn truncated_vui_keeps_size() {
        // Cut inside the VUI timing info: size is still known.
        let cut = &SPS_HIGH_720P30[..SPS_HIGH_720P30.len() - 6];
        let i = parse_sps(cut).expect("size survives");
        assert_eq!((i.width, i.height, i.fps), (1280, 720, None));
    }

    #[test]
    fn emulation_prevention() {
        assert_eq!(remove_emulation_prevention(&[0, 0, 3, 1, 0, 0, 3, 0, 0, 3]), vec![0, 0, 1, 0, 0, 0, 0]);
        assert_eq!(remove_emulation_prevention(&[0, 3, 0, 0, 3]), vec![0, 3, 0, 0]);
    }

    #[test]
    fn config_from_sps_pps_roundtrip() {
        let cfg = AvcDecoderConfig::from_sps_pps(SPS_HIGH_720P30, PPS_HIGH_720P30).expect("ok");
        assert_eq!((cfg.profile, cfg.compatibility, cfg.level), (100, 0, 31));
        assert_eq!(cfg.nal_length_size, 4);
        let bytes = cfg.to_bytes();
        assert_eq!(&bytes[..6], &[1, 100, 0, 31, 0xFF, 0xE1]);
        assert_eq!(AvcDecoderConfig::parse(&bytes), Ok(cfg.clone()));
        assert_eq!(info(&cfg.sps[0]).width, 1280);

        let mut annexb = vec![0, 0, 0, 1];
        annexb.extend_from_slice(SPS_BASELINE_360P30);
        let cfg = AvcDecoderConfig::from_sps_pps(&annexb, PPS_BASELINE_360P30).expect("ok");
        assert_eq!(&cfg.sps[0][..], SPS_BASELINE_360P30);
    }

    #[test]
    fn config_parse_errors() {
        assert_eq!(AvcDecoderConfig::parse(&[]), Err(AvcError::Truncated));
        assert_eq!(AvcDecoderConfig::parse(&[0, 100, 0, 31, 0xFF, 0xE0, 0]), Err(AvcError::BadConfigVersion(0)));
        // SPS length overruns the record.
        assert_eq!(AvcDecoderConfig::parse(&[1, 100, 0, 31, 0xFF, 0xE1, 0x00, 0x10, 0x67]), Err(AvcError::Truncated));
        assert_eq!(
            AvcDecoderConfig::from_sps_pps(PPS_HIGH_720P30, SPS_HIGH_720P30),
            Err(AvcError::WrongNalType { expected: 7, got: 8 })
        );
        assert_eq!(AvcDecoderConfig::from_sps_pps(&[0x67, 0x64], PPS_HIGH_720P30), Err(AvcError::Truncated));
    }

    #[test]
    fn config_ignores_high_profile_extension() {
        let cfg = AvcDecoderConfig::from_sps_pps(SPS_HIGH_720P30, PPS_HIGH_720P30).expect("ok");
        let mut bytes = cfg.to_bytes();
        bytes.extend_from_slice(&[0xFD, 0xF8, 0xF8, 0x00]);
        assert_eq!(AvcDecoderConfig::parse(&bytes), Ok(cfg));
    }

    #[test]
    fn nalus_iteration() {
        let payload = [0, 0, 0, 2, 0x09, 0xF0, 0, 0, 0, 0, 0, 0, 0, 1, 0x65];
        let nals: Vec<_> = avcc_nalus(&payload, 4).collect();
        assert_eq!(nals, vec![Ok(&[0x09, 0xF0][..]), Ok(&[0x65][..])]);

        let short = [2, 0xAA, 0xBB, 1, 0xCC];
        let nals: Vec<_> = avcc_nalus(&short, 1).collect();
        assert_eq!(nals, vec![Ok(&[0xAA, 0xBB][..]), Ok(&[0xCC][..])]);

        let overrun = [0, 0, 0, 1, 0x65, 0, 0, 0, 9, 1];
        let nals: Vec<_> = avcc_nalus(&overrun, 4).collect();
        assert_eq!(nals, vec![Ok(&[0x65][..]), Err(AvcError::NalOverrun { len: 9, remaining: 1 })]);

        let nals: Vec<_> = avcc_nalus(&[0, 0], 4).collect();
        assert_eq!(nals, vec![Err(AvcError::Truncated)]);
        let nals: Vec<_> = avcc_nalus(&[1, 2], 5).collect();
        assert_eq!(nals, vec![Err(AvcError::BadNalLengthSize(5))]);
        assert_eq!(avcc_nalus(&[], 4).count(), 0);
    }

    #[derive(Default)]
    struct BitWriter {
        out: Vec<u8>,
        nbits: usize,
    }

    impl BitWriter {
        fn bits(&mut self, v: u64, n: u32) {
            for i in (0..n).rev() {
                if self.nbits.is_multiple_of(8) {
                    self.out.push(0);
                }
                if (v >> i) & 1 == 1 {
                    let last = self.out.len() - 1;
                    self.out[last] |= 0x80 >> (self.nbits % 8);
                }
                self.nbits += 1;
            }
        }
        fn ue(&mut self, v: u32) {
            let x = u64::from(v) + 1;
            let len = 64 - x.leading_zeros();
            self.bits(0, len - 1);
            self.bits(x, len);
        }
        fn se(&mut self, v: i64) {
            let k = if v > 0 { 2 * v - 1 } else { -2 * v };
            self.ue(k as u32);
        }
        fn finish(mut self) -> Vec<u8> {
            self.bits(1, 1); // rbsp_stop_one_bit
            self.out
        }
    }

    /// Writes a minimal SPS with the given geometry, for property tests.
    fn synth_sps(w_mbs: u32, h_mbs: u32, crop: [u32; 4], timing: Option<(u32, u32)>) -> Vec<u8> {
        let mut w = BitWriter::default();
        w.bits(66, 8);
        w.bits(0, 8);
        w.bits(30, 8);
        w.ue(0);
        w.ue(0);
        w.ue(0); // poc type 0
        w.ue(0);
        w.ue(1);
        w.bits(0, 1);
        w.ue(w_mbs - 1);
        w.ue(h_mbs - 1);
        w.bits(1, 1);
        w.bits(1, 1);
        let cropping = crop != [0; 4];
        w.bits(u64::from(cropping), 1);
        if cropping {
            for c in crop {
                w.ue(c);
            }
        }
        w.bits(u64::from(timing.is_some()), 1);
        if let Some((units, scale)) = timing {
            w.bits(0, 4); // no aspect, overscan, signal type, chroma loc
            w.bits(1, 1);
            w.bits(u64::from(units), 32);
            w.bits(u64::from(scale), 32);
            w.bits(1, 1);
            w.bits(0, 5); // no HRD, pic_struct, bitstream_restriction...
        }
        let rbsp = w.finish();
        // Re-insert emulation prevention as an encoder would.
        let mut nal = vec![0x67];
        let mut zeros = 0;
        for b in rbsp {
            if zeros >= 2 && b <= 3 {
                nal.push(3);
                zeros = 0;
            }
            zeros = if b == 0 { zeros + 1 } else { 0 };
            nal.push(b);
        }
        nal
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn prop_arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256), len_size in 0u8..6) {
            let _ = AvcDecoderConfig::parse(&bytes);
            let mut sps = bytes.clone();
            if let Some(b) = sps.first_mut() {
                *b = 0x67;
            }
            let _ = parse_sps(&sps);
            let _ = AvcDecoderConfig::from_sps_pps(&sps, &bytes);
            for n in avcc_nalus(&bytes, len_size) {
                let _ = n;
            }
        }

        #[test]
        fn prop_config_roundtrip(
            profile in any::<u8>(), compat in any::<u8>(), level in any::<u8>(), len_size in 1u8..=4,
            sps in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 0..4),
            pps in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 0..4),
        ) {
            let cfg = AvcDecoderConfig {
                profile, compatibility: compat, level, nal_length_size: len_size,
                sps: sps.into_iter().map(Bytes::from).collect(),
                pps: pps.into_iter().map(Bytes::from).collect(),
            };
            prop_assert_eq!(AvcDecoderConfig::parse(&cfg.to_bytes()), Ok(cfg));
        }

        #[test]
        fn prop_nalus_roundtrip(
            nals in prop::collection::vec(prop::collection::vec(any::<u8>(), 1..50), 0..6),
            len_size in prop::sample::select(vec![1u8, 2, 4]),
        ) {
            let mut payload = Vec::new();
            for n in &nals {
                let len = (n.len() as u32).to_be_bytes();
                payload.extend_from_slice(&len[4 - usize::from(len_size)..]);
                payload.extend_from_slice(n);
            }
            let back: Result<Vec<&[u8]>, _> = avcc_nalus(&payload, len_size).collect();
            let want: Vec<&[u8]> = nals.iter().map(Vec::as_slice).collect();
            prop_assert_eq!(back, Ok(want));
        }

        #[test]
        fn prop_synthetic_sps(
            w_mbs in 1u32..300, h_mbs in 1u32..200,
            crop in prop::array::uniform4(0u32..8),
            timing in prop::option::of((1u32..100_000, 1u32..1_000_000)),
        ) {
            let nal = synth_sps(w_mbs, h_mbs, crop, timing);
            let want_w = i64::from(w_mbs * 16) - 2 * i64::from(crop[0] + crop[1]);
            let want_h = i64::from(h_mbs * 16) - 2 * i64::from(crop[2] + crop[3]);
            let got = parse_sps(&nal);
            if want_w < 0 || want_h < 0 {
                prop_assert!(got.is_err());
            } else {
                let got = got.expect("valid");
                prop_assert_eq!((i64::from(got.width), i64::from(got.height)), (want_w, want_h));
                let want_fps = timing.map(|(u, s)| f64::from(s) / (2.0 * f64::from(u)));
                prop_assert_eq!(got.fps, want_fps);
            }
        }
    }
}
