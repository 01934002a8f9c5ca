//! Who may publish and play: signed URLs, one publisher per stream, kicks, API access, webhooks, the CLI.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use livegate::auth::sign;

const KEY: &str = "e12c46f2612d5106e2034781ab261ca3";
const BACKUP: &str = "0123456789abcdef0123456789abcdef";

fn signed(key: &str, stream: &str, expiry: u64) -> String {
    let t = format!("{expiry:X}");
    format!("txSecret={}&txTime={t}", sign(key, stream, &t))
}

fn now() -> u64 {
    livegate::auth::unix_now()
}

#[test]
fn push_signatures_good_wrong_expired_and_backup() {
    let srv = Server::start(&format!(
        "[apps.live]\npush_key = \"{KEY}\"\npush_key_backup = \"{BACKUP}\"\nplay_key = \"{KEY}\"\n"
    ));
    let src = media("360p");
    // Wrong key and expired signatures are refused, and ffmpeg prints the server's reason.
    for (q, why) in [
        (signed("not-the-key", "s1", now() + 3600), "txSecret does not match"),
        (signed(KEY, "s1", now() - 10), "expired"),
        (String::new(), "missing txSecret"),
    ] {
        let mut p = push(&src, &format!("{}?{q}", srv.rtmp_url("s1")));
        let st = p.wait(Duration::from_secs(20)).expect("refused publisher exits");
        assert!(!st.success());
        assert!(p.stderr().contains(why), "expected {why:?} in ffmpeg's output: {}", p.stderr());
    }
    assert!(srv.stream_json("s1").is_none());

    // The primary key works, on the stream name ...
    let _ok = push(&src, &format!("{}?{}", srv.rtmp_url("s1"), signed(KEY, "s1", now() + 3600)));
    srv.wait_live("s1");
    // ... and the backup key works too, here with the query on the app (tcUrl) instead.
    let url = format!("rtmp://127.0.0.1:{}/live?{}/s2", srv.rtmp_port, signed(BACKUP, "s2", now() + 3600));
    let _ok2 = push(&src, &url);
    srv.wait_live("s2");

    // Playing needs the play signature: 403 JSON without it, media with it.
    let r = http_get(srv.http_port, "/live/s1.flv").unwrap();
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["error"], "forbidden");
    assert!(r.json()["detail"].as_str().unwrap().contains("txSecret"), "{}", r.json());
    let mut c = FlvClient::connect(srv.http_port, &format!("/live/s1.flv?{}", signed(KEY, "s1", now() + 60)), None);
    assert_eq!(c.status, 200);
    assert!(c.next_tag(Duration::from_secs(5)).is_some());
}

#[test]
fn second_publisher_is_refused_and_takeover_is_configurable() {
    let srv = Server::start("");
    let src = media("360p");
    let mut first = push(&src, &srv.rtmp_url("one"));
    srv.wait_live("one");
    let mut second = push(&src, &srv.rtmp_url("one"));
    let st = second.wait(Duration::from_secs(20)).expect("second publisher refused");
    assert!(!st.success());
    assert!(second.stderr().contains("already being published"), "{}", second.stderr());
    assert!(first.running(), "the first publisher is untouched");

    let srv2 = Server::start("[hub]\nallow_takeover = true\n");
    let mut a = push(&src, &srv2.rtmp_url("t"));
    srv2.wait_live("t");
    let publisher_a = srv2.stream_json("t").unwrap()["publisher"]["client_id"].clone();
    let mut b = push(&src, &srv2.rtmp_url("t"));
    assert!(wait_until(Duration::from_secs(10), || !a.running()), "old publisher kicked on takeover");
    assert!(b.running());
    assert!(wait_until(Duration::from_secs(10), || {
        srv2.stream_json("t").is_some_and(|j| j["publisher"]["client_id"] != publisher_a && j["state"] == "live")
    }));
}

#[test]
fn api_lists_kicks_and_guards() {
    let srv = Server::start("[hub]\nreconnect_grace_secs = 30.0\n");
    let mut p = push(&media("360p"), &srv.rtmp_url("api"));
    srv.wait_live("api");
    let mut c = FlvClient::connect(srv.http_port, "/live/api.flv", None);
    c.read_for(Duration::from_millis(1500));

    let list = srv.api("GET", "/api/v1/streams").json();
    let s = &list["streams"][0];
    assert_eq!(s["stream"], "api");
    assert_eq!(s["readers"]["http-flv"], 1);
    assert_eq!(s["video"]["codec"], "H264");
    assert!(s["publisher"]["addr"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert!(s["bytes_out"].as_u64().unwrap() > 0);

    let clients = srv.api("GET", "/api/v1/clients").json();
    let player =
        clients["clients"].as_array().unwrap().iter().find(|c| c["role"] == "player").expect("player listed").clone();
    assert_eq!(player["protocol"], "http-flv");

    // Kick the player: its connection closes.
    let r = srv.api("DELETE", &format!("/api/v1/clients/{}", player["id"]));
    assert_eq!(r.status, 200);
    assert!(wait_until(Duration::from_secs(5), || {
        c.read_for(Duration::from_millis(100));
        c.eof
    }));

    // Kick the publisher: ffmpeg exits, the stream waits out its grace.
    let r = srv.api("DELETE", "/api/v1/streams/live/api");
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert!(p.wait(Duration::from_secs(10)).is_some(), "publisher disconnected");
    assert!(wait_until(Duration::from_secs(5), || srv.stream_json("api").is_some_and(|j| j["state"] == "waiting")));

    assert_eq!(srv.api("DELETE", "/api/v1/streams/live/nope").status, 404);
    assert_eq!(srv.api("GET", "/api/v1/streams/live/nope").json()["error"], "stream_not_found");
    assert_eq!(srv.api("DELETE", "/api/v1/clients/999999").status, 404);
    let m = String::from_utf8(srv.api("GET", "/metrics").body).unwrap();
    assert!(m.contains("livegate_readers{protocol=\"http-flv\"}"), "{m}");
    assert!(m.contains("livegate_egress_latency_seconds_bucket"), "{m}");
    // Both kicks count: the player and the publisher.
    assert!(m.contains("livegate_disconnects_total{reason=\"kicked\"} 2"), "{m}");

    // With a token, reads and writes need it.
    let srv = Server::start("[http]\napi_token = \"sekret\"\n");
    assert_eq!(srv.api("GET", "/api/v1/streams").status, 401);
    let r = srv.api("DELETE", "/api/v1/streams/live/x");
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"], "unauthorized");
    let r =
        http_request(srv.http_port, "DELETE", "/api/v1/streams/live/x", &[("Authorization", "Bearer sekret")]).unwrap();
    assert_eq!(r.status, 404);
}

#[test]
fn webhooks_can_refuse_a_publish_and_hear_the_rest() {
    let (deny_port, denied) = http_receiver(403);
    let srv = Server::start(&format!("[webhooks]\non_publish = [\"http://127.0.0.1:{deny_port}/hook\"]\n"));
    let mut p = push(&media("360p"), &srv.rtmp_url("hooked"));
    assert!(p.wait(Duration::from_secs(20)).is_some_and(|s| !s.success()));
    assert!(p.stderr().contains("webhook refused"), "{}", p.stderr());
    assert_eq!(denied.lock().unwrap()[0]["action"], "on_publish");
    assert_eq!(denied.lock().unwrap()[0]["stream"], "live/hooked");

    let (port, got) = http_receiver(200);
    let hook = format!("\"http://127.0.0.1:{port}/h\"");
    let srv = Server::start(&format!(
        "[hub]\nreconnect_grace_secs = 0.5\n[webhooks]\non_publish = [{hook}]\non_unpublish = [{hook}]\non_play = [{hook}]\non_stop = [{hook}]\n"
    ));
    let mut p = push(&media("360p"), &format!("{}?room=7", srv.rtmp_url("hooked")));
    srv.wait_live("hooked");
    let mut c = FlvClient::connect(srv.http_port, "/live/hooked.flv", None);
    c.read_for(Duration::from_millis(500));
    drop(c);
    p.kill();
    let actions = || got.lock().unwrap().iter().map(|v| v["action"].as_str().unwrap().to_owned()).collect::<Vec<_>>();
    assert!(
        wait_until(Duration::from_secs(10), || {
            let a = actions();
            ["on_publish", "on_play", "on_stop", "on_unpublish"].iter().all(|x| a.iter().any(|y| y == x))
        }),
        "{:?}",
        actions()
    );
    let publish = got.lock().unwrap().iter().find(|v| v["action"] == "on_publish").cloned().unwrap();
    assert_eq!(publish["param"], "room=7");
}

#[test]
fn cli_signs_urls_and_checks_configs() {
    let dir = tempdir::TempDir::new("cli");
    let cfg = dir.path().join("c.toml");
    std::fs::write(&cfg, format!("[apps.live]\npush_key = \"{KEY}\"\n")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_livegate"))
        .args(["sign", "--app", "live", "--stream", "test", "--expire", "1h", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let url = String::from_utf8(out.stdout).unwrap();
    let q = url.trim().split_once('?').unwrap().1;
    let params = livegate::names::parse_query(q);
    let t = livegate::names::query_get(&params, "txTime").unwrap();
    let expiry = u64::from_str_radix(t, 16).unwrap();
    assert!(expiry > now() + 3500 && expiry <= now() + 3600);
    assert_eq!(livegate::names::query_get(&params, "txSecret").unwrap(), sign(KEY, "test", t));

    // Host and ports: each once, in the right URL; a port in --host is refused with the flags to use.
    let sign_cli = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_livegate"))
            .args(["sign", "--app", "live", "--stream", "test", "--play", "--key", KEY])
            .args(extra)
            .output()
            .unwrap()
    };
    let out = sign_cli(&["--host", "media.example", "--rtmp-port", "39350", "--http-port", "39351"]);
    let urls = String::from_utf8(out.stdout).unwrap();
    assert!(urls.contains("rtmp://media.example:39350/live/test?"), "{urls}");
    assert!(urls.contains("http://media.example:39351/live/test.flv?"), "{urls}");
    let out = sign_cli(&["--host", "127.0.0.1:39350"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--rtmp-port"), "{:?}", out);
    let out = sign_cli(&["--host", "[::1]"]);
    assert!(String::from_utf8(out.stdout).unwrap().starts_with("rtmp://[::1]:1935/live/test?"));

    // The signed URL really publishes.
    let srv = Server::start(&format!("[apps.live]\npush_key = \"{KEY}\"\n"));
    let _p = push(&media("360p"), &format!("{}?{q}", srv.rtmp_url("test")));
    srv.wait_live("test");

    let ok = Command::new(env!("CARGO_BIN_EXE_livegate")).arg("check-config").arg(&cfg).output().unwrap();
    assert!(ok.status.success());
    std::fs::write(&cfg, "[hub]\nbuffer_secs = 0.1\nbogus = 1\n").unwrap();
    let bad = Command::new(env!("CARGO_BIN_EXE_livegate")).arg("check-config").arg(&cfg).output().unwrap();
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("bogus"), "{err}");
}

#[test]
fn silent_publishers_and_idle_connections_time_out() {
    let srv = Server::start(
        "[rtmp]\npublish_timeout_secs = 1.0\nidle_timeout_secs = 1.0\n[hub]\nreconnect_grace_secs = 0.0\n",
    );
    let mut p = RtmpClient::connect(srv.rtmp_port, false).unwrap();
    p.connect_app("live");
    let msgs = p.publish("quiet");
    assert_eq!(statuses(&msgs)[0].0, "NetStream.Publish.Start");
    assert!(srv.stream_json("quiet").is_some());
    assert!(p.closed_within(Duration::from_secs(10)), "silent publisher not timed out");
    // The reason is logged as the connection ends, just after the socket closes.
    assert!(
        wait_until(Duration::from_secs(5), || srv.log_text().contains("publisher sent nothing for 1s")),
        "{}",
        srv.log_text()
    );
    assert!(wait_until(Duration::from_secs(5), || srv.stream_json("quiet").is_none()));

    let mut idle = RtmpClient::connect(srv.rtmp_port, true).unwrap();
    idle.connect_app("live");
    assert!(idle.closed_within(Duration::from_secs(10)), "idle connection not closed");
    assert!(wait_until(Duration::from_secs(5), || srv.log_text().contains("without publishing or playing")));
}

/// Whether the server closes a fresh connection to `port` at once (refused at accept) rather than holding it.
fn refused_at_accept(port: u16) -> Option<std::net::TcpStream> {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let mut b = [0u8; 1];
    match s.read(&mut b) {
        Ok(0) => None,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => None,
        // Still open after a second: accepted and held (waiting for a request or a handshake).
        _ => Some(s),
    }
}

/// Fills `port` with idle connections until the next one is refused; returns the ones held.
fn fill(port: u16, max: usize) -> Vec<std::net::TcpStream> {
    let mut held = Vec::new();
    for _ in 0..max + 4 {
        match refused_at_accept(port) {
            Some(s) => held.push(s),
            None => return held,
        }
    }
    panic!("port {port} took {} connections with a limit of {max}", held.len());
}

#[test]
fn http_and_rtmp_connections_are_limited_apart() {
    let srv = Server::start("[http]\nmax_connections = 3\n[rtmp]\nmax_connections = 2\n");
    // HTTP full (idle sockets that never send a request, as a slowloris would): RTMP clients still get in.
    let http_held = fill(srv.http_port, 3);
    assert!(http_held.len() <= 3, "{}", http_held.len());
    let mut c = RtmpClient::connect(srv.rtmp_port, false).expect("RTMP handshake while HTTP is full");
    let msgs = c.connect_app("live");
    assert!(msgs.iter().any(|m| command_of(m).is_some_and(|c| c.name == "_result")), "connect answered");
    // RTMP full: HTTP clients get in again once their own sockets are free.
    let rtmp_held = fill(srv.rtmp_port, 2);
    assert!(rtmp_held.len() <= 1, "one more besides the client: {}", rtmp_held.len());
    drop(http_held);
    assert!(
        wait_until(Duration::from_secs(10), || http_get(srv.http_port, "/healthz").is_some_and(|r| r.status == 200)),
        "HTTP refused while only RTMP is full"
    );
    assert!(
        srv.log_text().contains("limit=\"http.max_connections\"") || srv.log_text().contains("http.max_connections")
    );
    assert!(srv.log_text().contains("rtmp.max_connections"), "{}", srv.log_text());
}

/// A request as a browser page would send it: `Origin` and the other headers given.
fn browser(port: u16, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> HttpResponse {
    let len = body.len().to_string();
    let mut h = headers.to_vec();
    h.push(("Content-Length", &len));
    http_request_with_body(port, method, path, &h, body)
}

#[test]
fn web_pages_of_other_sites_cannot_reach_the_api() {
    let srv = Server::start("");
    let _p = push(&media("360p"), &srv.rtmp_url("csrf"));
    srv.wait_live("csrf");
    let port = srv.http_port;
    let evil = ("Origin", "http://evil.example");
    let body = r#"{"app":"live","stream":"csrf"}"#;
    let running = || srv.api("GET", "/api/v1/recordings").json()["running"].as_array().unwrap().len();

    // A CORS "simple request" (text/plain POST, no preflight) from another site: refused, nothing started.
    let r = browser(port, "POST", "/api/v1/recordings", &[evil, ("Content-Type", "text/plain")], body);
    assert_eq!((r.status, r.json()["error"].as_str()), (403, Some("cross_site")), "{}", r.json());
    assert_eq!(r.header("access-control-allow-origin"), None);
    // The same without Origin (a form post, curl without -H): 415, JSON only.
    let r = browser(port, "POST", "/api/v1/recordings", &[("Content-Type", "text/plain")], body);
    assert_eq!((r.status, r.json()["error"].as_str()), (415, Some("unsupported_media_type")), "{}", r.json());
    let r = browser(port, "POST", "/api/v1/recordings", &[], body);
    assert_eq!(r.status, 415);
    assert_eq!(running(), 0);
    // A preflight for DELETE from another site gets no CORS grant.
    let r = http_request(
        port,
        "OPTIONS",
        "/api/v1/streams/live/csrf",
        &[evil, ("Access-Control-Request-Method", "DELETE")],
    )
    .unwrap();
    assert_eq!(r.status, 403);
    assert_eq!(r.header("access-control-allow-origin"), None);
    // A DELETE sent anyway, a GET read, a no-cors load, and a DNS-rebinding page (its own name as Host).
    let r = browser(port, "DELETE", "/api/v1/streams/live/csrf", &[evil], "");
    assert_eq!(r.status, 403);
    assert_eq!(browser(port, "GET", "/api/v1/streams", &[evil], "").status, 403);
    let r = browser(port, "GET", "/api/v1/streams", &[("Sec-Fetch-Site", "cross-site")], "");
    assert_eq!(r.status, 403);
    let rebind = format!("evil.example:{port}");
    let rebind_origin = format!("http://evil.example:{port}");
    let r = browser(port, "GET", "/api/v1/streams", &[("Host", &rebind), ("Origin", &rebind_origin)], "");
    assert_eq!(r.status, 403);
    assert!(r.json()["detail"].as_str().unwrap().contains("loopback"), "{}", r.json());
    assert_eq!(srv.wait_live("csrf")["state"], "live", "the publisher was not kicked");

    // The server's own page (same origin) and a JSON call from a back end still work.
    let own = format!("http://127.0.0.1:{port}");
    let host = format!("127.0.0.1:{port}");
    let r = browser(port, "GET", "/api/v1/streams", &[("Origin", &own), ("Host", &host)], "");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("access-control-allow-origin"), None, "same-origin needs no CORS grant");
    let r = http_request_body(port, "POST", "/api/v1/recordings", body);
    assert_eq!(r.status, 201, "{}", r.json());
    assert_eq!(running(), 1);
    // Playback keeps its own CORS answer: players run in pages of any site.
    let r = http_request(port, "HEAD", "/live/csrf.flv", &[evil]).unwrap();
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));

    // An origin the operator lists gets CORS (and still needs the token).
    let srv = Server::start("[http]\napi_token = \"sekret\"\napi_cors_origins = [\"https://admin.example\"]\n");
    let admin = ("Origin", "https://admin.example");
    let r = http_request(
        srv.http_port,
        "OPTIONS",
        "/api/v1/streams",
        &[admin, ("Access-Control-Request-Method", "GET"), ("Access-Control-Request-Headers", "authorization")],
    )
    .unwrap();
    assert_eq!(r.status, 204);
    assert_eq!(r.header("access-control-allow-origin"), Some("https://admin.example"));
    let r = browser(srv.http_port, "GET", "/api/v1/streams", &[admin], "");
    assert_eq!(r.status, 401);
    let r = browser(srv.http_port, "GET", "/api/v1/streams", &[admin, ("Authorization", "Bearer sekret")], "");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("access-control-allow-origin"), Some("https://admin.example"));
    assert_eq!(r.header("vary"), Some("Origin"));
}

#[test]
fn api_reads_need_the_token_and_never_show_signatures() {
    let (hook_port, hooks) = http_receiver(200);
    let srv = Server::start(&format!(
        "[http]\napi_token = \"sekret\"\napi_read_token = \"peek\"\n\
         [apps.live]\npush_key = \"{KEY}\"\n\
         [webhooks]\non_unpublish = [\"http://127.0.0.1:{hook_port}/\"]\n"
    ));
    let q = signed(KEY, "sig", now() + 3600);
    let secret = q.split('&').next().unwrap().trim_start_matches("txSecret=").to_owned();
    let mut p = push(&media("360p"), &format!("{}?{q}&room=7", srv.rtmp_url("sig")));
    let get = |path: &str, token: Option<&str>| {
        let auth = token.map(|t| format!("Bearer {t}"));
        let h: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", a.as_str())).collect();
        http_request(srv.http_port, "GET", path, &h).unwrap()
    };
    // Reads need a token, from loopback too.
    let r = get("/api/v1/streams", None);
    assert_eq!((r.status, r.header("www-authenticate")), (401, Some("Bearer")));
    assert_eq!(get("/api/v1/clients", Some("wrong")).status, 401);
    assert!(wait_until(Duration::from_secs(20), || get("/api/v1/streams/live/sig", Some("peek")).status == 200));
    // The read-only token reads, but cannot change anything.
    let r = http_request(srv.http_port, "DELETE", "/api/v1/streams/live/sig", &[("Authorization", "Bearer peek")]);
    assert_eq!(r.unwrap().json()["error"], "read_only_token");
    let r = http_request_with_body(
        srv.http_port,
        "POST",
        "/api/v1/recordings",
        &[("Authorization", "Bearer sekret"), ("Content-Type", "application/json"), ("Content-Length", "29")],
        r#"{"app":"live","stream":"sig"}"#,
    );
    assert_eq!(r.status, 201, "{}", r.json());

    // No answer carries the push signature: not the stream, not the clients, not the recordings.
    let stream = get("/api/v1/streams/live/sig", Some("sekret"));
    let param = stream.json()["publisher"]["param"].as_str().unwrap().to_owned();
    assert_eq!(param, "txSecret=***&txTime=".to_owned() + q.split("txTime=").nth(1).unwrap() + "&room=7");
    for path in ["/api/v1/streams", "/api/v1/clients", "/api/v1/recordings"] {
        let body = String::from_utf8(get(path, Some("sekret")).body).unwrap();
        assert!(!body.contains(&secret), "{path} shows the signature: {body}");
    }
    let r = http_request(srv.http_port, "DELETE", "/api/v1/streams/live/sig", &[("Authorization", "Bearer sekret")]);
    assert_eq!(r.unwrap().status, 200);
    p.wait(Duration::from_secs(10));
    assert!(wait_until(Duration::from_secs(10), || !hooks.lock().unwrap().is_empty()), "on_unpublish sent");
    // Nor do the webhooks that do not authorize, the recording callbacks or the log.
    let sent = serde_json::to_string(&*hooks.lock().unwrap()).unwrap();
    assert!(!sent.contains(&secret), "{sent}");
    assert!(!srv.log_text().contains(&secret), "the log shows the signature");
}

#[test]
fn request_bodies_that_never_arrive_time_out() {
    use std::io::{Read, Write};
    let srv = Server::start("[http]\nbody_timeout_secs = 1.0\nmax_connections_per_addr = 6\n");
    // Heads that announce a body and send nothing (or a trickle): each gets 408 and its connection back.
    let mut socks = Vec::new();
    for path in ["/api/v1/recordings", "/whip/live/slow", "/api/v1/mixes"] {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", srv.http_port)).unwrap();
        let ctype = if path.starts_with("/whip") { "application/sdp" } else { "application/json" };
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {ctype}\r\nContent-Length: 100\r\n\r\n{{"
        );
        s.write_all(head.as_bytes()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        socks.push((path, s));
    }
    for (path, s) in &mut socks {
        let mut raw = Vec::new();
        let _ = s.read_to_end(&mut raw);
        let text = String::from_utf8_lossy(&raw);
        assert!(text.starts_with("HTTP/1.1 408"), "{path}: {text}");
        assert!(text.contains("body_timeout"), "{path}: {text}");
    }
    let m = String::from_utf8(srv.api("GET", "/metrics").body).unwrap();
    assert!(m.contains("livegate_http_body_timeouts_total 3"), "{m}");

    // One address may hold max_connections_per_addr; others (here: the API over another loopback address)
    // still get in.
    let held = fill(srv.http_port, 6);
    assert_eq!(held.len(), 6);
    let from_other_addr = |path: &str| {
        let other = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        other.bind(&"127.0.0.2:0".parse::<std::net::SocketAddr>().unwrap().into()).unwrap();
        other.connect(&std::net::SocketAddr::from(([127, 0, 0, 1], srv.http_port)).into()).unwrap();
        let mut o: std::net::TcpStream = other.into();
        o.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        o.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes()).unwrap();
        let mut raw = String::new();
        o.read_to_string(&mut raw).unwrap();
        raw
    };
    let raw = from_other_addr("/healthz");
    assert!(raw.starts_with("HTTP/1.0 200") || raw.starts_with("HTTP/1.1 200"), "{raw}");
    // Read while the six are still held (from the other address, which has room): a request from 127.0.0.1
    // now would be refused too, and counted.
    let m = from_other_addr("/metrics");
    assert!(m.contains("livegate_connections_refused_total{reason=\"per_addr\"} 1"), "{m}");
    drop(held);
    assert!(srv.log_text().contains("http.max_connections_per_addr"));
}

/// A chunk's type-0 header, written by hand (not with livegate's chunk code).
fn chunk0(csid: u8, len: u32, type_id: u8, stream_id: u32) -> Vec<u8> {
    let mut h = vec![csid, 0, 0, 0];
    h.extend_from_slice(&len.to_be_bytes()[1..]);
    h.push(type_id);
    h.extend_from_slice(&stream_id.to_le_bytes());
    h
}

#[test]
fn unfinished_rtmp_messages_cannot_pin_memory() {
    use std::io::Write;
    let srv = Server::start("[rtmp]\nmax_message_bytes = 262144\n");
    // Before connect: a 1 MiB chunk size and most of a 1 MB message. Commands are small; this is refused.
    let mut c = RtmpClient::connect(srv.rtmp_port, false).unwrap();
    c.send_raw_message(2, 1, 0, 0, &(1u32 << 20).to_be_bytes());
    let mut hog = chunk0(4, 1_000_000, 9, 1);
    hog.extend_from_slice(&vec![0u8; 200_000]);
    let _ = c.sock.write_all(&hog);
    assert!(c.closed_within(Duration::from_secs(5)), "a client that never connected holds a 1 MB message");

    // A publisher may send messages larger than a command (here 200 KB), up to rtmp.max_message_bytes.
    let mut p = RtmpClient::connect(srv.rtmp_port, false).unwrap();
    p.connect_app("live");
    let st = statuses(&p.publish("big"));
    assert_eq!(st[0].0, "NetStream.Publish.Start", "{st:?}");
    p.send_raw_message(2, 1, 0, 0, &4096u32.to_be_bytes());
    p.chunk_size = 4096;
    let mut frame = vec![0x17u8, 1, 0, 0, 0];
    frame.resize(200_000, 0);
    p.send_raw_message(6, 9, 1, 0, &frame);
    // The connection lives on: it answers a ping.
    p.send_raw_message(2, 4, 0, 0, &[0, 6, 0, 0, 0, 42]);
    let pong = std::iter::from_fn(|| p.next_message(Duration::from_secs(5))).find(|m| m.type_id == 4);
    assert!(pong.is_some_and(|m| m.payload[..2] == [0, 7]), "publisher cut off under its limit");
    // Over the limit: told why, then closed.
    let _ = p.sock.write_all(&chunk0(6, 300_000, 9, 1));
    let _ = p.sock.write_all(&vec![0u8; 4096]);
    let st = statuses(&p.read_until_command("onStatus", Duration::from_secs(5)));
    assert!(st.iter().any(|(code, d)| code == "NetStream.Failed" && d.contains("262144")), "{st:?}");
    assert!(p.closed_within(Duration::from_secs(5)));

    let metrics = || String::from_utf8(srv.api("GET", "/metrics").body).unwrap();
    assert!(wait_until(Duration::from_secs(5), || metrics().contains("livegate_rtmp_reassembly_bytes 0")));
    assert!(metrics().contains("livegate_rtmp_reassembly_refused_total 2"), "{}", metrics());
}
