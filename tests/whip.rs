//! WHIP ingest from headless Chromium, read back by ffmpeg/ffprobe over RTMP and HTTP-FLV, and WHIP's errors.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

/// Records `secs` of `url` to an FLV file with ffmpeg (stream copy) and returns its path.
fn capture(srv: &Server, url: &str, secs: u32, name: &str) -> std::path::PathBuf {
    let out = srv.dir.path().join(name);
    let st = Command::new("timeout")
        .arg("40")
        .arg("ffmpeg")
        .args(["-v", "error", "-y", "-i", url, "-t", &secs.to_string(), "-map", "0", "-c", "copy"])
        .arg(&out)
        .status()
        .unwrap();
    assert!(st.success(), "ffmpeg could not read {url}");
    out
}

fn streams_of(path: &std::path::Path) -> Vec<serde_json::Value> {
    let o = ffprobe(path.to_str().unwrap(), &["-show_streams", "-of", "json"]);
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    j["streams"].as_array().cloned().unwrap_or_default()
}

fn whip_case(codec: &str) {
    let srv = Server::start("[webrtc]\nudp_port_min = 0\nudp_port_max = 0\n");
    let stream = format!("wh{codec}");
    let url = format!("http://127.0.0.1:{}/whip/live/{stream}", srv.http_port);
    // The browser also plays its own stream back over WHEP: video passes through, audio is its own Opus.
    let whep = format!("http://127.0.0.1:{}/whep/live/{stream}", srv.http_port);
    let mut browser = node_bg("whip_publish.mjs", &[&url, "20", codec, &whep]);
    assert!(
        wait_until(Duration::from_secs(20), || browser.stdout().contains("\"event\":\"connected\"")),
        "WHIP publish did not connect: {}\n{}",
        browser.stdout(),
        browser.stderr()
    );
    let info = srv.wait_live(&stream);
    assert_eq!(info["publisher"]["protocol"], "whip", "{info}");
    let opus = srv.stream_json(&format!("{stream}@opus")).expect("the browser's Opus is a rendition");
    assert_eq!(opus["publisher"]["protocol"], "whip", "WebRTC viewers get the browser's own Opus: {opus}");
    // HTTP-FLV and RTMP readers get H.264 + AAC that decode for 6 s.
    let flv = capture(&srv, &srv.flv_url(&stream), 6, "flv.flv");
    let rtmp = capture(&srv, &srv.rtmp_url(&stream), 6, "rtmp.flv");
    for file in [&flv, &rtmp] {
        let streams = streams_of(file);
        let codecs: Vec<&str> = streams.iter().filter_map(|s| s["codec_name"].as_str()).collect();
        assert!(codecs.contains(&"h264") && codecs.contains(&"aac"), "{codecs:?} in {}", file.display());
        let v = streams.iter().find(|s| s["codec_name"] == "h264").unwrap();
        assert_eq!(v["width"], 640, "{v}");
        // Decode every frame (ffprobe -show_frames decodes): no errors, and both tracks yield frames. (Not
        // `ffmpeg -f null`: WebRTC video is variable-rate, and its muxer re-times frames onto a guessed fixed
        // rate and then complains about the collisions it made.)
        let dec = ffprobe(file.to_str().unwrap(), &["-show_entries", "frame=media_type", "-of", "csv=p=0"]);
        assert!(dec.stderr.is_empty(), "decode errors: {}", String::from_utf8_lossy(&dec.stderr));
        let frames = String::from_utf8_lossy(&dec.stdout).into_owned();
        let count = |t: &str| frames.lines().filter(|l| l.trim() == t).count();
        assert!(
            count("video") > 60 && count("audio") > 150,
            "decoded {} video, {} audio frames",
            count("video"),
            count("audio")
        );
        let o =
            ffprobe(file.to_str().unwrap(), &["-show_entries", "stream=codec_name,start_time,duration", "-of", "json"]);
        let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let start = |c: &str| {
            j["streams"].as_array().unwrap().iter().find(|s| s["codec_name"] == c).unwrap()["start_time"]
                .as_str()
                .unwrap()
                .parse::<f64>()
                .unwrap()
        };
        let skew = (start("h264") - start("aac")).abs();
        assert!(skew <= 0.05, "A/V start times {skew:.3}s apart in {}: {j}", file.display());
        let dur: f64 = ffprobe(file.to_str().unwrap(), &["-show_entries", "format=duration", "-of", "csv=p=0"])
            .stdout
            .iter()
            .map(|&b| b as char)
            .collect::<String>()
            .trim()
            .parse()
            .unwrap();
        assert!(dur >= 5.0, "{dur}s read from {}", file.display());
    }
    let j = browser_result(&mut browser, Duration::from_secs(40));
    assert_eq!(j["status"], 201);
    assert_eq!(j["codec"].as_str().unwrap().to_ascii_lowercase(), format!("video/{codec}"), "{j}");
    assert_eq!(j["deleteStatus"], 200, "DELETE ends the session: {j}");
    // DELETE unpublished the stream: readers are told as for RTMP (here: it leaves the API after the grace).
    let log = srv.log_text();
    assert!(log.contains("whip session deleted by the client"));
    // A/V timing came from RTCP sender reports on both tracks, not from arrival times alone.
    assert!(log.contains("first RTCP sender report: track timed by the sender's clock track=video"), "no video SR");
    assert!(log.contains("first RTCP sender report: track timed by the sender's clock track=audio"), "no audio SR");
}

#[test]
fn chromium_publishes_h264_over_whip_and_ffmpeg_reads_rtmp_and_flv() {
    whip_case("h264");
}

#[test]
fn chromium_publishes_vp8_only_over_whip_and_readers_get_h264() {
    whip_case("vp8");
}

fn post_sdp(srv: &Server, path: &str, ctype: &str, body: &str, auth: Option<&str>) -> HttpResponse {
    let len = body.len().to_string();
    let bearer = auth.map(|a| format!("Bearer {a}"));
    let mut headers = vec![("Content-Type", ctype), ("Content-Length", len.as_str())];
    if let Some(b) = &bearer {
        headers.push(("Authorization", b.as_str()));
    }
    http_request_with_body(srv.http_port, "POST", path, &headers, body)
}

const KEY: &str = "e12c46f2612d5106e2034781ab261ca3";

#[test]
fn whip_errors_are_precise_and_unconnected_sessions_release_the_stream() {
    let srv = Server::start(&format!(
        "[webrtc]\nconnect_timeout_secs = 2.0\n[hub]\nreconnect_grace_secs = 0.5\n[apps.live]\n[apps.sec]\npush_key = \"{KEY}\"\n"
    ));
    let err = |r: &HttpResponse| (r.status, r.json()["error"].as_str().unwrap_or("").to_owned(), r.json());
    let (s, e, j) = err(&post_sdp(&srv, "/whip/live/w1", "application/sdp", "garbage", None));
    assert_eq!((s, e.as_str()), (400, "bad_offer"), "{j}");
    let (s, _, j) = err(&post_sdp(&srv, "/whip/live/w1", "text/plain", "v=0", None));
    assert_eq!(s, 415, "{j}");
    // Codecs livegate cannot take: named, with what it does take.
    let head = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n";
    let av1 = format!("{head}m=video 9 UDP/TLS/RTP/SAVPF 45\r\na=sendonly\r\na=rtpmap:45 AV1/90000\r\n");
    let (s, e, j) = err(&post_sdp(&srv, "/whip/live/w1", "application/sdp", &av1, None));
    assert_eq!((s, e.as_str()), (406, "no_usable_codec"), "{j}");
    let detail = j["detail"].as_str().unwrap();
    assert!(detail.contains("video") && detail.contains("H.264") && detail.contains("VP8"), "{j}");
    let pcmu = format!("{head}m=audio 9 UDP/TLS/RTP/SAVPF 0\r\na=sendonly\r\na=rtpmap:0 PCMU/8000\r\n");
    let (s, _, j) = err(&post_sdp(&srv, "/whip/live/w1", "application/sdp", &pcmu, None));
    assert_eq!(s, 406, "{j}");
    assert!(j["detail"].as_str().unwrap().contains("Opus"), "{j}");

    let offer = String::from_utf8(node("make_offer.mjs", &["sendonly"]).stdout).unwrap();
    assert!(offer.contains("a=sendonly"), "{offer}");
    // Signed apps: refused without a signature, accepted with it as the bearer token.
    let (s, _, j) = err(&post_sdp(&srv, "/whip/sec/w2", "application/sdp", &offer, None));
    assert_eq!(s, 403, "{j}");
    assert!(j["detail"].as_str().unwrap().contains("txSecret"), "{j}");
    let t = format!("{:X}", livegate::auth::unix_now() + 3600);
    let token = format!("txSecret={}&txTime={t}", livegate::auth::sign(KEY, "w2", &t));
    let r = post_sdp(&srv, "/whip/sec/w2", "application/sdp", &offer, Some(&token));
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    // A stream that is live (here: the signed one, just claimed; and an RTMP one) refuses a second publisher.
    let (s, e, j) = err(&post_sdp(&srv, "/whip/sec/w2", "application/sdp", &offer, Some(&token)));
    assert_eq!((s, e.as_str()), (409, "stream_busy"), "{j}");
    let _rtmp = push(&media("360p"), &srv.rtmp_url("taken"));
    srv.wait_live("taken");
    let (s, _, j) = err(&post_sdp(&srv, "/whip/live/taken", "application/sdp", &offer, None));
    assert_eq!(s, 409, "{j}");
    assert!(j["detail"].as_str().unwrap().contains("already being published"), "{j}");

    let answer = String::from_utf8_lossy(&r.body).into_owned();
    assert!(answer.contains("a=ice-lite") && answer.contains("a=recvonly"), "{answer}");
    let location = r.header("location").unwrap().to_owned();
    assert!(location.starts_with("/whip/session/"), "{location}");
    assert_eq!(http_request(srv.http_port, "PATCH", &location, &[]).unwrap().status, 405);
    assert_eq!(http_request(srv.http_port, "DELETE", "/whip/session/0000", &[]).unwrap().status, 404);
    let opts = http_request(srv.http_port, "OPTIONS", "/whip/live/x", &[]).unwrap();
    assert_eq!(opts.header("accept-post"), Some("application/sdp"));
    // The peer never does ICE: the session is reaped and the stream released.
    assert!(
        wait_until(Duration::from_secs(10), || srv.log_text().contains("not connected within")),
        "unconnected session not reaped"
    );
    let free = wait_until(Duration::from_secs(5), || {
        post_sdp(&srv, "/whip/sec/w2", "application/sdp", &offer, Some(&token)).status == 201
    });
    assert!(free, "the stream was not released after the reaped session");
}

#[test]
fn a_mini_program_and_a_browser_in_one_call() {
    let srv = Server::start("[webrtc]\nudp_port_min = 0\nudp_port_max = 0\n");
    // The mini program: <live-pusher> publishes RTMP, <live-player> plays the browser over HTTP-FLV.
    let _pusher = push(&media("360p"), &srv.rtmp_url("mini"));
    srv.wait_live("mini");
    // The browser: publishes with WHIP and plays the mini program with WHEP, in one page.
    let whip = format!("http://127.0.0.1:{}/whip/live/web", srv.http_port);
    let whep = format!("http://127.0.0.1:{}/whep/live/mini", srv.http_port);
    let shot = srv.dir.path().join("call.png");
    let mut browser = node_bg("whip_publish.mjs", &[&whip, "10", "h264", &whep, shot.to_str().unwrap()]);
    assert!(
        wait_until(Duration::from_secs(20), || browser.stdout().contains("\"event\":\"connected\"")),
        "WHIP publish did not connect: {}",
        browser.stderr()
    );
    srv.wait_live("web");
    // The browser's stream records like any other (the call is kept).
    start_recording(&srv, "web", &["mp4", "flv"], "call");
    let flv = capture(&srv, &srv.flv_url("web"), 5, "player.flv");
    let codecs: Vec<String> =
        streams_of(&flv).iter().filter_map(|s| s["codec_name"].as_str().map(String::from)).collect();
    assert!(codecs.contains(&"h264".into()) && codecs.contains(&"aac".into()), "the mini program got {codecs:?}");
    let j = browser_result(&mut browser, Duration::from_secs(40));
    assert!(j["framesSent"].as_u64().unwrap() > 100, "{j}");
    assert!(j["play"]["fps"].as_f64().unwrap_or(0.0) > 20.0, "the browser sees the mini program: {j}");
    assert!(j["play"]["audioRms"].as_f64().unwrap_or(0.0) > 0.01, "and hears it: {j}");
    assert!(std::fs::metadata(&shot).unwrap().len() > 1000);
    let files = finish_recording(&srv, "web", "call", 2);
    let mut formats: Vec<&str> = files.iter().map(|(f, _, _)| f.as_str()).collect();
    formats.sort();
    assert_eq!(formats, ["flv", "mp4"]);
    for (_, path, codecs) in &files {
        assert_eq!(codecs, &["aac", "h264"], "{}", path.display());
    }
}

#[test]
fn a_browser_that_vanishes_unpublishes_its_stream_and_readers_are_told() {
    use std::os::unix::process::CommandExt;
    let srv = Server::start("[webrtc]\nudp_port_min = 0\nudp_port_max = 0\n[hub]\nreconnect_grace_secs = 1.0\n");
    let whip = format!("http://127.0.0.1:{}/whip/live/gone", srv.http_port);
    // Its own process group, so the browser can be killed with node, as a crashed tab or lost laptop would go.
    let browser = Proc::spawn_capture(
        Command::new("node")
            .arg(format!("{}/tests/browser/whip_publish.mjs", env!("CARGO_MANIFEST_DIR")))
            .args([&whip, "60"])
            .process_group(0),
    );
    assert!(wait_until(Duration::from_secs(20), || browser.stdout().contains("\"event\":\"connected\"")));
    srv.wait_live("gone");
    let mut reader = FlvClient::connect(srv.http_port, "/live/gone.flv", None);
    assert!(reader.next_tag(Duration::from_secs(5)).is_some(), "the reader gets media");
    unsafe { libc::kill(-(browser.child.id() as i32), libc::SIGKILL) };
    let killed = std::time::Instant::now();
    // ICE consent stops; the session ends, the stream is unpublished, and after the grace the reader is closed.
    let mut eof = false;
    while killed.elapsed() < Duration::from_secs(25) {
        if reader.next_tag(Duration::from_secs(1)).is_none() && reader.eof {
            eof = true;
            break;
        }
    }
    assert!(eof, "the FLV reader was not closed after the browser vanished");
    assert!(srv.stream_json("gone").is_none(), "the stream is gone from the API");
    let log = srv.log_text();
    assert!(log.contains("whip session ended") && log.contains("publisher left"), "{log}");
}

#[test]
fn an_audio_only_whip_publish_reaches_flv_readers_as_aac() {
    let srv = Server::start("[webrtc]\nudp_port_min = 0\nudp_port_max = 0\n");
    let url = format!("http://127.0.0.1:{}/whip/live/mic", srv.http_port);
    let mut browser = node_bg("whip_publish.mjs", &[&url, "12", "none"]);
    assert!(
        wait_until(Duration::from_secs(20), || browser.stdout().contains("\"event\":\"connected\"")),
        "WHIP publish did not connect: {}",
        browser.stderr()
    );
    assert!(
        wait_until(Duration::from_secs(20), || srv.stream_json("mic").is_some_and(|j| j["audio"].is_object())),
        "the audio-only stream never went live"
    );
    let flv = capture(&srv, &srv.flv_url("mic"), 4, "mic.flv");
    let codecs: Vec<String> =
        streams_of(&flv).iter().filter_map(|s| s["codec_name"].as_str().map(String::from)).collect();
    assert_eq!(codecs, ["aac"], "an audio-only stream");
    let dec = ffprobe(flv.to_str().unwrap(), &["-show_entries", "frame=media_type", "-of", "csv=p=0"]);
    assert!(dec.stderr.is_empty(), "decode errors: {}", String::from_utf8_lossy(&dec.stderr));
    let frames = String::from_utf8_lossy(&dec.stdout).lines().filter(|l| l.trim() == "audio").count();
    assert!(frames > 100, "{frames} AAC frames in 4 s");
    let j = browser_result(&mut browser, Duration::from_secs(40));
    assert_eq!(j["deleteStatus"], 200, "{j}");
}
