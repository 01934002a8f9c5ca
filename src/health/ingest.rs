//! One publish's ingest meter: frames in (with when they arrived, in ms on any monotonic clock), windows and
//! levels out. Per-second buckets for the last 11 s, so a reading costs the same however busy the stream is.

use std::collections::VecDeque;

use serde::Serialize;

use super::{HealthChange, PublisherState, Quality};
use crate::media::MediaKind;

/// Buckets: the current second and the ten complete ones before it.
const SECS: usize = 11;
/// Media this old or more before the first reading counts as "known": less is level 0.
const KNOWN_AFTER_MS: u64 = 2_000;
/// Nothing for this long while publishing: level 6.
const STALLED_AFTER_MS: u64 = 3_000;
/// Background: video at this rate or less…
const BACKGROUND_FPS: f64 = 5.0;
/// …from a usual rate of at least this.
const FOREGROUND_FPS: f64 = 10.0;

#[derive(Debug, Default, Clone, Copy)]
struct Bucket {
    sec: u64,
    video: u32,
    audio: u32,
    keyframes: u32,
    key_interval_sum: i64,
    key_intervals: u32,
    bytes: u64,
    jitter_max: f64,
    max_gap_ms: u64,
}

/// A window's summary (the API's `ingest.last_1s` / `last_10s`).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct IngestWindow {
    /// Complete seconds covered (fewer than asked for while the publish is young).
    pub secs: u32,
    pub fps: f64,
    /// Audio frames per second (0: no audio arrived).
    pub audio_fps: f64,
    pub bitrate_kbps: f64,
    /// Mean media time between keyframes that arrived in the window.
    pub keyframe_interval_ms: Option<f64>,
    /// The largest interarrival jitter estimate (RFC 3550) in the window.
    pub jitter_ms: f64,
    /// The longest time between two frames' arrivals.
    pub max_gap_ms: u64,
}

#[derive(Debug)]
pub struct IngestMeter {
    buckets: [Bucket; SECS],
    now_sec: u64,
    first_ms: Option<u64>,
    last_ms: Option<u64>,
    last_dts: Option<i64>,
    last_key_dts: Option<i64>,
    /// Transit (arrival − media time) of the newest frame, and the least per second over the last 10 s.
    last_transit: Option<i64>,
    transit_min: VecDeque<(u64, i64)>,
    jitter: f64,
    quality: Quality,
    state: PublisherState,
    /// The video rate this publisher usually sends at (decays slowly; only learnt in the foreground).
    usual_fps: f64,
    /// A WebRTC publisher's packet loss before repair over its last second (percent), and when it was read.
    loss: Option<(u64, f64)>,
}

impl Default for IngestMeter {
    fn default() -> Self {
        Self {
            buckets: [Bucket::default(); SECS],
            now_sec: 0,
            first_ms: None,
            last_ms: None,
            last_dts: None,
            last_key_dts: None,
            last_transit: None,
            transit_min: VecDeque::with_capacity(SECS),
            jitter: 0.0,
            quality: Quality::Unknown,
            state: PublisherState::Foreground,
            usual_fps: 0.0,
            loss: None,
        }
    }
}

impl IngestMeter {
    /// A frame arrived at `at_ms`. Configuration records count as bytes only.
    pub fn observe(&mut self, at_ms: u64, kind: MediaKind, keyframe: bool, config: bool, dts: i64, bytes: usize) {
        self.advance(at_ms / 1000);
        let b = self.bucket_mut(at_ms / 1000);
        b.bytes += bytes as u64;
        if config || kind == MediaKind::Data {
            return;
        }
        self.first_ms.get_or_insert(at_ms);
        if let Some(last) = self.last_ms {
            let gap = at_ms.saturating_sub(last);
            let b = self.bucket_mut(at_ms / 1000);
            b.max_gap_ms = b.max_gap_ms.max(gap);
        }
        self.last_ms = Some(at_ms);
        // A new timeline (a resumed publish, an encoder restart): transit history means nothing across it.
        if let Some(last) = self.last_dts {
            if dts < last - 1_000 || dts > last + 10_000 {
                self.transit_min.clear();
                self.last_transit = None;
                self.last_key_dts = None;
                self.jitter = 0.0;
            }
        }
        self.last_dts = Some(dts);
        let transit = at_ms as i64 - dts;
        if let Some(prev) = self.last_transit {
            // RFC 3550 §6.4.1: J += (|D| − J) / 16, D the change in transit between consecutive frames.
            self.jitter += ((transit - prev).abs() as f64 - self.jitter) / 16.0;
        }
        self.last_transit = Some(transit);
        let sec = at_ms / 1000;
        match self.transit_min.back_mut() {
            Some((s, m)) if *s == sec => *m = (*m).min(transit),
            _ => self.transit_min.push_back((sec, transit)),
        }
        while self.transit_min.front().is_some_and(|(s, _)| sec - s >= 10) {
            self.transit_min.pop_front();
        }
        let jitter = self.jitter;
        let key_interval = match (kind, keyframe) {
            (MediaKind::Video, true) => {
                let i = self.last_key_dts.map(|k| dts - k).filter(|i| *i > 0);
                self.last_key_dts = Some(dts);
                i
            }
            _ => None,
        };
        let b = self.bucket_mut(sec);
        match kind {
            MediaKind::Video => b.video += 1,
            _ => b.audio += 1,
        }
        if keyframe && kind == MediaKind::Video {
            b.keyframes += 1;
        }
        if let Some(i) = key_interval {
            b.key_interval_sum += i;
            b.key_intervals += 1;
        }
        b.jitter_max = b.jitter_max.max(jitter);
    }

    /// How much later than its best the newest frame arrived (ms): the publisher's backlog.
    pub fn delay_ms(&self) -> f64 {
        match (self.last_transit, self.transit_min.iter().map(|(_, m)| *m).min()) {
            (Some(t), Some(min)) => (t - min).max(0) as f64,
            _ => 0.0,
        }
    }

    pub fn jitter_ms(&self) -> f64 {
        self.jitter
    }

    /// A WebRTC publisher's RTP loss before repair (NACK retransmissions count as lost) over the last second,
    /// percent, read at `at_ms`. Publishers over TCP (RTMP) have none.
    pub fn observe_loss(&mut self, at_ms: u64, percent: f64) {
        self.loss = Some((at_ms, percent));
    }

    /// The newest loss reading, unless it is older than the stall bound (the session stopped measuring).
    pub fn loss_percent(&self, now_ms: u64) -> Option<f64> {
        self.loss.filter(|(at, _)| now_ms.saturating_sub(*at) < STALLED_AFTER_MS).map(|(_, p)| p)
    }

    pub fn quality(&self) -> Quality {
        self.quality
    }

    pub fn state(&self) -> PublisherState {
        self.state
    }

    /// The last `secs` complete seconds before `now_ms` (those since the first frame).
    pub fn window(&self, now_ms: u64, secs: u32) -> IngestWindow {
        let now = now_ms / 1000;
        let first = self.first_ms.map_or(now, |f| f / 1000);
        // Complete seconds: from max(first + 1, now − secs) to now − 1 (the first second was partial).
        let from = (first + 1).max(now.saturating_sub(u64::from(secs)));
        let mut w = IngestWindow::default();
        let (mut key_sum, mut keys) = (0i64, 0u32);
        let (mut video, mut audio, mut bytes) = (0u64, 0u64, 0u64);
        for s in from..now {
            let Some(b) = self.bucket(s) else { continue };
            video += u64::from(b.video);
            audio += u64::from(b.audio);
            bytes += b.bytes;
            key_sum += b.key_interval_sum;
            keys += b.key_intervals;
            w.jitter_ms = w.jitter_ms.max(b.jitter_max);
            w.max_gap_ms = w.max_gap_ms.max(b.max_gap_ms);
        }
        w.secs = now.saturating_sub(from) as u32;
        if w.secs > 0 {
            let n = f64::from(w.secs);
            w.fps = video as f64 / n;
            w.audio_fps = audio as f64 / n;
            w.bitrate_kbps = bytes as f64 * 8.0 / 1000.0 / n;
        }
        w.keyframe_interval_ms = (keys > 0).then(|| key_sum as f64 / f64::from(keys));
        w
    }

    /// Re-reads the levels at `now_ms` (once a second): what changed since the last reading.
    pub fn evaluate(&mut self, now_ms: u64) -> Vec<HealthChange> {
        self.advance(now_ms / 1000);
        let mut out = Vec::new();
        let quality = match (self.first_ms, self.last_ms) {
            (Some(first), Some(last)) if now_ms.saturating_sub(first) >= KNOWN_AFTER_MS => {
                if now_ms.saturating_sub(last) >= STALLED_AFTER_MS {
                    Quality::Unavailable
                } else {
                    let loss = self.loss_percent(now_ms).map_or(Quality::Best, Quality::for_loss);
                    Quality::for_delay(self.delay_ms()).max(Quality::for_jitter(self.jitter)).max(loss)
                }
            }
            (Some(_), Some(last)) if now_ms.saturating_sub(last) >= STALLED_AFTER_MS => Quality::Unavailable,
            _ => Quality::Unknown,
        };
        if quality != self.quality {
            out.push(HealthChange::Quality { level: quality, previous: self.quality });
            self.quality = quality;
        }
        let last = self.window(now_ms, 1).fps;
        let recent = self.window(now_ms, 2);
        match self.state {
            PublisherState::Foreground => {
                if last > BACKGROUND_FPS {
                    self.usual_fps = last.max(self.usual_fps * 0.98);
                }
                // Some frames still come (nothing at all is a stall: level 6, not the background).
                let dropped = recent.secs == 2
                    && recent.fps > 0.0
                    && recent.fps <= BACKGROUND_FPS
                    && self.usual_fps >= FOREGROUND_FPS;
                if dropped {
                    self.state = PublisherState::Background;
                    out.push(HealthChange::State { state: self.state });
                }
            }
            PublisherState::Background => {
                if last >= (self.usual_fps / 2.0).max(BACKGROUND_FPS + 3.0) {
                    self.state = PublisherState::Foreground;
                    out.push(HealthChange::State { state: self.state });
                }
            }
        }
        out
    }

    /// Moves the current second to `sec`, emptying the buckets of the seconds in between.
    fn advance(&mut self, sec: u64) {
        if sec <= self.now_sec && self.first_ms.is_some() {
            return;
        }
        let from = if self.first_ms.is_some() { self.now_sec + 1 } else { sec.saturating_sub(SECS as u64 - 1) };
        for s in from.max(sec.saturating_sub(SECS as u64 - 1))..=sec {
            self.buckets[(s % SECS as u64) as usize] = Bucket { sec: s, ..Bucket::default() };
        }
        self.now_sec = self.now_sec.max(sec);
    }

    fn bucket(&self, sec: u64) -> Option<&Bucket> {
        let b = &self.buckets[(sec % SECS as u64) as usize];
        (b.sec == sec).then_some(b)
    }

    fn bucket_mut(&mut self, sec: u64) -> &mut Bucket {
        let b = &mut self.buckets[(sec % SECS as u64) as usize];
        if b.sec != sec {
            *b = Bucket { sec, ..Bucket::default() };
        }
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A recorded-style trace, one second at a time: video at `fps` (a keyframe each second) and, with
    /// `audio`, 43 AAC frames a second, each frame arriving `late(t)` ms after real time; after each second
    /// the meter is read as the ticker reads it (at the whole second after the newest arrival). Returns the
    /// end's media time and the readings.
    fn run(
        m: &mut IngestMeter,
        from_ms: u64,
        secs: u64,
        fps: u64,
        audio: bool,
        late: impl Fn(u64) -> u64,
    ) -> (u64, Vec<(u64, Quality, Vec<HealthChange>)>) {
        let mut readings = Vec::new();
        for s in 0..secs {
            let base = from_ms + s * 1000;
            let mut events: Vec<(u64, MediaKind, bool)> =
                (0..fps).map(|i| (i * 1000 / fps, MediaKind::Video, i == 0)).collect();
            if audio {
                events.extend((0..43).map(|i| (i * 1000 / 43, MediaKind::Audio, false)));
            }
            events.sort_by_key(|e| e.0);
            let mut newest = 0;
            for (t, kind, key) in events {
                let at = base + t + late(base + t);
                newest = newest.max(at);
                let bytes = if kind == MediaKind::Video { 5_000 } else { 300 };
                m.observe(at, kind, key, false, (base + t) as i64, bytes);
            }
            let now = (newest / 1000 + 1) * 1000;
            let changes = m.evaluate(now);
            readings.push((now, m.quality(), changes));
        }
        (from_ms + secs * 1000, readings)
    }

    fn qualities(r: &[(u64, Quality, Vec<HealthChange>)]) -> Vec<Quality> {
        r.iter().map(|x| x.1).collect()
    }

    #[test]
    fn a_steady_publisher_is_best_and_its_windows_add_up() {
        let mut m = IngestMeter::default();
        assert_eq!(m.quality(), Quality::Unknown);
        // 0-19 ms of arrival jitter, as a wired encoder shows.
        let (end, r) = run(&mut m, 0, 12, 30, true, |t| (t * 7919) % 20);
        assert_eq!(qualities(&r)[..2], [Quality::Unknown, Quality::Best]);
        assert!(qualities(&r)[1..].iter().all(|q| *q == Quality::Best), "{r:?}");
        let now = r.last().unwrap().0;
        let w1 = m.window(now, 1);
        assert_eq!(w1.secs, 1);
        assert!((w1.fps - 30.0).abs() < 1.5, "{w1:?}");
        assert!((w1.audio_fps - 43.0).abs() < 2.0, "{w1:?}");
        // 30 × 5,000 + 43 × 300 bytes a second.
        assert!((w1.bitrate_kbps - 1_303.0).abs() < 60.0, "{w1:?}");
        let w10 = m.window(now, 10);
        assert_eq!(w10.secs, 10);
        assert_eq!(w10.keyframe_interval_ms, Some(1_000.0));
        assert!(w10.max_gap_ms < 60, "{w10:?}");
        assert!(end >= 12_000);
    }

    /// A WebRTC publisher on time but losing 12 % of its packets is poor while the loss lasts; a loss reading
    /// the session stopped sending (older than 3 s) no longer counts.
    #[test]
    fn a_lossy_webrtc_publisher_is_poor_while_it_loses() {
        let mut m = IngestMeter::default();
        let (t, r) = run(&mut m, 0, 4, 30, true, |_| 5);
        assert_eq!(r.last().unwrap().1, Quality::Best);
        let lost_at = t;
        m.observe_loss(lost_at, 12.0);
        let (t, r) = run(&mut m, t, 2, 30, true, |_| 5);
        assert_eq!(qualities(&r), [Quality::Poor; 2], "{r:?}");
        let (_, r) = run(&mut m, t, 1, 30, true, |_| 5);
        assert_eq!(r[0].1, Quality::Best, "{r:?}");
        assert_eq!(m.loss_percent(lost_at + 3_000), None, "stale 3 s after the last reading");
    }

    /// A publisher paced below real time (75 %: its socket drains slower than it encodes) falls behind by
    /// 250 ms a second: good, normal, poor, very poor in turn; flushed, it is best again at once.
    #[test]
    fn a_throttled_publisher_sinks_level_by_level_and_recovers() {
        let mut m = IngestMeter::default();
        let (t, r) = run(&mut m, 0, 5, 30, true, |_| 5);
        assert_eq!(qualities(&r)[2..], [Quality::Best; 3]);
        let (t2, r) = run(&mut m, t, 8, 30, true, |at| 5 + at.saturating_sub(t) / 3);
        let seen = qualities(&r);
        assert!(seen.windows(2).all(|w| w[0] <= w[1]), "only worse while throttled: {seen:?}");
        assert_eq!(seen.last(), Some(&Quality::VeryPoor), "{seen:?}");
        assert!(seen.contains(&Quality::Normal) && seen.contains(&Quality::Poor), "{seen:?}");
        // The backlog flushed: frames arrive on time again.
        let (_, r) = run(&mut m, t2 + 3_000, 3, 30, true, |_| 5);
        assert_eq!(r[0].1, Quality::Best, "delay {} jitter {}", m.delay_ms(), m.jitter_ms());
    }

    #[test]
    fn arrival_jitter_alone_lowers_the_level() {
        let mut m = IngestMeter::default();
        // Frames arrive in bursts: up to 300 ms late, then on time (a Wi-Fi uplink).
        let (_, r) = run(&mut m, 0, 10, 30, false, |t| if (t / 300) % 2 == 0 { t % 300 } else { 0 });
        assert!(m.jitter_ms() >= 30.0, "{}", m.jitter_ms());
        assert!(r.last().unwrap().1 >= Quality::Good, "{r:?}");
    }

    #[test]
    fn a_silent_publisher_is_unavailable_and_a_young_one_unknown() {
        let mut m = IngestMeter::default();
        let (_, r) = run(&mut m, 0, 4, 30, true, |_| 0);
        assert_eq!(qualities(&r), [Quality::Unknown, Quality::Best, Quality::Best, Quality::Best]);
        let now = r.last().unwrap().0;
        let changes = m.evaluate(now + 3_500);
        assert_eq!(changes, [HealthChange::Quality { level: Quality::Unavailable, previous: Quality::Best }]);
    }

    /// WeChat in the background: 2 fps of a still picture and no audio, then the camera again. Background is
    /// said within 3 s of the drop and foreground within 2 s of the return; quality stays best throughout
    /// (the few frames arrive on time), and the windows show the drop.
    #[test]
    fn a_background_pusher_is_detected_both_ways_and_is_not_a_bad_one() {
        let mut m = IngestMeter::default();
        let state = |r: &[(u64, Quality, Vec<HealthChange>)], want: PublisherState, from: u64| {
            r.iter().find(|x| x.2.contains(&HealthChange::State { state: want })).map(|x| x.0 - from)
        };
        let (t, r) = run(&mut m, 0, 10, 30, true, |_| 3);
        assert_eq!(state(&r, PublisherState::Background, 0), None);
        let (t2, r) = run(&mut m, t, 20, 2, false, |_| 3);
        let went = state(&r, PublisherState::Background, t);
        assert!(went.is_some_and(|ms| ms <= 3_000), "background after {went:?} ms");
        assert!(qualities(&r).iter().all(|q| *q == Quality::Best), "{r:?}");
        let w = m.window(r.last().unwrap().0, 10);
        assert!(w.fps <= 2.5 && w.audio_fps == 0.0 && w.max_gap_ms >= 400, "{w:?}");
        let (_, r) = run(&mut m, t2, 5, 30, true, |_| 3);
        let back = state(&r, PublisherState::Foreground, t2);
        assert!(back.is_some_and(|ms| ms <= 2_000), "foreground after {back:?} ms");
        assert!(qualities(&r).iter().all(|q| *q == Quality::Best), "{r:?}");
    }

    /// A camera that always sends 5 fps is not "in the background", and a new timeline (a resumed push) does
    /// not read as a huge delay.
    #[test]
    fn a_slow_camera_stays_foreground_and_a_timestamp_reset_is_no_delay() {
        let mut m = IngestMeter::default();
        let (t, r) = run(&mut m, 0, 10, 5, true, |_| 0);
        assert!(r.iter().all(|x| x.2.iter().all(|c| !matches!(c, HealthChange::State { .. }))));
        assert_eq!(m.state(), PublisherState::Foreground);
        // The next frames restart at media time 0, 10 s of wall time later than that.
        for i in 0..90u64 {
            m.observe(t + i * 33, MediaKind::Video, i == 0, false, (i * 33) as i64, 1000);
        }
        m.evaluate(t + 3_000);
        assert!(m.delay_ms() < 50.0, "{}", m.delay_ms());
        assert_eq!(m.quality(), Quality::Best);
    }

    /// Timestamps that stall while frames keep coming: the publisher is falling behind its own clock.
    #[test]
    fn stalled_timestamps_read_as_a_growing_delay() {
        let mut m = IngestMeter::default();
        let (t, _) = run(&mut m, 0, 4, 30, false, |_| 0);
        for i in 0..60u64 {
            m.observe(t + i * 33, MediaKind::Video, false, false, t as i64, 1000);
        }
        m.evaluate(t + 2_000);
        assert!(m.quality() >= Quality::Poor, "{:?} delay {}", m.quality(), m.delay_ms());
    }
}
