//! Stream health (issue #14): a publisher's quality level as live-pusher's `netQualityLevel` names it, and a
//! background pusher (a 2 fps still picture without audio, as WeChat sends from the background) that every
//! kind of player rides through. Driven as users do: a paced RTMP publisher, ffmpeg, HTTP-FLV, RTMP and HLS
//! readers, and Chromium over WHEP.

mod common;

use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

/// Polls the stream API every 200 ms in a thread until `stop`: (ms since start, quality level, state, the
/// stream's reader skips).
type Reading = (u64, u64, String, u64);

fn watch(srv: &Server, name: &str, stop: Arc<Mutex<bool>>) -> std::thread::JoinHandle<Vec<Reading>> {
    let port = srv.http_port;
    let path = format!("/api/v1/streams/live/{name}");
    std::thread::spawn(move || {
        let start = Instant::now();
        let mut seen = Vec::new();
        while !*stop.lock().unwrap() {
            if let Some(r) = http_get(port, &path).filter(|r| r.status == 200) {
                let j = r.json();
                if let Some(level) = j["quality"]["level"].as_u64() {
                    let state = j["publisher_state"].as_str().unwrap_or("").to_owned();
                    let skips = j["skips"].as_u64().unwrap_or(0);
                    seen.push((start.elapsed().as_millis() as u64, level, state, skips));
                }
            }
            // The next reading in 200 ms, unless told to stop before.
            wait_until(Duration::from_millis(200), || *stop.lock().unwrap());
        }
        seen
    })
}

/// A publisher that cannot keep up (its writes paced at two thirds of real time, as a slow uplink drains
/// them) sinks from best to very poor, and is best again once it has caught up; each change reaches the
/// `on_stream_health` webhook as `on_quality`, and the API shows the ingest windows.
#[test]
fn a_throttled_publisher_sinks_to_very_poor_and_comes_back() {
    let (hook_port, hooks) = http_receiver(200);
    let srv = Server::start(&format!("[webhooks]\non_stream_health = [\"http://127.0.0.1:{hook_port}/health\"]\n"));
    let mut p = RtmpClient::connect(srv.rtmp_port, false).unwrap();
    p.connect_app("live");
    assert_eq!(statuses(&p.publish("q"))[0].0, "NetStream.Publish.Start");
    let tags = flv_tags(&media("360p"));
    let stop = Arc::new(Mutex::new(false));
    let watcher = watch(&srv, "q", stop.clone());
    // Wall time per media ms: real time for 6 s, 1.5x (a backlog growing 0.5 s a second) until 14 s, then as
    // fast as the socket takes until caught up, then real time to 22 s.
    let start = Instant::now();
    let mut lag = 0.0f64;
    let mut phase_at = [None; 3];
    for (kind, ts, body) in tags.iter().filter(|t| t.1 <= 22_000) {
        let media = f64::from(*ts);
        if (6_000.0..14_000.0).contains(&media) {
            lag = (media - 6_000.0) * 0.5;
            phase_at[0].get_or_insert(start.elapsed());
        } else if media >= 14_000.0 {
            lag = 0.0;
            phase_at[1].get_or_insert(start.elapsed());
        }
        pace(start, (media + lag) as u64);
        let csid = if *kind == 9 { 6 } else { 4 };
        p.send_raw_message(csid, *kind, 1, *ts, body);
    }
    phase_at[2] = Some(start.elapsed());
    let j = srv.stream_json("q").unwrap();
    *stop.lock().unwrap() = true;
    let seen = watcher.join().unwrap();
    let (throttled, caught_up) = (phase_at[0].unwrap().as_millis() as u64, phase_at[1].unwrap().as_millis() as u64);
    let level_at = |from: u64, to: u64| -> Vec<u64> {
        seen.iter().filter(|(t, ..)| (from..to).contains(t)).map(|(_, l, ..)| *l).collect()
    };
    let before = level_at(2_500, throttled);
    assert!(!before.is_empty() && before.iter().all(|l| *l <= 2), "before the throttle: {seen:?}");
    let during = level_at(throttled, caught_up + 500);
    assert!(during.iter().any(|l| *l >= 5), "very poor while throttled: {seen:?}");
    let after = level_at(caught_up + 3_000, u64::MAX);
    assert!(!after.is_empty() && after.iter().all(|l| *l <= 2), "best or good again: {seen:?}");
    // The windows describe the last second and ten of a 30 fps, ~700 kbit/s push.
    let w1 = &j["ingest"]["last_1s"];
    assert!((25.0..=35.0).contains(&w1["fps"].as_f64().unwrap()), "{j}");
    assert!(w1["audio_fps"].as_f64().unwrap() > 30.0, "{j}");
    assert!(j["ingest"]["last_10s"]["keyframe_interval_ms"].as_f64().is_some_and(|k| (1_900.0..2_100.0).contains(&k)));
    assert_eq!(j["publisher_state"], "foreground");
    // /metrics says the same level (best or good by now), and no publisher in the background.
    let m = String::from_utf8(srv.api("GET", "/metrics").body).unwrap();
    let level = m.lines().find_map(|l| l.strip_prefix("livegate_publisher_quality{stream=\"live/q\"} "));
    assert!(level.is_some_and(|l| l == "1" || l == "2"), "{m}");
    assert!(m.lines().any(|l| l == "livegate_publishers_background 0"), "{m}");
    // The webhook heard every change, from the same publisher, worst first then back.
    let hooks = hooks.lock().unwrap().clone();
    let levels: Vec<u64> =
        hooks.iter().filter(|h| h["action"] == "on_quality").map(|h| h["level"].as_u64().unwrap()).collect();
    let worst = levels.iter().position(|l| *l >= 5).unwrap_or_else(|| panic!("{hooks:?}"));
    assert!(levels[worst..].iter().any(|l| *l <= 2), "{hooks:?}");
    assert!(hooks.iter().all(|h| h["stream"] == "live/q" && h["client_id"].is_u64() && h["quality"].is_string()));
}

/// WeChat's live-pusher in the background: 10 s of camera, 60 s of a 2 fps still picture with no audio, and
/// the camera again. HTTP-FLV, RTMP and HLS readers and a WHEP viewer in Chromium stay connected through it,
/// nobody skips, the timeline runs on, full rate is back within a GOP of the return, and the API says
/// background, then foreground.
#[test]
fn a_background_pusher_keeps_every_player_and_comes_back_at_full_rate() {
    let srv = Server::start(
        "[hls]\nsegment_secs = 2.0\n[webrtc]\nudp_port_min = 0\nudp_port_max = 0\n[webhooks]\non_stream_health = []\n",
    );
    let input = background_media();
    let pushed_at = Instant::now();
    // ffmpeg's muxer would hold video for up to 10 s waiting for the audio that stopped (its interleaving,
    // max_interleave_delta): a live-pusher sends each frame as it is made, so the stand-in must too.
    let _pusher = Proc::spawn(Command::new("ffmpeg").args(["-v", "error", "-re", "-i"]).arg(&input).args([
        "-c",
        "copy",
        "-max_interleave_delta",
        "100000",
        "-f",
        "flv",
        &srv.rtmp_url("bg"),
    ]));
    srv.wait_live("bg");
    let stop = Arc::new(Mutex::new(false));
    let watcher = watch(&srv, "bg", stop.clone());
    // Readers from the start: HTTP-FLV (its tags kept), RTMP (ffmpeg copying to a file), HLS (the playlist
    // polled every second), WHEP (Chromium).
    let port = srv.http_port;
    let flv = std::thread::spawn(move || {
        let mut c = FlvClient::connect(port, "/live/bg.flv", None);
        c.read_for(Duration::from_secs(82))
    });
    let rtmp_out = srv.dir.path().join("rtmp.flv");
    let mut rtmp = Proc::spawn(
        Command::new("ffmpeg")
            .args(["-v", "error", "-y", "-i", &srv.rtmp_url("bg"), "-t", "80", "-map", "0", "-c", "copy"])
            .arg(&rtmp_out),
    );
    let hls_stop = stop.clone();
    let hls = std::thread::spawn(move || {
        // How many segments the playlist has had so far (media sequence + segments listed).
        let segments = || {
            let r = http_get(port, "/live/bg.m3u8").expect("playlist");
            assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
            let text = String::from_utf8_lossy(&r.body).into_owned();
            let seq =
                text.lines().find_map(|l| l.strip_prefix("#EXT-X-MEDIA-SEQUENCE:")).and_then(|v| v.parse::<u64>().ok());
            seq.unwrap_or(0) + text.lines().filter(|l| l.ends_with(".ts")).count() as u64
        };
        // Through the background and back: each new segment within 6 s of the last, for as long as a next
        // one must come. The push ends at 80 s from its start (not from this thread's, which a loaded machine
        // starts seconds later), and its last segment closes only with the stream: the last wait starts by
        // 70 s, when two more segments are still to come.
        let mut seen = vec![segments()];
        let until = pushed_at + Duration::from_secs(70);
        while !*hls_stop.lock().unwrap() && Instant::now() < until {
            let last = *seen.last().unwrap();
            let mut now = last;
            if !wait_until(Duration::from_secs(6), || {
                now = segments();
                now > last
            }) {
                return Err(seen);
            }
            seen.push(now);
        }
        Ok(seen)
    });
    let shot = srv.dir.path().join("whep.png");
    let whep_url = format!("http://127.0.0.1:{port}/whep/live/bg");
    let mut whep = node_bg("whep_play.mjs", &[&whep_url, shot.to_str().unwrap(), "78"]);
    // The WHEP viewer's receiver reports reach its quality: judged, no loss on loopback, a round trip. (Its
    // level itself depends on the machine: a join on a machine loaded past stress-ng once skipped twice.)
    let mut viewer = serde_json::Value::Null;
    assert!(
        wait_until(Duration::from_secs(20), || {
            let clients = srv.api("GET", "/api/v1/clients").json();
            viewer = clients["clients"]
                .as_array()
                .and_then(|cs| cs.iter().find(|c| c["protocol"] == "whep" && c["role"] == "player").cloned())
                .map(|c| c["player"].clone())
                .unwrap_or_default();
            let judged = viewer["quality"]["level"].as_u64().is_some_and(|l| l >= 1);
            judged && viewer["loss_percent"].is_number() && viewer["rtt_ms"].is_number()
        }),
        "no receiver report in the WHEP viewer's quality: {viewer}"
    );
    assert!(viewer["loss_percent"].as_f64().unwrap() < 2.0, "{viewer}");
    // Those reports were read by livegate on the shared port's control thread (`rtcp_in`), not by the viewer's
    // webrtc-rs session, and none was refused.
    let m = String::from_utf8(srv.api("GET", "/metrics").body).unwrap();
    let rtcp = |result: &str| -> u64 {
        let key = format!("livegate_whep_rtcp_total{{result=\"{result}\"}} ");
        m.lines().find_map(|l| l.strip_prefix(&key)).and_then(|v| v.parse().ok()).expect("RTCP counter")
    };
    assert!(rtcp("read") >= 1 && rtcp("refused") == 0, "read {} refused {}", rtcp("read"), rtcp("refused"));

    let tags = flv.join().unwrap();
    assert!(rtmp.wait(Duration::from_secs(40)).is_some_and(|s| s.success()), "ffmpeg RTMP reader: {}", rtmp.stderr());
    let w = browser_result(&mut whep, Duration::from_secs(60));
    *stop.lock().unwrap() = true;
    let hls = hls.join().unwrap();
    let seen = watcher.join().unwrap();

    // The HTTP-FLV reader's timeline: no skip (no video gap beyond the still picture's 500 ms), 2 fps in the
    // background, 30 fps again within 2 s (one GOP) of the return.
    let video: Vec<u32> = tags.iter().filter(|(_, t)| is_video_frame(t)).map(|(_, t)| t.timestamp).collect();
    check_timeline("HTTP-FLV", &video);
    // The RTMP reader's: the same.
    let rtmp_video: Vec<u32> = flv_tags(&rtmp_out)
        .iter()
        .filter(|t| t.0 == 9 && t.2.first().is_some_and(|b| b & 0x0f == 7) && t.2[1] == 1)
        .map(|t| t.1)
        .collect();
    check_timeline("RTMP", &rtmp_video);
    // HLS: the playlist never stalled for long (a new segment at least every 6 s), through to the end.
    let hls = hls.unwrap_or_else(|seen| panic!("HLS playlist stalled for 6 s: {seen:?}"));
    assert!(hls.len() > 30, "HLS segments seen: {hls:?}");
    // WHEP: connected to the end and decoding at full rate again.
    assert_eq!(w["ok"], true, "{w}");
    assert!(w["framesDecoded"].as_u64().unwrap() > 500, "{w}");
    assert_eq!(w["connection"], "connected", "{w}");
    // The API said background during the still picture and foreground after.
    let t_bg = seen.iter().find(|r| r.2 == "background").map(|x| x.0);
    let t_fg = seen.iter().skip_while(|r| r.2 != "background").find(|r| r.2 == "foreground").map(|x| x.0);
    assert!(t_bg.is_some() && t_fg.is_some(), "{seen:?}");
    assert!(seen.iter().all(|r| r.1 <= 3), "a background pusher is not a bad one: {seen:?}");
    assert!(seen.iter().all(|r| r.3 == 0), "no reader skipped: {seen:?}");
    let log = srv.log_text();
    assert!(log.contains("publisher state") && log.contains("Background"), "no state change logged");
}

/// The media timeline of a background pusher as a reader got it.
fn check_timeline(who: &str, video: &[u32]) {
    assert!(video.len() > 400, "{who}: {} video frames", video.len());
    let first = video[0];
    let rel: Vec<u32> = video.iter().map(|t| t - first).collect();
    for w in rel.windows(2) {
        assert!(w[1] >= w[0] && w[1] - w[0] <= 600, "{who}: a gap {} -> {} ms", w[0], w[1]);
    }
    // Background frames (2 fps) between 12 s and 68 s of the input.
    let in_bg = video.iter().filter(|t| (12_000..68_000).contains(*t)).count();
    assert!((100..=120).contains(&in_bg), "{who}: {in_bg} frames in 56 s of background");
    // Full rate within 2 s of the return at 70 s: 30 fps over 72–74 s.
    let back = video.iter().filter(|t| (72_000..74_000).contains(*t)).count();
    assert!(back >= 55, "{who}: {back} frames in 72–74 s");
}

/// 80 s: 10 s of 640x360 30 fps camera with AAC, 60 s of a 2 fps still picture and no audio (keyframes
/// every 2 s, as a still picture costs nothing to refresh), 10 s of camera again; keyframes every 2 s.
fn background_media() -> std::path::PathBuf {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-media");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("background.flv");
    if !path.exists() {
        let tmp = dir.join(format!("background.{}.tmp.flv", std::process::id()));
        let st = Command::new("ffmpeg")
            .args(["-y", "-loglevel", "error", "-f", "lavfi", "-i", "testsrc2=size=640x360:rate=30"])
            .args(["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100", "-t", "80"])
            .args(["-vf", "select='lt(t,10)+gte(t,70)+not(mod(n,15))'", "-vsync", "vfr"])
            .args(["-af", "aselect='lt(t,10)+gte(t,70)'"])
            .args(["-c:v", "libx264", "-preset", "veryfast", "-force_key_frames", "expr:gte(t,n_forced*2)"])
            .args(["-bf", "0", "-pix_fmt", "yuv420p", "-b:v", "600k", "-c:a", "aac", "-b:a", "64k"])
            .arg(&tmp)
            .status()
            .unwrap();
        assert!(st.success(), "ffmpeg could not make the background input");
        std::fs::rename(&tmp, &path).unwrap();
    }
    path
}

/// The API's view of the HTTP-FLV player on local port `port`: (client id, its `player` object).
fn player(srv: &Server, port: u16) -> Option<(u64, serde_json::Value)> {
    let clients = srv.api("GET", "/api/v1/clients").json();
    let c = clients["clients"].as_array()?.iter().find(|c| c["addr"] == format!("127.0.0.1:{port}"))?.clone();
    Some((c["id"].as_u64()?, c["player"].clone()))
}

/// A player whose downlink stops (it reads nothing: its socket fills) sinks to unavailable, with its backlog,
/// stalls and skips in the client API, and is best again once it reads; a player beside it stays best. Each
/// change reaches the `on_stream_health` webhook as `on_player_quality`.
#[test]
fn a_stalled_player_sinks_to_unavailable_and_comes_back() {
    let (hook_port, hooks) = http_receiver(200);
    let srv = Server::start(&format!("[webhooks]\non_stream_health = [\"http://127.0.0.1:{hook_port}/health\"]\n"));
    let _pub = push_loop(&media("360p"), &srv.rtmp_url("pq"));
    srv.wait_live("pq");
    let port = srv.http_port;
    let stop = Arc::new(Mutex::new(false));
    let mut good = FlvClient::connect(port, "/live/pq.flv", None);
    let good_port = good.local_port();
    let stop2 = stop.clone();
    let good_reader = std::thread::spawn(move || {
        let mut tags = 0;
        while !*stop2.lock().unwrap() {
            tags += usize::from(good.next_tag(Duration::from_millis(200)).is_some());
        }
        tags
    });
    let mut slow = FlvClient::connect(port, "/live/pq.flv", Some(8 * 1024));
    assert!(slow.next_tag(Duration::from_secs(10)).is_some());
    let (slow_id, _) = player(&srv, slow.local_port()).expect("the slow player is listed");
    // It reads nothing now: its socket fills and the stream goes on without it.
    let mut worst = serde_json::Value::Null;
    assert!(
        wait_until(Duration::from_secs(30), || {
            worst = player(&srv, slow.local_port()).map(|p| p.1).unwrap_or_default();
            worst["quality"]["level"].as_u64().is_some_and(|l| l >= 5)
        }),
        "the stalled player never sank: {worst}"
    );
    assert!(worst["stalls"].as_u64().unwrap() >= 1, "{worst}");
    // Reading again (it skips to a keyframe near live) it comes back to best.
    let mut back = serde_json::Value::Null;
    assert!(
        wait_until(Duration::from_secs(40), || {
            slow.read_for(Duration::from_millis(300));
            back = player(&srv, slow.local_port()).map(|p| p.1).unwrap_or_default();
            back["quality"]["level"] == 1
        }),
        "the player did not recover: {back}"
    );
    assert!(back["backlog_ms"].as_i64().unwrap() < 300, "{back}");
    let (good_id, g) = player(&srv, good_port).unwrap();
    assert_eq!(g["quality"]["level"], 1, "{g}");
    assert_eq!((g["skips"].as_u64(), g["loss_percent"].as_f64()), (Some(0), None), "{g}");
    let m = String::from_utf8(srv.api("GET", "/metrics").body).unwrap();
    assert!(m.lines().any(|l| l == "livegate_players_by_quality{level=\"1\"} 2"), "{m}");
    *stop.lock().unwrap() = true;
    assert!(good_reader.join().unwrap() > 100);
    // The webhook: the slow player down to 5 or 6 and back to 1; the good one never worse than good.
    let hooks = hooks.lock().unwrap().clone();
    let levels = |id: u64| -> Vec<u64> {
        hooks
            .iter()
            .filter(|h| h["action"] == "on_player_quality" && h["client_id"] == id)
            .map(|h| h["level"].as_u64().unwrap())
            .collect()
    };
    let slow_levels = levels(slow_id);
    let sank = slow_levels.iter().position(|l| *l >= 5).unwrap_or_else(|| panic!("{slow_levels:?}"));
    assert_eq!(slow_levels.last(), Some(&1), "{slow_levels:?}");
    assert!(sank < slow_levels.len() - 1);
    assert!(levels(good_id).iter().all(|l| *l <= 2), "{:?}", levels(good_id));
    let h = hooks.iter().find(|h| h["action"] == "on_player_quality").unwrap();
    assert_eq!((h["stream"].as_str(), h["protocol"].as_str()), (Some("live/pq"), Some("http-flv")), "{h}");
}

/// A publisher whose timestamps stall while its frames keep coming (an encoder clock that stopped for 3 s):
/// the frames are placed by their arrival, so players get a timeline that runs on (no seconds of frames at one
/// instant, no hole when the clock moves again) and the stream's media time keeps up with the wall clock.
#[test]
fn a_publisher_whose_timestamps_stall_is_placed_by_arrival() {
    let srv = Server::start("");
    let tags = flv_tags(&media("360p"));
    let mut p = RtmpClient::connect(srv.rtmp_port, false).unwrap();
    p.connect_app("live");
    p.publish("stall");
    let port = srv.http_port;
    let start = Instant::now();
    let mut reader = None;
    let mut media_at_stall = None;
    for (kind, ts, body) in tags.iter().filter(|t| t.1 <= 8_000) {
        // 2 s to 5 s: every frame stamped 2000.
        let sent_ts = if (2_000..5_000).contains(ts) { 2_000 } else { *ts };
        if *ts >= 2_000 && media_at_stall.is_none() {
            media_at_stall = srv.media_ms("stall");
        }
        let id = if *kind == 9 { livegate::rtmp::message::VIDEO } else { livegate::rtmp::message::AUDIO };
        p.send_raw_message(if *kind == 9 { 6 } else { 4 }, id, 1, sent_ts, body);
        pace(start, u64::from(*ts));
        if reader.is_none() && *ts >= 500 {
            reader = Some(std::thread::spawn(move || {
                FlvClient::connect(port, "/live/stall.flv", None).read_for(Duration::from_secs(8))
            }));
        }
    }
    let media_after = srv.media_ms("stall").unwrap();
    let got = reader.unwrap().join().unwrap();
    let video: Vec<u32> = got.iter().filter(|(_, t)| is_video_frame(t)).map(|(_, t)| t.timestamp).collect();
    assert!(video.windows(2).all(|w| w[1] >= w[0]), "time went back: {video:?}");
    let worst_gap = video.windows(2).map(|w| w[1] - w[0]).max().unwrap();
    assert!(worst_gap <= 400, "a {worst_gap} ms hole: {video:?}");
    let same = video.windows(2).filter(|w| w[1] == w[0]).count();
    assert!(same <= 4, "{same} video frames share a timestamp: {video:?}");
    // 6 s of the publisher's media after the stall began took about 6 s on the stream's timeline too.
    let advanced = media_after - media_at_stall.unwrap();
    assert!((5_000..=7_500).contains(&advanced), "media time advanced {advanced} ms over the stall and after");
    assert!(srv.log_text().contains("publisher timestamps stalled"));
}
