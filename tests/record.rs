//! FLV recording with real clients: ffmpeg pushes, ffprobe checks the files, callbacks reach a receiver.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

fn probe_duration(path: &std::path::Path) -> f64 {
    let out = ffprobe(path.to_str().unwrap(), &["-show_entries", "format=duration", "-of", "csv=p=0"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

fn first_frame_is_key(path: &std::path::Path) -> bool {
    let out = ffprobe(
        path.to_str().unwrap(),
        &["-select_streams", "v:0", "-show_entries", "frame=key_frame", "-read_intervals", "%+#1", "-of", "csv=p=0"],
    );
    String::from_utf8_lossy(&out.stdout).lines().next().map(|l| l.trim_end_matches(',')) == Some("1")
}

/// Complete recordings listed by the API.
fn complete(srv: &Server, stream: &str) -> Vec<serde_json::Value> {
    let j = srv.api("GET", &format!("/api/v1/recordings?stream={stream}")).json();
    j["recordings"].as_array().unwrap().iter().filter(|r| r["status"] == "complete").cloned().collect()
}

fn push_secs(srv: &Server, name: &str, secs: f64) -> Proc {
    push_args(&media("360p"), &srv.rtmp_url(name), &["-t", &secs.to_string()])
}

#[test]
fn a_push_is_recorded_whole_fragments_add_up_and_short_pushes_leave_nothing() {
    let (cb_port, callbacks) = http_receiver(200);
    // fragment_unit_ms = 100 makes fragment_secs = 60 mean 6 s, so the cut logic runs in a short test.
    let srv = Server::start(&format!(
        "[apps.live]\nrecord = [\"flv\"]\n[hub]\nreconnect_grace_secs = 1.0\n[record]\nfragment_secs = 60\nfragment_unit_ms = 100\ncallback_urls = [\"http://127.0.0.1:{cb_port}/cb\"]\ncallback_key = \"cbkey\"\n"
    ));
    let root = srv.dir.path().join("recordings");
    let mut p = push_secs(&srv, "whole", 20.0);
    let mut short = push_secs(&srv, "short", 0.5);
    assert!(p.wait(Duration::from_secs(40)).is_some_and(|s| s.success()), "{}", p.stderr());
    let _ = short.wait(Duration::from_secs(10));
    assert!(
        wait_until(Duration::from_secs(15), || complete(&srv, "whole").len() == 4),
        "{:?}",
        complete(&srv, "whole")
    );
    let mut files = complete(&srv, "whole");
    files.sort_by_key(|f| f["path"].as_str().unwrap().to_owned());
    let mut total = 0.0;
    for f in &files {
        let path = srv.dir.path().join("recordings").join(f["path"].as_str().unwrap());
        let d = probe_duration(&path);
        assert!((d - f["duration"].as_f64().unwrap()).abs() < 0.05, "{d} vs {f}");
        assert!(first_frame_is_key(&path), "{} starts with a keyframe", path.display());
        let errors = decode_errors(&path);
        assert!(errors.is_empty(), "{errors}");
        total += d;
    }
    // Cuts land on the 2 s keyframes after each 6 s.
    let durs: Vec<f64> = files.iter().map(|f| f["duration"].as_f64().unwrap()).collect();
    assert!(durs[..3].iter().all(|d| (d - 6.0).abs() < 0.1), "{durs:?}");
    // 20 s were pushed: the fragments add up to that within one frame + 50 ms.
    assert!((total - 20.0).abs() <= 0.034 + 0.05, "fragments total {total} s");
    // The 0.5 s push left no file behind.
    assert!(complete(&srv, "short").is_empty());
    assert!(!root.join("live/short").exists() || std::fs::read_dir(root.join("live/short")).unwrap().next().is_none());

    // One callback per file, with the fields users know and a valid signature.
    assert!(wait_until(Duration::from_secs(10), || callbacks.lock().unwrap().len() >= 4));
    let cbs = callbacks.lock().unwrap().clone();
    for cb in &cbs {
        assert_eq!(cb["event_type"], 100);
        assert_eq!(cb["app"], "live");
        assert_eq!(cb["stream_id"], "whole");
        assert_eq!(cb["file_format"], "flv");
        for k in
            ["file_id", "task_id", "record_id", "start_time", "end_time", "duration", "file_size", "video_url", "t"]
        {
            assert!(!cb[k].is_null(), "callback lacks {k}: {cb}");
        }
        let t = cb["t"].as_u64().unwrap().to_string();
        assert_eq!(cb["sign"], livegate::auth::sign("cbkey", "", &t));
        // video_url serves the file, with ranges.
        let url = cb["video_url"].as_str().unwrap();
        let path = url.split_once("/recordings/").unwrap().1;
        let r = http_request(srv.http_port, "GET", &format!("/recordings/{path}"), &[("Range", "bytes=0-12")]).unwrap();
        assert_eq!(r.status, 206);
        assert_eq!(&r.body[..3], b"FLV");
        assert_eq!(r.body.len(), 13);
        assert_eq!(r.header("content-range").unwrap(), format!("bytes 0-12/{}", cb["file_size"]));
    }
}

#[test]
fn reconnects_split_files_unless_resumed_and_the_api_starts_and_stops() {
    let srv = Server::start("[hub]\nreconnect_grace_secs = 8.0\n[record]\nresume_secs = 0.0\n");
    // Started through the API, with bad requests first.
    let bad = |body: &str| {
        let r = http_request_body(srv.http_port, "POST", "/api/v1/recordings", body);
        (r.status, r.json())
    };
    let (s, j) = bad(r#"{"app":"live","stream":"nobody"}"#);
    assert_eq!((s, j["error"].as_str()), (404, Some("stream_not_found")));
    let mut p1 = push_secs(&srv, "rc", 30.0);
    srv.wait_live("rc");
    let (s, j) = bad(r#"{"app":"live","stream":"rc","formats":["avi"]}"#);
    assert_eq!(s, 400);
    assert!(j["detail"].as_str().unwrap().contains("formats"), "{j}");
    let (s, j) = bad(r#"{"app":"live","stream":"rc","fragment_secs":5}"#);
    assert_eq!(s, 400);
    assert!(j["detail"].as_str().unwrap().contains("fragment_secs"), "{j}");
    let (s, j) = bad(r#"{"app":"live","stream":"rc","record_id":"rec1"}"#);
    assert_eq!(s, 201, "{j}");
    assert_eq!(bad(r#"{"app":"live","stream":"rc","record_id":"rec1"}"#).0, 409);
    srv.wait_media("rc", 3.0);
    p1.kill();
    srv.wait_unpublished("rc");
    let _p2 = push_secs(&srv, "rc", 30.0);
    srv.wait_media("rc", 3.0);
    assert_eq!(srv.api("DELETE", "/api/v1/recordings/rec1").status, 200);
    assert_eq!(srv.api("DELETE", "/api/v1/recordings/nope").status, 404);
    assert!(wait_until(Duration::from_secs(10), || complete(&srv, "rc").len() == 2), "{:?}", complete(&srv, "rc"));

    // With resume_secs, the same interruption continues the file.
    let srv = Server::start(
        "[apps.live]\nrecord = [\"flv\"]\n[hub]\nreconnect_grace_secs = 8.0\n[record]\nresume_secs = 5.0\n",
    );
    let mut p1 = push_secs(&srv, "rs", 30.0);
    srv.wait_live("rs");
    srv.wait_media("rs", 3.0);
    p1.kill();
    srv.wait_unpublished("rs");
    let mut p2 = push_secs(&srv, "rs", 3.0);
    assert!(p2.wait(Duration::from_secs(20)).is_some());
    assert!(wait_until(Duration::from_secs(15), || complete(&srv, "rs").len() == 1), "{:?}", complete(&srv, "rs"));
    let f = &complete(&srv, "rs")[0];
    assert!(f["duration"].as_f64().unwrap() > 5.0, "one file spans both sessions: {f}");

    // Deleting a file removes it.
    let id = f["file_id"].as_str().unwrap();
    assert_eq!(srv.api("DELETE", &format!("/api/v1/recordings/files/{id}")).status, 200);
    assert!(complete(&srv, "rs").is_empty());
}

#[test]
fn kill_minus_nine_leaves_playable_files_and_callbacks_survive_a_restart() {
    let cb_port = free_port();
    let dir = tempdir::TempDir::new("crash");
    let root = dir.path().join("rec");
    let cfg = format!(
        "[apps.live]\nrecord = [\"flv\"]\n[record]\nroot = \"{}\"\ncallback_urls = [\"http://127.0.0.1:{cb_port}/cb\"]\ncallback_interval_secs = 1.0\n",
        root.display()
    );
    let mut srv = Server::start(&cfg);
    let _p = push_secs(&srv, "crash", 30.0);
    srv.wait_live("crash");
    srv.wait_media("crash", 5.0);
    unsafe {
        libc::kill(srv.child.id() as i32, libc::SIGKILL);
    }
    let _ = srv.child.wait();
    // Before any restart: the file on disk plays up to (about) the kill.
    let files: Vec<_> = walk(&root).into_iter().filter(|p| p.extension().is_some_and(|e| e == "flv")).collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let d = probe_duration(&files[0]);
    assert!(d >= 3.5, "only {d} s survived the kill");
    let decode =
        Command::new("ffmpeg").args(["-v", "error", "-i"]).arg(&files[0]).args(["-f", "null", "-"]).output().unwrap();
    assert!(decode.status.success());

    // Restart (the callback receiver still down): the file is finished; the callback waits in the outbox.
    let srv = Server::start(&cfg);
    assert!(wait_until(Duration::from_secs(10), || complete(&srv, "crash").len() == 1));
    let info = complete(&srv, "crash")[0].clone();
    assert!(info["duration"].as_f64().unwrap() >= 3.5);
    // A delivery was tried and failed: the callback waits in the outbox for the receiver.
    assert!(
        wait_until(Duration::from_secs(10), || srv.log_text().contains("callback not delivered")),
        "{}",
        srv.log_text()
    );
    let got = http_receiver_on(cb_port, 200);
    assert!(wait_until(Duration::from_secs(10), || !got.lock().unwrap().is_empty()), "callback never delivered");
    // Delivered means removed from the outbox: nothing is left to send again.
    let outbox = root.join(".outbox");
    assert!(
        wait_until(Duration::from_secs(10), || std::fs::read_dir(&outbox)
            .map(|d| d.flatten().all(|e| e.path().is_dir()))
            .unwrap_or(true)),
        "{:?}",
        std::fs::read_dir(&outbox).map(|d| d.flatten().map(|e| e.path()).collect::<Vec<_>>())
    );
    let cbs = got.lock().unwrap().clone();
    assert_eq!(cbs.len(), 1, "delivered once: {cbs:?}");
    assert_eq!(cbs[0]["file_id"], info["file_id"]);
    drop(srv);
}

#[test]
fn an_unwritable_recording_directory_is_a_clear_start_error() {
    let dir = tempdir::TempDir::new("ro");
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, b"x").unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        format!(
            "[rtmp]\nlisten = \"127.0.0.1:0\"\n[http]\nlisten = \"127.0.0.1:0\"\n[record]\nroot = \"{}/sub\"\n",
            file.display()
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_livegate")).args(["serve", "--config"]).arg(&cfg).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("recording directory") && err.contains("not writable"), "{err}");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut v = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                v.extend(walk(&p));
            } else {
                v.push(p);
            }
        }
    }
    v
}

#[test]
fn hls_recording_is_one_playlist_per_push_continued_after_a_discontinuity() {
    let srv = Server::start(
        "[apps.live]\nrecord = [\"flv\", \"hls\"]\n[hub]\nreconnect_grace_secs = 8.0\n[record]\nresume_secs = 5.0\n",
    );
    let mut p1 = push_secs(&srv, "hr", 30.0);
    srv.wait_live("hr");
    srv.wait_media("hr", 4.0);
    p1.kill();
    srv.wait_unpublished("hr");
    let mut p2 = push_secs(&srv, "hr", 4.0);
    assert!(p2.wait(Duration::from_secs(20)).is_some());
    assert!(wait_until(Duration::from_secs(15), || complete(&srv, "hr").len() == 2), "{:?}", complete(&srv, "hr"));
    let files = complete(&srv, "hr");
    let hls = files.iter().find(|f| f["file_format"] == "hls").expect("an HLS recording");
    assert!(files.iter().any(|f| f["file_format"] == "flv"));
    let playlist = srv.dir.path().join("recordings").join(hls["path"].as_str().unwrap());
    let text = std::fs::read_to_string(&playlist).unwrap();
    assert!(text.contains("#EXT-X-ENDLIST"), "{text}");
    assert!(text.contains("#EXT-X-DISCONTINUITY"), "resumed push continues after a discontinuity: {text}");
    let d = probe_duration(&playlist);
    assert!((d - hls["duration"].as_f64().unwrap()).abs() < 0.5 && d > 6.0, "{d} vs {hls}");
    // The playlist and its segments are served like any recording.
    let url = hls["video_url"].as_str().unwrap();
    let streams = probe_streams(url);
    assert!(streams.iter().any(|s| s["codec_name"] == "h264"), "{streams:?}");
    // Deleting removes the segments too.
    let seg_count = || {
        std::fs::read_dir(playlist.parent().unwrap())
            .unwrap()
            .filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "ts"))
            .count()
    };
    assert!(seg_count() > 0);
    assert_eq!(
        srv.api("DELETE", &format!("/api/v1/recordings/files/{}", hls["file_id"].as_str().unwrap())).status,
        200
    );
    assert_eq!(seg_count(), 0);
}

#[test]
fn fmp4_hls_recordings_have_init_sections_survive_a_resumed_push_and_delete_whole() {
    let srv = Server::start(
        "[apps.live]\nrecord = [\"hls\"]\n[hub]\nreconnect_grace_secs = 8.0\n[record]\nresume_secs = 5.0\nhls_variant = \"fmp4\"\n",
    );
    let mut p1 = push_secs(&srv, "fr", 30.0);
    srv.wait_live("fr");
    srv.wait_media("fr", 4.0);
    p1.kill();
    srv.wait_unpublished("fr");
    let mut p2 = push_secs(&srv, "fr", 4.0);
    assert!(p2.wait(Duration::from_secs(20)).is_some());
    assert!(wait_until(Duration::from_secs(15), || complete(&srv, "fr").len() == 1), "{:?}", complete(&srv, "fr"));
    let hls = complete(&srv, "fr").remove(0);
    let playlist = srv.dir.path().join("recordings").join(hls["path"].as_str().unwrap());
    let text = std::fs::read_to_string(&playlist).unwrap();
    assert!(text.contains("#EXT-X-VERSION:7") && text.contains("#EXT-X-ENDLIST"), "{text}");
    assert!(text.contains(".m4s") && !text.contains(".ts\n"), "{text}");
    // The resumed push: a discontinuity, and a new initialization section for its new timeline.
    assert!(text.contains("#EXT-X-DISCONTINUITY\n#EXT-X-MAP:URI="), "{text}");
    assert_eq!(text.matches("#EXT-X-MAP:").count(), 2, "{text}");
    let d = probe_duration(&playlist);
    assert!((d - hls["duration"].as_f64().unwrap()).abs() < 0.5 && d > 6.0, "{d} vs {hls}");
    assert_eq!(decode_errors(&playlist), "");
    let streams = probe_streams(playlist.to_str().unwrap());
    assert!(streams.iter().any(|s| s["codec_name"] == "h264") && streams.iter().any(|s| s["codec_name"] == "aac"));
    let media = || {
        std::fs::read_dir(playlist.parent().unwrap())
            .unwrap()
            .filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "m4s" || x == "mp4"))
            .count()
    };
    assert!(media() > 3);
    assert_eq!(
        srv.api("DELETE", &format!("/api/v1/recordings/files/{}", hls["file_id"].as_str().unwrap())).status,
        200
    );
    assert_eq!(media(), 0, "segments and init sections go with the playlist");
}

#[test]
fn timestamps_that_jump_by_hours_or_backwards_keep_players_and_files_continuous() {
    use livegate::media::flv::FlvParser;
    let srv = Server::start("[apps.live]\nrecord = [\"flv\"]\n[hub]\nreconnect_grace_secs = 0.5\n");
    // A publisher whose clock jumps 3 hours ahead after 2 s, then 3 hours back after 4 s.
    let mut p = RtmpClient::connect(srv.rtmp_port, false).unwrap();
    p.connect_app("live");
    let msgs = p.publish("jumpy");
    assert_eq!(statuses(&msgs)[0].0, "NetStream.Publish.Start");
    let mut parser = FlvParser::new();
    parser.feed(&std::fs::read(media("short")).unwrap());
    let mut tags = Vec::new();
    while let Ok(Some(t)) = parser.next_tag() {
        tags.push(t);
    }
    let reader = std::thread::scope(|s| {
        let r = s.spawn(|| {
            // Join once media flows; a 10 s min_cache starts at the first keyframe.
            assert!(wait_until(Duration::from_secs(10), || srv
                .stream_json("jumpy")
                .is_some_and(|j| j["video"].is_object())));
            let mut c = FlvClient::connect(srv.http_port, "/live/jumpy.flv?min_cache=10&max_cache=10", None);
            c.read_for(Duration::from_secs(9))
        });
        let start = std::time::Instant::now();
        for t in &tags {
            pace(start, t.timestamp as u64);
            let ts = match t.timestamp {
                0..=1999 => t.timestamp,
                2000..=3999 => t.timestamp + 3 * 3600 * 1000,
                _ => t.timestamp,
            };
            let csid = if t.tag_type == 9 { 6 } else { 4 };
            p.send_raw_message(csid, t.tag_type, 1, ts, &t.body);
        }
        r.join().unwrap()
    });
    drop(p);
    let video: Vec<u32> = reader.iter().filter(|(_, t)| is_video_frame(t)).map(|(_, t)| t.timestamp).collect();
    assert!(video.len() > 150, "{} video frames", video.len());
    for w in video.windows(2) {
        assert!(w[1] >= w[0] && w[1] - w[0] < 1000, "a reader saw a jump {} -> {}", w[0], w[1]);
    }
    assert!(srv.log_text().contains("publisher timestamps jumped"));
    // The recording is one playable file of about the pushed length.
    assert!(
        wait_until(Duration::from_secs(10), || complete(&srv, "jumpy").len() == 1),
        "{:?}",
        complete(&srv, "jumpy")
    );
    let f = &complete(&srv, "jumpy")[0];
    let path = srv.dir.path().join("recordings").join(f["path"].as_str().unwrap());
    let d = probe_duration(&path);
    assert!((5.0..7.0).contains(&d), "recorded {d} s of a 6 s push");
    let decode =
        Command::new("ffmpeg").args(["-v", "error", "-i"]).arg(&path).args(["-f", "null", "-"]).output().unwrap();
    assert!(decode.status.success(), "{}", String::from_utf8_lossy(&decode.stderr));
}

// ------------------------------------------------------------------------------------------------------------
// MP4

/// Top-level box types of an MP4 file, in order.
fn mp4_boxes(path: &std::path::Path) -> Vec<String> {
    let data = std::fs::read(path).unwrap();
    let mut out = Vec::new();
    let mut off = 0usize;
    while off + 8 <= data.len() {
        let mut size = u32::from_be_bytes(data[off..off + 4].try_into().unwrap()) as u64;
        if size == 1 {
            size = u64::from_be_bytes(data[off + 8..off + 16].try_into().unwrap());
        } else if size == 0 {
            size = (data.len() - off) as u64;
        }
        out.push(String::from_utf8_lossy(&data[off + 4..off + 8]).into_owned());
        if size < 8 {
            break;
        }
        off += size as usize;
    }
    out
}

fn decode_errors(path: &std::path::Path) -> String {
    let out = Command::new("ffmpeg").args(["-v", "error", "-i"]).arg(path).args(["-f", "null", "-"]).output().unwrap();
    assert!(
        out.status.success(),
        "ffmpeg could not decode {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// (dts, pts) in ms of the first `n` video packets.
fn video_packets(path: &std::path::Path, n: usize) -> Vec<(i64, i64)> {
    let out = ffprobe(
        path.to_str().unwrap(),
        &["-select_streams", "v:0", "-show_entries", "packet=dts_time,pts_time", "-of", "csv=p=0"],
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .take(n)
        .map(|l| {
            let mut it = l.split(',').map(|v| (v.parse::<f64>().unwrap() * 1000.0).round() as i64);
            let pts = it.next().unwrap();
            let dts = it.next().unwrap();
            (dts, pts)
        })
        .collect()
}

fn root_of(srv: &Server) -> std::path::PathBuf {
    srv.dir.path().join("recordings")
}

#[test]
fn mp4_recordings_are_exact_seekable_faststart_files_with_b_frames_kept_and_seek_in_chromium() {
    let (cb_port, callbacks) = http_receiver(200);
    let srv = Server::start(&format!(
        "[apps.live]\nrecord = [\"mp4\"]\n[record]\ncallback_urls = [\"http://127.0.0.1:{cb_port}/cb\"]\ncallback_key = \"k\"\n"
    ));
    let mut p = push_secs(&srv, "m", 20.0);
    let mut b = push_args(&media("bframes"), &srv.rtmp_url("bf"), &["-t", "6"]);
    assert!(p.wait(Duration::from_secs(40)).is_some_and(|s| s.success()), "{}", p.stderr());
    assert!(b.wait(Duration::from_secs(20)).is_some_and(|s| s.success()), "{}", b.stderr());
    assert!(wait_until(Duration::from_secs(15), || complete(&srv, "m").len() == 1 && complete(&srv, "bf").len() == 1));
    let f = &complete(&srv, "m")[0];
    assert_eq!(f["file_format"], "mp4");
    let path = root_of(&srv).join(f["path"].as_str().unwrap());
    assert_eq!(path.extension().unwrap(), "mp4");
    // 20 s pushed: within one frame (33 ms) + 50 ms.
    let d = probe_duration(&path);
    assert!((d - 20.0).abs() <= 0.034 + 0.05, "MP4 lasts {d} s of a 20 s push");
    assert!((d - f["duration"].as_f64().unwrap()).abs() < 0.05, "{d} vs {f}");
    let streams = probe_streams(path.to_str().unwrap());
    assert!(streams.iter().any(|s| s["codec_name"] == "h264" && s["width"] == 640), "{streams:?}");
    assert!(streams.iter().any(|s| s["codec_name"] == "aac"), "{streams:?}");
    assert_eq!(decode_errors(&path), "");
    // Seekable and faststart: one moov before the mdat, no fragments left.
    assert_eq!(mp4_boxes(&path), ["ftyp", "moov", "mdat"]);
    assert_eq!(f["file_size"].as_u64().unwrap(), std::fs::metadata(&path).unwrap().len());
    assert!(first_frame_is_key(&path));

    // B-frames: every packet keeps its composition offset (pts - dts) as the source had it.
    let bf = &complete(&srv, "bf")[0];
    let bpath = root_of(&srv).join(bf["path"].as_str().unwrap());
    assert_eq!(decode_errors(&bpath), "");
    let src = video_packets(&media("bframes"), 60);
    let rec = video_packets(&bpath, 60);
    assert_eq!(rec.len(), 60);
    assert!(src.iter().any(|(d, p)| p != d), "the source has B-frames");
    let offs = |v: &[(i64, i64)]| v.iter().map(|(d, p)| p - d).collect::<Vec<_>>();
    let (so, ro) = (offs(&src), offs(&rec));
    assert!(so.iter().zip(&ro).all(|(a, b)| (a - b).abs() <= 1), "composition offsets differ:\n{so:?}\n{ro:?}");
    // The first frame is shown its composition offset after the first decode, as in the source (the edit list
    // keeps it there, in step with the audio), and pts are unique: no two frames shown at once.
    let mut pts: Vec<i64> = rec.iter().map(|x| x.1).collect();
    pts.sort();
    let src_first_pts = src.iter().map(|x| x.1).min().unwrap();
    let (lead_rec, lead_src) = (pts[0] - rec[0].0, src_first_pts - src[0].0);
    assert!((lead_rec - lead_src).abs() <= 1, "first pts {lead_rec} ms after the first dts, {lead_src} in the source");
    assert!(pts.windows(2).all(|w| w[1] - w[0] >= 30), "{pts:?}");
    // As long as ffmpeg's own FLV of the same 6 s (B-frames put the last frame shown after 6 s), within a
    // frame and an audio frame.
    let same = srv.dir.path().join("bframes-6s.flv");
    let o = Command::new("ffmpeg")
        .args(["-v", "error", "-y", "-i"])
        .arg(media("bframes"))
        .args(["-t", "6", "-c", "copy"])
        .arg(&same)
        .output()
        .unwrap();
    assert!(o.status.success());
    let (bd, want) = (probe_duration(&bpath), probe_duration(&same));
    assert!((bd - want).abs() <= 0.034 + 0.024, "MP4 {bd} s, ffmpeg's FLV of the same push {want} s");

    // Callbacks say mp4.
    assert!(wait_until(Duration::from_secs(10), || callbacks.lock().unwrap().len() >= 2));
    assert!(callbacks.lock().unwrap().iter().all(|c| c["file_format"] == "mp4" && c["file_size"].as_u64() > Some(0)));

    // Chromium seeks in it through range requests.
    let url = f["video_url"].as_str().unwrap();
    let shot = srv.dir.path().join("seek.png");
    let r = browser_check("mp4_seek.mjs", &[url, shot.to_str().unwrap(), "15"]);
    eprintln!("MP4 {d} s (B-frame file {bd} s); Chromium seek: {r}");
    assert_eq!(r["ok"], true, "{r}");
    assert!((r["seekedTo"].as_f64().unwrap() - 15.0).abs() < 0.5, "{r}");
    assert!(r["rangeRequests"].as_u64().unwrap() >= 1, "{r}");
    assert!(r["frameMediaTime"].as_f64().unwrap() >= 14.5, "a frame from after the seek rendered: {r}");
}

/// Sends the tags of a test media file over RTMP at their pace, `ts_offset` ms later, up to `until_ms`.
fn send_media(p: &mut RtmpClient, kind: &str, ts_offset: u32, until_ms: u32, start: std::time::Instant) {
    use livegate::media::flv::FlvParser;
    let mut parser = FlvParser::new();
    parser.feed(&std::fs::read(media(kind)).unwrap());
    while let Ok(Some(t)) = parser.next_tag() {
        if t.tag_type == 18 || t.timestamp >= until_ms {
            continue;
        }
        let ts = t.timestamp + ts_offset;
        pace(start, ts as u64);
        let csid = if t.tag_type == 9 { 6 } else { 4 };
        p.send_raw_message(csid, t.tag_type, 1, ts, &t.body);
    }
}

#[test]
fn a_codec_or_resolution_change_starts_a_new_mp4_while_flv_goes_on() {
    let srv = Server::start("[apps.live]\nrecord = [\"flv\", \"mp4\"]\n[hub]\nreconnect_grace_secs = 0.5\n");
    let mut p = RtmpClient::connect(srv.rtmp_port, false).unwrap();
    p.connect_app("live");
    assert_eq!(statuses(&p.publish("cc"))[0].0, "NetStream.Publish.Start");
    let start = std::time::Instant::now();
    // 640x360 stereo for 3 s, then the same session switches to 320x240 mono (new SPS and AudioSpecificConfig).
    send_media(&mut p, "360p", 0, 3000, start);
    send_media(&mut p, "short", 3000, 3000, start);
    drop(p);
    assert!(wait_until(Duration::from_secs(15), || complete(&srv, "cc").len() == 3), "{:?}", complete(&srv, "cc"));
    let files = complete(&srv, "cc");
    let flv: Vec<_> = files.iter().filter(|f| f["file_format"] == "flv").collect();
    let mut mp4: Vec<_> = files.iter().filter(|f| f["file_format"] == "mp4").collect();
    assert_eq!((flv.len(), mp4.len()), (1, 2), "{files:?}");
    mp4.sort_by_key(|f| f["path"].as_str().unwrap().to_owned());
    let widths: Vec<_> = mp4
        .iter()
        .map(|f| {
            let path = root_of(&srv).join(f["path"].as_str().unwrap());
            assert_eq!(decode_errors(&path), "", "{}", path.display());
            let d = probe_duration(&path);
            assert!((d - 3.0).abs() < 0.15, "{} lasts {d}", path.display());
            let s = probe_streams(path.to_str().unwrap());
            assert!(s.iter().any(|s| s["codec_name"] == "aac"), "{s:?}");
            s.iter().find(|s| s["codec_name"] == "h264").unwrap()["width"].as_u64().unwrap()
        })
        .collect();
    let mut sorted = widths.clone();
    sorted.sort();
    assert_eq!(sorted, [320, 640], "one MP4 per resolution");
    let fd = probe_duration(&root_of(&srv).join(flv[0]["path"].as_str().unwrap()));
    assert!((fd - 6.0).abs() < 0.2, "the FLV spans both: {fd}");
}

#[test]
fn kill_minus_nine_leaves_a_playable_fragmented_mp4_finalized_at_restart() {
    let cb_port = free_port();
    let dir = tempdir::TempDir::new("mp4crash");
    let root = dir.path().join("rec");
    let cfg = format!(
        "[apps.live]\nrecord = [\"mp4\"]\n[record]\nroot = \"{}\"\ncallback_urls = [\"http://127.0.0.1:{cb_port}/cb\"]\ncallback_key = \"ck\"\ncallback_interval_secs = 1.0\n",
        root.display()
    );
    let mut srv = Server::start(&cfg);
    let _p = push_secs(&srv, "mc", 30.0);
    srv.wait_live("mc");
    srv.wait_media("mc", 5.5);
    // The stream's media time when it is killed: the recording started with the stream, at 0.
    let media = srv.media_ms("mc").unwrap() as f64 / 1000.0;
    unsafe {
        libc::kill(srv.child.id() as i32, libc::SIGKILL);
    }
    let _ = srv.child.wait();
    let files: Vec<_> = walk(&root).into_iter().filter(|p| p.extension().is_some_and(|e| e == "mp4")).collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let path = files[0].clone();
    let boxes = mp4_boxes(&path);
    assert!(boxes.contains(&"moof".to_string()), "fragmented while recording: {boxes:?}");
    // Plays up to at most 1 s before the kill.
    let d = probe_duration(&path);
    assert!(d >= media - 1.0, "{d} s on disk, {media} s of media in the stream when it was killed");
    assert_eq!(decode_errors(&path), "");

    // Restart: finalized into a flat MP4 and called back once the receiver is up.
    let got = http_receiver_on(cb_port, 200);
    let srv = Server::start(&cfg);
    assert!(wait_until(Duration::from_secs(10), || complete(&srv, "mc").len() == 1));
    let info = complete(&srv, "mc")[0].clone();
    assert_eq!(mp4_boxes(&path), ["ftyp", "moov", "mdat"]);
    let fd = probe_duration(&path);
    assert!((fd - d).abs() < 0.1, "finalized {fd} s vs {d} s fragmented");
    assert!((info["duration"].as_f64().unwrap() - fd).abs() < 0.05, "{info}");
    assert_eq!(info["file_size"].as_u64().unwrap(), std::fs::metadata(&path).unwrap().len());
    assert_eq!(decode_errors(&path), "");
    assert!(wait_until(Duration::from_secs(10), || !got.lock().unwrap().is_empty()), "callback never delivered");
    let cb = got.lock().unwrap()[0].clone();
    assert_eq!(cb["file_format"], "mp4");
    assert_eq!(cb["file_id"], info["file_id"]);
    assert_eq!(cb["sign"], livegate::auth::sign("ck", "", &cb["t"].as_u64().unwrap().to_string()));
    drop(srv);
}

#[test]
fn stitch_joins_mp4_fragments_into_one_file_as_a_job() {
    let (cb_port, callbacks) = http_receiver(200);
    let srv = Server::start(
        "[apps.live]\nrecord = [\"mp4\", \"flv\"]\n[record]\nfragment_secs = 60\nfragment_unit_ms = 100\n",
    );
    let post = |body: &str| {
        let r = http_request_body(srv.http_port, "POST", "/api/v1/recordings/stitch", body);
        (r.status, r.json())
    };
    let (s, j) = post(r#"{"app":"live","stream":"nobody","from":0,"to":10}"#);
    assert_eq!(s, 404, "{j}");
    assert!(j["error"].is_string() && j["detail"].is_string(), "{j}");
    let mut p = push_secs(&srv, "st", 14.0);
    assert!(p.wait(Duration::from_secs(30)).is_some_and(|s| s.success()), "{}", p.stderr());
    assert!(wait_until(Duration::from_secs(15), || complete(&srv, "st").len() == 6), "{:?}", complete(&srv, "st"));
    let parts: Vec<_> = complete(&srv, "st").into_iter().filter(|f| f["file_format"] == "mp4").collect();
    assert_eq!(parts.len(), 3);
    let sum: f64 = parts.iter().map(|f| probe_duration(&root_of(&srv).join(f["path"].as_str().unwrap()))).sum();
    assert!((sum - 14.0).abs() < 0.1, "{sum}");

    // Bad input names the field.
    for (body, field) in [
        (r#"{"app":"live","stream":"st","from":20,"to":10}"#, "from"),
        (r#"{"app":"live","stream":"st","from":"x","to":10}"#, "from"),
        (r#"{"app":"live","stream":"st","from":0}"#, "to"),
        (r#"{"app":"live","stream":"../x","from":0,"to":1}"#, "stream"),
        (r#"{"app":"live","stream":"st","from":0,"to":1,"callback":"ftp://x"}"#, "callback"),
        (r#"{"app":"live","stream":"st","from":0,"to":1,"extra":1}"#, "extra"),
    ] {
        let (s, j) = post(body);
        assert_eq!(s, 400, "{body}: {j}");
        assert!(j["detail"].as_str().unwrap().contains(field), "{body}: {j}");
    }
    let (s, j) = post(r#"{"app":"live","stream":"st","from":1,"to":2}"#);
    assert_eq!(s, 404, "no files in that range: {j}");
    assert_eq!(srv.api("GET", "/api/v1/recordings/stitch/nope").status, 404);

    let (s, job) = post(&format!(
        r#"{{"app":"live","stream":"st","from":0,"to":4102444800,"callback":"http://127.0.0.1:{cb_port}/stitched"}}"#
    ));
    assert_eq!(s, 202, "{job}");
    assert_eq!(job["inputs"].as_array().unwrap().len(), 3, "{job}");
    let id = job["job_id"].as_str().unwrap().to_owned();
    let mut done = serde_json::Value::Null;
    assert!(wait_until(Duration::from_secs(20), || {
        done = srv.api("GET", &format!("/api/v1/recordings/stitch/{id}")).json();
        done["status"] != "running"
    }));
    assert_eq!(done["status"], "complete", "{done}");
    let out = &done["output"];
    let path = root_of(&srv).join(out["path"].as_str().unwrap());
    let d = probe_duration(&path);
    assert!((d - sum).abs() < 0.1, "stitched {d} s, fragments sum to {sum} s");
    assert_eq!(mp4_boxes(&path), ["ftyp", "moov", "mdat"]);
    assert_eq!(decode_errors(&path), "");
    let streams = probe_streams(path.to_str().unwrap());
    assert!(streams.iter().any(|s| s["codec_name"] == "h264") && streams.iter().any(|s| s["codec_name"] == "aac"));
    // Listed like any recording, and called back.
    assert!(complete(&srv, "st").iter().any(|f| f["file_id"] == out["file_id"]));
    assert!(wait_until(Duration::from_secs(10), || !callbacks.lock().unwrap().is_empty()));
    let cb = callbacks.lock().unwrap()[0].clone();
    assert_eq!((cb["file_format"].as_str(), cb["file_id"].clone()), (Some("mp4"), out["file_id"].clone()));
    assert_eq!(cb["record_id"], id);

    // Without MP4 files in the range, the FLV fragments of the same pushes are joined.
    for f in &parts {
        assert_eq!(
            srv.api("DELETE", &format!("/api/v1/recordings/files/{}", f["file_id"].as_str().unwrap())).status,
            200
        );
    }
    let (s, job) = post(r#"{"app":"live","stream":"st","from":0,"to":4102444800}"#);
    assert_eq!(s, 202, "{job}");
    let inputs = job["inputs"].as_array().unwrap();
    assert!(inputs.len() == 3 && inputs.iter().all(|p| p.as_str().unwrap().ends_with(".flv")), "{job}");
    let id = job["job_id"].as_str().unwrap().to_owned();
    assert!(wait_until(Duration::from_secs(20), || {
        done = srv.api("GET", &format!("/api/v1/recordings/stitch/{id}")).json();
        done["status"] != "running"
    }));
    assert_eq!(done["status"], "complete", "{done}");
    let path = root_of(&srv).join(done["output"]["path"].as_str().unwrap());
    let flv_sum: f64 = inputs.iter().map(|p| probe_duration(&root_of(&srv).join(p.as_str().unwrap()))).sum();
    let d = probe_duration(&path);
    assert!((d - flv_sum).abs() < 0.1, "stitched FLV {d} s vs {flv_sum} s");
    assert_eq!(decode_errors(&path), "");
    assert_eq!(mp4_boxes(&path), ["ftyp", "moov", "mdat"]);
}

/// A small tmpfs mounted for the life of the value (needs root; the test says so if it cannot mount).
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(at: &std::path::Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(at).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "this test needs a real full disk: mounting a {size} tmpfs (as root) failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs(at.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_stops_only_that_recording_and_never_damages_finished_files() {
    // A real ENOSPC: the stream "full" records into a 700 KiB tmpfs mounted where its files go, while the
    // stream "ok" records beside it on the ordinary disk.
    let (cb_port, callbacks) = http_receiver(200);
    let mut srv = Server::start(&format!(
        "[apps.live]\nrecord = [\"mp4\", \"flv\"]\n[hub]\nreconnect_grace_secs = 0.5\n[record]\ncallback_urls = [\"http://127.0.0.1:{cb_port}/cb\"]\n"
    ));
    let _fs = Tmpfs::mount(&root_of(&srv).join("live/full"), "700k");
    // First a short push that fits: its MP4 and FLV are complete before the disk fills.
    let mut p = push_secs(&srv, "full", 2.5);
    assert!(p.wait(Duration::from_secs(20)).is_some_and(|s| s.success()));
    assert!(wait_until(Duration::from_secs(10), || complete(&srv, "full").len() == 2), "{:?}", complete(&srv, "full"));
    let done: Vec<(std::path::PathBuf, Vec<u8>)> = complete(&srv, "full")
        .iter()
        .map(|f| {
            let path = root_of(&srv).join(f["path"].as_str().unwrap());
            let bytes = std::fs::read(&path).unwrap();
            (path, bytes)
        })
        .collect();

    let mut ok = push_secs(&srv, "ok", 12.0);
    let mut big = push_secs(&srv, "full", 12.0);
    srv.wait_live("full");
    let failed = || {
        let j = srv.api("GET", "/api/v1/recordings?stream=full").json();
        j["recordings"].as_array().unwrap().iter().filter(|r| r["status"] == "failed").cloned().collect::<Vec<_>>()
    };
    assert!(wait_until(Duration::from_secs(15), || !failed().is_empty()), "the recording never hit the full disk");
    let f = failed()[0].clone();
    assert!(f["error"].as_str().unwrap().contains("No space left"), "{f}");
    // The recording stopped; the stream is still live and HTTP-FLV readers still get media.
    assert!(wait_until(Duration::from_secs(5), || srv.api("GET", "/api/v1/recordings").json()["running"]
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["stream"] != "full")));
    assert_eq!(srv.stream_json("full").unwrap()["state"], "live");
    let mut c = FlvClient::connect(srv.http_port, "/live/full.flv", None);
    assert!(c.read_for(Duration::from_secs(2)).iter().filter(|(_, t)| is_video_frame(t)).count() > 20);
    assert!(srv.log_text().contains("recording failed"));
    // The other recording goes on to a complete file, and the finished files are untouched.
    assert!(ok.wait(Duration::from_secs(30)).is_some_and(|s| s.success()));
    let _ = big.wait(Duration::from_secs(30));
    assert!(wait_until(Duration::from_secs(10), || complete(&srv, "ok").len() == 2), "{:?}", complete(&srv, "ok"));
    for f in complete(&srv, "ok") {
        let d = probe_duration(&root_of(&srv).join(f["path"].as_str().unwrap()));
        assert!((d - 12.0).abs() < 0.1, "{f}: {d}");
    }
    for (path, bytes) in &done {
        assert_eq!(&std::fs::read(path).unwrap(), bytes, "{} changed", path.display());
        assert_eq!(decode_errors(path), "");
    }
    // The failure was called back.
    assert!(wait_until(Duration::from_secs(10), || callbacks
        .lock()
        .unwrap()
        .iter()
        .any(|c| c["status"] == "failed" && c["stream_id"] == "full")));
    assert!(srv.is_running(), "livegate survived the full disk");
}

#[test]
fn audio_only_and_video_only_pushes_make_single_track_mp4s() {
    let srv = Server::start("[apps.live]\nrecord = [\"mp4\"]\n[hub]\nreconnect_grace_secs = 0.5\n");
    let one =
        |name: &str, drop_flag: &str| push_one_track(&media("360p"), &srv.rtmp_url(name), drop_flag, &["-t", "4"]);
    let mut a = one("ao", "-vn");
    let mut v = one("vo", "-an");
    assert!(a.wait(Duration::from_secs(20)).is_some_and(|s| s.success()), "{}", a.stderr());
    assert!(v.wait(Duration::from_secs(20)).is_some_and(|s| s.success()), "{}", v.stderr());
    for (name, codec) in [("ao", "aac"), ("vo", "h264")] {
        assert!(
            wait_until(Duration::from_secs(10), || complete(&srv, name).len() == 1),
            "{name}: {:?}",
            complete(&srv, name)
        );
        let f = &complete(&srv, name)[0];
        let path = root_of(&srv).join(f["path"].as_str().unwrap());
        let streams = probe_streams(path.to_str().unwrap());
        let codecs: Vec<&str> = streams.iter().map(|s| s["codec_name"].as_str().unwrap()).collect();
        assert_eq!(codecs, [codec], "{name}");
        let d = probe_duration(&path);
        assert!((d - 4.0).abs() < 0.1, "{name}: {d}");
        assert_eq!(decode_errors(&path), "");
        assert_eq!(mp4_boxes(&path), ["ftyp", "moov", "mdat"]);
    }
}

/// The start time (seconds) of the first stream of a file or playlist, as ffprobe reads it.
fn first_start_time(path: &std::path::Path) -> f64 {
    let out = ffprobe(path.to_str().unwrap(), &["-show_entries", "stream=start_time", "-of", "csv=p=0"]);
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines().filter_map(|l| l.trim_end_matches(',').parse::<f64>().ok()).fold(f64::MAX, f64::min)
}

#[test]
fn recordings_started_through_the_api_begin_at_the_request_and_report_their_media_times() {
    let (cb_port, callbacks) = http_receiver(200);
    let srv = Server::start(&format!(
        "[hub]\nreconnect_grace_secs = 8.0\n[record]\ncallback_urls = [\"http://127.0.0.1:{cb_port}/cb\"]\n"
    ));
    let mut p1 = push_secs(&srv, "od", 60.0);
    srv.wait_live("od");
    // 8 s of media in the cache (GOP 2 s) before the requests.
    let at = srv.wait_media("od", 8.0);
    let post = |body: &str| {
        let r = http_request_body(srv.http_port, "POST", "/api/v1/recordings", body);
        assert_eq!(r.status, 201, "{}", r.json());
    };
    let requested_wall = livegate::auth::unix_now();
    post(r#"{"app":"live","stream":"od","formats":["flv","hls"],"record_id":"now"}"#);
    post(r#"{"app":"live","stream":"od","formats":["flv"],"record_id":"pre","pre_roll_secs":4}"#);
    let r = http_request_body(
        srv.http_port,
        "POST",
        "/api/v1/recordings",
        r#"{"app":"live","stream":"od","record_id":"x","pre_roll_secs":99}"#,
    );
    assert_eq!((r.status, r.json()["error"].as_str()), (400, Some("invalid_field")), "{}", r.json());
    srv.wait_media_at("od", at + 5000);
    for id in ["now", "pre"] {
        assert_eq!(srv.api("DELETE", &format!("/api/v1/recordings/{id}")).status, 200);
    }
    assert!(wait_until(Duration::from_secs(15), || complete(&srv, "od").len() == 3), "{:?}", complete(&srv, "od"));
    let files = complete(&srv, "od");
    let file = |id: &str, fmt: &str| {
        files.iter().find(|f| f["record_id"] == id && f["file_format"] == fmt).cloned().expect("recorded")
    };
    let path = |f: &serde_json::Value| root_of(&srv).join(f["path"].as_str().unwrap());
    // From the keyframe at or before the request (at most one GOP earlier), not from the cache's start.
    let now = file("now", "flv");
    let d = probe_duration(&path(&now));
    assert!((5.0..=7.6).contains(&d), "{d} s recorded for a 5 s request (cache held 8 s)");
    assert!(first_frame_is_key(&path(&now)));
    // pre_roll_secs asks for more: the keyframe at or before 4 s before the request.
    let pre = file("pre", "flv");
    let dp = probe_duration(&path(&pre));
    assert!(dp >= d + 3.5 && dp <= d + 6.1, "{dp} s with a 4 s pre-roll, {d} s without");
    // Times are those of the first and last media: the pre-roll began earlier, both end together.
    let (s_now, s_pre) = (now["start_time"].as_u64().unwrap(), pre["start_time"].as_u64().unwrap());
    assert!(s_pre + 3 <= s_now, "pre-roll start {s_pre}, request start {s_now}");
    assert!(s_now <= requested_wall && s_now + 3 >= requested_wall, "start {s_now}, requested at {requested_wall}");
    for f in [&now, &pre] {
        let (s, e) = (f["start_time"].as_u64().unwrap(), f["end_time"].as_u64().unwrap());
        let dur = f["duration"].as_f64().unwrap();
        assert!((e as f64 - s as f64 - dur).abs() <= 2.0, "{f}");
    }
    assert!(wait_until(Duration::from_secs(10), || callbacks.lock().unwrap().len() >= 3));
    let cb = callbacks.lock().unwrap().iter().find(|c| c["record_id"] == "now" && c["file_format"] == "flv").cloned();
    assert_eq!(cb.unwrap()["start_time"].as_u64(), Some(s_now));
    // The HLS recording starts at timestamp 0 (1.4 s: the MPEG-TS offset every segment carries), not at the
    // live stream's 8 s.
    let hls = file("now", "hls");
    let st = first_start_time(&path(&hls));
    assert!(st < 1.4 + 0.3, "HLS recording starts at {st} s");

    // Started during a reconnect grace: nothing of the previous push's cache, only the next push.
    p1.kill();
    srv.wait_unpublished("od");
    post(r#"{"app":"live","stream":"od","formats":["flv"],"record_id":"grace"}"#);
    let _p2 = push_secs(&srv, "od", 60.0);
    srv.wait_media("od", 4.0);
    assert_eq!(srv.api("DELETE", "/api/v1/recordings/grace").status, 200);
    assert!(wait_until(Duration::from_secs(15), || complete(&srv, "od").len() == 4));
    let g = complete(&srv, "od").into_iter().find(|f| f["record_id"] == "grace").unwrap();
    let dg = probe_duration(&path(&g));
    assert!(dg < 7.0, "{dg} s: the recording holds the previous push's cache");
}

/// The median of some offsets (s).
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[test]
fn b_frame_mp4_recordings_keep_lip_sync_in_ffmpeg_and_gstreamer() {
    let srv = Server::start("");
    // A white flash at every second with a beep from the same instant, x264 with two B-frames.
    let sync = srv.dir.path().join("sync-bf.flv");
    let o = Command::new("ffmpeg")
        .args(["-v", "error", "-y", "-f", "lavfi", "-i"])
        .arg("color=c=black:s=320x180:r=30,drawbox=x=0:y=0:w=320:h=180:color=white:t=fill:enable='lt(mod(t\\,1)\\,0.03)'")
        .args(["-f", "lavfi", "-i", "sine=frequency=1000:sample_rate=48000,volume=4,volume=enable='gte(mod(t\\,1)\\,0.1)':volume=0"])
        .args(["-t", "30", "-c:v", "libx264", "-preset", "veryfast", "-bf", "2", "-g", "30", "-pix_fmt", "yuv420p"])
        .args(["-c:a", "aac", "-b:a", "128k", "-f", "flv"])
        .arg(&sync)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let _p = push(&sync, &srv.rtmp_url("bf"));
    srv.wait_live("bf");
    let at = srv.wait_media("bf", 1.0);
    let r = http_request_body(
        srv.http_port,
        "POST",
        "/api/v1/recordings",
        r#"{"app":"live","stream":"bf","formats":["flv","mp4"],"record_id":"bf"}"#,
    );
    assert_eq!(r.status, 201);
    srv.wait_media_at("bf", at + 8000);
    let files = finish_recording(&srv, "bf", "bf", 2);
    let path = |fmt: &str| files.iter().find(|f| f.0 == fmt).map(|f| f.1.clone()).expect("recorded");
    let (flv, mp4) = (path("flv"), path("mp4"));
    // GStreamer's reading of the MP4 (qtdemux applies the edit lists), kept in a Matroska file, which has none.
    let gst = srv.dir.path().join("qtdemux.mkv");
    let o = Command::new("gst-launch-1.0")
        .args(["-q", "filesrc"])
        .arg(format!("location={}", mp4.display()))
        .args(["!", "qtdemux", "name=d", "matroskamux", "name=m", "!", "filesink"])
        .arg(format!("location={}", gst.display()))
        .args(["d.video_0", "!", "queue", "!", "h264parse", "!", "m.", "d.audio_0", "!", "queue", "!", "aacparse"])
        .args(["!", "m."])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let reference = av_offsets(&flv);
    assert!(reference.len() >= 6, "flash/beep pairs in the FLV recording: {reference:?}");
    let truth = median(reference.clone());
    for (reader, file) in [("ffmpeg", &mp4), ("GStreamer qtdemux", &gst)] {
        let offsets = av_offsets(file);
        assert!(offsets.len() >= 6, "{reader}: {offsets:?}");
        let got = median(offsets.clone());
        // One AAC frame at 48 kHz is 21.3 ms.
        assert!(
            (got - truth).abs() <= 0.0213,
            "{reader} hears the beep {:.0} ms after the flash in the MP4, {:.0} ms in the FLV ({offsets:?} vs {reference:?})",
            got * 1000.0,
            truth * 1000.0
        );
    }
}

/// The end of a file's last audio packet, from its packet times (a raw `.aac` or `.mp3` has no container
/// duration: ffprobe's would be an estimate from the bitrate).
fn audio_secs(path: &std::path::Path) -> f64 {
    let out = ffprobe(
        path.to_str().unwrap(),
        &["-select_streams", "a:0", "-show_entries", "packet=pts_time,duration_time", "-of", "csv=p=0"],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let last = text.lines().rfind(|l| !l.trim().is_empty()).expect("audio packets");
    let mut parts = last.split(',').map(|v| v.trim().parse::<f64>().unwrap_or(0.0));
    parts.next().unwrap_or(0.0) + parts.next().unwrap_or(0.0)
}

/// An audio-only push (`<live-pusher>` pure audio) in MP3 and one in AAC, each recorded on publish to every
/// format: the audio-only formats (`m4a`, `aac` ADTS, `mp3`) and MP4/FLV. A format that needs the other codec
/// reads the stream's shared rendition (MP3→AAC, AAC→MP3), transcoded from the push's start: every file holds
/// the whole push, in the codec its format names, and says its format in the callback.
#[test]
fn audio_pushes_record_to_m4a_aac_and_mp3_whichever_codec_they_came_in() {
    let (cb_port, callbacks) = http_receiver(200);
    let srv = Server::start(&format!(
        "[apps.live]\nrecord = [\"flv\", \"mp4\", \"m4a\", \"aac\", \"mp3\"]\n[hub]\nreconnect_grace_secs = 0.0\n\
         [record]\ncallback_urls = [\"http://127.0.0.1:{cb_port}/cb\"]\n"
    ));
    let root = srv.dir.path().join("recordings");
    for (name, codec) in [("pure-mp3", "libmp3lame"), ("pure-aac", "aac")] {
        let mut p = Proc::spawn(
            Command::new("ffmpeg")
                .args(["-hide_banner", "-loglevel", "warning", "-re", "-f", "lavfi", "-i"])
                .arg("sine=frequency=440:sample_rate=44100:duration=6")
                .args(["-c:a", codec, "-b:a", "96k", "-ac", "2", "-f", "flv"])
                .arg(srv.rtmp_url(name)),
        );
        assert!(p.wait(Duration::from_secs(40)).is_some_and(|s| s.success()), "{}", p.stderr());
        assert!(
            wait_until(Duration::from_secs(30), || complete(&srv, name).len() == 5),
            "{name}: {:?}",
            complete(&srv, name)
        );
        let source = if codec == "aac" { "aac" } else { "mp3" };
        for rec in complete(&srv, name) {
            let format = rec["file_format"].as_str().unwrap().to_owned();
            let path = root.join(rec["path"].as_str().unwrap());
            assert!(path.to_str().unwrap().ends_with(&format!(".{format}")), "{}", path.display());
            let want = match format.as_str() {
                "mp4" | "m4a" | "aac" => "aac",
                "mp3" => "mp3",
                _ => source, // FLV keeps the push's audio
            };
            let streams = probe_streams(path.to_str().unwrap());
            let codecs: Vec<&str> = streams.iter().filter_map(|s| s["codec_name"].as_str()).collect();
            assert_eq!(codecs, [want], "{name} {format}: {streams:?}");
            // The whole 6 s push, from its first frame (the rendition transcodes from the push's start), give or
            // take an encoder's priming and a frame.
            let d = audio_secs(&path);
            assert!((d - 6.0).abs() < 0.2, "{name} {format}: {d} s");
            assert!((rec["duration"].as_f64().unwrap() - d).abs() < 0.2, "{name} {format}: {rec} vs {d}");
            let errors = decode_errors(&path);
            assert!(errors.is_empty(), "{name} {format}: {errors}");
        }
    }
    // Callbacks name each file's format as Tencent's do.
    assert!(
        wait_until(Duration::from_secs(10), || callbacks.lock().unwrap().len() >= 10),
        "{:?}",
        callbacks.lock().unwrap()
    );
    let mut formats: Vec<String> =
        callbacks.lock().unwrap().iter().filter_map(|c| c["file_format"].as_str().map(String::from)).collect();
    formats.sort();
    assert_eq!(formats, ["aac", "aac", "flv", "flv", "m4a", "m4a", "mp3", "mp3", "mp4", "mp4"]);
}

/// A format that cannot be given the stream's audio is refused up front with the reason: G.711 has no
/// rendition to AAC or MP3 here.
#[test]
fn an_audio_format_the_stream_cannot_feed_is_refused_with_the_reason() {
    let srv = Server::start("");
    let _p = Proc::spawn(
        Command::new("ffmpeg")
            .args([
                "-hide_banner",
                "-loglevel",
                "warning",
                "-re",
                "-f",
                "lavfi",
                "-i",
                "sine=frequency=440:sample_rate=8000",
            ])
            .args(["-c:a", "pcm_alaw", "-ar", "8000", "-ac", "1", "-f", "flv"])
            .arg(srv.rtmp_url("alaw")),
    );
    assert!(wait_until(Duration::from_secs(15), || srv.stream_json("alaw").is_some_and(|j| !j["audio"].is_null())));
    for format in ["m4a", "aac", "mp3", "mp4"] {
        let body = format!(r#"{{"app":"live","stream":"alaw","formats":["{format}"]}}"#);
        let r = http_request_body(srv.http_port, "POST", "/api/v1/recordings", &body);
        assert_eq!(r.status, 400, "{format}: {}", r.json());
        let detail = r.json()["detail"].as_str().unwrap().to_owned();
        assert!(detail.contains("PCMA") && detail.contains(format), "{detail}");
    }
    let r = http_request_body(
        srv.http_port,
        "POST",
        "/api/v1/recordings",
        r#"{"app":"live","stream":"alaw","formats":["flv"]}"#,
    );
    assert_eq!(r.status, 201, "FLV carries G.711: {}", r.json());
}
