//! MPEG-TS demuxing into the media model: HLS segments (and any other TS) in, [`Frame`]s out.
//!
//! Pure and sans-IO: bytes are fed in whatever pieces they arrive, frames come out. PAT and PMT find the
//! elementary streams; H.264 (stream type 0x1B) leaves Annex-B as AVCC with its decoder configuration record built
//! from the in-band SPS/PPS, AAC in ADTS (0x0F) leaves as raw frames with its AudioSpecificConfig. A configuration
//! frame comes out before the first media frame of its track and again whenever the parameter sets change.
//! Timestamps are 33-bit 90 kHz clocks unwrapped onto one continuous millisecond timeline.

use std::collections::BTreeMap;

use bytes::{BufMut, Bytes, BytesMut};

use super::aac::AudioSpecificConfig;
use super::audio_es::adts_frame;
use super::avc::{AvcDecoderConfig, AvcError, NAL_TYPE_PPS, NAL_TYPE_SPS};
use super::ts::{crc32_mpeg2, PACKET_SIZE};
use super::{Codec, Frame, MediaKind};

/// The largest PES packet reassembled: far above any real access unit, small enough that a stream which never
/// ends its PES cannot take the memory with it.
pub const MAX_PES: usize = 8 << 20;
/// PSI sections are at most 1,024 bytes (ISO/IEC 13818-1 §2.4.4.11, PAT and PMT).
const MAX_SECTION: usize = 1024;
const SYNC_BYTE: u8 = 0x47;
const PID_PAT: u16 = 0;
const STREAM_TYPE_H264: u8 = 0x1B;
const STREAM_TYPE_AAC: u8 = 0x0F;
const NAL_TYPE_IDR: u8 = 5;
const NAL_TYPE_AUD: u8 = 9;
/// PTS/DTS are 33-bit counters of a 90 kHz clock.
const WRAP_90K: i64 = 1 << 33;
/// A composition offset FLV can carry (signed 24-bit milliseconds).
const MAX_CTS: i64 = 0x7F_FFFF;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TsDemuxError {
    #[error("not MPEG-TS: byte {offset} is {byte:#04x} where a packet's sync byte 0x47 belongs")]
    LostSync { offset: u64, byte: u8 },
    #[error("a PES packet on PID {pid:#x} grew past {max} bytes")]
    PesTooLarge { pid: u16, max: usize },
    #[error("PID {pid:#x} carries a malformed PES packet ({reason})")]
    BadPes { pid: u16, reason: &'static str },
    #[error("malformed ADTS audio on PID {0:#x}")]
    BadAdts(u16),
    #[error("unusable H.264 parameter sets: {0}")]
    BadParameterSets(#[from] AvcError),
}

/// Which elementary stream a PID carries, among the ones demuxed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EsKind {
    H264,
    Aac,
}

/// A PES packet being reassembled.
struct PesBuf {
    data: BytesMut,
    /// The random access indicator of its first packet's adaptation field.
    random_access: bool,
}

impl PesBuf {
    /// Whether a PES with an explicit length has all its bytes (video PES are usually unbounded, length 0).
    fn complete(&self) -> bool {
        let Some(len) = self.data.get(4..6).map(|b| usize::from(u16::from_be_bytes([b[0], b[1]]))) else {
            return false;
        };
        len != 0 && self.data.len() >= 6 + len
    }
}

struct EsState {
    kind: EsKind,
    /// The continuity counter of the last packet with payload.
    cc: Option<u8>,
    pes: Option<PesBuf>,
}

/// A PSI section (PAT or PMT) being reassembled across packets.
#[derive(Default)]
struct SectionBuf {
    data: Vec<u8>,
    active: bool,
}

impl SectionBuf {
    /// Adds a packet's payload; returns the section once it is complete.
    fn push(&mut self, pusi: bool, payload: &[u8]) -> Option<Vec<u8>> {
        if pusi {
            self.data.clear();
            self.active = false;
            let pointer = usize::from(*payload.first()?);
            self.data.extend_from_slice(payload.get(1 + pointer..)?);
            self.active = true;
        } else if self.active {
            self.data.extend_from_slice(payload);
        } else {
            return None;
        }
        let len = match self.data.get(1..3) {
            Some(b) => 3 + ((usize::from(b[0] & 0x0F) << 8) | usize::from(b[1])),
            None => return None,
        };
        if len > MAX_SECTION {
            self.active = false;
            return None;
        }
        if self.data.len() < len {
            return None;
        }
        self.active = false;
        Some(self.data[..len].to_vec())
    }
}

/// Extends 33-bit timestamps to a continuous timeline: each value is taken in the wrap period that puts it
/// nearest the previous one, so a wrap (every 26.5 hours) moves forward instead of back.
#[derive(Debug, Default)]
struct Clock33 {
    last: Option<i64>,
}

impl Clock33 {
    fn extend(&mut self, raw: u64) -> i64 {
        let raw = (raw as i64) & (WRAP_90K - 1);
        let v = match self.last {
            None => raw,
            Some(last) => {
                let here = last - last.rem_euclid(WRAP_90K) + raw;
                [here - WRAP_90K, here, here + WRAP_90K].into_iter().min_by_key(|c| (c - last).abs()).unwrap_or(here)
            }
        };
        self.last = Some(v);
        v
    }
}

/// The demuxer: feed it TS bytes, collect frames.
#[derive(Default)]
pub struct TsDemuxer {
    /// The tail of a packet split between two feeds.
    partial: Vec<u8>,
    /// Bytes consumed so far, for error offsets.
    offset: u64,
    pmt_pid: Option<u16>,
    pat: SectionBuf,
    pmt: SectionBuf,
    /// Elementary streams as the PMT lists them: PID and stream type, demuxed or not.
    listed: Vec<(u16, u8)>,
    streams: BTreeMap<u16, EsState>,
    clock: Clock33,
    sps: Option<Bytes>,
    pps: Option<Bytes>,
    avc_config: Option<Bytes>,
    asc: Option<Bytes>,
    /// Where the next audio frame falls when its PES carries no PTS.
    next_audio_90k: Option<i64>,
}

impl TsDemuxer {
    pub fn new() -> Self {
        Self::default()
    }

    /// The elementary streams the PMT lists (PID, stream type), including ones not demuxed: a caller can say
    /// why a stream yields nothing.
    pub fn listed_streams(&self) -> &[(u16, u8)] {
        &self.listed
    }

    /// Feeds bytes; the frames they complete are appended to `out`.
    pub fn feed(&mut self, mut data: &[u8], out: &mut Vec<Frame>) -> Result<(), TsDemuxError> {
        if !self.partial.is_empty() {
            let need = PACKET_SIZE - self.partial.len();
            let (head, rest) = data.split_at(need.min(data.len()));
            self.partial.extend_from_slice(head);
            data = rest;
            if self.partial.len() < PACKET_SIZE {
                return Ok(());
            }
            let packet = std::mem::take(&mut self.partial);
            self.packet(&packet, out)?;
        }
        let mut packets = data.chunks_exact(PACKET_SIZE);
        for p in &mut packets {
            self.packet(p, out)?;
        }
        self.partial.extend_from_slice(packets.remainder());
        Ok(())
    }

    /// Ends every PES in progress (the end of a segment: its last video access unit has no successor to end it)
    /// and drops a torn packet.
    pub fn flush(&mut self, out: &mut Vec<Frame>) -> Result<(), TsDemuxError> {
        self.offset += self.partial.len() as u64;
        self.partial.clear();
        let pids: Vec<u16> = self.streams.keys().copied().collect();
        for pid in pids {
            let Some(s) = self.streams.get_mut(&pid) else { continue };
            // The next segment may not continue this one's counters (a skipped segment, another encoder).
            s.cc = None;
            if let Some(pes) = s.pes.take() {
                self.finish(pid, pes, out)?;
            }
        }
        Ok(())
    }

    /// The timeline restarts (HLS EXT-X-DISCONTINUITY): timestamps after this relate to nothing before.
    pub fn discontinuity(&mut self) {
        self.clock = Clock33::default();
        self.next_audio_90k = None;
        for s in self.streams.values_mut() {
            s.cc = None;
            s.pes = None;
        }
    }

    fn packet(&mut self, p: &[u8], out: &mut Vec<Frame>) -> Result<(), TsDemuxError> {
        let offset = self.offset;
        self.offset += PACKET_SIZE as u64;
        if p[0] != SYNC_BYTE {
            return Err(TsDemuxError::LostSync { offset, byte: p[0] });
        }
        if p[1] & 0x80 != 0 {
            // The transport error indicator: the sender knows this packet is damaged.
            return Ok(());
        }
        let pusi = p[1] & 0x40 != 0;
        let pid = (u16::from(p[1] & 0x1F) << 8) | u16::from(p[2]);
        let control = (p[3] >> 4) & 0x03;
        let cc = p[3] & 0x0F;
        let mut at = 4;
        let mut random_access = false;
        if control & 0x02 != 0 {
            let len = usize::from(p[4]);
            random_access = len > 0 && p[5] & 0x40 != 0;
            at = 5 + len;
        }
        if control & 0x01 == 0 || at >= PACKET_SIZE {
            return Ok(());
        }
        let payload = &p[at..];
        if pid == PID_PAT {
            if let Some(s) = self.pat.push(pusi, payload) {
                self.on_pat(&s);
            }
        } else if Some(pid) == self.pmt_pid {
            if let Some(s) = self.pmt.push(pusi, payload) {
                self.on_pmt(&s);
            }
        } else if self.streams.contains_key(&pid) {
            self.on_es(pid, pusi, cc, random_access, payload, out)?;
        }
        Ok(())
    }

    fn on_pat(&mut self, section: &[u8]) {
        let Some(body) = section_body(section, 0x00) else { return };
        let pmt = body
            .chunks_exact(4)
            .find(|e| u16::from_be_bytes([e[0], e[1]]) != 0)
            .map(|e| (u16::from(e[2] & 0x1F) << 8) | u16::from(e[3]));
        if pmt.is_some() && pmt != self.pmt_pid {
            self.pmt_pid = pmt;
            self.pmt = SectionBuf::default();
        }
    }

    fn on_pmt(&mut self, section: &[u8]) {
        let Some(body) = section_body(section, 0x02) else { return };
        let Some(info_len) = body.get(2..4).map(|b| (usize::from(b[0] & 0x0F) << 8) | usize::from(b[1])) else {
            return;
        };
        let mut rest = body.get(4 + info_len..).unwrap_or_default();
        let mut listed = Vec::new();
        while let [stream_type, p0, p1, l0, l1, tail @ ..] = rest {
            let pid = (u16::from(p0 & 0x1F) << 8) | u16::from(*p1);
            listed.push((pid, *stream_type));
            let es_info = (usize::from(l0 & 0x0F) << 8) | usize::from(*l1);
            rest = tail.get(es_info..).unwrap_or_default();
        }
        // A PMT repeats in every segment: streams it keeps keep their reassembly state.
        let mut streams = BTreeMap::new();
        for &(pid, stream_type) in &listed {
            let kind = match stream_type {
                STREAM_TYPE_H264 => EsKind::H264,
                STREAM_TYPE_AAC => EsKind::Aac,
                _ => continue,
            };
            let state = match self.streams.remove(&pid) {
                Some(s) if s.kind == kind => s,
                _ => EsState { kind, cc: None, pes: None },
            };
            streams.insert(pid, state);
        }
        self.streams = streams;
        self.listed = listed;
    }

    fn on_es(
        &mut self,
        pid: u16,
        pusi: bool,
        cc: u8,
        random_access: bool,
        payload: &[u8],
        out: &mut Vec<Frame>,
    ) -> Result<(), TsDemuxError> {
        let Some(st) = self.streams.get_mut(&pid) else { return Ok(()) };
        let expected = st.cc.map(|c| (c + 1) & 0x0F);
        if st.cc == Some(cc) {
            return Ok(()); // a duplicate packet, which TS allows once
        }
        st.cc = Some(cc);
        let mut done = None;
        if pusi {
            done = st.pes.replace(PesBuf { data: BytesMut::from(payload), random_access });
        } else if expected.is_some_and(|e| e != cc) {
            // A packet went missing mid-PES: the access unit is damaged, and a decoder is better off without it.
            st.pes = None;
        } else if let Some(pes) = st.pes.as_mut() {
            if pes.data.len() + payload.len() > MAX_PES {
                st.pes = None;
                return Err(TsDemuxError::PesTooLarge { pid, max: MAX_PES });
            }
            pes.data.put_slice(payload);
        }
        let complete = st.pes.as_ref().is_some_and(PesBuf::complete);
        let now = if complete { st.pes.take() } else { None };
        for pes in done.into_iter().chain(now) {
            self.finish(pid, pes, out)?;
        }
        Ok(())
    }

    /// A whole PES packet: its header read, its access unit(s) turned into frames.
    fn finish(&mut self, pid: u16, pes: PesBuf, out: &mut Vec<Frame>) -> Result<(), TsDemuxError> {
        let Some(kind) = self.streams.get(&pid).map(|s| s.kind) else { return Ok(()) };
        let data = pes.data.freeze();
        let header = parse_pes_header(&data).map_err(|reason| TsDemuxError::BadPes { pid, reason })?;
        let es = data.slice(header.es);
        match kind {
            EsKind::H264 => self.video(header.pts, header.dts, pes.random_access, &es, out),
            EsKind::Aac => self.audio(pid, header.pts, &es, out),
        }
    }

    fn video(
        &mut self,
        pts: Option<u64>,
        dts: Option<u64>,
        random_access: bool,
        es: &[u8],
        out: &mut Vec<Frame>,
    ) -> Result<(), TsDemuxError> {
        let mut avcc = BytesMut::with_capacity(es.len() + 16);
        let mut idr = false;
        for nal in annexb_nalus(es) {
            match nal[0] & 0x1F {
                NAL_TYPE_SPS => self.sps = Some(Bytes::copy_from_slice(nal)),
                NAL_TYPE_PPS => self.pps = Some(Bytes::copy_from_slice(nal)),
                // The record carries the parameter sets and FLV has no delimiters: neither goes in the frame.
                NAL_TYPE_AUD => {}
                t => {
                    idr |= t == NAL_TYPE_IDR;
                    avcc.put_u32(nal.len() as u32);
                    avcc.put_slice(nal);
                }
            }
        }
        // An access unit without a timestamp cannot be placed on the timeline.
        let Some(pts) = pts else { return Ok(()) };
        let dts90 = self.clock.extend(dts.unwrap_or(pts));
        let pts90 = if dts.is_some() { self.clock.extend(pts) } else { dts90 };
        let dts_ms = dts90.div_euclid(90);
        self.video_config(dts_ms, out)?;
        if avcc.is_empty() || self.avc_config.is_none() {
            return Ok(()); // nothing to decode, or nothing to decode it with yet
        }
        out.push(Frame {
            kind: MediaKind::Video,
            codec: Codec::H264,
            dts: dts_ms,
            cts: (pts90.div_euclid(90) - dts_ms).clamp(-MAX_CTS, MAX_CTS) as i32,
            keyframe: idr || random_access,
            config: false,
            payload: avcc.freeze(),
        });
        Ok(())
    }

    /// Emits a new decoder configuration record when the parameter sets in force changed.
    fn video_config(&mut self, dts_ms: i64, out: &mut Vec<Frame>) -> Result<(), TsDemuxError> {
        let (Some(sps), Some(pps)) = (&self.sps, &self.pps) else { return Ok(()) };
        let record = Bytes::from(AvcDecoderConfig::from_sps_pps(sps, pps)?.to_bytes());
        if self.avc_config.as_ref() != Some(&record) {
            let mut f = Frame::config(MediaKind::Video, Codec::H264, record.clone());
            f.dts = dts_ms;
            out.push(f);
            self.avc_config = Some(record);
        }
        Ok(())
    }

    fn audio(&mut self, pid: u16, pts: Option<u64>, es: &Bytes, out: &mut Vec<Frame>) -> Result<(), TsDemuxError> {
        let start = match (pts, self.next_audio_90k) {
            (Some(p), _) => self.clock.extend(p),
            (None, Some(t)) => t,
            (None, None) => return Ok(()),
        };
        let (mut at, mut samples) = (0usize, 0i64);
        let mut t90 = start;
        while at < es.len() {
            let rest = &es[at..];
            let f = adts_frame(rest).filter(|f| f.len <= rest.len()).ok_or(TsDemuxError::BadAdts(pid))?;
            let header = if rest[1] & 0x01 == 0 { 9 } else { 7 };
            self.audio_config(rest, t90.div_euclid(90), out);
            out.push(Frame {
                kind: MediaKind::Audio,
                codec: Codec::Aac,
                dts: t90.div_euclid(90),
                cts: 0,
                keyframe: false,
                config: false,
                payload: es.slice(at + header..at + f.len),
            });
            at += f.len;
            // From the PES's own timestamp each time, so rounding does not add up over its frames.
            samples += i64::from(f.samples);
            t90 = start + samples * 90_000 / i64::from(f.sample_rate);
        }
        self.next_audio_90k = Some(t90);
        Ok(())
    }

    /// Emits a new AudioSpecificConfig when an ADTS header describes another one than the one in force.
    fn audio_config(&mut self, adts: &[u8], dts_ms: i64, out: &mut Vec<Frame>) {
        let asc = Bytes::from(asc_of_adts(adts).to_bytes());
        if self.asc.as_ref() != Some(&asc) {
            let mut f = Frame::config(MediaKind::Audio, Codec::Aac, asc.clone());
            f.dts = dts_ms;
            out.push(f);
            self.asc = Some(asc);
        }
    }
}

/// The AudioSpecificConfig an ADTS header describes (ISO/IEC 13818-7 §6.2.1); `adts` is a header that
/// [`adts_frame`] accepted.
fn asc_of_adts(adts: &[u8]) -> AudioSpecificConfig {
    let object_type = (adts[2] >> 6) + 1;
    let frequency_index = (adts[2] >> 2) & 0x0F;
    let channels = ((adts[2] & 0x01) << 2) | (adts[3] >> 6);
    let sample_rate = super::aac::SAMPLE_RATES.get(usize::from(frequency_index)).copied().unwrap_or(0);
    AudioSpecificConfig { object_type, sample_rate, channels, frequency_index }
}

/// A PSI section's table data (after the 8-byte header, before the CRC), when its table id is `table_id` and
/// its CRC holds.
fn section_body(section: &[u8], table_id: u8) -> Option<&[u8]> {
    if section.len() < 12 || section[0] != table_id || crc32_mpeg2(section) != 0 {
        return None;
    }
    section.get(8..section.len() - 4)
}

struct PesHeader {
    pts: Option<u64>,
    dts: Option<u64>,
    /// Where the elementary stream data lies in the PES packet.
    es: std::ops::Range<usize>,
}

fn parse_pes_header(p: &[u8]) -> Result<PesHeader, &'static str> {
    if p.len() < 9 || p[..3] != [0, 0, 1] {
        return Err("no PES start code");
    }
    let declared = usize::from(u16::from_be_bytes([p[4], p[5]]));
    let end = if declared == 0 { p.len() } else { (6 + declared).min(p.len()) };
    let flags = p[7] >> 6;
    let start = 9 + usize::from(p[8]);
    if start > end {
        return Err("header longer than the packet");
    }
    let ts = |at: usize| p.get(at..at + 5).map(read_timestamp).ok_or("timestamp truncated");
    let pts = if flags & 0x02 != 0 { Some(ts(9)?) } else { None };
    let dts = if flags == 0x03 { Some(ts(14)?) } else { None };
    Ok(PesHeader { pts, dts, es: start..end })
}

/// A 33-bit PTS/DTS from its 5 bytes (marker bits skipped).
fn read_timestamp(b: &[u8]) -> u64 {
    (u64::from((b[0] >> 1) & 0x07) << 30)
        | (u64::from(b[1]) << 22)
        | (u64::from(b[2] >> 1) << 15)
        | (u64::from(b[3]) << 7)
        | u64::from(b[4] >> 1)
}

/// The NAL units of an Annex-B byte stream, without start codes or trailing zero bytes; bytes before the first
/// start code are not a NAL unit and are skipped.
pub fn annexb_nalus(data: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut at = find_start_code(data, 0);
    std::iter::from_fn(move || loop {
        let from = at? + 3;
        let next = find_start_code(data, from);
        let mut nal = &data[from..next.unwrap_or(data.len())];
        at = next;
        while let [rest @ .., 0] = nal {
            nal = rest;
        }
        if !nal.is_empty() {
            return Some(nal);
        }
    })
}

/// Where the next `00 00 01` begins, from `from` on.
fn find_start_code(data: &[u8], from: usize) -> Option<usize> {
    data.get(from..)?.windows(3).position(|w| w == [0, 0, 1]).map(|i| from + i)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::ts::{adts_header, TsMuxer};
    use proptest::prelude::*;

    // The x264 baseline SPS/PPS pair the muxer's tests use (320x240).
    const SPS: &[u8] = &[
        0x67, 0x42, 0xC0, 0x0D, 0xDA, 0x05, 0x07, 0xEC, 0x04, 0x40, 0x00, 0x00, 0x03, 0x00, 0x40, 0x00, 0x00, 0x0F,
        0x03, 0xC5, 0x0A, 0xA8,
    ];
    const PPS: &[u8] = &[0x68, 0xCE, 0x0F, 0xC8];
    const ASC: &[u8] = &[0x12, 0x10]; // AAC-LC 44.1 kHz stereo
    /// The muxer starts its timeline this far in, so small negative offsets never underflow.
    const MUX_OFFSET_MS: i64 = 1400;

    fn avc_record() -> Bytes {
        Bytes::from(AvcDecoderConfig::from_sps_pps(SPS, PPS).unwrap().to_bytes())
    }

    fn video(dts: i64, cts: i32, key: bool, nals: &[&[u8]]) -> Frame {
        let mut p = BytesMut::new();
        for n in nals {
            p.put_u32(n.len() as u32);
            p.put_slice(n);
        }
        Frame {
            kind: MediaKind::Video,
            codec: Codec::H264,
            dts,
            cts,
            keyframe: key,
            config: false,
            payload: p.freeze(),
        }
    }

    fn audio(dts: i64, len: usize) -> Frame {
        let payload = Bytes::from((0..len).map(|i| (i * 7 + 1) as u8).collect::<Vec<_>>());
        Frame { kind: MediaKind::Audio, codec: Codec::Aac, dts, cts: 0, keyframe: false, config: false, payload }
    }

    /// A segment as livegate's HLS writes it: tables, then the frames.
    fn mux(frames: &[Frame]) -> Vec<u8> {
        let mut m = TsMuxer::new(true, true);
        let mut out = Vec::new();
        m.write_frame(&mut out, &Frame::config(MediaKind::Video, Codec::H264, avc_record())).unwrap();
        m.write_frame(&mut out, &Frame::config(MediaKind::Audio, Codec::Aac, Bytes::from_static(ASC))).unwrap();
        m.write_tables(&mut out);
        for f in frames {
            m.write_frame(&mut out, f).unwrap();
        }
        out
    }

    fn demux_all(ts: &[u8]) -> Result<Vec<Frame>, TsDemuxError> {
        let mut d = TsDemuxer::new();
        let mut out = Vec::new();
        d.feed(ts, &mut out)?;
        d.flush(&mut out)?;
        Ok(out)
    }

    fn sample_frames() -> Vec<Frame> {
        let big = vec![0x21; 70_000]; // a non-IDR slice (NAL type 1)
        vec![
            video(0, 66, true, &[&[0x06, 0x05, 0x01], &[0x65, 0x88, 0x84, 0x00, 0x21]]),
            audio(5, 180),
            video(33, 0, false, &[&[0x41, 0x9A, 0x00, 0x03]]),
            audio(28, 1),
            video(66, 33, false, &[&[0x41, 0x9B], &big[..]]),
            audio(51, 700),
            video(100, 0, true, &[&[0x65, 0x88, 0x01]]),
        ]
    }

    #[test]
    fn a_segment_of_the_hls_muxer_demuxes_back_to_its_frames() {
        let frames = sample_frames();
        let ts = mux(&frames);
        // Fed in odd pieces, as a socket delivers it.
        let mut d = TsDemuxer::new();
        let mut got = Vec::new();
        for piece in ts.chunks(1000) {
            d.feed(piece, &mut got).unwrap();
        }
        d.flush(&mut got).unwrap();
        assert_eq!(d.listed_streams(), &[(0x100, 0x1B), (0x101, 0x0F)]);

        let configs: Vec<&Frame> = got.iter().filter(|f| f.config).collect();
        assert_eq!(configs.len(), 2, "one configuration per track: {configs:?}");
        assert!(configs.iter().any(|c| c.kind == MediaKind::Video && c.payload == avc_record()));
        assert!(configs.iter().any(|c| c.kind == MediaKind::Audio && &c.payload[..] == ASC));
        for kind in [MediaKind::Video, MediaKind::Audio] {
            let first = got.iter().position(|f| f.kind == kind).unwrap();
            assert!(got[first].config, "{kind:?} configuration comes first");
            let want: Vec<&Frame> = frames.iter().filter(|f| f.kind == kind).collect();
            let back: Vec<&Frame> = got.iter().filter(|f| f.kind == kind && !f.config).collect();
            assert_eq!(back.len(), want.len(), "{kind:?}");
            for (b, w) in back.iter().zip(want) {
                assert_eq!(b.dts, w.dts + MUX_OFFSET_MS, "{kind:?} dts");
                assert_eq!((b.cts, b.keyframe, b.codec), (w.cts, w.keyframe, w.codec), "{kind:?}");
                // The muxer's delimiter and repeated parameter sets are gone: the access unit as it went in.
                assert_eq!(b.payload, w.payload, "{kind:?} payload at {}", w.dts);
            }
        }
    }

    #[test]
    fn timestamps_continue_across_the_33_bit_wrap() {
        // 95 441 000 ms + the muxer's offset is just below 2^33 ticks of 90 kHz; two seconds later is past it.
        let frames = [video(95_441_000, 0, true, &[&[0x65, 1]]), video(95_443_000, 0, false, &[&[0x41, 2]])];
        let got = demux_all(&mux(&frames)).unwrap();
        let dts: Vec<i64> = got.iter().filter(|f| !f.config).map(|f| f.dts).collect();
        assert_eq!(dts, vec![95_442_400, 95_444_400]);

        let mut c = Clock33::default();
        assert_eq!(c.extend((WRAP_90K - 90) as u64), WRAP_90K - 90);
        assert_eq!(c.extend(90), WRAP_90K + 90);
        assert_eq!(c.extend((WRAP_90K - 900) as u64), WRAP_90K - 900, "a little back across the wrap stays back");
    }

    #[test]
    fn a_lost_packet_drops_its_access_unit_only() {
        let frames = [
            video(0, 0, true, &[&[0x65, 1]]),
            video(33, 0, false, &[&[0x41; 1000]]),
            video(66, 0, false, &[&[0x41, 3]]),
        ];
        let ts = mux(&frames);
        // Packets: PAT, PMT, key frame, then the 1000-byte frame over 6 packets: drop its third.
        let mut cut = ts.clone();
        cut.drain(5 * PACKET_SIZE..6 * PACKET_SIZE);
        let got = demux_all(&cut).unwrap();
        let dts: Vec<i64> = got.iter().filter(|f| !f.config).map(|f| f.dts - MUX_OFFSET_MS).collect();
        assert_eq!(dts, vec![0, 66]);
        // A duplicated packet is ignored.
        let mut dup = ts[..4 * PACKET_SIZE].to_vec();
        dup.extend_from_slice(&ts[3 * PACKET_SIZE..]);
        assert_eq!(demux_all(&dup).unwrap(), demux_all(&ts).unwrap());
    }

    #[test]
    fn parameter_set_changes_send_a_new_configuration() {
        let mut es = Vec::new();
        for n in [&[0x09, 0xF0][..], SPS, PPS, &[0x65, 0x11]] {
            es.extend_from_slice(&[0, 0, 0, 1]);
            es.extend_from_slice(n);
        }
        let mut d = TsDemuxer::new();
        let mut out = Vec::new();
        d.video(Some(900), None, false, &es, &mut out).unwrap();
        d.video(Some(3900), None, false, &es, &mut out).unwrap();
        let pps2 = [0x68, 0xCE, 0x0F, 0xC9];
        let es2: Vec<u8> = es.iter().copied().take(es.len() - 6 - 4).chain(pps2).chain([0, 0, 1, 0x65, 0x22]).collect();
        d.video(Some(6900), None, false, &es2, &mut out).unwrap();
        let kinds: Vec<(bool, bool, i64)> = out.iter().map(|f| (f.config, f.keyframe, f.dts)).collect();
        assert_eq!(
            kinds,
            vec![(true, false, 10), (false, true, 10), (false, true, 43), (true, false, 76), (false, true, 76)]
        );
        assert_eq!(&out[1].payload[..], &[0, 0, 0, 2, 0x65, 0x11]);
        let record = AvcDecoderConfig::parse(&out[3].payload).unwrap();
        assert_eq!(&record.pps[0][..], &pps2);
    }

    #[test]
    fn adts_frames_in_one_pes_get_their_own_timestamps() {
        let asc = AudioSpecificConfig::parse(ASC).unwrap();
        let mut es = Vec::new();
        for n in [10usize, 20, 30] {
            es.extend_from_slice(&adts_header(&asc, n));
            es.extend(std::iter::repeat_n(n as u8, n));
        }
        let mut d = TsDemuxer::new();
        let mut out = Vec::new();
        d.audio(0x101, Some(90_000), &Bytes::from(es), &mut out).unwrap();
        let got: Vec<(bool, i64, usize)> = out.iter().map(|f| (f.config, f.dts, f.payload.len())).collect();
        // 1024 samples at 44.1 kHz: 23.2 ms apart.
        assert_eq!(got, vec![(true, 1000, 2), (false, 1000, 10), (false, 1023, 20), (false, 1046, 30)]);
        // A PES without a PTS continues where the last one ended.
        let mut one = adts_header(&asc, 4).to_vec();
        one.extend_from_slice(&[1, 2, 3, 4]);
        out.clear();
        d.audio(0x101, None, &Bytes::from(one), &mut out).unwrap();
        assert_eq!(out[0].dts, 1069);
        assert_eq!(
            d.audio(0x101, Some(0), &Bytes::from_static(b"junk junk"), &mut out),
            Err(TsDemuxError::BadAdts(0x101))
        );
    }

    #[test]
    fn garbage_and_oversized_input_are_errors() {
        let err = demux_all("#EXTM3U\nthis is a playlist, not a transport stream\n".repeat(10).as_bytes()).unwrap_err();
        assert!(matches!(err, TsDemuxError::LostSync { offset: 0, byte: b'#' }), "{err}");
        assert!(err.to_string().contains("not MPEG-TS"));
        // Sync lost after good packets: the offset of the bad one.
        let mut ts = mux(&sample_frames()[..1]);
        let at = ts.len();
        ts.extend_from_slice(&[0x42; PACKET_SIZE]);
        assert_eq!(demux_all(&ts), Err(TsDemuxError::LostSync { offset: at as u64, byte: 0x42 }));
        // A video PES that never ends stops at the cap.
        let huge = mux(&[video(0, 0, true, &[&vec![0x65; MAX_PES + 1000]])]);
        assert_eq!(demux_all(&huge), Err(TsDemuxError::PesTooLarge { pid: 0x100, max: MAX_PES }));
        // A torn last packet is not an error: it is dropped.
        let ts = mux(&sample_frames());
        assert!(demux_all(&ts[..ts.len() - 100]).is_ok());
    }

    #[test]
    fn psi_sections_reassemble_across_packets() {
        let ts = mux(&[]);
        let pmt = &ts[PACKET_SIZE + 4..2 * PACKET_SIZE];
        let mut buf = SectionBuf::default();
        assert_eq!(buf.push(false, pmt), None, "no section starts without its start indicator");
        assert_eq!(buf.push(true, &pmt[..10]), None);
        let section = buf.push(false, &pmt[10..]).expect("complete");
        assert!(section_body(&section, 0x02).is_some(), "its CRC holds");
        let mut bad = section.clone();
        bad[9] ^= 1;
        assert!(section_body(&bad, 0x02).is_none());
    }

    #[test]
    fn annexb_splitting() {
        let data = [9, 9, 0, 0, 1, 0x67, 1, 0, 0, 0, 1, 0x68, 2, 0, 0, 0, 0, 1, 0x65, 3, 0, 0, 1, 0, 0, 1];
        let nals: Vec<&[u8]> = annexb_nalus(&data).collect();
        assert_eq!(nals, vec![&[0x67, 1][..], &[0x68, 2], &[0x65, 3]]);
        assert_eq!(annexb_nalus(&[1, 2, 3]).count(), 0);
        assert_eq!(annexb_nalus(&[]).count(), 0);
    }

    /// Mutations of a valid segment: (position, value) pairs, most kept off the sync bytes so they reach the
    /// tables, PES headers and codec data.
    fn mutate(ts: &mut Vec<u8>, edits: &[(usize, u8)], cut: Option<usize>) {
        for &(at, v) in edits {
            let i = at % ts.len();
            if !i.is_multiple_of(PACKET_SIZE) || v == SYNC_BYTE {
                ts[i] = v;
            }
        }
        if let Some(c) = cut {
            ts.truncate(c % (ts.len() + 1));
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn prop_random_bytes_never_panic(data in prop::collection::vec(any::<u8>(), 0..2000), sync in any::<bool>()) {
            let mut data = data;
            if sync {
                // Sync bytes where they belong, so the garbage gets past the first check.
                for i in (0..data.len()).step_by(PACKET_SIZE) {
                    data[i] = SYNC_BYTE;
                }
            }
            let _ = demux_all(&data);
        }

        #[test]
        fn prop_mutated_segments_never_panic(
            edits in prop::collection::vec((any::<usize>(), any::<u8>()), 1..40),
            cut in prop::option::of(any::<usize>()),
            piece in 1usize..400,
        ) {
            let mut ts = mux(&sample_frames());
            mutate(&mut ts, &edits, cut);
            let mut d = TsDemuxer::new();
            let mut out = Vec::new();
            for p in ts.chunks(piece) {
                if d.feed(p, &mut out).is_err() {
                    break;
                }
            }
            let _ = d.flush(&mut out);
            for f in &out {
                prop_assert!(f.payload.len() <= MAX_PES);
            }
        }
    }
}
