//! Mapping an input's media timestamps onto the mix pipeline's running time, and the sanity check of input
//! video before it reaches a decoder. Pure, so the policy is testable without a clock or GStreamer.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::media::avc;

/// How far (ms) an input's mapped time may drift from the pipeline's clock before it is re-anchored.
/// Beyond it the input restarted, paused or jumped: its frames would be dropped as late or held for seconds.
pub const RESYNC_MS: i64 = 1000;

/// Ties one input's timeline (audio and video alike, so lip-sync holds) to the mix's running time. The
/// newest media in the stream (`head`) is placed at "now": a reader joins at a keyframe up to a GOP back, and
/// those older frames map into the past, where they are decoded but dropped by the mixers as late instead of
/// delaying the input by a GOP. Later frames keep their media spacing, so network jitter does not become
/// judder as long as it stays within the mixers' latency.
#[derive(Debug, Clone, Copy, Default)]
pub struct Anchor {
    at: Option<(i64, i64)>,
    pub resyncs: u32,
}

impl Anchor {
    /// Running time (ms) for a frame with media timestamp `ts`, handled at running time `now` while the
    /// stream's newest timestamp is `head`.
    pub fn map(&mut self, ts: i64, head: i64, now: i64) -> i64 {
        let head = head.max(ts);
        if let Some((ts0, rt0)) = self.at {
            if (rt0 + (head - ts0) - now).abs() <= RESYNC_MS {
                return rt0 + (ts - ts0);
            }
            self.resyncs += 1;
        }
        self.at = Some((head, now));
        now + (ts - head)
    }

    /// Forget the mapping (the input's stream ended; its next session starts afresh).
    pub fn reset(&mut self) {
        self.at = None;
    }
}

/// Whether an AVCC access unit is framed well enough to hand to a decoder: every NAL length fits and every
/// NAL header is legal. Garbage rarely passes; what does is caught by the decoder's own error path.
pub fn avcc_plausible(payload: &[u8], nal_length_size: u8) -> bool {
    let mut any = false;
    for nal in avc::avcc_nalus(payload, nal_length_size) {
        let Ok(nal) = nal else { return false };
        let header = nal[0];
        let kind = header & 0x1f;
        if header & 0x80 != 0 || kind == 0 || kind > 23 {
            return false;
        }
        any = true;
    }
    any
}

/// The mix's added latency: from an input video frame's arrival in the hub to the publication (in the hub) of
/// the first output frame whose time covers it. Frames of a join burst (arrived long before they were fed)
/// are not counted: they are decoded only to reach the live edge.
#[derive(Debug, Default)]
pub struct LatencyProbe {
    pending: VecDeque<(i64, Instant)>,
    /// Moving average (ms) and the worst sample of the current reporting window.
    pub avg_ms: f64,
    pub max_ms: f64,
    pub samples: u64,
}

impl LatencyProbe {
    const CAP: usize = 1024;

    /// An input frame fed at running time `rt` (ms) that arrived in the hub at `arrived`.
    pub fn input(&mut self, rt: i64, arrived: Instant, now: Instant) {
        if now.saturating_duration_since(arrived) > Duration::from_millis(100) {
            return;
        }
        if self.pending.len() == Self::CAP {
            self.pending.pop_front();
        }
        // Inputs feed concurrently: keep the queue ordered by running time.
        let at = self.pending.iter().rposition(|(t, _)| *t <= rt).map_or(0, |i| i + 1);
        self.pending.insert(at, (rt, arrived));
    }

    /// An output frame for running time `pts` (ms) was published at `now`.
    pub fn output(&mut self, pts: i64, now: Instant) {
        while self.pending.front().is_some_and(|(t, _)| *t <= pts) {
            let Some((_, arrived)) = self.pending.pop_front() else { break };
            let ms = now.saturating_duration_since(arrived).as_secs_f64() * 1000.0;
            self.avg_ms = if self.samples == 0 { ms } else { self.avg_ms * 0.95 + ms * 0.05 };
            self.max_ms = self.max_ms.max(ms);
            self.samples += 1;
        }
    }

    /// (average, worst since the last call) in ms.
    pub fn report(&mut self) -> (f64, f64) {
        let r = (self.avg_ms, self.max_ms);
        self.max_ms = 0.0;
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_probe_measures_arrival_to_output() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut p = LatencyProbe::default();
        p.input(1000, ms(0), ms(1));
        p.input(1033, ms(33), ms(34));
        p.input(990, ms(5), ms(6));
        // A burst frame that arrived seconds before it was fed does not count.
        p.input(10, t0, ms(2000));
        p.output(1000, ms(90));
        assert_eq!(p.samples, 2);
        assert!((p.avg_ms - 85.25).abs() < 0.01, "{}", p.avg_ms);
        p.output(1034, ms(130));
        assert_eq!(p.samples, 3);
        assert_eq!(p.report().1, 97.0);
        assert_eq!(p.report().1, 0.0);
    }

    #[test]
    fn keeps_media_spacing_and_resyncs_after_jumps() {
        let mut a = Anchor::default();
        // Joining at a keyframe 1.5 s behind the head: the old frames land in the past.
        assert_eq!(a.map(3500, 5000, 100), -1400);
        assert_eq!(a.map(4990, 5000, 101), 90);
        assert_eq!(a.map(5000, 5000, 102), 100);
        assert_eq!(a.map(5033, 5033, 150), 133, "jitter is absorbed: the frame keeps its media time");
        assert_eq!(a.map(5066, 5066, 160), 166);
        // The publisher came back after a 5 s gap but the hub continued its timeline 10 ms later.
        assert_eq!(a.map(5076, 5076, 5200), 5200);
        assert_eq!(a.resyncs, 1);
        assert_eq!(a.map(5109, 5109, 5230), 5233);
        // A clock that leaps ahead.
        assert_eq!(a.map(90_000, 90_000, 5260), 5260);
        a.reset();
        assert_eq!(a.map(1, 1, 7000), 7000);
    }

    #[test]
    fn avcc_checks() {
        let good = [0, 0, 0, 3, 0x65, 0x88, 0x84, 0, 0, 0, 2, 0x41, 0x9a];
        assert!(avcc_plausible(&good, 4));
        assert!(!avcc_plausible(&[0, 0, 0, 9, 0x65, 1], 4), "length overrun");
        assert!(!avcc_plausible(&[0, 0, 0, 1, 0xe5], 4), "forbidden bit");
        assert!(!avcc_plausible(&[0, 0, 0, 1, 0x1f], 4), "reserved type");
        assert!(!avcc_plausible(&[], 4));
    }
}
