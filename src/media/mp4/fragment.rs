//! Fragmented MP4 writing: an init segment, then moof+mdat fragments.

use bytes::Bytes;

use super::boxes::{bx, ftyp, full, mvhd, put32, put64, trak};
use super::{Handler, TrackInfo};

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
                // Until a second sample arrives: one 30 fps frame, one AAC frame or one WebRTC Opus packet.
                let last_duration = match info.handler {
                    Handler::Video => info.timescale / 30,
                    // WebRTC's Opus packets are 20 ms.
                    Handler::Audio if info.fourcc() == b"Opus" => info.timescale / 50,
                    Handler::Audio => 1024,
                };
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
