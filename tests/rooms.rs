//! Rooms end to end (docs/rooms.md): members enter with userSigs over HTTP, hear each other over their event
//! sockets (WebSocket, read here with tungstenite), push with ffmpeg (or the tests' own RTMP publisher when a
//! track must stop mid-push) to the URL the room gave and play each other's streams with ffprobe; media events
//! come from the media. Then leave, kick, dissolve, duplicate logins, co-hosting in a live room, and the refusals.

mod common;

use std::io::Read;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::room_member::{room_call, wait_grid, wait_pixels};
use common::*;
use serde_json::{json, Value};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::Message;

const APP: u32 = 1400000123;
const KEY: &str = "5bd2850fff3ecb11d7c805251c51ee463a25727bddc2385f3fa8bfee1bb93b5e";

fn rooms_config(extra: &str) -> String {
    format!("[rooms]\nmedia_timeout_secs = 1.5\napps = [{{ sdk_app_id = {APP}, secret_key = \"{KEY}\" }}]\n{extra}\n")
}

fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

fn user_sig(user: &str) -> String {
    livegate::usersig::sign(KEY.as_bytes(), APP, user, now(), 86400, None)
}

fn private_map_key(user: &str, room: u32, privileges: u32) -> String {
    let map = livegate::usersig::PrivateMap {
        user: user.into(),
        sdk_app_id: APP,
        room: livegate::usersig::RoomRef::Number(room),
        expires_at: (now() + 3600) as u32,
        privileges,
    };
    livegate::usersig::sign(KEY.as_bytes(), APP, user, now(), 3600, Some(&map.to_userbuf()))
}

/// Enters `room` as `user` with the extra body fields; panics unless 200.
fn enter(srv: &Server, room: &str, user: &str, extra: Value) -> Value {
    let r = try_enter(srv, room, user, extra);
    assert_eq!(r.status, 200, "enter {room} as {user}: {}", String::from_utf8_lossy(&r.body));
    r.json()
}

fn try_enter(srv: &Server, room: &str, user: &str, extra: Value) -> HttpResponse {
    let mut body = json!({"sdkAppId": APP, "userId": user, "userSig": user_sig(user), "client": "web"});
    body.as_object_mut().unwrap().extend(extra.as_object().cloned().unwrap_or_default());
    room_call(srv, "POST", &format!("/api/v1/rooms/{room}/enter"), None, &body)
}

fn token(m: &Value) -> &str {
    m["token"].as_str().unwrap()
}

/// A member's event socket.
struct Socket {
    ws: tungstenite::WebSocket<TcpStream>,
    seen: Vec<Value>,
    /// Which of `seen` a `wait` returned already.
    taken: Vec<bool>,
}

impl Socket {
    fn open(srv: &Server, member: &Value, since: Option<u64>) -> Socket {
        let url = member["events_url"].as_str().unwrap();
        let url = match since {
            Some(n) => format!("{url}&since={n}"),
            None => url.to_owned(),
        };
        let tcp = TcpStream::connect(("127.0.0.1", srv.http_port)).unwrap();
        tcp.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        let (ws, resp) = tungstenite::client(url.as_str(), tcp).expect("websocket handshake");
        assert_eq!(resp.status(), 101);
        Socket { ws, seen: Vec::new(), taken: Vec::new() }
    }

    /// The next event, or None when nothing came within `limit`. Panics when the socket closes.
    fn next(&mut self, limit: Duration) -> Option<Value> {
        let deadline = Instant::now() + limit;
        loop {
            match self.ws.read() {
                Ok(Message::Text(t)) => {
                    let v: Value = serde_json::from_str(t.as_str()).unwrap();
                    self.seen.push(v.clone());
                    return Some(v);
                }
                Ok(Message::Close(f)) => panic!("socket closed: {f:?}; events seen: {:#?}", self.seen),
                Ok(_) => {}
                Err(tungstenite::Error::Io(e))
                    if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) =>
                {
                    if Instant::now() >= deadline {
                        return None;
                    }
                }
                Err(e) => panic!("socket error {e}; events seen: {:#?}", self.seen),
            }
        }
    }

    /// The first event named `event` (about `user`, if given) no `wait` returned yet, reading more until it comes.
    fn wait(&mut self, event: &str, user: Option<&str>) -> Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            self.taken.resize(self.seen.len(), false);
            let found = (0..self.seen.len()).find(|&i| {
                let v = &self.seen[i];
                !self.taken[i] && v["event"] == event && user.is_none_or(|u| v["user_id"] == u)
            });
            if let Some(i) = found {
                self.taken[i] = true;
                return self.seen[i].clone();
            }
            assert!(Instant::now() < deadline, "no {event} for {user:?}; events seen: {:#?}", self.seen);
            self.next(Duration::from_millis(500));
        }
    }

    /// Reads until the server closes the socket; its close code and reason.
    fn closed(&mut self) -> (u16, String) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            match self.ws.read() {
                Ok(Message::Close(Some(f))) => return (u16::from(f.code), f.reason.to_string()),
                Ok(Message::Close(None)) => return (1005, String::new()),
                Ok(Message::Text(t)) => self.seen.push(serde_json::from_str(t.as_str()).unwrap()),
                Ok(_) => {}
                Err(tungstenite::Error::Io(e))
                    if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                Err(e) => panic!("socket error before its close: {e}"),
            }
        }
        panic!("the socket was not closed; events seen: {:#?}", self.seen)
    }

    fn names_about(&self, user: &str) -> Vec<String> {
        self.seen.iter().filter(|v| v["user_id"] == user).map(|v| v["event"].as_str().unwrap().to_owned()).collect()
    }
}

/// The path and query of a URL the room handed out (tests reach the server on 127.0.0.1 anyway).
fn path_of(url: &str) -> String {
    let rest = url.split_once("://").unwrap().1;
    rest[rest.find('/').unwrap()..].to_owned()
}

fn video_codec(url: &str) -> Option<String> {
    probe_streams(url)
        .iter()
        .find(|s| s["codec_type"] == "video")
        .and_then(|s| s["codec_name"].as_str().map(String::from))
}

#[test]
fn two_members_meet_and_the_events_follow_their_media() {
    let srv = Server::start(&rooms_config(""));
    let alice = enter(&srv, "1234", "alice", json!({}));
    assert_eq!(alice["created"], true);
    assert_eq!(alice["room"]["kind"], "call");
    assert_eq!(alice["members"], json!([]));
    let own = &alice["push"];
    assert!(own["rtmp"]
        .as_str()
        .unwrap()
        .starts_with(&format!("rtmp://127.0.0.1:{}/room/{APP}.1234.alice?", srv.rtmp_port)));
    assert!(own["whip"].as_str().unwrap().contains("/whip/room/"));
    let mut a = Socket::open(&srv, &alice, None);
    let snap = a.next(Duration::from_secs(5)).unwrap();
    assert_eq!((snap["event"].as_str(), snap["seq"].as_u64()), (Some("SNAPSHOT"), alice["seq"].as_u64()), "{snap}");

    let bob = enter(&srv, "1234", "bob", json!({"client": "miniprogram"}));
    assert_eq!(bob["created"], false);
    let members = bob["members"].as_array().unwrap();
    assert_eq!(members.len(), 1);
    assert_eq!((members[0]["user_id"].as_str(), members[0]["video"].as_bool()), (Some("alice"), Some(false)));
    a.wait("REMOTE_USER_JOIN", Some("bob"));

    // Bob's push URL publishes his own stream only: on Alice's name its signature is refused.
    let bob_rtmp = bob["push"]["rtmp"].as_str().unwrap();
    let forged = bob_rtmp.replace(&format!("{APP}.1234.bob"), &format!("{APP}.1234.alice"));
    let mut p = push(&media("short"), &forged);
    assert!(p.wait(Duration::from_secs(20)).is_some_and(|s| !s.success()), "a forged push was let in");

    let mut pushing = push_loop(&media("short"), bob_rtmp);
    let video = a.wait("REMOTE_VIDEO_ADD", Some("bob"));
    a.wait("REMOTE_AUDIO_ADD", Some("bob"));
    let flv = video["play"]["flv"].as_str().unwrap().to_owned();
    assert_eq!(video_codec(&flv).as_deref(), Some("h264"), "Alice plays Bob's stream from the URL the event gave");
    assert_eq!(video_codec(video["play"]["rtmp"].as_str().unwrap()).as_deref(), Some("h264"));
    // Without the member's key the stream is not playable, even with a valid signature.
    let bare = path_of(&flv).split("&memberKey").next().unwrap().to_owned();
    let r = http_get(srv.http_port, &bare).unwrap();
    assert_eq!(r.status, 403, "{}", String::from_utf8_lossy(&r.body));
    assert!(String::from_utf8_lossy(&r.body).contains("memberKey"));

    // The room as Bob sees it: Alice's media flags follow hers (none), his own show in Alice's view.
    let view = room_call(&srv, "GET", "/api/v1/rooms/1234", Some(token(&alice)), &json!({})).json();
    let b = view["members"].as_array().unwrap().iter().find(|m| m["user_id"] == "bob").unwrap().clone();
    assert_eq!(
        (b["audio"].as_bool(), b["video"].as_bool(), b["role"].as_str()),
        (Some(true), Some(true), Some("anchor"))
    );

    let r = room_call(&srv, "POST", "/api/v1/rooms/1234/leave", Some(token(&bob)), &json!({}));
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    a.wait("REMOTE_USER_LEAVE", Some("bob"));
    // Bob's audio and video come in whichever order his first frames did; the rest is fixed.
    let mut names = a.names_about("bob");
    names[2..4].sort();
    assert_eq!(
        names,
        [
            "REMOTE_USER_JOIN",
            "ROLE_CHANGED",
            "REMOTE_AUDIO_ADD",
            "REMOTE_VIDEO_ADD",
            "REMOTE_VIDEO_REMOVE",
            "REMOTE_AUDIO_REMOVE",
            "REMOTE_USER_LEAVE"
        ],
        "{:#?}",
        a.seen
    );
    let seqs: Vec<u64> = a.seen.iter().filter_map(|v| v["seq"].as_u64()).collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "one numbering, no gaps: {seqs:?}");
    // His push ends with his stay, and his token with it.
    assert!(pushing.wait(Duration::from_secs(20)).is_some(), "Bob's push outlived his leave");
    let r = room_call(&srv, "POST", "/api/v1/rooms/1234/leave", Some(token(&bob)), &json!({}));
    assert_eq!((r.status, r.json()["error"].as_str()), (401, Some("bad_token")));

    // A socket reconnecting with the last number it saw gets nothing it had; one from before gets the rest.
    let last = *seqs.last().unwrap();
    let mut again = Socket::open(&srv, &alice, Some(last - 2));
    let replay: Vec<Value> = (0..2).map(|_| again.next(Duration::from_secs(5)).unwrap()).collect();
    assert_eq!(replay.iter().map(|v| v["seq"].as_u64().unwrap()).collect::<Vec<_>>(), [last - 1, last]);
    assert!(again.next(Duration::from_millis(500)).is_none());
}

#[test]
fn microphone_off_and_on_is_seen_from_the_media() {
    let srv = Server::start(&rooms_config(""));
    let alice = enter(&srv, "mic", "alice", json!({}));
    let bob = enter(&srv, "mic", "bob", json!({"client": "miniprogram"}));
    let mut a = Socket::open(&srv, &alice, None);
    // Bob's pusher: the tests' own RTMP client, so its audio can stop while its video goes on (enable-mic off
    // sends no audio frames), from 3 s to 7 s of media time.
    let url = bob["push"]["rtmp"].as_str().unwrap();
    let name = url.rsplit('/').next().unwrap().to_owned();
    let tags = flv_tags(&media("360p"));
    let port = srv.rtmp_port;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let s = stop.clone();
    let publisher = std::thread::spawn(move || {
        let mut p = common::enhanced_rtmp::Publisher::start(port, "room", &name);
        let start = Instant::now();
        for (kind, ts, body) in tags {
            if s.load(std::sync::atomic::Ordering::Relaxed) {
                return;
            }
            if kind == 8 && (3000..7000).contains(&ts) && body.get(1) == Some(&1) {
                continue; // AAC frames (not its sequence header) while the microphone is off
            }
            pace(start, ts as u64);
            match kind {
                8 => p.send(4, 8, 1, ts, &body),
                9 => p.video(ts, &body),
                _ => {}
            }
        }
    });
    a.wait("REMOTE_AUDIO_ADD", Some("bob"));
    // Bob's push quality, as livegate measures it (2 s in: from unknown to best or good), reaches Alice.
    let q = a.wait("NETWORK_QUALITY", Some("bob"));
    assert!((1..=2).contains(&q["quality"].as_u64().unwrap()), "{q}");
    a.wait("REMOTE_AUDIO_REMOVE", Some("bob"));
    a.wait("REMOTE_AUDIO_ADD", Some("bob"));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    publisher.join().unwrap();
    let names = a.names_about("bob");
    assert_eq!(
        names.iter().filter(|n| n.contains("VIDEO")).collect::<Vec<_>>(),
        ["REMOTE_VIDEO_ADD"],
        "the video went on throughout: {names:?}"
    );
}

#[test]
fn kick_dissolve_and_a_second_login_put_members_out() {
    let srv = Server::start(&rooms_config(""));
    let alice = enter(&srv, "k1", "alice", json!({}));
    let bob = enter(&srv, "k1", "bob", json!({}));
    let mut a = Socket::open(&srv, &alice, None);
    let mut b = Socket::open(&srv, &bob, None);
    b.next(Duration::from_secs(5)).unwrap(); // SNAPSHOT
    let mut bob_push = push_loop(&media("short"), bob["push"]["rtmp"].as_str().unwrap());
    let ev = a.wait("REMOTE_VIDEO_ADD", Some("bob"));
    // Alice plays Bob's stream (and, later, Carol's): her plays end when she is put out.
    let mut alice_reads = FlvClient::connect(srv.http_port, &path_of(ev["play"]["flv"].as_str().unwrap()), None);
    assert!(alice_reads.next_tag(Duration::from_secs(10)).is_some());

    // Bob is not the creator of a call room: he may not kick.
    let r = room_call(&srv, "DELETE", "/api/v1/rooms/k1/members/alice", Some(token(&bob)), &json!({}));
    assert_eq!(
        (r.status, r.json()["error"].as_str()),
        (403, Some("forbidden")),
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    // A second login of Bob puts the first out; the others see no leave.
    let bob2 = enter(&srv, "k1", "bob", json!({}));
    let kicked = b.wait("KICKED_OUT", None);
    assert_eq!(kicked["reason"], "duplicate_login");
    assert_eq!(b.closed(), (4000, "duplicate_login".into()));
    assert!(bob_push.wait(Duration::from_secs(20)).is_some(), "the first login's push goes with it");
    assert_eq!(room_call(&srv, "POST", "/api/v1/rooms/k1/leave", Some(token(&bob)), &json!({})).status, 401);

    // The creator kicks the new login.
    let mut b2 = Socket::open(&srv, &bob2, None);
    let r = room_call(&srv, "DELETE", "/api/v1/rooms/k1/members/bob", Some(token(&alice)), &json!({}));
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(b2.wait("KICKED_OUT", None)["reason"], "kicked");
    assert_eq!(b2.closed(), (4000, "kicked".into()));
    a.wait("REMOTE_USER_LEAVE", Some("bob"));
    assert!(!a.names_about("bob").contains(&"KICKED_OUT".to_owned()), "Alice hears of the leave only: {:#?}", a.seen);

    // The control API dissolves the room: Alice is put out, her plays end.
    let carol = enter(&srv, "k1", "carol", json!({}));
    let carol_push = push_loop(&media("short"), carol["push"]["rtmp"].as_str().unwrap());
    let ev = a.wait("REMOTE_VIDEO_ADD", Some("carol"));
    drop(alice_reads);
    let mut alice_reads = FlvClient::connect(srv.http_port, &path_of(ev["play"]["flv"].as_str().unwrap()), None);
    assert!(alice_reads.next_tag(Duration::from_secs(10)).is_some());
    let r = srv.api("DELETE", "/api/v1/rooms/k1");
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(a.wait("KICKED_OUT", None)["reason"], "dissolved");
    assert_eq!(a.closed(), (4000, "dissolved".into()));
    let ended = wait_until(Duration::from_secs(20), || {
        alice_reads.next_tag(Duration::from_millis(200));
        alice_reads.eof
    });
    assert!(ended, "Alice's play outlived the room");
    drop(carol_push);
    assert_eq!(srv.api("GET", "/api/v1/rooms/k1").status, 404);
}

#[test]
fn a_live_room_presenter_takes_a_co_host_and_kicks_it() {
    let srv = Server::start(&format!("{}[play]\nmin_cache = 0.0\n[mix]\ngop_secs = 1.0\n", rooms_config("")));
    let (red, blue) = ((255, 0, 0), (0, 0, 255));
    let mix = json!({"role": "presenter", "roomName": "Maths 7", "mix": {"width": 640, "height": 360}});
    let host = enter(&srv, "live1", "host", mix);
    assert_eq!((host["room"]["kind"].as_str(), host["role"].as_str()), (Some("live"), Some("presenter")));
    let _host_push = push_loop(&color_media("red", 440, "320x180"), host["push"]["rtmp"].as_str().unwrap());
    let carol = enter(&srv, "live1", "carol", json!({"client": "miniprogram"}));
    assert_eq!(carol["push"], Value::Null, "the audience gets no push URL");
    // The audience watches the room's mix (CDN-style): the presenter full-screen.
    let mix_flv = carol["mix"]["play"]["flv"].as_str().expect("the room's mix").to_owned();
    // float at 640x360: the first input fills the canvas, the next ones are 128x72 along the bottom from x=25.
    let (big, small) = ((320, 100), (89, 310));
    wait_pixels(&mix_flv, &[(big, red), (small, red)], Duration::from_secs(40))
        .unwrap_or_else(|got| panic!("no presenter in the mix: {got:?}"));
    let mut h = Socket::open(&srv, &host, None);
    let mut c = Socket::open(&srv, &carol, None);
    // Carol's own stream name is refused until the presenter accepts (the server signs it, she cannot).
    let r = room_call(
        &srv,
        "POST",
        "/api/v1/rooms/live1/join-requests",
        Some(token(&carol)),
        &json!({"reason": "question"}),
    );
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let id = r.json()["request_id"].as_str().unwrap().to_owned();
    let again = room_call(&srv, "POST", "/api/v1/rooms/live1/join-requests", Some(token(&carol)), &json!({}));
    assert_eq!((again.status, again.json()["error"].as_str()), (429, Some("rate_limited")));
    let req = h.wait("JOIN_REQUEST", Some("carol"));
    assert_eq!((req["request_id"].as_str(), req["reason"].as_str()), (Some(id.as_str()), Some("question")));
    // Only the presenter answers.
    let r = room_call(
        &srv,
        "POST",
        &format!("/api/v1/rooms/live1/join-requests/{id}"),
        Some(token(&carol)),
        &json!({"accept": true}),
    );
    assert_eq!(r.status, 403);
    let r = room_call(
        &srv,
        "POST",
        &format!("/api/v1/rooms/live1/join-requests/{id}"),
        Some(token(&host)),
        &json!({"accept": true}),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let answer = c.wait("JOIN_RESPONSE", None);
    assert_eq!(answer["accept"], true);
    let url = answer["push"]["rtmp"].as_str().expect("a push URL on accept").to_owned();
    let mut carol_push = push_loop(&color_media("blue", 880, "320x180"), &url);
    h.wait("REMOTE_VIDEO_ADD", Some("carol"));
    // The mix re-lays out: the co-host joins small, the presenter stays big.
    wait_pixels(&mix_flv, &[(big, red), (small, blue)], Duration::from_secs(40))
        .unwrap_or_else(|got| panic!("no co-host in the mix: {got:?}"));
    // The presenter kicks the co-host: her push ends, her socket hears why.
    let r = room_call(&srv, "DELETE", "/api/v1/rooms/live1/members/carol", Some(token(&host)), &json!({}));
    assert_eq!(r.status, 200);
    assert_eq!(c.wait("KICKED_OUT", None)["reason"], "kicked");
    assert!(carol_push.wait(Duration::from_secs(20)).is_some(), "the co-host's push outlived her kick");
    h.wait("REMOTE_USER_LEAVE", Some("carol"));
    wait_pixels(&mix_flv, &[(big, red), (small, red)], Duration::from_secs(40))
        .unwrap_or_else(|got| panic!("the co-host stayed in the mix: {got:?}"));
    // The room list: the control API's, and a member's with a userSig.
    let list = srv.api("GET", "/api/v1/rooms?index=0&cnt=10").json();
    assert_eq!(list["total"], 1);
    assert_eq!(
        (list["rooms"][0]["name"].as_str(), list["rooms"][0]["creator"].as_str()),
        (Some("Maths 7"), Some("host"))
    );
    let body = json!({"sdkAppId": APP, "userId": "dave", "userSig": user_sig("dave")});
    let mine = room_call(&srv, "POST", "/api/v1/rooms/list", None, &body).json();
    assert_eq!((mine["total"].as_u64(), mine["rooms"][0]["room_id"].as_str()), (Some(1), Some("live1")));
}

#[test]
fn bad_credentials_and_bad_requests_are_refused_with_the_reason() {
    let srv = Server::start(&rooms_config("max_members = 2\nrequire_private_map_key = false"));
    let refused = |r: HttpResponse, status: u16, code: &str, says: &str| {
        let j = r.json();
        assert_eq!((r.status, j["error"].as_str()), (status, Some(code)), "{j}");
        assert!(j["detail"].as_str().unwrap().contains(says), "{j}");
    };
    let sig =
        |user: &str, time: i64, expire: i64| livegate::usersig::sign(KEY.as_bytes(), APP, user, time, expire, None);
    let body = |user: &str, sig: String| json!({"sdkAppId": APP, "userId": user, "userSig": sig});
    let enter_with = |b: Value| room_call(&srv, "POST", "/api/v1/rooms/r1/enter", None, &b);
    refused(enter_with(body("alice", sig("alice", now() - 7200, 3600))), 403, "bad_user_sig", "expired");
    refused(
        enter_with(body("alice", "eJyrVgrxCdYrSy1SslIy0jNQ0gHzM1NS8koy*0".into())),
        403,
        "bad_user_sig",
        "malformed",
    );
    refused(enter_with(body("alice", sig("bob", now(), 3600))), 403, "bad_user_sig", "bob");
    let other_app = livegate::usersig::sign(KEY.as_bytes(), 1400000999, "alice", now(), 3600, None);
    refused(enter_with(body("alice", other_app)), 403, "bad_user_sig", "1400000999");
    let wrong_key = livegate::usersig::sign(b"another-secret-key-0123456789", APP, "alice", now(), 3600, None);
    refused(enter_with(body("alice", wrong_key)), 403, "bad_user_sig", "signature");
    refused(
        room_call(&srv, "POST", "/api/v1/rooms/r1/enter", None, &json!({"sdkAppId": 7, "userId": "a", "userSig": "x"})),
        404,
        "unknown_app",
        "7",
    );
    refused(enter_with(body("a/b", sig("a/b", now(), 3600))), 400, "invalid_field", "userId");
    refused(room_call(&srv, "POST", "/api/v1/rooms/r1/enter", None, &json!({"sdkAppId": APP})), 400, "bad_json", "");

    // privateMapKeys: another room, no enter bit; with send-audio only, a push with video is ended.
    let pmk = |user: &str, room: u32, bits: u32| json!({"sdkAppId": APP, "userId": user, "userSig": user_sig(user), "privateMapKey": private_map_key(user, room, bits)});
    let at = |room: &str, b: Value| room_call(&srv, "POST", &format!("/api/v1/rooms/{room}/enter"), None, &b);
    refused(at("77", pmk("alice", 78, 255)), 403, "bad_private_map_key", "room");
    refused(at("77", pmk("alice", 77, 255 & !2)), 403, "bad_private_map_key", "enter (2)");
    let alice = at("77", pmk("alice", 77, 1 | 2 | 4 | 8 | 32)).json();
    let mut p = push_loop(&media("short"), alice["push"]["rtmp"].as_str().unwrap());
    assert!(p.wait(Duration::from_secs(20)).is_some(), "a push with video went on without send-video");
    assert!(srv.log_text().contains("does not grant send-video (16)"), "the refusal's reason is logged");

    // The room is full at two.
    enter(&srv, "77", "bob", json!({}));
    refused(try_enter(&srv, "77", "carol", json!({})), 409, "room_full", "2 members");

    // Messages: to one member, to all; too large; to someone not in the room.
    let bob = enter(&srv, "77", "bob", json!({})); // logs in again: still two members
    let mut a = Socket::open(&srv, &alice, None);
    let r =
        room_call(&srv, "POST", "/api/v1/rooms/77/messages", Some(token(&bob)), &json!({"to": "alice", "text": "hi"}));
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let m = a.wait("TEXT_MESSAGE", None);
    assert_eq!((m["from"].as_str(), m["to"].as_str(), m["text"].as_str()), (Some("bob"), Some("alice"), Some("hi")));
    let big = "x".repeat(5000);
    refused(
        room_call(&srv, "POST", "/api/v1/rooms/77/messages", Some(token(&bob)), &json!({"text": big})),
        413,
        "message_too_large",
        "4096",
    );
    refused(
        room_call(&srv, "POST", "/api/v1/rooms/77/messages", Some(token(&bob)), &json!({"to": "zed", "text": "?"})),
        404,
        "member_not_found",
        "zed",
    );
    refused(
        room_call(&srv, "POST", "/api/v1/rooms/77/messages", None, &json!({"text": "?"})),
        401,
        "bad_token",
        "Bearer",
    );
    refused(
        room_call(&srv, "POST", "/api/v1/rooms/77/messages", Some("nope"), &json!({"text": "?"})),
        401,
        "bad_token",
        "token",
    );
    // A call room has no join requests; a member token works in its own room only.
    refused(
        room_call(&srv, "POST", "/api/v1/rooms/77/join-requests", Some(token(&bob)), &json!({})),
        403,
        "forbidden",
        "call room",
    );
    refused(
        room_call(&srv, "GET", "/api/v1/rooms/78", Some(token(&bob)), &json!({})),
        403,
        "forbidden",
        "not in room 78",
    );
    refused(srv.api("GET", "/api/v1/rooms/nosuch"), 404, "room_not_found", "nosuch");

    // A socket sending garbage is closed with the reason; the member stays in the room.
    let mut g = Socket::open(&srv, &alice, None);
    g.ws.send(Message::text("{\"hello\": 1}")).unwrap();
    let (code, reason) = g.closed();
    assert_eq!(code, u16::from(CloseCode::Policy), "{reason}");
    assert!(reason.contains("PING"), "{reason}");
    a.ws.send(Message::text("{\"event\":\"PING\"}")).unwrap();
    a.wait("PONG", None);
    let view = srv.api("GET", "/api/v1/rooms/77").json();
    assert_eq!(view["members"].as_array().unwrap().len(), 2, "{view}");
    // No socket without a token.
    let tcp = TcpStream::connect(("127.0.0.1", srv.http_port)).unwrap();
    let url = format!("ws://127.0.0.1:{}/api/v1/rooms/77/events?token=nope", srv.http_port);
    match tungstenite::client(url.as_str(), tcp) {
        Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(r))) => assert_eq!(r.status(), 401),
        other => panic!("a socket without a member token: {other:?}"),
    }
}

/// Requests a receiver got: headers (names lowercased) and the exact body.
type Received = std::sync::Arc<std::sync::Mutex<Vec<(Vec<(String, String)>, Vec<u8>)>>>;

/// A webhook receiver that keeps each request's headers and exact body.
fn hook_receiver() -> (u16, Received) {
    use std::io::{BufRead, BufReader, Write};
    let l = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
    let port = l.local_addr().unwrap().port();
    let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let g = got.clone();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            let mut r = BufReader::new(s.try_clone().unwrap());
            let (mut headers, mut line) = (Vec::new(), String::new());
            loop {
                line.clear();
                if r.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some((k, v)) = line.split_once(':') {
                    headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
                }
            }
            let len = headers.iter().find(|(k, _)| k == "content-length").map_or(0, |(_, v)| v.parse().unwrap());
            let mut body = vec![0; len];
            let _ = r.read_exact(&mut body);
            g.lock().unwrap().push((headers, body));
            let mut s = s;
            let _ = write!(s, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        }
    });
    (port, got)
}

#[test]
fn room_webhooks_arrive_in_order_signed_like_trtc() {
    use hmac::Mac;
    let (port, got) = hook_receiver();
    let cb_key = "room-callback-key";
    let srv = Server::start(&rooms_config(&format!(
        "callback_urls = [\"http://127.0.0.1:{port}/trtc\"]\ncallback_key = \"{cb_key}\""
    )));
    let alice = enter(&srv, "555", "alice", json!({}));
    let bob = enter(&srv, "555", "bob", json!({"client": "miniprogram"}));
    let mut a = Socket::open(&srv, &alice, None);
    let mut pushing = push_loop(&media("short"), bob["push"]["rtmp"].as_str().unwrap());
    a.wait("REMOTE_AUDIO_ADD", Some("bob"));
    a.wait("REMOTE_VIDEO_ADD", Some("bob"));
    assert_eq!(room_call(&srv, "POST", "/api/v1/rooms/555/leave", Some(token(&bob)), &json!({})).status, 200);
    assert!(pushing.wait(Duration::from_secs(20)).is_some());
    assert_eq!(srv.api("DELETE", "/api/v1/rooms/555").status, 200);
    let want = [101, 103, 103, 105, 201, 203, 202, 204, 104, 104, 102];
    assert!(
        wait_until(Duration::from_secs(20), || got.lock().unwrap().len() >= want.len()),
        "{:?}",
        got.lock().unwrap().len()
    );
    let got = got.lock().unwrap();
    let mut types = Vec::new();
    for (headers, body) in got.iter() {
        let h = |k: &str| headers.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(cb_key.as_bytes()).unwrap();
        mac.update(body);
        use base64::Engine;
        let sign = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        assert_eq!(h("sign").as_deref(), Some(sign.as_str()), "Sign is the HMAC of the body as posted");
        assert_eq!(h("sdkappid"), Some(APP.to_string()));
        let v: Value = serde_json::from_slice(body).unwrap();
        assert_eq!(v["EventInfo"]["RoomId"], 555, "{v}");
        let text = String::from_utf8_lossy(body);
        assert!(!text.contains(token(&alice)) && !text.contains("memberKey"), "no credential in a webhook: {text}");
        types.push((v["EventType"].as_u64().unwrap(), v["EventInfo"]["UserId"].as_str().unwrap_or("").to_owned()));
    }
    // Bob's audio and video start in either order (whichever frame came first); the rest is fixed.
    let mut t: Vec<u64> = types.iter().map(|(t, _)| *t).collect();
    if t[4] == 203 {
        t.swap(4, 5);
    }
    if t[6] == 204 {
        t.swap(6, 7);
    }
    assert_eq!(t, want, "{types:?}");
    assert_eq!(types[3].1, "bob", "{types:?}");
    assert_eq!((types[8].1.as_str(), types[9].1.as_str()), ("bob", "alice"), "{types:?}");
}

#[test]
fn the_room_mix_shows_its_anchors_follows_them_and_is_recorded() {
    let (cb_port, callbacks) = http_receiver(200);
    let srv = Server::start(&format!(
        "{}[play]\nmin_cache = 0.0\n[mix]\ngop_secs = 1.0\n[record]\ncallback_urls = [\"http://127.0.0.1:{cb_port}/rec\"]\n",
        rooms_config("")
    ));
    let (red, lime, blue, yellow) = ((255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0));
    let background = (0, 0, 0);
    // Members whose ids sort in the order they join (they join within one second: ties go by id).
    let users = [("u1", "red", 440), ("u2", "lime", 660), ("u3", "blue", 880), ("u4", "yellow", 1100)];
    let mix = json!({"mix": {"width": 640, "height": 360}, "record": ["mp4"], "recordId": "rec-42"});
    let first = enter(&srv, "mix1", "u1", mix);
    let mix_flv = first["mix"]["play"]["flv"].as_str().expect("the room's mix URL").to_owned();
    assert!(!mix_flv.contains("memberKey"), "the room's mix plays CDN-style, with its signature: {mix_flv}");
    let mut members = vec![first];
    for (u, _, _) in &users[1..] {
        members.push(enter(&srv, "mix1", u, json!({})));
    }
    let mut pushes: Vec<Proc> = users
        .iter()
        .zip(&members)
        .map(|((_, c, hz), m)| push_loop(&color_media(c, *hz, "320x180"), m["push"]["rtmp"].as_str().unwrap()))
        .collect();
    wait_grid(&mix_flv, [red, lime, blue, yellow], Duration::from_secs(40))
        .unwrap_or_else(|got| panic!("the mix never showed all four: {got:?}"));
    // u2 leaves: the grid closes up.
    assert_eq!(room_call(&srv, "POST", "/api/v1/rooms/mix1/leave", Some(token(&members[1])), &json!({})).status, 200);
    wait_grid(&mix_flv, [red, blue, yellow, background], Duration::from_secs(40))
        .unwrap_or_else(|got| panic!("the mix did not follow: {got:?}"));
    // Everybody leaves: the mix stops and its recording is finished, with the room's recordId.
    for m in [&members[0], &members[2], &members[3]] {
        assert_eq!(room_call(&srv, "POST", "/api/v1/rooms/mix1/leave", Some(token(m)), &json!({})).status, 200);
    }
    for p in &mut pushes {
        assert!(p.wait(Duration::from_secs(20)).is_some());
    }
    assert!(
        wait_until(Duration::from_secs(30), || callbacks.lock().unwrap().iter().any(|c| c["record_id"] == "rec-42")),
        "no recording callback with the room's recordId: {:?}",
        callbacks.lock().unwrap()
    );
    let cb = callbacks.lock().unwrap().iter().find(|c| c["record_id"] == "rec-42").cloned().unwrap();
    assert_eq!(cb["file_format"], "mp4", "{cb}");
    // The file holds the mix as it ran (from its first keyframe after the recording began) and decodes.
    assert!(cb["duration"].as_f64().unwrap() > 0.5, "{cb}");
    let file = srv.dir.path().join("recordings").join(cb["path"].as_str().unwrap());
    assert_eq!(decode_errors(&file), "", "{cb}");
    let streams = probe_streams(file.to_str().unwrap());
    let video = streams.iter().find(|s| s["codec_type"] == "video").expect("video in the recording");
    assert_eq!((video["width"].as_u64(), video["height"].as_u64()), (Some(640), Some(360)), "{cb}");
}

#[test]
fn server_assigned_rooms_string_ids_and_a_pusher_that_never_comes_back() {
    let srv = Server::start(&format!("{}[hub]\nreconnect_grace_secs = 1.0\n", rooms_config("")));
    // A room made by name: the server picks a numeric id; entering it by number (roomId) joins the same room.
    let body = |user: &str, extra: Value| {
        let mut b = json!({"sdkAppId": APP, "userId": user, "userSig": user_sig(user)});
        b.as_object_mut().unwrap().extend(extra.as_object().cloned().unwrap_or_default());
        b
    };
    let made =
        room_call(&srv, "POST", "/api/v1/rooms/enter", None, &body("alice", json!({"roomName": "Drop-in"}))).json();
    let id = made["room"]["room_id"].as_str().unwrap().to_owned();
    assert!(id.parse::<u32>().is_ok_and(|n| n >= 100_000), "{made}");
    assert_eq!((made["created"].as_bool(), made["room"]["name"].as_str()), (Some(true), Some("Drop-in")));
    let n: u32 = id.parse().unwrap();
    let joined = room_call(&srv, "POST", "/api/v1/rooms/enter", None, &body("bob", json!({"roomId": n}))).json();
    assert_eq!((joined["created"].as_bool(), joined["room"]["room_id"].as_str()), (Some(false), Some(id.as_str())));
    // A string id wins over a numeric one.
    let s = room_call(
        &srv,
        "POST",
        "/api/v1/rooms/enter",
        None,
        &body("carol", json!({"roomId": n, "strRoomId": "class-7"})),
    );
    assert_eq!(s.json()["room"]["room_id"], "class-7");
    // Kicking someone not in the room: 404 with who.
    let r = srv.api("DELETE", &format!("/api/v1/rooms/{id}/members/zed"));
    assert_eq!((r.status, r.json()["error"].as_str()), (404, Some("member_not_found")));

    // Bob pushes with no event socket (a mini program whose page is gone); his push dies and does not come back
    // within the reconnect grace: he leaves, with reason timeout, and Alice hears it.
    let mut a = Socket::open(&srv, &made, None);
    let mut p = push_loop(&media("short"), joined["push"]["rtmp"].as_str().unwrap());
    a.wait("REMOTE_VIDEO_ADD", Some("bob"));
    p.kill();
    let left = a.wait("REMOTE_USER_LEAVE", Some("bob"));
    assert_eq!(left["reason"], "timeout", "{left}");
    assert_eq!(room_call(&srv, "GET", &format!("/api/v1/rooms/{id}"), Some(token(&joined)), &json!({})).status, 401);
}

#[test]
fn event_sockets_count_against_the_per_address_connection_limit() {
    let srv = Server::start(&format!("{}[http]\nmax_connections_per_addr = 3\n", rooms_config("")));
    let alice = enter(&srv, "lim", "alice", json!({}));
    let mut held: Vec<Socket> = (0..3).map(|_| Socket::open(&srv, &alice, None)).collect();
    for s in &mut held {
        assert_eq!(s.next(Duration::from_secs(5)).unwrap()["event"], "SNAPSHOT");
    }
    // Three upgraded sockets hold the address's three places: a fourth connection is refused at accept.
    let refused = http_get(srv.http_port, "/healthz").is_none_or(|r| r.status != 200);
    assert!(refused, "a WebSocket stopped counting once upgraded");
    held.pop().unwrap().ws.close(None).unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || http_get(srv.http_port, "/healthz").is_some_and(|r| r.status == 200))
    );
}
