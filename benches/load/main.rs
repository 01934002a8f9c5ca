//! livegate-load: end-to-end load test of livegate (RTMP publish -> N HTTP-FLV or RTMP readers).
//!
//! Starts livegate on free loopback ports, publishes a pre-encoded FLV in real time, connects N readers and
//! reports delivered bytes, livegate's CPU per delivered MB, RSS per reader, time to first keyframe, readers
//! falling behind, and added latency (publisher send instant -> reader receive instant of the same tag).

mod input;
mod publisher;
mod reader;
mod report;
mod rtmp_client;
mod sys;

use std::path::PathBuf;
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
GOP-cache burst a joining reader gets is old media by design). MB = 10^6 bytes.";

#[derive(Parser, Debug)]
#[command(name = "livegate-load", about = "End-to-end load test of livegate (acts as the `ffmpeg -re -c copy` publisher)", long_about = LONG_ABOUT)]
pub struct Args {
    /// livegate binary to start (killed at the end).
    #[arg(long, default_value = "target/release/livegate")]
    livegate: PathBuf,
    /// Pre-encoded FLV to publish. Default: target/load-input-720p.flv, created with ffmpeg if missing.
    #[arg(long)]
    input: Option<PathBuf>,
    /// Number of readers.
    #[arg(long, default_value_t = 1000)]
    readers: usize,
    /// Reader protocol.
    #[arg(long, value_enum, default_value = "flv")]
    proto: Proto,
    /// Milliseconds between reader connects.
    #[arg(long, default_value_t = 5)]
    ramp_ms: u64,
    /// Measurement seconds after the last reader started connecting.
    #[arg(long, default_value_t = 20)]
    secs: u64,
    /// Seconds of publishing before readers connect (livegate needs a keyframe in its cache).
    #[arg(long, default_value_t = 3.0)]
    warmup_secs: f64,
    /// Passes `[hub] flush_interval_ms = N` to livegate (default: livegate's own default).
    #[arg(long)]
    flush_ms: Option<u64>,
    /// RLIMIT_NOFILE for the tool (inherited by livegate): auto = the hard limit, a number, or off.
    #[arg(long, default_value = "auto")]
    rlimit: String,
    /// Tokio worker threads for the readers (1 = a current-thread runtime). The publisher has its own thread.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Stream name: rtmp://.../live/NAME and http://.../live/NAME.flv.
    #[arg(long, default_value = "load")]
    stream: String,
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
}

fn main() -> Result<()> {
    let args = Args::parse();
    now_ns();
    let (soft, hard) = sys::raise_nofile(&args.rlimit)?;
    if (soft as usize) < args.readers * 2 + 64 {
        eprintln!(
            "warning: RLIMIT_NOFILE is {soft} (hard {hard}); {} readers may run out of descriptors",
            args.readers
        );
    }
    let path = input::ensure(args.input.as_deref())?;
    let input = Arc::new(input::load(&path)?);
    let mut lg = sys::Livegate::spawn(&args.livegate, args.flush_ms, &args.log_level)?;
    let pid = lg.pid_str();
    eprintln!(
        "livegate pid {pid}: rtmp {} http {} (flush_ms {}); input {} ({} tags, {:.1} MB, loop {} ms); nofile {soft}",
        lg.rtmp,
        lg.http,
        args.flush_ms.map_or("default".into(), |v| v.to_string()),
        path.display(),
        input.tags.len(),
        input.bytes as f64 / 1e6,
        input.loop_ms
    );

    // Publisher.
    let stop_pub = Arc::new(AtomicBool::new(false));
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let pub_thread = publisher::spawn(input.clone(), lg.rtmp, args.stream.clone(), stop_pub.clone(), ready_tx);

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
    let pub_log = pub_thread.join().map_err(|_| anyhow!("publisher thread panicked"))?;
    let exited = lg.exited();
    lg.stop();
    let run = run?;
    let log_lines = lg.log_lines();
    report::print(&args, &run, &pub_log, exited.as_deref(), &log_lines);
    Ok(())
}

/// Everything measured during the readers phase.
pub struct Run {
    pub results: Vec<reader::ReaderResult>,
    pub panics: usize,
    pub wall_secs: f64,
    pub lg_cpu: f64,
    /// livegate CPU seconds per second while only the publisher ran (warmup).
    pub lg_cpu_idle_rate: f64,
    pub tool_cpu: f64,
    pub rss_before_kib: u64,
    pub hwm_before_kib: u64,
    pub hwm_end_kib: u64,
    pub rss_end_kib: u64,
    pub run_start_ns: u64,
    pub run_end_ns: u64,
    /// Seconds into the readers phase at which livegate was seen gone.
    pub livegate_died_at: Option<f64>,
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

    let t0 = tokio::time::Instant::now();
    let run_start_ns = now_ns();
    let ramp = Duration::from_millis(args.ramp_ms);
    let stop_at = t0 + ramp * args.readers.saturating_sub(1) as u32 + Duration::from_secs(args.secs);
    let total_secs = (stop_at - t0).as_secs_f64();
    // Video frames a reader can see: the run plus a GOP-cache burst, with slack.
    let fps = input.video_tags as f64 / (input.loop_ms as f64 / 1000.0).max(0.001);
    let sample_cap = ((total_secs + 12.0) * fps * 1.2) as usize;
    let cfg = Arc::new(ReaderCfg {
        proto: args.proto,
        rtmp: lg.rtmp,
        http: lg.http,
        stream: args.stream.clone(),
        query: args.query.clone(),
        stop_at,
        read_buf: args.read_buf,
        sample_cap,
    });

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
    for i in 0..args.readers {
        tokio::time::sleep_until(t0 + ramp * i as u32).await;
        let cfg = cfg.clone();
        handles.push(tokio::spawn(async move { reader::run(&cfg).await }));
    }
    tokio::time::sleep_until(stop_at).await;
    let lg_cpu = sys::cpu_secs(pid).unwrap_or(cpu0) - cpu0;
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
    Ok(Run {
        results,
        panics,
        wall_secs,
        lg_cpu,
        lg_cpu_idle_rate,
        tool_cpu,
        rss_before_kib,
        hwm_before_kib,
        hwm_end_kib,
        rss_end_kib,
        run_start_ns,
        run_end_ns,
        livegate_died_at,
    })
}
