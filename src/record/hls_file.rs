//! HLS recordings: one playlist per push, MPEG-TS or fMP4 (CMAF: `{stem}-init{n}.mp4` and `{stem}-{seq}.m4s`)
//! segments beside it, the playlist rewritten atomically after every segment (a crash leaves a playable EVENT
//! playlist) and closed with `#EXT-X-ENDLIST`. A file is written before the playlist names it.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use bytes::Bytes;

use crate::config::HlsVariant;
use crate::hls::cmaf::{CmafCutter, CmafEvent};
use crate::hls::Cutter;
use crate::hub::Packet;
use crate::media::{Codec, Frame};

enum Mux {
    Ts(Cutter),
    Cmaf {
        cutter: Box<CmafCutter>,
        /// The open segment: its number, discontinuity flag, init section, and the parts so far.
        open: Option<(u64, bool, u32, Vec<Bytes>)>,
    },
}

/// A playlist entry: a segment file, its duration, whether a discontinuity precedes it, and (fMP4) the init
/// section it needs.
struct Entry {
    name: String,
    duration: f64,
    discontinuity: bool,
    init: Option<String>,
}

pub struct HlsFile {
    mux: Mux,
    /// Subtracted from every timestamp: the recording's first frame is at 0 (the live stream's clock is not).
    origin: Option<i64>,
    /// The newest rebased DTS written, so a resumed push continues the timeline after its discontinuity.
    last_out: i64,
    playlist: PathBuf,
    stem: String,
    entries: Vec<Entry>,
    pub bytes: u64,
    pub duration: f64,
}

impl HlsFile {
    /// `variant`: fMP4 when asked for and the push's codecs fit (H.264/H.265, AAC); MPEG-TS otherwise.
    pub fn create(
        playlist: &Path,
        has_video: bool,
        has_audio: bool,
        audio: Option<Codec>,
        video: Option<Codec>,
        segment_secs: f64,
        variant: HlsVariant,
    ) -> std::io::Result<Self> {
        if let Some(dir) = playlist.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let stem = playlist.file_stem().and_then(|s| s.to_str()).unwrap_or("rec").to_owned();
        let fits =
            audio.is_none_or(|c| c == Codec::Aac) && video.is_none_or(|c| matches!(c, Codec::H264 | Codec::H265));
        let mux = if variant == HlsVariant::Fmp4 && fits {
            // One part per segment: a recording has no use for parts.
            let segment_ms = (segment_secs * 1000.0) as i64;
            Mux::Cmaf {
                cutter: Box::new(CmafCutter::new(segment_ms * 100, segment_ms, has_video, has_audio)),
                open: None,
            }
        } else {
            if variant == HlsVariant::Fmp4 {
                tracing::info!(playlist = %playlist.display(), ?audio, ?video,
                    "HLS recording as MPEG-TS: fMP4 carries H.264, H.265 and AAC only");
            }
            Mux::Ts(Cutter::with_tracks(segment_secs, has_video, has_audio, audio))
        };
        let f = Self {
            mux,
            origin: None,
            last_out: 0,
            playlist: playlist.to_path_buf(),
            stem,
            entries: Vec::new(),
            bytes: 0,
            duration: 0.0,
        };
        f.write_playlist(false)?;
        Ok(f)
    }

    pub fn push(&mut self, p: &Packet) -> std::io::Result<()> {
        let f = &p.frame;
        // Sequence headers come before the first frame: they take its time.
        let origin = match (self.origin, f.config) {
            (Some(o), _) => o,
            (None, true) => f.dts,
            (None, false) => *self.origin.insert(f.dts - self.next_start()),
        };
        let frame = Frame { dts: (f.dts - origin).max(0), ..f.clone() };
        if !f.config {
            self.last_out = self.last_out.max(frame.dts);
        }
        match &mut self.mux {
            Mux::Ts(cutter) => {
                if let Some(seg) = cutter.push_frame(&frame) {
                    self.store(seg)?;
                }
            }
            Mux::Cmaf { cutter, .. } => {
                let events = cutter.push(&frame, 0);
                self.take(events)?;
            }
        }
        Ok(())
    }

    /// Writes what the CMAF cutter made: init sections at once, a segment's file when it completes.
    fn take(&mut self, events: Vec<CmafEvent>) -> std::io::Result<()> {
        for ev in events {
            let Mux::Cmaf { open, .. } = &mut self.mux else { return Ok(()) };
            match ev {
                CmafEvent::Init { number, data } => {
                    let path = self.playlist.with_file_name(format!("{}-init{number}.mp4", self.stem));
                    std::fs::write(&path, &data)?;
                    self.bytes += data.len() as u64;
                }
                CmafEvent::SegmentStart { msn, discontinuity, init, .. } => {
                    *open = Some((msn, discontinuity, init, Vec::new()));
                }
                CmafEvent::Part { part, .. } => {
                    if let Some((_, _, _, parts)) = open.as_mut() {
                        parts.push(part.data);
                    }
                }
                CmafEvent::SegmentEnd { duration_ms, .. } => {
                    let Some((msn, discontinuity, init, parts)) = open.take() else { continue };
                    let name = format!("{}-{msn}.m4s", self.stem);
                    let path = self.playlist.with_file_name(&name);
                    let data: Vec<u8> = parts.concat();
                    std::fs::write(&path, &data)?;
                    self.bytes += data.len() as u64;
                    let duration = duration_ms as f64 / 1000.0;
                    self.duration += duration;
                    let init = Some(format!("{}-init{init}.mp4", self.stem));
                    self.entries.push(Entry { name, duration, discontinuity, init });
                    self.write_playlist(false)?;
                }
            }
        }
        Ok(())
    }

    /// Where the next push's first frame goes: 0 for the first, one frame after the last for a resumed one.
    fn next_start(&self) -> i64 {
        if self.entries.is_empty() && self.last_out == 0 {
            0
        } else {
            self.last_out + 33
        }
    }

    /// A resumed push continues this playlist after an `EXT-X-DISCONTINUITY`, its timeline after this one's.
    pub fn discontinuity(&mut self) -> std::io::Result<()> {
        self.origin = None;
        match &mut self.mux {
            Mux::Ts(cutter) => {
                cutter.mark_discontinuity();
                Ok(())
            }
            Mux::Cmaf { cutter, .. } => {
                let events = cutter.mark_discontinuity();
                self.take(events)
            }
        }
    }

    fn store(&mut self, seg: crate::hls::Segment) -> std::io::Result<()> {
        let name = format!("{}-{}.ts", self.stem, seg.seq);
        let path = self.playlist.with_file_name(&name);
        std::fs::write(&path, &seg.data)?;
        self.bytes += seg.data.len() as u64;
        self.duration += seg.duration;
        self.entries.push(Entry { name, duration: seg.duration, discontinuity: seg.discontinuity, init: None });
        self.write_playlist(false)
    }

    fn write_playlist(&self, end: bool) -> std::io::Result<()> {
        let target = self.entries.iter().map(|e| e.duration).fold(1.0, f64::max).ceil() as u64;
        let version = if matches!(self.mux, Mux::Cmaf { .. }) { 7 } else { 3 };
        let mut o = format!(
            "#EXTM3U\n#EXT-X-VERSION:{version}\n#EXT-X-PLAYLIST-TYPE:EVENT\n#EXT-X-TARGETDURATION:{target}\n#EXT-X-MEDIA-SEQUENCE:0\n"
        );
        let mut map: Option<&str> = None;
        for e in &self.entries {
            if e.discontinuity {
                o.push_str("#EXT-X-DISCONTINUITY\n");
            }
            if let Some(init) = e.init.as_deref().filter(|i| map != Some(*i)) {
                let _ = writeln!(o, "#EXT-X-MAP:URI=\"{init}\"");
                map = Some(init);
            }
            let _ = writeln!(o, "#EXTINF:{:.3},\n{}", e.duration, e.name);
        }
        if end {
            o.push_str("#EXT-X-ENDLIST\n");
        }
        let tmp = self.playlist.with_extension("m3u8.tmp");
        std::fs::write(&tmp, o)?;
        std::fs::rename(tmp, &self.playlist)
    }

    /// Writes the last segment and closes the playlist. Returns (duration secs, bytes).
    pub fn finish(mut self) -> std::io::Result<(f64, u64)> {
        match &mut self.mux {
            Mux::Ts(cutter) => {
                if let Some(seg) = cutter.finish() {
                    self.store(seg)?;
                }
            }
            Mux::Cmaf { cutter, .. } => {
                let events = cutter.finish();
                self.take(events)?;
            }
        }
        self.write_playlist(true)?;
        Ok((self.duration, self.bytes))
    }
}

/// After a crash: closes the playlist as it stands. Returns (duration secs, bytes).
pub fn repair(playlist: &Path) -> std::io::Result<(f64, u64)> {
    let text = std::fs::read_to_string(playlist)?;
    let mut duration = 0.0;
    let mut bytes = 0;
    for l in text.lines() {
        if let Some(d) = l.strip_prefix("#EXTINF:") {
            duration += d.trim_end_matches(',').parse::<f64>().unwrap_or(0.0);
        } else if let Some(init) = l.strip_prefix("#EXT-X-MAP:URI=\"").and_then(|u| u.strip_suffix('"')) {
            bytes += std::fs::metadata(playlist.with_file_name(init)).map(|m| m.len()).unwrap_or(0);
        } else if !l.starts_with('#') && !l.is_empty() {
            bytes += std::fs::metadata(playlist.with_file_name(l)).map(|m| m.len()).unwrap_or(0);
        }
    }
    if !text.contains("#EXT-X-ENDLIST") {
        std::fs::write(playlist, format!("{text}#EXT-X-ENDLIST\n"))?;
    }
    Ok((duration, bytes))
}
