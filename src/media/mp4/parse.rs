//! Reading what livegate wrote: flat files (sample tables) and fragmented ones (moof/traf/trun).

use bytes::Bytes;

use super::boxes::MOVIE_TIMESCALE;
use super::{Handler, Movie, Mp4Error, Sample, Track, TrackInfo};

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
    // An empty edit in front means the track starts later than the movie (how livegate stores it); the media
    // edit after it starts at the first sample's presentation time. So the first sample's decode time on the
    // movie's clock is the empty time minus that media time.
    if let Some(elst) = path(b, &[b"edts", b"elst"]) {
        let mut r = Rd { b: elst, what: "elst" };
        let (v, _) = r.version_flags()?;
        let n = r.u32()?.min(2);
        let mut entries = Vec::with_capacity(n as usize);
        for _ in 0..n {
            let (dur, media_time) =
                if v == 1 { (r.u64()?, r.u64()? as i64) } else { (u64::from(r.u32()?), i64::from(r.u32()? as i32)) };
            r.u32()?; // rate
            entries.push((dur, media_time));
        }
        if let Some(&(dur, -1)) = entries.first() {
            let empty = (u128::from(dur) * u128::from(timescale) / u128::from(MOVIE_TIMESCALE))
                .min(u128::from(u32::MAX)) as u64;
            let media_time = entries.get(1).map_or(0, |e| e.1.max(0) as u64);
            let shift = empty.saturating_sub(media_time);
            samples.iter_mut().for_each(|s| s.dts += shift);
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
    // The count is the file's word: reserve no more than the box can hold (12 bytes an entry).
    let mut runs = Vec::with_capacity((n as usize).min(r.b.len() / 12));
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

/// Splits a whole file held in memory into top-level boxes (tests and fuzzing; the file layer scans from disk).
pub fn top_boxes(data: &[u8]) -> (Vec<TopBox>, u64) {
    let mut boxes = Vec::new();
    let mut off = 0usize;
    while let Some((kind, hl, size)) = box_header(&data[off..]) {
        let size = size.unwrap_or((data.len() - off) as u64);
        if size < u64::from(hl) || (off as u64).checked_add(size).is_none_or(|end| end > data.len() as u64) {
            break;
        }
        let body =
            (&kind != b"mdat").then(|| Bytes::copy_from_slice(&data[off + usize::from(hl)..off + size as usize]));
        boxes.push(TopBox { kind, offset: off as u64, header_len: hl, size, body });
        off += size as usize;
    }
    (boxes, off as u64)
}
