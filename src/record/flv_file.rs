//! FLV recording files: append-only while recording (a crash leaves a file that plays up to its last flushed
//! tag), with an `onMetaData` whose `duration` is patched in place when the file is closed.

use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::Path;

use crate::media::amf0::{self, Amf0Value};
use crate::media::flv::{self, FlvParser};
use crate::media::mp4::{Handler, Movie, Sample, Track};
use crate::media::{Codec, Frame, MediaKind};

pub struct FlvFile {
    out: BufWriter<File>,
    /// Byte offset of the f64 `duration` value inside the onMetaData tag.
    duration_at: u64,
    pub bytes: u64,
    first_dts: Option<i64>,
    pub last_dts: i64,
}

/// The onMetaData body livegate writes: `duration` first, so its offset is known.
fn metadata_body(duration: f64, has_video: bool, has_audio: bool) -> (Vec<u8>, usize) {
    let prefix = amf0::encode_all(&[Amf0Value::String("onMetaData".into())]);
    let obj = Amf0Value::EcmaArray(vec![
        ("duration".into(), Amf0Value::Number(duration)),
        ("hasVideo".into(), Amf0Value::Boolean(has_video)),
        ("hasAudio".into(), Amf0Value::Boolean(has_audio)),
        ("encoder".into(), Amf0Value::String(concat!("livegate/", env!("CARGO_PKG_VERSION")).into())),
    ]);
    let mut body = prefix;
    let start = body.len();
    amf0::encode(&obj, &mut body);
    // ECMA array: marker(1) + count(4) + key length(2) + "duration"(8) + number marker(1), then the f64.
    (body, start + 1 + 4 + 2 + 8 + 1)
}

impl FlvFile {
    pub fn create(path: &Path, has_video: bool, has_audio: bool) -> std::io::Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = File::options().write(true).create_new(true).open(path)?;
        let mut out = BufWriter::with_capacity(256 * 1024, file);
        out.write_all(&flv::file_header(has_audio, has_video))?;
        let (body, dur_off) = metadata_body(0.0, has_video, has_audio);
        out.write_all(&flv::tag_header(flv::TAG_SCRIPT, body.len(), 0))?;
        out.write_all(&body)?;
        out.write_all(&((11 + body.len()) as u32).to_be_bytes())?;
        let duration_at = 13 + 11 + dur_off as u64;
        let bytes = (13 + 11 + body.len() + 4) as u64;
        Ok(Self { out, duration_at, bytes, first_dts: None, last_dts: 0 })
    }

    /// Appends a frame with its timestamp made relative to the file's first frame.
    pub fn write(&mut self, f: &Frame) -> std::io::Result<()> {
        let base = *self.first_dts.get_or_insert(f.dts);
        let ts = (f.dts - base).max(0);
        self.last_dts = self.last_dts.max(ts);
        let (prefix, plen) = flv::body_prefix(f);
        let blen = plen + f.payload.len();
        self.out.write_all(&flv::tag_header(flv::tag_type(f), blen, ts as u32))?;
        self.out.write_all(&prefix[..plen])?;
        self.out.write_all(&f.payload)?;
        self.out.write_all(&((11 + blen) as u32).to_be_bytes())?;
        self.bytes += (11 + blen + 4) as u64;
        Ok(())
    }

    /// Pushes buffered tags to the kernel (survives a SIGKILL) and, with `sync`, to the disk (power loss).
    pub fn flush(&mut self, sync: bool) -> std::io::Result<()> {
        super::flush_appended(&mut self.out, sync)
    }

    /// Patches the duration and closes the file. Returns the duration in seconds.
    pub fn finish(mut self, frame_ms: i64) -> std::io::Result<f64> {
        let duration = (self.last_dts + frame_ms) as f64 / 1000.0;
        self.out.flush()?;
        let mut file = self.out.into_inner().map_err(|e| e.into_error())?;
        file.seek(SeekFrom::Start(self.duration_at))?;
        file.write_all(&duration.to_be_bytes())?;
        file.sync_all()?;
        Ok(duration)
    }
}

/// After a crash: cuts a torn last tag, patches the duration, and returns (duration secs, size).
pub fn repair(path: &Path) -> std::io::Result<(f64, u64)> {
    let mut data = Vec::new();
    File::open(path)?.read_to_end(&mut data)?;
    let mut p = FlvParser::new();
    p.feed(&data);
    let mut good = 13u64;
    let mut last_ts = 0u32;
    let mut last_video_ts = None;
    while let Ok(Some(t)) = p.next_tag() {
        good += 11 + t.body.len() as u64 + 4;
        if t.tag_type != flv::TAG_SCRIPT {
            last_ts = last_ts.max(t.timestamp);
        }
        if t.tag_type == flv::TAG_VIDEO {
            last_video_ts = Some(t.timestamp);
        }
    }
    let _ = last_video_ts;
    let file = File::options().write(true).open(path)?;
    file.set_len(good)?;
    let duration = (last_ts as f64 + 33.0) / 1000.0;
    let (_, dur_off) = metadata_body(0.0, true, true);
    let mut file = file;
    file.seek(SeekFrom::Start(13 + 11 + dur_off as u64))?;
    file.write_all(&duration.to_be_bytes())?;
    file.sync_all()?;
    Ok((duration, good))
}

/// The H.264/AAC samples of a recorded FLV file as an MP4 sample table (for stitching), reading tag headers
/// only: media stays on disk. A second, different sequence header inside the file is refused (one MP4
/// track holds one configuration).
pub fn read_movie(path: &Path) -> std::io::Result<(Movie, File)> {
    use std::os::unix::fs::FileExt;
    let file = File::open(path)?;
    let len = file.metadata()?.len();
    let mut configs: [Option<Frame>; 2] = [None, None];
    // (is video, dts ms, cts ms, keyframe, offset, size)
    let mut raw: Vec<(bool, i64, i32, bool, u64, u32)> = Vec::new();
    let mut off = 13u64;
    let mut head = [0u8; 16];
    while off + 11 + 4 <= len {
        file.read_exact_at(&mut head[..11], off)?;
        let size = u64::from(u32::from_be_bytes([0, head[1], head[2], head[3]]));
        let ts = i64::from(u32::from_be_bytes([head[7], head[4], head[5], head[6]]));
        if off + 11 + size + 4 > len {
            break; // torn last tag
        }
        let body = off + 11;
        let (kind, prefix) = match head[0] {
            flv::TAG_VIDEO if size >= 5 => (MediaKind::Video, 5u64),
            flv::TAG_AUDIO if size >= 2 => (MediaKind::Audio, 2),
            _ => {
                off += 11 + size + 4;
                continue;
            }
        };
        let mut p = [0u8; 5];
        file.read_exact_at(&mut p[..prefix as usize], body)?;
        let (codec_ok, config, key, cts) = if kind == MediaKind::Video {
            let cts = (i32::from_be_bytes([p[2], p[3], p[4], 0])) >> 8;
            (p[0] & 0x0F == 7 && p[1] <= 1, p[1] == 0, p[0] >> 4 == 1, cts)
        } else {
            (p[0] >> 4 == 10, p[1] == 0, true, 0)
        };
        if codec_ok {
            let data_size = size - prefix;
            if config {
                let mut b = vec![0u8; data_size as usize];
                file.read_exact_at(&mut b, body + prefix)?;
                let codec = if kind == MediaKind::Video { Codec::H264 } else { Codec::Aac };
                let f = Frame { kind, codec, dts: ts, cts: 0, keyframe: false, config: true, payload: b.into() };
                let slot = &mut configs[usize::from(kind == MediaKind::Audio)];
                if slot.as_ref().is_some_and(|old| old.payload != f.payload) {
                    return Err(std::io::Error::other("the codec configuration changes inside the file"));
                }
                *slot = Some(f);
            } else if configs[usize::from(kind == MediaKind::Audio)].is_some() && data_size > 0 {
                raw.push((kind == MediaKind::Video, ts, cts, key, body + prefix, data_size as u32));
            }
        }
        off += 11 + size + 4;
    }
    let infos = super::mp4_file::tracks_for(configs[0].as_ref(), configs[1].as_ref());
    let mut tracks: Vec<Track> = infos.into_iter().map(|info| Track { info, samples: Vec::new() }).collect();
    for (video, dts, cts, key, offset, size) in raw {
        let handler = if video { Handler::Video } else { Handler::Audio };
        let Some(t) = tracks.iter_mut().find(|t| t.info.handler == handler) else { continue };
        let scale = i64::from(t.info.timescale);
        let dts_ticks = (dts.max(0) * scale / 1000) as u64;
        let dts_ticks = t.samples.last().map_or(dts_ticks, |l| dts_ticks.max(l.dts));
        if let Some(l) = t.samples.last_mut() {
            l.duration = (dts_ticks - l.dts) as u32;
        }
        let cto = (i64::from(cts.max(0)) * scale / 1000) as i32;
        t.samples.push(Sample { dts: dts_ticks, duration: 0, cto, size, sync: key, src: 0, offset });
    }
    for t in &mut tracks {
        // The last sample lasts as long as the one before it.
        let n = t.samples.len();
        if n >= 2 {
            t.samples[n - 1].duration = t.samples[n - 2].duration;
        }
    }
    tracks.retain(|t| !t.samples.is_empty());
    Ok((Movie { tracks }, file))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn duration_is_patched_and_torn_tails_repaired() {
        let dir = std::env::temp_dir().join(format!("lg-flvfile-{}", std::process::id()));
        let path = dir.join("a/b.flv");
        let _ = std::fs::remove_dir_all(&dir);
        let mut f = FlvFile::create(&path, false, true).unwrap();
        for i in 0..50 {
            let fr = Frame {
                kind: MediaKind::Audio,
                codec: Codec::Aac,
                dts: 1000 + i * 23,
                cts: 0,
                keyframe: false,
                config: i == 0,
                payload: Bytes::from_static(&[0x12, 0x10]),
            };
            f.write(&fr).unwrap();
        }
        let d = f.finish(23).unwrap();
        assert!((d - (49.0 * 23.0 + 23.0) / 1000.0).abs() < 1e-9);
        let data = std::fs::read(&path).unwrap();
        let mut p = FlvParser::new();
        p.feed(&data);
        let meta = p.next_tag().unwrap().unwrap();
        let vals = amf0::decode_all(&meta.body).unwrap();
        assert_eq!(vals[1].get("duration").and_then(|v| v.as_f64()), Some(d));
        let first = p.next_tag().unwrap().unwrap();
        assert_eq!(first.timestamp, 0, "timestamps start at zero in each file");

        // Tear the last tag and repair.
        let len = data.len() as u64;
        File::options().write(true).open(&path).unwrap().set_len(len - 5).unwrap();
        let (dur, size) = repair(&path).unwrap();
        assert!(size < len - 5 && dur > 1.0);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
