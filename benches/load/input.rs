//! The pre-encoded FLV the publisher sends: made once with ffmpeg if absent, then read into memory.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use livegate::media::flv::{FlvParser, TAG_AUDIO, TAG_SCRIPT, TAG_VIDEO};

pub const DEFAULT_INPUT: &str = "target/load-input-720p.flv";
/// `--bframes`: the same picture and rate, encoded with 2 B-frames (as OBS sends by default).
pub const DEFAULT_INPUT_BFRAMES: &str = "target/load-input-720p-bf.flv";

/// One tag of the input file.
pub struct InTag {
    pub tag_type: u8,
    pub timestamp: u32,
    pub body: Bytes,
    /// Script data or a codec sequence header: sent once, not again when the file loops.
    pub header: bool,
    /// AVC composition time offset (pts - dts, ms) of a video frame; 0 for everything else.
    pub cts: i32,
}

pub struct Input {
    pub tags: Vec<InTag>,
    /// Timestamp added per loop so timestamps keep increasing (last timestamp + one frame).
    pub loop_ms: u32,
    pub first_ts: u32,
    pub video_tags: usize,
    pub bytes: u64,
    /// Video frames carry a +0/1 ms timestamp code (`ts_code`) so WHEP viewers can tell frames apart.
    pub ts_code: bool,
}

/// The timestamp code of the `n`-th video frame the publisher sends (0 or 1 ms, added to its timestamp): a
/// fixed pseudo-random bit sequence, so that the pattern of frame intervals a WHEP viewer sees (RTP
/// timestamp = pts x 90 + a random base) identifies the frames (`whep::learn_base`). One millisecond keeps
/// decode timestamps increasing (frames are 33 ms apart) and changes nothing a player would notice.
pub fn ts_code(n: u64) -> u32 {
    // splitmix64 finalizer: well-mixed bits from a counter.
    let mut z = n.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    ((z ^ (z >> 31)) & 1) as u32
}

/// The input path: `--input` as given, or the default file (with B-frames if `bframes`), made with ffmpeg the
/// first time.
pub fn ensure(input: Option<&Path>, bframes: bool) -> Result<PathBuf> {
    if let Some(p) = input {
        if !p.exists() {
            bail!("--input {} does not exist", p.display());
        }
        return Ok(p.to_owned());
    }
    let default = if bframes { DEFAULT_INPUT_BFRAMES } else { DEFAULT_INPUT };
    let path = PathBuf::from(default);
    if path.exists() {
        return Ok(path);
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = PathBuf::from(format!("{default}.part"));
    eprintln!(
        "creating {} with ffmpeg (60 s of 1280x720 30 fps H.264 1.5 Mbit/s{} + AAC; about a minute)...",
        path.display(),
        if bframes { ", 2 B-frames" } else { "" }
    );
    let args = "-hide_banner -loglevel error -y -f lavfi -i testsrc2=size=1280x720:rate=30 -f lavfi \
                -i sine=frequency=440:sample_rate=44100 -t 60 -c:v libx264 -preset veryfast -b:v 1500k \
                -maxrate 1500k -bufsize 1500k -g 60 -keyint_min 60 -sc_threshold 0 -pix_fmt yuv420p \
                -c:a aac -b:a 64k -f flv";
    let st = Command::new("ffmpeg")
        .args(args.split_whitespace())
        .args(["-bf", if bframes { "2" } else { "0" }])
        .arg(&tmp)
        .status()
        .context("running ffmpeg (install it, or pass --input FILE)")?;
    if !st.success() {
        bail!("ffmpeg failed ({st})");
    }
    std::fs::rename(&tmp, &path)?;
    Ok(path)
}

pub fn load(path: &Path) -> Result<Input> {
    let data = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let mut p = FlvParser::new();
    p.feed(&data);
    let mut tags = Vec::new();
    let (mut last_video, mut video_delta) = (None::<u32>, 33u32);
    let mut bytes = 0u64;
    while let Some(t) = p.next_tag().map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))? {
        let b = &t.body;
        let header = match t.tag_type {
            TAG_SCRIPT => true,
            TAG_VIDEO => b.len() >= 2 && b[0] & 0x0F == 7 && b[1] == 0,
            TAG_AUDIO => b.len() >= 2 && b[0] >> 4 == 10 && b[1] == 0,
            _ => continue,
        };
        if t.tag_type == TAG_VIDEO && !header {
            if let Some(l) = last_video {
                if t.timestamp > l {
                    video_delta = t.timestamp - l;
                }
            }
            last_video = Some(t.timestamp);
        }
        bytes += b.len() as u64;
        // AVC NALU packets carry a signed 24-bit composition time after the packet type.
        let cts = if t.tag_type == TAG_VIDEO && !header && b.len() >= 5 && b[0] & 0x0F == 7 && b[1] == 1 {
            (i32::from_be_bytes([b[2], b[3], b[4], 0])) >> 8
        } else {
            0
        };
        tags.push(InTag { tag_type: t.tag_type, timestamp: t.timestamp, body: t.body, header, cts });
    }
    let video_tags = tags.iter().filter(|t| t.tag_type == TAG_VIDEO && !t.header).count();
    if video_tags == 0 {
        bail!("{} has no video tags", path.display());
    }
    if let Some(t) = tags.iter().find(|t| t.tag_type == TAG_VIDEO) {
        if t.body[0] & 0x0F != 7 {
            bail!("{}: video is not H.264 (codec id {})", path.display(), t.body[0] & 0x0F);
        }
    }
    let first_ts = tags.iter().map(|t| t.timestamp).min().unwrap_or(0);
    let last_ts = tags.iter().map(|t| t.timestamp).max().unwrap_or(0);
    Ok(Input { tags, loop_ms: last_ts - first_ts + video_delta, first_ts, video_tags, bytes, ts_code: false })
}
