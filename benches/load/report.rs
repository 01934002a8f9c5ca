//! Turning the run's raw records into the figures: human-readable lines and one JSON line on stdout.

use std::collections::BTreeMap;

use livegate::media::flv::TAG_VIDEO;
use serde_json::json;

use crate::ingest::{self, Ending, IngestRun};
use crate::publisher::PubLog;
use crate::reader::{Anomalies, Outcome};
use crate::{Args, Run};

/// Nearest-rank percentile of a sorted slice.
pub fn pct<T: Copy + Default>(sorted: &[T], p: f64) -> T {
    if sorted.is_empty() {
        return T::default();
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

pub fn print(args: &Args, run: &Run, pub_log: &PubLog, livegate_exit: Option<&str>, log_lines: &[String]) {
    let n = run.results.len() + run.panics;
    let sends = &pub_log.sends;

    // Publisher side: cumulative bytes by time, and the send instant of each video frame by timestamp.
    let cum_at = |t: u64| -> u64 {
        let i = sends.partition_point(|s| s.at_ns <= t);
        if i == 0 {
            0
        } else {
            sends[i - 1].cum_bytes
        }
    };
    let mut video: Vec<(u32, u64)> =
        sends.iter().filter(|s| s.tag_type == TAG_VIDEO && !s.header).map(|s| (s.timestamp, s.at_ns)).collect();
    video.sort_unstable();
    let mut audio: Vec<(u32, u64)> = sends
        .iter()
        .filter(|s| s.tag_type == livegate::media::flv::TAG_AUDIO && !s.header)
        .map(|s| (s.timestamp, s.at_ns))
        .collect();
    audio.sort_unstable();
    let mut alat = Vec::new();
    let published_in_run = cum_at(run.run_end_ns) - cum_at(run.run_start_ns);

    let mut wire = 0u64;
    let mut ttfk = Vec::new();
    let mut no_key = 0usize;
    let mut behind = 0usize;
    let mut lat = Vec::new();
    let (mut unmatched, mut negative, mut burst) = (0u64, 0u64, 0u64);
    let mut ran = 0usize;
    let mut closed = 0usize;
    let mut errors: BTreeMap<String, usize> = BTreeMap::new();
    let mut an = Anomalies::default();
    let mut anomalous_readers = 0usize;
    // --read-from: the same per address.
    let mut by: Vec<ByAddr> = (0..args.read_from.len().max(1)).map(|_| ByAddr::default()).collect();
    for r in &run.results {
        wire += r.wire_bytes;
        let b = &mut by[r.via];
        b.readers += 1;
        b.wire += r.wire_bytes;
        match &r.outcome {
            Outcome::Ran => ran += 1,
            Outcome::Closed => closed += 1,
            Outcome::Error(e) => *errors.entry(e.chars().take(160).collect()).or_default() += 1,
        }
        match r.first_key_ns {
            Some(k) => {
                ttfk.push(k - r.start_ns);
                b.ttfk.push(k - r.start_ns);
            }
            None => no_key += 1,
        }
        let published = cum_at(r.end_ns) - cum_at(r.start_ns);
        if (r.media_bytes as f64) < published as f64 * args.behind_pct / 100.0 {
            behind += 1;
            b.behind += 1;
        }
        let a = r.anomalies;
        an.ts_backwards += a.ts_backwards;
        an.gaps += a.gaps;
        an.nonkey_first += a.nonkey_first;
        an.key_without_seq += a.key_without_seq;
        an.bad_tag_type += a.bad_tag_type;
        an.audio_without_seq += a.audio_without_seq;
        if a.ts_backwards + a.nonkey_first + a.key_without_seq + a.bad_tag_type + a.audio_without_seq > 0 {
            anomalous_readers += 1;
        }
        let Some(first_key) = r.first_key_ns else { continue };
        for &(ts, recv) in &r.audio_samples {
            if let Ok(i) = audio.binary_search_by_key(&ts, |v| v.0) {
                let sent = audio[i].1;
                if sent >= first_key && recv >= sent {
                    alat.push(recv - sent);
                }
            }
        }
        for &(ts, recv) in &r.samples {
            let Ok(i) = video.binary_search_by_key(&ts, |v| v.0) else {
                unmatched += 1;
                continue;
            };
            let sent = video[i].1;
            if sent < first_key {
                burst += 1;
            } else if recv < sent {
                negative += 1;
            } else {
                lat.push(recv - sent);
                b.lat.push(recv - sent);
            }
        }
    }
    for b in &mut by {
        b.lat.sort_unstable();
        b.ttfk.sort_unstable();
    }
    ttfk.sort_unstable();
    lat.sort_unstable();
    alat.sort_unstable();
    let mb = wire as f64 / 1e6;
    let cpu_us_per_mb = if mb > 0.0 { run.lg_cpu * 1e6 / mb } else { 0.0 };
    let grow_kib = run.hwm_end_kib.saturating_sub(run.rss_before_kib);
    let per_reader_kib = if n > 0 { grow_kib as f64 / n as f64 } else { 0.0 };
    let disconnects = closed + errors.values().sum::<usize>() + run.panics;

    println!(
        "livegate-load: {n} {:?} readers, {:.1} s (ramp {} ms, measure {} s), merge_window_ms {}",
        args.proto,
        run.wall_secs,
        args.ramp_ms,
        args.secs,
        args.merge_ms.map_or("default".into(), |v| v.to_string())
    );
    println!(
        "  delivered          {mb:.1} MB ({:.1} MB/s); publisher sent {:.2} MB media in the same window",
        mb / run.wall_secs,
        published_in_run as f64 / 1e6
    );
    println!("  livegate CPU       {:.2} s ({:.0}% of a core); {cpu_us_per_mb:.0} CPU-us per delivered MB; publisher-only {:.1} ms/s", run.lg_cpu, 100.0 * run.lg_cpu / run.wall_secs, run.lg_cpu_idle_rate * 1e3);
    let idle = run.lg_cpu_idle_rate;
    let steady_net = run.steady.as_ref().map(|w| rate(w) - idle);
    if let (Some(w), Some(net)) = (&run.steady, steady_net) {
        println!(
            "  steady CPU         {:.1} s window: livegate {:.2} ms/s = publisher-only {:.2} + {:.2} ms/s{}",
            w.secs,
            rate(w) * 1e3,
            idle * 1e3,
            net * 1e3,
            if args.read_from.is_empty() {
                format!(" for {n} readers -> {:.0} CPU-us per reader-second", net * 1e6 / n.max(1) as f64)
            } else {
                " (readers are on --read-from)".into()
            }
        );
    }
    print_tool_cpu(args, run.tool_cpu, run.lg_cpu, run.wall_secs, run.machine_busy);
    println!("  livegate RSS       before readers {} KiB (HWM {}), peak {} KiB, now {} KiB -> {per_reader_kib:.1} KiB per reader", run.rss_before_kib, run.hwm_before_kib, run.hwm_end_kib, run.rss_end_kib);
    let watched = print_watched(run);
    println!(
        "  first keyframe     p50 {:.1} ms, p95 {:.1} ms, max {:.1} ms ({} readers without one)",
        ms(pct(&ttfk, 50.0)),
        ms(pct(&ttfk, 95.0)),
        ms(pct(&ttfk, 100.0)),
        no_key
    );
    println!("  readers behind     {behind} (< {}% of published media bytes over their life)", args.behind_pct);
    println!("  added latency      p50 {:.1} ms, p95 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} samples; {} join-burst excluded; {} unmatched ts; {} negative)", ms(pct(&lat, 50.0)), ms(pct(&lat, 95.0)), ms(pct(&lat, 99.0)), ms(pct(&lat, 100.0)), lat.len(), burst, unmatched, negative);
    println!(
        "  audio latency      p50 {:.1} ms, p95 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} samples)",
        ms(pct(&alat, 50.0)),
        ms(pct(&alat, 95.0)),
        ms(pct(&alat, 99.0)),
        ms(pct(&alat, 100.0)),
        alat.len()
    );
    println!(
        "  outcome            {ran} ran to the end, {closed} closed by livegate, {} errors, {} panics",
        errors.values().sum::<usize>(),
        run.panics
    );
    for (e, c) in errors.iter().take(6) {
        println!("    {c} x {e}");
    }
    let mut by_address = Vec::new();
    for (addr, b) in args.read_from.iter().zip(&by) {
        let (l, k) = (&b.lat, &b.ttfk);
        println!(
            "  from {addr:<21} {} readers, {:.1} MB, {} behind, first keyframe p50 {:.1} ms, added latency p50 {:.1} / p95 {:.1} / p99 {:.1} ms ({} samples)",
            b.readers,
            b.wire as f64 / 1e6,
            b.behind,
            ms(pct(k, 50.0)),
            ms(pct(l, 50.0)),
            ms(pct(l, 95.0)),
            ms(pct(l, 99.0)),
            l.len()
        );
        by_address.push(json!({
            "addr": addr.to_string(), "readers": b.readers, "delivered_mb": b.wire as f64 / 1e6, "readers_behind": b.behind,
            "ttfk_ms": {"p50": ms(pct(k, 50.0)), "p95": ms(pct(k, 95.0))},
            "latency_ms": {"p50": ms(pct(l, 50.0)), "p95": ms(pct(l, 95.0)), "p99": ms(pct(l, 99.0)), "max": ms(pct(l, 100.0)), "samples": l.len()},
        }));
    }
    println!("  stream anomalies   {anomalous_readers} readers: {an:?}");
    print_publisher_and_end(sends.len(), pub_log, livegate_exit, run.livegate_died_at, log_lines);
    let j = json!({
        "readers": n,
        "proto": format!("{:?}", args.proto).to_lowercase(),
        "merge_window_ms": args.merge_ms,
        "seconds": run.wall_secs,
        "delivered_mb": mb,
        "published_mb": published_in_run as f64 / 1e6,
        "livegate_cpu_s": run.lg_cpu,
        "cpu_us_per_mb": cpu_us_per_mb,
        "livegate_publisher_only_cpu_ms_per_s": run.lg_cpu_idle_rate * 1e3,
        "steady": run.steady.map(|w| json!({"secs": w.secs, "livegate_cpu_s": w.lg_cpu, "tool_cpu_s": w.tool_cpu, "machine_busy_cpus": w.machine_busy})),
        "livegate_steady_net_cpu_ms_per_s": steady_net.map(|v| v * 1e3),
        "tool_cpu_s": run.tool_cpu,
        "machine_busy_cpus": run.machine_busy,
        "rss_before_kib": run.rss_before_kib,
        "rss_peak_kib": run.hwm_end_kib,
        "rss_per_reader_kib": per_reader_kib,
        "ttfk_ms": {"p50": ms(pct(&ttfk, 50.0)), "p95": ms(pct(&ttfk, 95.0)), "max": ms(pct(&ttfk, 100.0))},
        "readers_without_keyframe": no_key,
        "readers_behind": behind,
        "latency_ms": {"p50": ms(pct(&lat, 50.0)), "p95": ms(pct(&lat, 95.0)), "p99": ms(pct(&lat, 99.0)), "max": ms(pct(&lat, 100.0)), "samples": lat.len(), "unmatched": unmatched},
        "audio_latency_ms": {"p50": ms(pct(&alat, 50.0)), "p95": ms(pct(&alat, 95.0)), "p99": ms(pct(&alat, 99.0)), "max": ms(pct(&alat, 100.0)), "samples": alat.len()},
        "disconnects": disconnects,
        "closed_by_server": closed,
        "errors": errors.values().sum::<usize>() + run.panics,
        "anomalous_readers": anomalous_readers,
        "publisher_errors": pub_log.errors.len(),
        "livegate_alive": livegate_exit.is_none(),
        "livegate_exit": livegate_exit,
        "livegate_died_at_s": run.livegate_died_at,
        "by_address": by_address,
        "watched": watched,
    });
    println!("{j}");
}

/// Readers, bytes, behind, first keyframes and latencies of the readers of one --read-from address.
#[derive(Default)]
struct ByAddr {
    readers: usize,
    wire: u64,
    behind: usize,
    ttfk: Vec<u64>,
    lat: Vec<u64>,
}

/// The --watch-pids lines; their JSON.
fn print_watched(run: &Run) -> serde_json::Value {
    let mut out = Vec::new();
    for w in &run.watched {
        let steady = run.steady.as_ref().zip(w.steady_cpu).map(|(win, c)| c / win.secs.max(0.001));
        println!(
            "  watched {} (pid {}) CPU {:.2} s ({:.0}% of a core){}; RSS {} KiB before readers, {} KiB at the end ({:+} KiB), peak {} KiB",
            w.name,
            w.pid,
            w.cpu,
            100.0 * w.cpu / run.wall_secs,
            steady.map_or(String::new(), |r| format!(", steady window {:.2} ms/s", r * 1e3)),
            w.rss_before_kib,
            w.rss_end_kib,
            w.rss_end_kib as i64 - w.rss_before_kib as i64,
            w.hwm_end_kib
        );
        out.push(json!({
            "name": w.name, "pid": w.pid, "cpu_s": w.cpu, "steady_cpu_s": w.steady_cpu,
            "steady_cpu_ms_per_s": steady.map(|r| r * 1e3), "rss_before_kib": w.rss_before_kib,
            "rss_end_kib": w.rss_end_kib, "rss_peak_kib": w.hwm_end_kib,
        }));
    }
    serde_json::Value::Array(out)
}

fn print_tool_cpu(args: &Args, tool_cpu: f64, lg_cpu: f64, wall: f64, machine_busy: Option<f64>) {
    let machine = machine_busy.map_or(String::new(), |b| {
        let other = (b - (lg_cpu + tool_cpu) / wall).max(0.0);
        format!("; whole machine {b:.2} CPUs busy, {other:.2} of them neither livegate nor the tool")
    });
    println!(
        "  tool CPU           {tool_cpu:.2} s ({:.0}% of a core, {} thread(s)){machine}",
        100.0 * tool_cpu / wall,
        if args.readers == 0 { 1 } else { args.threads }
    );
}

fn print_livegate_end(exit: Option<&str>, died_at: Option<f64>, phase: &str, log_lines: &[String]) {
    match (exit, died_at) {
        (None, _) => println!("  livegate           running at the end; {} log lines", log_lines.len()),
        (Some(how), at) => println!(
            "  livegate           DIED: {how}, {}; {} log lines",
            at.map_or("after the run".to_owned(), |t| format!("{t:.1} s into the {phase}")),
            log_lines.len()
        ),
    }
    for l in log_lines.iter().take(8) {
        println!("    | {}", l.chars().take(240).collect::<String>());
    }
}

/// `--proto hls`.
pub fn print_hls(args: &Args, run: &Run, pub_log: &PubLog, livegate_exit: Option<&str>, log_lines: &[String]) {
    let n = run.hls.len() + run.panics;
    let sends = &pub_log.sends;
    let cum_at = |t: u64| sends[..sends.partition_point(|s| s.at_ns <= t)].last().map_or(0, |s| s.cum_bytes);
    let published_in_run = cum_at(run.run_end_ns) - cum_at(run.run_start_ns);
    let (mut wire, mut seg_bytes, mut segments, mut playlists, mut connects) = (0u64, 0u64, 0u64, 0u64, 0u64);
    let (mut missed, mut seg_errors, mut bad_ts, mut behind) = (0u64, 0u64, 0u64, 0usize);
    let (mut ran, mut closed) = (0usize, 0usize);
    let mut errors: BTreeMap<String, usize> = BTreeMap::new();
    let mut first = Vec::new();
    let mut no_segment = 0usize;
    let mut fetch = Vec::new();
    for r in &run.hls {
        wire += r.wire_bytes;
        seg_bytes += r.segment_bytes;
        segments += r.segments as u64;
        playlists += r.playlists as u64;
        connects += r.connects as u64;
        missed += r.missed as u64;
        seg_errors += r.segment_errors as u64;
        bad_ts += r.bad_ts as u64;
        if r.missed + r.segment_errors > 0 {
            behind += 1;
        }
        match &r.outcome {
            Outcome::Ran => ran += 1,
            Outcome::Closed => closed += 1,
            Outcome::Error(e) => *errors.entry(e.chars().take(160).collect()).or_default() += 1,
        }
        match r.first_segment_ns {
            Some(t) => first.push(t - r.start_ns),
            None => no_segment += 1,
        }
        fetch.extend(r.fetch_us.iter().map(|&us| us as u64 * 1000));
    }
    first.sort_unstable();
    fetch.sort_unstable();
    let failed = errors.values().sum::<usize>() + run.panics;
    let mb = wire as f64 / 1e6;
    let cpu_us_per_mb = if mb > 0.0 { run.lg_cpu * 1e6 / mb } else { 0.0 };
    let ms_per_reader_s = if n > 0 { run.lg_cpu * 1e3 / (n as f64 * run.wall_secs) } else { 0.0 };
    let readers_per_core = if ms_per_reader_s > 0.0 { 1e3 / ms_per_reader_s } else { 0.0 };
    let grow_kib = run.hwm_end_kib.saturating_sub(run.rss_before_kib);
    let per_reader_kib = if n > 0 { grow_kib as f64 / n as f64 } else { 0.0 };
    let poll = args.segment_secs.unwrap_or(2.0) / 2.0;
    println!(
        "livegate-load: {n} HLS readers, {:.1} s (ramp {} ms, measure {} s), playlist poll every {poll} s",
        run.wall_secs, args.ramp_ms, args.secs
    );
    println!(
        "  delivered          {mb:.1} MB ({:.1} MB/s): {segments} segments ({:.1} MB), {playlists} playlist polls; publisher sent {:.2} MB media in the same window",
        mb / run.wall_secs,
        seg_bytes as f64 / 1e6,
        published_in_run as f64 / 1e6
    );
    println!(
        "  livegate CPU       {:.2} s ({:.0}% of a core); {cpu_us_per_mb:.0} CPU-us per delivered MB; {ms_per_reader_s:.3} CPU-ms per reader-second (-> {readers_per_core:.0} readers per core); publisher-only {:.1} ms/s",
        run.lg_cpu,
        100.0 * run.lg_cpu / run.wall_secs,
        run.lg_cpu_idle_rate * 1e3
    );
    print_tool_cpu(args, run.tool_cpu, run.lg_cpu, run.wall_secs, run.machine_busy);
    println!(
        "  livegate RSS       before readers {} KiB, peak {} KiB, now {} KiB -> {per_reader_kib:.1} KiB per reader",
        run.rss_before_kib, run.hwm_end_kib, run.rss_end_kib
    );
    let watched = print_watched(run);
    println!(
        "  first segment      p50 {:.0} ms, p95 {:.0} ms, max {:.0} ms after the reader started ({no_segment} readers without one)",
        ms(pct(&first, 50.0)),
        ms(pct(&first, 95.0)),
        ms(pct(&first, 100.0))
    );
    println!(
        "  segment fetch      p50 {:.1} ms, p95 {:.1} ms, p99 {:.1} ms, max {:.1} ms (request to last byte)",
        ms(pct(&fetch, 50.0)),
        ms(pct(&fetch, 95.0)),
        ms(pct(&fetch, 99.0)),
        ms(pct(&fetch, 100.0))
    );
    println!(
        "  readers behind     {behind} ({missed} segments missed, {seg_errors} segment GETs not 200); {bad_ts} segments not whole TS packets"
    );
    println!(
        "  outcome            {ran} ran to the end, {closed} saw the playlist end, {failed} failed; {connects} TCP connections for {n} readers"
    );
    for (e, c) in errors.iter().take(6) {
        println!("    {c} x {e}");
    }
    print_publisher_and_end(sends.len(), pub_log, livegate_exit, run.livegate_died_at, log_lines);
    let j = json!({
        "readers": n,
        "proto": "hls",
        "seconds": run.wall_secs,
        "delivered_mb": mb,
        "segment_mb": seg_bytes as f64 / 1e6,
        "segments": segments,
        "playlist_polls": playlists,
        "published_mb": published_in_run as f64 / 1e6,
        "livegate_cpu_s": run.lg_cpu,
        "cpu_us_per_mb": cpu_us_per_mb,
        "cpu_ms_per_reader_s": ms_per_reader_s,
        "readers_per_core": readers_per_core,
        "tool_cpu_s": run.tool_cpu,
        "machine_busy_cpus": run.machine_busy,
        "rss_before_kib": run.rss_before_kib,
        "rss_peak_kib": run.hwm_end_kib,
        "rss_per_reader_kib": per_reader_kib,
        "first_segment_ms": {"p50": ms(pct(&first, 50.0)), "p95": ms(pct(&first, 95.0)), "max": ms(pct(&first, 100.0))},
        "fetch_ms": {"p50": ms(pct(&fetch, 50.0)), "p95": ms(pct(&fetch, 95.0)), "p99": ms(pct(&fetch, 99.0)), "max": ms(pct(&fetch, 100.0))},
        "readers_behind": behind,
        "segments_missed": missed,
        "segment_errors": seg_errors,
        "bad_ts": bad_ts,
        "failed_readers": failed,
        "connections": connects,
        "publisher_late": pub_log.late,
        "livegate_alive": livegate_exit.is_none(),
        "livegate_exit": livegate_exit,
        "watched": watched,
    });
    println!("{j}");
}

/// `--readers 0`: publishers, optionally recorded.
pub fn print_ingest(args: &Args, run: &IngestRun, logs: &[PubLog], end: &Ending, log_lines: &[String]) {
    let n = logs.len();
    let t = ingest::totals(logs, run);
    let formats: Vec<&str> = args.record.iter().map(|f| f.name()).collect();
    let formats = if formats.is_empty() { "none (ingest only)".to_owned() } else { formats.join(",") };
    let cpu_ms_per_ss = if t.stream_secs > 0.0 { run.lg_cpu * 1e3 / t.stream_secs } else { 0.0 };
    let per_core = if cpu_ms_per_ss > 0.0 { 1e3 / cpu_ms_per_ss } else { 0.0 };
    let published_secs: f64 = logs.iter().map(|l| l.media_ms_between(0, u64::MAX) as f64 / 1e3).sum();
    let wall_secs = (run.run_end_ns - run.run_start_ns) as f64 / 1e9;
    println!(
        "livegate-load: {n} publishers, record {formats}, {:.1} s measured (ramp {} ms, warmup {} s)",
        run.wall_secs, args.ramp_ms, args.warmup_secs
    );
    println!(
        "  livegate CPU       {:.2} s ({:.0}% of a core) for {:.0} stream-seconds: {cpu_ms_per_ss:.2} CPU-ms per stream-second (ingest{}) -> {per_core:.0} such streams per core",
        run.lg_cpu,
        100.0 * run.lg_cpu / run.wall_secs,
        t.stream_secs,
        if args.record.is_empty() { "" } else { " + recording" }
    );
    print_tool_cpu(args, run.tool_cpu, run.lg_cpu, run.wall_secs, run.machine_busy);
    println!(
        "  publishers         {n} ({} failed); {:.1} MB media sent in all; late tags {} from {} publishers (max {:.1} ms behind due){}",
        t.failed,
        t.media_bytes as f64 / 1e6,
        t.late,
        t.late_publishers,
        t.max_late_ms,
        if t.stream_secs < n as f64 * wall_secs * 0.98 {
            format!("; BEHIND: {:.0} media s sent in {:.0} stream-s of wall time", t.stream_secs, n as f64 * wall_secs)
        } else {
            String::new()
        }
    );
    for e in logs.iter().flat_map(|l| l.errors.iter()).take(4) {
        println!("    {e}");
    }
    let mut disk = serde_json::Value::Null;
    if let Some(u) = &end.usage {
        let total = u.total_bytes();
        let ratio = total as f64 / t.media_bytes.max(1) as f64;
        println!(
            "  disk               {:.1} MB under the record root ({}): {:.1} MB in {} .flv/.mp4/.ts files + {:.2} MB playlists + {:.2} MB sidecars/other; media sent {:.1} MB -> {ratio:.3}x",
            total as f64 / 1e6,
            end.fs_type,
            u.media_bytes as f64 / 1e6,
            u.media_files,
            u.playlist_bytes as f64 / 1e6,
            u.other_bytes as f64 / 1e6,
            t.media_bytes as f64 / 1e6
        );
        let prefix = format!("{}-", args.stream);
        let missing: Vec<&str> = logs
            .iter()
            .map(|l| l.stream.as_str())
            .filter(|s| s.starts_with(&prefix) && !u.streams.contains(*s))
            .collect();
        println!(
            "  recordings         sidecars {:?}; {:.0} s recorded vs {:.0} s published; {} of {n} streams have none{}",
            u.statuses,
            u.recorded_secs,
            published_secs * args.record.len() as f64,
            missing.len(),
            if missing.is_empty() {
                String::new()
            } else {
                format!(" ({})", missing[..missing.len().min(5)].join(", "))
            }
        );
        if let Some(w) = end.written_bytes {
            println!(
                "  written            {:.1} MB passed to write() by livegate over the run (files, logs, sockets) vs {:.1} MB media received -> {:.3}x",
                w as f64 / 1e6,
                t.media_bytes as f64 / 1e6,
                w as f64 / t.media_bytes.max(1) as f64
            );
        }
        if let Some(c) = end.shutdown_cpu {
            println!(
                "  finishing files    {c:.2} CPU-s from SIGTERM to exit for {} files ({:.1} CPU-ms per file)",
                u.media_files,
                c * 1e3 / u.media_files.max(1) as f64
            );
        }
        disk = json!({
            "written_bytes": end.written_bytes, "shutdown_cpu_s": end.shutdown_cpu,
            "bytes": total, "media_bytes": u.media_bytes, "media_files": u.media_files,
            "playlist_bytes": u.playlist_bytes, "other_bytes": u.other_bytes, "ratio_to_sent": ratio,
            "statuses": u.statuses, "recorded_secs": u.recorded_secs, "streams_without_recording": missing.len(),
            "fs": end.fs_type,
        });
    }
    let grow = run.hwm_end_kib.saturating_sub(run.rss_idle_kib);
    println!(
        "  livegate RSS       idle {} KiB, all publishing {} KiB, peak {} KiB, end {} KiB -> {:.0} KiB per stream",
        run.rss_idle_kib,
        run.rss_before_kib,
        run.hwm_end_kib,
        run.rss_end_kib,
        grow as f64 / n.max(1) as f64
    );
    match end.shutdown_secs {
        Some(s) => println!("  livegate stop      exited {s:.1} s after SIGTERM"),
        None if end.exited.is_none() => println!("  livegate stop      KILLED: still running 30 s after SIGTERM"),
        None => {}
    }
    print_livegate_end(end.exited.as_deref(), run.livegate_died_at, "measurement", log_lines);
    let j = json!({
        "publishers": n,
        "record": args.record.iter().map(|f| f.name()).collect::<Vec<_>>(),
        "seconds": run.wall_secs,
        "stream_seconds": t.stream_secs,
        "livegate_cpu_s": run.lg_cpu,
        "cpu_ms_per_stream_s": cpu_ms_per_ss,
        "streams_per_core": per_core,
        "tool_cpu_s": run.tool_cpu,
        "machine_busy_cpus": run.machine_busy,
        "media_sent_bytes": t.media_bytes,
        "late_tags": t.late,
        "late_publishers": t.late_publishers,
        "max_late_ms": t.max_late_ms,
        "failed_publishers": t.failed,
        "disk": disk,
        "rss_idle_kib": run.rss_idle_kib,
        "rss_publishing_kib": run.rss_before_kib,
        "rss_peak_kib": run.hwm_end_kib,
        "shutdown_secs": end.shutdown_secs,
        "livegate_alive": end.exited.is_none(),
        "livegate_exit": end.exited,
    });
    println!("{j}");
}

/// The publisher line and livegate's end state, shared by the reader reports.
fn print_publisher_and_end(
    tags: usize,
    pub_log: &PubLog,
    livegate_exit: Option<&str>,
    died_at: Option<f64>,
    log_lines: &[String],
) {
    println!(
        "  publisher          {} tags, {} loops, {} late > 50 ms{}",
        tags,
        pub_log.loops,
        pub_log.late,
        if pub_log.errors.is_empty() { String::new() } else { format!(", ERRORS: {:?}", pub_log.errors) }
    );
    print_livegate_end(livegate_exit, died_at, "readers phase", log_lines);
}

/// CPU seconds per second over a window.
fn rate(w: &crate::Window) -> f64 {
    w.lg_cpu / w.secs.max(0.001)
}

/// `--proto whep`.
pub fn print_whep(args: &Args, run: &Run, pub_log: &PubLog, livegate_exit: Option<&str>, log_lines: &[String]) {
    use std::collections::HashMap;

    use crate::whep::{latencies, learn_base, Matched};

    let n = run.whep.len() + run.panics;
    let sends = &pub_log.sends;
    let cum_at = |t: u64| sends[..sends.partition_point(|s| s.at_ns <= t)].last().map_or(0, |s| s.cum_bytes);
    let published_in_run = cum_at(run.run_end_ns) - cum_at(run.run_start_ns);
    // Video frames by presentation timestamp (RTP carries pts), and in send order.
    let video = || sends.iter().filter(|s| s.tag_type == TAG_VIDEO && !s.header);
    let sent: HashMap<u32, u64> = video().map(|s| (s.pts, s.at_ns)).collect();
    let mut sent_order: Vec<(u64, u32)> = video().map(|s| (s.at_ns, s.pts)).collect();
    sent_order.sort_unstable();
    // Video bytes the publisher had sent by an instant (a tag's size is the step in cum_bytes).
    let mut video_cum: Vec<(u64, u64)> = Vec::new();
    let mut prev = 0u64;
    for s in sends {
        if s.tag_type == TAG_VIDEO && !s.header {
            let total = video_cum.last().map_or(0, |v| v.1) + (s.cum_bytes - prev);
            video_cum.push((s.at_ns, total));
        }
        prev = s.cum_bytes;
    }
    let video_at = |t: u64| video_cum[..video_cum.partition_point(|v| v.0 <= t)].last().map_or(0, |v| v.1);
    let mut behind = 0usize;

    let (mut wire, mut vpk, mut apk, mut lost, mut reordered) = (0u64, 0u64, 0u64, 0u64, 0u64);
    let (mut ran, mut closed, mut with_audio, mut no_base, mut no_rtp) = (0usize, 0usize, 0usize, 0usize, 0usize);
    // Viewers that got no video at all (with Opus a viewer may have audio and no video).
    let no_video = run.whep.iter().filter(|r| r.video_packets == 0).count();
    let mut errors: BTreeMap<String, usize> = BTreeMap::new();
    let (mut answer, mut first, mut lat) = (Vec::new(), Vec::new(), Vec::new());
    let mut m = Matched::default();
    for r in &run.whep {
        wire += r.wire_bytes;
        vpk += r.video_packets;
        apk += r.audio_packets;
        lost += r.lost;
        reordered += r.reordered;
        with_audio += r.audio_negotiated as usize;
        match &r.outcome {
            Outcome::Ran => ran += 1,
            Outcome::Closed => closed += 1,
            Outcome::Error(e) => *errors.entry(e.chars().take(160).collect()).or_default() += 1,
        }
        answer.extend(r.answer_ns);
        let Some(first_rtp) = r.first_rtp_ns else {
            no_rtp += 1;
            continue;
        };
        first.push(first_rtp - r.start_ns);
        // Behind: less video than the publisher sent from the viewer's first RTP packet on (RTP payloads differ
        // from AVCC frames by a few bytes per packet; the join burst adds older frames on top).
        let published = video_at(r.end_ns) - video_at(first_rtp);
        if (r.video_bytes as f64) < published as f64 * args.behind_pct / 100.0 {
            behind += 1;
        }
        // Latency samples: frames sent after the viewer's first RTP packet and inside the steady window.
        let from = first_rtp.max(run.steady.map_or(0, |w| w.start_ns));
        match learn_base(&sent, &sent_order, &r.frames) {
            Some(b) => {
                let v = latencies(&sent, b.base, &r.frames, from, &mut lat);
                m.burst += v.burst;
                m.unmatched += v.unmatched;
                m.negative += v.negative;
            }
            None => no_base += 1,
        }
    }
    answer.sort_unstable();
    first.sort_unstable();
    lat.sort_unstable();
    let failed = errors.values().sum::<usize>() + run.panics;
    let over_40 = lat.len() - lat.partition_point(|&l| l <= 40_000_000);
    let mb = wire as f64 / 1e6;
    let cpu_us_per_mb = if mb > 0.0 { run.lg_cpu * 1e6 / mb } else { 0.0 };
    let audio = if args.whep_audio { "H.264 + Opus (AAC->Opus transcode)" } else { "H.264 only (no audio transcode)" };
    let video_path = if args.bframes { "B-frame source -> shared baseline transcode" } else { "passthrough" };
    println!(
        "livegate-load: {n} WHEP viewers, {audio}, video {video_path}, {:.1} s (ramp {} ms, measure {} s, solo {} s, settle {} s)",
        run.wall_secs, args.ramp_ms, args.secs, args.solo_secs, args.settle_secs
    );
    println!(
        "  delivered          {mb:.1} MB RTP ({:.2} MB/s, {:.0} video + {:.0} audio packets/s); publisher sent {:.2} MB media in the same window",
        mb / run.wall_secs,
        vpk as f64 / run.wall_secs,
        apk as f64 / run.wall_secs,
        published_in_run as f64 / 1e6
    );
    let idle = run.lg_cpu_idle_rate;
    println!(
        "  livegate CPU       whole run {:.2} s ({:.0}% of a core, setup and join bursts included; {cpu_us_per_mb:.0} CPU-us per delivered MB); publisher-only {:.1} ms/s",
        run.lg_cpu,
        100.0 * run.lg_cpu / run.wall_secs,
        idle * 1e3
    );
    let mut per_reader_us = None;
    let mut marginal_us = None;
    if let Some(w) = &run.steady {
        let net = (rate(w) - idle).max(0.0);
        let per = net / n.max(1) as f64;
        per_reader_us = Some(per * 1e6);
        println!(
            "  steady CPU         {:.1} s window: livegate {:.0}% of a core = publisher {:.1}% + {:.1}% for {n} viewers -> {:.0} CPU-us per reader-second = {:.3}% of a core per reader -> {:.0} readers per core",
            w.secs,
            100.0 * rate(w),
            100.0 * idle,
            100.0 * net,
            per * 1e6,
            per * 100.0,
            if per > 0.0 { 1.0 / per } else { 0.0 }
        );
        println!(
            "  tool CPU (steady)  {:.0}% of a core ({:.0} CPU-us per viewer-second: DTLS/SRTP/RTCP of the viewers); whole machine {}",
            100.0 * w.tool_cpu / w.secs,
            w.tool_cpu * 1e6 / w.secs / n.max(1) as f64,
            w.machine_busy.map_or("?".into(), |b| format!("{b:.2} CPUs busy"))
        );
        if let Some(s) = &run.solo {
            let inc = (rate(w) - rate(s)) / (n.max(2) - 1) as f64;
            marginal_us = Some(inc * 1e6);
            println!(
                "  1 vs {n} viewers    1 viewer alone ({:.1} s): livegate {:.1}% of a core ({:.1}% over publisher-only: transcoders + 1 viewer); {n}: {:.1}% -> {:.0} CPU-us per added reader-second = {:.3}% of a core -> {:.0} readers per core at the margin",
                s.secs,
                100.0 * rate(s),
                100.0 * (rate(s) - idle),
                100.0 * rate(w),
                inc * 1e6,
                inc * 100.0,
                if inc > 0.0 { 1.0 / inc } else { 0.0 }
            );
        }
    } else {
        println!("  steady CPU         no window (measure at least --settle-secs + 2 s)");
    }
    print_tool_cpu(args, run.tool_cpu, run.lg_cpu, run.wall_secs, run.machine_busy);
    let grow_kib = run.hwm_end_kib.saturating_sub(run.rss_before_kib);
    println!(
        "  livegate RSS       before viewers {} KiB, peak {} KiB, now {} KiB -> {:.0} KiB per viewer",
        run.rss_before_kib,
        run.hwm_end_kib,
        run.rss_end_kib,
        grow_kib as f64 / n.max(1) as f64
    );
    let watched = print_watched(run);
    println!(
        "  setup              POST->201 p50 {:.1} ms, p95 {:.1} ms, max {:.1} ms; start->first RTP p50 {:.0} ms, p95 {:.0} ms, max {:.0} ms ({no_rtp} viewers without RTP, {no_video} without video; audio in {with_audio} answers)",
        ms(pct(&answer, 50.0)),
        ms(pct(&answer, 95.0)),
        ms(pct(&answer, 100.0)),
        ms(pct(&first, 50.0)),
        ms(pct(&first, 95.0)),
        ms(pct(&first, 100.0))
    );
    println!(
        "  added latency      RTMP->WHEP p50 {:.1} ms, p95 {:.1} ms, p99 {:.1} ms, max {:.1} ms, {:.2}% over 40 ms ({} samples{}; {} before first RTP / steady window excluded; {} unmatched; {} negative; {no_base} viewers with no RTP-timestamp base)",
        ms(pct(&lat, 50.0)),
        ms(pct(&lat, 95.0)),
        ms(pct(&lat, 99.0)),
        ms(pct(&lat, 100.0)),
        100.0 * over_40 as f64 / lat.len().max(1) as f64,
        lat.len(),
        if run.steady.is_some() { ", frames sent in the steady window" } else { "" },
        m.burst,
        m.unmatched,
        m.negative
    );
    {
        use std::sync::atomic::Ordering::Relaxed;
        let (plis, keys) = (crate::reader::PLIS_SENT.load(Relaxed), crate::reader::KEYFRAMES_RX.load(Relaxed));
        let viewer_secs = n as f64 * args.secs as f64;
        println!(
            "  keyframes          {keys} received = {:.2} per viewer-second; {plis} PLIs sent (--whep-pli-ms {})",
            keys as f64 / viewer_secs.max(1.0),
            args.whep_pli_ms
        );
    }
    println!(
        "  video RTP          {lost} packets missing by sequence number ({:.2}% of {vpk} received), {reordered} out of order (NACK retransmissions){}",
        100.0 * lost as f64 / vpk.max(1) as f64,
        run.steady.and_then(|w| w.udp_errors).map_or(String::new(), |(i, r, s)| format!(
            "; machine-wide UDP drops in the steady window: {i} InErrors, {r} RcvbufErrors, {s} SndbufErrors"
        ))
    );
    println!(
        "  viewers behind     {behind} (< {}% of the video bytes published since their first RTP packet: per-reader CPU figures hold only when this is 0)",
        args.behind_pct
    );
    println!(
        "  outcome            {ran} ran to the end, {closed} lost their connection (ICE Disconnected/Failed or track ended), {failed} failed"
    );
    if closed > 0 {
        let by = |i: usize| crate::whep::ENDED_BY[i].load(std::sync::atomic::Ordering::Relaxed);
        println!(
            "    lost: {} ICE Disconnected, {} Failed, {} Closed, {} video track ended",
            by(0),
            by(1),
            by(2),
            by(3)
        );
    }
    for (e, c) in errors.iter().take(6) {
        println!("    {c} x {e}");
    }
    print_publisher_and_end(sends.len(), pub_log, livegate_exit, run.livegate_died_at, log_lines);
    let w = |o: &Option<crate::Window>| {
        o.map(|w| json!({"secs": w.secs, "livegate_cpu_s": w.lg_cpu, "tool_cpu_s": w.tool_cpu, "machine_busy_cpus": w.machine_busy, "udp_errors": w.udp_errors}))
    };
    let j = json!({
        "readers": n,
        "proto": "whep",
        "audio": args.whep_audio,
        "bframes": args.bframes,
        "seconds": run.wall_secs,
        "delivered_mb": mb,
        "published_mb": published_in_run as f64 / 1e6,
        "livegate_cpu_s": run.lg_cpu,
        "cpu_us_per_mb": cpu_us_per_mb,
        "viewers_behind": behind,
        "livegate_publisher_only_cpu_ms_per_s": idle * 1e3,
        "steady": w(&run.steady),
        "solo": w(&run.solo),
        "cpu_us_per_reader_s": per_reader_us,
        "marginal_cpu_us_per_reader_s": marginal_us,
        "tool_cpu_s": run.tool_cpu,
        "rss_before_kib": run.rss_before_kib,
        "rss_peak_kib": run.hwm_end_kib,
        "answer_ms": {"p50": ms(pct(&answer, 50.0)), "p95": ms(pct(&answer, 95.0)), "max": ms(pct(&answer, 100.0))},
        "first_rtp_ms": {"p50": ms(pct(&first, 50.0)), "p95": ms(pct(&first, 95.0)), "max": ms(pct(&first, 100.0))},
        "latency_ms": {"p50": ms(pct(&lat, 50.0)), "p95": ms(pct(&lat, 95.0)), "p99": ms(pct(&lat, 99.0)), "max": ms(pct(&lat, 100.0)), "samples": lat.len(), "over_40ms": over_40, "unmatched": m.unmatched, "negative": m.negative, "viewers_without_base": no_base},
        "video_packets": vpk,
        "audio_packets": apk,
        "lost": lost,
        "failed": failed,
        "viewers_without_rtp": no_rtp,
        "viewers_without_video": no_video,
        "livegate_alive": livegate_exit.is_none(),
        "livegate_exit": livegate_exit,
        "watched": watched,
    });
    println!("{j}");
}
