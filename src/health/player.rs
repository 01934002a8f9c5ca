//! One player's quality, pure: what its connection reports (counters read once a second) in, a level out.
//! live-player has no `netQualityLevel` of its own, but an app wants the same 0–6 for the viewer's side, and
//! an operator wants to see which players are in trouble. The rule (also in the README):
//!
//! - `backlog`: media the stream has that the player has not taken yet (its socket is full: a slow downlink).
//!   Bands as for a publisher's delay, doubled (a player's buffer absorbs more): < 300 ms best, 300 good,
//!   600 normal, 1200 poor, 2400 very poor.
//! - `skips` (max_cache jumps to a keyframe: the viewer lost media) over the last 10 s: 1 normal, 2 poor,
//!   3 or more very poor.
//! - `stalls` (the socket could not take a whole batch and the connection went back to catching up) over the
//!   last 10 s: 1–2 good, 3–9 normal, 10 or more poor.
//! - `loss` (WebRTC viewers: the fraction lost their receiver reports give, %): < 2 best, 2 good, 5 normal,
//!   10 poor, 20 very poor.
//! - 6 unavailable: for 3 s the stream went on (its newest media time moved a second or more) and the player
//!   received nothing. 0 unknown: its first 2 s.
//!
//! The level is the worst of these.

use std::collections::VecDeque;

use super::Quality;

/// Its first seconds are unknown: a join burst is not a backlog.
const KNOWN_AFTER_MS: u64 = 2_000;
/// Nothing received while the stream went on for this long: unavailable.
const STALLED_AFTER_MS: u64 = 3_000;
/// Skips and stalls count over this window.
const WINDOW_MS: u64 = 10_000;

/// What a player's connection has counted, read at one instant.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PlayerSample {
    pub backlog_ms: i64,
    /// Totals since the player started.
    pub skips: u64,
    pub stalls: u64,
    pub bytes_out: u64,
    /// Receiver-reported loss, percent (WebRTC viewers; none for the others).
    pub loss_percent: Option<f64>,
    /// The stream's newest media time (ms), if it has media.
    pub stream_head_ms: Option<i64>,
}

#[derive(Debug, Clone, Copy)]
struct Reading {
    at_ms: u64,
    sample: PlayerSample,
}

/// A player's meter: keeps the last 10 s of samples.
#[derive(Debug, Default)]
pub struct PlayerMeter {
    first_ms: Option<u64>,
    readings: VecDeque<Reading>,
    level: Quality,
}

impl PlayerMeter {
    pub fn level(&self) -> Quality {
        self.level
    }

    /// Takes a sample at `now_ms` (any monotonic clock); returns (new level, previous) when it changed.
    pub fn evaluate(&mut self, now_ms: u64, sample: PlayerSample) -> Option<(Quality, Quality)> {
        let first = *self.first_ms.get_or_insert(now_ms);
        self.readings.push_back(Reading { at_ms: now_ms, sample });
        while self.readings.front().is_some_and(|r| now_ms.saturating_sub(r.at_ms) > WINDOW_MS) {
            self.readings.pop_front();
        }
        let level = if now_ms.saturating_sub(first) < KNOWN_AFTER_MS { Quality::Unknown } else { self.judge(now_ms) };
        let previous = std::mem::replace(&mut self.level, level);
        (previous != level).then_some((level, previous))
    }

    fn judge(&self, now_ms: u64) -> Quality {
        let newest = self.readings.back().expect("just pushed").sample;
        let oldest = self.readings.front().expect("just pushed").sample;
        // Unavailable: the newest reading at least STALLED_AFTER_MS after one with the same bytes, while the
        // stream moved on by a second or more.
        let stalled = self.readings.iter().any(|r| {
            now_ms.saturating_sub(r.at_ms) >= STALLED_AFTER_MS
                && r.sample.bytes_out == newest.bytes_out
                && matches!((r.sample.stream_head_ms, newest.stream_head_ms), (Some(a), Some(b)) if b - a >= 1_000)
        });
        if stalled {
            return Quality::Unavailable;
        }
        let backlog = Quality::banded(newest.backlog_ms as f64, [300.0, 600.0, 1200.0, 2400.0]);
        let skips = match newest.skips.saturating_sub(oldest.skips) {
            0 => Quality::Best,
            1 => Quality::Normal,
            2 => Quality::Poor,
            _ => Quality::VeryPoor,
        };
        let stalls = match newest.stalls.saturating_sub(oldest.stalls) {
            0 => Quality::Best,
            1..=2 => Quality::Good,
            3..=9 => Quality::Normal,
            _ => Quality::Poor,
        };
        let loss = newest.loss_percent.map_or(Quality::Best, |l| Quality::banded(l, [2.0, 5.0, 10.0, 20.0]));
        backlog.max(skips).max(stalls).max(loss)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A trace: one sample a second, (backlog ms, skips, stalls, bytes, stream head ms).
    fn run(trace: &[(i64, u64, u64, u64, i64)]) -> Vec<Quality> {
        let mut m = PlayerMeter::default();
        trace
            .iter()
            .enumerate()
            .map(|(i, &(backlog_ms, skips, stalls, bytes_out, head))| {
                let s = PlayerSample {
                    backlog_ms,
                    skips,
                    stalls,
                    bytes_out,
                    loss_percent: None,
                    stream_head_ms: Some(head),
                };
                m.evaluate(i as u64 * 1000, s);
                m.level()
            })
            .collect()
    }

    #[test]
    fn a_player_keeping_up_is_best_after_its_first_seconds() {
        let t: Vec<_> = (0..6).map(|i| (0, 0, 0, i * 200_000, i as i64 * 1000)).collect();
        let q = run(&t);
        assert_eq!(&q[..2], &[Quality::Unknown, Quality::Unknown]);
        assert!(q[2..].iter().all(|l| *l == Quality::Best), "{q:?}");
    }

    #[test]
    fn a_slow_downlink_sinks_with_its_backlog_and_skips_then_recovers() {
        // Recorded shape of a 600 kbit/s player of a 1.5 Mbit/s stream (max_cache 3 s): the backlog grows by
        // about 600 ms a second, a skip at 3 s, and again; then the downlink recovers.
        let mut t = Vec::new();
        let mut bytes = 0;
        for i in 0..8i64 {
            bytes += 75_000;
            let backlog = (i % 5) * 600;
            t.push((backlog, (i / 5) as u64, i as u64, bytes, i * 1000));
        }
        for i in 8..22i64 {
            bytes += 190_000;
            t.push((0, 1, 7, bytes, i * 1000));
        }
        let q = run(&t);
        assert!(q[4] >= Quality::Poor, "a 2.4 s backlog and stalls every second: {q:?}");
        assert!(q[5] >= Quality::Normal, "a skip in the last 10 s: {q:?}");
        assert_eq!(q[21], Quality::Best, "ten quiet seconds later: {q:?}");
    }

    #[test]
    fn nothing_received_while_the_stream_goes_on_is_unavailable() {
        let mut t: Vec<_> = (0..3).map(|i| (0, 0, 0, i * 1000, i as i64 * 1000)).collect();
        t.extend((3..8).map(|i| (0, 0, 0, 2000, i as i64 * 1000)));
        let q = run(&t);
        assert_eq!(q[4], Quality::Best, "two seconds of nothing is not yet a stall: {q:?}");
        assert_eq!(q[5], Quality::Unavailable, "{q:?}");
        // A stream that itself stopped (a publisher's stall) is not the player's fault.
        let quiet: Vec<_> = (0..8).map(|_| (0, 0, 0, 5000, 3000)).collect();
        assert!(run(&quiet)[2..].iter().all(|l| *l == Quality::Best));
    }

    #[test]
    fn webrtc_loss_sets_the_level() {
        let mut m = PlayerMeter::default();
        let s = |loss| PlayerSample { loss_percent: Some(loss), stream_head_ms: Some(0), ..Default::default() };
        m.evaluate(0, s(0.0));
        assert_eq!(m.evaluate(2_000, s(0.5)), Some((Quality::Best, Quality::Unknown)));
        assert_eq!(m.evaluate(3_000, s(12.0)), Some((Quality::Poor, Quality::Best)));
        assert_eq!(m.evaluate(4_000, s(25.0)), Some((Quality::VeryPoor, Quality::Poor)));
        assert_eq!(m.evaluate(5_000, s(25.0)), None);
    }
}
