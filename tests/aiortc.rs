//! aiortc (Python WebRTC, from PyPI) as a second, non-browser WHEP/WHIP client. Its SDP, ICE and RTCP differ
//! from Chromium's: other payload types (Opus 96, H.264 99/101), two H.264 profiles offered, and RFC 7675
//! consent checks every 4–6 s as its only STUN once connected (the clients pin that to the slowest, 6 s).
//! The scripts are in `tests/aiortc/`; `scripts/setup.sh` installs aiortc into `tests/aiortc/.venv`.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use common::*;

const WEBRTC: &str = "[webrtc]\nudp_port_min = 0\nudp_port_max = 0\n";

/// One aiortc test at a time: each one encodes or decodes real-time video on a 2-core machine.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// `tests/aiortc/.venv/bin/python <script> args…`, ready to run.
fn aiortc(script: &str, args: &[&str]) -> Command {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/aiortc");
    let python = dir.join(".venv/bin/python");
    assert!(python.exists(), "{} is missing: run scripts/setup.sh (it installs aiortc)", python.display());
    let mut c = Command::new("timeout");
    c.arg("90").arg(python).arg(dir.join(script)).args(args);
    c
}

/// The last JSON line a script printed.
fn last_json(stdout: &str) -> serde_json::Value {
    let line = stdout.lines().rev().find(|l| l.starts_with('{')).unwrap_or_else(|| panic!("no JSON in {stdout:?}"));
    serde_json::from_str(line).unwrap()
}

/// Plays `live/{stream}` of `srv` with `whep_play.py` (`args` after the URL); its JSON once it succeeded.
fn play_whep(srv: &Server, stream: &str, args: &[&str]) -> serde_json::Value {
    let url = format!("http://127.0.0.1:{}/whep/live/{stream}", srv.http_port);
    let out = aiortc("whep_play.py", &[&[url.as_str()], args].concat()).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "whep_play.py failed: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    last_json(&stdout)
}

#[test]
fn aiortc_plays_an_rtmp_stream_over_whep_and_decodes_video_and_audio() {
    let _g = serial();
    let srv = Server::start(WEBRTC);
    let _pub = push(&media("360p"), &srv.rtmp_url("aw"));
    srv.wait_live("aw");
    // 8 s of decoding: longer than the 6 s between two of the client's consent checks.
    let j = play_whep(&srv, "aw", &["8"]);
    assert_eq!(j["status"], 201, "{j}");
    assert_eq!(j["offerCandidates"][0], "127.0.0.1", "the offer carries a loopback host candidate: {j}");
    assert_eq!(j["videoCodec"], "H264", "{j}");
    assert_eq!((j["width"].as_u64(), j["height"].as_u64()), (Some(640), Some(360)), "{j}");
    // Decoded frames keep rising at about the source's 30 fps.
    assert!(j["fps"].as_f64().unwrap() >= 20.0, "{j}");
    // The publisher's AAC arrives as Opus (the shared transcoder), decodes, and is a tone, not silence.
    assert!(j["audioFrames"].as_u64().unwrap() > 200, "{j}");
    assert!(j["audioRms"].as_f64().unwrap() > 0.01, "audio is silent: {j}");
    // The source is stereo: so is every Opus packet, each 20 ms (transcode.opus_frame_ms, default).
    assert_eq!(j["opusMonoPackets"], 0, "{j}");
    assert!(j["opusStereoPackets"].as_u64().unwrap() > 200, "{j}");
    assert_eq!(j["opusPacketMs"], serde_json::json!([20]), "{j}");
    // Still connected after the window (ICE liveness from consent checks alone), and DELETE ends it.
    assert_eq!(j["connection"], "connected", "{j}");
    assert!(j["location"].as_str().unwrap().contains("/whep/session/"), "{j}");
    assert_eq!(j["deleteStatus"], 200, "{j}");
    let log = srv.log_text();
    assert!(log.contains("whep session deleted by the client"), "{log}");
    // Neither session kind dropped it for missed checks.
    assert!(!log.contains("reason=peer connection Disconnected") && !log.contains("consent checks stopped"), "{log}");
}

/// A mono push reaches WHEP viewers as mono Opus (the encoder's work for one channel, not two), in the packet
/// duration the config asks for.
#[test]
fn a_mono_push_reaches_whep_viewers_as_mono_opus_in_the_configured_packets() {
    let _g = serial();
    let srv = Server::start(&format!("{WEBRTC}\n[transcode]\nopus_frame_ms = 40\n"));
    let _pub = push(&media("mono"), &srv.rtmp_url("mono"));
    srv.wait_live("mono");
    let j = play_whep(&srv, "mono", &["4"]);
    assert!(j["audioRms"].as_f64().unwrap() > 0.01, "audio is silent: {j}");
    assert_eq!(j["opusStereoPackets"], 0, "{j}");
    assert!(j["opusMonoPackets"].as_u64().unwrap() > 50, "{j}");
    assert_eq!(j["opusPacketMs"], serde_json::json!([40]), "{j}");
}

/// A publisher whose audio turns from mono to stereo in one session (a new AudioSpecificConfig, as a pusher
/// whose settings change sends) reaches its WHEP viewers in stereo from then on: the Opus encoder's channels
/// follow the source's, not the first configuration's.
#[test]
fn a_push_that_turns_stereo_mid_session_reaches_whep_viewers_in_stereo() {
    use livegate::media::flv::FlvParser;
    use std::sync::atomic::{AtomicBool, Ordering};
    let _g = serial();
    let srv = Server::start(WEBRTC);
    let mut p = RtmpClient::connect(srv.rtmp_port, false).unwrap();
    p.connect_app("live");
    assert_eq!(statuses(&p.publish("turn"))[0].0, "NetStream.Publish.Start");
    let viewer_hears = std::sync::Arc::new(AtomicBool::new(false));
    let heard = viewer_hears.clone();
    let publisher = std::thread::spawn(move || {
        let start = std::time::Instant::now();
        let tags = |kind: &str| {
            let mut parser = FlvParser::new();
            parser.feed(&std::fs::read(media(kind)).unwrap());
            std::iter::from_fn(move || parser.next_tag().ok().flatten()).filter(|t| t.tag_type != 18)
        };
        // Mono until the viewer has had a second of it, then the stereo medium on the same timeline.
        let (mut last, mut switch_at) = (0, None);
        for t in tags("mono") {
            if switch_at.is_none() && heard.load(Ordering::Acquire) {
                switch_at = Some(t.timestamp + 1000);
            }
            if switch_at.is_some_and(|s| t.timestamp >= s) {
                break;
            }
            pace(start, u64::from(t.timestamp));
            p.send_raw_message(if t.tag_type == 9 { 6 } else { 4 }, t.tag_type, 1, t.timestamp, &t.body);
            last = t.timestamp;
        }
        assert!(switch_at.is_some(), "the viewer heard nothing of 20 s of mono");
        for t in tags("360p").take_while(|t| t.timestamp < 8000) {
            let ts = last + 40 + t.timestamp;
            pace(start, u64::from(ts));
            p.send_raw_message(if t.tag_type == 9 { 6 } else { 4 }, t.tag_type, 1, ts, &t.body);
        }
    });
    srv.wait_live("turn");
    let url = format!("http://127.0.0.1:{}/whep/live/turn", srv.http_port);
    let viewer = aiortc("whep_play.py", &[&url, "6"]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    // The viewer hears the mono Opus once the rendition has sent it something.
    let sent = || srv.stream_json("turn@opus").is_some_and(|s| s["bytes_out"].as_u64().unwrap_or(0) > 0);
    assert!(wait_until(Duration::from_secs(30), sent), "no Opus reached the viewer");
    viewer_hears.store(true, Ordering::Release);
    let out = viewer.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "whep_play.py failed: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let j = last_json(&stdout);
    publisher.join().unwrap();
    assert!(j["opusMonoPackets"].as_u64().unwrap() > 10, "{j}");
    assert!(j["opusStereoPackets"].as_u64().unwrap() > 10, "the Opus stayed mono: {j}");
    assert!(srv.log_text().contains("so does its Opus"), "{}", srv.log_text());
}

/// A viewer that loses video packets gets them again. On the shared socket livegate protects and sends WHEP
/// media itself, so it answers NACKs from its own history (webrtc-rs' NACK interceptor is not on that path):
/// aiortc drops every 10th video packet on arrival, NACKs the holes, and the retransmissions fill them.
#[test]
fn a_whep_viewer_that_loses_packets_gets_them_resent() {
    let _g = serial();
    let srv = Server::start(WEBRTC);
    let _pub = push(&media("360p"), &srv.rtmp_url("nack"));
    srv.wait_live("nack");
    let j = play_whep(&srv, "nack", &["6", "loss=10"]);
    let (dropped, recovered) = (j["lossDropped"].as_u64().unwrap(), j["lossRecovered"].as_u64().unwrap());
    // 360p at 600 kbit/s is ~70 packets a second: 6 s and more drop 40 or more.
    assert!(dropped >= 40, "{j}");
    // A NACK for a packet that fell out of aiortc's own window is never sent; nearly all come back.
    assert!(recovered * 10 >= dropped * 9, "{recovered} of {dropped} dropped packets came again: {j}");
    assert!(j["fps"].as_f64().unwrap() >= 20.0, "{j}");
    assert!(srv.log_text().contains("direct=true"), "the session used livegate's own media path");
}

/// An H.265 publisher (Enhanced RTMP, as OBS 30 sends it; the tests' own client): browsers take no HEVC over
/// WebRTC, so the viewer gets the stream's shared H.264 rendition, decodes it, at the source's size.
#[test]
fn aiortc_plays_an_hevc_stream_as_h264_over_whep() {
    let _g = serial();
    let srv = Server::start(WEBRTC);
    let _pub = common::enhanced_rtmp::Paced::start(srv.rtmp_port, "hw", common::enhanced_rtmp::Form::Enhanced);
    srv.wait_live("hw");
    let j = play_whep(&srv, "hw", &["3"]);
    assert_eq!(j["status"], 201, "{j}");
    assert_eq!(j["videoCodec"], "H264", "{j}");
    assert_eq!((j["width"].as_u64(), j["height"].as_u64()), (Some(320), Some(240)), "{j}");
    assert!(j["frames"].as_u64().unwrap() >= 30, "{j}");
    assert!(srv.log_text().contains("source is H.265: WebRTC video is transcoded"));
}

/// Records `secs` of each URL to an FLV file with ffmpeg (stream copy), all at once.
fn capture_all(srv: &Server, urls: &[(&str, String)], secs: u32) -> Vec<PathBuf> {
    let children: Vec<_> = urls
        .iter()
        .map(|(name, url)| {
            let out = srv.dir.path().join(format!("{name}.flv"));
            let child = Command::new("timeout")
                .arg("40")
                .arg("ffmpeg")
                .args(["-v", "error", "-y", "-i", url, "-t", &secs.to_string(), "-map", "0", "-c", "copy"])
                .arg(&out)
                .stdin(Stdio::null())
                .spawn()
                .unwrap();
            (url, out, child)
        })
        .collect();
    children
        .into_iter()
        .map(|(url, out, mut child)| {
            assert!(child.wait().unwrap().success(), "ffmpeg could not read {url}");
            out
        })
        .collect()
}

fn probe_json(file: &Path, entries: &str) -> serde_json::Value {
    let o = ffprobe(file.to_str().unwrap(), &["-show_entries", entries, "-of", "json"]);
    serde_json::from_slice(&o.stdout).unwrap()
}

fn whip_case(codec: &str) {
    let _g = serial();
    let srv = Server::start(WEBRTC);
    let stream = format!("aiortc-{codec}");
    let url = format!("http://127.0.0.1:{}/whip/live/{stream}", srv.http_port);
    let mut client = Proc::spawn_capture(&mut aiortc("whip_publish.py", &[&url, "11", codec]));
    assert!(
        wait_until(Duration::from_secs(20), || client.stdout().contains("\"event\":\"connected\"")),
        "aiortc did not connect over WHIP: {}\n{}",
        client.stdout(),
        client.stderr()
    );
    let info = srv.wait_live(&stream);
    assert_eq!(info["publisher"]["protocol"], "whip", "{info}");
    assert!(srv.stream_json(&format!("{stream}@opus")).is_some(), "aiortc's Opus is published as a rendition");
    // HTTP-FLV and RTMP readers, at once, get H.264 + AAC that decode for 6 s, audio and video in step; SEI
    // messages injected meanwhile ride the H.264 (passed through, or made from the browser's VP8) to both.
    let sei_body = serde_json::json!({"text": "whip sei", "uuid": "0123456789abcdef0123456789abcdef"}).to_string();
    let files = std::thread::scope(|s| {
        let capture =
            s.spawn(|| capture_all(&srv, &[("flv", srv.flv_url(&stream)), ("rtmp", srv.rtmp_url(&stream))], 6));
        let mut at = srv.media_ms(&stream).unwrap_or(0);
        for _ in 0..12 {
            at = srv.wait_media_at(&stream, at + 400);
            let r = http_request_body(srv.http_port, "POST", &format!("/api/v1/streams/live/{stream}/sei"), &sei_body);
            assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
        }
        capture.join().unwrap()
    });
    for file in &files {
        let carried = flv_tags(file)
            .iter()
            .filter(|t| t.0 == 9 && t.2.len() > 5 && t.2[0] & 0x0f == 7 && t.2[1] == 1)
            .flat_map(|t| livegate::media::sei::messages_in(&t.2[5..], 4).0)
            .filter(|m| m.data.as_ref() == b"whip sei")
            .count();
        assert!(carried >= 5, "{carried} injected SEI messages in {}", file.display());
    }
    for file in &files {
        let j = probe_json(file, "stream=codec_name,width,height,start_time:format=duration");
        let streams = j["streams"].as_array().cloned().unwrap_or_default();
        let find = |c: &str| streams.iter().find(|s| s["codec_name"] == c).cloned();
        let (Some(v), Some(a)) = (find("h264"), find("aac")) else {
            panic!("no H.264 + AAC in {}: {j}", file.display())
        };
        assert_eq!((v["width"].as_u64(), v["height"].as_u64()), (Some(640), Some(360)), "{v}");
        let dec =
            Command::new("ffmpeg").args(["-v", "error", "-i"]).arg(file).args(["-f", "null", "-"]).output().unwrap();
        assert!(
            dec.status.success() && dec.stderr.is_empty(),
            "decode errors in {}: {}",
            file.display(),
            String::from_utf8_lossy(&dec.stderr)
        );
        let start = |s: &serde_json::Value| s["start_time"].as_str().unwrap().parse::<f64>().unwrap();
        let skew = (start(&v) - start(&a)).abs();
        assert!(skew <= 0.05, "A/V start times {skew:.3}s apart in {}: {j}", file.display());
        let dur: f64 = j["format"]["duration"].as_str().unwrap().parse().unwrap();
        assert!(dur >= 5.0, "{dur}s read from {}", file.display());
        let frames = ffprobe(
            file.to_str().unwrap(),
            &["-select_streams", "v", "-count_frames", "-show_entries", "stream=nb_read_frames", "-of", "csv=p=0"],
        );
        let n: u64 = String::from_utf8_lossy(&frames.stdout).trim().parse().unwrap();
        assert!(n as f64 >= dur * 20.0, "{n} video frames in {dur}s from {}", file.display());
    }
    let st = client.wait(Duration::from_secs(40));
    let j = last_json(&client.stdout());
    assert!(st.is_some_and(|s| s.success()), "whip_publish.py failed: {j}\n{}", client.stderr());
    assert_eq!(j["status"], 201, "{j}");
    assert_eq!(j["videoCodec"].as_str().unwrap().to_ascii_lowercase(), codec, "{j}");
    assert_eq!(j["connection"], "connected", "still connected after 11 s: {j}");
    assert!(j["framesSent"].as_u64().unwrap() > 250, "{j}");
    assert_eq!(j["deleteStatus"], 200, "DELETE ends the session: {j}");
    let log = srv.log_text();
    let path = if codec == "h264" { "video=Some(H264)" } else { "video=Some(Vp8)" };
    assert!(log.contains(path), "expected {path} in the log");
    assert!(log.contains("whip session deleted by the client"));
    // A/V timing came from aiortc's RTCP sender reports on both tracks.
    assert!(log.contains("first RTCP sender report: track timed by the sender's clock track=video"), "no video SR");
    assert!(log.contains("first RTCP sender report: track timed by the sender's clock track=audio"), "no audio SR");
}

#[test]
fn aiortc_publishes_h264_over_whip_and_ffmpeg_reads_flv_and_rtmp() {
    whip_case("h264");
}

#[test]
fn aiortc_publishes_vp8_over_whip_and_readers_get_h264() {
    whip_case("vp8");
}

#[test]
fn a_whip_flash_and_its_beep_reach_flv_readers_within_50_ms() {
    let _s = serial();
    let srv = Server::start("[webrtc]\nudp_port_min = 0\nudp_port_max = 0\n");
    let url = format!("http://127.0.0.1:{}/whip/live/sync", srv.http_port);
    let mut client = Proc::spawn_capture(&mut aiortc("whip_sync.py", &[&url, "16"]));
    assert!(
        wait_until(Duration::from_secs(25), || client.stdout().contains("\"event\": \"connected\"")
            || client.stdout().contains("\"event\":\"connected\"")),
        "whip_sync.py did not connect: {}\n{}",
        client.stdout(),
        client.stderr()
    );
    srv.wait_live("sync");
    // Let the sender reports settle the timing first (3 s of media), then read as a player does.
    srv.wait_media("sync", 3.0);
    let flv = capture_all(&srv, &[("sync", srv.flv_url("sync"))], 9).remove(0);
    let flashes = flash_times(&flv);
    let onsets = beep_onsets(&flv);
    let offsets: Vec<f64> = flashes
        .iter()
        .filter_map(|f| {
            onsets.iter().map(|a| a - f).filter(|d| d.abs() < 0.3).min_by(|a, b| a.abs().total_cmp(&b.abs()))
        })
        .collect();
    eprintln!("flashes {flashes:?}\nbeep onsets {onsets:?}\naudio minus video (s) {offsets:?}");
    assert!(offsets.len() >= 5, "too few flash/beep pairs: flashes {flashes:?}, onsets {onsets:?}");
    for d in &offsets {
        assert!(d.abs() <= 0.05, "a beep is {:.0} ms off its flash: {offsets:?}", d * 1000.0);
    }
    let st = client.wait(Duration::from_secs(60));
    let j = last_json(&client.stdout());
    assert!(st.is_some_and(|s| s.success()), "whip_sync.py failed: {j}\n{}", client.stderr());
}

/// A WHIP publisher on a lossy uplink (aiortc dropping every 7th RTP packet it sends, retransmissions too, for
/// 8 s): its quality sinks to poor or worse with the loss in the API, and is best or good again after.
#[test]
fn a_whip_publishers_packet_loss_sets_its_quality() {
    let _g = serial();
    let srv = Server::start(WEBRTC);
    let url = format!("http://127.0.0.1:{}/whip/live/lossy", srv.http_port);
    let mut client = Proc::spawn_capture(&mut aiortc("whip_publish.py", &[&url, "32", "h264", "loss=7:12:20"]));
    assert!(
        wait_until(Duration::from_secs(20), || client.stdout().contains("\"event\":\"connected\"")),
        "aiortc did not connect over WHIP: {}\n{}",
        client.stdout(),
        client.stderr()
    );
    srv.wait_live("lossy");
    let quality = || {
        let j = srv.stream_json("lossy").unwrap_or_default();
        (j["quality"]["level"].as_u64().unwrap_or(0), j["ingest"]["loss_percent"].as_f64())
    };
    // Before the loss: a clean uplink on loopback (best, or good for the jitter of a software encoder on a
    // busy machine).
    assert!(
        wait_until(Duration::from_secs(10), || (1..=2).contains(&quality().0)),
        "not best or good before the loss: {:?}",
        quality()
    );
    assert!(quality().1.is_some_and(|l| l < 2.0), "{:?}", quality());
    assert!(wait_until(Duration::from_secs(20), || client.stdout().contains("\"on\":true")), "{}", client.stdout());
    let mut worst = (0, None);
    assert!(
        wait_until(Duration::from_secs(12), || {
            worst = quality();
            worst.0 >= 4
        }),
        "the lossy publisher stayed at {worst:?}"
    );
    assert!(worst.1.is_some_and(|l| l >= 10.0), "{worst:?}");
    assert!(wait_until(Duration::from_secs(20), || client.stdout().contains("\"on\":false")), "{}", client.stdout());
    let mut after = (0, None);
    assert!(
        wait_until(Duration::from_secs(8), || {
            after = quality();
            (1..=2).contains(&after.0)
        }),
        "did not recover: {after:?}"
    );
    let st = client.wait(Duration::from_secs(40));
    assert!(st.is_some_and(|s| s.success()), "{}\n{}", client.stdout(), client.stderr());
    assert!(srv.log_text().contains("publisher quality"));
}
