//! RTP timestamps of a WebRTC publisher's tracks onto one millisecond timeline, in A/V sync.
//!
//! Each track's RTP clock starts at a random value, so only the RTCP sender reports (which pair an RTP
//! timestamp with the sender's NTP wall clock) say which audio sample plays with which video frame. Until a
//! track's first report arrives its timeline is anchored on packet arrival (close enough on a quiet network);
//! from then on it follows the sender's clock. The first report fixes the offset between the sender's clock
//! and the output timeline, so the switch does not move the track that reported first, and the other
//! track moves by exactly its arrival-time error when its own report comes.

/// Converts a 64-bit NTP timestamp (RFC 3550 §4) to milliseconds.
pub fn ntp_to_ms(ntp: u64) -> f64 {
    (ntp >> 32) as f64 * 1000.0 + (ntp & 0xFFFF_FFFF) as f64 * 1000.0 / 4_294_967_296.0
}

/// Shared by a session's tracks: sender wall clock (ms) minus output timeline (ms), once known.
#[derive(Debug, Default, Clone, Copy)]
pub struct SyncOffset(Option<f64>);

#[derive(Debug)]
pub struct TrackClock {
    rate: f64,
    unwrap_last: Option<(u32, i64)>,
    /// (extended RTP time, timeline ms) of the first packet.
    arrival_anchor: Option<(i64, f64)>,
    /// (extended RTP time, sender NTP ms) of the latest sender report.
    report: Option<(i64, f64)>,
    /// (extended RTP time, ms) of the last frame stamped.
    last_out: Option<(i64, i64)>,
}

impl TrackClock {
    pub fn new(clock_rate: u32) -> Self {
        Self { rate: clock_rate as f64, unwrap_last: None, arrival_anchor: None, report: None, last_out: None }
    }

    /// Extends a 32-bit RTP timestamp to 64 bits (near the newest seen).
    pub fn unwrap(&mut self, ts: u32) -> i64 {
        let v = match self.unwrap_last {
            None => ts as i64,
            Some((raw, ext)) => ext + ts.wrapping_sub(raw) as i32 as i64,
        };
        if self.unwrap_last.is_none_or(|(_, ext)| v > ext) {
            self.unwrap_last = Some((ts, v));
        }
        v
    }

    fn ms_since(&self, ext: i64, anchor: i64) -> f64 {
        (ext - anchor) as f64 * 1000.0 / self.rate
    }

    /// Timeline milliseconds of a frame with RTP time `ts` that arrived at `arrival_ms` on the timeline.
    /// Strictly increasing per frame (a new RTP time): when a track switches from arrival to sender-report
    /// timing it may step back by its arrival-time error (video arrives an encode later than its audio), and
    /// players and muxers refuse equal or falling timestamps, so such frames are squeezed 1 ms apart until the
    /// timeline catches up.
    pub fn to_ms(&mut self, ts: u32, arrival_ms: f64, sync: &SyncOffset) -> i64 {
        let ext = self.unwrap(ts);
        self.arrival_anchor.get_or_insert((ext, arrival_ms));
        let ms = self.map_ext(ext, sync).unwrap_or(arrival_ms);
        let mut out = ms.round() as i64;
        if let Some((last_ext, last)) = self.last_out {
            out = match ext == last_ext {
                true => last,
                false => out.max(last + 1),
            };
        }
        self.last_out = Some((ext, out));
        out
    }

    /// Timeline milliseconds (unrounded, unclamped) of an extended RTP time, once the track has a packet.
    /// For media that went through a transcoder stamped in RTP time: its output is mapped back here.
    pub fn map_ext(&self, ext: i64, sync: &SyncOffset) -> Option<f64> {
        let (a_ext, a_ms) = self.arrival_anchor?;
        Some(match (self.report, sync.0) {
            (Some((r_ext, r_ntp)), Some(k)) => r_ntp + self.ms_since(ext, r_ext) - k,
            _ => a_ms + self.ms_since(ext, a_ext),
        })
    }

    pub fn has_report(&self) -> bool {
        self.report.is_some()
    }

    /// A sender report for this track: RTP time `rtp_ts` was NTP time `ntp` at the sender.
    pub fn sender_report(&mut self, rtp_ts: u32, ntp: u64, sync: &mut SyncOffset) {
        let ext = self.unwrap(rtp_ts);
        let ntp_ms = ntp_to_ms(ntp);
        if sync.0.is_none() {
            // Keep this track where arrival put it: the offset makes its sender-clock time equal that.
            if let Some((a_ext, a_ms)) = self.arrival_anchor {
                let arrival_view = a_ms + self.ms_since(ext, a_ext);
                sync.0 = Some(ntp_ms - arrival_view);
            }
        }
        if sync.0.is_some() {
            self.report = Some((ext, ntp_ms));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ntp(ms: f64) -> u64 {
        let secs = (ms / 1000.0).floor();
        let frac = ((ms / 1000.0 - secs) * 4_294_967_296.0) as u64;
        ((secs as u64) << 32) | frac
    }

    #[test]
    fn ntp_conversion() {
        assert!((ntp_to_ms(ntp(1234.5)) - 1234.5).abs() < 0.001);
    }

    #[test]
    fn arrival_then_reports_align_tracks() {
        let mut sync = SyncOffset::default();
        let mut video = TrackClock::new(90_000);
        let mut audio = TrackClock::new(48_000);
        // Sender wall clock: 1_000_000 ms at the start. Video RTP starts at 5000, audio at 777.
        // Both first packets capture at sender time 1_000_000, but audio arrives 40 ms later than video.
        assert_eq!(video.to_ms(5000, 100.0, &sync), 100);
        assert_eq!(audio.to_ms(777, 140.0, &sync), 140);
        // Video report: RTP 5000 + 90*1000 at sender 1_001_000.
        video.sender_report(5000 + 90_000, ntp(1_001_000.0), &mut sync);
        assert_eq!(video.to_ms(5000 + 90_000, 1100.0, &sync), 1100, "the first reporter does not move");
        // Audio report: RTP 777 + 48*1000 at sender 1_001_000: audio now lines up with video.
        audio.sender_report(777 + 48_000, ntp(1_001_000.0), &mut sync);
        assert_eq!(audio.to_ms(777 + 48_000 + 960, 1200.0, &sync), 1120);
        assert_eq!(video.to_ms(5000 + 90_000 + 1800, 1200.0, &sync), 1120);
    }

    #[test]
    fn a_step_back_at_the_switch_never_repeats_a_timestamp() {
        let mut sync = SyncOffset::default();
        let mut audio = TrackClock::new(48_000);
        let mut video = TrackClock::new(90_000);
        // Audio reports first; video arrived 50 ms late (encode time), so its report moves it back 50 ms,
        // more than a frame interval.
        assert_eq!(audio.to_ms(0, 0.0, &sync), 0);
        audio.sender_report(0, ntp(5000.0), &mut sync);
        assert_eq!(video.to_ms(0, 50.0, &sync), 50);
        assert_eq!(video.to_ms(3000, 83.0, &sync), 83);
        video.sender_report(3000, ntp(5000.0 + 100.0 / 3.0), &mut sync);
        let next: Vec<i64> = (2..6).map(|i| video.to_ms(3000 * i, 0.0, &sync)).collect();
        assert_eq!(next, vec![84, 100, 133, 167], "squeezed 1 ms apart until the sender's clock catches up");
    }

    #[test]
    fn wraps_and_never_goes_backwards() {
        let sync = SyncOffset::default();
        let mut c = TrackClock::new(90_000);
        assert_eq!(c.to_ms(u32::MAX - 89, 0.0, &sync), 0);
        assert_eq!(c.to_ms(90 * 10 - 90, 0.0, &sync), 10);
        // An older (reordered) timestamp does not take the timeline back, nor stamp two frames alike.
        assert_eq!(c.to_ms(u32::MAX - 89, 0.0, &sync), 11);
        // Packets of one frame share its time.
        assert_eq!(c.to_ms(u32::MAX - 89, 0.0, &sync), 11);
    }
}
