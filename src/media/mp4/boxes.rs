//! Box writing: headers, and the moov pieces both the fragmented and the flat file use.

use super::{Handler, TrackInfo};

pub(super) fn put16(o: &mut Vec<u8>, v: u16) {
    o.extend_from_slice(&v.to_be_bytes());
}
pub(super) fn put32(o: &mut Vec<u8>, v: u32) {
    o.extend_from_slice(&v.to_be_bytes());
}
pub(super) fn put64(o: &mut Vec<u8>, v: u64) {
    o.extend_from_slice(&v.to_be_bytes());
}

pub(super) fn bx(o: &mut Vec<u8>, kind: &[u8; 4], f: impl FnOnce(&mut Vec<u8>)) {
    let start = o.len();
    o.extend_from_slice(&[0; 4]);
    o.extend_from_slice(kind);
    f(o);
    let size = (o.len() - start) as u32;
    o[start..start + 4].copy_from_slice(&size.to_be_bytes());
}

pub(super) fn full(o: &mut Vec<u8>, kind: &[u8; 4], version: u8, flags: u32, f: impl FnOnce(&mut Vec<u8>)) {
    bx(o, kind, |o| {
        put32(o, (u32::from(version) << 24) | (flags & 0x00FF_FFFF));
        f(o);
    });
}

pub(super) const MATRIX: [u32; 9] = [0x0001_0000, 0, 0, 0, 0x0001_0000, 0, 0, 0, 0x4000_0000];
pub(super) const MOVIE_TIMESCALE: u32 = 1000;

pub(super) fn ftyp(o: &mut Vec<u8>, fragmented: bool) {
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

pub(super) fn mvhd(o: &mut Vec<u8>, duration_ms: u64, next_track: u32) {
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
pub(super) struct Tables<'a> {
    pub(super) stts: Vec<(u32, u32)>,
    pub(super) ctts: Option<Vec<(u32, i32)>>,
    pub(super) stss: Option<Vec<u32>>,
    pub(super) sizes: Vec<u32>,
    pub(super) stsc: Vec<(u32, u32)>,
    pub(super) chunk_offsets: &'a [u64],
    pub(super) co64: bool,
}

/// Edit list for a flat file: an empty edit when the track starts after the movie, then the media from its
/// first presentation time (B-frames put that after dts 0).
pub(super) struct Edit {
    pub(super) empty_ms: u64,
    pub(super) media_time: i64,
    pub(super) duration_ms: u64,
}

pub(super) fn trak(
    o: &mut Vec<u8>,
    t: &TrackInfo,
    media_duration: u64,
    edit: Option<&Edit>,
    tables: Option<&Tables<'_>>,
) {
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

pub(super) fn stbl(o: &mut Vec<u8>, t: &TrackInfo, tables: Option<&Tables<'_>>) {
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
