//! H.265/HEVC helpers: the HEVCDecoderConfigurationRecord (`hvcC`, ISO/IEC 14496-15 §8.3.3.1) that FLV/RTMP
//! sequence headers and MP4 sample entries carry, the picture size from the SPS (ITU-T H.265 §7.3.2.2), and
//! length-prefixed access units to Annex-B for MPEG-TS. Pure and bounds-checked: publishers are untrusted.

use bytes::Bytes;
use thiserror::Error;

use super::avc::{self, AvcError, BitReader};

pub const NAL_VPS: u8 = 32;
pub const NAL_SPS: u8 = 33;
pub const NAL_PPS: u8 = 34;
pub const NAL_AUD: u8 = 35;

#[derive(Debug, Error, PartialEq)]
pub enum HevcError {
    #[error("HEVC data truncated")]
    Truncated,
    #[error("unsupported HEVC decoder configuration version {0} (expected 1)")]
    BadConfigVersion(u8),
    #[error("HEVC decoder configuration has no {0}")]
    Missing(&'static str),
    #[error("invalid HEVC SPS: {0}")]
    InvalidSps(&'static str),
    #[error("malformed HEVC access unit: {0}")]
    BadNalus(AvcError),
}

impl From<AvcError> for HevcError {
    fn from(e: AvcError) -> Self {
        match e {
            AvcError::Truncated => HevcError::Truncated,
            AvcError::InvalidSps(m) => HevcError::InvalidSps(m),
            other => HevcError::BadNalus(other),
        }
    }
}

/// The NAL unit type of an HEVC NAL unit (the 6 bits after the forbidden bit of its 2-byte header).
pub fn nal_type(nal: &[u8]) -> Option<u8> {
    nal.first().map(|b| (b >> 1) & 0x3F)
}

/// What livegate needs of an `hvcC` record: the NAL length size and the parameter sets.
#[derive(Debug, Clone, PartialEq)]
pub struct HevcDecoderConfig {
    pub nal_length_size: u8,
    pub vps: Vec<Bytes>,
    pub sps: Vec<Bytes>,
    pub pps: Vec<Bytes>,
}

impl HevcDecoderConfig {
    /// Parses an `hvcC` record: 22 bytes of profile and format fields, then arrays of NAL units by type.
    /// Arrays of other types (SEI) are skipped; a record without VPS, SPS and PPS is refused, since nothing
    /// could decode its stream.
    pub fn parse(record: &[u8]) -> Result<Self, HevcError> {
        if record.len() < 23 {
            return Err(HevcError::Truncated);
        }
        if record[0] != 1 {
            return Err(HevcError::BadConfigVersion(record[0]));
        }
        let nal_length_size = (record[21] & 0x03) + 1;
        let arrays = record[22];
        let mut r = &record[23..];
        let (mut vps, mut sps, mut pps) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..arrays {
            let [kind, n0, n1] = take::<3>(&mut r)?;
            for _ in 0..u16::from_be_bytes([n0, n1]) {
                let [l0, l1] = take::<2>(&mut r)?;
                let len = usize::from(u16::from_be_bytes([l0, l1]));
                let nal = r.get(..len).ok_or(HevcError::Truncated)?;
                r = &r[len..];
                let list = match kind & 0x3F {
                    NAL_VPS => &mut vps,
                    NAL_SPS => &mut sps,
                    NAL_PPS => &mut pps,
                    _ => continue,
                };
                list.push(Bytes::copy_from_slice(nal));
            }
        }
        for (list, name) in [(&vps, "VPS"), (&sps, "SPS"), (&pps, "PPS")] {
            if list.is_empty() {
                return Err(HevcError::Missing(name));
            }
        }
        Ok(Self { nal_length_size, vps, sps, pps })
    }

    /// The picture size of the first SPS.
    pub fn picture_size(&self) -> Result<(u32, u32), HevcError> {
        parse_sps(self.sps.first().ok_or(HevcError::Missing("SPS"))?)
    }
}

fn take<const N: usize>(r: &mut &[u8]) -> Result<[u8; N], HevcError> {
    let (head, rest) = r.split_first_chunk::<N>().ok_or(HevcError::Truncated)?;
    *r = rest;
    Ok(*head)
}

/// The displayed picture size (after the conformance window) of an SPS NAL unit.
pub fn parse_sps(nal: &[u8]) -> Result<(u32, u32), HevcError> {
    if nal_type(nal) != Some(NAL_SPS) {
        return Err(HevcError::InvalidSps("not an SPS NAL unit"));
    }
    let rbsp = avc::remove_emulation_prevention(nal.get(2..).unwrap_or_default());
    let mut r = BitReader::new(&rbsp);
    let _vps_id = r.bits(4)?;
    let max_sub_layers_minus1 = r.bits(3)?;
    let _temporal_id_nesting = r.flag()?;
    skip_profile_tier_level(&mut r, max_sub_layers_minus1)?;
    let _sps_id = r.ue()?;
    let chroma_format_idc = r.ue()?;
    if chroma_format_idc > 3 {
        return Err(HevcError::InvalidSps("chroma_format_idc > 3"));
    }
    let separate_colour_plane = chroma_format_idc == 3 && r.flag()?;
    let width = u64::from(r.ue()?);
    let height = u64::from(r.ue()?);
    let (left, right, top, bottom) = if r.flag()? { (r.ue()?, r.ue()?, r.ue()?, r.ue()?) } else { (0, 0, 0, 0) };
    // Conformance window offsets are in chroma sample units (§7.4.3.2.1, Table 6-1).
    let (sub_w, sub_h) = match (chroma_format_idc, separate_colour_plane) {
        (1, _) => (2, 2),
        (2, _) => (2, 1),
        _ => (1, 1),
    };
    let w = width
        .checked_sub(sub_w * (u64::from(left) + u64::from(right)))
        .ok_or(HevcError::InvalidSps("horizontal conformance window exceeds the picture"))?;
    let h = height
        .checked_sub(sub_h * (u64::from(top) + u64::from(bottom)))
        .ok_or(HevcError::InvalidSps("vertical conformance window exceeds the picture"))?;
    let w = u32::try_from(w).map_err(|_| HevcError::InvalidSps("width too large"))?;
    let h = u32::try_from(h).map_err(|_| HevcError::InvalidSps("height too large"))?;
    Ok((w, h))
}

/// profile_tier_level(1, max_sub_layers_minus1), §7.3.3: fixed-size fields, skipped.
fn skip_profile_tier_level(r: &mut BitReader<'_>, max_sub_layers_minus1: u32) -> Result<(), HevcError> {
    // general profile space/tier/idc (8), compatibility flags (32), source and constraint flags (48), level (8).
    skip(r, 96)?;
    let mut present = [(false, false); 8];
    for p in present.iter_mut().take(max_sub_layers_minus1 as usize) {
        *p = (r.flag()?, r.flag()?);
    }
    if max_sub_layers_minus1 > 0 {
        skip(r, 2 * (8 - max_sub_layers_minus1))?;
    }
    for &(profile, level) in present.iter().take(max_sub_layers_minus1 as usize) {
        if profile {
            skip(r, 88)?;
        }
        if level {
            skip(r, 8)?;
        }
    }
    Ok(())
}

fn skip(r: &mut BitReader<'_>, mut n: u32) -> Result<(), HevcError> {
    while n > 0 {
        let step = n.min(32);
        r.bits(step)?;
        n -= step;
    }
    Ok(())
}

/// Appends a length-prefixed HEVC access unit to `out` as Annex-B. With `aud`, an access unit delimiter comes
/// first (MPEG-TS wants one); a keyframe without in-band parameter sets gets the configuration's VPS, SPS and
/// PPS, so every segment decodes on its own.
pub fn to_annexb(
    payload: &[u8],
    cfg: &HevcDecoderConfig,
    keyframe: bool,
    aud: bool,
    out: &mut Vec<u8>,
) -> Result<(), HevcError> {
    let nalus: Vec<&[u8]> = avc::avcc_nalus(payload, cfg.nal_length_size).collect::<Result<_, _>>()?;
    let unit = avc::AnnexB {
        // AUD, nuh_layer_id 0, temporal id 1; pic_type 2 (any slice type) and the stop bit.
        aud: aud.then_some(&[NAL_AUD << 1, 0x01, 0x50][..]),
        is_param: &|n| matches!(nal_type(n), Some(NAL_VPS..=NAL_PPS)),
        is_aud: &|n| nal_type(n) == Some(NAL_AUD),
    };
    let params = cfg.vps.iter().chain(&cfg.sps).chain(&cfg.pps).map(|b| &b[..]);
    unit.write(&nalus, params, keyframe, out);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    // x265 (Debian's ffmpeg 5.1, lavfi testsrc2 642x362): coded 648x368 with a conformance window, the hvcC
    // as ffmpeg's MP4 muxer wrote it. The SPS holds 00 00 03 emulation bytes in its constraint flags.
    const VPS: &str = "40010c01ffff01600000030090000003000003003f959809";
    const SPS: &str = "42010101600000030090000003000003003fa005120171c9265959a4932bc05a020000030002000003003210";
    const PPS: &str = "4401c172b46240";
    const HVCC: &str = "0101600000009000000000003ff000fcfdf8f800000f03200001001840010c01ffff01600000030090000003\
                        000003003f959809210001002c42010101600000030090000003000003003fa005120171c9265959a4932bc05a\
                        02000003000200000300321022000100074401c172b46240";

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    #[test]
    fn parses_the_record_ffmpeg_writes() {
        let cfg = HevcDecoderConfig::parse(&hex(HVCC)).unwrap();
        assert_eq!(cfg.nal_length_size, 4);
        assert_eq!(cfg.vps, vec![Bytes::from(hex(VPS))]);
        assert_eq!(cfg.sps, vec![Bytes::from(hex(SPS))]);
        assert_eq!(cfg.pps, vec![Bytes::from(hex(PPS))]);
        assert_eq!(cfg.picture_size().unwrap(), (642, 362));
    }

    #[test]
    fn a_record_without_parameter_sets_is_refused() {
        let mut r = hex(HVCC)[..23].to_vec();
        r[22] = 0;
        assert_eq!(HevcDecoderConfig::parse(&r), Err(HevcError::Missing("VPS")));
        let mut bad = hex(HVCC);
        bad[0] = 0;
        assert_eq!(HevcDecoderConfig::parse(&bad), Err(HevcError::BadConfigVersion(0)));
        assert_eq!(HevcDecoderConfig::parse(&hex(HVCC)[..40]), Err(HevcError::Truncated));
    }

    #[test]
    fn keyframes_get_parameter_sets_and_every_unit_a_delimiter() {
        let cfg = HevcDecoderConfig::parse(&hex(HVCC)).unwrap();
        // An IDR slice (type 19) and an encoder's own AUD, which is dropped for ours.
        let mut au = vec![0, 0, 0, 3, NAL_AUD << 1, 1, 0x50];
        au.extend_from_slice(&[0, 0, 0, 3, 19 << 1, 1, 0xAF]);
        let mut out = Vec::new();
        to_annexb(&au, &cfg, true, true, &mut out).unwrap();
        let mut want = vec![0, 0, 0, 1, 0x46, 0x01, 0x50];
        for p in [VPS, SPS, PPS] {
            want.extend_from_slice(&[0, 0, 0, 1]);
            want.extend_from_slice(&hex(p));
        }
        want.extend_from_slice(&[0, 0, 0, 1, 19 << 1, 1, 0xAF]);
        assert_eq!(out, want);
        let mut inter = Vec::new();
        to_annexb(&[0, 0, 0, 3, 1 << 1, 1, 0xD0], &cfg, false, false, &mut inter).unwrap();
        assert_eq!(inter, vec![0, 0, 0, 1, 2, 1, 0xD0]);
        assert!(to_annexb(&[0, 0, 0, 9, 1], &cfg, false, false, &mut Vec::new()).is_err());
    }

    proptest! {
        #[test]
        fn garbage_never_panics(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = HevcDecoderConfig::parse(&data);
            let _ = parse_sps(&data);
            let mut sps = vec![NAL_SPS << 1, 1];
            sps.extend_from_slice(&data);
            let _ = parse_sps(&sps);
        }
    }
}
