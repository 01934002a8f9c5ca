//! livegate-load: end-to-end load test of livegate (RTMP publish -> N HTTP-FLV, RTMP or HLS readers; or N
//! publishers with livegate recording every stream).
//!
//! Starts livegate on free loopback ports, publishes a pre-encoded FLV in real time, connects N readers and
//! reports delivered bytes, livegate's CPU per delivered MB, RSS per reader, time to first keyframe, readers
//! falling behind, and added latency (publisher send instant -> reader receive instant of the same tag).
//! With `--readers 0`: N publishers (ingest.rs), optionally auto-recorded (`--record`).

mod hls;
mod ingest;
mod input;
mod publisher;
mod reader;
mod report;
mod rtmp_client;
mod sys;
mod whep;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::Parser;

use reader::{Proto, ReaderCfg};

static BASE: OnceLock<Instant> = OnceLock::new();

/// Nanoseconds since the tool started (one monotonic clock for publisher and readers).
pub fn now_ns() -> u64 {
    BASE.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

const LONG_ABOUT: &str = "\
End-to-end load test of livegate: starts `livegate serve` on free 127.0.0.1 ports, publishes a \
pre-encoded FLV (720p30 H.264 ~1.5 Mbit/s + AAC, keyframe every 2 s) over RTMP, connects N HTTP-FLV or \
RTMP readers and reports delivered MB, livegate CPU-us per delivered MB, peak RSS per reader, time to \
first keyframe, readers behind, added latency and disconnects.

The tool itself acts as the `ffmpeg -re -c copy` publisher (tags paced in real time by their timestamps, \
the file looped with timestamps kept increasing) rather than running ffmpeg: that way it knows the \
wall-clock instant each tag left the publisher, and added latency = instant a reader received the tag \
- instant the publisher sent the tag with the same timestamp.

Added latency is taken over video frames the publisher sent after the reader had its first keyframe (the \
GOP-cache burst a joining reader gets is old media by design). MB = 10^6 bytes.

--proto hls: each reader polls http://.../live/NAME.m3u8 every hls.segment_secs / 2 and GETs every segment \
that appeared since its previous poll (the newest one only on its first poll), on one keep-alive HTTP/1.1 \
connection; reported: delivered MB, livegate CPU per delivered MB and per reader, segment fetch times, \
segments missed, failed readers.

--readers 0 --publishers N [--record flv|mp4|hls|flv,mp4,hls]: N publishers of the input (streams NAME-0 .. NAME-{N-1}, \
all tasks of one thread, connecting --ramp-ms apart) and no readers; with --record livegate auto-records \
every push to app live into a temporary directory (deleted at the end unless --keep-recordings). Reported: \
livegate CPU per recorded stream-second (and the streams one core would sustain at that rate), bytes on disk \
(summed after livegate's graceful stop) vs media bytes the publishers sent, recorded vs published seconds, \
peak RSS, and late publisher tags; with --record also the bytes livegate wrote over the whole run (write syscalls from /proc/PID/io wchar, so an MP4's fragmented copy and its finalized rewrite both count) and the CPU livegate spent from SIGTERM to exit (finishing every file: for MP4 the rewrite into a flat file). Without --record the same run gives the ingest-only baseline.

--proto whep: each reader is a webrtc-rs PeerConnection that offers recvonly H.264 (42e01f, \
packetization-mode 1) [and Opus with --whep-audio, which makes livegate run its AAC->Opus transcoder], POSTs \
the offer to http://.../whep/live/NAME (non-trickle), applies the answer and reads the RTP. livegate gets \
[webrtc] udp_mux_port = 0: all sessions on one OS-picked UDP port, where livegate sends WHEP media itself \
(--whep-no-mux: a port per session, media through webrtc-rs). The publisher adds a 0/1 ms pseudo-random code to \
video timestamps so that viewers can map RTP timestamps (pts x 90 + a random base) back to the frames sent. \
Reported: added latency RTMP->WHEP (publisher sent the frame -> its first RTP packet reached the viewer) over \
frames sent after the viewer's first RTP packet, and livegate CPU per reader over a steady window (after the \
last reader connected plus --settle-secs), as CPU-us per reader-second, % of a core and readers per core. \
--solo-secs S first runs reader 0 alone and measures livegate over S seconds (1 reader vs N). --bframes \
publishes a 720p input with B-frames (livegate then transcodes WebRTC video once per stream).";

#[derive(Parser, Debug)]
#[command(name = "livegate-load", about = "End-to-end load test of livegate (acts as the `ffmpeg -re -c copy` publisher)", long_about = LONG_ABOUT)]
pub struct Args {
    /// livegate binary to start (killed at the end).
    #[arg(long, default_value = "target/release/livegate")]
    livegate: PathBuf,
    /// Load a livegate that is already running instead of starting one: PID,RTMP_ADDR,HTTP_ADDR. Its config
    /// is its own (--merge-ms, --record, --segment-secs do not apply) and it is left running.
    #[arg(long)]
    attach: Option<String>,
    /// Pre-encoded FLV to publish. Default: target/load-input-720p.flv, created with ffmpeg if missing.
    #[arg(long)]
    input: Option<PathBuf>,
    /// Number of readers. 0: publishers only (see --publishers, --record).
    #[arg(long, default_value_t = 1000)]
    readers: usize,
    /// Concurrent publishers of the input, on streams NAME-0, NAME-1, ... (only with --readers 0).
    #[arg(long, default_value_t = 1)]
    publishers: usize,
    /// livegate auto-records every push to app `live` in these formats (comma-separated), into a temporary
    /// directory deleted at the end.
    #[arg(long, value_enum, value_delimiter = ',')]
    record: Vec<RecordFormat>,
    /// Keep the temporary recording directory (its path is printed).
    #[arg(long)]
    keep_recordings: bool,
    /// Passes `[hls] segment_secs` to livegate; HLS readers poll every half of it (default: livegate's 2 s).
    #[arg(long)]
    segment_secs: Option<f64>,
    /// Reader protocol.
    #[arg(long, value_enum, default_value = "flv")]
    proto: Proto,
    /// Milliseconds between reader connects (between publisher connects with --readers 0).
    #[arg(long, default_value_t = 5)]
    ramp_ms: u64,
    /// Measurement seconds after the last reader started connecting.
    #[arg(long, default_value_t = 20)]
    secs: u64,
    /// Seconds of publishing before readers connect (livegate needs a keyframe in its cache).
    #[arg(long, default_value_t = 3.0)]
    warmup_secs: f64,
    /// Passes `[hub] merge_window_ms = N` to livegate (default: livegate's own default).
    #[arg(long)]
    merge_ms: Option<u64>,
    /// RLIMIT_NOFILE for the tool (inherited by livegate): auto = the hard limit, a number, or off.
    #[arg(long, default_value = "auto")]
    rlimit: String,
    /// Tokio worker threads for the readers (1 = a current-thread runtime). The publisher has its own thread.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Stream name: rtmp://.../live/NAME and http://.../live/NAME.flv.
    #[arg(long, default_value = "load")]
    stream: String,
    /// Readers connect to these HTTP addresses instead (comma-separated; reader i to address i mod n), e.g. a
    /// cluster's edges; the publisher still publishes to the started or attached livegate. The report breaks
    /// readers, behind and latency down by address.
    #[arg(long, value_delimiter = ',')]
    read_from: Vec<SocketAddr>,
    /// Other processes measured over the same windows (NAME=PID, comma-separated), e.g. a cluster's edges:
    /// CPU over the readers phase and the steady window, and RSS, in the report and the JSON line.
    #[arg(long, value_delimiter = ',', value_parser = parse_watch)]
    watch_pids: Vec<Watch>,
    /// Query string appended to the readers' URLs, e.g. "?mode=rtc".
    #[arg(long, default_value = "")]
    query: String,
    /// livegate's [log] level.
    #[arg(long, default_value = "warn")]
    log_level: String,
    /// A reader is "behind" if it received less than this % of the media bytes published during its life.
    #[arg(long, default_value_t = 90.0)]
    behind_pct: f64,
    /// Read buffer per reader, bytes.
    #[arg(long, default_value_t = 64 * 1024)]
    read_buf: usize,
    /// --proto whep: viewers offer Opus audio too (livegate transcodes AAC->Opus once for the stream).
    #[arg(long)]
    whep_audio: bool,
    /// --proto whep: livegate gives each session a UDP socket of its own (`udp_mux = false`), where webrtc-rs
    /// sends the media, instead of the shared socket where livegate sends it: the A/B of the two paths.
    #[arg(long)]
    whep_no_mux: bool,
    /// --proto whep: who runs the viewers' ICE and DTLS on the shared socket (`[webrtc] whep_engine`):
    /// livegate or webrtc-rs. Default: livegate's own default.
    #[arg(long)]
    whep_engine: Option<String>,
    /// --proto whep: each viewer sends a PLI every this many ms once media flows (0: never), and the report
    /// counts the keyframes viewers received: shows that a keyframe request reaches the stream's encoder.
    #[arg(long, default_value_t = 0)]
    whep_pli_ms: u64,
    /// Publish the default input with B-frames (target/load-input-720p-bf.flv, made with ffmpeg if missing).
    #[arg(long)]
    bframes: bool,
    /// Run the first reader alone, measuring livegate over this many seconds (after --settle-secs), before
    /// the others start: livegate's cost with 1 reader vs N in one run.
    #[arg(long, default_value_t = 0.0)]
    solo_secs: f64,
    /// Seconds after the last reader started (and after reader 0 started, for --solo-secs) before the steady
    /// CPU window begins: connection setup and join bursts are left out of it.
    #[arg(long, default_value_t = 3.0)]
    settle_secs: f64,
}

/// A process given with --watch-pids.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Watch {
    pub name: String,
    pub pid: u32,
}

fn parse_watch(s: &str) -> Result<Watch, String> {
    let (name, pid) = s.split_once('=').ok_or_else(|| format!("{s:?} is not NAME=PID"))?;
    let pid = pid.trim().parse().map_err(|e| format!("{s:?}: PID: {e}"))?;
    Ok(Watch { name: name.trim().to_owned(), pid })
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
pub enum RecordFormat {
    Flv,
    Mp4,
    Hls,
}

impl RecordFormat {
    pub fn name(self) -> &'static str {
        match self {
            RecordFormat::Flv => "flv",
            RecordFormat::Mp4 => "mp4",
            RecordFormat::Hls => "hls",
        }
    }
}

/// The temporary recording root: created by livegate, removed (with everything in it) when dropped.
pub struct RecordDir {
    pub path: Option<PathBuf>,
    keep: bool,
}

impl RecordDir {
    fn new(args: &Args) -> Self {
        let path = (!args.record.is_empty())
            .then(|| std::env::temp_dir().join(format!("livegate-load-{}-rec", std::process::id())));
        Self { path, keep: args.keep_recordings }
    }
}

impl Drop for RecordDir {
    fn drop(&mut self) {
        match (&self.path, self.keep) {
            (Some(p), true) => eprintln!("recordings kept in {}", p.display()),
            (Some(p), false) => {
                let _ = std::fs::remove_dir_all(p);
            }
            (None, _) => {}
        }
    }
}

/// The config tables the tool adds to livegate's (besides the listeners and the log level).
fn config_extra(args: &Args, record_root: Option<&Path>) -> String {
    let mut c = String::new();
    if let Some(ms) = args.merge_ms {
        c.push_str(&format!("[hub]\nmerge_window_ms = {ms}\n\n"));
    }
    if let Some(s) = args.segment_secs {
        c.push_str(&format!("[hls]\nsegment_secs = {s:?}\n\n"));
    }
    if args.proto == reader::Proto::Whep {
        // OS-picked UDP ports: the default ones may be in use by other livegate instances on this machine.
        // (`udp_mux_port = 0` is also what a build before the shared socket was the default reads as "off".)
        c.push_str("[webrtc]\nudp_mux_port = 0\nudp_port_min = 0\nudp_port_max = 0\n");
        if args.whep_no_mux {
            c.push_str("udp_mux = false\n");
        }
        if let Some(e) = &args.whep_engine {
            c.push_str(&format!("whep_engine = {e:?}\n"));
        }
        c.push('\n');
    }
    if let Some(root) = record_root {
        let mut formats: Vec<&str> = args.record.iter().map(|f| f.name()).collect();
        formats.dedup();
        let list = formats.iter().map(|f| format!("{f:?}")).collect::<Vec<_>>().join(", ");
        // [apps] is replaced whole by a config file: `live` is the only app, as in the default.
        c.push_str(&format!("[apps.live]\nrecord = [{list}]\n\n[record]\nroot = {:?}\n\n", root.display().to_string()));
    }
    c
}

fn main() -> Result<()> {
    let mut args = Args::parse();
    now_ns();
    args.record.sort_by_key(|f| f.name());
    args.record.dedup();
    if args.publishers == 0 {
        bail!("--publishers must be at least 1");
    }
    if args.readers > 0 && args.publishers != 1 {
        bail!("--publishers N runs without readers: pass --readers 0 (readers runs have one publisher)");
    }
    let (soft, hard) = sys::raise_nofile(&args.rlimit)?;
    if (soft as usize) < (args.readers + args.publishers) * 2 + 64 {
        eprintln!(
            "warning: RLIMIT_NOFILE is {soft} (hard {hard}); {} readers may run out of descriptors",
            args.readers
        );
    }
    if !args.read_from.is_empty() && (args.readers == 0 || args.proto == Proto::Rtmp) {
        bail!("--read-from takes HTTP addresses for readers: --proto flv, hls or whep, and --readers 1 or more");
    }
    if !args.watch_pids.is_empty() && args.readers == 0 {
        bail!("--watch-pids measures over the readers phase: --readers 1 or more");
    }
    if args.solo_secs > 0.0 && args.readers < 2 {
        bail!("--solo-secs compares 1 reader with N: pass --readers 2 or more");
    }
    let path = input::ensure(args.input.as_deref(), args.bframes)?;
    let mut input = input::load(&path)?;
    input.ts_code = args.proto == Proto::Whep;
    let input = Arc::new(input);
    let rec = RecordDir::new(&args);
    let mut lg = match &args.attach {
        Some(spec) => sys::Livegate::attach(spec)?,
        None => sys::Livegate::spawn(&args.livegate, &config_extra(&args, rec.path.as_deref()), &args.log_level)?,
    };
    let pid = lg.pid_str();
    eprintln!(
        "livegate pid {pid}: rtmp {} http {} (merge_window_ms {}); input {} ({} tags, {:.1} MB, loop {} ms); nofile {soft}",
        lg.rtmp,
        lg.http,
        args.merge_ms.map_or("default".into(), |v| v.to_string()),
        path.display(),
        input.tags.len(),
        input.bytes as f64 / 1e6,
        input.loop_ms
    );
    if args.readers == 0 {
        return ingest::run(&args, lg, input, rec.path.as_deref());
    }

    // Publisher.
    let stop_pub = Arc::new(AtomicBool::new(false));
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let pub_thread =
        publisher::spawn(input.clone(), lg.rtmp, vec![args.stream.clone()], Duration::ZERO, stop_pub.clone(), ready_tx);

    let rt = if args.threads <= 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()?
    } else {
        tokio::runtime::Builder::new_multi_thread().worker_threads(args.threads).enable_all().build()?
    };
    let run = rt.block_on(async {
        match tokio::time::timeout(Duration::from_secs(15), ready_rx).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => bail!("publisher failed: {e}"),
            Ok(Err(_)) => bail!("publisher thread ended before publishing"),
            Err(_) => bail!("publisher: no NetStream.Publish.Start within 15 s"),
        }
        let cpu_pub0 = sys::cpu_secs(&pid);
        tokio::time::sleep(Duration::from_secs_f64(args.warmup_secs)).await;
        readers_phase(&args, &pid, &lg, &input, cpu_pub0).await
    });
    stop_pub.store(true, Ordering::Relaxed);
    let pub_log = pub_thread.join().map_err(|_| anyhow!("publisher thread panicked"))?.pop().unwrap_or_default();
    let exited = lg.exited();
    if rec.path.is_some() {
        // Let the recorder take the last frames, then a graceful stop finishes the files.
        std::thread::sleep(Duration::from_secs(1));
        lg.stop_within(Duration::from_secs(30));
    } else {
        lg.stop();
    }
    let run = run?;
    let log_lines = lg.log_lines();
    if args.proto == Proto::Hls {
        report::print_hls(&args, &run, &pub_log, exited.as_deref(), &log_lines);
    } else if args.proto == Proto::Whep {
        report::print_whep(&args, &run, &pub_log, exited.as_deref(), &log_lines);
    } else {
        report::print(&args, &run, &pub_log, exited.as_deref(), &log_lines);
    }
    if let Some(dir) = &rec.path {
        let u = sys::dir_usage(dir);
        println!(
            "  recordings         {:.1} MB on disk ({} media files) vs {:.1} MB media published: {:.3}x; sidecars {:?}",
            u.total_bytes() as f64 / 1e6,
            u.media_files,
            pub_log.media_bytes() as f64 / 1e6,
            u.total_bytes() as f64 / pub_log.media_bytes().max(1) as f64,
            u.statuses
        );
    }
    Ok(())
}

/// Everything measured during the readers phase.
pub struct Run {
    pub results: Vec<reader::ReaderResult>,
    /// --proto hls: the HLS readers' results (`results` is empty).
    pub hls: Vec<hls::HlsResult>,
    /// --proto whep: the WHEP viewers' results.
    pub whep: Vec<whep::WhepResult>,
    /// --solo-secs: livegate and tool CPU while reader 0 ran alone.
    pub solo: Option<Window>,
    /// From --settle-secs after the last reader started to the end (None if that leaves under 2 s).
    pub steady: Option<Window>,
    pub panics: usize,
    pub wall_secs: f64,
    pub lg_cpu: f64,
    /// livegate CPU seconds per second while only the publisher ran (warmup).
    pub lg_cpu_idle_rate: f64,
    pub tool_cpu: f64,
    /// CPUs the whole machine kept busy during the run (livegate, the tool and anything else).
    pub machine_busy: Option<f64>,
    pub rss_before_kib: u64,
    pub hwm_before_kib: u64,
    pub hwm_end_kib: u64,
    pub rss_end_kib: u64,
    pub run_start_ns: u64,
    pub run_end_ns: u64,
    /// Seconds into the readers phase at which livegate was seen gone.
    pub livegate_died_at: Option<f64>,
    /// The --watch-pids processes, in order.
    pub watched: Vec<Watched>,
}

/// A process measured with --watch-pids.
pub struct Watched {
    pub name: String,
    pub pid: u32,
    /// CPU seconds over the readers phase.
    pub cpu: f64,
    /// CPU seconds over the steady window (None without one).
    pub steady_cpu: Option<f64>,
    /// VmRSS when the readers phase began, and when it ended (readers still connected).
    pub rss_before_kib: u64,
    pub rss_end_kib: u64,
    /// VmHWM at the end: since the process started, so across runs on one process it is the largest run's.
    pub hwm_end_kib: u64,
}

/// CPU seconds used over a measurement window.
#[derive(Clone, Copy, Debug)]
pub struct Window {
    /// `now_ns()` at the start.
    pub start_ns: u64,
    pub secs: f64,
    pub lg_cpu: f64,
    pub tool_cpu: f64,
    pub machine_busy: Option<f64>,
    /// UDP datagrams the machine dropped in the window (InErrors, RcvbufErrors, SndbufErrors; all processes).
    pub udp_errors: Option<(u64, u64, u64)>,
}

/// CPU counters at one instant, to make a `Window` from two of them.
struct Mark {
    at: tokio::time::Instant,
    ns: u64,
    udp: Option<(u64, u64, u64)>,
    lg: f64,
    tool: f64,
    machine: Option<(u64, u64)>,
    /// CPU seconds of each --watch-pids process.
    watched: Vec<f64>,
}

impl Mark {
    fn now(pid: &str, watch: &[Watch]) -> Self {
        Self {
            at: tokio::time::Instant::now(),
            ns: now_ns(),
            udp: sys::udp_errors(),
            lg: sys::cpu_secs(pid).unwrap_or(0.0),
            tool: sys::cpu_secs("self").unwrap_or(0.0),
            machine: sys::machine_jiffies(),
            watched: watch_cpu(watch),
        }
    }

    fn window_to(&self, end: &Mark) -> Window {
        let udp = self.udp.zip(end.udp).map(|(a, b)| (b.0 - a.0, b.1 - a.1, b.2 - a.2));
        Window {
            start_ns: self.ns,
            udp_errors: udp,
            secs: (end.at - self.at).as_secs_f64(),
            lg_cpu: end.lg - self.lg,
            tool_cpu: end.tool - self.tool,
            machine_busy: sys::busy_cpus(self.machine, end.machine),
        }
    }
}

fn watch_cpu(watch: &[Watch]) -> Vec<f64> {
    watch.iter().map(|w| sys::cpu_secs(&w.pid.to_string()).unwrap_or(0.0)).collect()
}

async fn readers_phase(
    args: &Args,
    pid: &str,
    lg: &sys::Livegate,
    input: &input::Input,
    cpu_pub0: Option<f64>,
) -> Result<Run> {
    let cpu0 = sys::cpu_secs(pid).context("reading livegate's /proc/PID/stat")?;
    let lg_cpu_idle_rate = cpu_pub0.map_or(0.0, |c| (cpu0 - c) / args.warmup_secs.max(0.001));
    let rss_before_kib = sys::status_kib(pid, "VmRSS").unwrap_or(0);
    let hwm_before_kib = sys::status_kib(pid, "VmHWM").unwrap_or(0);
    let tool0 = sys::cpu_secs("self").unwrap_or(0.0);
    let machine0 = sys::machine_jiffies();
    let watch = &args.watch_pids;
    let watch_rss = |key: &str| -> Vec<u64> {
        watch.iter().map(|w| sys::status_kib(&w.pid.to_string(), key).unwrap_or(0)).collect()
    };
    let watch_rss0 = watch_rss("VmRSS");
    let watch_cpu0 = watch_cpu(watch);

    let t0 = tokio::time::Instant::now();
    let run_start_ns = now_ns();
    let ramp = Duration::from_millis(args.ramp_ms);
    let settle = Duration::from_secs_f64(args.settle_secs);
    // --solo-secs: reader 0 alone for settle + solo, then the others (reader i at lead + i * ramp).
    let lead = if args.solo_secs > 0.0 { settle + Duration::from_secs_f64(args.solo_secs) } else { Duration::ZERO };
    let last_start = t0 + lead + ramp * args.readers.saturating_sub(1) as u32;
    let stop_at = last_start + Duration::from_secs(args.secs);
    let total_secs = (stop_at - t0).as_secs_f64();
    // Video frames a reader can see: the run plus a GOP-cache burst, with slack.
    let fps = input.video_tags as f64 / (input.loop_ms as f64 / 1000.0).max(0.001);
    let sample_cap = ((total_secs + 12.0) * fps * 1.2) as usize;
    // One config per address readers connect to: --read-from's, else livegate's.
    let read_from = if args.read_from.is_empty() { vec![lg.http] } else { args.read_from.clone() };
    let cfgs: Vec<Arc<ReaderCfg>> = read_from
        .iter()
        .enumerate()
        .map(|(via, &http)| {
            Arc::new(ReaderCfg {
                proto: args.proto,
                rtmp: lg.rtmp,
                http,
                via,
                stream: args.stream.clone(),
                query: args.query.clone(),
                stop_at,
                read_buf: args.read_buf,
                sample_cap,
                poll: Duration::from_secs_f64(args.segment_secs.unwrap_or(2.0) / 2.0),
                whep_audio: args.whep_audio,
                whep_pli_ms: args.whep_pli_ms,
            })
        })
        .collect();

    let pid_w = pid.to_owned();
    let watcher = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if !sys::running(&pid_w) {
                let t = t0.elapsed().as_secs_f64();
                eprintln!("  t={t:>5.1}s  LIVEGATE EXITED");
                return t;
            }
        }
    });
    let progress = tokio::spawn(async move {
        let mut tick = tokio::time::interval_at(t0 + Duration::from_secs(5), Duration::from_secs(5));
        let mut last = 0u64;
        loop {
            tick.tick().await;
            let b = reader::WIRE_BYTES.load(Ordering::Relaxed);
            eprintln!(
                "  t={:>5.1}s  readers active {:>5}  with keyframe {:>5}  rx {:>8.1} MB/s",
                t0.elapsed().as_secs_f64(),
                reader::ACTIVE.load(Ordering::Relaxed),
                reader::KEYED.load(Ordering::Relaxed),
                (b - last) as f64 / 5e6
            );
            last = b;
        }
    });

    let mut handles = Vec::with_capacity(args.readers);
    let mut hls_handles = Vec::new();
    let mut whep_handles = Vec::new();
    let mut solo = None;
    for i in 0..args.readers {
        if i == 1 && args.solo_secs > 0.0 {
            tokio::time::sleep_until(t0 + settle).await;
            let m0 = Mark::now(pid, watch);
            tokio::time::sleep_until(t0 + lead).await;
            solo = Some(m0.window_to(&Mark::now(pid, watch)));
        }
        let at = if i == 0 { t0 } else { t0 + lead + ramp * i as u32 };
        tokio::time::sleep_until(at).await;
        let cfg = cfgs[i % cfgs.len()].clone();
        match args.proto {
            Proto::Hls => hls_handles.push(tokio::spawn(async move { hls::run(&cfg).await })),
            Proto::Whep => whep_handles.push(tokio::spawn(async move { whep::run(&cfg).await })),
            Proto::Flv | Proto::Rtmp => handles.push(tokio::spawn(async move { reader::run(&cfg).await })),
        }
    }
    let steady_start = last_start + settle;
    let (steady, steady_watched) = if stop_at.saturating_duration_since(steady_start) >= Duration::from_secs(2) {
        tokio::time::sleep_until(steady_start).await;
        let m0 = Mark::now(pid, watch);
        tokio::time::sleep_until(stop_at).await;
        let m1 = Mark::now(pid, watch);
        let used: Vec<Option<f64>> = m0.watched.iter().zip(&m1.watched).map(|(a, b)| Some(b - a)).collect();
        (Some(m0.window_to(&m1)), used)
    } else {
        (None, vec![None; watch.len()])
    };
    tokio::time::sleep_until(stop_at).await;
    let watch_rss1 = watch_rss("VmRSS");
    let watch_hwm = watch_rss("VmHWM");
    let watched = watch
        .iter()
        .zip(watch_cpu0.iter().zip(watch_cpu(watch)))
        .enumerate()
        .map(|(i, (w, (c0, c1)))| Watched {
            name: w.name.clone(),
            pid: w.pid,
            cpu: c1 - c0,
            steady_cpu: steady_watched[i],
            rss_before_kib: watch_rss0[i],
            rss_end_kib: watch_rss1[i],
            hwm_end_kib: watch_hwm[i],
        })
        .collect();
    let lg_cpu = sys::cpu_secs(pid).unwrap_or(cpu0) - cpu0;
    let machine_busy = sys::busy_cpus(machine0, sys::machine_jiffies());
    let hwm_end_kib = sys::status_kib(pid, "VmHWM").unwrap_or(0);
    let rss_end_kib = sys::status_kib(pid, "VmRSS").unwrap_or(0);
    let tool_cpu = sys::cpu_secs("self").unwrap_or(tool0) - tool0;
    let run_end_ns = now_ns();
    let wall_secs = t0.elapsed().as_secs_f64();
    progress.abort();
    let livegate_died_at = if watcher.is_finished() {
        watcher.await.ok()
    } else {
        watcher.abort();
        None
    };

    let mut results = Vec::with_capacity(handles.len());
    let mut panics = 0;
    for h in handles {
        match h.await {
            Ok(r) => results.push(r),
            Err(_) => panics += 1,
        }
    }
    let mut hls_results = Vec::with_capacity(hls_handles.len());
    for h in hls_handles {
        match h.await {
            Ok(r) => hls_results.push(r),
            Err(_) => panics += 1,
        }
    }
    let mut whep_results = Vec::with_capacity(whep_handles.len());
    for h in whep_handles {
        match h.await {
            Ok(r) => whep_results.push(r),
            Err(_) => panics += 1,
        }
    }
    Ok(Run {
        results,
        hls: hls_results,
        whep: whep_results,
        solo,
        steady,
        panics,
        wall_secs,
        lg_cpu,
        lg_cpu_idle_rate,
        tool_cpu,
        machine_busy,
        rss_before_kib,
        hwm_before_kib,
        hwm_end_kib,
        rss_end_kib,
        run_start_ns,
        run_end_ns,
        livegate_died_at,
        watched,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_read_from_and_watch_pids() {
        let a = Args::try_parse_from([
            "livegate-load",
            "--read-from",
            "127.0.0.1:8001,127.0.0.1:8002",
            "--watch-pids",
            "edge-1=101,edge-2=102",
        ])
        .unwrap();
        assert_eq!(a.read_from, ["127.0.0.1:8001".parse::<SocketAddr>().unwrap(), "127.0.0.1:8002".parse().unwrap()]);
        assert_eq!(
            a.watch_pids,
            [Watch { name: "edge-1".into(), pid: 101 }, Watch { name: "edge-2".into(), pid: 102 }]
        );
        let a = Args::try_parse_from(["livegate-load"]).unwrap();
        assert!(a.read_from.is_empty() && a.watch_pids.is_empty());
        assert!(Args::try_parse_from(["livegate-load", "--watch-pids", "edge-1"]).is_err());
        assert!(Args::try_parse_from(["livegate-load", "--watch-pids", "edge-1=x"]).is_err());
        assert!(Args::try_parse_from(["livegate-load", "--read-from", "localhost"]).is_err());
    }
}
