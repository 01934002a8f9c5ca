//! SEI messages (issue #14): a message injected into a live stream (`POST /api/v1/streams/{app}/{stream}/sei`,
//! what `LivePusherContext.sendMessage` does from a pusher) reaches HTTP-FLV, RTMP and HLS readers and an MP4
//! recording byte for byte, read back with ffmpeg and from the FLV tags; and the bad requests get a reason.

mod common;

use std::process::Command;
use std::time::Duration;

use base64::Engine;
use common::*;
use livegate::media::sei::{self, SeiMessage};

const UUID: &str = "0123456789abcdef-fedcba9876543210";
const UUID_BYTES: [u8; 16] =
    [0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef, 0xfe, 0xdc, 0xba, 0x98, 0x76, 0x54, 0x32, 0x10];

/// 300 bytes (a size field of two bytes) full of start-code-like runs (emulation prevention needed).
fn payload() -> Vec<u8> {
    (0..300u32).map(|i| if i % 3 == 2 { (i % 4) as u8 } else { 0 }).collect()
}

/// SEI messages of ours in AVCC video tags (FLV tag bodies).
fn ours_in_flv_bodies<'a>(bodies: impl Iterator<Item = &'a [u8]>) -> Vec<SeiMessage> {
    bodies
        .filter(|b| b.len() > 5 && b[0] & 0x0f == 7 && b[1] == 1)
        .flat_map(|b| sei::messages_in(&b[5..], 4).0)
        .filter(|m| m.uuid == Some(UUID_BYTES))
        .collect()
}

/// SEI messages of ours in an Annex B H.264 elementary stream.
fn ours_in_annex_b(es: &[u8]) -> Vec<SeiMessage> {
    livegate::media::ts_demux::annexb_nalus(es)
        .filter(|nal| nal.first().is_some_and(|h| h & 0x1f == sei::NAL_SEI))
        .flat_map(|nal| sei::parse_nal(nal).unwrap_or_default())
        .filter(|m| m.uuid == Some(UUID_BYTES))
        .collect()
}

/// The H.264 of a file or URL as Annex B (ffmpeg stream copy).
fn annex_b(input: &str, secs: &str, out: &std::path::Path) -> Vec<u8> {
    let o = Command::new("timeout")
        .args(["40", "ffmpeg", "-v", "error", "-y", "-i", input, "-t", secs, "-map", "0:v", "-c:v", "copy"])
        .args(["-bsf:v", "h264_mp4toannexb", "-f", "h264"])
        .arg(out)
        .output()
        .unwrap();
    assert!(o.status.success(), "ffmpeg {input}: {}", String::from_utf8_lossy(&o.stderr));
    std::fs::read(out).unwrap()
}

fn post_sei(srv: &Server, stream: &str, body: &serde_json::Value) -> HttpResponse {
    http_request_body(srv.http_port, "POST", &format!("/api/v1/streams/live/{stream}/sei"), &body.to_string())
}

#[test]
fn an_injected_sei_reaches_flv_rtmp_hls_and_mp4_byte_for_byte() {
    let srv = Server::start("[hls]\nsegment_secs = 1.0\n");
    let _pub = push_loop(&media("360p"), &srv.rtmp_url("s"));
    srv.wait_live("s");
    start_recording(&srv, "s", &["mp4"], "sei-rec");
    // Readers from now: HTTP-FLV (tags), RTMP (ffmpeg copy to FLV), HLS (ffmpeg copy of the H.264).
    let port = srv.http_port;
    let flv = std::thread::spawn(move || {
        let mut c = FlvClient::connect(port, "/live/s.flv", None);
        c.read_for(Duration::from_secs(7))
    });
    let rtmp_file = srv.dir.path().join("rtmp.flv");
    let mut rtmp = Proc::spawn(
        Command::new("ffmpeg")
            .args(["-v", "error", "-y", "-i", &srv.rtmp_url("s"), "-t", "6", "-map", "0", "-c", "copy"])
            .arg(&rtmp_file),
    );
    let hls_url = format!("http://127.0.0.1:{port}/live/s.m3u8");
    let hls_out = srv.dir.path().join("hls.h264");
    let hls_url2 = hls_url.clone();
    let hls_out2 = hls_out.clone();
    let hls = std::thread::spawn(move || annex_b(&hls_url2, "6", &hls_out2));
    // One message per 300 ms of the stream's media time, for 6 s of it, so every reader, whenever it joined,
    // gets some.
    let data = payload();
    let b64 = base64::engine::general_purpose::STANDARD.encode(&data);
    let start = srv.media_ms("s").unwrap();
    let mut at = start;
    let mut sent = 0;
    while at < start + 6_000 {
        let r = post_sei(&srv, "s", &serde_json::json!({"uuid": UUID, "data": b64}));
        assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.json()["uuid"], UUID.replace('-', ""));
        sent += 1;
        at = srv.wait_media_at("s", at + 300);
    }
    let tags = flv.join().unwrap();
    assert!(rtmp.wait(Duration::from_secs(30)).is_some_and(|s| s.success()), "{}", rtmp.stderr());
    let hls_es = hls.join().unwrap();
    let rec = finish_recording(&srv, "s", "sei-rec", 1);
    let mp4_es = annex_b(rec[0].1.to_str().unwrap(), "60", &srv.dir.path().join("mp4.h264"));

    let from_flv = ours_in_flv_bodies(tags.iter().map(|(_, t)| t.body.as_ref()));
    let rtmp_tags: Vec<Vec<u8>> = flv_tags(&rtmp_file).into_iter().map(|t| t.2).collect();
    let from_rtmp = ours_in_flv_bodies(rtmp_tags.iter().map(Vec::as_slice));
    let from_hls = ours_in_annex_b(&hls_es);
    let from_mp4 = ours_in_annex_b(&mp4_es);
    for (who, got, least) in
        [("HTTP-FLV", &from_flv, 10), ("RTMP", &from_rtmp, 8), ("HLS", &from_hls, 5), ("MP4", &from_mp4, 10)]
    {
        assert!(got.len() >= least && got.len() <= sent, "{who}: {} of {sent} messages", got.len());
        assert!(got.iter().all(|m| m.payload_type == 5 && m.data.as_ref() == data.as_slice()), "{who}: bytes differ");
    }
    // Text, and the default UUID.
    let r = post_sei(&srv, "s", &serde_json::json!({"text": "hello 你好"}));
    assert_eq!(r.status, 202);
    assert_eq!(r.json()["bytes"], "hello 你好".len());
}

#[test]
fn bad_sei_requests_get_a_reason() {
    let srv = Server::start("");
    let _pub = push_loop(&media("360p"), &srv.rtmp_url("s"));
    let _audio = push_one_track(&media("360p"), &srv.rtmp_url("a"), "-vn", &["-stream_loop", "-1"]);
    srv.wait_live("s");
    assert!(wait_until(Duration::from_secs(20), || srv.media_ms("a").is_some_and(|m| m > 0)));
    let big = base64::engine::general_purpose::STANDARD.encode(vec![7u8; 4097]);
    for (stream, body, status, want) in [
        ("s", serde_json::json!({"data": big}), 400, "at most 4096"),
        ("s", serde_json::json!({"data": "%%%"}), 400, "not base64"),
        ("s", serde_json::json!({"text": "a", "data": "YQ=="}), 400, "data (base64) or text"),
        ("s", serde_json::json!({"text": "a", "uuid": "xyz"}), 400, "32 hex digits"),
        ("s", serde_json::json!({"text": "a", "extra": 1}), 400, "unknown field"),
        ("nobody", serde_json::json!({"text": "a"}), 404, "nobody"),
        ("a", serde_json::json!({"text": "a"}), 409, "no video"),
    ] {
        let r = post_sei(&srv, stream, &body);
        assert_eq!(r.status, status, "{body}: {}", String::from_utf8_lossy(&r.body));
        let detail = r.json()["detail"].as_str().unwrap_or_default().to_owned();
        assert!(detail.contains(want), "{body}: {detail}");
    }
    // Not JSON at all.
    let r = http_request_body(srv.http_port, "POST", "/api/v1/streams/live/s/sei", "{not json");
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"], "bad_json");
}

/// x264 writes its settings as a user_data_unregistered SEI with this UUID in a stream's first frame.
const X264_UUID: &str = "dc45e9bde6d948b7962cd820d923eeef";

#[test]
fn a_browser_gets_the_streams_sei_as_json_on_a_whep_data_channel() {
    let srv = Server::start("");
    // The 6 s file looped: x264's own SEI comes back with its first frame every loop.
    let _pub = push_loop(&media("short"), &srv.rtmp_url("s"));
    srv.wait_live("s");
    let whep = format!("http://127.0.0.1:{}/whep/live/s", srv.http_port);
    let mut page = node_bg("whep_sei.mjs", &[&whep, "9"]);
    assert!(wait_until(Duration::from_secs(60), || page.stderr().contains("READY")), "{}", page.stderr());
    let data = payload();
    let b64 = base64::engine::general_purpose::STANDARD.encode(&data);
    let start = srv.media_ms("s").unwrap();
    let (mut at, mut sent) = (start, 0);
    while at < start + 6_000 {
        let r = post_sei(&srv, "s", &serde_json::json!({"uuid": UUID, "data": b64}));
        assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
        sent += 1;
        at = srv.wait_media_at("s", at + 300);
    }
    let j = browser_result(&mut page, Duration::from_secs(90));
    let msgs = j["messages"].as_array().unwrap();
    let ours: Vec<_> = msgs.iter().filter(|m| m["uuid"] == UUID.replace('-', "")).collect();
    assert!(ours.len() >= sent - 2 && ours.len() <= sent, "{} of {sent} injected messages arrived: {j}", ours.len());
    for m in &ours {
        assert_eq!(m["type"], "sei");
        assert_eq!(m["payload_type"], 5);
        assert_eq!(m["data"], b64, "the payload bytes, base64");
    }
    // Stream time rises with the messages, each message's RTP timestamp is its picture's (stream time × 90 on
    // one base), and those of pictures the page rendered match what requestVideoFrameCallback saw. (A loaded
    // machine's compositor skips some decoded frames, so not every message's picture was rendered.)
    let pts: Vec<i64> = ours.iter().map(|m| m["pts"].as_i64().unwrap()).collect();
    assert!(pts.windows(2).all(|w| w[1] > w[0]), "{pts:?}");
    let base = |m: &serde_json::Value| {
        (m["rtp_timestamp"].as_u64().unwrap() as u32).wrapping_sub((m["pts"].as_i64().unwrap() as u32).wrapping_mul(90))
    };
    assert!(ours.iter().all(|m| base(m) == base(ours[0])), "RTP timestamps on more than one base: {j}");
    let matched = ours.iter().filter(|m| m["matched_frame"] == true).count();
    assert!(matched * 3 >= ours.len(), "{matched} of {} messages name a rendered frame: {j}", ours.len());
    // The publisher's own SEI (x264's settings, at each loop of the file) arrives the same way.
    let x264: Vec<_> = msgs.iter().filter(|m| m["uuid"] == X264_UUID).collect();
    assert!(!x264.is_empty(), "no x264 SEI in {} messages", msgs.len());
    let text = base64::engine::general_purpose::STANDARD.decode(x264[0]["data"].as_str().unwrap()).unwrap();
    assert!(text.starts_with(b"x264 - core"), "{}", String::from_utf8_lossy(&text));
    assert_eq!(srv.stream_json("s").unwrap()["sei_malformed"], 0);
}

#[test]
fn sei_crosses_the_baseline_transcode_and_a_mix() {
    let srv = Server::start("");
    // B-frames: the source WebRTC viewers get through the constrained-baseline rendition (`@cb`).
    let _pub = push_loop(&media("bframes"), &srv.rtmp_url("s"));
    srv.wait_live("s");
    let mix = serde_json::json!({"id": "m", "template": "grid", "inputs": [{"stream": "live/s"}],
        "output": {"stream": "live/s-mix", "width": 320, "height": 180, "video_bitrate": 300, "gop_secs": 1.0}});
    let r = http_request_body(srv.http_port, "POST", "/api/v1/mixes", &mix.to_string());
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    srv.wait_live("s-mix");
    let port = srv.http_port;
    let read = |path: &'static str| {
        std::thread::spawn(move || FlvClient::connect(port, path, None).read_for(Duration::from_secs(9)))
    };
    // Reading the rendition starts its transcoder; both readers see every message injected from now on.
    let (cb, mixed) = (read("/live/s@cb.flv"), read("/live/s-mix.flv"));
    assert!(wait_until(Duration::from_secs(20), || srv.media_ms("s@cb").is_some_and(|m| m > 0)));
    let data = payload();
    let b64 = base64::engine::general_purpose::STANDARD.encode(&data);
    let start = srv.media_ms("s").unwrap();
    let (mut at, mut sent) = (start, 0);
    while at < start + 5_000 {
        let r = post_sei(&srv, "s", &serde_json::json!({"uuid": UUID, "data": b64}));
        assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
        sent += 1;
        at = srv.wait_media_at("s", at + 300);
    }
    for (who, reader) in [("@cb", cb), ("mix", mixed)] {
        let tags = reader.join().unwrap();
        let got = ours_in_flv_bodies(tags.iter().map(|(_, t)| t.body.as_ref()));
        // Messages injected in the reader's last moments may still be inside the encoder when it stops.
        assert!(got.len() + 3 >= sent && got.len() <= sent, "{who}: {} of {sent} messages", got.len());
        assert!(got.iter().all(|m| m.payload_type == 5 && m.data.as_ref() == data.as_slice()), "{who}: bytes differ");
    }
    assert_eq!(srv.stream_json("s").unwrap()["sei_malformed"], 0);
}

#[test]
fn a_malformed_sei_is_counted_and_its_frame_passes_unchanged() {
    let srv = Server::start("");
    // A publisher whose every 10th picture starts with a broken SEI (a size past its end) and then a good one.
    let broken: &[u8] = &[0x06, 0x05, 0xc8, 1, 2, 3, 0x80];
    let good = sei::build_nal(&[SeiMessage::unregistered(UUID_BYTES, payload())]);
    let file = srv.dir.path().join("src.flv");
    let o = Command::new("ffmpeg")
        .args(["-v", "error", "-y", "-i"])
        .arg(media("short"))
        .args(["-an", "-c", "copy", "-f", "flv"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let tags: Vec<_> = flv_tags(&file).into_iter().filter(|t| t.0 == 9).collect();
    let mut c = RtmpClient::connect(srv.rtmp_port, false).unwrap();
    c.connect_app("live");
    c.publish("bad");
    let port = srv.http_port;
    let mut sent_bad = Vec::new();
    let mut readers = None;
    let start = std::time::Instant::now();
    for (i, (_, ts, body)) in tags.iter().enumerate() {
        let mut body = body.clone();
        if body[1] == 1 && i % 10 == 5 {
            let mut au = body[..5].to_vec();
            for nal in [broken, &good[..]] {
                au.extend_from_slice(&(nal.len() as u32).to_be_bytes());
                au.extend_from_slice(nal);
            }
            au.extend_from_slice(&body[5..]);
            body = au;
            // Well inside the readers' 4 s (from 0.5 s of the stream on).
            if (1_000..4_000).contains(ts) {
                sent_bad.push(body.clone());
            }
        }
        c.send_raw_message(6, livegate::rtmp::message::VIDEO, 1, *ts, &body);
        pace(start, u64::from(*ts));
        if readers.is_none() && *ts >= 500 {
            // Readers from half a second in: the stream as sent, and its H.264 rendition (a re-encode).
            let read = |path: &'static str| {
                std::thread::spawn(move || FlvClient::connect(port, path, None).read_for(Duration::from_secs(4)))
            };
            readers = Some((read("/live/bad.flv"), read("/live/bad@cb.flv")));
        }
    }
    let (plain, cb) = readers.unwrap();
    let plain: Vec<Vec<u8>> = plain.join().unwrap().into_iter().map(|(_, t)| t.body.to_vec()).collect();
    // Byte for byte: a malformed SEI is not livegate's to repair on a passthrough.
    let arrived = sent_bad.iter().filter(|b| plain.contains(b)).count();
    assert!(arrived == sent_bad.len() && arrived >= 5, "{arrived} of {} frames", sent_bad.len());
    // The re-encode reads the SEI: the broken one is counted and left behind, the good one carried.
    let cb = cb.join().unwrap();
    let carried = ours_in_flv_bodies(cb.iter().map(|(_, t)| t.body.as_ref()));
    assert!(!carried.is_empty() && carried.iter().all(|m| m.data.as_ref() == payload().as_slice()));
    let malformed = srv.stream_json("bad").unwrap()["sei_malformed"].as_u64().unwrap();
    assert!(malformed >= carried.len() as u64, "{malformed} malformed counted, {} carried", carried.len());
    assert!(srv.log_text().contains("malformed SEI dropped"));
}
