//! MP4 recording files: fragmented while recording (a fragment reaches the kernel at least every half second
//! of media, so a SIGKILL loses no more than that), rewritten into a flat faststart MP4 when closed. The flat
//! file is written beside the original and renamed over it, so a crash while finalizing leaves the
//! fragmented file intact and the next start finalizes it again.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use bytes::Bytes;

use crate::media::avc::AvcDecoderConfig;
use crate::media::hevc::HevcDecoderConfig;
use crate::media::mp4::{self, Fragmenter, Handler, Movie, TopBox};
use crate::media::{Codec, Frame, MediaKind};

/// Media time buffered before a fragment is written.
const FRAGMENT_MS: u64 = 500;

pub struct Mp4File {
    file: File,
    frag: Fragmenter,
    /// Track index of video and audio in the fragmenter.
    video: Option<usize>,
    audio: Option<usize>,
    /// The decoder configurations the file was opened with: another one needs a new file.
    video_sps: Option<(bool, Vec<Bytes>)>,
    audio_cfg: Option<Bytes>,
    first_dts: Option<i64>,
    buf: Vec<u8>,
    pub bytes: u64,
}

pub use crate::media::mp4::tracks_for;

/// What identifies a video configuration for "is this still the same file": codec and SPS (a new PPS alone
/// does not change the sample entry's meaning).
fn sps_of(f: &Frame) -> (bool, Vec<Bytes>) {
    let sps = match f.codec {
        Codec::H265 => HevcDecoderConfig::parse(&f.payload).map(|c| c.sps).ok(),
        _ => AvcDecoderConfig::parse(&f.payload).map(|c| c.sps).ok(),
    };
    (f.codec == Codec::H265, sps.unwrap_or_else(|| vec![f.payload.clone()]))
}

impl Mp4File {
    pub fn create(path: &Path, video: Option<&Frame>, audio: Option<&Frame>) -> std::io::Result<Self> {
        let tracks = tracks_for(video, audio);
        if tracks.is_empty() {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "no H.264, H.265 or AAC track for MP4"));
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let video_idx = tracks.iter().position(|t| t.handler == Handler::Video);
        let audio_idx = tracks.iter().position(|t| t.handler == Handler::Audio);
        let frag = Fragmenter::new(tracks);
        let mut file = File::options().write(true).create_new(true).open(path)?;
        let init = frag.init();
        file.write_all(&init)?;
        Ok(Self {
            file,
            frag,
            video: video_idx,
            audio: audio_idx,
            video_sps: video_idx.and(video).map(sps_of),
            audio_cfg: audio_idx.and(audio).map(|a| a.payload.clone()),
            first_dts: None,
            buf: Vec::new(),
            bytes: init.len() as u64,
        })
    }

    /// Whether a sequence header means a new file: a different SPS (codec or resolution), a different AAC
    /// configuration, or a track this file does not have.
    pub fn config_changed(&self, f: &Frame) -> bool {
        match (f.kind, f.codec) {
            (MediaKind::Video, Codec::H264 | Codec::H265) => self.video_sps.as_ref() != Some(&sps_of(f)),
            (MediaKind::Audio, Codec::Aac) => self.audio_cfg.as_ref() != Some(&f.payload),
            (MediaKind::Video, _) => self.video.is_some(),
            (MediaKind::Audio, _) => self.audio.is_some(),
            _ => false,
        }
    }

    pub fn write(&mut self, f: &Frame) -> std::io::Result<()> {
        if f.config {
            return Ok(());
        }
        let idx = match (f.kind, f.codec) {
            (MediaKind::Video, Codec::H264 | Codec::H265) => self.video,
            (MediaKind::Audio, Codec::Aac) => self.audio,
            _ => None,
        };
        let Some(idx) = idx else { return Ok(()) };
        let base = *self.first_dts.get_or_insert(f.dts);
        if f.dts < base {
            // From before the file's first frame (audio a little ahead of the keyframe a file opens on, or a
            // transcoded rendition's late frames): the track would have to start before the file does.
            return Ok(());
        }
        self.frag.push(idx, f.dts - base, f.cts, f.keyframe || f.kind == MediaKind::Audio, f.payload.clone());
        if self.frag.pending_ms() >= FRAGMENT_MS {
            self.write_fragment(false)?;
        }
        Ok(())
    }

    fn write_fragment(&mut self, last: bool) -> std::io::Result<()> {
        let Some(parts) = self.frag.fragment(last) else { return Ok(()) };
        // One write per fragment: the kernel has all of it or (after a kill mid-call) a torn tail the parser drops.
        self.buf.clear();
        parts.iter().for_each(|p| self.buf.extend_from_slice(p));
        self.file.write_all(&self.buf)?;
        self.bytes += self.buf.len() as u64;
        if self.buf.capacity() > 4 << 20 {
            self.buf = Vec::new();
        }
        Ok(())
    }

    /// With `sync`, makes what was written survive a power loss too.
    pub fn flush(&mut self, sync: bool) -> std::io::Result<()> {
        if sync {
            self.file.sync_data()?;
        }
        Ok(())
    }

    /// Writes the last fragment and syncs; `finalize` then makes the flat file.
    pub fn close(mut self) -> std::io::Result<()> {
        self.write_fragment(true)?;
        self.file.sync_data()
    }
}

/// Reads the box structure of an MP4 on disk; media data stays on disk.
pub fn read_movie(path: &Path) -> std::io::Result<(Movie, File)> {
    let file = File::open(path)?;
    let len = file.metadata()?.len();
    let mut boxes = Vec::new();
    let mut off = 0u64;
    let mut head = [0u8; 16];
    while off + 8 <= len {
        let n = (len - off).min(16) as usize;
        file.read_exact_at(&mut head[..n], off)?;
        let Some((kind, hl, size)) = mp4::box_header(&head[..n]) else { break };
        let size = size.unwrap_or(len - off);
        // A torn last box, or a size no file has (the sum would wrap and walk the scan backwards).
        if size < u64::from(hl) || off.checked_add(size).is_none_or(|end| end > len) {
            break;
        }
        let body = if matches!(&kind, b"moov" | b"moof") {
            if size > 256 << 20 {
                return Err(std::io::Error::other(format!("{} box of {size} bytes", String::from_utf8_lossy(&kind))));
            }
            let mut b = vec![0u8; (size - u64::from(hl)) as usize];
            file.read_exact_at(&mut b, off + u64::from(hl))?;
            Some(Bytes::from(b))
        } else {
            None
        };
        boxes.push(TopBox { kind, offset: off, header_len: hl, size, body });
        off += size;
    }
    let movie = mp4::parse(&boxes, off).map_err(std::io::Error::other)?;
    Ok((movie, file))
}

/// The temporary name a flat file is written under: hidden, so neither listings nor `/recordings/` show it.
fn temp_path(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!(".{name}.finalize"))
}

/// Writes `movie` (samples in `sources`, indexed by `Sample::src`) as a flat MP4 at `out`, atomically.
/// Returns (duration secs, size).
pub fn write_flat(out: &Path, movie: &Movie, sources: &[File]) -> std::io::Result<(f64, u64)> {
    let plan = mp4::plan_flat(movie).map_err(std::io::Error::other)?;
    let tmp = temp_path(out);
    let result = (|| {
        let mut w = BufWriter::with_capacity(1 << 20, File::create(&tmp)?);
        w.write_all(&plan.header)?;
        let mut chunk = vec![0u8; 1 << 20];
        for &(src, mut off, mut len) in &plan.copies {
            let f = sources.get(src as usize).ok_or_else(|| std::io::Error::other("sample from an unknown file"))?;
            while len > 0 {
                let n = len.min(chunk.len() as u64) as usize;
                f.read_exact_at(&mut chunk[..n], off)?;
                w.write_all(&chunk[..n])?;
                off += n as u64;
                len -= n as u64;
            }
        }
        let f = w.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()?;
        std::fs::rename(&tmp, out)?;
        if let Some(dir) = out.parent() {
            // The rename itself must reach the disk before the sidecar says "complete".
            let _ = File::open(dir).and_then(|d| d.sync_all());
        }
        Ok((plan.duration_secs, plan.total_len()))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Turns a (possibly torn) fragmented MP4 into a flat one in place. Also accepts a file that is flat already
/// (a crash after the rename but before the sidecar was updated). Returns (duration secs, size).
pub fn finalize(path: &Path) -> std::io::Result<(f64, u64)> {
    let (movie, file) = read_movie(path)?;
    if movie.tracks.iter().all(|t| t.samples.is_empty()) {
        // Nothing recorded (shorter than any fragment): the caller discards or reports it.
        return Ok((0.0, file.metadata()?.len()));
    }
    write_flat(path, &movie, &[file])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: MediaKind, dts: i64, key: bool, config: bool, payload: &'static [u8]) -> Frame {
        let codec = if kind == MediaKind::Video { Codec::H264 } else { Codec::Aac };
        Frame { kind, codec, dts, cts: 0, keyframe: key, config, payload: Bytes::from_static(payload) }
    }

    /// Found by `make fuzz` in the same size check of the in-memory scanner: a 64-bit box size near 2^64
    /// overflowed `offset + size` (a panic in debug builds; in release the sum wrapped and the scan walked
    /// backwards). Crash repair reads such files at start-up: they must be refused, not loop.
    #[test]
    fn a_box_size_near_u64_max_ends_the_scan() {
        let dir = std::env::temp_dir().join(format!("lg-mp4size-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("huge.mp4");
        let mut data = vec![0, 0, 0, 16];
        data.extend_from_slice(b"ftypisom\0\0\0\0");
        data.extend_from_slice(&[0, 0, 0, 1]);
        data.extend_from_slice(b"free");
        data.extend_from_slice(&(u64::MAX - 8).to_be_bytes());
        data.extend_from_slice(&[0; 64]);
        std::fs::write(&path, &data).unwrap();
        let Err(e) = read_movie(&path) else { panic!("a movie read from a file with no moov") };
        assert!(e.to_string().contains("moov"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn record_kill_and_finalize() {
        let dir = std::env::temp_dir().join(format!("lg-mp4file-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("a/b.mp4");
        let asc = frame(MediaKind::Audio, 0, false, true, &[0x12, 0x10]);
        let mut f = Mp4File::create(&path, None, Some(&asc)).unwrap();
        assert!(!f.config_changed(&asc));
        assert!(f.config_changed(&frame(MediaKind::Audio, 0, false, true, &[0x11, 0x90])));
        for i in 0..200 {
            f.write(&frame(MediaKind::Audio, 1000 + i * 23, false, false, &[1, 2, 3, 4])).unwrap();
        }
        // Killed here: the fragments written so far are on disk (close() would add the held-back rest).
        let fragmented_len = std::fs::metadata(&path).unwrap().len();
        drop(f);
        let (d, size) = finalize(&path).unwrap();
        assert!(d > 4.0 && d <= 4.6, "{d}");
        assert_ne!(size, fragmented_len);
        let (m, _) = read_movie(&path).unwrap();
        assert!((m.duration_secs() - d).abs() < 0.01);
        // Finalizing a flat file again is harmless.
        let (d2, size2) = finalize(&path).unwrap();
        assert_eq!((d2, size2), (d, size));
        assert!(!temp_path(&path).exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
