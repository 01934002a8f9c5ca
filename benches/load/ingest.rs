//! Publishers only (`--readers 0`): N publishers of the input on NAME-0 .. NAME-{N-1}, livegate recording
//! each push when `--record` is given. Measures livegate's CPU over `--secs` once every publisher is live and
//! warmed up, then stops the publishers, stops livegate gracefully (recordings are finished at shutdown) and
//! adds up what is on disk.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Result};

use crate::input::Input;
use crate::publisher::{self, PubLog};
use crate::sys::{self, DirUsage, Livegate};
use crate::{now_ns, report, Args};

/// What the publishers phase measured.
pub struct IngestRun {
    pub wall_secs: f64,
    pub lg_cpu: f64,
    pub tool_cpu: f64,
    pub machine_busy: Option<f64>,
    /// livegate's RSS before any publisher connected, and once all were live and warmed up.
    pub rss_idle_kib: u64,
    pub rss_before_kib: u64,
    pub hwm_end_kib: u64,
    pub rss_end_kib: u64,
    pub run_start_ns: u64,
    pub run_end_ns: u64,
    /// Seconds into the measurement at which livegate was seen gone.
    pub livegate_died_at: Option<f64>,
}

/// The end of a run: how livegate stopped and what the recordings came to.
pub struct Ending {
    /// livegate had already exited before the tool stopped it: how.
    pub exited: Option<String>,
    /// Seconds livegate took to exit after SIGTERM; None: it was killed after 30 s.
    pub shutdown_secs: Option<f64>,
    /// CPU seconds livegate used from SIGTERM to exit (finishing the files), as last seen before it exited.
    pub shutdown_cpu: Option<f64>,
    /// Bytes livegate passed to write syscalls over its whole life, as last seen before it exited.
    pub written_bytes: Option<u64>,
    pub usage: Option<DirUsage>,
    pub fs_type: String,
}

pub fn run(args: &Args, mut lg: Livegate, input: Arc<Input>, record_root: Option<&Path>) -> Result<()> {
    let pid = lg.pid_str();
    let rss_idle_kib = sys::status_kib(&pid, "VmRSS").unwrap_or(0);
    let streams: Vec<String> = (0..args.publishers).map(|i| format!("{}-{i}", args.stream)).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let ramp = Duration::from_millis(args.ramp_ms);
    let pub_thread = publisher::spawn(input.clone(), lg.rtmp, streams, ramp, stop.clone(), ready_tx);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let measured = rt.block_on(async {
        let limit = Duration::from_secs(15) + ramp * args.publishers as u32;
        match tokio::time::timeout(limit, ready_rx).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => bail!("publisher failed: {e}"),
            Ok(Err(_)) => bail!("publisher thread ended before publishing"),
            Err(_) => bail!("publishers: not all had NetStream.Publish.Start within {limit:?}"),
        }
        eprintln!("  {} publishers live; warming up {} s", args.publishers, args.warmup_secs);
        tokio::time::sleep(Duration::from_secs_f64(args.warmup_secs)).await;
        measure(args, &pid, rss_idle_kib).await
    });
    stop.store(true, Ordering::Relaxed);
    let logs = pub_thread.join().map_err(|_| anyhow!("publisher thread panicked"))?;
    let exited = lg.exited();
    if record_root.is_some() {
        // Let the recorders take the last frames in flight before SIGTERM ends the streams.
        std::thread::sleep(Duration::from_secs(1));
    }
    // /proc/PID vanishes at exit: watch CPU and written bytes until then and keep the last values seen.
    let watch_pid = pid.clone();
    let cpu_at_term = sys::cpu_secs(&pid);
    // An attached livegate is left running: nothing to watch it do until it exits.
    let owned = lg.owned();
    let watcher = std::thread::spawn(move || {
        let mut last = (None, None);
        while owned && sys::running(&watch_pid) {
            last = (sys::cpu_secs(&watch_pid).or(last.0), sys::io_wchar(&watch_pid).or(last.1));
            std::thread::sleep(Duration::from_millis(5));
        }
        last
    });
    let shutdown_secs = lg.stop_within(Duration::from_secs(30)).map(|d| d.as_secs_f64());
    let (cpu_end, written_bytes) = watcher.join().unwrap_or((None, None));
    let measured = measured?;
    let ending = Ending {
        exited,
        shutdown_secs,
        shutdown_cpu: cpu_end.zip(cpu_at_term).map(|(e, s)| e - s),
        written_bytes,
        usage: record_root.map(sys::dir_usage),
        fs_type: record_root.map_or_else(String::new, sys::fs_type),
    };
    report::print_ingest(args, &measured, &logs, &ending, &lg.log_lines());
    Ok(())
}

async fn measure(args: &Args, pid: &str, rss_idle_kib: u64) -> Result<IngestRun> {
    let cpu0 = sys::cpu_secs(pid).ok_or_else(|| anyhow!("livegate is gone (reading /proc/{pid}/stat)"))?;
    let tool0 = sys::cpu_secs("self").unwrap_or(0.0);
    let machine0 = sys::machine_jiffies();
    let rss_before_kib = sys::status_kib(pid, "VmRSS").unwrap_or(0);
    let t0 = tokio::time::Instant::now();
    let run_start_ns = now_ns();
    let stop_at = t0 + Duration::from_secs(args.secs);
    let mut tick = tokio::time::interval_at(t0 + Duration::from_millis(100), Duration::from_millis(100));
    let (mut last_cpu, mut last_sent, mut last_t) = (cpu0, publisher::SENT_BYTES.load(Ordering::Relaxed), t0);
    let mut livegate_died_at = None;
    loop {
        let now = tick.tick().await;
        if now >= stop_at {
            break;
        }
        if !sys::running(pid) {
            livegate_died_at = Some(t0.elapsed().as_secs_f64());
            eprintln!("  t={:>5.1}s  LIVEGATE EXITED", t0.elapsed().as_secs_f64());
            break;
        }
        if now - last_t >= Duration::from_secs(5) {
            let cpu = sys::cpu_secs(pid).unwrap_or(last_cpu);
            let sent = publisher::SENT_BYTES.load(Ordering::Relaxed);
            let dt = (now - last_t).as_secs_f64();
            eprintln!(
                "  t={:>5.1}s  livegate {:>4.0}% of a core, RSS {:>7} KiB; publishers sent {:>6.2} MB/s, {} late tags so far",
                t0.elapsed().as_secs_f64(),
                100.0 * (cpu - last_cpu) / dt,
                sys::status_kib(pid, "VmRSS").unwrap_or(0),
                (sent - last_sent) as f64 / dt / 1e6,
                publisher::LATE.load(Ordering::Relaxed)
            );
            (last_cpu, last_sent, last_t) = (cpu, sent, now);
        }
    }
    Ok(IngestRun {
        wall_secs: t0.elapsed().as_secs_f64(),
        lg_cpu: sys::cpu_secs(pid).unwrap_or(cpu0) - cpu0,
        tool_cpu: sys::cpu_secs("self").unwrap_or(tool0) - tool0,
        machine_busy: sys::busy_cpus(machine0, sys::machine_jiffies()),
        rss_idle_kib,
        rss_before_kib,
        hwm_end_kib: sys::status_kib(pid, "VmHWM").unwrap_or(0),
        rss_end_kib: sys::status_kib(pid, "VmRSS").unwrap_or(0),
        run_start_ns,
        run_end_ns: now_ns(),
        livegate_died_at,
    })
}

/// Per-run totals over the publishers' logs.
pub struct PubTotals {
    /// Media seconds the publishers sent during the measurement (summed over streams).
    pub stream_secs: f64,
    /// Tag body bytes sent over the whole run.
    pub media_bytes: u64,
    pub late: u64,
    pub late_publishers: usize,
    pub max_late_ms: f64,
    pub failed: usize,
}

pub fn totals(logs: &[PubLog], run: &IngestRun) -> PubTotals {
    PubTotals {
        stream_secs: logs.iter().map(|l| l.media_ms_between(run.run_start_ns, run.run_end_ns) as f64 / 1e3).sum(),
        media_bytes: logs.iter().map(PubLog::media_bytes).sum(),
        late: logs.iter().map(|l| l.late).sum(),
        late_publishers: logs.iter().filter(|l| l.late > 0).count(),
        max_late_ms: logs.iter().map(|l| l.max_late_us).max().unwrap_or(0) as f64 / 1e3,
        failed: logs.iter().filter(|l| !l.errors.is_empty()).count(),
    }
}
