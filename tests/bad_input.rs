//! Hostile and broken input on the RTMP and HTTP-FLV ports: every abusive connection must end with a clear
//! reason (an onStatus / _error / JSON error the client can read, or a closed socket and a logged reason),
//! livegate must stay up, and a healthy stream running alongside must not lose a single frame.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use livegate::media::amf0::{self, Amf0Value};
use livegate::rtmp::message;
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};

use common::*;

// ---------------------------------------------------------------------------------------------------------
// Shared helpers
// ---------------------------------------------------------------------------------------------------------

/// One ffmpeg publisher and one HTTP-FLV reader that run for a whole test. The reader reads continuously on
/// its own thread; [`HealthyStream::finish`] checks that its video advanced frame by frame across whatever
/// the test threw at livegate in the meantime.
struct HealthyStream {
    name: String,
    publisher: Proc,
    video: Arc<Mutex<Vec<u32>>>,
    eof: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    reader: Option<JoinHandle<()>>,
}

impl HealthyStream {
    fn start(srv: &Server, name: &str) -> HealthyStream {
        let publisher = push(&media("360p"), &srv.rtmp_url(name));
        srv.wait_live(name);
        let mut c = FlvClient::connect(srv.http_port, &format!("/live/{name}.flv"), None);
        assert_eq!(c.status, 200, "healthy reader refused");
        let video = Arc::new(Mutex::new(Vec::new()));
        let eof = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let reader = std::thread::spawn({
            let (video, eof, stop) = (video.clone(), eof.clone(), stop.clone());
            move || {
                while !stop.load(Ordering::Relaxed) {
                    match c.next_tag(Duration::from_millis(200)) {
                        Some(t) if is_video_frame(&t) => video.lock().unwrap().push(t.timestamp),
                        Some(_) => {}
                        None if c.eof => {
                            eof.store(true, Ordering::Relaxed);
                            return;
                        }
                        None => {}
                    }
                }
            }
        });
        let h = HealthyStream { name: name.to_owned(), publisher, video, eof, stop, reader: Some(reader) };
        assert!(wait_until(Duration::from_secs(10), || h.frames() >= 10), "healthy reader gets no video");
        h
    }

    fn frames(&self) -> usize {
        self.video.lock().unwrap().len()
    }

    /// Waits for a second more of media (so damage done late in the test shows too), then asserts that no
    /// frame was lost, the reader and publisher are still connected and livegate is up and healthy.
    fn finish(mut self, srv: &mut Server) {
        let before = self.frames();
        let more =
            wait_until(Duration::from_secs(15), || self.frames() >= before + 30 || self.eof.load(Ordering::Relaxed));
        self.stop.store(true, Ordering::Relaxed);
        self.reader.take().unwrap().join().expect("healthy reader thread");
        assert!(srv.is_running(), "livegate died");
        assert_eq!(http_get(srv.http_port, "/healthz").map(|r| r.status), Some(200), "/healthz");
        assert!(!self.eof.load(Ordering::Relaxed), "the healthy reader of {} was disconnected", self.name);
        assert!(more, "the healthy stream {} stopped flowing", self.name);
        assert!(self.publisher.running(), "the healthy publisher stopped: {}", self.publisher.stderr());
        let video = self.video.lock().unwrap();
        for w in video.windows(2) {
            assert!(
                w[1] > w[0] && w[1] - w[0] <= 34,
                "healthy reader of {} lost frames: video {} ms -> {} ms ({} frames read)",
                self.name,
                w[0],
                w[1],
                video.len()
            );
        }
    }
}

/// A named group of abusive clients run against a server.
type Case = (&'static str, fn(&Server));

/// Runs the cases on parallel threads (each opens its own connections); a failing case fails the test.
fn run_parallel(srv: &Server, cases: &[Case]) {
    std::thread::scope(|s| {
        let handles: Vec<_> = cases.iter().map(|(name, case)| (*name, s.spawn(move || case(srv)))).collect();
        let failed: Vec<&str> = handles.into_iter().filter_map(|(name, h)| h.join().is_err().then_some(name)).collect();
        assert!(failed.is_empty(), "failed cases: {failed:?}");
    });
}

/// The reason livegate logged for ending the RTMP connection from local port `port`.
fn logged_end(srv: &Server, port: u16) -> String {
    // The span reads `rtmp{client=N peer=ADDR}` or, once a stream is named, `... peer=ADDR stream=KEY}`.
    let tags = [format!("peer=127.0.0.1:{port}}}"), format!("peer=127.0.0.1:{port} ")];
    let mut reason = None;
    let found = wait_until(Duration::from_secs(10), || {
        reason = srv
            .log_text()
            .lines()
            .find(|l| tags.iter().any(|t| l.contains(t.as_str())) && l.contains("connection ended"))
            .and_then(|l| l.split_once("reason=").map(|(_, r)| r.to_owned()));
        reason.is_some()
    });
    assert!(found, "livegate logged no reason for ending the connection from port {port}");
    reason.unwrap()
}

/// Asserts that livegate closes `sock` within a bounded wait and logs a reason containing `expect`.
fn assert_ended(srv: &Server, sock: &mut TcpStream, expect: &str) -> String {
    let port = sock.local_addr().unwrap().port();
    assert!(closed_by_peer(sock, Duration::from_secs(15)), "connection from port {port} was not closed");
    let reason = logged_end(srv, port);
    assert!(reason.contains(expect), "connection from port {port} ended with {reason:?}, expected {expect:?}");
    reason
}

fn closed_by_peer(sock: &mut TcpStream, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    sock.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    let mut b = [0u8; 4096];
    while Instant::now() < deadline {
        match sock.read(&mut b) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return true,
        }
    }
    false
}

fn random_bytes(seed: u64, n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    StdRng::seed_from_u64(seed).fill_bytes(&mut v);
    v
}

/// A raw TCP connection to the RTMP port.
fn raw_rtmp(srv: &Server) -> TcpStream {
    TcpStream::connect(("127.0.0.1", srv.rtmp_port)).expect("connect to the RTMP port")
}

/// An RTMP client past the handshake (nothing sent yet).
fn handshaken(srv: &Server) -> RtmpClient {
    RtmpClient::connect(srv.rtmp_port, false).expect("RTMP handshake")
}

/// An RTMP client connected to app `live` with a stream created, ready to publish or play.
fn live_session(srv: &Server) -> RtmpClient {
    let mut c = handshaken(srv);
    let msgs = c.connect_app("live");
    assert!(msgs.iter().filter_map(command_of).any(|c| c.name == "_result"), "connect to live failed");
    c.send_command(0, &["createStream".into(), 2.0.into(), Amf0Value::Null]);
    let msgs = c.read_until_command("_result", Duration::from_secs(5));
    assert!(msgs.iter().filter_map(command_of).any(|c| c.name == "_result"), "createStream failed");
    c
}

/// Reads livegate's answer to a refused command: exactly one error status with a description, then the
/// connection is closed and the refusal logged. Returns (code, description).
fn refusal(srv: &Server, c: &mut RtmpClient, reply_name: &str) -> (String, String) {
    let msgs = c.read_until_command(reply_name, Duration::from_secs(5));
    let st = statuses(&msgs);
    assert_eq!(st.len(), 1, "expected one error status, got {st:?}");
    let (code, desc) = st.into_iter().next().unwrap();
    assert!(!desc.is_empty(), "{code} has no description");
    assert_ended(srv, &mut c.sock, &desc);
    (code, desc)
}

fn publish(c: &mut RtmpClient, name: Amf0Value) {
    c.send_command(1, &["publish".into(), 0.0.into(), Amf0Value::Null, name, "live".into()]);
}

fn play(c: &mut RtmpClient, name: Amf0Value) {
    c.send_command(1, &["play".into(), 0.0.into(), Amf0Value::Null, name]);
}

/// A type-0 chunk header for a message of `len` bytes (csid 2..=319).
fn chunk_header(csid: u32, len: u32, type_id: u8) -> Vec<u8> {
    let mut h = match csid {
        2..=63 => vec![csid as u8],
        _ => vec![0, (csid - 64) as u8],
    };
    h.extend_from_slice(&[0, 0, 0]);
    h.extend_from_slice(&len.to_be_bytes()[1..]);
    h.push(type_id);
    h.extend_from_slice(&0u32.to_le_bytes());
    h
}

// ---------------------------------------------------------------------------------------------------------
// Handshake and chunk-layer garbage
// ---------------------------------------------------------------------------------------------------------

fn random_bytes_instead_of_a_handshake(srv: &Server) {
    let mut junk = random_bytes(1, 4096);
    junk[0] = 0xAB;
    let tls = [&[0x16u8, 0x03, 0x01, 0x02, 0x00, 0x01][..], &random_bytes(2, 506)].concat();
    let rtmpe = [&[0x06u8][..], &random_bytes(3, 1536)].concat();
    for (bytes, expect) in [
        (junk, "not an RTMP handshake: version byte 0xab"),
        (b"GET /live/x.flv HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), "version byte 0x47"),
        (tls, "version byte 0x16"),
        (rtmpe, "encrypted RTMPE"),
    ] {
        let mut s = raw_rtmp(srv);
        let _ = s.write_all(&bytes);
        assert_ended(srv, &mut s, expect);
    }
}

fn right_version_byte_then_random_bytes(srv: &Server) {
    // Version 3 and a random C1 is a valid simple handshake: livegate answers, then the "C2" and everything
    // after it are random too, which the chunk layer must reject (or time out) without harm.
    for seed in 10..14 {
        let mut s = raw_rtmp(srv);
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let c0c1 = [&[3u8][..], &random_bytes(seed, 1536)].concat();
        s.write_all(&c0c1).unwrap();
        let mut s0s1s2 = vec![0u8; 3073];
        s.read_exact(&mut s0s1s2).expect("S0+S1+S2 for a version-3 C0+C1");
        assert_eq!(s0s1s2[0], 3);
        assert_eq!(&s0s1s2[1 + 1536..], &c0c1[1..], "S2 echoes C1");
        let _ = s.write_all(&random_bytes(seed + 100, 1536 + 16 * 1024));
        assert_ended(srv, &mut s, "");
    }
}

fn handshake_that_never_finishes(srv: &Server) {
    let mut s = raw_rtmp(srv);
    s.write_all(&[&[3u8][..], &random_bytes(20, 100)].concat()).unwrap();
    assert_ended(srv, &mut s, "no handshake within 2s");
}

fn garbage_chunks_after_a_valid_handshake(srv: &Server) {
    // A continuation chunk on a chunk stream that never had a header.
    let mut c = handshaken(srv);
    c.sock.write_all(&[0xC5, 1, 2, 3]).unwrap();
    assert_ended(srv, &mut c.sock, "chunk stream 5 continues a message it never started");

    // Random bytes, some behind a plausible first header: whatever they decode to, the connection ends.
    for seed in 30..36 {
        let mut c = handshaken(srv);
        let mut junk = random_bytes(seed, 16 * 1024);
        if seed % 2 == 0 {
            junk.splice(0..0, chunk_header(3, 200, message::COMMAND_AMF0));
        }
        let _ = c.sock.write_all(&junk);
        assert_ended(srv, &mut c.sock, "");
    }

    // More chunk streams than any client uses: tiny complete audio messages on csids 3..=70.
    let mut c = handshaken(srv);
    let mut w = Vec::new();
    for csid in 3..=70 {
        w.extend(chunk_header(csid, 1, message::AUDIO));
        w.push(0xAF);
    }
    let _ = c.sock.write_all(&w);
    assert_ended(srv, &mut c.sock, "more than 64 chunk streams in use");
}

fn bad_set_chunk_size(srv: &Server) {
    for (payload, expect) in [
        (0u32.to_be_bytes().to_vec(), "chunk size 0 is out of range"),
        ((16 * 1024 * 1024 + 1u32).to_be_bytes().to_vec(), "chunk size 16777217 is out of range"),
        (0xFFFF_FFFFu32.to_be_bytes().to_vec(), "chunk size 2147483647 is out of range"),
        (vec![0, 1], "malformed set chunk size message"),
    ] {
        let mut c = handshaken(srv);
        c.send_raw_message(2, message::SET_CHUNK_SIZE, 0, 0, &payload);
        assert_ended(srv, &mut c.sock, expect);
    }
    // The largest allowed size (16 MiB) is accepted: the connection carries on normally.
    let mut c = handshaken(srv);
    c.send_raw_message(2, message::SET_CHUNK_SIZE, 0, 0, &(16u32 << 20).to_be_bytes());
    c.chunk_size = 16 << 20;
    let msgs = c.connect_app("live");
    assert!(msgs.iter().filter_map(command_of).any(|c| c.name == "_result"), "connect after 16 MiB chunk size");
}

fn message_length_lies(srv: &Server) {
    // Announces a 16 MiB command: refused at its header (commands fit in 64 KiB), before a byte is buffered.
    let mut c = handshaken(srv);
    c.sock.write_all(&[chunk_header(3, 0xFF_FFFF, message::COMMAND_AMF0), vec![0x02; 100]].concat()).unwrap();
    assert_ended(
        srv,
        &mut c.sock,
        "unfinished messages would hold 16777215 bytes, over this connection's limit of 65536",
    );
    // Announces 60 KB, sends 100 bytes of it, then nothing: the idle timeout (3 s here) ends it.
    let mut c = handshaken(srv);
    c.sock.write_all(&[chunk_header(3, 60_000, message::COMMAND_AMF0), vec![0x02; 100]].concat()).unwrap();
    assert_ended(srv, &mut c.sock, "idle for 3s without publishing or playing");

    // Announces 1000 bytes, sends one 128-byte chunk, then a new type-0 header on the same chunk stream
    // claiming 50 bytes.
    let mut c = handshaken(srv);
    let mut w = chunk_header(3, 1000, message::COMMAND_AMF0);
    w.extend_from_slice(&[0x05; 128]);
    w.extend(chunk_header(3, 50, message::COMMAND_AMF0));
    w.extend_from_slice(&[0x05; 50]);
    c.sock.write_all(&w).unwrap();
    assert_ended(srv, &mut c.sock, "changed length mid-message (1000 -> 50)");

    // The same lie with a type-1 header.
    let mut c = handshaken(srv);
    let mut w = chunk_header(4, 1000, message::VIDEO);
    w.extend_from_slice(&[0x17; 128]);
    w.extend_from_slice(&[0x44, 0, 0, 40, 0, 0, 10, message::VIDEO]);
    w.extend_from_slice(&[0x17; 10]);
    c.sock.write_all(&w).unwrap();
    assert_ended(srv, &mut c.sock, "changed length mid-message (1000 -> 10)");

    // 40 KB announced on several chunk streams at once, a chunk of each sent: each fits, together they do not.
    let mut c = handshaken(srv);
    let mut w = Vec::new();
    for csid in 3..8 {
        w.extend(chunk_header(csid, 40_000, message::VIDEO));
        w.extend_from_slice(&[0x17; 128]);
    }
    let _ = c.sock.write_all(&w);
    assert_ended(srv, &mut c.sock, "unfinished messages would hold 80000 bytes, over this connection's limit of 65536");
}

#[test]
fn handshake_and_chunk_garbage_is_cut_off_with_a_reason() {
    let mut srv = Server::start("[rtmp]\nhandshake_timeout_secs = 2.0\nidle_timeout_secs = 3.0\n");
    let healthy = HealthyStream::start(&srv, "steady");
    run_parallel(
        &srv,
        &[
            ("random bytes instead of a handshake", random_bytes_instead_of_a_handshake),
            ("version byte 3 then random bytes", right_version_byte_then_random_bytes),
            ("handshake that never finishes", handshake_that_never_finishes),
            ("garbage chunks after a valid handshake", garbage_chunks_after_a_valid_handshake),
            ("bad set chunk size", bad_set_chunk_size),
            ("message length lies", message_length_lies),
        ],
    );
    healthy.finish(&mut srv);
}

// ---------------------------------------------------------------------------------------------------------
// Commands: wrong AMF types, bad names, unknown streams and apps
// ---------------------------------------------------------------------------------------------------------

fn amf_with_wrong_types(srv: &Server) {
    // connect whose command object is a number, or whose app is a number: refused with _error.
    for object in [Amf0Value::Number(7.0), Amf0Value::object(&[("app", Amf0Value::Number(5.0))])] {
        let mut c = handshaken(srv);
        c.send_command(0, &["connect".into(), 1.0.into(), object]);
        let (code, _) = refusal(srv, &mut c, "_result");
        assert_eq!(code, "NetConnection.Connect.Rejected");
    }
    // publish / play with a numeric stream name.
    let mut c = live_session(srv);
    publish(&mut c, Amf0Value::Number(42.0));
    let (code, desc) = refusal(srv, &mut c, "onStatus");
    assert_eq!((code.as_str(), desc.as_str()), ("NetStream.Publish.BadName", "publish has no stream name"));
    let mut c = live_session(srv);
    play(&mut c, Amf0Value::Boolean(true));
    let (code, desc) = refusal(srv, &mut c, "onStatus");
    assert_eq!((code.as_str(), desc.as_str()), ("NetStream.Play.BadName", "play has no stream name"));
    // publish before connect: out of order, said so.
    let mut c = handshaken(srv);
    publish(&mut c, "early".into());
    let (code, desc) = refusal(srv, &mut c, "onStatus");
    assert_eq!(code, "NetStream.Publish.BadName");
    assert_eq!(desc, "publish before connect");

    // Command messages that are not (usable) AMF at all: the connection is closed with a logged reason.
    let mut nested = vec![0x02, 0, 7];
    nested.extend_from_slice(b"connect");
    nested.extend(amf0::encode_all(&[1.0.into()]));
    for _ in 0..200 {
        nested.extend_from_slice(&[0x03, 0, 1, b'a']);
    }
    let not_amf: [(u8, Vec<u8>, &str); 6] = [
        (message::COMMAND_AMF0, b"\xffnot amf at all".to_vec(), "unknown or unsupported AMF0 marker 0xff"),
        (message::COMMAND_AMF0, amf0::encode_all(&[1.0.into(), "connect".into()]), "command message has no name"),
        (message::COMMAND_AMF0, vec![0x02, 0xFF, 0xFF, b'c', b'o'], "AMF0 data truncated"),
        (message::COMMAND_AMF0, nested, "nested deeper than 32"),
        (message::COMMAND_AMF3, vec![0x00, 0x11, 0x06, 0x0F], "AMF3 (0x11) is not supported"),
        (message::COMMAND_AMF0, Vec::new(), "command message has no name"),
    ];
    for (type_id, body, expect) in not_amf {
        let mut c = handshaken(srv);
        c.send_raw_message(3, type_id, 0, 0, &body);
        let reason = assert_ended(srv, &mut c.sock, expect);
        assert!(reason.starts_with("bad command"), "{reason}");
    }
}

fn unknown_streams(srv: &Server) {
    let mut c = live_session(srv);
    play(&mut c, "nosuch".into());
    let (code, desc) = refusal(srv, &mut c, "onStatus");
    assert_eq!(code, "NetStream.Play.StreamNotFound");
    assert!(desc.contains("live/nosuch") && desc.contains("not being published"), "{desc}");

    let r = http_get(srv.http_port, "/live/nosuch.flv").expect("HTTP response");
    assert_eq!(r.status, 404);
    let j = r.json();
    assert_eq!(j["error"], "stream_not_found");
    assert!(j["detail"].as_str().unwrap().contains("live/nosuch"), "{j}");
}

fn bad_stream_names(srv: &Server) {
    let long = "x".repeat(500);
    let names: [(&str, &str); 7] = [
        ("..", "may not start with '.' or contain \"..\""),
        ("a..b", "may not start with '.' or contain \"..\""),
        ("../etc/passwd", "contains '/'"),
        ("a/b", "contains '/'"),
        ("a\0b", "contains '\\0'"),
        (&long, "500 characters long"),
        ("", "stream name is empty"),
    ];
    for (name, expect) in names {
        let mut c = live_session(srv);
        publish(&mut c, name.into());
        let (code, desc) = refusal(srv, &mut c, "onStatus");
        assert_eq!(code, "NetStream.Publish.BadName", "publish {name:?}");
        assert!(desc.contains(expect), "publish {name:?}: {desc}");

        let mut c = live_session(srv);
        play(&mut c, name.into());
        let (code, desc) = refusal(srv, &mut c, "onStatus");
        assert_eq!(code, "NetStream.Play.BadName", "play {name:?}");
        assert!(desc.contains(expect), "play {name:?}: {desc}");
    }
    for path in [
        "/live/a..b.flv".to_owned(),
        "/live/..flv".to_owned(),
        "/live/../etc/passwd.flv".to_owned(),
        "/live/a/b.flv".to_owned(),
        "/live/a%2Fb.flv".to_owned(),
        "/live/a%00b.flv".to_owned(),
        format!("/live/{long}.flv"),
    ] {
        let r = http_get(srv.http_port, &path).expect("HTTP response");
        assert!((400..500).contains(&r.status), "GET {path}: {}", r.status);
        let j = r.json();
        assert!(j["error"].is_string() && !j["detail"].as_str().unwrap_or("").is_empty(), "GET {path}: {j}");
    }
}

fn unknown_apps(srv: &Server) {
    for (app, expect) in [("nosuch", "unknown app \"nosuch\""), ("../live", "app name contains '/'")] {
        let mut c = handshaken(srv);
        c.send_command(
            0,
            &[
                "connect".into(),
                1.0.into(),
                Amf0Value::object(&[("app", app.into()), ("tcUrl", format!("rtmp://127.0.0.1/{app}").into())]),
            ],
        );
        // Read the raw reply: its framing is broken for a spec-following client (see
        // `refused_connect_error_is_readable_at_the_default_chunk_size`), but its content is all there.
        let reply = read_until_closed(&mut c.sock);
        for want in ["_error", "NetConnection.Connect.Rejected", expect] {
            assert!(contains(&reply, want.as_bytes()), "connect to {app:?}: no {want:?} in the reply");
        }
        assert!(!contains(&reply, b"_result"), "connect to {app:?} succeeded");
        let port = c.sock.local_addr().unwrap().port();
        let reason = logged_end(srv, port);
        assert!(reason.contains(expect), "connect to {app:?} ended with {reason:?}");
    }
    let r = http_get(srv.http_port, "/nosuch/steady.flv").expect("HTTP response");
    assert_eq!(r.status, 404);
    let j = r.json();
    assert_eq!(j["error"], "unknown_app");
    assert!(j["detail"].as_str().unwrap().contains("unknown app"), "{j}");
}

/// Everything the server sends until it closes the connection (bounded wait).
fn read_until_closed(sock: &mut TcpStream) -> Vec<u8> {
    sock.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut out = Vec::new();
    let mut b = [0u8; 4096];
    loop {
        assert!(Instant::now() < deadline, "connection not closed");
        match sock.read(&mut b) {
            Ok(0) => return out,
            Ok(n) => out.extend_from_slice(&b[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return out,
        }
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn hijack_the_healthy_stream(srv: &Server) {
    let mut c = live_session(srv);
    publish(&mut c, "steady".into());
    let (code, desc) = refusal(srv, &mut c, "onStatus");
    assert_eq!(code, "NetStream.Publish.BadName");
    assert!(desc.contains("already being published"), "{desc}");
}

#[test]
fn malformed_commands_bad_names_and_unknown_targets_are_refused_with_a_reason() {
    let mut srv = Server::start("");
    let healthy = HealthyStream::start(&srv, "steady");
    run_parallel(
        &srv,
        &[
            ("AMF with wrong types", amf_with_wrong_types),
            ("unknown streams", unknown_streams),
            ("bad stream names", bad_stream_names),
            ("unknown apps", unknown_apps),
            ("hijack the healthy stream", hijack_the_healthy_stream),
        ],
    );
    healthy.finish(&mut srv);
}

// ---------------------------------------------------------------------------------------------------------
// Connection floods
// ---------------------------------------------------------------------------------------------------------

/// Keeps `n` silent TCP connections open to `port` until `stop`, replacing any livegate closes. Returns the
/// connections open at the end and how many were opened in all.
fn hold_idle_connections(port: u16, n: usize, stop: &AtomicBool, ready: mpsc::Sender<()>) -> (Vec<TcpStream>, usize) {
    let open = || {
        let s = TcpStream::connect(("127.0.0.1", port)).expect("open an idle connection");
        s.set_nonblocking(true).unwrap();
        s
    };
    let mut socks: Vec<TcpStream> = (0..n).map(|_| open()).collect();
    let mut opened = n;
    let _ = ready.send(());
    // Replaced as soon as livegate closes one, until told to stop.
    // (The hour only bounds a test that forgot to say stop.)
    wait_until(Duration::from_secs(3600), || {
        for s in socks.iter_mut() {
            if closed_now(s) {
                *s = open();
                opened += 1;
            }
        }
        stop.load(Ordering::Relaxed)
    });
    (socks, opened)
}

/// Non-blocking: has livegate closed this silent connection?
fn closed_now(s: &mut TcpStream) -> bool {
    let mut b = [0u8; 64];
    match s.read(&mut b) {
        Ok(0) => true,
        Ok(n) => panic!("livegate sent {n} bytes to a client that never sent a byte"),
        Err(e) if e.kind() == ErrorKind::WouldBlock => false,
        Err(_) => true,
    }
}

#[test]
fn a_thousand_idle_connections_neither_block_service_nor_outlive_the_handshake_timeout() {
    const IDLE: usize = 1000;
    // The flood comes from one address here; the per-address limit (which would cut it at 256) has its own test.
    let mut srv = Server::start("[rtmp]\nhandshake_timeout_secs = 2.0\nmax_connections_per_addr = 0\n");
    let healthy = HealthyStream::start(&srv, "steady");
    let stop = Arc::new(AtomicBool::new(false));
    let (ready_tx, ready_rx) = mpsc::channel();
    let keeper = std::thread::spawn({
        let (port, stop) = (srv.rtmp_port, stop.clone());
        move || hold_idle_connections(port, IDLE, &stop, ready_tx)
    });
    ready_rx.recv_timeout(Duration::from_secs(60)).expect("idle connections opened");

    // With ~1000 silent connections held open, livegate still serves everyone else.
    assert_eq!(http_get(srv.http_port, "/healthz").map(|r| r.status), Some(200), "/healthz");
    let mut flv = FlvClient::connect(srv.http_port, "/live/steady.flv", None);
    assert_eq!(flv.status, 200);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match flv.next_tag(Duration::from_secs(1)) {
            Some(t) if is_video_keyframe(&t) => break,
            _ => assert!(Instant::now() < deadline && !flv.eof, "new HTTP-FLV reader got no keyframe"),
        }
    }
    drop(flv);
    let mut rtmp = live_session(&srv);
    play(&mut rtmp, "steady".into());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match rtmp.next_message(Duration::from_secs(1)) {
            Some(m) if m.type_id == message::VIDEO => break,
            _ => assert!(Instant::now() < deadline, "new RTMP player got no video"),
        }
    }
    drop(rtmp);
    let _fresh = push(&media("short"), &srv.rtmp_url("fresh"));
    srv.wait_live("fresh");
    let mut flv = FlvClient::connect(srv.http_port, "/live/fresh.flv", None);
    assert_eq!(flv.status, 200);
    assert!(flv.next_tag(Duration::from_secs(10)).is_some(), "reader of the new publisher got nothing");
    drop(flv);

    // Stop replacing them: every idle connection is then closed by the 2 s handshake timeout.
    stop.store(true, Ordering::Relaxed);
    let (mut open, opened) = keeper.join().expect("idle connection keeper");
    wait_until(Duration::from_secs(30), || {
        open.retain_mut(|s| !closed_now(s));
        open.is_empty()
    });
    assert!(open.is_empty(), "{} of {opened} idle connections were never closed", open.len());
    let mut logged = 0;
    let all_logged = wait_until(Duration::from_secs(10), || {
        logged = srv.log_text().matches("connection ended reason=no handshake within 2s").count();
        logged >= opened
    });
    assert!(all_logged, "{logged} of {opened} idle connections logged the handshake timeout");
    healthy.finish(&mut srv);
}

// ---------------------------------------------------------------------------------------------------------
// Known livegate bugs: these fail until src/ is fixed.
// ---------------------------------------------------------------------------------------------------------

/// A refused `connect` gets its `_error` chunked at livegate's 4096-byte outbound chunk size, but the Set
/// Chunk Size announcing that is only sent on success: a client still at the default 128 misparses any
/// `_error` longer than 128 bytes (every unknown-app refusal is), and ffmpeg reports only "Input/output error".
#[test]
fn refused_connect_error_is_readable_at_the_default_chunk_size() {
    let srv = Server::start("");
    let mut c = handshaken(&srv);
    let msgs = c.connect_app("nosuch");
    let st = statuses(&msgs);
    assert_eq!(st.len(), 1, "{st:?}");
    assert_eq!(st[0].0, "NetConnection.Connect.Rejected");
    assert!(st[0].1.contains("unknown app \"nosuch\""), "{}", st[0].1);
    // The same before connect: a publish refusal with a long description.
    let mut c = handshaken(&srv);
    publish(&mut c, "x".repeat(200).into());
    let st = statuses(&c.read_until_command("onStatus", Duration::from_secs(5)));
    assert_eq!(st.len(), 1, "{st:?}");
    assert_eq!(st[0].0, "NetStream.Publish.BadName");
}

/// `[rtmp] idle_timeout_secs` is documented as "a connection that neither publishes nor plays within this many
/// seconds is closed", but the session restarted the timer on every byte it read: a peer that announces a
/// message (60 KB here, under the 64 KiB a connection may hold before publishing) and then trickles one byte at
/// a time held its connection (and buffer) forever.
#[test]
fn a_trickling_length_lie_is_closed_by_the_idle_timeout() {
    let srv = Server::start("[rtmp]\nidle_timeout_secs = 2.0\n");
    let mut c = handshaken(&srv);
    c.sock.write_all(&chunk_header(3, 60_000, message::COMMAND_AMF0)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut closed = false;
    while !closed && Instant::now() < deadline {
        closed = c.sock.write_all(&[0x05]).is_err() || closed_by_peer(&mut c.sock, Duration::from_millis(250));
    }
    assert!(closed, "a peer trickling a 16 MiB message was still connected after 15 s (idle timeout 2 s)");
    let reason = logged_end(&srv, c.sock.local_addr().unwrap().port());
    assert!(reason.contains("idle"), "{reason}");
}

/// Video livegate cannot carry, written here by hand as encoders send it: AV1 and VP9 as Enhanced RTMP
/// (OBS 30+), VP6 as classic FLV, and an HEVC sequence header with no parameter sets (nothing could decode the
/// stream). The publish is ended with the reason, never turned into a silent audio-only stream.
#[test]
fn video_livegate_cannot_carry_is_refused_with_the_reason_not_dropped() {
    let srv = Server::start("[hub]\nreconnect_grace_secs = 0.0\n");
    // Enhanced RTMP: IsExHeader | keyframe (1 << 4) | PacketType 0 (sequence start), fourcc, then a record.
    let enhanced = |fourcc: &[u8; 4], record: &[u8]| {
        let mut t = vec![0x80 | 0x10];
        t.extend_from_slice(fourcc);
        t.extend_from_slice(record);
        t
    };
    // An hvcC with its 22 bytes of profile fields and no arrays.
    let empty_hvcc = [1, 1, 0x60, 0, 0, 0, 0x90, 0, 0, 0, 0, 0, 93, 0xf0, 0, 0xfc, 0xfd, 0xf8, 0xf8, 0, 0, 0x0f, 0];
    let cases = [
        ("av1", enhanced(b"av01", &[0x81, 0, 0x0c, 0]), "AV1"),
        ("vp9", enhanced(b"vp09", &[1, 0, 0, 0]), "VP9"),
        ("vp6", vec![0x14, 0, 0, 0, 0], "VP6"),
        ("hevc-noparams", enhanced(b"hvc1", &empty_hvcc), "HEVC decoder configuration has no VPS"),
    ];
    for (name, tag, words) in cases {
        let mut c = live_session(&srv);
        publish(&mut c, name.into());
        let st = statuses(&c.read_until_command("onStatus", Duration::from_secs(5)));
        assert_eq!(st[0].0, "NetStream.Publish.Start", "{st:?}");
        // Audio first (an AAC sequence header), then the video.
        c.send_raw_message(4, message::AUDIO, 1, 0, &[0xAF, 0, 0x12, 0x10]);
        c.send_raw_message(6, message::VIDEO, 1, 0, &tag);
        let st = statuses(&c.read_until_command("onStatus", Duration::from_secs(5)));
        let failed = st.iter().find(|(code, _)| code == "NetStream.Publish.Failed");
        assert!(failed.is_some_and(|(_, d)| d.contains(words) && d.contains("H.264")), "{name}: {st:?}");
        assert!(c.closed_within(Duration::from_secs(5)), "{name}: the publisher is disconnected");
        assert!(
            wait_until(Duration::from_secs(5), || srv.stream_json(name).is_none_or(|j| j["publisher"].is_null())),
            "{name} lives on as an audio-only stream"
        );
    }
}
