//! Turning the run's raw records into the figures: human-readable lines and one JSON line on stdout.

use std::collections::BTreeMap;

use livegate::media::flv::TAG_VIDEO;
use serde_json::json;

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
    for r in &run.results {
        wire += r.wire_bytes;
        match &r.outcome {
            Outcome::Ran => ran += 1,
            Outcome::Closed => closed += 1,
            Outcome::Error(e) => *errors.entry(e.chars().take(160).collect()).or_default() += 1,
        }
        match r.first_key_ns {
            Some(k) => ttfk.push(k - r.start_ns),
            None => no_key += 1,
        }
        let published = cum_at(r.end_ns) - cum_at(r.start_ns);
        if (r.media_bytes as f64) < published as f64 * args.behind_pct / 100.0 {
            behind += 1;
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
            }
        }
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
        "livegate-load: {n} {:?} readers, {:.1} s (ramp {} ms, measure {} s), flush_ms {}",
        args.proto,
        run.wall_secs,
        args.ramp_ms,
        args.secs,
        args.flush_ms.map_or("default".into(), |v| v.to_string())
    );
    println!(
        "  delivered          {mb:.1} MB ({:.1} MB/s); publisher sent {:.2} MB media in the same window",
        mb / run.wall_secs,
        published_in_run as f64 / 1e6
    );
    println!("  livegate CPU       {:.2} s ({:.0}% of a core); {cpu_us_per_mb:.0} CPU-us per delivered MB; publisher-only {:.1} ms/s", run.lg_cpu, 100.0 * run.lg_cpu / run.wall_secs, run.lg_cpu_idle_rate * 1e3);
    println!(
        "  tool CPU           {:.2} s ({:.0}% of a core, {} thread(s))",
        run.tool_cpu,
        100.0 * run.tool_cpu / run.wall_secs,
        args.threads
    );
    println!("  livegate RSS       before readers {} KiB (HWM {}), peak {} KiB, now {} KiB -> {per_reader_kib:.1} KiB per reader", run.rss_before_kib, run.hwm_before_kib, run.hwm_end_kib, run.rss_end_kib);
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
    println!("  stream anomalies   {anomalous_readers} readers: {an:?}");
    println!(
        "  publisher          {} tags, {} loops, {} late > 50 ms{}",
        sends.len(),
        pub_log.loops,
        pub_log.late,
        if pub_log.errors.is_empty() { String::new() } else { format!(", ERRORS: {:?}", pub_log.errors) }
    );
    match (livegate_exit, run.livegate_died_at) {
        (None, _) => println!("  livegate           running at the end; {} log lines", log_lines.len()),
        (Some(how), at) => println!(
            "  livegate           DIED: {how}, {}; {} log lines",
            at.map_or("after the run".to_owned(), |t| format!("{t:.1} s into the readers phase")),
            log_lines.len()
        ),
    }
    for l in log_lines.iter().take(8) {
        println!("    | {}", l.chars().take(240).collect::<String>());
    }
    let j = json!({
        "readers": n,
        "proto": format!("{:?}", args.proto).to_lowercase(),
        "flush_ms": args.flush_ms,
        "seconds": run.wall_secs,
        "delivered_mb": mb,
        "published_mb": published_in_run as f64 / 1e6,
        "livegate_cpu_s": run.lg_cpu,
        "cpu_us_per_mb": cpu_us_per_mb,
        "livegate_publisher_only_cpu_ms_per_s": run.lg_cpu_idle_rate * 1e3,
        "tool_cpu_s": run.tool_cpu,
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
    });
    println!("{j}");
}
