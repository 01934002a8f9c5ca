//! HLS recordings: one playlist per push, MPEG-TS segments beside it, the playlist rewritten atomically after
//! every segment (a crash leaves a playable EVENT playlist) and closed with `#EXT-X-ENDLIST`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::hls::Cutter;
use crate::hub::Packet;
use crate::media::Frame;

pub struct HlsFile {
    cutter: Cutter,
    /// Subtracted from every timestamp: the recording's first frame is at 0 (the live stream's clock is not).
    origin: Option<i64>,
    /// The newest rebased DTS written, so a resumed push continues the timeline after its discontinuity.
    last_out: i64,
    playlist: PathBuf,
    stem: String,
    entries: Vec<(String, f64, bool)>,
    pub bytes: u64,
    pub duration: f64,
}

impl HlsFile {
    pub fn create(
        playlist: &Path,
        has_video: bool,
        has_audio: bool,
        audio: Option<crate::media::Codec>,
        segment_secs: f64,
    ) -> std::io::Result<Self> {
        if let Some(dir) = playlist.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let stem = playlist.file_stem().and_then(|s| s.to_str()).unwrap_or("rec").to_owned();
        let f = Self {
            cutter: Cutter::with_tracks(segment_secs, has_video, has_audio, audio),
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
        if let Some(seg) = self.cutter.push_frame(&frame) {
            self.store(seg)?;
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
    pub fn discontinuity(&mut self) {
        self.cutter.mark_discontinuity();
        self.origin = None;
    }

    fn store(&mut self, seg: crate::hls::Segment) -> std::io::Result<()> {
        let name = format!("{}-{}.ts", self.stem, seg.seq);
        let path = self.playlist.with_file_name(&name);
        std::fs::write(&path, &seg.data)?;
        self.bytes += seg.data.len() as u64;
        self.duration += seg.duration;
        self.entries.push((name, seg.duration, seg.discontinuity));
        self.write_playlist(false)
    }

    fn write_playlist(&self, end: bool) -> std::io::Result<()> {
        let target = self.entries.iter().map(|e| e.1).fold(1.0, f64::max).ceil() as u64;
        let mut o = format!("#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-PLAYLIST-TYPE:EVENT\n#EXT-X-TARGETDURATION:{target}\n#EXT-X-MEDIA-SEQUENCE:0\n");
        for (name, d, disc) in &self.entries {
            if *disc {
                o.push_str("#EXT-X-DISCONTINUITY\n");
            }
            let _ = writeln!(o, "#EXTINF:{d:.3},\n{name}");
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
        if let Some(seg) = self.cutter.finish() {
            self.store(seg)?;
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
        } else if !l.starts_with('#') && !l.is_empty() {
            bytes += std::fs::metadata(playlist.with_file_name(l)).map(|m| m.len()).unwrap_or(0);
        }
    }
    if !text.contains("#EXT-X-ENDLIST") {
        std::fs::write(playlist, format!("{text}#EXT-X-ENDLIST\n"))?;
    }
    Ok((duration, bytes))
}
