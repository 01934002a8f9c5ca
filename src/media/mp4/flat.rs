//! The flat, faststart layout of a movie: moov (with full sample tables) before one mdat.

use super::boxes::{bx, ftyp, mvhd, put32, put64, trak, Edit, Tables, MOVIE_TIMESCALE};
use super::{Handler, Movie, Mp4Error, Track};

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
        // Each sample must play at its presentation time (dts + cto) on the movie's clock, as in the FLV the
        // recording came from. The media starts at its first sample's presentation (`media_time`, past the
        // composition offset B-frames give a keyframe), so the empty edit in front is that presentation time,
        // not the decode time; and the edit runs to the end of the last sample *presented*, which with
        // B-frames is not the last one decoded.
        let media_time = u64::from(s[0].cto.max(0).unsigned_abs());
        let presented_end = s
            .iter()
            .map(|x| {
                let pts = x.dts.saturating_sub(first_dts).saturating_add_signed(i64::from(x.cto));
                pts.saturating_add(u64::from(x.duration))
            })
            .max()
            .unwrap_or(0);
        let edit = Edit {
            empty_ms: to_ms(first_dts.saturating_add(media_time)),
            media_time: media_time as i64,
            duration_ms: to_ms(presented_end.saturating_sub(media_time)),
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
