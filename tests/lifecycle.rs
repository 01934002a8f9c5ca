//! A stream's attachments and the webhooks they pair (ARCHITECTURE invariant 9): every player, whatever its
//! protocol, gets one `on_play` when it joins and one `on_stop` when it leaves, with the reason and its bytes;
//! livegate's own readers (HLS segmenter, recordings, transcoders, a WHEP viewer's audio) get neither, and all
//! of them are listed with the stream while they read it.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::*;
use serde_json::Value;

const WEBRTC: &str = "[webrtc]\nudp_port_min = 0\nudp_port_max = 0\n";

fn hooks_config(port: u16, extra: &str) -> String {
    let hook = format!("\"http://127.0.0.1:{port}/h\"");
    format!("[webhooks]\non_play = [{hook}]\non_stop = [{hook}]\n{extra}")
}

/// The stream's attachments as the API lists them.
fn attachments(srv: &Server, name: &str) -> Vec<Value> {
    srv.stream_json(name).and_then(|j| j["attachments"].as_array().cloned()).unwrap_or_default()
}

fn has_attachment(srv: &Server, name: &str, f: impl Fn(&Value) -> bool) -> bool {
    attachments(srv, name).iter().any(f)
}

/// on_play / on_stop events by client id.
fn by_client(events: &[Value], action: &str) -> BTreeMap<u64, Vec<Value>> {
    let mut m: BTreeMap<u64, Vec<Value>> = BTreeMap::new();
    for e in events.iter().filter(|e| e["action"] == action) {
        m.entry(e["client_id"].as_u64().unwrap()).or_default().push(e.clone());
    }
    m
}

/// A `.flv` GET that is not the first request on its connection: served by the general HTTP path, not the
/// direct fan-out one. Reads until some media arrived, then hangs up.
fn flv_on_keepalive_connection(port: u16, path: &str) -> usize {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    write!(s, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 65536];
    assert!(
        wait_until(Duration::from_secs(10), || {
            if let Ok(n) = s.read(&mut buf) {
                got.extend_from_slice(&buf[..n]);
            }
            // Both heads, and at least a keyframe's worth of FLV after the second.
            got.windows(3).any(|w| w == b"FLV") && got.len() > 20_000
        }),
        "no FLV on the second request of a connection: {:?}",
        String::from_utf8_lossy(&got[..got.len().min(400)])
    );
    got.len()
}

/// aiortc playing `live/{name}` over WHEP for `secs` seconds of decoded video, in the background.
fn whep_viewer(srv: &Server, name: &str, secs: u32) -> Proc {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/aiortc");
    let url = format!("http://127.0.0.1:{}/whep/live/{name}", srv.http_port);
    Proc::spawn_capture(
        std::process::Command::new("timeout")
            .arg("90")
            .arg(dir.join(".venv/bin/python"))
            .arg(dir.join("whep_play.py"))
            .args([url, secs.to_string()]),
    )
}

#[test]
fn every_player_gets_one_on_play_and_one_on_stop_and_internal_readers_none() {
    let (port, got) = http_receiver(200);
    let srv = Server::start(&hooks_config(port, &format!("[transcode]\nidle_stop_secs = 60.0\n{WEBRTC}")));
    let _p = push(&media("360p"), &srv.rtmp_url("lc"));
    srv.wait_live("lc");

    // RTMP (ffprobe reads a few frames and hangs up).
    let out = ffprobe(&srv.rtmp_url("lc"), &["-show_entries", "stream=codec_name"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // HTTP-FLV on a fresh connection (the direct path) and on a kept-alive one (the general path).
    let mut c = FlvClient::connect(srv.http_port, "/live/lc.flv", None);
    assert!(c.next_tag(Duration::from_secs(10)).is_some());
    assert!(wait_until(Duration::from_secs(10), || has_attachment(&srv, "lc", |a| a["kind"] == "player"
        && a["protocol"] == "http-flv")));
    drop(c);
    flv_on_keepalive_connection(srv.http_port, "/live/lc.flv");

    // HLS: the segmenter is an internal reader.
    let r = http_get(srv.http_port, "/live/lc.m3u8").unwrap();
    assert_eq!(r.status, 200);
    assert!(has_attachment(&srv, "lc", |a| a["kind"] == "internal" && a["purpose"] == "hls_segmenter"));
    // A mix's input decoder: an internal reader of its input stream.
    let body = serde_json::json!({"id": "lcmix", "template": "grid", "inputs": [{"stream": "live/lc"}],
        "output": {"stream": "live/lc-mix", "width": 320, "height": 180, "video_bitrate": 300}});
    let r = http_request_body(srv.http_port, "POST", "/api/v1/mixes", &body.to_string());
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    assert!(
        wait_until(Duration::from_secs(20), || has_attachment(&srv, "lc", |a| a["purpose"] == "mix_input")),
        "{:?}",
        attachments(&srv, "lc")
    );
    assert_eq!(srv.api("DELETE", "/api/v1/mixes/lcmix").status, 200);
    assert!(
        wait_until(Duration::from_secs(20), || !has_attachment(&srv, "lc", |a| a["purpose"] == "mix_input")),
        "the stopped mix's decoder still reads: {:?}",
        attachments(&srv, "lc")
    );
    // A recording too, listed by its id.
    start_recording(&srv, "lc", &["flv"], "lcrec");
    assert!(wait_until(Duration::from_secs(10), || has_attachment(&srv, "lc", |a| a["purpose"] == "recording"
        && a["record_id"] == "lcrec"
        && a["protocol"] == "record")));

    // WHEP: one player of live/lc whatever it reads; its audio is an internal reader of the Opus rendition,
    // which is made by an internal reader of live/lc.
    let mut viewer = whep_viewer(&srv, "lc", 4);
    assert!(
        wait_until(Duration::from_secs(30), || {
            has_attachment(&srv, "lc", |a| a["kind"] == "player" && a["protocol"] == "whep")
                && has_attachment(&srv, "lc@opus", |a| a["purpose"] == "viewer_audio" && a["viewer_of"] == "live/lc")
        }),
        "lc: {:?}\nlc@opus: {:?}",
        attachments(&srv, "lc"),
        attachments(&srv, "lc@opus")
    );
    assert!(has_attachment(&srv, "lc", |a| a["purpose"] == "rendition" && a["output"] == "live/lc@opus"));
    assert!(viewer.wait(Duration::from_secs(60)).is_some_and(|s| s.success()), "{}", viewer.stdout());

    // Every player has left: the stream lists only livegate's own readers.
    assert!(
        wait_until(Duration::from_secs(15), || attachments(&srv, "lc").iter().all(|a| a["kind"] == "internal")),
        "{:?}",
        attachments(&srv, "lc")
    );
    let events = got.lock().unwrap().clone();
    let plays = by_client(&events, "on_play");
    let stops = by_client(&events, "on_stop");
    let protocols = |m: &BTreeMap<u64, Vec<Value>>| {
        let mut v: Vec<String> = m.values().map(|e| e[0]["protocol"].as_str().unwrap().to_owned()).collect();
        v.sort();
        v
    };
    // Internal readers (hls, record, transcode, mix input) send nothing; a WHEP viewer plays once, named by
    // its stream.
    assert_eq!(protocols(&plays), ["http-flv", "http-flv", "rtmp", "whep"], "{events:#?}");
    assert!(
        wait_until(Duration::from_secs(10), || {
            let events = got.lock().unwrap().clone();
            by_client(&events, "on_stop").keys().eq(plays.keys())
        }),
        "{:#?}",
        got.lock().unwrap()
    );
    let events = got.lock().unwrap().clone();
    let stops_now = by_client(&events, "on_stop");
    assert!(stops.len() <= stops_now.len());
    for (id, play) in &plays {
        assert_eq!(play.len(), 1, "client {id} played twice: {play:?}");
        let stop = &stops_now[id];
        assert_eq!(stop.len(), 1, "client {id} stopped twice: {stop:?}");
        assert_eq!(play[0]["stream"], "live/lc");
        assert_eq!(stop[0]["stream"], "live/lc");
        assert_eq!(stop[0]["protocol"], play[0]["protocol"]);
        assert!(stop[0]["bytes"].as_u64().unwrap() > 0, "{stop:?}");
        assert!(!stop[0]["reason"].as_str().unwrap().is_empty());
    }
}

#[test]
fn on_stop_says_why_a_player_left() {
    let (port, got) = http_receiver(200);
    let srv = Server::start(&hooks_config(port, "[hub]\nreconnect_grace_secs = 0.5\n"));
    let mut p = push(&media("360p"), &srv.rtmp_url("why"));
    srv.wait_live("why");
    let mut kicked = FlvClient::connect(srv.http_port, "/live/why.flv", None);
    assert!(kicked.next_tag(Duration::from_secs(10)).is_some());
    let mut stays = FlvClient::connect(srv.http_port, "/live/why.flv", None);
    assert!(stays.next_tag(Duration::from_secs(10)).is_some());
    let stop_of =
        |id: u64| got.lock().unwrap().iter().find(|e| e["action"] == "on_stop" && e["client_id"] == id).cloned();
    let players: Vec<u64> = attachments(&srv, "why")
        .iter()
        .filter(|a| a["kind"] == "player")
        .map(|a| a["client_id"].as_u64().unwrap())
        .collect();
    assert_eq!(players.len(), 2, "{:?}", attachments(&srv, "why"));

    // Kicked through the API.
    assert_eq!(srv.api("DELETE", &format!("/api/v1/clients/{}", players[0])).status, 200);
    assert!(wait_until(Duration::from_secs(10), || stop_of(players[0]).is_some()));
    let r = stop_of(players[0]).unwrap();
    assert!(r["reason"].as_str().unwrap().starts_with("kicked"), "{r}");
    drop(kicked);

    // The publisher leaves for good: the other player's stream ends.
    p.kill();
    assert!(wait_until(Duration::from_secs(15), || {
        stays.read_for(Duration::from_millis(100));
        stop_of(players[1]).is_some()
    }));
    let r = stop_of(players[1]).unwrap();
    assert_eq!(r["reason"], "stream closed", "{r}");
}

#[test]
fn a_rendition_starts_with_its_first_reader_and_stops_after_its_last() {
    let srv = Server::start(&format!("[transcode]\nidle_stop_secs = 1.0\n{WEBRTC}"));
    let _p = push(&media("360p"), &srv.rtmp_url("od"));
    srv.wait_live("od");
    assert!(srv.stream_json("od@opus").is_none(), "no rendition before anyone reads it");
    let mut ids = Vec::new();
    // Twice: a rendition stopped after its last reader comes back for the next one.
    for round in 0..2 {
        // 4 s of video after its first frame: a viewer's first frame is the newest keyframe (this media has one
        // every 2 s), so it stays at least 2 s after connecting whatever the join's place in the GOP. With 2 s
        // it could leave within 100 ms of connecting, before the reader count was polled.
        let mut viewer = whep_viewer(&srv, "od", 4);
        assert!(
            wait_until(Duration::from_secs(30), || srv.stream_json("od@opus").is_some_and(|j| j["readers_total"] == 1)),
            "round {round}: {:?}",
            srv.stream_json("od@opus")
        );
        let j = srv.stream_json("od@opus").unwrap();
        assert_eq!(j["source"]["kind"], "rendition", "{j}");
        assert_eq!(j["source"]["from"], "live/od", "{j}");
        assert_eq!(j["publisher"]["protocol"], "transcode", "{j}");
        ids.push(j["id"].clone());
        assert!(has_attachment(&srv, "od", |a| a["purpose"] == "rendition" && a["output"] == "live/od@opus"));
        assert!(viewer.wait(Duration::from_secs(60)).is_some_and(|s| s.success()), "{}", viewer.stdout());
        // The viewer left: the rendition outlives it by idle_stop_secs, then its stream and its reader of
        // live/od are gone.
        assert!(
            wait_until(Duration::from_secs(15), || srv.stream_json("od@opus").is_none()),
            "{:?}",
            srv.stream_json("od@opus")
        );
        assert!(!has_attachment(&srv, "od", |a| a["purpose"] == "rendition"), "{:?}", attachments(&srv, "od"));
    }
    assert_ne!(ids[0], ids[1], "a new rendition stream for the second viewer");
    assert!(srv.log_text().contains("on-demand source stopped"), "{}", srv.log_text());
}
