//! RTP timestamps of a WebRTC publisher's tracks onto one millisecond timeline, in A/V sync.
//!
//! Each track's RTP clock starts at a random value, so only the RTCP sender reports (which pair an RTP
//! timestamp with the sender's NTP wall clock) say which audio sample plays with which video frame. Until a
//! track's first report arrives its timeline is anchored on packet arrival (close enough on a quiet network);
//! from then on it follows the sender's clock. The first report fixes the offset between the sender's clock
//! and the output timeline, so the switch does not move the track that reported first, and the other
//! track moves by exactly its arrival-time error when its own report comes.
//!
//! Not every sender's reports are exact. aiortc pairs the NTP time at which it *sent* its last packet with
//! that packet's RTP (capture) time, so each report is late by a varying encode/send delay (tens of ms, more
//! when its event loop stalls). Since that error only ever makes a report late, a track follows the report
//! of its recent ones that puts it earliest (the lower envelope).
//!
//! A track never moves back: frames already sent would overlap the next ones (clamped, several frames got
//! one timestamp, which FLV readers reject). When a report would move a track back, the shared offset moves
//! instead, so that track stays put and the tracks already on the sender's clock jump ahead by as much: a
//! gap, which players take, and A/V stay in sync.

/// Converts a 64-bit NTP timestamp (RFC 3550 §4) to milliseconds.
pub fn ntp_to_ms(ntp: u64) -> f64 {
    (ntp >> 32) as f64 * 1000.0 + (ntp & 0xFFFF_FFFF) as f64 * 1000.0 / 4_294_967_296.0
}

/// How many recent sender reports a track picks its mapping from (about 5–40 s of them).
const REPORT_WINDOW: usize = 8;

/// A track that resumes after this long without packets, while the session's other track kept flowing, with a
/// packet the mapping puts this far before its own arrival, stopped its RTP clock while it sent nothing.
/// Chrome's audio does this across `replaceTrack(null)` (a muted microphone): its RTP time resumes where it
/// stopped, so the old mapping would put the resumed audio seconds in the past (and the lower envelope of the
/// reports would keep it there until the old reports left the window). The track is re-anchored on that packet's
/// arrival instead, which keeps it in sync within the network's jitter. A sender that stalls as a whole (aiortc
/// under load: every track late, then a burst of packets captured on time) is not this: its old mapping stays.
const STALE_MS: f64 = 2000.0;

/// How recently another track must have had a packet for a pause of this one to be its own.
const OTHERS_FLOWING_MS: f64 = 500.0;

/// A report mapping the track this much later than the report it follows says the same (reports are late by
/// the sender's send delay, tens of milliseconds, not seconds): the older reports are dropped.
const REBASE_MS: f64 = 1000.0;

/// Shared by a session's tracks: sender wall clock (ms) minus output timeline (ms), once known; and the
/// latest arrival of any track's packet (timeline ms).
#[derive(Debug, Default, Clone, Copy)]
pub struct SyncOffset(Option<f64>, Option<f64>);

#[derive(Debug)]
pub struct TrackClock {
    rate: f64,
    unwrap_last: Option<(u32, i64)>,
    /// (extended RTP time, timeline ms) of the first packet.
    arrival_anchor: Option<(i64, f64)>,
    /// (extended RTP time, sender NTP ms) of the report the track follows: the earliest-mapping of `recent`.
    report: Option<(i64, f64)>,
    recent: std::collections::VecDeque<(i64, f64)>,
    /// (newest extended RTP time, its timeline ms) handed out.
    last_out: Option<(i64, i64)>,
    /// When this track's latest packet arrived (timeline ms).
    last_arrival: Option<f64>,
}

impl TrackClock {
    pub fn new(clock_rate: u32) -> Self {
        Self {
            rate: clock_rate as f64,
            unwrap_last: None,
            arrival_anchor: None,
            report: None,
            recent: Default::default(),
            last_out: None,
            last_arrival: None,
        }
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

    /// Timeline milliseconds of a packet with RTP time `ts` that arrived at `arrival_ms` on the timeline.
    /// Never goes backwards for a track, and a later RTP time always gets a later millisecond.
    pub fn to_ms(&mut self, ts: u32, arrival_ms: f64, sync: &mut SyncOffset) -> i64 {
        let ext = self.unwrap(ts);
        self.arrival_anchor.get_or_insert((ext, arrival_ms));
        let paused = self.last_arrival.is_some_and(|a| arrival_ms - a >= STALE_MS);
        // This track paused for seconds; another one's packets came within the last moment: the pause was its own.
        let others_flowing = sync.1.is_some_and(|a| arrival_ms - a <= OTHERS_FLOWING_MS);
        if paused && others_flowing && self.map(ext, sync.0).is_some_and(|m| m < arrival_ms - STALE_MS) {
            self.rebase(ext, arrival_ms, sync.0);
        }
        self.last_arrival = Some(arrival_ms);
        sync.1 = Some(sync.1.map_or(arrival_ms, |a| a.max(arrival_ms)));
        let mut out = self.map(ext, sync.0).unwrap_or(arrival_ms).round() as i64;
        match self.last_out {
            // A later packet gets a later millisecond.
            Some((last_ext, last)) if ext > last_ext => {
                out = out.max(last + 1);
                self.last_out = Some((ext, out));
            }
            // The same frame's other packets, or an older (reordered) packet: never back in time.
            Some((_, last)) => out = out.max(last),
            None => self.last_out = Some((ext, out)),
        }
        out
    }

    /// The sender's RTP clock resumed behind where its time went: RTP time `ext` is now (`arrival_ms`).
    fn rebase(&mut self, ext: i64, arrival_ms: f64, k: Option<f64>) {
        match (self.report, k) {
            (Some(_), Some(k)) => {
                let r = (ext, arrival_ms + k);
                self.report = Some(r);
                self.recent.clear();
                self.recent.push_back(r);
            }
            _ => self.arrival_anchor = Some((ext, arrival_ms)),
        }
    }

    /// Timeline ms of extended RTP time `ext` by the current mapping (sender's clock once reported).
    fn map(&self, ext: i64, k: Option<f64>) -> Option<f64> {
        match (self.report, k, self.arrival_anchor) {
            (Some((r_ext, r_ntp)), Some(k), _) => Some(r_ntp + self.ms_since(ext, r_ext) - k),
            (_, _, Some((a_ext, a_ms))) => Some(a_ms + self.ms_since(ext, a_ext)),
            _ => None,
        }
    }

    /// Timeline milliseconds (unrounded, unclamped) of an extended RTP time by the current mapping, once the
    /// track has a packet. For media stamped in RTP time through a transcoder: its output is mapped back here.
    pub fn map_ext(&self, ext: i64, sync: &SyncOffset) -> Option<f64> {
        self.map(ext, sync.0)
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
            // A report is never early, only late by the sender's delay: follow the one of the last few that
            // maps the track earliest (ntp − rtp smallest). A window, so that clock drift is still followed.
            self.recent.push_back((ext, ntp_ms));
            if self.recent.len() > REPORT_WINDOW {
                self.recent.pop_front();
            }
            let offset = |&(e, n): &(i64, f64)| n - e as f64 * 1000.0 / self.rate;
            let lowest = self.recent.iter().map(offset).fold(f64::INFINITY, f64::min);
            if offset(&(ext, ntp_ms)) - lowest > REBASE_MS {
                self.recent.retain(|r| *r == (ext, ntp_ms));
            }
            let before = self.last_out.and_then(|(e, _)| Some((e, self.map(e, sync.0)?)));
            self.report = self.recent.iter().copied().min_by(|a, b| offset(a).total_cmp(&offset(b)));
            if let (Some((e, before)), Some(k)) = (before, sync.0) {
                let back = before - self.map(e, Some(k)).unwrap_or(before);
                if back > 0.0 {
                    sync.0 = Some(k - back);
                }
            }
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
        assert_eq!(video.to_ms(5000, 100.0, &mut sync), 100);
        assert_eq!(audio.to_ms(777, 140.0, &mut sync), 140);
        // Video report: RTP 5000 + 90*1000 at sender 1_001_000.
        video.sender_report(5000 + 90_000, ntp(1_001_000.0), &mut sync);
        assert_eq!(video.to_ms(5000 + 90_000, 1100.0, &mut sync), 1100, "the first reporter does not move");
        // Audio report: RTP 777 + 48*1000 at sender 1_001_000: audio lines up with video. Audio would move
        // 40 ms back, so video moves 40 ms ahead instead.
        assert_eq!(audio.to_ms(777 + 48_000, 1140.0, &mut sync), 1140);
        audio.sender_report(777 + 48_000, ntp(1_001_000.0), &mut sync);
        assert_eq!(audio.to_ms(777 + 48_000 + 960, 1200.0, &mut sync), 1160);
        assert_eq!(video.to_ms(5000 + 90_000 + 1800, 1200.0, &mut sync), 1160);
    }

    #[test]
    fn wraps_and_never_goes_backwards() {
        let mut sync = SyncOffset::default();
        let mut c = TrackClock::new(90_000);
        assert_eq!(c.to_ms(u32::MAX - 89, 0.0, &mut sync), 0);
        assert_eq!(c.to_ms(90 * 10 - 90, 0.0, &mut sync), 10);
        // An older (reordered) timestamp does not take the timeline back.
        assert_eq!(c.to_ms(u32::MAX - 89, 0.0, &mut sync), 10);
    }

    #[test]
    fn a_report_that_moves_a_track_back_keeps_its_frames_apart() {
        let mut sync = SyncOffset::default();
        let mut audio = TrackClock::new(48_000);
        let mut video = TrackClock::new(90_000);
        // Audio arrives on time and reports first; video's first frame arrived 70 ms late (slow first encode).
        assert_eq!(audio.to_ms(0, 0.0, &mut sync), 0);
        audio.sender_report(0, ntp(1_000_000.0), &mut sync);
        let f = |n: u32| n * 3000; // 30 fps at 90 kHz
        assert_eq!(video.to_ms(f(0), 70.0, &mut sync), 70);
        assert_eq!(video.to_ms(f(1), 103.0, &mut sync), 103);
        assert_eq!(video.to_ms(f(1), 103.0, &mut sync), 103, "another packet of the same frame");
        // Video's report: frame 0 was captured at sender time 1_000_000, so the track belongs 70 ms earlier.
        video.sender_report(f(0), ntp(1_000_000.0), &mut sync);
        // Video stays where it was; audio, already on the sender's clock, moves 70 ms ahead to match.
        let next: Vec<i64> = (2..5).map(|n| video.to_ms(f(n), 0.0, &mut sync)).collect();
        assert_eq!(next, vec![137, 170, 203]);
        assert_eq!(audio.to_ms(48_000, 0.0, &mut sync), 1070);
    }

    #[test]
    fn audio_whose_rtp_clock_stood_still_through_a_mute_resumes_in_sync() {
        let mut sync = SyncOffset::default();
        let mut audio = TrackClock::new(48_000);
        let mut video = TrackClock::new(90_000);
        // Timeline = sender clock - 1_000_000 ms. 20 ms Opus packets, 30 fps video, reports every second.
        for n in 0..100u32 {
            assert_eq!(audio.to_ms(n * 960, n as f64 * 20.0, &mut sync), n as i64 * 20);
            if n % 50 == 0 {
                audio.sender_report(n * 960, ntp(1_000_000.0 + n as f64 * 20.0), &mut sync);
                video.sender_report(n / 50 * 90_000, ntp(1_000_000.0 + n as f64 * 20.0), &mut sync);
            }
        }
        // The microphone is off from 2 s to 7 s: no audio packets, and the audio RTP time does not advance;
        // video goes on. At 7 s audio resumes at RTP time 100 * 960, arriving on time.
        for s in 2..7 {
            video.sender_report(s * 90_000, ntp(1_000_000.0 + s as f64 * 1000.0), &mut sync);
        }
        assert_eq!(video.to_ms(7 * 90_000, 7000.0, &mut sync), 7000);
        let resumed: Vec<i64> =
            (0..3).map(|i| audio.to_ms((100 + i) * 960, 7000.0 + i as f64 * 20.0, &mut sync)).collect();
        assert_eq!(resumed, [7000, 7020, 7040], "resumed audio plays with the video of its time, not 5 s early");
        // Its next report (the new RTP clock) agrees; the reports from before the mute no longer pull it back.
        audio.sender_report(150 * 960, ntp(1_000_000.0 + 8000.0), &mut sync);
        assert_eq!(audio.to_ms(151 * 960, 8020.0, &mut sync), 8020);
        assert_eq!(video.to_ms(8 * 90_000 + 3000, 8033.0, &mut sync), 8033, "video did not move");
    }

    #[test]
    fn a_sender_that_stalls_as_a_whole_keeps_its_mapping() {
        let mut sync = SyncOffset::default();
        let mut audio = TrackClock::new(48_000);
        let mut video = TrackClock::new(90_000);
        for n in 0..100u32 {
            audio.to_ms(n * 960, n as f64 * 20.0, &mut sync);
            video.to_ms(n / 3 * 5400, n as f64 * 20.0, &mut sync);
        }
        audio.sender_report(0, ntp(1_000_000.0), &mut sync);
        // Nothing from either track for 3 s (the sender's loop stalled), then the packets it captured meanwhile
        // arrive in a burst: they belong at their capture time, not at their arrival.
        let late: Vec<i64> = (100..103).map(|n| audio.to_ms(n * 960, 5000.0, &mut sync)).collect();
        assert_eq!(late, [2000, 2020, 2040]);
    }

    #[test]
    fn late_reports_do_not_move_a_track() {
        let mut sync = SyncOffset::default();
        let mut audio = TrackClock::new(48_000);
        assert_eq!(audio.to_ms(0, 0.0, &mut sync), 0);
        audio.sender_report(0, ntp(1_000_000.0), &mut sync);
        // Each second a report, late by the sender's send delay (up to 200 ms): the track keeps its timing.
        for (i, late) in [15.0, 200.0, 5.0, 60.0].into_iter().enumerate() {
            let n = i as u32 + 1;
            audio.sender_report(n * 48_000, ntp(1_000_000.0 + n as f64 * 1000.0 + late), &mut sync);
            assert_eq!(audio.to_ms(n * 48_000 + 960, 0.0, &mut sync), n as i64 * 1000 + 20, "report {n}");
        }
    }
}
