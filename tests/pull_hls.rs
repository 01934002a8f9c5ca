//! Pulls from HLS sources (issue #12): one livegate pulls the HLS another livegate serves of an ffmpeg-published
//! stream, and the HLS ffmpeg itself writes (a master playlist and its variant); ffprobe plays the copy. Sources
//! that answer garbage leave the pull retrying with the reason.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

fn api(srv: &Server, method: &str, path: &str, body: &Value) -> HttpResponse {
    http_request_body(srv.http_port, method, path, &body.to_string())
}

fn pull_state(srv: &Server, name: &str) -> Value {
    api(srv, "GET", &format!("/api/v1/pulls/live/{name}"), &json!({})).json()
}

fn create_pull(srv: &Server, name: &str, url: &str) {
    let r =
        api(srv, "POST", "/api/v1/pulls", &json!({"stream": format!("live/{name}"), "url": url, "on_demand": false}));
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
}

/// The pulled stream plays here as H.264 + AAC, and its media time keeps advancing (new segments keep coming).
fn assert_plays_and_advances(srv: &Server, name: &str) {
    srv.wait_live(name);
    // Tracks are known as their first frames arrive, the audio a moment after the video.
    let mut live = Value::Null;
    wait_until(Duration::from_secs(10), || {
        live = srv.stream_json(name).unwrap_or_default();
        live["audio"].is_object() && live["video"].is_object()
    });
    assert_eq!(
        (live["video"]["codec"].as_str(), live["audio"]["codec"].as_str()),
        (Some("H264"), Some("AAC")),
        "{live}"
    );
    assert_eq!(live["publisher"]["protocol"], "pull", "{live}");
    let got = wait_av(&srv.flv_url(name));
    assert!(got.is_ok(), "ffprobe of the pulled stream: {got:?}; pull {}", pull_state(srv, name));
    let from = srv.media_ms(name).unwrap_or(0);
    let reached = srv.wait_media(name, 6.0);
    assert!(reached >= from + 6000, "{from} -> {reached}");
    let p = pull_state(srv, name);
    assert_eq!(p["state"], "live", "{p}");
    assert!(p["bytes_in"].as_u64().unwrap_or(0) > 10_000, "{p}");
    let picture = last_frame_rgb(&srv.rtmp_url(name), 10, 320, 240);
    assert_eq!(picture.len(), 320 * 240 * 3, "decoded through the pull");
    // One continuous timeline across segments: the hub never had to repair a jump.
    assert!(!srv.log_text().contains("timestamps jumped"), "{}", srv.log_text());
}

/// A one-thread-per-request HTTP server on a port the OS chose: `answer(path)` gives status and body. Every answer
/// closes its connection, so clients that keep connections alive open new ones.
fn http_server(answer: impl Fn(&str) -> (u16, Vec<u8>) + Send + Sync + 'static) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let answer = std::sync::Arc::new(answer);
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            let answer = answer.clone();
            std::thread::spawn(move || {
                let mut r = BufReader::new(s.try_clone().unwrap());
                let mut first = String::new();
                let _ = r.read_line(&mut first);
                let mut line = String::new();
                while r.read_line(&mut line).unwrap_or(0) > 2 {
                    line.clear();
                }
                let path = first.split_whitespace().nth(1).unwrap_or("/").to_owned();
                let (status, body) = answer(&path);
                let mut s = s;
                let _ = write!(s, "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
                let _ = s.write_all(&body);
            });
        }
    });
    port
}

#[test]
fn a_pull_of_another_livegates_hls_serves_the_stream_here() {
    let source = Server::start("");
    let _push = push_loop(&media("short"), &source.rtmp_url("src"));
    source.wait_live("src");
    let edge = Server::start("");
    let url = format!("http://127.0.0.1:{}/live/src.m3u8", source.http_port);
    create_pull(&edge, "x", &url);
    assert_plays_and_advances(&edge, "x");
    // The source serves one HLS reader: the pull's segmenter, not one per reader here.
    let s = source.stream_json("src").unwrap();
    assert_eq!(s["readers"]["hls"], 1, "{s}");
    // Deleted: the copy's publisher goes.
    assert_eq!(api(&edge, "DELETE", "/api/v1/pulls/live/x", &json!({})).status, 200);
    edge.wait_unpublished("x");
}

#[test]
fn a_pull_follows_an_ffmpeg_master_playlist_to_its_variant() {
    let dir = tempdir::TempDir::new("ffmpeg-hls");
    let root: PathBuf = dir.path().to_owned();
    let mut args: Vec<String> = ["-v", "error", "-re", "-stream_loop", "-1", "-i"].map(String::from).to_vec();
    args.push(media("short").display().to_string());
    args.extend(
        "-c copy -f hls -hls_time 1 -hls_list_size 6 -hls_flags delete_segments+temp_file -master_pl_name master.m3u8"
            .split_whitespace()
            .map(String::from),
    );
    args.push(root.join("index.m3u8").display().to_string());
    let mut ffmpeg = Proc::spawn(Command::new("ffmpeg").args(&args));
    let files = root.clone();
    let port = http_server(move |path| {
        let name = path.trim_start_matches("/hls/");
        if name.contains('/') || name.contains("..") {
            return (404, Vec::new());
        }
        std::fs::read(files.join(name)).map_or((404, Vec::new()), |b| (200, b))
    });
    assert!(
        wait_until(Duration::from_secs(20), || root.join("master.m3u8").exists() && root.join("index.m3u8").exists()),
        "ffmpeg wrote no playlist: {}",
        ffmpeg.stderr()
    );
    let edge = Server::start("");
    create_pull(&edge, "ff", &format!("http://127.0.0.1:{port}/hls/master.m3u8"));
    assert_plays_and_advances(&edge, "ff");
    let p = pull_state(&edge, "ff");
    assert_eq!(p["source"].as_str(), Some(format!("http://127.0.0.1:{port}/hls/index.m3u8").as_str()), "{p}");
    assert!(ffmpeg.running(), "{}", ffmpeg.stderr());
}

#[test]
fn hls_sources_that_answer_garbage_leave_the_pull_retrying_with_the_reason() {
    let port = http_server(|path| match path {
        "/live/html.m3u8" => (200, b"<html><body>This is a web page, not a playlist</body></html>".to_vec()),
        "/live/badseg.m3u8" => (200, b"#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:2,\nbadseg/0.ts\n".to_vec()),
        "/live/badseg/0.ts" => (200, b"these bytes are no transport stream ".repeat(100)),
        _ => (404, Vec::new()),
    });
    let edge = Server::start("[cluster]\npull_timeout_secs = 2.0\n");
    let cases = [("html", "not an HLS playlist"), ("badseg", "not MPEG-TS"), ("missing", "404")];
    for (name, _) in cases {
        create_pull(&edge, name, &format!("http://127.0.0.1:{port}/live/{name}.m3u8"));
    }
    for (name, reason) in cases {
        let ok = wait_until(Duration::from_secs(20), || {
            let p = pull_state(&edge, name);
            p["state"] == "retrying" && p["last_error"].as_str().is_some_and(|e| e.contains(reason))
        });
        assert!(ok, "{name}: {}", pull_state(&edge, name));
        assert!(pull_state(&edge, name)["attempts"].as_u64().unwrap_or(0) >= 1);
    }
    // None of it touched the server.
    assert_eq!(http_get(edge.http_port, "/healthz").map(|r| r.status), Some(200));
    // A URL of neither form is refused up front, naming the HLS form among those accepted.
    let r = api(&edge, "POST", "/api/v1/pulls", &json!({"stream": "live/y", "url": "http://h/x.mp4"}));
    assert_eq!(r.status, 400);
    assert!(String::from_utf8_lossy(&r.body).contains(".m3u8"), "{}", String::from_utf8_lossy(&r.body));
}
