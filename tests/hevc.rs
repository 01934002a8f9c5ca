//! H.265/HEVC sources (#15 item 9): OBS 30+ publishes it as Enhanced RTMP (`hvc1`), Chinese encoders and CDNs as
//! FLV codec id 12. Published here with the tests' own Enhanced RTMP client (`common/enhanced_rtmp.rs`, nothing
//! of livegate's), from an x265 file, and read back by livegate's FLV readers, ffprobe/ffmpeg (MP4 and HLS
//! recordings) and, for players that cannot take HEVC, as the shared H.264 rendition.

mod common;

use std::process::Command;
use std::time::Duration;

use common::enhanced_rtmp::{hevc_media, video_body, Form, HevcStream, Paced, Publisher};
use common::*;

/// Complete recordings of `stream` listed by the API.
fn complete(srv: &Server, stream: &str) -> Vec<serde_json::Value> {
    let j = srv.api("GET", &format!("/api/v1/recordings?stream={stream}")).json();
    j["recordings"].as_array().unwrap().iter().filter(|r| r["status"] == "complete").cloned().collect()
}

/// codec_name, codec_tag_string, width, height and the decoded frame count of a file's video stream.
fn probe_video(path: &std::path::Path) -> serde_json::Value {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", "v:0", "-count_frames", "-show_entries"])
        .args(["stream=codec_name,codec_tag_string,width,height,nb_read_frames", "-of", "json"])
        .arg(path)
        .output()
        .unwrap();
    assert!(out.status.success(), "ffprobe {}: {}", path.display(), String::from_utf8_lossy(&out.stderr));
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    j["streams"][0].clone()
}

/// Publishes the whole file as fast as the socket takes it (first GOP, then a reader joins, then the rest) and
/// checks the reader got every access unit unchanged, as Enhanced RTMP, on the publisher's timestamps.
fn publish_and_read_back(srv: &Server, name: &str, form: Form) {
    let stream = HevcStream::load(&hevc_media());
    assert_eq!(stream.units.len(), 100, "4 s at 25 fps");
    assert!(stream.units[0].0 && stream.units[25].0 && !stream.units[1].0, "a keyframe every second");
    let mut p = Publisher::start(srv.rtmp_port, "live", name);
    p.video(0, &video_body(form, None, &stream.hvcc));
    let send = |p: &mut Publisher, range: std::ops::Range<usize>| {
        for i in range {
            let (key, payload) = &stream.units[i];
            p.video(i as u32 * 40, &video_body(form, Some((i, *key, payload)), &stream.hvcc));
        }
    };
    send(&mut p, 0..25);
    // The stream is described as H.265 with the SPS's picture size.
    let j = srv.wait_live(name);
    assert!(
        wait_until(Duration::from_secs(10), || srv.stream_json(name).is_some_and(|j| j["video"]["codec"] == "H265")),
        "{j}"
    );
    let v = &srv.stream_json(name).unwrap()["video"];
    assert_eq!((v["width"].as_u64(), v["height"].as_u64()), (Some(320), Some(240)), "{v}");
    // The rest comes as a burst, seconds ahead of real time, and may be in before the reader's subscription: a
    // min_cache above the file's 4 s starts it at the first keyframe whenever it joins, and a max_cache as large
    // keeps it from skipping to catch up (which it must do for a live stream it fell behind).
    let mut reader = FlvClient::connect(srv.http_port, &format!("/live/{name}.flv?min_cache=6&max_cache=6"), None);
    assert_eq!(reader.status, 200);
    send(&mut p, 25..100);
    drop(p); // the publisher leaves: the stream ends and the reader's response with it
    let mut tags = Vec::new();
    while let Some(t) = reader.next_tag(Duration::from_secs(10)) {
        tags.push(t);
    }
    assert!(reader.eof, "the FLV response ends with the stream");
    let video: Vec<_> = tags.iter().filter(|t| t.tag_type == 9).collect();
    // Out as Enhanced RTMP whichever way it came in: the sequence start carries the hvcC byte for byte...
    let mut seq = vec![0x90];
    seq.extend_from_slice(b"hvc1");
    seq.extend_from_slice(&stream.hvcc);
    assert_eq!(&video[0].body[..], &seq[..], "{name}: the sequence header");
    // ...and every access unit follows, unchanged, with its keyframe flag and timestamp.
    let frames = &video[1..];
    assert_eq!(frames.len(), 100, "{name}: every access unit from the first keyframe");
    for (i, t) in frames.iter().enumerate() {
        let (key, payload) = &stream.units[i];
        let b = &t.body;
        assert_eq!(b[0] & 0x80, 0x80, "{name} frame {i}: Enhanced RTMP");
        assert_eq!(&b[1..5], b"hvc1");
        assert_eq!((b[0] >> 4) & 7, if *key { 1 } else { 2 }, "{name} frame {i}: frame type");
        assert_eq!(b[0] & 0x0F, 1, "coded frames with their composition time");
        assert_eq!(&b[5..8], &[0, 0, 0], "no B-frames: composition time 0");
        assert_eq!(&b[8..], &payload[..], "{name} frame {i}: the access unit unchanged");
        assert_eq!(t.timestamp, i as u32 * 40, "{name} frame {i}: timestamp");
    }
}

#[test]
fn hevc_reaches_flv_readers_unchanged_and_mp4_and_hls_recordings_that_ffmpeg_decodes() {
    let srv = Server::start("[apps.live]\nrecord = [\"mp4\", \"hls\"]\n[hub]\nreconnect_grace_secs = 0.0\n");
    publish_and_read_back(&srv, "hx", Form::Enhanced);
    publish_and_read_back(&srv, "h12", Form::Legacy);
    let root = srv.dir.path().join("recordings");
    for name in ["hx", "h12"] {
        assert!(
            wait_until(Duration::from_secs(20), || complete(&srv, name).len() == 2),
            "{name}: {:?}",
            complete(&srv, name)
        );
        for rec in complete(&srv, name) {
            let path = root.join(rec["path"].as_str().unwrap());
            let v = probe_video(&path);
            assert_eq!(v["codec_name"], "hevc", "{}: {v}", path.display());
            assert_eq!((v["width"].as_u64(), v["height"].as_u64()), (Some(320), Some(240)), "{v}");
            // Every access unit is in the file and decodes (the TS segments carry the parameter sets).
            assert_eq!(v["nb_read_frames"], "100", "{}: {v}", path.display());
            if rec["file_format"] == "mp4" {
                assert_eq!(v["codec_tag_string"], "hvc1", "{v}");
            }
            let errors = decode_errors(&path);
            assert!(errors.is_empty(), "{}: {errors}", path.display());
        }
    }
}

/// Players that cannot take HEVC (legacy FLV players, and WebRTC: see tests/aiortc.rs) read the stream's shared
/// H.264 rendition `{name}@cb`, made once by GStreamer (avdec_h265 → x264enc).
#[test]
fn h264_players_of_an_hevc_stream_get_the_shared_h264_rendition() {
    let srv = Server::start("");
    let _pub = Paced::start(srv.rtmp_port, "hr", Form::Enhanced);
    srv.wait_live("hr");
    let dir = tempdir::TempDir::new("hevc-cb");
    let out = dir.path().join("cb.flv");
    let got = Command::new("timeout")
        .args(["60", "ffmpeg", "-v", "error", "-i"])
        .arg(srv.flv_url("hr@cb"))
        .args(["-frames:v", "30", "-c", "copy", "-y"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(got.status.success(), "{}", String::from_utf8_lossy(&got.stderr));
    let v = probe_video(&out);
    assert_eq!(v["codec_name"], "h264", "{v}");
    assert_eq!((v["width"].as_u64(), v["height"].as_u64()), (Some(320), Some(240)), "{v}");
    assert_eq!(v["nb_read_frames"], "30", "{v}");
    let j = srv.stream_json("hr@cb").expect("the rendition is a stream of its own");
    assert_eq!(j["video"]["codec"], "H264", "{j}");
    // @cb is the one rendition a player may name; the WebRTC-only ones are refused with the reason.
    let r = http_get(srv.http_port, "/live/hr@opus.flv").unwrap();
    assert_eq!(r.status, 400);
    assert!(r.json()["detail"].as_str().unwrap().contains("@cb"), "{}", r.json());
}
