//! A room member run by one of the Node drivers (tests/browser/room_web_member.mjs: Chromium with
//! web/livegate-room.js; room_wx_member.mjs: miniprogram/livegate-wx.js under the wx shim), for the room tests
//! that use the real client libraries.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};

use super::wait_until;

/// Long enough for Chromium to start on a loaded 2-core machine and for media to travel both ways.
pub const LIMIT: Duration = Duration::from_secs(90);

/// One member: a Node driver script in its own process group (it, its ffmpegs and its Chromium go together), fed
/// commands on stdin, its JSON lines collected as they come.
pub struct Member {
    pub name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Arc<Mutex<Vec<Value>>>,
    stderr: Arc<Mutex<String>>,
}

impl Member {
    /// Starts `tests/browser/{script}` with its config (server, sdkAppId, userId, userSig, roomId and the
    /// driver's options); `name` labels what it printed.
    pub fn spawn(script: &str, name: &str, cfg: Value) -> Member {
        let user = name;
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
        assert!(
            dir.join("node_modules/ws").exists(),
            "npm packages missing: run scripts/setup.sh (npm ci in tests/browser)"
        );
        let mut child = Command::new("node")
            .arg(dir.join(script))
            .arg(cfg.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .expect("node");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let (l, out) = (lines.clone(), child.stdout.take().unwrap());
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let v = serde_json::from_str(&line).unwrap_or_else(|_| json!({"type": "raw", "text": line}));
                l.lock().unwrap().push(v);
            }
        });
        let (e, mut err) = (stderr.clone(), child.stderr.take().unwrap());
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err.read(&mut buf) {
                if n == 0 {
                    break;
                }
                e.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Member { name: user.to_owned(), stdin: child.stdin.take(), child, lines, stderr }
    }

    pub fn send(&mut self, cmd: Value) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "{cmd}").expect("write a command");
        stdin.flush().unwrap();
    }

    pub fn lines(&self) -> Vec<Value> {
        self.lines.lock().unwrap().clone()
    }

    pub fn dump(&self) -> String {
        let mut s = format!("---- {} ----\n", self.name);
        for l in self.lines() {
            s.push_str(&l.to_string());
            s.push('\n');
        }
        s.push_str(&format!("---- {} stderr ----\n{}", self.name, self.stderr.lock().unwrap()));
        s
    }

    /// The first line matching `pred`, waiting for it up to `limit`; panics with everything the member printed.
    pub fn wait_for(&self, what: &str, limit: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        let mut found = None;
        wait_until(limit, || {
            found = self.lines().into_iter().find(|l| pred(l));
            found.is_some()
        });
        found.unwrap_or_else(|| panic!("{}: no {what} within {limit:?}\n{}", self.name, self.dump()))
    }

    /// Waits until the member has printed `n` events `name` about `user`.
    pub fn wait_events(&self, name: &str, user: &str, n: usize) {
        let ok = wait_until(LIMIT, || self.count(name, user) >= n);
        assert!(ok, "{}: {n} × {name} {user} expected, saw {}\n{}", self.name, self.count(name, user), self.dump());
    }

    pub fn count(&self, name: &str, user: &str) -> usize {
        self.events_about(user).iter().filter(|n| *n == name).count()
    }

    /// The names of the events about `user` (its `userID`), in the order they were emitted.
    pub fn events_about(&self, user: &str) -> Vec<String> {
        self.lines()
            .iter()
            .filter(|l| l["type"] == "event" && l["userID"] == user)
            .map(|l| l["name"].as_str().unwrap().to_owned())
            .collect()
    }

    pub fn events(&self, name: &str) -> Vec<Value> {
        self.lines().into_iter().filter(|l| l["type"] == "event" && l["name"] == name).collect()
    }

    /// The newest report on the player of `user`.
    pub fn player(&self, user: &str) -> Option<Value> {
        self.lines().into_iter().rev().find(|l| l["type"] == "player" && l["userID"] == user)
    }

    /// Waits until the newest report on `user`'s player satisfies `pred`; returns it.
    pub fn wait_player(&self, user: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let mut last = None;
        let ok = wait_until(LIMIT, || {
            last = self.player(user);
            last.as_ref().is_some_and(&pred)
        });
        assert!(ok, "{}: the player of {user} never showed {what}; last {last:?}\n{}", self.name, self.dump());
        last.unwrap()
    }

    pub fn num(v: &Value, k: &str) -> u64 {
        v[k].as_u64().unwrap_or(0)
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        // Closing stdin quits the driver (exitRoom is not called: a test that wants it sends "exit" first).
        drop(self.stdin.take());
        let exited = wait_until(Duration::from_secs(15), || self.child.try_wait().ok().flatten().is_some());
        // Whatever is left of its group (a hung driver, an ffmpeg, Chromium) goes.
        unsafe {
            libc::kill(-(self.child.id() as i32), libc::SIGKILL);
        }
        if !exited {
            let _ = self.child.wait();
        }
        if std::thread::panicking() || std::env::var_os("ROOM_CLIENTS_DUMP").is_some() {
            eprintln!("{}", self.dump());
        }
    }
}

/// A userSig made by livegate's own `livegate usersig` (tests/usersig.rs checks it against Tencent's package), as
/// an integrator's server makes one.
pub fn user_sig(app: u64, key: &str, user: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_livegate"))
        .args(["usersig", "--sdk-app-id", &app.to_string(), "--key", key, "--user", user, "--expire", "1h"])
        .output()
        .expect("livegate usersig");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// A room call as a member's page makes it (fetch or wx.request): JSON, the member's token, the server's own Host
/// (the URLs the room hands out are built from it).
pub fn room_call(
    srv: &super::Server,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &Value,
) -> super::HttpResponse {
    let body = body.to_string();
    let len = body.len().to_string();
    let host = format!("127.0.0.1:{}", srv.http_port);
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("Content-Type", "application/json"), ("Content-Length", len.as_str()), ("Host", &host)];
    if let Some(a) = &auth {
        headers.push(("Authorization", a));
    }
    super::http_request_with_body(srv.http_port, method, path, &headers, &body)
}

/// Starts `script` as member `user` of room `room` of app `app` (its userSig made with `key`) on `srv`, with the
/// driver options in `extra`.
pub fn start_member(
    script: &str,
    srv: &super::Server,
    (app, key): (u64, &str),
    user: &str,
    room: &str,
    extra: Value,
) -> Member {
    let mut cfg = json!({
        "server": format!("http://127.0.0.1:{}", srv.http_port),
        "sdkAppId": app,
        "userId": user,
        "userSig": user_sig(app, key, user),
        "roomId": room,
    });
    for (k, v) in extra.as_object().expect("extra is an object") {
        cfg[k] = v.clone();
    }
    Member::spawn(script, user, cfg)
}

pub type Rgb = (u8, u8, u8);

/// The colour at (x, y) of a 640x360 RGB frame.
pub fn pixel(frame: &[u8], x: usize, y: usize) -> Rgb {
    let o = (y * 640 + x) * 3;
    (frame[o], frame[o + 1], frame[o + 2])
}

/// H.264 4:2:0 at a modest bitrate shifts flat colours by a few levels; 40 still tells these apart.
pub fn near(a: Rgb, b: Rgb) -> bool {
    [(a.0, b.0), (a.1, b.1), (a.2, b.2)].iter().all(|(p, q)| (*p as i32 - *q as i32).abs() <= 40)
}

/// The centres of a 640x360 2x2 grid's cells: top-left, top-right, bottom-left, bottom-right.
pub const GRID: [(usize, usize); 4] = [(160, 90), (480, 90), (160, 270), (480, 270)];

/// Decodes a live 640x360 stream (a room's mix) until it shows each colour at its spot, within `limit`; the colours
/// last seen when it never does. A mix starts with its first anchor's media: until then its URL answers 404.
pub fn wait_pixels(url: &str, want: &[((usize, usize), Rgb)], limit: Duration) -> Result<(), Vec<Rgb>> {
    let mut last = Vec::new();
    let ok = wait_until(limit, || {
        let out = Command::new("timeout")
            .args(["20", "ffmpeg", "-v", "error", "-i", url, "-frames:v", "30"])
            .args(["-f", "rawvideo", "-pix_fmt", "rgb24", "-s", "640x360", "-"])
            .output()
            .expect("ffmpeg");
        let size = 640 * 360 * 3;
        let Some(n) = out.stdout.len().checked_div(size).filter(|n| *n > 0) else { return false };
        let frame = &out.stdout[(n - 1) * size..n * size];
        last = want.iter().map(|((x, y), _)| pixel(frame, *x, *y)).collect();
        last.iter().zip(want).all(|(g, (_, w))| near(*g, *w))
    });
    if ok {
        Ok(())
    } else {
        Err(last)
    }
}

/// The mix's 2x2 grid shows `want` (top-left, top-right, bottom-left, bottom-right).
pub fn wait_grid(url: &str, want: [Rgb; 4], limit: Duration) -> Result<(), Vec<Rgb>> {
    let want: Vec<_> = GRID.into_iter().zip(want).collect();
    wait_pixels(url, &want, limit)
}
