//! ISO BMFF (MP4) for recordings, pure (ARCHITECTURE invariant 6): a fragmented MP4 writer for files being
//! recorded (init segment, then moof+mdat fragments, so a killed process leaves a playable file), a parser
//! for what livegate writes (fragmented or flat), and the planner of a flat, seekable, faststart MP4
//! (moov with stts/ctts/stss/stsz/stsc/stco before mdat) that the file layer fills by copying sample bytes.
//!
//! Layouts follow ISO/IEC 14496-12 (boxes), -14 (esds) and -15 (avcC).

use bytes::Bytes;

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
        let mut e = Vec::with_capacity(86 + avcc.len() + 8);
        bx(&mut e, b"avc1", |o| {
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
            bx(o, b"avcC", |o| o.extend_from_slice(avcc));
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

// ---------------------------------------------------------------------------------------------------------
// Box writing

fn put16(o: &mut Vec<u8>, v: u16) {
    o.extend_from_slice(&v.to_be_bytes());
}
fn put32(o: &mut Vec<u8>, v: u32) {
    o.extend_from_slice(&v.to_be_bytes());
}
fn put64(o: &mut Vec<u8>, v: u64) {
    o.extend_from_slice(&v.to_be_bytes());
}

fn bx(o: &mut Vec<u8>, kind: &[u8; 4], f: impl FnOnce(&mut Vec<u8>)) {
    let start = o.len();
    o.extend_from_slice(&[0; 4]);
    o.extend_from_slice(kind);
    f(o);
    let size = (o.len() - start) as u32;
    o[start..start + 4].copy_from_slice(&size.to_be_bytes());
}

fn full(o: &mut Vec<u8>, kind: &[u8; 4], version: u8, flags: u32, f: impl FnOnce(&mut Vec<u8>)) {
    bx(o, kind, |o| {
        put32(o, (u32::from(version) << 24) | (flags & 0x00FF_FFFF));
        f(o);
    });
}

const MATRIX: [u32; 9] = [0x0001_0000, 0, 0, 0, 0x0001_0000, 0, 0, 0, 0x4000_0000];
const MOVIE_TIMESCALE: u32 = 1000;

fn ftyp(o: &mut Vec<u8>, fragmented: bool) {
    bx(o, b"ftyp", |o| {
        o.extend_from_slice(b"isom");
        put32(o, 0x200);
        let brands: &[&[u8; 4]] =
            if fragmented { &[b"isom", b"iso6", b"mp41"] } else { &[b"isom", b"iso2", b"avc1", b"mp41"] };
        for b in brands {
            o.extend_from_slice(*b);
        }
    });
}

fn mvhd(o: &mut Vec<u8>, duration_ms: u64, next_track: u32) {
    full(o, b"mvhd", 1, 0, |o| {
        put64(o, 0);
        put64(o, 0);
        put32(o, MOVIE_TIMESCALE);
        put64(o, duration_ms);
        put32(o, 0x0001_0000); // rate
        put16(o, 0x0100); // volume
        o.extend_from_slice(&[0; 10]);
        MATRIX.iter().for_each(|m| put32(o, *m));
        o.extend_from_slice(&[0; 24]);
        put32(o, next_track);
    });
}

/// `stbl` content beyond `stsd` (empty tables in a fragmented file's init segment).
struct Tables<'a> {
    stts: Vec<(u32, u32)>,
    ctts: Option<Vec<(u32, i32)>>,
    stss: Option<Vec<u32>>,
    sizes: Vec<u32>,
    stsc: Vec<(u32, u32)>,
    chunk_offsets: &'a [u64],
    co64: bool,
}

/// Edit list for a flat file: an empty edit when the track starts after the movie, then the media from its
/// first presentation time (B-frames put that after dts 0).
struct Edit {
    empty_ms: u64,
    media_time: i64,
    duration_ms: u64,
}

fn trak(o: &mut Vec<u8>, t: &TrackInfo, media_duration: u64, edit: Option<&Edit>, tables: Option<&Tables<'_>>) {
    let movie_duration = edit.map_or(0, |e| e.empty_ms + e.duration_ms);
    bx(o, b"trak", |o| {
        full(o, b"tkhd", 1, 3, |o| {
            put64(o, 0);
            put64(o, 0);
            put32(o, t.id);
            put32(o, 0);
            put64(o, movie_duration);
            o.extend_from_slice(&[0; 8]);
            put16(o, 0); // layer
            put16(o, 0); // alternate group
            put16(o, if t.handler == Handler::Audio { 0x0100 } else { 0 });
            put16(o, 0);
            MATRIX.iter().for_each(|m| put32(o, *m));
            put32(o, u32::from(t.width) << 16);
            put32(o, u32::from(t.height) << 16);
        });
        if let Some(e) = edit {
            bx(o, b"edts", |o| {
                let n = 1 + u32::from(e.empty_ms > 0);
                full(o, b"elst", 1, 0, |o| {
                    put32(o, n);
                    if e.empty_ms > 0 {
                        put64(o, e.empty_ms);
                        put64(o, u64::MAX); // media_time -1: empty
                        put32(o, 0x0001_0000);
                    }
                    put64(o, e.duration_ms);
                    put64(o, e.media_time as u64);
                    put32(o, 0x0001_0000);
                });
            });
        }
        bx(o, b"mdia", |o| {
            full(o, b"mdhd", 1, 0, |o| {
                put64(o, 0);
                put64(o, 0);
                put32(o, t.timescale);
                put64(o, media_duration);
                put16(o, 0x55C4); // "und"
                put16(o, 0);
            });
            full(o, b"hdlr", 0, 0, |o| {
                put32(o, 0);
                o.extend_from_slice(if t.handler == Handler::Video { b"vide" } else { b"soun" });
                o.extend_from_slice(&[0; 12]);
                o.extend_from_slice(if t.handler == Handler::Video { b"VideoHandler\0" } else { b"SoundHandler\0" });
            });
            bx(o, b"minf", |o| {
                if t.handler == Handler::Video {
                    full(o, b"vmhd", 0, 1, |o| o.extend_from_slice(&[0; 8]));
                } else {
                    full(o, b"smhd", 0, 0, |o| put32(o, 0));
                }
                bx(o, b"dinf", |o| {
                    full(o, b"dref", 0, 0, |o| {
                        put32(o, 1);
                        full(o, b"url ", 0, 1, |_| {});
                    })
                });
                bx(o, b"stbl", |o| stbl(o, t, tables));
            });
        });
    });
}

fn stbl(o: &mut Vec<u8>, t: &TrackInfo, tables: Option<&Tables<'_>>) {
    full(o, b"stsd", 0, 0, |o| {
        put32(o, 1);
        o.extend_from_slice(&t.sample_entry);
    });
    let empty =
        Tables { stts: vec![], ctts: None, stss: None, sizes: vec![], stsc: vec![], chunk_offsets: &[], co64: false };
    let tb = tables.unwrap_or(&empty);
    full(o, b"stts", 0, 0, |o| {
        put32(o, tb.stts.len() as u32);
        for (n, d) in &tb.stts {
            put32(o, *n);
            put32(o, *d);
        }
    });
    if let Some(ctts) = &tb.ctts {
        let v = u8::from(ctts.iter().any(|c| c.1 < 0));
        full(o, b"ctts", v, 0, |o| {
            put32(o, ctts.len() as u32);
            for (n, c) in ctts {
                put32(o, *n);
                put32(o, *c as u32);
            }
        });
    }
    if let Some(stss) = &tb.stss {
        full(o, b"stss", 0, 0, |o| {
            put32(o, stss.len() as u32);
            stss.iter().for_each(|n| put32(o, *n));
        });
    }
    full(o, b"stsc", 0, 0, |o| {
        put32(o, tb.stsc.len() as u32);
        for (first, n) in &tb.stsc {
            put32(o, *first);
            put32(o, *n);
            put32(o, 1);
        }
    });
    full(o, b"stsz", 0, 0, |o| {
        put32(o, 0);
        put32(o, tb.sizes.len() as u32);
        tb.sizes.iter().for_each(|s| put32(o, *s));
    });
    if tb.co64 {
        full(o, b"co64", 0, 0, |o| {
            put32(o, tb.chunk_offsets.len() as u32);
            tb.chunk_offsets.iter().for_each(|c| put64(o, *c));
        });
    } else {
        full(o, b"stco", 0, 0, |o| {
            put32(o, tb.chunk_offsets.len() as u32);
            tb.chunk_offsets.iter().for_each(|c| put32(o, *c as u32));
        });
    }
}

// ---------------------------------------------------------------------------------------------------------
// Fragmented writing

const FLAGS_SYNC: u32 = 0x0200_0000; // depends on no other sample
const FLAGS_NON_SYNC: u32 = 0x0101_0000; // depends on others, is_non_sync_sample

struct Pending {
    dts: u64,
    duration: Option<u32>,
    cto: i32,
    sync: bool,
    data: Bytes,
}

struct FragTrack {
    info: TrackInfo,
    pending: Vec<Pending>,
    last_dts: Option<u64>,
    last_duration: u32,
}

/// Writes a fragmented MP4: `init()` once, then `push` samples and `fragment` whenever the file should be
/// brought up to date. A sample is held back until the next one of its track gives its duration.
pub struct Fragmenter {
    tracks: Vec<FragTrack>,
    seq: u32,
}

impl Fragmenter {
    pub fn new(tracks: Vec<TrackInfo>) -> Self {
        let tracks = tracks
            .into_iter()
            .map(|info| {
                // Until a second sample arrives: one 30 fps frame or one AAC frame.
                let last_duration = if info.handler == Handler::Video { info.timescale / 30 } else { 1024 };
                FragTrack { info, pending: Vec::new(), last_dts: None, last_duration }
            })
            .collect();
        Self { tracks, seq: 0 }
    }

    pub fn tracks(&self) -> impl Iterator<Item = &TrackInfo> {
        self.tracks.iter().map(|t| &t.info)
    }

    /// ftyp + moov (empty sample tables, mvex/trex).
    pub fn init(&self) -> Vec<u8> {
        let mut o = Vec::with_capacity(1024);
        ftyp(&mut o, true);
        bx(&mut o, b"moov", |o| {
            mvhd(o, 0, self.tracks.iter().map(|t| t.info.id).max().unwrap_or(0) + 1);
            for t in &self.tracks {
                trak(o, &t.info, 0, None, None);
            }
            bx(o, b"mvex", |o| {
                for t in &self.tracks {
                    full(o, b"trex", 0, 0, |o| {
                        put32(o, t.info.id);
                        put32(o, 1);
                        put32(o, 0);
                        put32(o, 0);
                        put32(o, 0);
                    });
                }
            });
        });
        o
    }

    /// Adds a sample to track `index` (position in the list given to `new`). Times are milliseconds from the
    /// file's start; a dts that goes backwards is held at the previous one so the track stays monotonic.
    pub fn push(&mut self, index: usize, dts_ms: i64, cto_ms: i32, sync: bool, data: Bytes) {
        let Some(t) = self.tracks.get_mut(index) else { return };
        let scale = u64::from(t.info.timescale);
        let mut dts = (dts_ms.max(0) as u64 * scale + 500) / 1000;
        if let Some(prev) = t.last_dts {
            dts = dts.max(prev);
            let d = (dts - prev).min(u64::from(u32::MAX)) as u32;
            if let Some(p) = t.pending.last_mut() {
                p.duration = Some(d);
            }
            if d > 0 {
                t.last_duration = d;
            }
        }
        t.last_dts = Some(dts);
        let cto = (i64::from(cto_ms.max(0)) * scale as i64 / 1000) as i32;
        t.pending.push(Pending { dts, duration: None, cto, sync, data });
    }

    /// Media time (ms) buffered but not yet in a fragment, over all tracks.
    pub fn pending_ms(&self) -> u64 {
        self.tracks
            .iter()
            .filter_map(|t| {
                let first = t.pending.first()?.dts;
                Some((t.last_dts? - first) * 1000 / u64::from(t.info.timescale))
            })
            .max()
            .unwrap_or(0)
    }

    /// A moof+mdat with every sample whose duration is known (with `last`, all of them: the file ends).
    /// Returns the box headers and the sample payloads, in file order, for a vectored write.
    pub fn fragment(&mut self, last: bool) -> Option<Vec<Bytes>> {
        let mut ready: Vec<Vec<Pending>> = Vec::with_capacity(self.tracks.len());
        for t in &mut self.tracks {
            let n = if last { t.pending.len() } else { t.pending.iter().take_while(|p| p.duration.is_some()).count() };
            let mut taken: Vec<Pending> = t.pending.drain(..n).collect();
            if let Some(p) = taken.last_mut() {
                p.duration.get_or_insert(t.last_duration);
            }
            ready.push(taken);
        }
        if ready.iter().all(Vec::is_empty) {
            return None;
        }
        self.seq += 1;
        let mut moof = Vec::with_capacity(64 + ready.iter().map(|r| r.len() * 16 + 64).sum::<usize>());
        let mut patches = Vec::new(); // (position of data_offset, bytes before this track's data in mdat)
        let mut data_before = 0u64;
        bx(&mut moof, b"moof", |o| {
            full(o, b"mfhd", 0, 0, |o| put32(o, self.seq));
            for (t, samples) in self.tracks.iter().zip(&ready) {
                if samples.is_empty() {
                    continue;
                }
                bx(o, b"traf", |o| {
                    full(o, b"tfhd", 0, 0x02_0000, |o| put32(o, t.info.id)); // default-base-is-moof
                    full(o, b"tfdt", 1, 0, |o| put64(o, samples[0].dts));
                    full(o, b"trun", 0, 0x0F01, |o| {
                        put32(o, samples.len() as u32);
                        patches.push((o.len(), data_before));
                        put32(o, 0);
                        for s in samples {
                            put32(o, s.duration.unwrap_or(0));
                            put32(o, s.data.len() as u32);
                            put32(o, if s.sync { FLAGS_SYNC } else { FLAGS_NON_SYNC });
                            put32(o, s.cto as u32);
                            data_before += s.data.len() as u64;
                        }
                    });
                });
            }
        });
        let moof_len = moof.len() as u64;
        for (pos, before) in patches {
            let off = (moof_len + 8 + before) as u32;
            moof[pos..pos + 4].copy_from_slice(&off.to_be_bytes());
        }
        put32(&mut moof, (8 + data_before) as u32);
        moof.extend_from_slice(b"mdat");
        let mut out = Vec::with_capacity(1 + ready.iter().map(Vec::len).sum::<usize>());
        out.push(Bytes::from(moof));
        out.extend(ready.into_iter().flatten().map(|p| p.data));
        Some(out)
    }
}

// ---------------------------------------------------------------------------------------------------------
// Parsing

/// A top-level box as the file layer found it: `body` is `None` for mdat (never loaded into memory).
#[derive(Clone, Debug)]
pub struct TopBox {
    pub kind: [u8; 4],
    pub offset: u64,
    pub header_len: u8,
    pub size: u64,
    pub body: Option<Bytes>,
}

/// Reads a box header: (type, header length, total size; `None` size means "to the end of the file").
pub fn box_header(b: &[u8]) -> Option<([u8; 4], u8, Option<u64>)> {
    let size = u32::from_be_bytes(b.get(0..4)?.try_into().ok()?);
    let kind: [u8; 4] = b.get(4..8)?.try_into().ok()?;
    match size {
        0 => Some((kind, 8, None)),
        1 => Some((kind, 16, Some(u64::from_be_bytes(b.get(8..16)?.try_into().ok()?)))),
        n => Some((kind, 8, Some(u64::from(n)))),
    }
}

struct Rd<'a> {
    b: &'a [u8],
    what: &'static str,
}

impl<'a> Rd<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Mp4Error> {
        if self.b.len() < n {
            return Err(Mp4Error::Truncated(self.what));
        }
        let (a, rest) = self.b.split_at(n);
        self.b = rest;
        Ok(a)
    }
    fn u32(&mut self) -> Result<u32, Mp4Error> {
        Ok(u32::from_be_bytes(self.take(4)?.try_into().expect("4")))
    }
    fn u64(&mut self) -> Result<u64, Mp4Error> {
        Ok(u64::from_be_bytes(self.take(8)?.try_into().expect("8")))
    }
    fn version_flags(&mut self) -> Result<(u8, u32), Mp4Error> {
        let v = self.u32()?;
        Ok(((v >> 24) as u8, v & 0x00FF_FFFF))
    }
}

/// Child boxes of a container body: (type, body, whole box).
fn children(b: &[u8]) -> impl Iterator<Item = ([u8; 4], &[u8], &[u8])> {
    let mut rest = b;
    std::iter::from_fn(move || {
        let (kind, hl, size) = box_header(rest)?;
        let size = size.map_or(rest.len(), |s| s as usize);
        if size < usize::from(hl) || size > rest.len() {
            return None;
        }
        let whole = &rest[..size];
        rest = &rest[size..];
        Some((kind, &whole[usize::from(hl)..], whole))
    })
}

fn child<'a>(b: &'a [u8], kind: &[u8; 4]) -> Option<&'a [u8]> {
    children(b).find(|c| &c.0 == kind).map(|c| c.1)
}

fn path<'a>(b: &'a [u8], kinds: &[&[u8; 4]]) -> Option<&'a [u8]> {
    kinds.iter().try_fold(b, |b, k| child(b, k))
}

#[derive(Default, Clone, Copy)]
struct Trex {
    duration: u32,
    size: u32,
    flags: u32,
}

struct ParsedTrak {
    info: TrackInfo,
    samples: Vec<Sample>,
    trex: Trex,
}

fn parse_trak(b: &[u8]) -> Result<ParsedTrak, Mp4Error> {
    let tkhd = child(b, b"tkhd").ok_or(Mp4Error::Invalid("trak without tkhd"))?;
    let mut r = Rd { b: tkhd, what: "tkhd" };
    let (v, _) = r.version_flags()?;
    r.take(if v == 1 { 16 } else { 8 })?;
    let id = r.u32()?;
    r.take(4 + if v == 1 { 8 } else { 4 } + 8 + 8 + 36)?;
    let width = (r.u32()? >> 16) as u16;
    let height = (r.u32()? >> 16) as u16;
    let mdia = child(b, b"mdia").ok_or(Mp4Error::Invalid("trak without mdia"))?;
    let mdhd = child(mdia, b"mdhd").ok_or(Mp4Error::Invalid("mdia without mdhd"))?;
    let mut r = Rd { b: mdhd, what: "mdhd" };
    let (v, _) = r.version_flags()?;
    r.take(if v == 1 { 16 } else { 8 })?;
    let timescale = r.u32()?;
    if timescale == 0 {
        return Err(Mp4Error::Invalid("timescale 0"));
    }
    let hdlr = child(mdia, b"hdlr").ok_or(Mp4Error::Invalid("mdia without hdlr"))?;
    let handler = match hdlr.get(8..12) {
        Some(b"vide") => Handler::Video,
        Some(b"soun") => Handler::Audio,
        _ => return Err(Mp4Error::Invalid("track handler (only video and sound are read)")),
    };
    let stbl = path(mdia, &[b"minf", b"stbl"]).ok_or(Mp4Error::Invalid("track without stbl"))?;
    let stsd = child(stbl, b"stsd").ok_or(Mp4Error::Invalid("stbl without stsd"))?;
    let sample_entry = children(stsd.get(8..).ok_or(Mp4Error::Truncated("stsd"))?)
        .next()
        .map(|c| Bytes::copy_from_slice(c.2))
        .ok_or(Mp4Error::Invalid("stsd without an entry"))?;
    let info = TrackInfo { id, handler, timescale, width, height, sample_entry };
    let mut samples = flat_samples(stbl)?;
    // An empty edit in front means the track starts later than the movie (how livegate stores it).
    if let Some(elst) = path(b, &[b"edts", b"elst"]) {
        let mut r = Rd { b: elst, what: "elst" };
        let (v, _) = r.version_flags()?;
        if r.u32()? > 0 {
            let (dur, media_time) =
                if v == 1 { (r.u64()?, r.u64()? as i64) } else { (u64::from(r.u32()?), i64::from(r.u32()? as i32)) };
            if media_time == -1 {
                let shift = (u128::from(dur) * u128::from(timescale) / u128::from(MOVIE_TIMESCALE))
                    .min(u128::from(u32::MAX)) as u64;
                samples.iter_mut().for_each(|s| s.dts += shift);
            }
        }
    }
    Ok(ParsedTrak { info, samples, trex: Trex::default() })
}

/// The sample table of a flat file's `stbl` (empty in a fragmented file's init segment).
fn flat_samples(stbl: &[u8]) -> Result<Vec<Sample>, Mp4Error> {
    let table = |kind: &[u8; 4], what: &'static str| -> Result<Option<(u8, u32, Rd<'_>)>, Mp4Error> {
        let Some(b) = child(stbl, kind) else { return Ok(None) };
        let mut r = Rd { b, what };
        let (v, _) = r.version_flags()?;
        let n = if kind == b"stsz" { 0 } else { r.u32()? };
        Ok(Some((v, n, r)))
    };
    let Some((_, _, mut stsz)) = table(b"stsz", "stsz")? else { return Ok(vec![]) };
    let fixed = stsz.u32()?;
    let count = stsz.u32()?;
    if count == 0 {
        return Ok(vec![]);
    }
    if count as usize > stbl.len() {
        return Err(Mp4Error::Invalid("stsz count"));
    }
    let mut samples = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let size = if fixed != 0 { fixed } else { stsz.u32()? };
        samples.push(Sample { dts: 0, duration: 0, cto: 0, size, sync: true, src: 0, offset: 0 });
    }
    let (_, n, mut r) = table(b"stts", "stts")?.ok_or(Mp4Error::Invalid("stbl without stts"))?;
    let mut i = 0usize;
    let mut dts = 0u64;
    for _ in 0..n {
        let (c, d) = (r.u32()?, r.u32()?);
        for _ in 0..c {
            let s = samples.get_mut(i).ok_or(Mp4Error::Invalid("stts covers more samples than stsz"))?;
            s.dts = dts;
            s.duration = d;
            dts += u64::from(d);
            i += 1;
        }
    }
    if let Some((_, n, mut r)) = table(b"ctts", "ctts")? {
        let mut i = 0usize;
        for _ in 0..n {
            let (c, o) = (r.u32()?, r.u32()? as i32);
            for _ in 0..c {
                let Some(s) = samples.get_mut(i) else { break };
                s.cto = o;
                i += 1;
            }
        }
    }
    if let Some((_, n, mut r)) = table(b"stss", "stss")? {
        samples.iter_mut().for_each(|s| s.sync = false);
        for _ in 0..n {
            if let Some(s) = samples.get_mut((r.u32()? as usize).wrapping_sub(1)) {
                s.sync = true;
            }
        }
    }
    let mut offsets = Vec::new();
    if let Some((_, n, mut r)) = table(b"stco", "stco")? {
        for _ in 0..n {
            offsets.push(u64::from(r.u32()?));
        }
    } else if let Some((_, n, mut r)) = table(b"co64", "co64")? {
        for _ in 0..n {
            offsets.push(r.u64()?);
        }
    }
    let (_, n, mut r) = table(b"stsc", "stsc")?.ok_or(Mp4Error::Invalid("stbl without stsc"))?;
    let mut runs = Vec::with_capacity(n as usize);
    for _ in 0..n {
        runs.push((r.u32()?, r.u32()?));
        r.u32()?;
    }
    let mut i = 0usize;
    for (ci, base) in offsets.iter().enumerate() {
        let chunk = ci as u32 + 1;
        let per = runs.iter().rev().find(|(first, _)| *first <= chunk).map_or(0, |r| r.1);
        let mut off = *base;
        for _ in 0..per {
            let Some(s) = samples.get_mut(i) else { break };
            s.offset = off;
            off += u64::from(s.size);
            i += 1;
        }
    }
    if i != samples.len() {
        return Err(Mp4Error::Invalid("chunk table does not cover every sample"));
    }
    Ok(samples)
}

/// Reads what livegate wrote: a flat MP4, or a fragmented one whose last fragment may be torn (fragments
/// whose samples reach past `valid_end`, the end of the last whole top-level box, are dropped).
pub fn parse(boxes: &[TopBox], valid_end: u64) -> Result<Movie, Mp4Error> {
    let moov = boxes.iter().find(|b| &b.kind == b"moov").and_then(|b| b.body.as_ref()).ok_or(Mp4Error::NoMoov)?;
    let mut traks = Vec::new();
    for (kind, body, _) in children(moov) {
        if &kind == b"trak" {
            match parse_trak(body) {
                Ok(t) => traks.push(t),
                Err(Mp4Error::Invalid(w)) if w.starts_with("track handler") => {} // e.g. a text track
                Err(e) => return Err(e),
            }
        }
    }
    if let Some(mvex) = child(moov, b"mvex") {
        for (kind, body, _) in children(mvex) {
            if &kind == b"trex" {
                let mut r = Rd { b: body, what: "trex" };
                r.version_flags()?;
                let id = r.u32()?;
                r.u32()?;
                let trex = Trex { duration: r.u32()?, size: r.u32()?, flags: r.u32()? };
                if let Some(t) = traks.iter_mut().find(|t| t.info.id == id) {
                    t.trex = trex;
                }
            }
        }
    }
    for b in boxes.iter().filter(|b| &b.kind == b"moof") {
        let Some(body) = &b.body else { continue };
        match parse_moof(body, b.offset, &traks, valid_end) {
            Ok(frag) => {
                for (idx, s) in frag {
                    traks[idx].samples.push(s);
                }
            }
            Err(_) => break, // a torn or damaged last fragment: everything before it is kept
        }
    }
    Ok(Movie { tracks: traks.into_iter().map(|t| Track { info: t.info, samples: t.samples }).collect() })
}

fn parse_moof(
    body: &[u8],
    moof_offset: u64,
    traks: &[ParsedTrak],
    valid_end: u64,
) -> Result<Vec<(usize, Sample)>, Mp4Error> {
    let mut out = Vec::new();
    for (kind, traf, _) in children(body) {
        if &kind != b"traf" {
            continue;
        }
        let tfhd = child(traf, b"tfhd").ok_or(Mp4Error::Invalid("traf without tfhd"))?;
        let mut r = Rd { b: tfhd, what: "tfhd" };
        let (_, flags) = r.version_flags()?;
        let id = r.u32()?;
        let idx = traks.iter().position(|t| t.info.id == id).ok_or(Mp4Error::Invalid("traf of an unknown track"))?;
        let mut d = traks[idx].trex;
        let base = if flags & 0x01 != 0 { r.u64()? } else { moof_offset };
        if flags & 0x02 != 0 {
            r.u32()?;
        }
        if flags & 0x08 != 0 {
            d.duration = r.u32()?;
        }
        if flags & 0x10 != 0 {
            d.size = r.u32()?;
        }
        if flags & 0x20 != 0 {
            d.flags = r.u32()?;
        }
        let prev_end = out
            .iter()
            .rev()
            .find(|(i, _)| *i == idx)
            .map(|(_, s): &(usize, Sample)| s.dts + u64::from(s.duration))
            .or_else(|| traks[idx].samples.last().map(|s| s.dts + u64::from(s.duration)))
            .unwrap_or(0);
        let mut dts = match child(traf, b"tfdt") {
            Some(t) => {
                let mut r = Rd { b: t, what: "tfdt" };
                let (v, _) = r.version_flags()?;
                if v == 1 {
                    r.u64()?
                } else {
                    u64::from(r.u32()?)
                }
            }
            None => prev_end,
        };
        for (kind, trun, _) in children(traf) {
            if &kind != b"trun" {
                continue;
            }
            let mut r = Rd { b: trun, what: "trun" };
            let (v, tf) = r.version_flags()?;
            let n = r.u32()?;
            let mut off = if tf & 0x01 != 0 { base.wrapping_add_signed(i64::from(r.u32()? as i32)) } else { base };
            let first_flags = if tf & 0x04 != 0 { Some(r.u32()?) } else { None };
            if n as usize > trun.len() {
                return Err(Mp4Error::Invalid("trun sample count"));
            }
            for i in 0..n {
                let duration = if tf & 0x100 != 0 { r.u32()? } else { d.duration };
                let size = if tf & 0x200 != 0 { r.u32()? } else { d.size };
                let fl = if tf & 0x400 != 0 {
                    r.u32()?
                } else if i == 0 {
                    first_flags.unwrap_or(d.flags)
                } else {
                    d.flags
                };
                let cto = if tf & 0x800 != 0 {
                    let c = r.u32()?;
                    if v == 0 {
                        c.min(i32::MAX as u32) as i32
                    } else {
                        c as i32
                    }
                } else {
                    0
                };
                if off.checked_add(u64::from(size)).is_none_or(|e| e > valid_end) {
                    return Err(Mp4Error::Truncated("mdat"));
                }
                out.push((idx, Sample { dts, duration, cto, size, sync: fl & 0x0001_0000 == 0, src: 0, offset: off }));
                off += u64::from(size);
                dts = dts.saturating_add(u64::from(duration));
            }
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------------------
// Flat (seekable) output

/// A flat MP4 to write: `header` (ftyp, moov, mdat header), then the bytes each `copies` entry names
/// (source index, offset, length) in order. Consecutive samples of a source are merged into one copy.
pub struct FlatPlan {
    pub header: Vec<u8>,
    pub copies: Vec<(u32, u64, u64)>,
    pub duration_secs: f64,
}

impl FlatPlan {
    pub fn total_len(&self) -> u64 {
        self.header.len() as u64 + self.copies.iter().map(|c| c.2).sum::<u64>()
    }
}

/// Lays out a flat, faststart MP4 of `movie`: chunks of up to half a second interleaved by time, moov first.
pub fn plan_flat(movie: &Movie) -> Result<FlatPlan, Mp4Error> {
    let tracks: Vec<&Track> = movie.tracks.iter().filter(|t| !t.samples.is_empty()).collect();
    if tracks.is_empty() {
        return Err(Mp4Error::Invalid("file without samples"));
    }
    // Interleave chunks by decode time.
    let secs = |t: &Track, i: usize| t.samples[i].dts as f64 / f64::from(t.info.timescale);
    let mut next = vec![0usize; tracks.len()];
    let mut chunks: Vec<(usize, usize, usize)> = Vec::new(); // (track, first sample, count)
    loop {
        let pick = (0..tracks.len())
            .filter(|&k| next[k] < tracks[k].samples.len())
            .min_by(|&a, &b| secs(tracks[a], next[a]).total_cmp(&secs(tracks[b], next[b])));
        let Some(k) = pick else { break };
        let t = tracks[k];
        let first = next[k];
        let start = secs(t, first);
        let other_next = (0..tracks.len())
            .filter(|&j| j != k && next[j] < tracks[j].samples.len())
            .map(|j| secs(tracks[j], next[j]))
            .fold(f64::INFINITY, f64::min);
        let mut n = 0;
        while first + n < t.samples.len() {
            let s = secs(t, first + n);
            if n > 0 && (s - start >= 0.5 || s > other_next) {
                break;
            }
            n += 1;
        }
        next[k] += n;
        chunks.push((k, first, n));
    }
    let data_len: u64 = tracks.iter().flat_map(|t| &t.samples).map(|s| u64::from(s.size)).sum();
    let big = data_len + 8 > u64::from(u32::MAX) - 1_000_000;
    let mdat_header_len = if big { 16 } else { 8 };

    // Per-track tables that do not depend on where the data lands.
    struct Fixed {
        stts: Vec<(u32, u32)>,
        ctts: Option<Vec<(u32, i32)>>,
        stss: Option<Vec<u32>>,
        sizes: Vec<u32>,
        media_duration: u64,
        edit: Edit,
    }
    let mut fixed = Vec::with_capacity(tracks.len());
    for t in &tracks {
        let s = &t.samples;
        let mut stts: Vec<(u32, u32)> = Vec::new();
        for (i, x) in s.iter().enumerate() {
            let d = match s.get(i + 1) {
                Some(n) => (n.dts.saturating_sub(x.dts)).min(u64::from(u32::MAX)) as u32,
                None => x.duration,
            };
            match stts.last_mut() {
                Some((c, v)) if *v == d => *c += 1,
                _ => stts.push((1, d)),
            }
        }
        let ctts = s.iter().any(|x| x.cto != 0).then(|| {
            let mut v: Vec<(u32, i32)> = Vec::new();
            for x in s {
                match v.last_mut() {
                    Some((c, o)) if *o == x.cto => *c += 1,
                    _ => v.push((1, x.cto)),
                }
            }
            v
        });
        let stss = (t.info.handler == Handler::Video && s.iter().any(|x| !x.sync))
            .then(|| s.iter().enumerate().filter(|(_, x)| x.sync).map(|(i, _)| i as u32 + 1).collect());
        let first_dts = s[0].dts;
        let media_duration =
            s.last().map_or(0, |l| l.dts.saturating_add(u64::from(l.duration))).saturating_sub(first_dts);
        let to_ms = |v: u64| (u128::from(v) * u128::from(MOVIE_TIMESCALE) / u128::from(t.info.timescale)) as u64;
        let edit = Edit {
            empty_ms: to_ms(first_dts),
            media_time: i64::from(s[0].cto.max(0)),
            duration_ms: to_ms(media_duration.saturating_sub(s[0].cto.max(0) as u64)),
        };
        fixed.push(Fixed { stts, ctts, stss, sizes: s.iter().map(|x| x.size).collect(), media_duration, edit });
    }
    let duration_ms = fixed.iter().map(|f| f.edit.empty_ms.saturating_add(f.edit.duration_ms)).max().unwrap_or(0);

    let build = |offsets: &[Vec<u64>], stsc: &[Vec<(u32, u32)>]| -> Vec<u8> {
        let mut o = Vec::new();
        ftyp(&mut o, false);
        bx(&mut o, b"moov", |o| {
            mvhd(o, duration_ms, tracks.iter().map(|t| t.info.id).max().unwrap_or(0) + 1);
            for (k, t) in tracks.iter().enumerate() {
                let f = &fixed[k];
                let tables = Tables {
                    stts: f.stts.clone(),
                    ctts: f.ctts.clone(),
                    stss: f.stss.clone(),
                    sizes: f.sizes.clone(),
                    stsc: stsc[k].clone(),
                    chunk_offsets: &offsets[k],
                    co64: big,
                };
                trak(o, &t.info, f.media_duration, Some(&f.edit), Some(&tables));
            }
        });
        o
    };
    let mut stsc: Vec<Vec<(u32, u32)>> = vec![Vec::new(); tracks.len()];
    let mut chunk_no = vec![0u32; tracks.len()];
    for &(k, _, n) in &chunks {
        chunk_no[k] += 1;
        if stsc[k].last().is_none_or(|l| l.1 != n as u32) {
            stsc[k].push((chunk_no[k], n as u32));
        }
    }
    let placeholder: Vec<Vec<u64>> = chunk_no.iter().map(|&n| vec![0; n as usize]).collect();
    let head_len = build(&placeholder, &stsc).len() as u64 + mdat_header_len;
    let mut offsets: Vec<Vec<u64>> = vec![Vec::new(); tracks.len()];
    let mut copies: Vec<(u32, u64, u64)> = Vec::new();
    let mut pos = head_len;
    for &(k, first, n) in &chunks {
        offsets[k].push(pos);
        for s in &tracks[k].samples[first..first + n] {
            match copies.last_mut() {
                Some(c) if c.0 == s.src && c.1 + c.2 == s.offset => c.2 += u64::from(s.size),
                _ => copies.push((s.src, s.offset, u64::from(s.size))),
            }
            pos += u64::from(s.size);
        }
    }
    let mut header = build(&offsets, &stsc);
    if big {
        put32(&mut header, 1);
        header.extend_from_slice(b"mdat");
        put64(&mut header, data_len + 16);
    } else {
        put32(&mut header, (data_len + 8) as u32);
        header.extend_from_slice(b"mdat");
    }
    debug_assert_eq!(header.len() as u64, head_len);
    Ok(FlatPlan { header, copies, duration_secs: duration_ms as f64 / 1000.0 })
}

/// Splits a whole file held in memory into top-level boxes (tests and fuzzing; the file layer scans from disk).
pub fn top_boxes(data: &[u8]) -> (Vec<TopBox>, u64) {
    let mut boxes = Vec::new();
    let mut off = 0usize;
    while let Some((kind, hl, size)) = box_header(&data[off..]) {
        let size = size.unwrap_or((data.len() - off) as u64);
        if size < u64::from(hl) || off as u64 + size > data.len() as u64 {
            break;
        }
        let body =
            (&kind != b"mdat").then(|| Bytes::copy_from_slice(&data[off + usize::from(hl)..off + size as usize]));
        boxes.push(TopBox { kind, offset: off as u64, header_len: hl, size, body });
        off += size as usize;
    }
    (boxes, off as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!((plan.duration_secs - d).abs() < 0.01);
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
