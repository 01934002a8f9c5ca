//! The origin/edge cluster (issue #12): a real redis-server, origins and edges as separate livegate processes
//! on loopback ports. ffmpeg publishes to an origin; ffprobe and the tests' FLV and RTMP clients play from the
//! edges; origins are killed with SIGKILL and the publisher moves; Redis goes away and comes back.

mod common;

use std::time::{Duration, Instant};

use common::redis::Redis;
use common::*;
use livegate::media::flv::Tag;
use serde_json::Value;

fn node(redis: &Redis, role: &str, id: &str, extra: &str) -> Server {
    Server::start(&format!(
        "[cluster]\nrole = \"{role}\"\nnode_id = \"{id}\"\nredis_url = \"{}\"\n{extra}",
        redis.url()
    ))
}

fn cluster(srv: &Server) -> Value {
    srv.api("GET", "/api/v1/cluster").json()
}

fn node_ids(srv: &Server) -> Vec<String> {
    let c = cluster(srv);
    let mut ids: Vec<String> =
        c["nodes"].as_array().into_iter().flatten().filter_map(|n| n["id"].as_str().map(String::from)).collect();
    ids.sort();
    ids
}

/// The directory's holder of `stream`, as a node's API shows it.
fn holder(srv: &Server, stream: &str) -> Option<String> {
    cluster(srv)["streams"]
        .as_array()?
        .iter()
        .find(|s| s["stream"] == stream)
        .and_then(|s| s["node"].as_str().map(String::from))
}

fn edge_pulls(srv: &Server) -> Vec<Value> {
    cluster(srv)["pulls"].as_array().cloned().unwrap_or_default().into_iter().filter(|p| p["kind"] == "edge").collect()
}

fn readers(srv: &Server, name: &str, proto: &str) -> u64 {
    srv.stream_json(name).map_or(0, |s| s["readers"][proto].as_u64().unwrap_or(0))
}

fn wait_av(url: &str) {
    if let Err(got) = common::wait_av(url) {
        panic!("{url}: {got:?}");
    }
}

/// An RTMP publish of `name` on `srv`: the status it got.
fn publish_status(srv: &Server, name: &str) -> (String, String) {
    let mut c = RtmpClient::connect(srv.rtmp_port, false).unwrap();
    c.connect_app("live");
    statuses(&c.publish(name)).pop().expect("an onStatus")
}

/// Newest media timestamp among `tags` read so far.
fn newest_ts(tags: &[(Instant, Tag)]) -> Option<u32> {
    tags.iter().filter(|(_, t)| is_video_frame(t)).map(|(_, t)| t.timestamp).max()
}

#[test]
fn edges_pull_from_the_origin_that_has_the_stream_and_follow_it_when_that_origin_dies() {
    let redis = Redis::start();
    let mut a = node(&redis, "origin", "origin-a", "");
    let b = node(&redis, "origin", "origin-b", "");
    let e1 = node(&redis, "edge", "edge-1", "");
    let e2 = node(&redis, "edge", "edge-2", "");
    assert!(
        wait_until(Duration::from_secs(10), || node_ids(&e1) == ["edge-1", "edge-2", "origin-a", "origin-b"]),
        "{}",
        cluster(&e1)
    );
    let _push = push_loop(&media("short"), &a.rtmp_url("a"));
    a.wait_live("a");
    assert!(wait_until(Duration::from_secs(10), || holder(&e2, "live/a").as_deref() == Some("origin-a")));

    // Every protocol at both edges.
    for url in [e1.flv_url("a"), e1.rtmp_url("a"), format!("http://127.0.0.1:{}/live/a.m3u8", e1.http_port)] {
        wait_av(&url);
    }
    wait_av(&e2.flv_url("a"));
    // However many readers an edge has, it holds one pull, and the origin sees one reader per edge.
    let mut r1: Vec<FlvClient> = (0..3).map(|_| FlvClient::connect(e1.http_port, "/live/a.flv", None)).collect();
    let _r2 = FlvClient::connect(e2.http_port, "/live/a.flv", None);
    assert!(wait_until(Duration::from_secs(10), || readers(&e1, "a", "http-flv") == 3));
    assert!(wait_until(Duration::from_secs(10), || readers(&a, "a", "http-flv") == 2), "{:?}", a.stream_json("a"));
    let pulls = edge_pulls(&e1);
    assert_eq!(pulls.len(), 1, "{pulls:?}");
    assert_eq!(pulls[0]["state"], "live", "{pulls:?}");
    assert!(pulls[0]["source"].as_str().unwrap().contains(&format!(":{}/live/a.flv?", a.http_port)), "{pulls:?}");
    assert_eq!(e1.stream_json("a").unwrap()["publisher"]["protocol"], "edge");

    // One publisher cluster-wide: a second one on the other origin is refused, naming the holder; an edge takes
    // no publishers; a stream no origin has is 404 at once.
    let (code, desc) = publish_status(&b, "a");
    assert_eq!(code, "NetStream.Publish.BadName", "{desc}");
    assert!(desc.contains("live on origin origin-a"), "{desc}");
    let (_, desc) = publish_status(&e1, "x");
    assert!(desc.contains("edge-1 is an edge"), "{desc}");
    let r = http_get(e1.http_port, "/live/nope.flv").unwrap();
    assert_eq!(r.status, 404, "{}", String::from_utf8_lossy(&r.body));
    assert!(r.json()["detail"].as_str().unwrap().contains("no origin of the cluster has stream live/nope"));

    // Origin A dies; its entries leave the directory within the TTL; the publisher comes back on B (as a load
    // balancer would send it), and the edges' readers carry on without reconnecting, on one timeline.
    let before = newest_ts(&r1[0].read_for(Duration::from_millis(300))).expect("video before the kill");
    a.child.kill().unwrap();
    let _ = a.child.wait();
    assert!(wait_until(Duration::from_secs(10), || !node_ids(&e1).contains(&"origin-a".to_string())));
    let mut push_b = push_loop(&media("short"), &b.rtmp_url("a"));
    // The directory may still name A for up to a TTL: a refused publisher tries again, as encoders do.
    assert!(
        wait_until(Duration::from_secs(20), || {
            if !push_b.running() {
                push_b = push_loop(&media("short"), &b.rtmp_url("a"));
            }
            holder(&e1, "live/a").as_deref() == Some("origin-b")
        }),
        "{}",
        b.log_text()
    );
    let mut after = None;
    assert!(
        wait_until(Duration::from_secs(20), || {
            after = newest_ts(&r1[0].read_for(Duration::from_millis(200)));
            after.is_some_and(|t| t > before + 500)
        }),
        "edge reader stalled at {before} ({after:?})"
    );
    let pulls = edge_pulls(&e1);
    assert!(pulls[0]["source"].as_str().unwrap().contains(&format!(":{}/live/a.flv?", b.http_port)), "{pulls:?}");
    assert_eq!(readers(&e1, "a", "http-flv"), 3, "the edge's readers stayed connected");
    // The other edge's reader too.
    let mut r2 = _r2;
    assert!(wait_until(Duration::from_secs(20), || newest_ts(&r2.read_for(Duration::from_millis(200)))
        .is_some_and(|t| t > before + 500)));
    let m = String::from_utf8(e1.api("GET", "/metrics").body).unwrap();
    assert!(m.contains("livegate_cluster_directory_up{node=\"edge-1\"} 1"), "{m}");
    assert!(m.contains("livegate_cluster_lookups_total{node=\"edge-1\",result=\"not_found\"} 1"), "{m}");
}

#[test]
fn take_over_moves_a_stream_between_origins_and_edges_record_and_refuse_what_is_not_theirs() {
    let redis = Redis::start();
    let over = "[hub]\nallow_takeover = true\n";
    let a = node(&redis, "origin", "origin-a", over);
    let b = node(&redis, "origin", "origin-b", over);
    // Every node auto-records app live: the origin that has the push does, the edge's copy does not.
    // A long pull timeout: the edge must not need it to leave an origin that lost the stream.
    let e = node(&redis, "edge", "edge-1", "pull_timeout_secs = 60\n[apps.live]\nrecord = [\"flv\"]\n");
    let _push_a = push_loop(&media("short"), &a.rtmp_url("t"));
    a.wait_live("t");
    assert!(wait_until(Duration::from_secs(10), || holder(&e, "live/t").as_deref() == Some("origin-a")));
    let mut reader = FlvClient::connect(e.http_port, "/live/t.flv", None);
    assert!(newest_ts(&reader.read_for(Duration::from_millis(500))).is_some());
    // With take-over allowed, a publisher on B takes the stream: A's publisher is put out at A's next
    // heartbeat, and the edge follows to B.
    let _push_b = push_loop(&media("short"), &b.rtmp_url("t"));
    b.wait_live("t");
    assert!(wait_until(Duration::from_secs(10), || holder(&e, "live/t").as_deref() == Some("origin-b")));
    assert!(
        wait_until(Duration::from_secs(10), || a
            .log_text()
            .contains("another publisher took the stream over on node origin-b")),
        "{}",
        a.log_text()
    );
    assert!(wait_until(Duration::from_secs(20), || edge_pulls(&e)
        .first()
        .and_then(|p| p["source"].as_str().map(|s| s.contains(&format!(":{}/", b.http_port))))
        == Some(true)));
    // A recording asked of the edge records what the edge pulls; the edge's copy is not auto-recorded.
    let r = http_request_body(
        e.http_port,
        "POST",
        "/api/v1/recordings",
        r#"{"app":"live","stream":"t","record_id":"at-edge"}"#,
    );
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let running = e.api("GET", "/api/v1/recordings").json()["running"].clone();
    assert_eq!(running.as_array().unwrap().len(), 1, "{running}");
    assert_eq!(running[0]["record_id"], "at-edge", "{running}");
    let r = http_request_body(e.http_port, "POST", "/api/v1/recordings", r#"{"app":"live","stream":"nope"}"#);
    assert_eq!(r.status, 404, "{}", String::from_utf8_lossy(&r.body));
    // An edge takes no publisher, over WHIP either.
    let r =
        http_request_with_body(e.http_port, "POST", "/whip/live/w", &[("content-type", "application/sdp")], "v=0\r\n");
    assert_eq!(r.status, 403, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["error"], "not_an_origin");
}

#[test]
fn a_node_whose_directory_is_unreachable_at_start_says_which_and_exits() {
    let dir = tempdir::TempDir::new("noredis");
    let cfg = dir.path().join("c.toml");
    let port = free_port();
    std::fs::write(
        &cfg,
        format!(
            "[rtmp]\nlisten = \"127.0.0.1:0\"\n[http]\nlisten = \"127.0.0.1:0\"\n[cluster]\nrole = \"origin\"\n\
             node_id = \"o\"\nredis_url = \"redis://:hunter2@127.0.0.1:{port}/0\"\n"
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_livegate"))
        .args(["serve", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("the cluster directory at redis://***@127.0.0.1:{port}/0 is unreachable")), "{err}");
    assert!(!err.contains("hunter2"), "the password leaked: {err}");
}

#[test]
fn nodes_keep_serving_without_redis_refuse_what_needs_it_and_recover_when_it_returns() {
    let mut redis = Redis::start();
    let a = node(&redis, "origin", "origin-a", "");
    let e = node(&redis, "edge", "edge-1", "");
    let _push = push_loop(&media("short"), &a.rtmp_url("a"));
    a.wait_live("a");
    assert!(wait_until(Duration::from_secs(10), || holder(&e, "live/a").is_some()));
    let mut reader = FlvClient::connect(e.http_port, "/live/a.flv", None);
    let before = newest_ts(&reader.read_for(Duration::from_millis(500))).expect("video through the edge");

    redis.kill();
    // What is here keeps playing.
    let mut after = None;
    assert!(wait_until(Duration::from_secs(20), || {
        after = newest_ts(&reader.read_for(Duration::from_millis(200)));
        after.is_some_and(|t| t > before + 2000)
    }));
    // What needs the directory is refused with the reason, at once.
    let r = http_get(e.http_port, "/live/other.flv").unwrap();
    assert_eq!(r.status, 503, "{}", String::from_utf8_lossy(&r.body));
    let detail = r.json()["detail"].as_str().unwrap().to_owned();
    assert!(detail.contains("cannot look stream live/other up") && detail.contains("unreachable"), "{detail}");
    let (_, desc) = publish_status(&a, "c");
    assert!(desc.contains("cannot claim stream live/c") && desc.contains("unreachable"), "{desc}");
    let c = cluster(&a);
    assert_eq!(c["directory"]["reachable"], false, "{c}");

    // Redis comes back empty: the origin's next heartbeat writes its stream again, and new work goes through.
    redis.restart();
    assert!(
        wait_until(Duration::from_secs(15), || holder(&e, "live/a").as_deref() == Some("origin-a")),
        "{}",
        a.log_text()
    );
    let _push_c = push_loop(&media("short"), &a.rtmp_url("c"));
    a.wait_live("c");
    wait_av(&e.flv_url("c"));
    assert_eq!(cluster(&a)["directory"]["reachable"], true);
}

#[test]
fn a_second_tier_edge_pulls_from_its_upstream_edge_and_an_upstream_loop_is_refused() {
    let redis = Redis::start();
    let a = node(&redis, "origin", "origin-a", "");
    let e1 = node(&redis, "edge", "edge-1", "");
    let e2 = node(&redis, "edge", "edge-2", &format!("upstream = \"http://127.0.0.1:{}\"\n", e1.http_port));
    let _push = push_loop(&media("short"), &a.rtmp_url("a"));
    a.wait_live("a");
    assert!(wait_until(Duration::from_secs(10), || holder(&e2, "live/a").is_some()));
    // Tier 2 → tier 1 → origin: the origin has one reader (edge 1), edge 1 one (edge 2).
    let _r = FlvClient::connect(e2.http_port, "/live/a.flv", None);
    wait_av(&e2.flv_url("a"));
    assert!(wait_until(Duration::from_secs(10), || readers(&e1, "a", "http-flv") >= 1));
    assert_eq!(readers(&a, "a", "http-flv"), 1, "{:?}", a.stream_json("a"));
    let p = edge_pulls(&e2);
    assert!(p[0]["source"].as_str().unwrap().contains(&format!(":{}/live/a.flv?", e1.http_port)), "{p:?}");

    // A request that came through a node already is a loop: refused with 508 and the chain.
    let r = http_request(e1.http_port, "GET", "/live/a.flv", &[("x-livegate-via", "edge-9,edge-1")]).unwrap();
    assert_eq!(r.status, 508, "{}", String::from_utf8_lossy(&r.body));
    assert!(r.json()["detail"].as_str().unwrap().contains("came through node edge-1 already"));
}

#[test]
fn chromium_plays_whep_from_an_edge_whose_opus_rendition_is_made_at_the_edge() {
    let redis = Redis::start();
    let a = node(&redis, "origin", "origin-a", "");
    let e = node(&redis, "edge", "edge-1", "[webrtc]\nudp_port_min = 0\nudp_port_max = 0\n");
    let _push = push_loop(&media("360p"), &a.rtmp_url("w"));
    a.wait_live("w");
    assert!(wait_until(Duration::from_secs(10), || holder(&e, "live/w").is_some()));
    // The edge has nothing of the stream until the browser asks: then it pulls it and answers.
    assert!(e.stream_json("w").is_none());
    let shot = e.dir.path().join("whep.png");
    let url = format!("http://127.0.0.1:{}/whep/live/w", e.http_port);
    let j = browser_check("whep_play.mjs", &[&url, shot.to_str().unwrap(), "4"]);
    assert_eq!(j["status"], 201, "{j}");
    assert_eq!(j["width"], 640, "{j}");
    assert!(j["fps"].as_f64().unwrap() > 20.0, "{j}");
    assert!(j["audioPackets"].as_u64().unwrap_or(0) > 50, "{j}");
    // The Opus rendition is the edge's own; the origin sends its one stream and makes none.
    assert_eq!(e.stream_json("w@opus").expect("the edge's Opus rendition")["audio"]["codec"], "Opus");
    assert!(a.stream_json("w@opus").is_none(), "the origin made a rendition");
    assert_eq!(edge_pulls(&e).len(), 1);
    // WHEP of a stream no origin has: 404 before any WebRTC work.
    let offer = "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=rtpmap:96 H264/90000\r\n";
    let r =
        http_request_with_body(e.http_port, "POST", "/whep/live/nope", &[("content-type", "application/sdp")], offer);
    assert_eq!(r.status, 404, "{}", String::from_utf8_lossy(&r.body));
}

const APP: u32 = 1400000123;
const KEY: &str = "5bd2850fff3ecb11d7c805251c51ee463a25727bddc2385f3fa8bfee1bb93b5e";

fn room_node(redis: &Redis, role: &str, id: &str) -> Server {
    node(redis, role, id, &format!("[rooms]\napps = [{{ sdk_app_id = {APP}, secret_key = \"{KEY}\" }}]\n"))
}

fn enter_body(user: &str) -> Value {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let sig = livegate::usersig::sign(KEY.as_bytes(), APP, user, now, 86400, None);
    serde_json::json!({"sdkAppId": APP, "userId": user, "userSig": sig, "client": "web"})
}

fn enter(srv: &Server, path: &str, user: &str) -> Value {
    let r = common::room_member::room_call(srv, "POST", path, None, &enter_body(user));
    assert_eq!(r.status, 200, "enter {path} as {user} on :{}: {}", srv.http_port, String::from_utf8_lossy(&r.body));
    r.json()
}

#[test]
fn a_room_lives_on_one_node_and_an_enter_on_any_node_is_answered_by_it() {
    let redis = Redis::start();
    let mut a = room_node(&redis, "origin", "origin-a");
    let b = room_node(&redis, "origin", "origin-b");
    let e = room_node(&redis, "edge", "edge-1");
    let a_http = format!("http://127.0.0.1:{}", a.http_port);
    assert!(wait_until(Duration::from_secs(10), || node_ids(&e).len() == 3));

    let alice = enter(&a, "/api/v1/rooms/r1/enter", "alice");
    assert_eq!((alice["created"].as_bool(), alice["server"].as_str()), (Some(true), Some(a_http.as_str())));
    assert_eq!(redis.command(&format!("GET livegate:room:{APP}:r1")).unwrap(), "$8\r\norigin-a\r\n");
    // Bob enters on the other origin, Carol on the edge: both are answered by A, with A's URLs.
    let bob = enter(&b, "/api/v1/rooms/r1/enter", "bob");
    let carol = enter(&e, "/api/v1/rooms/r1/enter", "carol");
    for m in [&bob, &carol] {
        assert_eq!((m["created"].as_bool(), m["server"].as_str()), (Some(false), Some(a_http.as_str())), "{m}");
        assert!(m["events_url"].as_str().unwrap().starts_with(&format!("ws://127.0.0.1:{}/", a.http_port)), "{m}");
        assert!(m["push"]["rtmp"].as_str().unwrap().starts_with(&format!("rtmp://127.0.0.1:{}/", a.rtmp_port)));
    }
    let users: Vec<&str> = carol["members"].as_array().unwrap().iter().filter_map(|m| m["user_id"].as_str()).collect();
    assert!(users.contains(&"alice") && users.contains(&"bob"), "{carol}");
    // Their media meets on A: Alice pushes to her URL, Bob plays her with the URL his (forwarded) enter gave.
    let _push = push_loop(&media("short"), alice["push"]["rtmp"].as_str().unwrap());
    let bob_again = enter(&e, "/api/v1/rooms/r1/enter", "bob");
    let alice_flv = bob_again["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["user_id"] == "alice")
        .map(|m| m["play"]["flv"].as_str().unwrap().to_owned())
        .unwrap();
    wait_av(&alice_flv);
    // A room with a server-assigned id asked of the edge opens on an origin.
    let fresh = enter(&e, "/api/v1/rooms/enter", "dave");
    let server = fresh["server"].as_str().unwrap();
    assert!(server == a_http || server == format!("http://127.0.0.1:{}", b.http_port), "{fresh}");

    // A dies: its room leaves the directory with it, and the next enter opens the room again elsewhere.
    a.child.kill().unwrap();
    let _ = a.child.wait();
    let mut again = Value::Null;
    assert!(wait_until(Duration::from_secs(15), || {
        let r = common::room_member::room_call(&e, "POST", "/api/v1/rooms/r1/enter", None, &enter_body("erin"));
        again = r.json();
        r.status == 200 && again["created"] == true
    }));
    assert_eq!(again["server"].as_str(), Some(format!("http://127.0.0.1:{}", b.http_port).as_str()), "{again}");
}

#[test]
fn edges_leave_a_live_origin_whose_publisher_went_to_another_one() {
    let redis = Redis::start();
    // Long graces and timeouts: only being told lets the edge move within the test's bounds.
    let a = node(&redis, "origin", "origin-a", "[hub]\nreconnect_grace_secs = 60\n");
    let b = node(&redis, "origin", "origin-b", "");
    let e = node(&redis, "edge", "edge-1", "pull_timeout_secs = 60\n[hub]\nreconnect_grace_secs = 60\n");
    let mut push_a = push_loop(&media("short"), &a.rtmp_url("m"));
    a.wait_live("m");
    assert!(wait_until(Duration::from_secs(10), || holder(&e, "live/m").as_deref() == Some("origin-a")));
    let mut reader = FlvClient::connect(e.http_port, "/live/m.flv", None);
    let before = newest_ts(&reader.read_for(Duration::from_millis(500))).expect("video through the edge");
    // The publisher leaves A (A stays up, holding the stream in its grace) and comes back on B.
    push_a.kill();
    a.wait_unpublished("m");
    let _push_b = push_loop(&media("short"), &b.rtmp_url("m"));
    b.wait_live("m");
    let mut after = None;
    assert!(
        wait_until(Duration::from_secs(20), || {
            after = newest_ts(&reader.read_for(Duration::from_millis(200)));
            after.is_some_and(|t| t > before + 1000)
        }),
        "the edge stayed on origin A: {after:?}\n{}",
        e.log_text()
    );
    assert!(edge_pulls(&e)[0]["source"].as_str().unwrap().contains(&format!(":{}/", b.http_port)));
}
