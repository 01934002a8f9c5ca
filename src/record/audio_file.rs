//! Audio-only recordings as Tencent's cloud recording makes them for audio pushes: `.aac` (ADTS) and `.mp3`
//! (MPEG audio frames as they came). Append-only, every frame self-delimiting: a SIGKILL leaves a file that plays
//! up to its last whole frame, and repair only cuts the torn tail.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::Path;

use crate::media::aac::AudioSpecificConfig;
use crate::media::audio_es::{self, FrameInfo};
use crate::media::{ts, Codec, Frame, MediaKind};

/// Which elementary stream the file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AudioFormat {
    Adts,
    Mp3,
}

impl AudioFormat {
    fn frame_info(self) -> fn(&[u8]) -> Option<FrameInfo> {
        match self {
            AudioFormat::Adts => audio_es::adts_frame,
            AudioFormat::Mp3 => audio_es::mp3_frame,
        }
    }
}

pub struct AudioFile {
    out: BufWriter<File>,
    format: AudioFormat,
    asc: Option<AudioSpecificConfig>,
    first_dts: Option<i64>,
    last_dts: i64,
    /// How long the newest frame lasts, for the duration of the file.
    last_frame_ms: f64,
    pub bytes: u64,
}

impl AudioFile {
    pub fn create(path: &Path, format: AudioFormat) -> std::io::Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = File::options().write(true).create_new(true).open(path)?;
        Ok(Self {
            out: BufWriter::with_capacity(64 * 1024, file),
            format,
            asc: None,
            first_dts: None,
            last_dts: 0,
            last_frame_ms: 0.0,
            bytes: 0,
        })
    }

    /// Whether `f` is audio this file takes (its configuration included); video and other codecs are not.
    pub fn takes(format: AudioFormat, f: &Frame) -> bool {
        f.kind == MediaKind::Audio
            && match format {
                AudioFormat::Adts => f.codec == Codec::Aac,
                AudioFormat::Mp3 => f.codec.is_mp3(),
            }
    }

    pub fn write(&mut self, f: &Frame) -> std::io::Result<()> {
        if !Self::takes(self.format, f) {
            return Ok(());
        }
        if f.config {
            self.asc = AudioSpecificConfig::parse(&f.payload).ok();
            return Ok(());
        }
        let header = match self.format {
            AudioFormat::Adts => {
                // Without its configuration an AAC frame cannot be given a header: it waits for one.
                let Some(asc) = self.asc.as_ref() else { return Ok(()) };
                Some(ts::adts_header(asc, f.payload.len()))
            }
            AudioFormat::Mp3 => None,
        };
        let base = *self.first_dts.get_or_insert(f.dts);
        if f.dts < base {
            return Ok(()); // from before the file's first frame (a late transcoder frame): not this file's
        }
        if let Some(h) = header {
            self.out.write_all(&h)?;
            self.bytes += h.len() as u64;
            let rate = self.asc.as_ref().map_or(44_100, |a| a.sample_rate.max(1));
            self.last_frame_ms = 1_024_000.0 / f64::from(rate);
        } else if let Some(i) = audio_es::mp3_frame(&f.payload) {
            self.last_frame_ms = f64::from(i.samples) * 1000.0 / f64::from(i.sample_rate);
        }
        self.out.write_all(&f.payload)?;
        self.bytes += f.payload.len() as u64;
        self.last_dts = self.last_dts.max(f.dts - base);
        Ok(())
    }

    /// Pushes buffered frames to the kernel (survives a SIGKILL) and, with `sync`, to the disk.
    pub fn flush(&mut self, sync: bool) -> std::io::Result<()> {
        super::flush_appended(&mut self.out, sync)
    }

    /// Closes the file: (duration secs, size).
    pub fn finish(mut self) -> std::io::Result<(f64, u64)> {
        self.out.flush()?;
        self.out.get_ref().sync_all()?;
        let secs = if self.first_dts.is_some() { (self.last_dts as f64 + self.last_frame_ms) / 1000.0 } else { 0.0 };
        Ok((secs, self.bytes))
    }
}

/// After a crash: cuts the torn tail after the last whole frame; (duration secs, size).
pub fn repair(path: &Path, format: AudioFormat) -> std::io::Result<(f64, u64)> {
    let mut data = Vec::new();
    File::open(path)?.read_to_end(&mut data)?;
    let (good, secs) = audio_es::scan(&data, format.frame_info());
    if good < data.len() {
        let file = File::options().write(true).open(path)?;
        file.set_len(good as u64)?;
        file.sync_all()?;
    }
    Ok((secs, good as u64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn aac(dts: i64, config: bool, payload: &'static [u8]) -> Frame {
        Frame {
            kind: MediaKind::Audio,
            codec: Codec::Aac,
            dts,
            cts: 0,
            keyframe: false,
            config,
            payload: Bytes::from_static(payload),
        }
    }

    #[test]
    fn an_adts_file_plays_to_its_last_whole_frame_after_a_kill() {
        let dir = std::env::temp_dir().join(format!("lg-adts-{}", std::process::id()));
        let path = dir.join("a.aac");
        let mut f = AudioFile::create(&path, AudioFormat::Adts).unwrap();
        f.write(&aac(1000, false, &[1, 2, 3])).unwrap(); // before the configuration: no header possible
        f.write(&aac(1000, true, &[0x12, 0x10])).unwrap(); // LC 44.1 kHz stereo
        for i in 0..10 {
            f.write(&aac(1023 + i * 23, false, &[0x21; 50])).unwrap();
        }
        let (secs, size) = f.finish().unwrap();
        assert_eq!(size, 10 * 57);
        assert!((secs - (9.0 * 23.0 + 1_024_000.0 / 44_100.0) / 1000.0).abs() < 1e-6, "{secs}");
        // A torn tail (killed mid-frame) is cut; what is left is whole frames.
        std::fs::OpenOptions::new().append(true).open(&path).unwrap().write_all(&[0xFF, 0xF1, 0x50]).unwrap();
        let (secs, size) = repair(&path, AudioFormat::Adts).unwrap();
        assert_eq!(size, 570);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 570);
        assert!((secs - 10.0 * 1024.0 / 44_100.0).abs() < 1e-9);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
