//! The livegate child process and what the kernel tells about processes: CPU time, peak RSS, fd limits.

use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// User + system CPU seconds of a process (`pid` is a number or "self"): its CPU-time clock (nanoseconds, all
/// its threads, exited ones included), else /proc/PID/stat (the same total in clock ticks, 10 ms steps: too
/// coarse for a few readers' cost over a short window).
pub fn cpu_secs(pid: &str) -> Option<f64> {
    cpu_clock_secs(pid).or_else(|| stat_cpu_secs(pid))
}

fn cpu_clock_secs(pid: &str) -> Option<f64> {
    let clock = if pid == "self" {
        libc::CLOCK_PROCESS_CPUTIME_ID
    } else {
        let mut clock: libc::clockid_t = 0;
        // SAFETY: clock_getcpuclockid writes into the clockid_t we pass.
        if unsafe { libc::clock_getcpuclockid(pid.parse().ok()?, &mut clock) } != 0 {
            return None;
        }
        clock
    };
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes into the timespec we pass.
    if unsafe { libc::clock_gettime(clock, &mut ts) } != 0 {
        return None;
    }
    Some(ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9)
}

fn stat_cpu_secs(pid: &str) -> Option<f64> {
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

/// Bytes the process passed to write syscalls so far (`wchar` of /proc/PID/io: files and sockets alike).
pub fn io_wchar(pid: &str) -> Option<u64> {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).ok()?;
    io.lines().find_map(|l| l.strip_prefix("wchar:")?.trim().parse().ok())
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
    /// None for a server the tool attached to (`--attach`): it is neither waited for nor stopped.
    child: Option<Child>,
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

/// Whether `bin` has the per-address connection limits (it validates a config that sets one).
fn knows_addr_limits(bin: &Path) -> bool {
    let probe = std::env::temp_dir().join(format!("livegate-load-probe-{}.toml", std::process::id()));
    if std::fs::write(&probe, "[http]\nmax_connections_per_addr = 0\n").is_err() {
        return true;
    }
    let ok = Command::new(bin).arg("check-config").arg(&probe).output().is_ok_and(|o| o.status.success());
    let _ = std::fs::remove_file(&probe);
    ok
}

impl Livegate {
    /// Starts livegate; `extra` is appended to its config (whole TOML tables other than [rtmp], [http], [log]).
    pub fn spawn(bin: &Path, extra: &str, log_level: &str) -> Result<Self> {
        if !bin.exists() {
            bail!("{} not found (build it with `cargo build --release`, or pass --livegate)", bin.display());
        }
        let (rp, hp) = free_ports()?;
        let rtmp: SocketAddr = ([127, 0, 0, 1], rp).into();
        let http: SocketAddr = ([127, 0, 0, 1], hp).into();
        // Every simulated client comes from 127.0.0.1: the per-address limits would cap a run at 256. Builds
        // from before those limits refuse the key, so it is given only to a binary that takes it (A/Bs).
        let unlimited = if knows_addr_limits(bin) { "max_connections_per_addr = 0\n" } else { "" };
        let mut cfg = format!("[rtmp]\nlisten = \"{rtmp}\"\n{unlimited}\n[http]\nlisten = \"{http}\"\n{unlimited}\n");
        cfg.push_str(extra);
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
        let mut lg = Self { child: Some(child), pid, rtmp, http, log_path, cfg_path };
        lg.wait_ready(Duration::from_secs(15))?;
        Ok(lg)
    }

    /// A livegate someone else started (`--attach PID,RTMP,HTTP`): measured, never stopped. Several tools can
    /// load one server this way (the soak: readers, publishers and WebRTC viewers at once).
    pub fn attach(spec: &str) -> Result<Self> {
        let parts: Vec<&str> = spec.split(',').collect();
        let [pid, rtmp, http] = parts[..] else { bail!("--attach takes PID,RTMP_ADDR,HTTP_ADDR, not {spec:?}") };
        let pid: u32 = pid.parse().context("--attach PID")?;
        let mut lg = Self {
            child: None,
            pid,
            rtmp: rtmp.parse().context("--attach RTMP address")?,
            http: http.parse().context("--attach HTTP address")?,
            log_path: PathBuf::new(),
            cfg_path: PathBuf::new(),
        };
        lg.wait_ready(Duration::from_secs(5))?;
        Ok(lg)
    }

    fn wait_ready(&mut self, limit: Duration) -> Result<()> {
        let t = Instant::now();
        loop {
            if let Some(st) = self.child.as_mut().map(|c| c.try_wait()).transpose()?.flatten() {
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

    /// Whether the tool started this livegate (and so stops it), rather than attaching to it.
    pub fn owned(&self) -> bool {
        self.child.is_some()
    }

    pub fn pid_str(&self) -> String {
        self.pid.to_string()
    }

    /// SIGTERM, then SIGKILL if it has not exited within 3 s.
    pub fn stop(&mut self) {
        self.stop_within(Duration::from_secs(3));
    }

    /// SIGTERM, then SIGKILL if it has not exited within `limit`. Returns how long it took to exit after
    /// SIGTERM, or None if it had to be killed (or had exited before).
    pub fn stop_within(&mut self, limit: Duration) -> Option<Duration> {
        let child = self.child.as_mut()?;
        if let Ok(Some(_)) = child.try_wait() {
            return None;
        }
        // SAFETY: kill with a pid we spawned and still own (not yet reaped).
        unsafe { libc::kill(self.pid as libc::pid_t, libc::SIGTERM) };
        let t = Instant::now();
        while t.elapsed() < limit {
            if let Ok(Some(_)) = child.try_wait() {
                return Some(t.elapsed());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }

    /// None while livegate is still running (it should be, until `stop`), else how it ended.
    pub fn exited(&mut self) -> Option<String> {
        use std::os::unix::process::ExitStatusExt;
        let Some(child) = self.child.as_mut() else {
            return (!running(&self.pid.to_string())).then(|| "the attached livegate is gone".to_owned());
        };
        match child.try_wait() {
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
        if self.child.is_some() {
            let _ = std::fs::remove_file(&self.cfg_path);
        }
    }
}

/// What a recording directory holds: bytes by kind, and the sidecars' statuses.
#[derive(Default, Debug)]
pub struct DirUsage {
    /// .flv, .mp4 and .ts files.
    pub media_bytes: u64,
    pub media_files: u64,
    /// .m3u8 playlists.
    pub playlist_bytes: u64,
    /// .rec.json sidecars and anything else (the callback outbox).
    pub other_bytes: u64,
    /// Sidecar `status` -> count (recording, complete, failed).
    pub statuses: std::collections::BTreeMap<String, u64>,
    /// Sum of the sidecars' `duration`, seconds.
    pub recorded_secs: f64,
    /// Stream names (`stream_id`) that have at least one sidecar.
    pub streams: std::collections::BTreeSet<String>,
}

impl DirUsage {
    pub fn total_bytes(&self) -> u64 {
        self.media_bytes + self.playlist_bytes + self.other_bytes
    }
}

/// Walks `dir` recursively, adding up file sizes (apparent sizes) and reading the recording sidecars.
pub fn dir_usage(dir: &Path) -> DirUsage {
    fn walk(dir: &Path, u: &mut DirUsage) {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for e in entries.flatten() {
            let Ok(meta) = e.metadata() else { continue };
            let p = e.path();
            if meta.is_dir() {
                walk(&p, u);
                continue;
            }
            let name = e.file_name().to_string_lossy().into_owned();
            let len = meta.len();
            if name.ends_with(".flv") || name.ends_with(".mp4") || name.ends_with(".ts") {
                u.media_bytes += len;
                u.media_files += 1;
            } else if name.ends_with(".m3u8") {
                u.playlist_bytes += len;
            } else {
                u.other_bytes += len;
            }
            if name.ends_with(".rec.json") {
                let v: serde_json::Value =
                    std::fs::read(&p).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default();
                let status = v["status"].as_str().unwrap_or("unreadable").to_owned();
                *u.statuses.entry(status).or_default() += 1;
                u.recorded_secs += v["duration"].as_f64().unwrap_or(0.0);
                if let Some(s) = v["stream_id"].as_str() {
                    u.streams.insert(s.to_owned());
                }
            }
        }
    }
    let mut u = DirUsage::default();
    walk(dir, &mut u);
    u
}

/// The filesystem type a path is on (from /proc/self/mounts: the longest mount point that prefixes it).
pub fn fs_type(path: &Path) -> String {
    let path = path.canonicalize().unwrap_or_else(|_| path.to_owned());
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    mounts
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 3 && path.starts_with(f[1])).then(|| (f[1].len(), f[2].to_owned()))
        })
        .max_by_key(|(len, _)| *len)
        .map_or_else(|| "unknown".into(), |(_, t)| t)
}

/// (busy, total) jiffies of all CPUs together, from the first line of /proc/stat.
pub fn machine_jiffies() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let v: Vec<u64> = stat.lines().next()?.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal (guest time is already inside user).
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3)? + v.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

/// CPUs kept busy between two `machine_jiffies` samples.
pub fn busy_cpus(a: Option<(u64, u64)>, b: Option<(u64, u64)>) -> Option<f64> {
    let ((b0, t0), (b1, t1)) = (a?, b?);
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ncpu =
        stat.lines().filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit)).count();
    let ncpu = ncpu.max(1) as f64;
    (t1 > t0).then(|| (b1 - b0) as f64 / (t1 - t0) as f64 * ncpu)
}

/// The machine's UDP counters (all processes) from /proc/net/snmp: (InErrors, RcvbufErrors, SndbufErrors).
/// Loopback drops a datagram at the receiver whose socket buffer is full: RcvbufErrors counts those.
pub fn udp_errors() -> Option<(u64, u64, u64)> {
    let snmp = std::fs::read_to_string("/proc/net/snmp").ok()?;
    let mut lines = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let names: Vec<&str> = lines.next()?.split_whitespace().collect();
    let values: Vec<&str> = lines.next()?.split_whitespace().collect();
    let get = |k: &str| names.iter().position(|n| *n == k).and_then(|i| values.get(i)?.parse().ok());
    Some((get("InErrors")?, get("RcvbufErrors")?, get("SndbufErrors")?))
}
