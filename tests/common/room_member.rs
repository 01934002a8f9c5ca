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
