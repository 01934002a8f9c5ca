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
    let m = String::from_utf8(edge.api("GET", "/metrics").body).unwrap();
    assert!(m.contains("livegate_pull_live{stream=\"live/copy\"} 1"), "{m}");
    assert!(m.contains("livegate_pull_bytes_total{stream=\"live/copy\"}"), "{m}");
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
    bad(json!({"stream": "live/x", "url": "http://h/x.mp4"}), 400, "invalid_field");
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

/// A push URL for `stream` on a server whose app `live` has push key `key` (Tencent's txSecret scheme).
fn signed(port: u16, stream: &str, key: &str) -> String {
    use md5::Digest;
    let t =
        format!("{:x}", std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 3600);
    let sig = hex::encode(md5::Md5::digest(format!("{key}{stream}{t}").as_bytes()));
    format!("rtmp://127.0.0.1:{port}/live/{stream}?txSecret={sig}&txTime={t}")
}

#[test]
fn a_relay_pushes_a_stream_to_another_server_and_retries_while_it_is_refused() {
    let target = Server::start("[apps.live]\npush_key = \"relay-key\"\n");
    let source = Server::start("");
    // Created before the stream exists: it waits for it. Unsigned, the target refuses it: the relay retries
    // and says why, and the source stream is not disturbed.
    let unsigned = format!("rtmp://127.0.0.1:{}/live/dst", target.rtmp_port);
    let r = api(&source, "POST", "/api/v1/relays", &json!({"stream": "live/src", "url": unsigned}));
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let bad = r.json()["id"].as_str().unwrap().to_owned();
    assert_eq!(r.json()["state"], "waiting");
    let _push = push_loop(&media("short"), &source.rtmp_url("src"));
    source.wait_live("src");
    let state = |id: &str| api(&source, "GET", &format!("/api/v1/relays/{id}"), &json!({})).json();
    assert!(
        wait_until(Duration::from_secs(20), || state(&bad)["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("signature"))),
        "{}",
        state(&bad)
    );
    assert_eq!(state(&bad)["state"], "retrying");
    assert!(source.log_text().contains("relay session ended"));
    // Signed: the target gets the stream, H.264 and AAC as sent.
    let good = signed(target.rtmp_port, "dst", "relay-key");
    let r = api(&source, "POST", "/api/v1/relays", &json!({"stream": "live/src", "url": good}));
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    assert!(
        !String::from_utf8_lossy(&r.body).contains("txSecret=") || r.json()["url"].as_str().unwrap().contains("***")
    );
    let id = r.json()["id"].as_str().unwrap().to_owned();
    let live = target.wait_live("dst");
    assert_eq!((live["video"]["codec"].as_str(), live["audio"]["codec"].as_str()), (Some("H264"), Some("AAC")));
    let mut c = codecs(&target.flv_url("dst"));
    c.sort();
    assert_eq!(c, ["aac", "h264"]);
    let s = state(&id);
    assert_eq!(s["state"], "live", "{s}");
    assert!(s["bytes_out"].as_u64().unwrap() > 10_000, "{s}");
    let listed = source.stream_json("src").unwrap();
    assert_eq!(listed["readers"]["relay"], 1, "{listed}");
    let m = String::from_utf8(source.api("GET", "/metrics").body).unwrap();
    assert!(m.contains(&format!("livegate_relay_live{{id=\"{id}\",stream=\"live/src\"}} 1")), "{m}");
    assert!(m.contains(&format!("livegate_relay_live{{id=\"{bad}\",stream=\"live/src\"}} 0")), "{m}");
    // Deleted: the target's publisher goes.
    assert_eq!(api(&source, "DELETE", &format!("/api/v1/relays/{id}"), &json!({})).status, 200);
    assert!(wait_until(Duration::from_secs(10), || target.stream_json("dst").is_none_or(|s| s["publisher"].is_null())));
    // A URL that is not RTMP is refused up front.
    let r = api(&source, "POST", "/api/v1/relays", &json!({"stream": "live/src", "url": "http://x/live/y"}));
    assert_eq!((r.status, r.json()["error"].as_str()), (400, Some("invalid_field")));
}

/// nginx with its RTMP module (Debian's libnginx-mod-rtmp), a third-party RTMP server on a free port; stopped on
/// drop.
struct Nginx {
    proc: Proc,
    port: u16,
    _dir: tempdir::TempDir,
}

impl Nginx {
    fn start() -> Nginx {
        let dir = tempdir::TempDir::new("nginx");
        let port = free_port();
        let conf = dir.path().join("nginx.conf");
        std::fs::write(
            &conf,
            format!(
                "load_module /usr/lib/nginx/modules/ngx_rtmp_module.so;\nworker_processes 1;\nevents {{}}\n\
                 rtmp {{ server {{ listen 127.0.0.1:{port}; application live {{ live on; }} }} }}\n"
            ),
        )
        .unwrap();
        let pid = dir.path().join("nginx.pid");
        let globals = format!("daemon off; master_process off; pid {}; error_log stderr;", pid.display());
        let proc = Proc::spawn(std::process::Command::new("nginx").arg("-c").arg(&conf).args(["-g", &globals]));
        let up = wait_until(Duration::from_secs(10), || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
        assert!(up, "nginx-rtmp did not start: {}", proc.stderr());
        Nginx { proc, port, _dir: dir }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        self.proc.kill();
    }
}

#[test]
fn a_relay_publishes_to_nginx_rtmp_a_third_party_server() {
    let nginx = Nginx::start();
    let source = Server::start("");
    let _push = push_loop(&media("short"), &source.rtmp_url("src"));
    source.wait_live("src");
    let url = format!("rtmp://127.0.0.1:{}/live/from-livegate", nginx.port);
    let r = api(&source, "POST", "/api/v1/relays", &json!({"stream": "live/src", "url": url}));
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let id = r.json()["id"].as_str().unwrap().to_owned();
    let state = || api(&source, "GET", &format!("/api/v1/relays/{id}"), &json!({})).json();
    assert!(wait_until(Duration::from_secs(20), || state()["state"] == "live"), "{}", state());
    // Players of nginx get what livegate relayed.
    let got = wait_av(&url);
    assert!(got.is_ok(), "ffprobe of nginx's stream: {got:?}, relay {}", state());
}

#[test]
fn an_apps_forward_relays_each_of_its_streams_while_it_lives() {
    let nginx = Nginx::start();
    let source = Server::start(&format!(
        "[hub]\nreconnect_grace_secs = 1.0\n[apps.live]\nforward = [\"rtmp://127.0.0.1:{}/live\"]\n",
        nginx.port
    ));
    let mut push = push_loop(&media("short"), &source.rtmp_url("fw"));
    let url = format!("rtmp://127.0.0.1:{}/live/fw", nginx.port);
    let got = wait_av(&url);
    assert!(got.is_ok(), "nginx never got the forwarded stream: {got:?}");
    let relays = api(&source, "GET", "/api/v1/relays", &json!({})).json();
    let r = &relays["relays"][0];
    assert_eq!(
        (r["stream"].as_str(), r["forward"].as_bool(), r["state"].as_str()),
        (Some("live/fw"), Some(true), Some("live"))
    );
    // The stream ends (its publisher gone beyond the grace): its forward goes with it.
    push.kill();
    assert!(wait_until(Duration::from_secs(20), || api(&source, "GET", "/api/v1/relays", &json!({})).json()["relays"]
        .as_array()
        .is_some_and(|a| a.is_empty())));
}

#[test]
fn a_pull_over_rtmp_serves_a_stream_of_nginx_rtmp_here() {
    let nginx = Nginx::start();
    let src = format!("rtmp://127.0.0.1:{}/live/cam", nginx.port);
    let _push = push_loop(&media("short"), &src);
    let edge = Server::start("");
    let r = api(&edge, "POST", "/api/v1/pulls", &json!({"stream": "live/cam", "url": src, "on_demand": true}));
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    // The first reader starts the pull (nginx may take a moment to have the push: the pull retries).
    let got = wait_av(&edge.flv_url("cam"));
    assert!(got.is_ok(), "the RTMP pull never played: {got:?}; pull {}", pull_state(&edge, "cam"));
    let s = edge.stream_json("cam").unwrap_or_default();
    assert_eq!(s["publisher"]["protocol"], "pull", "{s}");
    let frames = last_frame_rgb(&edge.rtmp_url("cam"), 10, 320, 240);
    assert_eq!(frames.len(), 320 * 240 * 3, "decoded through the pull, over RTMP too");
}
