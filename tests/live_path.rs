//! RTMP publish → RTMP / HTTP-FLV play with real ffmpeg, ffprobe, GStreamer and Chromium clients.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

#[test]
fn ffprobe_sees_source_codecs_over_rtmp_and_http_flv() {
    let srv = Server::start("");
    let _pub = push(&media("360p"), &srv.rtmp_url("probe"));
    let info = srv.wait_live("probe");
    assert_eq!(info["video"]["width"], 640);
    assert_eq!(info["video"]["height"], 360);
    assert_eq!(info["audio"]["codec"], "AAC");
    for url in [srv.rtmp_url("probe"), srv.flv_url("probe")] {
        let streams = probe_streams(&url);
        let v = streams.iter().find(|s| s["codec_type"] == "video").unwrap_or_else(|| panic!("no video in {url}"));
        assert_eq!(v["codec_name"], "h264", "{url}");
        assert_eq!((v["width"].as_u64(), v["height"].as_u64()), (Some(640), Some(360)), "{url}");
        let a = streams.iter().find(|s| s["codec_type"] == "audio").unwrap_or_else(|| panic!("no audio in {url}"));
        assert_eq!(a["codec_name"], "aac", "{url}");
    }
    // libavformat asks a live stream's length and wants a number back; anything else it warns about.
    let out = Command::new("timeout")
        .args(["30", "ffprobe", "-v", "warning", "-show_entries", "stream=codec_name"])
        .arg(srv.rtmp_url("probe"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains("getStreamLength"), "{stderr}");
}

/// Counts video frames ffprobe decodes in a file.
fn count_frames(path: &std::path::Path) -> u64 {
    let out = ffprobe(
        path.to_str().unwrap(),
        &["-select_streams", "v:0", "-count_frames", "-show_entries", "stream=nb_read_frames", "-of", "csv=p=0"],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

#[test]
fn whole_push_arrives_over_both_protocols_frame_for_frame() {
    // A 6 s source; readers ask for a 10 s cache so they start at the first keyframe, and a short grace
    // ends their stream soon after the publisher finishes.
    let srv = Server::start("[hub]\nreconnect_grace_secs = 1.0\n");
    let src = media("short");
    let expected = count_frames(&src);
    let _pub = push(&src, &srv.rtmp_url("whole"));
    srv.wait_live("whole");
    let dir = tempdir::TempDir::new("whole");
    let mut readers = Vec::new();
    for (i, url) in [
        format!("{}?min_cache=10&max_cache=10", srv.flv_url("whole")),
        format!("{}?min_cache=10&max_cache=10", srv.rtmp_url("whole")),
    ]
    .iter()
    .enumerate()
    {
        let out = dir.path().join(format!("r{i}.flv"));
        let p = Proc::spawn(
            Command::new("ffmpeg")
                .args(["-hide_banner", "-loglevel", "warning", "-i", url, "-c", "copy", "-f", "flv"])
                .arg(&out),
        );
        readers.push((p, out));
    }
    for (p, out) in &mut readers {
        let st = p.wait(Duration::from_secs(30)).expect("reader ends when the stream does");
        assert!(st.success(), "reader failed: {}", p.stderr());
        let got = count_frames(out);
        // The readers joined within a second of the start, so the GOP cache gave them the very first
        // keyframe: every frame of the source arrives.
        assert!(got + 2 >= expected && got <= expected, "got {got} of {expected} frames in {}", out.display());
    }
}

#[test]
fn mid_stream_joiner_starts_with_headers_then_a_cached_keyframe() {
    let srv = Server::start("");
    let _pub = push(&media("360p"), &srv.rtmp_url("join"));
    srv.wait_live("join");
    srv.wait_media_at("join", 3300); // mid-GOP: keyframes every 2 s
    let mut c = FlvClient::connect(srv.http_port, "/live/join.flv", None);
    assert_eq!(c.status, 200);
    assert_eq!(
        c.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case("access-control-allow-origin")).map(|(_, v)| v.as_str()),
        Some("*")
    );
    // Whatever arrives within 300 ms of wall time: the cached burst plus a little live media.
    let tags: Vec<_> = c.read_for(Duration::from_millis(300)).into_iter().map(|(_, t)| t).collect();
    assert!(tags.len() > 10, "only {} tags", tags.len());
    assert_eq!(tags[0].tag_type, 18, "metadata first");
    let first_media = tags.iter().position(|t| !is_seq_header(t) && t.tag_type != 18).unwrap();
    assert!(
        tags[..first_media].iter().any(|t| t.tag_type == 9 && is_seq_header(t)),
        "AVC sequence header before media"
    );
    assert!(
        tags[..first_media].iter().any(|t| t.tag_type == 8 && is_seq_header(t)),
        "AAC sequence header before media"
    );
    let first_video = tags.iter().find(|t| is_video_frame(t)).unwrap();
    assert!(is_video_keyframe(first_video), "first video frame must be a keyframe");
    // It came from the cache: the burst spans more than a second of media (default min_cache = 1 s),
    // so the player did not wait for the next keyframe.
    let last_ts = tags.iter().map(|t| t.timestamp).max().unwrap();
    assert!(last_ts - first_video.timestamp >= 1000, "burst spans {} ms", last_ts - first_video.timestamp);

    // The same over RTMP, with livegate's digest handshake.
    let mut r = RtmpClient::connect(srv.rtmp_port, true).unwrap();
    r.connect_app("live");
    r.send_command(
        0,
        &[
            livegate::media::amf0::Amf0Value::String("createStream".into()),
            2.0.into(),
            livegate::media::amf0::Amf0Value::Null,
        ],
    );
    r.read_until_command("_result", Duration::from_secs(5));
    r.send_command(
        1,
        &[
            livegate::media::amf0::Amf0Value::String("play".into()),
            0.0.into(),
            livegate::media::amf0::Amf0Value::Null,
            "join".into(),
        ],
    );
    let mut seen_header = false;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        assert!(Instant::now() < deadline, "no video over RTMP");
        let Some(m) = r.next_message(Duration::from_secs(5)) else { panic!("rtmp reader got nothing") };
        if m.type_id != 9 {
            continue;
        }
        if m.payload[1] == 0 {
            seen_header = true;
            continue;
        }
        assert!(seen_header, "sequence header precedes video");
        assert_eq!(m.payload[0], 0x17, "first RTMP video frame is a keyframe");
        break;
    }
}

#[test]
fn slow_reader_skips_to_live_while_a_normal_reader_gets_every_frame() {
    let srv = Server::start("");
    let _pub = push(&media("360p"), &srv.rtmp_url("slow"));
    srv.wait_live("slow");
    let mut normal = FlvClient::connect(srv.http_port, "/live/slow.flv", None);
    // A small receive buffer so the pause is felt by the server rather than absorbed by the kernel.
    let mut slow = FlvClient::connect(srv.http_port, "/live/slow.flv?max_cache=1", Some(16 * 1024));
    let mut normal_tags = normal.read_for(Duration::from_secs(2));
    let _ = slow.read_for(Duration::from_secs(2));
    // The slow reader stops reading for 5 s; the normal one keeps reading.
    normal_tags.extend(normal.read_for(Duration::from_secs(5)));
    // Resume: drain what the kernel buffered, then compare how far behind live each is.
    let resumed = slow.read_for(Duration::from_secs(3));
    normal_tags.extend(normal.read_for(Duration::from_millis(100)));
    let live_ts = normal_tags.iter().map(|(_, t)| t.timestamp).max().unwrap();
    let slow_ts = resumed.iter().map(|(_, t)| t.timestamp).max().unwrap();
    assert!(
        live_ts <= slow_ts + 1000 + 2000 + 500,
        "slow reader is {} ms behind live after resuming",
        live_ts as i64 - slow_ts as i64
    );
    let json = srv.stream_json("slow").unwrap();
    assert!(json["skips"].as_u64().unwrap() >= 1, "the slow reader skipped: {json}");
    // Both had caught up and were parked; the fan-out handed the slow one back to its task when its socket
    // filled (that task applied max_cache), and it parked again once it had caught up.
    let m = String::from_utf8(srv.api("GET", "/metrics").body).unwrap();
    assert!(!m.contains("livegate_fanout_handbacks_total 0\n"), "{m}");
    assert!(wait_until(Duration::from_secs(5), || {
        normal_tags.extend(normal.read_for(Duration::from_millis(100)));
        let _ = slow.read_for(Duration::from_millis(100));
        parked(&srv, "http-flv") == 2
    }));
    // The normal reader lost nothing: video timestamps advance one frame at a time.
    let video: Vec<u32> = normal_tags.iter().filter(|(_, t)| is_video_frame(t)).map(|(_, t)| t.timestamp).collect();
    assert!(video.len() > 200, "{} video frames", video.len());
    for w in video.windows(2) {
        assert!(w[1] > w[0] && w[1] - w[0] <= 34, "normal reader has a gap {} -> {}", w[0], w[1]);
    }
}

#[test]
fn publisher_reconnect_within_grace_keeps_an_http_flv_reader() {
    let srv = Server::start("[hub]\nreconnect_grace_secs = 4.0\n");
    let src = media("360p");
    let mut p1 = push(&src, &srv.rtmp_url("rc"));
    srv.wait_live("rc");
    let mut c = FlvClient::connect(srv.http_port, "/live/rc.flv", None);
    let before = c.read_for(Duration::from_secs(2));
    p1.kill();
    srv.wait_unpublished("rc");
    let _p2 = push(&src, &srv.rtmp_url("rc"));
    let after = c.read_for(Duration::from_secs(4));
    assert!(!c.eof, "reader was disconnected during the reconnect");
    let last_before = before.iter().map(|(_, t)| t.timestamp).max().unwrap();
    let video_after: Vec<u32> = after.iter().filter(|(_, t)| is_video_frame(t)).map(|(_, t)| t.timestamp).collect();
    assert!(video_after.len() > 30, "media resumed on the same connection");
    // The timeline continues instead of restarting at 0.
    assert!(
        video_after.iter().all(|ts| *ts >= last_before.saturating_sub(2000)),
        "timestamps went back: {last_before} -> {video_after:?}"
    );
    assert!(after.iter().any(|(_, t)| is_seq_header(t)) || after.iter().any(|(_, t)| is_video_keyframe(t)));
}

#[test]
fn readers_close_cleanly_after_the_grace() {
    let srv = Server::start("[hub]\nreconnect_grace_secs = 1.0\n");
    let mut p = push(&media("360p"), &srv.rtmp_url("bye"));
    srv.wait_live("bye");
    let mut c = FlvClient::connect(srv.http_port, "/live/bye.flv", None);
    let mut r = RtmpClient::connect(srv.rtmp_port, false).unwrap();
    r.connect_app("live");
    r.send_command(1, &["play".into(), 0.0.into(), livegate::media::amf0::Amf0Value::Null, "bye".into()]);
    c.read_for(Duration::from_secs(1));
    p.kill();
    // HTTP-FLV: the chunked body ends with its terminator (clean EOF), not a reset.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !c.eof && Instant::now() < deadline {
        c.read_for(Duration::from_millis(200));
    }
    assert!(c.eof, "http-flv reader not closed after the grace");
    // RTMP: UnpublishNotify then close.
    let msgs = r.read_until_command("__never__", Duration::from_secs(6));
    let codes: Vec<String> = statuses(&msgs).into_iter().map(|(c, _)| c).collect();
    assert!(codes.contains(&"NetStream.Play.UnpublishNotify".to_owned()), "{codes:?}");
    assert!(srv.stream_json("bye").is_none(), "stream removed");
}

#[test]
fn gstreamer_publishes_and_plays() {
    let srv = Server::start("");
    let url = srv.rtmp_url("gst");
    let _p = Proc::spawn(Command::new("gst-launch-1.0").args([
        "-q",
        "videotestsrc",
        "is-live=true",
        "!",
        "video/x-raw,width=320,height=240,framerate=30/1",
        "!",
        "x264enc",
        "tune=zerolatency",
        "key-int-max=60",
        "!",
        "h264parse",
        "!",
        "queue",
        "!",
        "mux.",
        "audiotestsrc",
        "is-live=true",
        "!",
        "audioconvert",
        "!",
        "avenc_aac",
        "!",
        "aacparse",
        "!",
        "queue",
        "!",
        "mux.",
        "flvmux",
        "name=mux",
        "streamable=true",
        "!",
        "rtmp2sink",
        &format!("location={url}"),
    ]));
    let info = srv.wait_live("gst");
    assert_eq!(info["video"]["width"], 320);
    let out = Command::new("timeout")
        .args(["30", "gst-launch-1.0", "-q", "rtmp2src"])
        .arg(format!("location={url}"))
        .args([
            "!",
            "flvdemux",
            "name=d",
            "d.video",
            "!",
            "queue",
            "!",
            "h264parse",
            "!",
            "avdec_h264",
            "!",
            "fakesink",
            "num-buffers=30",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "gst rtmp2src play failed: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn mpegts_js_plays_http_flv_in_headless_chromium() {
    let srv = Server::start("");
    let _pub = push(&media("360p"), &srv.rtmp_url("web"));
    srv.wait_live("web");
    let shot = srv.dir.path().join("flv.png");
    let j = browser_check("flv_play.mjs", &[&srv.flv_url("web"), shot.to_str().unwrap(), "3"]);
    assert_eq!(j["ok"], true);
    assert_eq!(j["width"], 640);
    assert!(j["frames"].as_u64().unwrap() > 30, "{j}");
    assert!(std::fs::metadata(&shot).unwrap().len() > 1000, "screenshot written");
}

#[test]
fn sigterm_drains_readers_and_exits_zero() {
    let mut srv = Server::start("");
    let _pub = push(&media("360p"), &srv.rtmp_url("drain"));
    srv.wait_live("drain");
    let mut c = FlvClient::connect(srv.http_port, "/live/drain.flv", None);
    c.read_for(Duration::from_millis(500));
    let st = srv.terminate();
    assert!(st.success(), "exit status {st:?}\n{}", srv.log_text());
    let deadline = Instant::now() + Duration::from_secs(5);
    while !c.eof && Instant::now() < deadline {
        c.read_for(Duration::from_millis(100));
    }
    assert!(c.eof, "reader closed on shutdown");
}

/// The demo page's room: one TRTC-style app (docs/rooms.md); the key signs userSigs and never reaches the page.
const DEMO_APP: u64 = 1_400_000_321;
const DEMO_KEY: &str = "3f1b0c9d5e7a4f2c8b6d1e0a9c7b5d3f2e4a6c8b0d1f3e5a7c9b2d4f6e8a0c1b";

#[test]
fn demo_page_lists_and_plays_a_stream() {
    let srv = Server::start(&format!(
        "[webrtc]\nudp_port_min = 0\nudp_port_max = 0\n[rooms]\napps = [{{ sdk_app_id = {DEMO_APP}, secret_key = \"{DEMO_KEY}\" }}]\n"
    ));
    let _pub = push(&media("360p"), &srv.rtmp_url("demo"));
    srv.wait_live("demo");
    let shot = srv.dir.path().join("demo.png");
    let origin = format!("http://127.0.0.1:{}", srv.http_port);
    // After its players, the page enters a room with its Room panel (userSig made here, never the key) ...
    let (room, page_user, remote, remote_text) = ("demo-room", "page", "mp-demo", "hi from the mini program");
    let room_arg = serde_json::json!({
        "sdkAppId": DEMO_APP, "userId": page_user, "userSig": common::room_member::user_sig(DEMO_APP, DEMO_KEY, page_user), "roomId": room,
        "remote": remote, "remoteText": remote_text,
    })
    .to_string();
    let mut page = node_bg("demo_page.mjs", &[&origin, "live/demo", shot.to_str().unwrap(), &room_arg]);
    let in_room = wait_until(Duration::from_secs(90), || page.stdout().contains("room-entered") || !page.running());
    assert!(in_room && page.running(), "the page never entered the room: {}\n{}", page.stdout(), page.stderr());
    // ... and publishes its (fake) camera and microphone from there: the room sees its media.
    let members = || srv.api("GET", &format!("/api/v1/rooms/{room}")).json()["members"].clone();
    let publishing = wait_until(Duration::from_secs(30), || {
        members().as_array().is_some_and(|m| m.iter().any(|m| m["user_id"] == page_user && m["video"] == true))
    });
    assert!(publishing, "the page's member never sent video: {}", members());
    // A mini program's member enters (as livegate-wx.js does), publishes with the RTMP URL it was given (its
    // <live-pusher>: ffmpeg) and says something.
    let body = serde_json::json!({"sdkAppId": DEMO_APP, "userId": remote, "userSig": common::room_member::user_sig(DEMO_APP, DEMO_KEY, remote), "client": "miniprogram"});
    let r = common::room_member::room_call(&srv, "POST", &format!("/api/v1/rooms/{room}/enter"), None, &body);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let mp = r.json();
    assert!(mp["members"].as_array().unwrap().iter().any(|m| m["user_id"] == page_user), "{mp}");
    let _mp_push = push_loop(&media("360p"), mp["push"]["rtmp"].as_str().expect("a push URL"));
    let said = common::room_member::room_call(
        &srv,
        "POST",
        &format!("/api/v1/rooms/{room}/messages"),
        mp["token"].as_str(),
        &serde_json::json!({"text": remote_text}),
    );
    assert_eq!(said.status, 200, "{}", String::from_utf8_lossy(&said.body));
    let j = browser_result(&mut page, Duration::from_secs(120));
    assert_eq!(j["listed"], true);
    assert_eq!(j["width"], 640);
    assert_eq!(j["whepWidth"], 640, "the page's WebRTC button plays too: {j}");
    assert_eq!(j["hlsWidth"], 640, "and its HLS button: {j}");
    // The page published the fake camera over WHIP and played it back over HTTP-FLV.
    assert_eq!((j["camWidth"].as_u64(), j["camHeight"].as_u64()), (Some(640), Some(480)), "{j}");
    assert!(j["pubStatus"].as_str().unwrap_or("").contains("connected"), "{j}");

    // The Room panel: in the room as a call member, the mini program's 640x360 video playing in its grid (WHEP) ...
    let rm = &j["room"];
    assert!(rm["status"].as_str().unwrap().starts_with(&format!("in call room {room} as {page_user}")), "{rm}");
    assert_eq!((rm["remote"]["width"].as_u64(), rm["remote"]["height"].as_u64()), (Some(640), Some(360)), "{rm}");
    assert!(rm["remote"]["to"].as_f64().unwrap() - rm["remote"]["from"].as_f64().unwrap() >= 2.0, "{rm}");
    // ... its event log listing the member's arrival and its video, in that order, each with the room's seq ...
    let events = rm["events"].as_array().unwrap();
    let at = |name: &str| {
        events
            .iter()
            .position(|e| e["event"] == name && e["user"] == remote)
            .unwrap_or_else(|| panic!("no {name} {remote} in the event log: {events:?}"))
    };
    assert!(at("REMOTE_USER_JOIN") < at("REMOTE_VIDEO_ADD"), "{events:?}");
    let seq = |i: usize| events[i]["seq"].as_str().and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
    assert!(0 < seq(at("REMOTE_USER_JOIN")) && seq(at("REMOTE_USER_JOIN")) < seq(at("REMOTE_VIDEO_ADD")), "{events:?}");
    assert!(events.iter().any(|e| e["event"] == "LOCAL_JOIN"), "{events:?}");
    // ... the chat both ways, the camera off and on again over the same publish, and a clean leave.
    let chat = rm["chat"].as_array().unwrap();
    assert!(chat.iter().any(|l| l["from"] == remote && l["text"].as_str().unwrap().contains(remote_text)), "{chat:?}");
    assert_eq!(rm["cameraOff"]["enableCamera"], false, "{rm}");
    assert_eq!(rm["cameraOn"]["enableCamera"], true, "{rm}");
    assert_eq!(rm["pusher"], "connected", "{rm}");
    assert_eq!((rm["leaveDisabled"].as_bool(), rm["enterEnabled"].as_bool()), (Some(true), Some(true)), "{rm}");
    let left = wait_until(Duration::from_secs(10), || {
        members().as_array().is_some_and(|m| m.iter().all(|m| m["user_id"] != page_user))
    });
    assert!(left, "the page's Leave did not leave: {}", members());
    assert!(std::fs::metadata(&shot).unwrap().len() > 10_000, "the screenshot shows the page with video");
    let room_shot = rm["screenshot"].as_str().unwrap();
    assert!(std::fs::metadata(room_shot).unwrap().len() > 10_000, "the Room panel's screenshot shows its grid");
    // Static files stay inside web_root.
    assert_eq!(http_get(srv.http_port, "/vendor/../Cargo.toml").unwrap().status, 404);
    assert_eq!(http_get(srv.http_port, "/.git/config").unwrap().status, 404);
    let js = http_get(srv.http_port, "/vendor/mpegts.js").unwrap();
    assert_eq!(js.status, 200);
    assert!(js.header("content-type").unwrap().starts_with("text/javascript"));
}

#[test]
fn demo_page_plays_low_latency_hls_in_low_latency_mode_and_shows_its_latency() {
    let srv = Server::start("[hls]\nvariant = \"lowlatency\"\nsegment_secs = 2.0\npart_secs = 0.2\n");
    let _pub = push_loop(&media("360p"), &srv.rtmp_url("ll"));
    srv.wait_live("ll");
    let shot = srv.dir.path().join("demo-ll.png");
    let origin = format!("http://127.0.0.1:{}", srv.http_port);
    let j = browser_check("demo_page.mjs", &[&origin, "live/ll", shot.to_str().unwrap(), "hls"]);
    let h = &j["hls"];
    assert_eq!(j["hlsWidth"], 640, "{j}");
    // The page saw #EXT-X-PART-INF: hls.js in lowLatencyMode with its own defaults, so it holds PART-HOLD-BACK
    // (0.6 s) behind live, not a number of segments.
    assert_eq!(
        (h["mode"].as_str(), h["lowLatencyMode"].as_bool(), h["liveSync"].as_bool()),
        (Some("low-latency"), Some(true), Some(false)),
        "{h}"
    );
    assert!((h["partTarget"].as_f64().unwrap() - 0.2).abs() < 1e-6, "{h}");
    // Its target is PART-HOLD-BACK (0.6 s), plus 1 s if it stalled once catching up from a cold start (hls.js
    // raises its target by liveSyncOnStallIncrease after a stall): the page's request starts the segmenter, the
    // only independent part is the cached keyframe's, up to a GOP back, and the page plays at up to 1.5x to
    // close the gap.
    let target = h["targetLatency"].as_f64().unwrap();
    assert!((target - 0.6).abs() < 1e-6 || (target - 1.6).abs() < 1e-6, "{h}");
    // The latency it shows, hls.js's and by program date-time, the two agreeing: after a cold start ~1.75 s
    // (its target raised to 1.6 s); a player that comes to a running segmenter ~0.9 s (benches/hls_bench.sh).
    // Classic HLS would be three 2 s segments behind.
    let latency: f64 = h["latency"].as_str().unwrap().parse().unwrap();
    let pdt: f64 = h["pdtLatency"].as_str().unwrap().parse().unwrap();
    println!("demo page: {}", h["text"]);
    assert!(latency > 0.0 && latency < 3.5 && (pdt - latency).abs() < 0.5, "{h}");
}

#[test]
fn a_player_that_stops_reading_is_disconnected_with_a_reason() {
    use livegate::media::amf0::Amf0Value;
    let srv = Server::start("[play]\nstall_timeout_secs = 2.0\n");
    let _pub = push(&media("360p"), &srv.rtmp_url("stall"));
    srv.wait_live("stall");
    let mut healthy = FlvClient::connect(srv.http_port, "/live/stall.flv", None);
    // Neither of these reads a byte after the request: their socket buffers fill and livegate's writes stop.
    let stuck_flv = FlvClient::connect(srv.http_port, "/live/stall.flv", Some(4096));
    let mut stuck_rtmp = RtmpClient::connect(srv.rtmp_port, false).unwrap();
    stuck_rtmp.connect_app("live");
    stuck_rtmp.send_command(1, &["play".into(), 0.0.into(), Amf0Value::Null, "stall".into()]);
    let mut tags = healthy.read_for(Duration::from_secs(3));
    assert!(
        wait_until(Duration::from_secs(20), || {
            tags.extend(healthy.read_for(Duration::from_millis(200)));
            let log = srv.log_text();
            log.contains("http-flv player disconnected") && log.contains("player stalled")
        }),
        "stalled players not disconnected:\n{}",
        srv.log_text()
    );
    assert!(wait_until(Duration::from_secs(5), || {
        tags.extend(healthy.read_for(Duration::from_millis(200)));
        srv.stream_json("stall").unwrap()["readers_total"] == 1
    }));
    let metrics = String::from_utf8(srv.api("GET", "/metrics").body).unwrap();
    assert!(!metrics.contains("livegate_disconnects_total{reason=\"too_slow\"} 0"), "{metrics}");
    // The healthy reader beside them lost nothing.
    let video: Vec<u32> = tags.iter().filter(|(_, t)| is_video_frame(t)).map(|(_, t)| t.timestamp).collect();
    assert!(video.len() > 150);
    assert!(video.windows(2).all(|w| w[1] > w[0] && w[1] - w[0] <= 34));
    drop(stuck_flv);
}

fn video_gaps(ts: &[u32]) -> Vec<(u32, u32)> {
    ts.windows(2).filter(|w| !(w[1] > w[0] && w[1] - w[0] <= 34)).map(|w| (w[0], w[1])).collect()
}

#[test]
fn caught_up_players_get_every_frame_from_the_direct_fan_out() {
    // The default merge window (two frames per write outside rtc mode) and an rtc player written per frame;
    // HTTP/1.1 (chunked), HTTP/1.0 (close-delimited) and RTMP players, all parked once caught up.
    let srv = Server::start("");
    let _pub = push(&media("360p"), &srv.rtmp_url("fan"));
    srv.wait_live("fan");
    let mut chunked = FlvClient::connect(srv.http_port, "/live/fan.flv", None);
    let mut rtc = FlvClient::connect(srv.http_port, "/live/fan.flv?mode=rtc", None);
    assert!(chunked.chunked, "HTTP/1.1 gets chunked framing: {:?}", chunked.headers);
    assert!(chunked.headers.iter().any(|(k, v)| k.eq_ignore_ascii_case("access-control-allow-origin") && v == "*"));

    let mut old = std::net::TcpStream::connect(("127.0.0.1", srv.http_port)).unwrap();
    old.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    std::io::Write::write_all(&mut old, b"GET /live/fan.flv HTTP/1.0\r\n\r\n").unwrap();

    let mut rtmp = RtmpClient::connect(srv.rtmp_port, false).unwrap();
    rtmp.connect_app("live");
    rtmp.send_command(1, &["play".into(), 0.0.into(), livegate::media::amf0::Amf0Value::Null, "fan".into()]);

    let mut tags = (Vec::new(), Vec::new());
    let mut rtmp_video = Vec::new();
    let mut old_raw = Vec::new();
    let start = Instant::now();
    let mut parked_seen = (0, 0);
    while start.elapsed() < Duration::from_secs(6) {
        tags.0.extend(chunked.read_for(Duration::from_millis(100)));
        tags.1.extend(rtc.read_for(Duration::from_millis(100)));
        let until = Instant::now() + Duration::from_millis(100);
        while let Some(m) = rtmp.next_message(until.saturating_duration_since(Instant::now())) {
            if m.type_id == 9 && m.payload.len() > 1 && m.payload[1] == 1 {
                rtmp_video.push(m.timestamp);
            }
        }
        let mut b = [0u8; 65536];
        if let Ok(n) = std::io::Read::read(&mut old, &mut b) {
            old_raw.extend_from_slice(&b[..n]);
        }
        if start.elapsed() > Duration::from_secs(3) && parked_seen == (0, 0) {
            parked_seen = (parked(&srv, "http-flv"), parked(&srv, "rtmp"));
        }
    }
    // All four were on the direct path (the HTTP players sit in the http-flv gauge).
    assert_eq!(parked_seen, (3, 1), "players parked for the fan-out (http-flv, rtmp)");

    for (name, t) in [("chunked", &tags.0), ("rtc", &tags.1)] {
        let video: Vec<u32> = t.iter().filter(|(_, t)| is_video_frame(t)).map(|(_, t)| t.timestamp).collect();
        assert!(video.len() > 120, "{name}: {} video frames", video.len());
        assert_eq!(video_gaps(&video), vec![], "{name} reader missed frames");
    }
    assert!(rtmp_video.len() > 120, "rtmp: {} video frames", rtmp_video.len());
    assert_eq!(video_gaps(&rtmp_video), vec![], "rtmp reader missed frames");

    // HTTP/1.0: no chunked framing, the FLV body follows the head and runs until the connection closes.
    let text = String::from_utf8_lossy(&old_raw[..old_raw.len().min(400)]).to_lowercase();
    assert!(text.starts_with("http/1.1 200"), "{text}");
    assert!(!text.contains("transfer-encoding"), "{text}");
    let body = old_raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert_eq!(&old_raw[body..body + 3], b"FLV");
    let mut parser = livegate::media::flv::FlvParser::new();
    parser.feed(&old_raw[body..]);
    let mut old_video = Vec::new();
    while let Some(t) = parser.next_tag().expect("HTTP/1.0 body is one valid FLV stream") {
        if is_video_frame(&t) {
            old_video.push(t.timestamp);
        }
    }
    assert!(old_video.len() > 120, "http/1.0: {} video frames", old_video.len());
    assert_eq!(video_gaps(&old_video), vec![], "http/1.0 reader missed frames");

    // Hanging up leaves the gauge: nothing stays parked for a player that is gone.
    drop((chunked, rtc, old, rtmp));
    assert!(wait_until(Duration::from_secs(5), || parked(&srv, "http-flv") == 0 && parked(&srv, "rtmp") == 0));
}

#[test]
fn single_track_streams_reach_the_fan_out_too() {
    // A video-only and an audio-only push: their players catch up and are parked like any other, and get
    // every frame.
    let srv = Server::start("");
    let one = |name: &str, drop_flag: &str| push_one_track(&media("360p"), &srv.rtmp_url(name), drop_flag, &[]);
    let _v = one("vonly", "-an");
    let _a = one("aonly", "-vn");
    srv.wait_live("vonly");
    assert!(wait_until(Duration::from_secs(20), || srv
        .stream_json("aonly")
        .is_some_and(|j| j["state"] == "live" && j["audio"].is_object())));
    let mut v = FlvClient::connect(srv.http_port, "/live/vonly.flv", None);
    let mut a = FlvClient::connect(srv.http_port, "/live/aonly.flv", None);
    let mut vt = Vec::new();
    let mut at = Vec::new();
    let start = Instant::now();
    let mut parked_at_3s = None;
    while start.elapsed() < Duration::from_secs(5) {
        vt.extend(v.read_for(Duration::from_millis(100)));
        at.extend(a.read_for(Duration::from_millis(100)));
        if parked_at_3s.is_none() && start.elapsed() > Duration::from_secs(3) {
            parked_at_3s = Some(parked(&srv, "http-flv"));
        }
    }
    assert_eq!(parked_at_3s, Some(2), "both single-track players parked");
    let video: Vec<u32> = vt.iter().filter(|(_, t)| is_video_frame(t)).map(|(_, t)| t.timestamp).collect();
    assert!(video.len() > 100, "{} video frames", video.len());
    assert_eq!(video_gaps(&video), vec![]);
    assert!(vt.iter().all(|(_, t)| t.tag_type != 8), "no audio in a video-only stream");
    // AAC raw frames (packet type 1), not the sequence header.
    let audio: Vec<u32> =
        at.iter().filter(|(_, t)| t.tag_type == 8 && t.body.get(1) == Some(&1)).map(|(_, t)| t.timestamp).collect();
    assert!(audio.len() > 150, "{} audio frames", audio.len());
    assert!(audio.windows(2).all(|w| w[1] > w[0] && w[1] - w[0] <= 24), "audio frames in order, none missing");
}
