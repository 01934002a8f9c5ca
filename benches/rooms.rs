//! livegate-rooms: what rooms cost and how fast their events are (issue #11's figures), against a release
//! build it starts on free loopback ports:
//!
//! 1. event latency: a member's first video frame leaving its RTMP publisher → `REMOTE_VIDEO_ADD` read from
//!    another member's event socket, over `--joins` rooms (p50/p99/max);
//! 2. enter-to-first-remote-frame for a mini-program member: its enter request → the first video frame of the
//!    other member's stream read from the HTTP-FLV play URL the enter answer gave (rtc mode), over `--entries`;
//! 3. `--rooms` concurrent rooms of 4 audio-only members (each publishes AAC over RTMP and plays the other
//!    three over HTTP-FLV): livegate's CPU and RSS per room over a `--window`.
//!
//! Timing figures belong here, not in tests; the tool prints them as per-unit costs.

// Shared with livegate-load, which uses the parts this tool does not.
#[allow(dead_code)]
#[path = "load/input.rs"]
mod input;
#[allow(dead_code)]
#[path = "load/rtmp_client.rs"]
mod rtmp_client;
#[allow(dead_code)]
#[path = "load/sys.rs"]
mod sys;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::Parser;
use futures_util::StreamExt;
use livegate::media::amf0::Amf0Value;
use livegate::media::flv::{FlvParser, TAG_AUDIO, TAG_VIDEO};
use livegate::rtmp::chunk;
use livegate::rtmp::message::{AUDIO, VIDEO};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const APP: u32 = 1400000123;
const KEY: &str = "livegate-rooms-bench-secret-key-0123456789";

#[derive(Parser)]
#[command(about = "Rooms: event latency, enter-to-first-frame, and the cost of concurrent audio rooms")]
struct Args {
    /// The livegate binary (a release build).
    #[arg(long, default_value = "target/release/livegate")]
    livegate: PathBuf,
    /// Rooms for the event latency (one join and one first frame each).
    #[arg(long, default_value_t = 100)]
    joins: usize,
    /// Mini-program members entering a room with a live member (enter → first remote frame).
    #[arg(long, default_value_t = 20)]
    entries: usize,
    /// Concurrent rooms of 4 audio-only members.
    #[arg(long, default_value_t = 200)]
    rooms: usize,
    /// Seconds the concurrent rooms are measured for, after they are all up.
    #[arg(long, default_value_t = 20)]
    window: u64,
    /// hub.buffer_secs for the run (what each stream keeps: the largest part of a room's memory).
    #[arg(long, default_value_t = 10.0)]
    buffer_secs: f64,
}

fn main() -> Result<()> {
    let args = Args::parse();
    sys::raise_nofile("auto")?;
    let input = Arc::new(input::load(&input::ensure(None, false)?)?);
    let extra = format!(
        "[hub]\nbuffer_secs = {}\n[rooms]\nmax_rooms = {}\nmember_timeout_secs = 600.0\napps = [{{ sdk_app_id = {APP}, secret_key = \"{KEY}\" }}]\n",
        args.buffer_secs,
        args.rooms + args.joins + args.entries + 10
    );
    let mut lg = sys::Livegate::spawn(&args.livegate, &extra, "warn")?;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let r = rt.block_on(run(&args, &lg, input));
    lg.stop();
    r
}

async fn run(args: &Args, lg: &sys::Livegate, input: Arc<input::Input>) -> Result<()> {
    let http = lg.http;
    println!("livegate {} (pid {}), rooms app {APP}", lg.http, lg.pid);

    // 1. Event latency.
    let mut lat = Vec::with_capacity(args.joins);
    for i in 0..args.joins {
        let room = format!("lat{i}");
        let a = enter(http, &room, "watcher", "web").await?;
        let mut sock = socket(&a).await?;
        let b = enter(http, &room, "pusher", "miniprogram").await?;
        let (sent, pusher) = first_frame(lg.rtmp, &b, &input).await?;
        let got = wait_event(&mut sock, "REMOTE_VIDEO_ADD").await?;
        lat.push(got.saturating_duration_since(sent));
        drop(pusher);
        leave(http, &room, &a).await?;
        leave(http, &room, &b).await?;
    }
    report("event latency (first video frame sent -> REMOTE_VIDEO_ADD read)", &mut lat);

    // 2. Enter-to-first-remote-frame, mini-program member over HTTP-FLV in rtc mode.
    let stop = Arc::new(AtomicBool::new(false));
    let mut firsts = Vec::with_capacity(args.entries);
    for i in 0..args.entries {
        let room = format!("ent{i}");
        let p = enter(http, &room, "pusher", "miniprogram").await?;
        let push = tokio::spawn(publish(lg.rtmp, url_of(&p["push"]["rtmp"])?, input.clone(), false, stop.clone()));
        // Let the push reach its second keyframe, as a member entering a running call would find it.
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let t0 = Instant::now();
        let m = enter(http, &room, "viewer", "miniprogram").await?;
        let other = m["members"].as_array().and_then(|a| a.first()).ok_or_else(|| anyhow!("no member: {m}"))?;
        let flv = format!("{}&mode=rtc", url_of(&other["play"]["flv"])?);
        let (t1, _) = flv_first(&flv, Some(TAG_VIDEO)).await?;
        firsts.push(t1 - t0);
        stop.store(true, Ordering::Relaxed);
        let _ = push.await;
        stop.store(false, Ordering::Relaxed);
        leave(http, &room, &p).await?;
        leave(http, &room, &m).await?;
    }
    report("enter -> first remote video frame (HTTP-FLV, rtc mode)", &mut firsts);

    // 3. Concurrent audio-only rooms.
    let pid = lg.pid_str();
    let rss0 = sys::status_kib(&pid, "VmRSS").unwrap_or(0);
    let frames = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for r in 0..args.rooms {
        let room = format!("aud{r}");
        let mut members = Vec::new();
        for u in 0..4 {
            members.push(enter(http, &room, &format!("u{u}"), "miniprogram").await?);
        }
        for m in &members {
            tasks.push(tokio::spawn(publish(lg.rtmp, url_of(&m["push"]["rtmp"])?, input.clone(), true, stop.clone())));
        }
        // Each member plays the others, from the URLs the room hands it once their audio is live (the room says
        // so: audio = true from the media).
        let deadline = Instant::now() + Duration::from_secs(20);
        while !get_room(http, &room, &members[0]).await?["members"]
            .as_array()
            .is_some_and(|a| a.len() == 4 && a.iter().all(|m| m["audio"] == true))
        {
            if Instant::now() > deadline {
                bail!("room {room}: the members' audio never showed");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for m in &members {
            let view = get_room(http, &room, m).await?;
            for o in view["members"].as_array().into_iter().flatten() {
                if o["user_id"] == m["user_id"] {
                    continue;
                }
                let url = format!("{}&mode=rtc", url_of(&o["play"]["flv"])?);
                let (frames, stop) = (frames.clone(), stop.clone());
                tasks.push(tokio::spawn(async move { flv_count(&url, frames, stop).await }));
            }
        }
    }
    // Warm up, then measure.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (cpu0, f0, t0) = (sys::cpu_secs(&pid).unwrap_or(0.0), frames.load(Ordering::Relaxed), Instant::now());
    tokio::time::sleep(Duration::from_secs(args.window)).await;
    let (cpu1, f1, secs) =
        (sys::cpu_secs(&pid).unwrap_or(0.0), frames.load(Ordering::Relaxed), t0.elapsed().as_secs_f64());
    let rss1 = sys::status_kib(&pid, "VmRSS").unwrap_or(0);
    stop.store(true, Ordering::Relaxed);
    let mut failed = 0;
    let mut reasons = std::collections::BTreeMap::<String, usize>::new();
    for t in tasks {
        match t.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                failed += 1;
                let e = e.to_string();
                *reasons.entry(e.split(": ").last().unwrap_or(&e).to_owned()).or_default() += 1;
            }
            Err(e) => {
                failed += 1;
                *reasons.entry(e.to_string()).or_default() += 1;
            }
        }
    }
    if !reasons.is_empty() {
        println!("client failures: {reasons:?}");
    }
    let cores = (cpu1 - cpu0) / secs;
    let n = args.rooms as f64;
    println!(
        "{} rooms x 4 audio-only members ({} publishers, {} HTTP-FLV readers): livegate {:.3} cores = {:.2} ms CPU per \
         room-second; RSS {} -> {} KiB = {:.0} KiB per room; {:.0} audio frames/s delivered ({:.1} per reader-second, \
         ~43 expected); {failed} clients failed",
        args.rooms,
        args.rooms * 4,
        args.rooms * 12,
        cores,
        cores * 1000.0 / n,
        rss0,
        rss1,
        rss1.saturating_sub(rss0) as f64 / n,
        (f1 - f0) as f64 / secs,
        (f1 - f0) as f64 / secs / (n * 12.0),
    );
    Ok(())
}

fn report(what: &str, v: &mut [Duration]) {
    if v.is_empty() {
        return;
    }
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let p = |q: f64| v[((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1];
    println!(
        "{what}: n={} p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        v.len(),
        ms(p(0.5)),
        ms(p(0.99)),
        ms(v[v.len() - 1])
    );
}

fn url_of(v: &Value) -> Result<String> {
    v.as_str().map(str::to_owned).ok_or_else(|| anyhow!("no URL in {v}"))
}

fn user_sig(user: &str) -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs() as i64;
    livegate::usersig::sign(KEY.as_bytes(), APP, user, now, 86_400, None)
}

/// One HTTP/1.0 request with a JSON body; the answer's body as JSON.
async fn request(http: SocketAddr, method: &str, path: &str, token: Option<&str>, body: &Value) -> Result<Value> {
    let body = body.to_string();
    let mut s = TcpStream::connect(http).await?;
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let head = format!(
        "{method} {path} HTTP/1.0\r\nHost: {http}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{auth}\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await?;
    s.write_all(body.as_bytes()).await?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await?;
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n").ok_or_else(|| anyhow!("no HTTP head"))?;
    let status = String::from_utf8_lossy(&raw[..end]).split_whitespace().nth(1).unwrap_or("").to_owned();
    let v: Value = serde_json::from_slice(&raw[end + 4..]).unwrap_or(Value::Null);
    if !status.starts_with('2') {
        bail!("{method} {path}: {status} {v}");
    }
    Ok(v)
}

async fn enter(http: SocketAddr, room: &str, user: &str, client: &str) -> Result<Value> {
    let body = json!({"sdkAppId": APP, "userId": user, "userSig": user_sig(user), "client": client});
    request(http, "POST", &format!("/api/v1/rooms/{room}/enter"), None, &body).await
}

async fn leave(http: SocketAddr, room: &str, m: &Value) -> Result<()> {
    request(http, "POST", &format!("/api/v1/rooms/{room}/leave"), m["token"].as_str(), &json!({})).await.map(drop)
}

async fn get_room(http: SocketAddr, room: &str, m: &Value) -> Result<Value> {
    request(http, "GET", &format!("/api/v1/rooms/{room}"), m["token"].as_str(), &json!({})).await
}

type Ws = tokio_tungstenite::WebSocketStream<TcpStream>;

async fn socket(m: &Value) -> Result<Ws> {
    let url = url_of(&m["events_url"])?;
    let host = url.trim_start_matches("ws://").split('/').next().unwrap_or("").to_owned();
    let tcp = TcpStream::connect(&host).await?;
    let (ws, _) = tokio_tungstenite::client_async(url.as_str(), tcp).await.context("event socket")?;
    Ok(ws)
}

/// Reads the socket until `event`; the instant it was read.
async fn wait_event(ws: &mut Ws, event: &str) -> Result<Instant> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let m = tokio::time::timeout_at(deadline, ws.next()).await.map_err(|_| anyhow!("no {event} within 20 s"))?;
        let m = m.ok_or_else(|| anyhow!("socket closed"))??;
        if let Ok(t) = m.to_text() {
            if serde_json::from_str::<Value>(t).is_ok_and(|v| v["event"] == event) {
                return Ok(Instant::now());
            }
        }
    }
}

/// An RTMP publisher of the room URL `url`: connected and publishing.
async fn connect_publisher(rtmp: SocketAddr, url: &str) -> Result<(rtmp_client::RtmpConn, u32)> {
    let s = |v: &str| Amf0Value::String(v.into());
    let n = Amf0Value::Number;
    let rest = url.split_once("://").map(|x| x.1).unwrap_or(url);
    let mut parts = rest.splitn(3, '/');
    let (_, app, name) = (parts.next(), parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let mut c = rtmp_client::RtmpConn::open(rtmp, 64 * 1024).await?;
    c.connect_app(app, &format!("rtmp://{rtmp}/{app}"), true).await?;
    c.set_chunk_size(60_000).await?;
    let sid = c.create_stream(2.0).await?;
    c.command(sid, &[s("publish"), n(3.0), Amf0Value::Null, s(name), s("live")]).await?;
    c.wait_status("NetStream.Publish.Start").await?;
    Ok((c, sid))
}

/// Publishes the sequence headers and the first keyframe; the instant just before that keyframe was written.
async fn first_frame(rtmp: SocketAddr, m: &Value, input: &input::Input) -> Result<(Instant, rtmp_client::RtmpConn)> {
    let (mut c, sid) = connect_publisher(rtmp, &url_of(&m["push"]["rtmp"])?).await?;
    for t in input.tags.iter().filter(|t| t.header && t.tag_type != livegate::media::flv::TAG_SCRIPT) {
        let ty = if t.tag_type == TAG_VIDEO { VIDEO } else { AUDIO };
        chunk::encode_message(&mut c.out, c.out_chunk, 6, 0, ty, sid, &[&t.body]);
    }
    c.flush().await?;
    let key = input.tags.iter().find(|t| t.tag_type == TAG_VIDEO && !t.header).ok_or_else(|| anyhow!("no frame"))?;
    chunk::encode_message(&mut c.out, c.out_chunk, 6, 0, VIDEO, sid, &[&key.body]);
    let sent = Instant::now();
    c.flush().await?;
    Ok((sent, c))
}

/// Publishes the input in real time (audio only: its AAC tags), looped, until `stop`.
async fn publish(
    rtmp: SocketAddr,
    url: String,
    input: Arc<input::Input>,
    audio_only: bool,
    stop: Arc<AtomicBool>,
) -> Result<()> {
    let (mut c, sid) = connect_publisher(rtmp, &url).await?;
    let start = tokio::time::Instant::now();
    let mut buf = vec![0u8; 16 * 1024];
    for lap in 0u64.. {
        for t in &input.tags {
            if (lap > 0 && t.header)
                || (audio_only && t.tag_type != TAG_AUDIO)
                || t.tag_type == livegate::media::flv::TAG_SCRIPT
            {
                continue;
            }
            if stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            let rel = (t.timestamp - input.first_ts) as u64 + lap * input.loop_ms as u64;
            let due = start + Duration::from_millis(rel);
            // Drain what the server sends (acks, pings) while waiting for the tag's instant.
            loop {
                tokio::select! {
                    _ = tokio::time::sleep_until(due) => break,
                    r = c.sock.read(&mut buf) => if r? == 0 { bail!("livegate closed a publisher") },
                }
            }
            let (ty, csid) = if t.tag_type == TAG_VIDEO { (VIDEO, 6) } else { (AUDIO, 4) };
            chunk::encode_message(
                &mut c.out,
                c.out_chunk,
                csid,
                (rel + input.first_ts as u64) as u32,
                ty,
                sid,
                &[&t.body],
            );
            c.flush().await?;
        }
    }
    Ok(())
}

/// GETs an HTTP-FLV URL (HTTP/1.0: the body runs until the server closes) and parses its tags.
async fn flv_open(url: &str) -> Result<(TcpStream, FlvParser)> {
    let rest = url.strip_prefix("http://").ok_or_else(|| anyhow!("not http: {url}"))?;
    let (host, path) = rest.split_once('/').ok_or_else(|| anyhow!("no path: {url}"))?;
    let mut s = TcpStream::connect(host).await?;
    s.write_all(format!("GET /{path} HTTP/1.0\r\nHost: {host}\r\n\r\n").as_bytes()).await?;
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut b).await? == 0 {
            bail!("{url}: closed before its head");
        }
        head.push(b[0]);
    }
    if !head.starts_with(b"HTTP/1.1 200") && !head.starts_with(b"HTTP/1.0 200") {
        bail!("{url}: {}", String::from_utf8_lossy(&head).lines().next().unwrap_or(""));
    }
    Ok((s, FlvParser::new()))
}

/// The instant the first tag of `kind` (any tag: None) arrives.
async fn flv_first(url: &str, kind: Option<u8>) -> Result<(Instant, u8)> {
    let (mut s, mut p) = flv_open(url).await?;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await??;
        if n == 0 {
            bail!("{url}: ended before a frame");
        }
        p.feed(&buf[..n]);
        while let Some(t) = p.next_tag().map_err(|e| anyhow!("{e}"))? {
            let media = t.body.len() > 1 && t.body[1] == 1;
            if kind.is_none_or(|k| k == t.tag_type) && (media || t.tag_type == TAG_AUDIO && t.body[1] == 1) {
                return Ok((Instant::now(), t.tag_type));
            }
        }
    }
}

/// Counts the audio frames an HTTP-FLV reader receives until `stop`.
async fn flv_count(url: &str, frames: Arc<AtomicU64>, stop: Arc<AtomicBool>) -> Result<()> {
    let (mut s, mut p) = flv_open(url).await?;
    let mut buf = vec![0u8; 16 * 1024];
    while !stop.load(Ordering::Relaxed) {
        let n = match tokio::time::timeout(Duration::from_millis(500), s.read(&mut buf)).await {
            Ok(r) => r?,
            Err(_) => continue,
        };
        if n == 0 {
            bail!("{url}: ended");
        }
        p.feed(&buf[..n]);
        while let Some(t) = p.next_tag().map_err(|e| anyhow!("{e}"))? {
            if t.tag_type == TAG_AUDIO && t.body.len() > 1 && t.body[1] == 1 {
                frames.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    Ok(())
}
