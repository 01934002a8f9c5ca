//! The livegate child process and what the kernel tells about processes: CPU time, peak RSS, fd limits.

use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// User + system CPU seconds of a process (`pid` is a number or "self"), from /proc/PID/stat.
pub fn cpu_secs(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses: fields are counted after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Field 3 (state) is f[0]; utime is field 14, stime field 15.
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let ticks = if ticks > 0 { ticks as f64 } else { 100.0 };
    Some((utime + stime) as f64 / ticks)
}

/// Whether the process exists and is not a zombie (exited, not yet reaped).
pub fn running(pid: &str) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
    let state = stat.rfind(')').and_then(|i| stat[i + 1..].split_whitespace().next());
    !matches!(state, Some("Z") | Some("X") | None)
}

/// A `kB` line of /proc/PID/status (VmHWM, VmRSS, ...), in KiB.
pub fn status_kib(pid: &str, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| {
        let v = l.strip_prefix(key)?.strip_prefix(':')?;
        v.split_whitespace().next()?.parse().ok()
    })
}

/// Raises RLIMIT_NOFILE: "auto" to the hard limit, a number to that (capped at the hard limit), "off" leaves
/// it. Children (livegate) inherit the raised limit. Returns (soft, hard) after the change.
pub fn raise_nofile(mode: &str) -> Result<(libc::rlim_t, libc::rlim_t)> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        bail!("getrlimit: {}", std::io::Error::last_os_error());
    }
    let want = match mode {
        "off" => return Ok((lim.rlim_cur, lim.rlim_max)),
        "auto" => lim.rlim_max,
        n => (n.parse::<u64>().context("--rlimit takes auto, off or a number")? as libc::rlim_t).min(lim.rlim_max),
    };
    if want != lim.rlim_cur {
        lim.rlim_cur = want;
        // SAFETY: setrlimit reads the struct we pass.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            bail!("setrlimit(RLIMIT_NOFILE, {want}): {}", std::io::Error::last_os_error());
        }
    }
    Ok((lim.rlim_cur, lim.rlim_max))
}

/// A livegate server started by the tool on free loopback ports; killed on drop.
pub struct Livegate {
    child: Child,
    pub pid: u32,
    pub rtmp: SocketAddr,
    pub http: SocketAddr,
    pub log_path: PathBuf,
    cfg_path: PathBuf,
}

fn free_ports() -> Result<(u16, u16)> {
    // Both listeners stay open until both ports are known, so they differ.
    let a = TcpListener::bind("127.0.0.1:0")?;
    let b = TcpListener::bind("127.0.0.1:0")?;
    Ok((a.local_addr()?.port(), b.local_addr()?.port()))
}

impl Livegate {
    pub fn spawn(bin: &Path, flush_ms: Option<u64>, log_level: &str) -> Result<Self> {
        if !bin.exists() {
            bail!("{} not found (build it with `cargo build --release`, or pass --livegate)", bin.display());
        }
        let (rp, hp) = free_ports()?;
        let rtmp: SocketAddr = ([127, 0, 0, 1], rp).into();
        let http: SocketAddr = ([127, 0, 0, 1], hp).into();
        let mut cfg = format!("[rtmp]\nlisten = \"{rtmp}\"\n\n[http]\nlisten = \"{http}\"\n\n");
        if let Some(ms) = flush_ms {
            cfg.push_str(&format!("[hub]\nflush_interval_ms = {ms}\n\n"));
        }
        cfg.push_str(&format!("[log]\nlevel = \"{log_level}\"\n"));
        let tmp = std::env::temp_dir();
        let me = std::process::id();
        let cfg_path = tmp.join(format!("livegate-load-{me}.toml"));
        let log_path = tmp.join(format!("livegate-load-{me}.log"));
        std::fs::write(&cfg_path, cfg).context("writing the temporary config")?;
        let log = std::fs::File::create(&log_path).context("creating the livegate log file")?;
        let child = Command::new(bin)
            .arg("serve")
            .arg("--config")
            .arg(&cfg_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let pid = child.id();
        let mut lg = Self { child, pid, rtmp, http, log_path, cfg_path };
        lg.wait_ready(Duration::from_secs(15))?;
        Ok(lg)
    }

    fn wait_ready(&mut self, limit: Duration) -> Result<()> {
        let t = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait()? {
                bail!("livegate exited during startup ({st}); its output:\n{}", self.log_tail(20));
            }
            let up = |a: &SocketAddr| TcpStream::connect_timeout(a, Duration::from_millis(200)).is_ok();
            if up(&self.rtmp) && up(&self.http) {
                return Ok(());
            }
            if t.elapsed() > limit {
                bail!(
                    "livegate did not open {} and {} within {limit:?}; its output:\n{}",
                    self.rtmp,
                    self.http,
                    self.log_tail(20)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn pid_str(&self) -> String {
        self.pid.to_string()
    }

    /// SIGTERM, then SIGKILL if it has not exited within 3 s.
    pub fn stop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        // SAFETY: kill with a pid we spawned and still own (not yet reaped).
        unsafe { libc::kill(self.pid as libc::pid_t, libc::SIGTERM) };
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(3) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// None while livegate is still running (it should be, until `stop`), else how it ended.
    pub fn exited(&mut self) -> Option<String> {
        use std::os::unix::process::ExitStatusExt;
        match self.child.try_wait() {
            Ok(None) => None,
            Ok(Some(st)) => Some(match (st.code(), st.signal()) {
                (Some(c), _) => format!("exited with status {c}"),
                (_, Some(sig)) => {
                    format!("killed by signal {sig}{}", if st.core_dumped() { " (core dumped)" } else { "" })
                }
                _ => format!("{st}"),
            }),
            Err(e) => Some(format!("wait failed: {e}")),
        }
    }

    /// All lines livegate printed.
    pub fn log_lines(&self) -> Vec<String> {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log_path) {
            let _ = f.read_to_string(&mut s);
        }
        s.lines().map(str::to_owned).collect()
    }

    fn log_tail(&self, n: usize) -> String {
        let l = self.log_lines();
        l[l.len().saturating_sub(n)..].join("\n")
    }
}

impl Drop for Livegate {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_file(&self.cfg_path);
    }
}
