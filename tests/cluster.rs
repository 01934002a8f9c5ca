//! Pulls (issue #12, first slice): one livegate process pulls a stream another serves over HTTP-FLV; ffmpeg
//! publishes to the source, ffprobe and the tests' FLV reader play the pulled stream; the source's API says how
//! many readers it has (one per pull, however many read the copy).

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

fn api(srv: &Server, method: &str, path: &str, body: &Value) -> HttpResponse {
    http_request_body(srv.http_port, method, path, &body.to_string())
}

fn flv_readers(srv: &Server, name: &str) -> u64 {
    srv.stream_json(name).map_or(0, |s| s["readers"]["http-flv"].as_u64().unwrap_or(0))
}

fn pull_state(srv: &Server, name: &str) -> Value {
    api(srv, "GET", &format!("/api/v1/pulls/live/{name}"), &json!({})).json()
}

fn codecs(url: &str) -> Vec<String> {
    probe_streams(url).iter().filter_map(|s| s["codec_name"].as_str().map(String::from)).collect()
}

#[test]
fn an_always_on_pull_serves_another_servers_stream_on_every_protocol() {
    let source = Server::start("");
    let _push = push_loop(&media("short"), &source.rtmp_url("src"));
    source.wait_live("src");
    let edge = Server::start("");
    let url = source.flv_url("src");
    let r = api(&edge, "POST", "/api/v1/pulls", &json!({"stream": "live/copy", "url": url}));
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let live = edge.wait_live("copy");
    assert_eq!((live["video"]["codec"].as_str(), live["audio"]["codec"].as_str()), (Some("H264"), Some("AAC")));
    assert_eq!(live["publisher"]["protocol"], "pull", "{live}");
    for u in [edge.flv_url("copy"), edge.rtmp_url("copy")] {
        let mut c = codecs(&u);
        c.sort();
        assert_eq!(c, ["aac", "h264"], "{u}");
    }
    let hls = format!("http://127.0.0.1:{}/live/copy.m3u8", edge.http_port);
    assert!(wait_until(Duration::from_secs(20), || codecs(&hls).len() == 2), "HLS of the pulled stream");
    // Three readers here, one reader there: the pull.
    let _readers: Vec<FlvClient> = (0..3).map(|_| FlvClient::connect(edge.http_port, "/live/copy.flv", None)).collect();
    assert!(wait_until(Duration::from_secs(10), || flv_readers(&edge, "copy") == 3));
    assert_eq!(flv_readers(&source, "src"), 1, "{}", source.stream_json("src").unwrap());
    let p = pull_state(&edge, "copy");
    assert_eq!((p["state"].as_str(), p["on_demand"].as_bool()), (Some("live"), Some(false)), "{p}");
    assert!(p["bytes_in"].as_u64().unwrap() > 10_000, "{p}");
    // Deleted: the pull stops and the source loses its reader.
    assert_eq!(api(&edge, "DELETE", "/api/v1/pulls/live/copy", &json!({})).status, 200);
    assert!(wait_until(Duration::from_secs(10), || flv_readers(&source, "src") == 0));
    assert_eq!(api(&edge, "GET", "/api/v1/pulls/live/copy", &json!({})).status, 404);
}

#[test]
fn an_on_demand_pull_runs_while_it_has_readers() {
    let source = Server::start("");
    let _push = push_loop(&media("short"), &source.rtmp_url("src"));
    source.wait_live("src");
    let edge = Server::start("[cluster]\nedge_idle_secs = 1.0\n");
    let body = json!({"stream": "live/copy", "url": source.flv_url("src"), "on_demand": true});
    assert_eq!(api(&edge, "POST", "/api/v1/pulls", &body).status, 201);
    assert_eq!(pull_state(&edge, "copy")["state"], "idle");
    assert_eq!(flv_readers(&source, "src"), 0, "nothing pulled before a reader asks");
    // The first reader starts it; it gets media at once (the source's GOP cache), the others share the pull.
    let mut first = FlvClient::connect(edge.http_port, "/live/copy.flv", None);
    assert_eq!(first.status, 200);
    assert!(
        wait_until(Duration::from_secs(15), || first
            .next_tag(Duration::from_millis(200))
            .is_some_and(|t| is_video_keyframe(&t))),
        "no keyframe through the pull"
    );
    let more: Vec<FlvClient> = (0..2).map(|_| FlvClient::connect(edge.http_port, "/live/copy.flv", None)).collect();
    assert!(wait_until(Duration::from_secs(10), || flv_readers(&edge, "copy") == 3));
    assert_eq!(flv_readers(&source, "src"), 1);
    let s = edge.stream_json("copy").unwrap();
    assert_eq!(s["source"]["kind"], "pull", "{s}");
    // The last reader gone, the pull stops after edge_idle_secs.
    drop(first);
    drop(more);
    assert!(wait_until(Duration::from_secs(15), || flv_readers(&source, "src") == 0), "the pull outlived its readers");
    assert!(wait_until(Duration::from_secs(5), || pull_state(&edge, "copy")["state"] == "idle"));
}

#[test]
fn pulls_of_nothing_and_of_garbage_fail_with_the_reason_and_leave_the_server_up() {
    let edge = Server::start("[cluster]\nedge_idle_secs = 1.0\npull_timeout_secs = 2.0\n");
    let bad = |body: Value, status: u16, code: &str| {
        let r = api(&edge, "POST", "/api/v1/pulls", &body);
        assert_eq!(
            (r.status, r.json()["error"].as_str()),
            (status, Some(code)),
            "{}",
            String::from_utf8_lossy(&r.body)
        );
    };
    bad(json!({"stream": "live/x", "url": "rtsp://h/x"}), 400, "invalid_field");
    bad(json!({"stream": "live/x", "url": "http://h/x.m3u8"}), 400, "invalid_field");
    bad(json!({"stream": "nosuchapp/x", "url": "http://h/x.flv"}), 400, "invalid_field");
    bad(json!({"stream": "x", "url": "http://h/x.flv"}), 400, "invalid_field");

    // Nothing listens at the source: an on-demand reader gets 404 once the start timeout passes, not a hang.
    let dead = free_port();
    let body = json!({"stream": "live/gone", "url": format!("http://127.0.0.1:{dead}/live/x.flv"), "on_demand": true});
    assert_eq!(api(&edge, "POST", "/api/v1/pulls", &body).status, 201);
    bad(body, 409, "conflict");
    let r = http_get(edge.http_port, "/live/gone.flv");
    let r = r.expect("an answer");
    assert!(r.status == 404 || r.body.is_empty(), "{} {}", r.status, String::from_utf8_lossy(&r.body));
    let p = pull_state(&edge, "gone");
    assert!(p["last_error"].as_str().is_some_and(|e| e.contains("cannot reach")), "{p}");

    // A source that answers 200 and sends garbage: first not FLV at all, then an FLV header whose data offset
    // never arrives (17 MB of junk): the pull says so and retries, buffering no more than a tag; the server stays up.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for (n, mut s) in l.incoming().flatten().enumerate() {
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf);
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: video/x-flv\r\n\r\n");
            if n % 2 == 0 {
                let _ = s.write_all(b"this is not an FLV stream at all, not even close");
            } else {
                let _ = s.write_all(b"FLV\x01\x05\x7f\xff\xff\xff\x00\x00\x00\x00");
                for _ in 0..17 * 16 {
                    if s.write_all(&[0x42; 64 * 1024]).is_err() {
                        break;
                    }
                }
            }
        }
    });
    let body = json!({"stream": "live/junk", "url": format!("http://127.0.0.1:{port}/live/junk.flv")});
    assert_eq!(api(&edge, "POST", "/api/v1/pulls", &body).status, 201);
    assert!(
        wait_until(Duration::from_secs(15), || pull_state(&edge, "junk")["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("bad FLV") && e.contains("signature"))),
        "{}",
        pull_state(&edge, "junk")
    );
    assert!(
        wait_until(Duration::from_secs(30), || pull_state(&edge, "junk")["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("without a complete tag"))),
        "{}",
        pull_state(&edge, "junk")
    );
    assert_eq!(http_get(edge.http_port, "/healthz").map(|r| r.status), Some(200));
}
