//! ISO BMFF (MP4) for recordings, pure (ARCHITECTURE invariant 6): a fragmented MP4 writer for files being
//! recorded (init segment, then moof+mdat fragments, so a killed process leaves a playable file), a parser
//! for what livegate writes (fragmented or flat), and the planner of a flat, seekable, faststart MP4
//! (moov with stts/ctts/stss/stsz/stsc/stco before mdat) that the file layer fills by copying sample bytes.
//!
//! Layouts follow ISO/IEC 14496-12 (boxes), -14 (esds) and -15 (avcC, hvcC).

mod boxes;
mod flat;
mod fragment;
mod parse;

use bytes::Bytes;

use boxes::{bx, full, put16, put32};
pub use flat::{plan_flat, FlatPlan};
pub use fragment::Fragmenter;
pub use parse::{box_header, parse, top_boxes, TopBox};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Mp4Error {
    #[error("truncated {0} box")]
    Truncated(&'static str),
    #[error("invalid {0}")]
    Invalid(&'static str),
    #[error("no moov box: not an MP4 livegate can read")]
    NoMoov,
    #[error("{0}")]
    Incompatible(String),
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Handler {
    Video,
    Audio,
}

/// One track's identity and decoder configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrackInfo {
    pub id: u32,
    pub handler: Handler,
    pub timescale: u32,
    pub width: u16,
    pub height: u16,
    /// The whole sample entry box (avc1 / mp4a). Kept verbatim so a parsed file is rewritten unchanged and
    /// files can be compared for stitching.
    pub sample_entry: Bytes,
}

pub const VIDEO_TIMESCALE: u32 = 90_000;

impl TrackInfo {
    pub fn h264(id: u32, avcc: &[u8], width: u16, height: u16) -> Self {
        Self::visual(id, b"avc1", b"avcC", avcc, width, height)
    }

    /// H.265 as `hvc1`: parameter sets in the `hvcC` record only (not in-band), as FLV carries them.
    pub fn h265(id: u32, hvcc: &[u8], width: u16, height: u16) -> Self {
        Self::visual(id, b"hvc1", b"hvcC", hvcc, width, height)
    }

    fn visual(id: u32, entry: &[u8; 4], config_box: &[u8; 4], config: &[u8], width: u16, height: u16) -> Self {
        let mut e = Vec::with_capacity(86 + config.len() + 8);
        bx(&mut e, entry, |o| {
            o.extend_from_slice(&[0; 6]);
            put16(o, 1); // data_reference_index
            o.extend_from_slice(&[0; 16]);
            put16(o, width);
            put16(o, height);
            put32(o, 0x0048_0000);
            put32(o, 0x0048_0000);
            put32(o, 0);
            put16(o, 1); // frame_count
            o.extend_from_slice(&[0; 32]); // compressorname
            put16(o, 0x0018);
            put16(o, 0xFFFF);
            bx(o, config_box, |o| o.extend_from_slice(config));
        });
        Self { id, handler: Handler::Video, timescale: VIDEO_TIMESCALE, width, height, sample_entry: e.into() }
    }

    pub fn aac(id: u32, asc: &[u8], sample_rate: u32, channels: u8) -> Self {
        let timescale = if (1..65_536).contains(&sample_rate) { sample_rate } else { 48_000 };
        let mut e = Vec::with_capacity(80 + asc.len());
        bx(&mut e, b"mp4a", |o| {
            o.extend_from_slice(&[0; 6]);
            put16(o, 1);
            o.extend_from_slice(&[0; 8]);
            put16(o, u16::from(channels.max(1)));
            put16(o, 16);
            put32(o, 0);
            put32(o, timescale << 16);
            full(o, b"esds", 0, 0, |o| {
                let dsi = descriptor(5, asc);
                let mut dcd = vec![0x40, 0x15, 0, 0, 0];
                dcd.extend_from_slice(&[0; 8]); // max / average bitrate unknown
                dcd.extend_from_slice(&dsi);
                let mut es = vec![0, 0, 0]; // ES_ID, flags
                es.extend_from_slice(&descriptor(4, &dcd));
                es.extend_from_slice(&descriptor(6, &[2]));
                o.extend_from_slice(&descriptor(3, &es));
            });
        });
        Self { id, handler: Handler::Audio, timescale, width: 0, height: 0, sample_entry: e.into() }
    }
}

impl TrackInfo {
    /// Opus as ISO/IEC 14496-12 carries it ("Encapsulation of Opus in ISOBMFF"): an `Opus` sample entry with a
    /// `dOps` box, 48 kHz timescale. A live stream is joined mid-way, so there is no encoder delay to skip.
    pub fn opus(id: u32, channels: u8) -> Self {
        let channels = channels.clamp(1, 2);
        let mut e = Vec::with_capacity(64);
        bx(&mut e, b"Opus", |o| {
            o.extend_from_slice(&[0; 6]);
            put16(o, 1);
            o.extend_from_slice(&[0; 8]);
            put16(o, u16::from(channels));
            put16(o, 16);
            put32(o, 0);
            put32(o, OPUS_RATE << 16);
            bx(o, b"dOps", |o| {
                o.push(0); // version
                o.push(channels);
                put16(o, 0); // pre-skip
                put32(o, OPUS_RATE); // input sample rate
                put16(o, 0); // output gain
                o.push(0); // channel mapping family 0: mono or stereo
            });
        });
        Self { id, handler: Handler::Audio, timescale: OPUS_RATE, width: 0, height: 0, sample_entry: e.into() }
    }

    /// The sample entry's four-character code (`avc1`, `mp4a`, `Opus` …).
    pub fn fourcc(&self) -> &[u8] {
        self.sample_entry.get(4..8).unwrap_or_default()
    }
}

/// Opus always runs at 48 kHz in MP4 (whatever rate the source had).
pub const OPUS_RATE: u32 = 48_000;

/// An MPEG-4 descriptor with the 4-byte length form players all accept.
fn descriptor(tag: u8, body: &[u8]) -> Vec<u8> {
    let n = body.len() as u32;
    let mut v = vec![tag, 0x80 | (n >> 21) as u8 & 0x7F, 0x80 | (n >> 14) as u8 & 0x7F, 0x80 | (n >> 7) as u8 & 0x7F];
    v.push(n as u8 & 0x7F);
    v.extend_from_slice(body);
    v
}

/// A sample in a file: where its bytes are (`src` picks the file when several are stitched) and its timing
/// in the track's timescale.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sample {
    pub dts: u64,
    pub duration: u32,
    pub cto: i32,
    pub size: u32,
    pub sync: bool,
    pub src: u32,
    pub offset: u64,
}

#[derive(Clone, Debug)]
pub struct Track {
    pub info: TrackInfo,
    pub samples: Vec<Sample>,
}

impl Track {
    /// End of the track's last sample, in seconds from the file start.
    pub fn end_secs(&self) -> f64 {
        self.samples.last().map_or(0.0, |s| (s.dts + u64::from(s.duration)) as f64 / f64::from(self.info.timescale))
    }
}

#[derive(Clone, Debug)]
pub struct Movie {
    pub tracks: Vec<Track>,
}

impl Movie {
    pub fn duration_secs(&self) -> f64 {
        self.tracks.iter().map(Track::end_secs).fold(0.0, f64::max)
    }

    /// Where the next movie joins on: the end of the video (so frames stay on the frame grid; audio, which
    /// may run a frame longer, follows on right after its own end), or of the longest track without video.
    fn join_point(&self) -> f64 {
        match self.tracks.iter().find(|t| t.info.handler == Handler::Video && !t.samples.is_empty()) {
            Some(v) => v.end_secs(),
            None => self.duration_secs(),
        }
    }

    /// Joins movies end to end (see `join_point`). Their tracks must match one to one with identical decoder
    /// configurations.
    pub fn concat(movies: Vec<Movie>) -> Result<Movie, Mp4Error> {
        let mut it = movies.into_iter();
        let mut out = it.next().ok_or_else(|| Mp4Error::Incompatible("nothing to join".into()))?;
        let mut start = out.join_point();
        for (k, m) in it.enumerate() {
            if m.tracks.len() != out.tracks.len()
                || m.tracks.iter().zip(&out.tracks).any(|(a, b)| a.info.sample_entry != b.info.sample_entry)
            {
                return Err(Mp4Error::Incompatible(format!(
                    "file {} has other tracks or codec settings than the first; choose a range without the change",
                    k + 2
                )));
            }
            for (t, add) in out.tracks.iter_mut().zip(m.tracks) {
                let base = (start * f64::from(t.info.timescale)).round() as u64;
                // Every track restarts at the join point, so audio does not drift from video join after join;
                // an audio frame that overhangs it is cut short rather than pushing what follows.
                let base = base.max(t.samples.last().map_or(0, |s| s.dts + 1));
                t.samples.extend(add.samples.into_iter().map(|mut s| {
                    s.dts += base;
                    s
                }));
            }
            start = out.join_point();
        }
        Ok(out)
    }

    /// Sets every sample's `src` (the file index, for stitching).
    pub fn with_src(mut self, src: u32) -> Self {
        for s in self.tracks.iter_mut().flat_map(|t| t.samples.iter_mut()) {
            s.src = src;
        }
        self
    }
}

/// The tracks an MP4 can hold for these sequence headers (H.264 or H.265, and AAC or Opus; other codecs are left
/// out).
pub fn tracks_for(video: Option<&crate::media::Frame>, audio: Option<&crate::media::Frame>) -> Vec<TrackInfo> {
    let mut out = Vec::new();
    let clamp = |(w, h): (u32, u32)| (w.min(65_535) as u16, h.min(65_535) as u16);
    match video {
        Some(v) if v.codec == crate::media::Codec::H264 => {
            let cfg = crate::media::avc::AvcDecoderConfig::parse(&v.payload).ok();
            let sps = cfg.as_ref().and_then(|c| c.sps.first()).and_then(|s| crate::media::avc::parse_sps(s).ok());
            let (w, h) = sps.map_or((0, 0), |s| clamp((s.width, s.height)));
            out.push(TrackInfo::h264(out.len() as u32 + 1, &v.payload, w, h));
        }
        Some(v) if v.codec == crate::media::Codec::H265 => {
            let size =
                crate::media::hevc::HevcDecoderConfig::parse(&v.payload).ok().and_then(|c| c.picture_size().ok());
            let (w, h) = size.map_or((0, 0), clamp);
            out.push(TrackInfo::h265(out.len() as u32 + 1, &v.payload, w, h));
        }
        _ => {}
    }
    match audio {
        Some(a) if a.codec == crate::media::Codec::Aac => {
            if let Ok(asc) = crate::media::aac::AudioSpecificConfig::parse(&a.payload) {
                out.push(TrackInfo::aac(out.len() as u32 + 1, &a.payload, asc.sample_rate, asc.channels));
            }
        }
        // Opus has no configuration record on the wire: its "header" frame names the channel count.
        Some(a) if a.codec == crate::media::Codec::Opus => {
            out.push(TrackInfo::opus(out.len() as u32 + 1, a.payload.first().copied().unwrap_or(2)));
        }
        _ => {}
    }
    out
}

#[cfg(test)]
mod tests {

    use super::*;

    /// Found by `make fuzz` (under its 1 GB malloc limit): an `stsc` claiming a billion entries made the
    /// parser reserve 7.7 GB before reading one. A file read at start-up (crash repair) must not do that; it
    /// is an error (the table is truncated) found with no more memory than the box holds.
    #[test]
    fn a_huge_table_count_is_an_error_not_an_allocation() {
        let data = include_bytes!("../../../fuzz/regressions/mp4/oom-stsc-count");
        let (boxes, end) = top_boxes(data);
        assert!(parse(&boxes, end).is_err());
    }

    fn tracks() -> Vec<TrackInfo> {
        vec![
            TrackInfo::h264(1, &[1, 0x64, 0, 0x1f, 0xff, 0xe0, 0], 640, 360),
            TrackInfo::aac(2, &[0x12, 0x10], 44_100, 2),
        ]
    }

    /// 3 s of 30 fps video with B-frame-like composition offsets and 44.1 kHz AAC, fragmented every 0.5 s.
    fn fragmented() -> Vec<u8> {
        let mut f = Fragmenter::new(tracks());
        let mut out = f.init();
        let mut emit = |f: &mut Fragmenter, last| {
            if let Some(parts) = f.fragment(last) {
                parts.iter().for_each(|p| out.extend_from_slice(p));
            }
        };
        let mut next_frag = 500;
        for ms in 0..3000i64 {
            if ms % 33 == 0 && ms / 33 < 90 {
                let i = ms / 33;
                f.push(
                    0,
                    ms,
                    if i % 3 == 0 { 0 } else { 66 },
                    i % 30 == 0,
                    Bytes::from(vec![i as u8; 100 + i as usize]),
                );
            }
            if (ms * 441) % 10240 < 441 {
                f.push(1, ms, 0, true, Bytes::from(vec![0xAA; 20]));
            }
            if ms >= next_frag {
                emit(&mut f, false);
                next_frag += 500;
            }
        }
        emit(&mut f, true);
        out
    }

    #[test]
    fn fragments_parse_back_and_flatten() {
        let data = fragmented();
        let (boxes, end) = top_boxes(&data);
        assert_eq!(end, data.len() as u64);
        let m = parse(&boxes, end).unwrap();
        assert_eq!(m.tracks.len(), 2);
        assert_eq!(m.tracks[0].samples.len(), 90);
        assert!(m.tracks[0].samples[0].sync && !m.tracks[0].samples[1].sync && m.tracks[0].samples[30].sync);
        assert_eq!(m.tracks[0].samples[1].cto, 66 * 90);
        // Every sample's bytes are where the table says.
        for (i, s) in m.tracks[0].samples.iter().enumerate() {
            assert_eq!(data[s.offset as usize], i as u8);
            assert_eq!(s.size as usize, 100 + i);
        }
        let d = m.duration_secs();
        assert!((2.97..3.05).contains(&d), "{d}");

        let plan = plan_flat(&m).unwrap();
        let mut flat = plan.header.clone();
        for (_, off, len) in &plan.copies {
            flat.extend_from_slice(&data[*off as usize..(*off + *len) as usize]);
        }
        assert_eq!(flat.len() as u64, plan.total_len());
        let (boxes, end) = top_boxes(&flat);
        let kinds: Vec<&[u8; 4]> = boxes.iter().map(|b| &b.kind).collect();
        assert_eq!(kinds, [b"ftyp", b"moov", b"mdat"], "faststart");
        let again = parse(&boxes, end).unwrap();
        for (a, b) in again.tracks.iter().zip(&m.tracks) {
            assert_eq!(a.info, b.info);
            assert_eq!(a.samples.len(), b.samples.len());
            for (x, y) in a.samples.iter().zip(&b.samples) {
                assert_eq!((x.dts, x.cto, x.size, x.sync), (y.dts, y.cto, y.size, y.sync));
                assert_eq!(flat[x.offset as usize..][..x.size as usize], data[y.offset as usize..][..y.size as usize]);
            }
        }
        // The flat file lasts until its last frame *shown* ends: frame 89 decodes at 2937 ms and is shown 66 ms
        // later, for 33 ms (its decode order ends 33 ms earlier, where the movie's decode time ends).
        assert!((plan.duration_secs - 3.036).abs() < 0.002, "{} vs decode end {d}", plan.duration_secs);
        // The video's edit: shown from its first frame's presentation (cto 0 here) for all 3036 ms.
        let edit = find_elst(&flat, 0);
        assert_eq!(edit, vec![(3036, 0)]);
    }

    /// The `elst` entries (duration ms, media_time) of track `n` of a flat file.
    fn find_elst(flat: &[u8], n: usize) -> Vec<(u64, i64)> {
        let pos: Vec<usize> = flat.windows(4).enumerate().filter(|(_, w)| *w == b"elst").map(|(i, _)| i).collect();
        let b = &flat[pos[n] + 4..];
        let count = u32::from_be_bytes(b[4..8].try_into().unwrap()) as usize;
        (0..count)
            .map(|i| {
                let e = &b[8 + i * 20..];
                let dur = u64::from_be_bytes(e[0..8].try_into().unwrap());
                let mt = i64::from_be_bytes(e[8..16].try_into().unwrap());
                (dur, mt)
            })
            .collect()
    }

    #[test]
    fn a_b_frame_track_is_shown_at_its_presentation_times() {
        // A video track whose first keyframe has a 66 ms composition offset (two B-frames), starting at 0, and
        // audio starting 40 ms later: the video's empty edit is its first presentation (66 ms), its media
        // starts at that presentation, and parsing the file back gives the decode times it was written with.
        let mut f = Fragmenter::new(tracks());
        let mut data = f.init();
        for i in 0..30i64 {
            let cto = [66, 99, 0][i as usize % 3];
            f.push(0, i * 33, cto, i == 0, Bytes::from(vec![i as u8; 50]));
        }
        for i in 0..40i64 {
            f.push(1, 40 + i * 23, 0, true, Bytes::from(vec![0xAA; 10]));
        }
        f.fragment(true).unwrap().iter().for_each(|p| data.extend_from_slice(p));
        let (boxes, end) = top_boxes(&data);
        let m = parse(&boxes, end).unwrap();
        let plan = plan_flat(&m).unwrap();
        let mut flat = plan.header.clone();
        for (_, off, len) in &plan.copies {
            flat.extend_from_slice(&data[*off as usize..(*off + *len) as usize]);
        }
        assert_eq!(find_elst(&flat, 0), vec![(66, -1), (28 * 33 + 99 + 33 - 66, 66 * 90)], "frame 28 is shown last");
        assert_eq!(find_elst(&flat, 1), vec![(40, -1), (40 * 23, 0)]);
        let again = parse(&top_boxes(&flat).0, flat.len() as u64).unwrap();
        assert_eq!(again.tracks[0].samples[0].dts, 0);
        assert_eq!(again.tracks[1].samples[0].dts, 40 * 44_100 / 1000);
    }

    #[test]
    fn a_torn_last_fragment_is_dropped() {
        let data = fragmented();
        let whole = parse(&top_boxes(&data).0, data.len() as u64).unwrap();
        for cut in [data.len() - 1, data.len() - 300, data.len() / 2] {
            let torn = &data[..cut];
            let (boxes, end) = top_boxes(torn);
            let m = parse(&boxes, end).unwrap();
            let n = m.tracks[0].samples.len();
            assert!(n < whole.tracks[0].samples.len() && n > 0, "cut {cut}: {n}");
            assert!(m.tracks[0].samples.iter().all(|s| s.offset + u64::from(s.size) <= end));
        }
        assert_eq!(parse(&top_boxes(&data[..40]).0, 40).unwrap_err(), Mp4Error::NoMoov);
    }

    #[test]
    fn movies_concatenate_end_to_end() {
        let data = fragmented();
        let m = parse(&top_boxes(&data).0, data.len() as u64).unwrap();
        let d = m.duration_secs();
        let all = Movie::concat(vec![m.clone(), m.clone().with_src(1), m.clone().with_src(2)]).unwrap();
        // Joined on the video's end (2.97 s), the last file's audio tail kept. This fixture's audio overhangs
        // the video by two AAC frames, so each join may push audio by at most one frame (recordings cut on
        // keyframes overhang by less than one, and then nothing moves).
        let want = 2.0 * m.tracks[0].end_secs() + d;
        let got = all.duration_secs();
        assert!(got >= want - 0.001 && got <= want + 2.0 * 0.0233 + 0.01, "{got} vs {want}");
        let plan = plan_flat(&all).unwrap();
        assert!((plan.duration_secs - got).abs() < 0.01);
        let v = &all.tracks[0].samples;
        assert!(v.windows(2).all(|w| w[1].dts - w[0].dts >= 2970), "video stays on its frame grid");
        assert!(plan.copies.iter().any(|c| c.0 == 2));
        let mut other = m.clone();
        other.tracks.pop();
        assert!(matches!(Movie::concat(vec![m, other]), Err(Mp4Error::Incompatible(_))));
    }

    #[test]
    fn garbage_never_panics() {
        let data = fragmented();
        let mut x = 0x1234_5678u32;
        for _ in 0..300 {
            let mut d = data.clone();
            for _ in 0..8 {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                let i = x as usize % d.len();
                d[i] = (x >> 8) as u8;
            }
            let (boxes, end) = top_boxes(&d);
            if let Ok(m) = parse(&boxes, end) {
                let _ = plan_flat(&m);
            }
        }
    }
}
