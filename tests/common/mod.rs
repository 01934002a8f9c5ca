//! Shared harness for the end-to-end tests: a real livegate process on free loopback ports, real ffmpeg /
//! ffprobe / GStreamer clients, and small protocol clients built from livegate's own pure protocol code.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use livegate::media::amf0::Amf0Value;
use livegate::media::flv::{FlvParser, Tag};
use livegate::rtmp::{chunk, handshake, message};

/// A port that was free just now, for a server that must be named in a config before it starts (a callback
/// receiver started late); everything else binds port 0. Below Linux's ephemeral range (32768+): a port the
/// kernel handed out with bind(0) is soon reused as the source port of some client connection.
pub fn free_port() -> u16 {
    loop {
        let p = rand::random::<u16>() % 12_000 + 10_000;
        if TcpListener::bind(("127.0.0.1", p)).is_ok() && std::net::UdpSocket::bind(("127.0.0.1", p)).is_ok() {
            return p;
        }
    }
}

/// A livegate process with its own config, on free loopback ports; killed on drop.
pub struct Server {
    pub child: Child,
    pub rtmp_port: u16,
    pub http_port: u16,
    /// The HTTPS and RTMPS ports, when the config turns them on.
    pub https_port: Option<u16>,
    pub rtmps_port: Option<u16>,
    pub dir: tempdir::TempDir,
    log: PathBuf,
}

pub mod enhanced_rtmp;
pub mod redis;
pub mod room_member;

pub mod tempdir {
    use std::path::{Path, PathBuf};
    pub struct TempDir(PathBuf);
    impl TempDir {
        pub fn new(tag: &str) -> Self {
            let p = std::env::temp_dir().join(format!(
                "livegate-test-{tag}-{}-{}",
                std::process::id(),
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
            ));
            std::fs::create_dir_all(&p).unwrap();
            TempDir(p)
        }
        pub fn path(&self) -> &Path {
            &self.0
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

impl Server {
    /// Starts livegate with the default config plus `extra` TOML (tables merge key by key). It binds port 0
    /// and reports the ports the OS chose in its ready file: no port is probed and released first.
    pub fn start(extra: &str) -> Server {
        let dir = tempdir::TempDir::new("srv");
        let rec = dir.path().join("recordings");
        let cfg = format!(
            "[rtmp]\nlisten = \"127.0.0.1:0\"\n[http]\nlisten = \"127.0.0.1:0\"\n[webrtc]\nudp_mux_port = 0\n[record]\nroot = \"{}\"\n[log]\nlevel = \"livegate=debug,info\"\n{extra}",
            rec.display()
        );
        // `extra` may repeat a table header ([rtmp] ...): the tables are merged before livegate reads them.
        let path = dir.path().join("livegate.toml");
        std::fs::write(&path, dedupe_tables(&cfg)).unwrap();
        let log = dir.path().join("livegate.log");
        let ready = dir.path().join("ready.json");
        let child = Command::new(env!("CARGO_BIN_EXE_livegate"))
            .args(["serve", "--config"])
            .arg(&path)
            .arg("--ready-file")
            .arg(&ready)
            .env("NO_COLOR", "1")
            .stdout(Stdio::from(std::fs::File::create(&log).unwrap()))
            .stderr(Stdio::from(std::fs::File::options().append(true).open(&log).unwrap()))
            .spawn()
            .expect("spawn livegate");
        let mut s = Server { child, rtmp_port: 0, http_port: 0, https_port: None, rtmps_port: None, dir, log };
        let read_ready =
            || std::fs::read(&ready).ok().and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok());
        let mut ports = None;
        wait_until(Duration::from_secs(30), || {
            ports = read_ready();
            ports.is_some() || !s.is_running()
        });
        let Some(ports) = ports else { panic!("livegate did not come up:\n{}", s.log_text()) };
        let port = |k: &str| -> u16 {
            let a: SocketAddr = ports[k].as_str().and_then(|a| a.parse().ok()).unwrap_or_else(|| panic!("{ports}"));
            a.port()
        };
        s.rtmp_port = port("rtmp");
        s.http_port = port("http");
        s.https_port = ports.get("https").map(|_| port("https"));
        s.rtmps_port = ports.get("rtmps").map(|_| port("rtmps"));
        s
    }

    pub fn rtmp_url(&self, stream: &str) -> String {
        format!("rtmp://127.0.0.1:{}/live/{stream}", self.rtmp_port)
    }

    pub fn flv_url(&self, stream: &str) -> String {
        format!("http://127.0.0.1:{}/live/{stream}.flv", self.http_port)
    }

    /// The log's complete lines (livegate may be halfway through writing the last one).
    pub fn log_text(&self) -> String {
        let mut text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let end = text.rfind('\n').map_or(0, |i| i + 1);
        text.truncate(end);
        text
    }

    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    pub fn api(&self, method: &str, path: &str) -> HttpResponse {
        http_request(self.http_port, method, path, &[]).expect("API request")
    }

    pub fn stream_json(&self, name: &str) -> Option<serde_json::Value> {
        let r = self.api("GET", &format!("/api/v1/streams/live/{name}"));
        (r.status == 200).then(|| r.json())
    }

    /// Waits until the stream is live in the hub (publisher connected and media flowing).
    pub fn wait_live(&self, name: &str) -> serde_json::Value {
        let mut live = None;
        wait_until(Duration::from_secs(20), || {
            live = self
                .stream_json(name)
                .filter(|j| j["state"] == "live" && j["video"].is_object() && j["bytes_in"].as_u64().unwrap_or(0) > 0);
            live.is_some()
        });
        live.unwrap_or_else(|| panic!("stream {name} never went live:\n{}", self.log_text()))
    }

    /// The stream's newest media timestamp (ms on its timeline), once media has arrived.
    pub fn media_ms(&self, name: &str) -> Option<i64> {
        self.stream_json(name).and_then(|j| j["media_ms"].as_i64())
    }

    /// Waits until `secs` more seconds of media reached the stream, by the media's clock (a loaded machine
    /// only makes it take longer). Returns the stream's media time then.
    pub fn wait_media(&self, name: &str, secs: f64) -> i64 {
        let from = self.media_ms(name).unwrap_or(0);
        self.wait_media_at(name, from + (secs * 1000.0) as i64)
    }

    /// Waits until the stream's media time reached `ms`; returns it.
    pub fn wait_media_at(&self, name: &str, ms: i64) -> i64 {
        let limit = Duration::from_millis(ms.max(0) as u64 * 4 + 20_000);
        let mut reached = None;
        wait_until(limit, || {
            reached = self.media_ms(name).filter(|m| *m >= ms);
            reached.is_some()
        });
        reached.unwrap_or_else(|| {
            panic!("stream {name} stayed at {:?} ms, waiting for {ms}:\n{}", self.media_ms(name), self.log_text())
        })
    }

    /// Waits until the stream has no publisher (in its reconnect grace) or is gone.
    pub fn wait_unpublished(&self, name: &str) {
        assert!(
            wait_until(Duration::from_secs(20), || self.stream_json(name).is_none_or(|j| j["state"] == "waiting")),
            "stream {name} still published:\n{}",
            self.log_text()
        );
    }

    pub fn terminate(&mut self) -> std::process::ExitStatus {
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let mut status = None;
        wait_until(Duration::from_secs(15), || {
            status = self.child.try_wait().unwrap();
            status.is_some()
        });
        status.expect("livegate did not exit after SIGTERM")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- livegate log ----\n{}", self.log_text());
        }
    }
}

/// Merges repeated `[table]` sections so tests can add keys to tables the harness already opened.
fn dedupe_tables(toml_text: &str) -> String {
    let mut v: toml::Table = toml::Table::new();
    let mut sections: Vec<(Option<String>, String)> = vec![(None, String::new())];
    for line in toml_text.lines() {
        let t = line.trim();
        if t.starts_with('[') && !t.starts_with("[[") {
            sections.push((Some(t.trim_matches(|c| c == '[' || c == ']').to_owned()), String::new()));
        } else {
            sections.last_mut().unwrap().1.push_str(&format!("{line}\n"));
        }
    }
    for (name, body) in sections {
        let t: toml::Table = toml::from_str(&body).expect("test config");
        let mut target = &mut v;
        if let Some(n) = &name {
            for part in n.split('.') {
                target = target
                    .entry(part.trim().to_owned())
                    .or_insert_with(|| toml::Value::Table(toml::Table::new()))
                    .as_table_mut()
                    .unwrap();
            }
        }
        for (k, val) in t {
            target.insert(k, val);
        }
    }
    toml::to_string(&v).unwrap()
}

/// An FLV made once per machine by `ffmpeg <args> -f flv`, cached under target/test-media as `name.flv`
/// (written to a temporary name first, so parallel tests never see half a file).
fn cached_media(name: &str, args: &[String]) -> PathBuf {
    static LOCK: Mutex<()> = Mutex::new(());
    let _g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-media");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{name}.flv"));
    if path.exists() {
        return path;
    }
    let tmp = dir.join(format!("{name}.{}.tmp.flv", std::process::id()));
    let out = Command::new("ffmpeg")
        .args(["-y", "-loglevel", "error"])
        .args(args)
        .args(["-f", "flv"])
        .arg(&tmp)
        .output()
        .expect("run ffmpeg");
    assert!(out.status.success(), "ffmpeg failed: {}", String::from_utf8_lossy(&out.stderr));
    std::fs::rename(&tmp, &path).unwrap();
    path
}

/// Test media made once per machine with ffmpeg (H.264 + AAC FLV), cached under target/.
pub fn media(kind: &str) -> PathBuf {
    // 30 fps, keyframe every 2 s (60 frames), no B-frames unless asked: what live-pusher sends.
    let (size, secs, extra) = match kind {
        "360p" => ("640x360", 30, "-b:v 600k -ac 2"),
        "short" => ("320x240", 6, ""),
        // Mono AAC, as many phone pushers send.
        "mono" => ("320x240", 20, "-ac 1"),
        // B-frames, as OBS and many hardware encoders send by default (the later -bf wins).
        "bframes" => ("640x360", 30, "-b:v 600k -bf 2"),
        other => panic!("unknown test media {other}"),
    };
    let args = format!(
        "-f lavfi -i testsrc2=size={size}:rate=30 -f lavfi -i sine=frequency=440:sample_rate=44100 -t {secs} \
         -c:v libx264 -preset veryfast -g 60 -keyint_min 60 -sc_threshold 0 -bf 0 -pix_fmt yuv420p \
         -c:a aac -b:a 64k {extra}"
    );
    cached_media(kind, &args.split_whitespace().map(String::from).collect::<Vec<_>>())
}

/// A running ffmpeg publisher (`-re -c copy`, as a pre-encoded live-pusher stand-in); killed on drop.
pub struct Proc {
    pub child: Child,
    pub stderr_path: PathBuf,
    _dir: tempdir::TempDir,
}

impl Proc {
    pub fn spawn(cmd: &mut Command) -> Proc {
        Self::start(cmd, false)
    }

    fn start(cmd: &mut Command, keep_stdout: bool) -> Proc {
        let dir = tempdir::TempDir::new("proc");
        let stderr_path = dir.path().join("stderr.txt");
        let stdout = match keep_stdout {
            true => Stdio::from(std::fs::File::create(dir.path().join("stdout.txt")).unwrap()),
            false => Stdio::null(),
        };
        let child = cmd
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(Stdio::from(std::fs::File::create(&stderr_path).unwrap()))
            .spawn()
            .expect("spawn client");
        Proc { child, stderr_path, _dir: dir }
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Like `spawn`, but keeps stdout too (read it with `stdout`).
    pub fn spawn_capture(cmd: &mut Command) -> Proc {
        Self::start(cmd, true)
    }

    pub fn stdout(&self) -> String {
        std::fs::read_to_string(self.stderr_path.with_file_name("stdout.txt")).unwrap_or_default()
    }

    /// Waits for exit (killing it after `limit`) and returns whether it exited successfully.
    pub fn wait(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let mut status = None;
        wait_until(limit, || {
            status = self.child.try_wait().unwrap();
            status.is_some()
        });
        if status.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        status
    }

    pub fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn push(file: &Path, url: &str) -> Proc {
    push_args(file, url, &[])
}

pub fn push_args(file: &Path, url: &str, extra_in: &[&str]) -> Proc {
    push_with(file, url, extra_in, &[])
}

/// Pushes one track of `file` (`drop_flag` = "-an" for video only, "-vn" for audio only), paced, copied;
/// `extra_in` are input options (e.g. `-t 4`).
pub fn push_one_track(file: &Path, url: &str, drop_flag: &str, extra_in: &[&str]) -> Proc {
    push_with(file, url, extra_in, &[drop_flag])
}

fn push_with(file: &Path, url: &str, extra_in: &[&str], extra_out: &[&str]) -> Proc {
    Proc::spawn(
        Command::new("ffmpeg")
            .args(["-hide_banner", "-loglevel", "warning", "-re"])
            .args(extra_in)
            .arg("-i")
            .arg(file)
            .args(["-c", "copy"])
            .args(extra_out)
            .args(["-f", "flv", url]),
    )
}

/// What ffmpeg reports decoding all of a file (empty when it decodes cleanly).
pub fn decode_errors(path: &Path) -> String {
    let out = Command::new("ffmpeg").args(["-v", "error", "-i"]).arg(path).args(["-f", "null", "-"]).output().unwrap();
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn ffprobe(url: &str, args: &[&str]) -> Output {
    Command::new("timeout")
        .arg("30")
        .arg("ffprobe")
        .args(["-v", "error"])
        .args(args)
        .arg(url)
        .output()
        .expect("ffprobe")
}

/// Codec name, width and height of each stream ffprobe sees.
pub fn probe_streams(url: &str) -> Vec<serde_json::Value> {
    let out = ffprobe(url, &["-show_entries", "stream=codec_name,codec_type,width,height,profile", "-of", "json"]);
    assert!(out.status.success(), "ffprobe {url} failed: {}", String::from_utf8_lossy(&out.stderr));
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    j["streams"].as_array().cloned().unwrap_or_default()
}

pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// A request with a JSON body.
pub fn http_request_body(port: u16, method: &str, path: &str, body: &str) -> HttpResponse {
    let len = body.len().to_string();
    http_request_with_body(port, method, path, &[("Content-Type", "application/json"), ("Content-Length", &len)], body)
}

/// A WHEP/WHIP offer POSTed as `application/sdp`.
pub fn post_offer(port: u16, path: &str, sdp: &str) -> HttpResponse {
    let len = sdp.len().to_string();
    http_request_with_body(port, "POST", path, &[("Content-Type", "application/sdp"), ("Content-Length", &len)], sdp)
}

/// A request with a body and the given headers.
pub fn http_request_with_body(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> HttpResponse {
    try_request(port, method, path, headers, body).expect("HTTP request")
}

pub fn http_get(port: u16, path: &str) -> Option<HttpResponse> {
    http_request(port, "GET", path, &[])
}

/// A minimal HTTP/1.0 client for API calls (the server closes after the response).
pub fn http_request(port: u16, method: &str, path: &str, headers: &[(&str, &str)]) -> Option<HttpResponse> {
    try_request(port, method, path, headers, "")
}

fn try_request(port: u16, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Option<HttpResponse> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let mut req = format!("{method} {path} HTTP/1.0\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        req.push_str("Host: 127.0.0.1\r\n");
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).ok()?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).ok()?;
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    let headers = head
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    Some(HttpResponse { status, headers, body: raw[end + 4..].to_vec() })
}

/// An HTTP-FLV reader that parses tags as they arrive (HTTP/1.1, chunked transfer decoded).
pub struct FlvClient {
    sock: TcpStream,
    raw: Vec<u8>,
    pub chunked: bool,
    chunk_left: usize,
    parser: FlvParser,
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub eof: bool,
}

impl FlvClient {
    /// The client's own port (how the API's client list shows it: `addr`).
    pub fn local_port(&self) -> u16 {
        self.sock.local_addr().unwrap().port()
    }

    pub fn connect(port: u16, path: &str, rcvbuf: Option<usize>) -> FlvClient {
        let sock = match rcvbuf {
            Some(n) => {
                let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
                s.set_recv_buffer_size(n).unwrap();
                let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
                s.connect(&addr.into()).unwrap();
                TcpStream::from(s)
            }
            None => TcpStream::connect(("127.0.0.1", port)).unwrap(),
        };
        sock.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        let mut s = sock.try_clone().unwrap();
        write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
        let mut c = FlvClient {
            sock,
            raw: Vec::new(),
            chunked: false,
            chunk_left: 0,
            parser: FlvParser::new(),
            status: 0,
            headers: Vec::new(),
            eof: false,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !c.raw.windows(4).any(|w| w == b"\r\n\r\n") {
            assert!(Instant::now() < deadline && !c.eof, "no HTTP response header");
            c.fill();
        }
        let end = c.raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
        let head = String::from_utf8_lossy(&c.raw[..end]).into_owned();
        c.raw.drain(..end + 4);
        let mut lines = head.lines();
        c.status = lines.next().unwrap().split_whitespace().nth(1).unwrap().parse().unwrap();
        for l in lines {
            if let Some((k, v)) = l.split_once(':') {
                c.headers.push((k.trim().to_owned(), v.trim().to_owned()));
            }
        }
        c.chunked = c.headers.iter().any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
        c
    }

    fn fill(&mut self) -> usize {
        let mut buf = [0u8; 65536];
        match self.sock.read(&mut buf) {
            Ok(0) => {
                self.eof = true;
                0
            }
            Ok(n) => {
                self.raw.extend_from_slice(&buf[..n]);
                n
            }
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => 0,
            Err(_) => {
                self.eof = true;
                0
            }
        }
    }

    /// Moves de-chunked body bytes from `raw` into the FLV parser.
    fn pump(&mut self) {
        if !self.chunked {
            self.parser.feed(&self.raw);
            self.raw.clear();
            return;
        }
        loop {
            if self.chunk_left > 0 {
                let n = self.chunk_left.min(self.raw.len());
                if n == 0 {
                    return;
                }
                self.parser.feed(&self.raw[..n]);
                self.raw.drain(..n);
                self.chunk_left -= n;
                if self.chunk_left == 0 {
                    // The CRLF after the chunk data is consumed with the next size line.
                }
                continue;
            }
            let s = if self.raw.starts_with(b"\r\n") { 2 } else { 0 };
            let Some(pos) = self.raw[s..].windows(2).position(|w| w == b"\r\n") else { return };
            let line = String::from_utf8_lossy(&self.raw[s..s + pos]).into_owned();
            let size = usize::from_str_radix(line.trim(), 16).expect("chunk size");
            self.raw.drain(..s + pos + 2);
            if size == 0 {
                self.eof = true;
                return;
            }
            self.chunk_left = size;
        }
    }

    /// The next tag, waiting at most `limit`; None on EOF or timeout.
    pub fn next_tag(&mut self, limit: Duration) -> Option<Tag> {
        let deadline = Instant::now() + limit;
        loop {
            self.pump();
            if let Some(t) = self.parser.next_tag().expect("valid FLV") {
                return Some(t);
            }
            if self.eof || Instant::now() > deadline {
                return None;
            }
            self.fill();
        }
    }

    /// Reads every tag that arrives within `d`.
    pub fn read_for(&mut self, d: Duration) -> Vec<(Instant, Tag)> {
        let deadline = Instant::now() + d;
        let mut v = Vec::new();
        while Instant::now() < deadline {
            match self.next_tag(deadline.saturating_duration_since(Instant::now())) {
                Some(t) => v.push((Instant::now(), t)),
                None if self.eof => break,
                None => {}
            }
        }
        v
    }
}

pub fn is_video_keyframe(t: &Tag) -> bool {
    t.tag_type == 9 && t.body.len() > 1 && t.body[0] == 0x17 && t.body[1] == 1
}

pub fn is_video_frame(t: &Tag) -> bool {
    t.tag_type == 9 && t.body.len() > 1 && t.body[1] == 1
}

pub fn is_seq_header(t: &Tag) -> bool {
    t.body.len() > 1
        && ((t.tag_type == 9 && t.body[1] == 0) || (t.tag_type == 8 && t.body[0] >> 4 == 10 && t.body[1] == 0))
}

/// A small RTMP client built on livegate's pure protocol code, for tests that need to see exact replies.
pub struct RtmpClient {
    pub sock: TcpStream,
    dec: chunk::ChunkDecoder,
    buf: BytesMut,
    pub chunk_size: u32,
}

impl RtmpClient {
    pub fn connect(port: u16, digest: bool) -> std::io::Result<RtmpClient> {
        let mut sock = TcpStream::connect(("127.0.0.1", port))?;
        sock.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut rng = rand::thread_rng();
        let c0c1 = handshake::client_c0c1(digest, &mut rng);
        sock.write_all(&c0c1)?;
        let mut s = vec![0u8; 3073];
        sock.read_exact(&mut s)?;
        let c2 = handshake::client_c2(&c0c1, &s, &mut rng).map_err(std::io::Error::other)?;
        sock.write_all(&c2)?;
        Ok(RtmpClient { sock, dec: chunk::ChunkDecoder::new(), buf: BytesMut::new(), chunk_size: 128 })
    }

    pub fn send_command(&mut self, stream_id: u32, vals: &[Amf0Value]) {
        let body = livegate::media::amf0::encode_all(vals);
        self.send_raw_message(3, message::COMMAND_AMF0, stream_id, 0, &body);
    }

    pub fn send_raw_message(&mut self, csid: u32, type_id: u8, stream_id: u32, ts: u32, body: &[u8]) {
        let mut out = Vec::new();
        chunk::encode_message(&mut out, self.chunk_size, csid, ts, type_id, stream_id, &[body]);
        let _ = self.sock.write_all(&out);
    }

    pub fn connect_app(&mut self, app: &str) -> Vec<chunk::Message> {
        self.send_command(
            0,
            &[
                Amf0Value::String("connect".into()),
                Amf0Value::Number(1.0),
                Amf0Value::object(&[
                    ("app", Amf0Value::String(app.into())),
                    ("tcUrl", Amf0Value::String(format!("rtmp://127.0.0.1/{app}"))),
                ]),
            ],
        );
        self.read_until_command("_result", Duration::from_secs(5))
    }

    /// `createStream` then `publish` of `name` on app `live`; returns what the server answered.
    pub fn publish(&mut self, name: &str) -> Vec<chunk::Message> {
        self.send_command(0, &[Amf0Value::String("createStream".into()), Amf0Value::Number(2.0), Amf0Value::Null]);
        self.read_until_command("_result", Duration::from_secs(5));
        self.send_command(1, &["publish".into(), Amf0Value::Number(0.0), Amf0Value::Null, name.into(), "live".into()]);
        self.read_until_command("onStatus", Duration::from_secs(5))
    }

    /// Next message, or None on timeout / EOF.
    pub fn next_message(&mut self, limit: Duration) -> Option<chunk::Message> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(m) = self.dec.decode(&mut self.buf).expect("valid chunks from livegate") {
                if m.type_id == message::SET_CHUNK_SIZE {
                    let v = u32::from_be_bytes([m.payload[0], m.payload[1], m.payload[2], m.payload[3]]);
                    self.dec.set_chunk_size(v).unwrap();
                }
                return Some(m);
            }
            if Instant::now() > deadline {
                return None;
            }
            let mut b = [0u8; 65536];
            self.sock.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
            match self.sock.read(&mut b) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&b[..n]),
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                Err(_) => return None,
            }
        }
    }

    /// Reads messages until a command named `name` (or `_error`/`onStatus` error) arrives; returns all read.
    pub fn read_until_command(&mut self, name: &str, limit: Duration) -> Vec<chunk::Message> {
        let deadline = Instant::now() + limit;
        let mut v = Vec::new();
        while let Some(m) = self.next_message(deadline.saturating_duration_since(Instant::now())) {
            let done = command_of(&m).is_some_and(|c| c.name == name || c.name == "_error");
            v.push(m);
            if done {
                break;
            }
        }
        v
    }

    /// True once the server has closed the connection.
    pub fn closed_within(&mut self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        self.sock.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        let mut b = [0u8; 4096];
        while Instant::now() < deadline {
            match self.sock.read(&mut b) {
                Ok(0) => return true,
                Ok(_) => {}
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                Err(_) => return true,
            }
        }
        false
    }
}

pub fn command_of(m: &chunk::Message) -> Option<message::Command> {
    matches!(m.type_id, message::COMMAND_AMF0 | message::COMMAND_AMF3)
        .then(|| message::Command::parse(m.type_id, &m.payload).ok())
        .flatten()
}

/// The `code` and `description` of every onStatus / _error in `msgs`.
pub fn statuses(msgs: &[chunk::Message]) -> Vec<(String, String)> {
    msgs.iter()
        .filter_map(command_of)
        .filter(|c| c.name == "onStatus" || c.name == "_error")
        .filter_map(|c| {
            let info = c.args.first()?;
            Some((
                info.get("code")?.as_str()?.to_owned(),
                info.get("description").and_then(|d| d.as_str()).unwrap_or("").to_owned(),
            ))
        })
        .collect()
}

/// Wall-clock assertions have no place in tests; this only bounds how long a test waits for something. The one
/// place a test polls: every 10 ms at first, backing off to every 100 ms.
pub fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    let mut every = Duration::from_millis(10);
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(every);
        every = (every * 2).min(Duration::from_millis(100));
    }
    f()
}

/// A live publisher's clock: returns when `media_ms` of media is due, `start` being media time 0 (as
/// `ffmpeg -re` sends). Pacing what a publisher sends, not a wait for a condition.
pub fn pace(start: Instant, media_ms: u64) {
    if let Some(wait) = Duration::from_millis(media_ms).checked_sub(start.elapsed()) {
        std::thread::sleep(wait);
    }
}

/// A one-thread HTTP server on a free port that records JSON bodies POSTed to it and answers `status`.
pub fn http_receiver(status: u16) -> (u16, std::sync::Arc<Mutex<Vec<serde_json::Value>>>) {
    let l = TcpListener::bind(("127.0.0.1", 0)).unwrap();
    let port = l.local_addr().unwrap().port();
    (port, receive_on(l, status))
}

/// The same on a given port (to start a receiver late, on the port a config already names).
pub fn http_receiver_on(port: u16, status: u16) -> std::sync::Arc<Mutex<Vec<serde_json::Value>>> {
    receive_on(TcpListener::bind(("127.0.0.1", port)).unwrap(), status)
}

fn receive_on(l: TcpListener, status: u16) -> std::sync::Arc<Mutex<Vec<serde_json::Value>>> {
    let got = std::sync::Arc::new(Mutex::new(Vec::new()));
    let g = got.clone();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut len = 0;
            let mut line = String::new();
            loop {
                line.clear();
                if r.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0; len];
            let _ = r.read_exact(&mut body);
            if let Ok(v) = serde_json::from_slice(&body) {
                g.lock().unwrap().push(v);
            }
            let mut s = s;
            let _ = write!(s, "HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        }
    });
    got
}

/// Runs `node tests/browser/{script} args…`.
pub fn node(script: &str, args: &[&str]) -> Output {
    Command::new("node")
        .arg(format!("{}/tests/browser/{script}", env!("CARGO_MANIFEST_DIR")))
        .args(args)
        .output()
        .expect("node")
}

/// Starts `node tests/browser/{script} args…` in the background, stdout kept.
pub fn node_bg(script: &str, args: &[&str]) -> Proc {
    Proc::spawn_capture(
        Command::new("node").arg(format!("{}/tests/browser/{script}", env!("CARGO_MANIFEST_DIR"))).args(args),
    )
}

/// Waits for a background browser script to finish and returns its final JSON line; fails if it failed.
pub fn browser_result(p: &mut Proc, limit: Duration) -> serde_json::Value {
    let st = p.wait(limit);
    let stdout = p.stdout();
    assert!(st.is_some_and(|s| s.success()), "browser script failed: {stdout}\n{}", p.stderr());
    let line = stdout.lines().rev().find(|l| l.starts_with('{')).expect("JSON result line");
    serde_json::from_str(line).unwrap()
}

/// Runs a browser check script and returns its JSON result line; fails with the script's output if it failed.
pub fn browser_check(script: &str, args: &[&str]) -> serde_json::Value {
    let out = node(script, args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{script} failed: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let line = stdout.lines().rev().find(|l| l.starts_with('{')).expect("JSON result line");
    serde_json::from_str(line).unwrap()
}

/// A solid-colour picture with a sine tone (H.264 + AAC FLV, keyframe every second), made once per machine:
/// a mix input whose slot and tone a test can recognise. `color` is an ffmpeg colour name.
pub fn color_media(color: &str, tone_hz: u32, size: &str) -> PathBuf {
    let args = [
        "-f".into(),
        "lavfi".into(),
        "-i".into(),
        format!("color=c={color}:s={size}:r=30"),
        "-f".into(),
        "lavfi".into(),
        "-i".into(),
        format!("sine=frequency={tone_hz}:sample_rate=44100"),
    ]
    .into_iter()
    .chain(
        "-t 10 -c:v libx264 -preset veryfast -g 30 -bf 0 -pix_fmt yuv420p -c:a aac -b:a 64k"
            .split_whitespace()
            .map(String::from),
    )
    .collect::<Vec<String>>();
    cached_media(&format!("mix-{color}-{tone_hz}-{size}"), &args)
}

/// Publishes `file` in a loop at its own pace (a live source that never ends); killed on drop.
pub fn push_loop(file: &Path, url: &str) -> Proc {
    push_args(file, url, &["-stream_loop", "-1"])
}

/// Decodes `frames` video frames of a live stream (joining at its newest keyframe) and returns the last one
/// as `width`x`height` RGB24.
pub fn last_frame_rgb(url: &str, frames: usize, width: usize, height: usize) -> Vec<u8> {
    let out = Command::new("timeout")
        .args(["20", "ffmpeg", "-v", "error", "-i", url, "-frames:v", &frames.to_string()])
        .args(["-f", "rawvideo", "-pix_fmt", "rgb24", "-s", &format!("{width}x{height}"), "-"])
        .output()
        .expect("ffmpeg");
    let size = width * height * 3;
    assert!(out.stdout.len() >= size, "no frame decoded from {url}: {}", String::from_utf8_lossy(&out.stderr));
    let n = out.stdout.len() / size;
    out.stdout[(n - 1) * size..n * size].to_vec()
}

/// Starts an API recording of live/`stream` in `formats` (e.g. `["mp4","flv"]`) under `record_id`.
/// The `livegate_fanout_parked{protocol=…}` gauge: players the stream's fan-out writes to directly.
pub fn parked(srv: &Server, protocol: &str) -> i64 {
    let m = String::from_utf8(srv.api("GET", "/metrics").body).unwrap();
    let key = format!("livegate_fanout_parked{{protocol=\"{protocol}\"}} ");
    m.lines().find_map(|l| l.strip_prefix(&key)).and_then(|v| v.parse().ok()).expect("parked gauge")
}

pub fn start_recording(srv: &Server, stream: &str, formats: &[&str], record_id: &str) {
    let body = serde_json::json!({"app": "live", "stream": stream, "formats": formats, "record_id": record_id});
    let r = http_request_body(srv.http_port, "POST", "/api/v1/recordings", &body.to_string());
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
}

/// Stops an API recording and returns its complete files as (format, path on disk, sorted codec names).
pub fn finish_recording(
    srv: &Server,
    stream: &str,
    record_id: &str,
    files: usize,
) -> Vec<(String, PathBuf, Vec<String>)> {
    assert_eq!(srv.api("DELETE", &format!("/api/v1/recordings/{record_id}")).status, 200);
    let complete = || -> Vec<serde_json::Value> {
        let j = srv.api("GET", &format!("/api/v1/recordings?stream={stream}")).json();
        j["recordings"].as_array().unwrap().iter().filter(|r| r["status"] == "complete").cloned().collect()
    };
    assert!(wait_until(Duration::from_secs(20), || complete().len() >= files), "{:?}", complete());
    complete()
        .into_iter()
        .map(|f| {
            let path = srv.dir.path().join("recordings").join(f["path"].as_str().unwrap());
            let mut codecs: Vec<String> = probe_streams(path.to_str().unwrap())
                .iter()
                .filter_map(|s| s["codec_name"].as_str().map(String::from))
                .collect();
            codecs.sort();
            (f["file_format"].as_str().unwrap().to_owned(), path, codecs)
        })
        .collect()
}

/// Presentation times of the frames whose mean luma is above mid-grey (the flashes).
pub fn flash_times(file: &Path) -> Vec<f64> {
    let graph = format!("movie={},signalstats", file.display());
    let o = Command::new("ffprobe")
        .args(["-v", "error", "-f", "lavfi", &graph])
        .args(["-show_entries", "frame=pts_time:frame_tags=lavfi.signalstats.YAVG", "-of", "csv=p=0"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| {
            let (t, y) = l.split_once(',')?;
            (y.trim().parse::<f64>().ok()? > 128.0).then(|| t.parse().ok()).flatten()
        })
        .collect()
}

/// Times at which the audio goes from silence (≥ 50 ms) to a loud beep, from the decoded PCM.
pub fn beep_onsets(file: &Path) -> Vec<f64> {
    let start: f64 = String::from_utf8_lossy(
        &ffprobe(
            file.to_str().unwrap(),
            &["-select_streams", "a", "-show_entries", "stream=start_time", "-of", "csv=p=0"],
        )
        .stdout,
    )
    .trim()
    .parse()
    .unwrap();
    let pcm = Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(file)
        .args(["-vn", "-ac", "1", "-ar", "48000", "-f", "s16le", "-"])
        .output()
        .unwrap()
        .stdout;
    let samples: Vec<f64> = pcm.chunks_exact(2).map(|b| i16::from_le_bytes([b[0], b[1]]) as f64).collect();
    let mut onsets = Vec::new();
    let mut quiet_ms = 0;
    for (i, block) in samples.chunks(48).enumerate() {
        let rms = (block.iter().map(|x| x * x).sum::<f64>() / block.len() as f64).sqrt();
        if rms > 3000.0 && quiet_ms >= 50 {
            onsets.push(start + i as f64 / 1000.0);
        }
        quiet_ms = if rms < 500.0 { quiet_ms + 1 } else { 0 };
    }
    onsets
}

/// Beep onset minus flash time (s) for every flash with an onset within 300 ms.
pub fn av_offsets(file: &Path) -> Vec<f64> {
    let onsets = beep_onsets(file);
    flash_times(file)
        .iter()
        .filter_map(|f| {
            onsets.iter().map(|a| a - f).filter(|d| d.abs() < 0.3).min_by(|a, b| a.abs().total_cmp(&b.abs()))
        })
        .collect()
}

/// Probes `url` until ffprobe names exactly an H.264 and an AAC track (it fails until the server has the
/// stream); the tracks it saw last otherwise. HLS lists each track once per program too: counted once.
pub fn wait_av(url: &str) -> Result<(), Vec<String>> {
    let mut got = Vec::new();
    let ok = wait_until(Duration::from_secs(30), || {
        let out = ffprobe(url, &["-show_entries", "stream=codec_name", "-of", "csv=p=0"]);
        got = String::from_utf8_lossy(&out.stdout).split_whitespace().map(String::from).collect();
        got.sort();
        got.dedup();
        out.status.success() && got == ["aac", "h264"]
    });
    if ok {
        Ok(())
    } else {
        Err(got)
    }
}

/// An FLV file's tags: (type, timestamp ms, body).
pub fn flv_tags(path: &Path) -> Vec<(u8, u32, Vec<u8>)> {
    let b = std::fs::read(path).unwrap();
    let mut tags = Vec::new();
    let mut i = 9 + 4;
    while i + 11 <= b.len() {
        let size = u32::from_be_bytes([0, b[i + 1], b[i + 2], b[i + 3]]) as usize;
        let ts = u32::from_be_bytes([b[i + 7], b[i + 4], b[i + 5], b[i + 6]]);
        if i + 11 + size > b.len() {
            break;
        }
        tags.push((b[i], ts, b[i + 11..i + 11 + size].to_vec()));
        i += 11 + size + 4;
    }
    tags
}
