//! The server placeholder (issue #14, `[apps.X] placeholder = {image, after_ms}`): a publisher whose video
//! stops, and one that drops inside its reconnect grace, are stood in for by a still picture (and silence when
//! nobody publishes); the publisher's next keyframe takes over, on one continuous timeline an HTTP-FLV reader
//! plays through, and recordings take the placeholder or leave it out as configured.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use livegate::media::flv::Tag;

const AFTER_MS: u32 = 1000;

/// A 320x240 red PNG.
fn red_png(dir: &std::path::Path) -> std::path::PathBuf {
    let out = dir.join("away.png");
    let o = Command::new("ffmpeg")
        .args(["-v", "error", "-y", "-f", "lavfi", "-i", "color=c=red:s=320x240", "-frames:v", "1"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    out
}

/// The tags as an FLV file (for ffmpeg to decode).
fn write_flv(tags: &[(Instant, Tag)], path: &std::path::Path) {
    let mut out = b"FLV\x01\x05\x00\x00\x00\x09\x00\x00\x00\x00".to_vec();
    for (_, t) in tags {
        let n = t.body.len() as u32;
        out.push(t.tag_type);
        out.extend_from_slice(&n.to_be_bytes()[1..]);
        out.extend_from_slice(&t.timestamp.to_be_bytes()[1..]);
        out.push((t.timestamp >> 24) as u8);
        out.extend_from_slice(&[0, 0, 0]);
        out.extend_from_slice(&t.body);
        out.extend_from_slice(&(n + 11).to_be_bytes());
    }
    std::fs::write(path, out).unwrap();
}

/// Each decoded video frame of an FLV file: whether it is the red placeholder (mean colour of a 16x16 scale).
fn red_frames(path: &std::path::Path) -> Vec<bool> {
    let o = Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(path)
        .args(["-vf", "scale=16:16", "-fps_mode", "passthrough", "-f", "rawvideo", "-pix_fmt", "rgb24", "-"])
        .output()
        .unwrap();
    o.stdout
        .chunks_exact(16 * 16 * 3)
        .map(|f| {
            let (r, g, b) = f
                .chunks_exact(3)
                .fold((0u32, 0u32, 0u32), |a, p| (a.0 + u32::from(p[0]), a.1 + u32::from(p[1]), a.2 + u32::from(p[2])));
            r > 150 * 256 && g < 60 * 256 && b < 60 * 256
        })
        .collect()
}

/// Sends the file's tags with media time in `from..to`, paced in real time from `start`: with `video`, its
/// video too, from its first keyframe there when `from_key` (a camera turned back on).
fn send(
    c: &mut RtmpClient,
    tags: &[(u8, u32, Vec<u8>)],
    (from, to): (u32, u32),
    video: bool,
    from_key: bool,
    start: Instant,
) {
    let mut keyed = !from_key;
    for (kind, ts, body) in tags.iter().filter(|t| (from..to).contains(&t.1)) {
        if *kind == 9 {
            if !video {
                continue;
            }
            let key = body.first().is_some_and(|b| b >> 4 == 1) && body.get(1) == Some(&1);
            keyed |= key || body.get(1) == Some(&0);
            if !keyed {
                continue;
            }
        }
        let id = if *kind == 9 { livegate::rtmp::message::VIDEO } else { livegate::rtmp::message::AUDIO };
        c.send_raw_message(if *kind == 9 { 6 } else { 4 }, id, 1, *ts, body);
        pace(start, u64::from(*ts));
    }
}

#[test]
fn a_placeholder_stands_in_while_video_stops_and_while_the_publisher_is_away() {
    let dir = tempdir::TempDir::new("ph");
    let image = red_png(dir.path());
    let srv = Server::start(&format!(
        "[hub]\nreconnect_grace_secs = 10.0\n[apps.live]\nplaceholder = {{ image = \"{}\", after_ms = {AFTER_MS}, fps = 5.0 }}\n",
        image.display()
    ));
    let tags = flv_tags(&media("360p"));
    let headers: Vec<_> = tags.iter().filter(|t| t.1 == 0 && t.2.get(1) == Some(&0)).cloned().collect();
    let mut c = RtmpClient::connect(srv.rtmp_port, false).unwrap();
    c.connect_app("live");
    c.publish("ph");
    for (kind, ts, body) in &headers {
        let id = if *kind == 9 { livegate::rtmp::message::VIDEO } else { livegate::rtmp::message::AUDIO };
        c.send_raw_message(6, id, 1, *ts, body);
    }
    // A recording and a reader from the first keyframe on.
    let start = Instant::now();
    send(&mut c, &tags, (0, 100), true, false, start);
    start_recording(&srv, "ph", &["flv", "mp4"], "ph-rec");
    let port = srv.http_port;
    let reader = std::thread::spawn(move || {
        let mut r = FlvClient::connect(port, "/live/ph.flv", None);
        r.read_for(Duration::from_secs(17))
    });
    // Up to 3 s: camera; 3 s to 7 s: audio only (the camera is off); 7 s on: the camera again, whose first
    // keyframe in the file is at 8 s.
    send(&mut c, &tags, (100, 3000), true, false, start);
    send(&mut c, &tags, (3000, 7000), false, false, start);
    assert_eq!(srv.stream_json("ph").unwrap()["placeholder"], true, "no placeholder after 4 s without video");
    send(&mut c, &tags, (7000, 10_000), true, true, start);
    assert_eq!(srv.stream_json("ph").unwrap()["placeholder"], false, "the camera's keyframe took over");
    // The publisher drops: the placeholder, with silence, until it is back 3 s later.
    drop(c);
    srv.wait_unpublished("ph");
    assert!(wait_until(Duration::from_secs(5), || srv.stream_json("ph").is_some_and(|j| j["placeholder"] == true)));
    // Away for 3 s of the placeholder's own media time (its pictures and silence advance the stream).
    let away = srv.media_ms("ph").unwrap();
    srv.wait_media_at("ph", away + 3_000);
    let mut c = RtmpClient::connect(srv.rtmp_port, false).unwrap();
    c.connect_app("live");
    c.publish("ph");
    let back = Instant::now();
    for (kind, ts, body) in &headers {
        let id = if *kind == 9 { livegate::rtmp::message::VIDEO } else { livegate::rtmp::message::AUDIO };
        c.send_raw_message(6, id, 1, *ts, body);
    }
    send(&mut c, &tags, (0, 3000), true, true, back);

    let got = reader.join().unwrap();

    // One timeline: video and audio timestamps never go back, and video never stops for longer than the
    // placeholder's wait (plus a tick) or a picture's interval after it.
    let video: Vec<u32> = got.iter().filter(|(_, t)| is_video_frame(t)).map(|(_, t)| t.timestamp).collect();
    let audio: Vec<u32> =
        got.iter().filter(|(_, t)| t.tag_type == 8 && t.body.get(1) == Some(&1)).map(|(_, t)| t.timestamp).collect();
    assert!(video.windows(2).all(|w| w[1] >= w[0]), "video time went back: {video:?}");
    assert!(audio.windows(2).all(|w| w[1] >= w[0]), "audio time went back");
    let worst = video.windows(2).map(|w| w[1] - w[0]).max().unwrap();
    assert!(worst <= AFTER_MS + 250, "a {worst} ms hole in the video: {video:?}");
    // Audio went on while nobody published (silence), with no hole longer than a few frames.
    let audio_hole = audio.windows(2).map(|w| w[1] - w[0]).max().unwrap();
    assert!(audio_hole <= AFTER_MS + 250, "a {audio_hole} ms hole in the audio");
    // Decoded: camera, then the red picture, camera, red again, camera
    let file = srv.dir.path().join("ph.flv");
    write_flv(&got, &file);
    let red = red_frames(&file);
    let runs: Vec<(bool, usize)> = red.chunk_by(|a, b| a == b).map(|r| (r[0], r.len())).collect();
    let shape: Vec<bool> = runs.iter().filter(|r| r.1 >= 3).map(|r| r.0).collect();
    // (and red once more at the end: the publisher sends nothing after its 3 s back, while the reader reads on)
    assert_eq!(
        shape.get(..5),
        Some(&[false, true, false, true, false][..]),
        "runs of (red, frames): {runs:?}; ffmpeg: {}",
        String::from_utf8_lossy(
            &Command::new("ffmpeg")
                .args(["-v", "warning", "-i"])
                .arg(&file)
                .args(["-f", "null", "-"])
                .output()
                .unwrap()
                .stderr
        )
    );
    // Switching in and out, in media time (benches/README.md reports these): the first picture comes the
    // placeholder's wait after the camera's last frame, the camera's keyframe within a picture interval.
    assert_eq!(red.len(), video.len(), "every video frame decoded");
    let switches: Vec<(bool, u32)> =
        red.windows(2).zip(video.windows(2)).filter(|(r, _)| r[0] != r[1]).map(|(r, v)| (r[1], v[1] - v[0])).collect();
    eprintln!("placeholder switches (to placeholder?, gap ms): {switches:?}");
    for (to_placeholder, gap) in &switches[..4] {
        let bound = if *to_placeholder { AFTER_MS + 250 } else { 200 + 100 };
        assert!(*gap <= bound, "{switches:?}");
    }
    // The recording took the placeholder too (the default): the pictures while the camera was off and while
    // the publisher was away, across its files (a new one may start when the publisher comes back).
    finish_recording(&srv, "ph", "ph-rec", 1);
    let mut paths = Vec::new();
    assert!(wait_until(Duration::from_secs(20), || {
        let j = srv.api("GET", "/api/v1/recordings?stream=ph").json();
        let all = j["recordings"].as_array().cloned().unwrap_or_default();
        paths =
            all.iter().filter_map(|r| r["path"].as_str()).map(|p| srv.dir.path().join("recordings").join(p)).collect();
        !all.is_empty() && all.iter().all(|r| r["status"] == "complete")
    }));
    let recorded: Vec<Vec<bool>> = paths.iter().map(|p| red_frames(p)).collect();
    let red_in = |ext: &str| -> usize {
        paths
            .iter()
            .zip(&recorded)
            .filter(|(p, _)| p.extension().is_some_and(|e| e == ext))
            .map(|(_, r)| r.iter().filter(|x| **x).count())
            .sum()
    };
    // MP4 starts a new file at each change of picture configuration (its avcC holds one), FLV carries it.
    for ext in ["flv", "mp4"] {
        assert!(red_in(ext) >= 30, "{} red frames recorded in {ext}: {paths:?}", red_in(ext));
    }
    assert!(srv.log_text().contains("placeholder stands in"));
}

/// `record = false`: readers get the placeholder, recordings leave it out.
#[test]
fn recordings_leave_the_placeholder_out_when_told() {
    let dir = tempdir::TempDir::new("ph");
    let image = red_png(dir.path());
    let srv = Server::start(&format!(
        "[apps.live]\nplaceholder = {{ image = \"{}\", after_ms = 500, record = false }}\n",
        image.display()
    ));
    let tags = flv_tags(&media("360p"));
    let mut c = RtmpClient::connect(srv.rtmp_port, false).unwrap();
    c.connect_app("live");
    c.publish("norec");
    let start = Instant::now();
    send(&mut c, &tags, (0, 100), true, false, start);
    start_recording(&srv, "norec", &["flv"], "norec-rec");
    let port = srv.http_port;
    let reader =
        std::thread::spawn(move || FlvClient::connect(port, "/live/norec.flv", None).read_for(Duration::from_secs(5)));
    send(&mut c, &tags, (100, 2000), true, false, start);
    send(&mut c, &tags, (2000, 4500), false, false, start);
    let got = reader.join().unwrap();
    let file = srv.dir.path().join("norec.flv");
    write_flv(&got, &file);
    assert!(red_frames(&file).iter().filter(|r| **r).count() >= 5, "the reader got the placeholder");
    let files = finish_recording(&srv, "norec", "norec-rec", 1);
    let rec = red_frames(&files[0].1);
    assert!(rec.len() >= 50 && !rec.iter().any(|r| *r), "{} frames recorded, some red", rec.len());
}
