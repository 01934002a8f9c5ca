//! Live HLS with real players: ffprobe/ffmpeg and hls.js in headless Chromium.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

fn playlist(srv: &Server, name: &str) -> (HttpResponse, String) {
    let r = http_get(srv.http_port, &format!("/live/{name}.m3u8")).expect("playlist");
    let text = String::from_utf8_lossy(&r.body).into_owned();
    (r, text)
}

fn segment_uris(text: &str) -> Vec<String> {
    text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()).map(|l| l.to_owned()).collect()
}

#[test]
fn hls_playlist_and_segments_play_in_ffprobe_and_hls_js() {
    let srv = Server::start("[hls]\nsegment_secs = 2.0\nwindow = 4\n");
    let _pub = push(&media("360p"), &srv.rtmp_url("h"));
    srv.wait_live("h");
    let (r, text) = playlist(&srv, "h");
    assert_eq!(r.status, 200, "{text}");
    assert_eq!(r.header("content-type"), Some("application/vnd.apple.mpegurl"));
    assert_eq!(r.header("cache-control"), Some("public, max-age=1"));
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    assert!(text.starts_with("#EXTM3U"), "{text}");
    // Let a few segments accumulate, then check the sliding window and each segment.
    assert!(wait_until(Duration::from_secs(15), || segment_uris(&playlist(&srv, "h").1).len() >= 3));
    let (_, text) = playlist(&srv, "h");
    let uris = segment_uris(&text);
    assert!(uris.len() <= 4, "window of 4: {text}");
    let target: u64 = text.lines().find_map(|l| l.strip_prefix("#EXT-X-TARGETDURATION:")).unwrap().parse().unwrap();
    assert_eq!(target, 2);
    let dir = tempdir::TempDir::new("hls");
    for (i, uri) in uris.iter().enumerate() {
        let seg = http_get(srv.http_port, &format!("/live/{uri}")).unwrap();
        assert_eq!(seg.status, 200);
        assert_eq!(seg.header("content-type"), Some("video/mp2t"));
        assert!(seg.header("cache-control").unwrap().contains("immutable"));
        let path = dir.path().join(format!("{i}.ts"));
        std::fs::write(&path, &seg.body).unwrap();
        // Cut on keyframes: every segment starts with one, and lasts one 2 s GOP.
        let out = ffprobe(
            path.to_str().unwrap(),
            &[
                "-select_streams",
                "v:0",
                "-show_entries",
                "frame=key_frame",
                "-read_intervals",
                "%+#1",
                "-of",
                "csv=p=0",
            ],
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).lines().next().map(|l| l.trim_end_matches(',')),
            Some("1"),
            "segment {uri} starts with a keyframe"
        );
        let dur = ffprobe(path.to_str().unwrap(), &["-show_entries", "format=duration", "-of", "csv=p=0"]);
        let d: f64 = String::from_utf8_lossy(&dur.stdout).trim().parse().unwrap();
        assert!((1.9..2.2).contains(&d), "segment {uri} lasts {d} s");
        let decode =
            Command::new("ffmpeg").args(["-v", "error", "-i"]).arg(&path).args(["-f", "null", "-"]).output().unwrap();
        assert!(decode.status.success() && decode.stderr.is_empty(), "{}", String::from_utf8_lossy(&decode.stderr));
    }
    let streams = probe_streams(&format!("http://127.0.0.1:{}/live/h.m3u8", srv.http_port));
    assert!(streams.iter().any(|s| s["codec_name"] == "h264" && s["width"] == 640));
    assert!(streams.iter().any(|s| s["codec_name"] == "aac"));

    let shot = srv.dir.path().join("hls.png");
    let url = format!("http://127.0.0.1:{}/live/h.m3u8", srv.http_port);
    let j = browser_check("hls_play.mjs", &[&url, shot.to_str().unwrap(), "3"]);
    assert_eq!(j["width"], 640);
    assert!(j["frames"].as_u64().unwrap() > 30);

    // The segmenter is one hub reader, listed like any other.
    assert_eq!(srv.stream_json("h").unwrap()["readers"]["hls"], 1);
}

#[test]
fn hls_audio_only_unknown_streams_and_codec_changes() {
    let srv = Server::start("[hub]\nreconnect_grace_secs = 10.0\n[hls]\nsegment_secs = 1.0\n");
    // Audio only.
    let dir = tempdir::TempDir::new("aonly");
    let audio = dir.path().join("a.flv");
    let made = Command::new("ffmpeg")
        .args([
            "-v",
            "error",
            "-f",
            "lavfi",
            "-i",
            "sine=frequency=660:sample_rate=44100",
            "-t",
            "20",
            "-c:a",
            "aac",
            "-f",
            "flv",
        ])
        .arg(&audio)
        .output()
        .unwrap();
    assert!(made.status.success());
    let _a = push(&audio, &srv.rtmp_url("aonly"));
    assert!(wait_until(Duration::from_secs(10), || srv.stream_json("aonly").is_some_and(|j| j["audio"].is_object())));
    let streams = probe_streams(&format!("http://127.0.0.1:{}/live/aonly.m3u8", srv.http_port));
    assert_eq!(streams.len(), 1);
    assert_eq!(streams[0]["codec_name"], "aac");

    let r = http_get(srv.http_port, "/live/nothing.m3u8").unwrap();
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"], "stream_not_found");
    assert_eq!(http_get(srv.http_port, "/live/aonly/deadbeef-1.ts").unwrap().status, 404);

    // A publisher that comes back with another resolution: same playlist, a discontinuity before the new
    // segments, and the new segments decode at the new size.
    let mut p = push(&media("360p"), &srv.rtmp_url("chg"));
    srv.wait_live("chg");
    assert!(wait_until(Duration::from_secs(10), || segment_uris(&playlist(&srv, "chg").1).len() >= 2));
    p.kill();
    let _p2 = push(&media("short"), &srv.rtmp_url("chg"));
    assert!(
        wait_until(Duration::from_secs(15), || {
            let text = playlist(&srv, "chg").1;
            text.contains("#EXT-X-DISCONTINUITY")
                && text.split("#EXT-X-DISCONTINUITY").nth(1).is_some_and(|rest| segment_uris(rest).len() >= 2)
        }),
        "{}",
        playlist(&srv, "chg").1
    );
    let text = playlist(&srv, "chg").1;
    let last = segment_uris(&text).pop().unwrap();
    let seg = http_get(srv.http_port, &format!("/live/{last}")).unwrap();
    let path = dir.path().join("last.ts");
    std::fs::write(&path, &seg.body).unwrap();
    let s = probe_streams(path.to_str().unwrap());
    assert!(s.iter().any(|s| s["codec_name"] == "h264" && s["width"] == 320), "{s:?}");
}
