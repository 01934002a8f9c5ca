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
