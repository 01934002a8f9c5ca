//! FLV recording files: append-only while recording (a crash leaves a file that plays up to its last flushed
//! tag), with an `onMetaData` whose `duration` is patched in place when the file is closed.

use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::Path;

use crate::media::amf0::{self, Amf0Value};
use crate::media::flv::{self, FlvParser};
use crate::media::Frame;

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

    pub fn started(&self) -> bool {
        self.first_dts.is_some()
    }

    /// Pushes buffered tags to the kernel (survives a SIGKILL) and, with `sync`, to the disk (power loss).
    pub fn flush(&mut self, sync: bool) -> std::io::Result<()> {
        self.out.flush()?;
        if sync {
            self.out.get_ref().sync_data()?;
        }
        Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::{Codec, MediaKind};
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
