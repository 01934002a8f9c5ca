//! Whether to take another WebRTC viewer: not while the machine is so far behind that the viewers it has are
//! getting their media a second late. A viewer admitted then costs a handshake the starved machine cannot
//! finish in time (at 3.7x overload 105 of 500 new viewers timed out after their answer took 5 s), and its
//! media takes CPU from viewers that are still watching. A refused one gets a 503 with Retry-After at once.
//!
//! The signal is the stream fan-out's own lateness: how long the oldest packet a parked viewer's flush sends
//! had waited since ingest handed it to the hub. Wall-clock waiting, not the media time the backlog spans: a
//! publisher that bursts (a reconnect flushing its buffer, a file pushed faster than real time) brings seconds
//! of media at once without the machine being behind. Time is passed in, so the rule is tested without clocks.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::config::WebrtcConfig;

/// When the machine counts as behind, and for how long that closes the door.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// A flush whose oldest packet waited this long means the machine is behind (zero: never refuse).
    pub late: Duration,
    /// New viewers are refused for this long after the last late flush (and told to retry after it).
    pub hold: Duration,
}

impl Policy {
    pub fn of(cfg: &WebrtcConfig) -> Self {
        Self {
            late: Duration::from_secs_f64(cfg.overload_late_secs),
            hold: Duration::from_secs_f64(cfg.overload_hold_secs),
        }
    }
}

/// Refused: the machine is behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the server is overloaded: its WebRTC viewers' media waited {late_ms} ms to be sent {ago_ms} ms ago")]
pub struct Overloaded {
    pub late_ms: u64,
    pub ago_ms: u64,
    /// When to try again.
    pub retry_after: Duration,
}

/// The last late flush, for all streams of the server.
#[derive(Debug)]
pub struct Admission {
    policy: Policy,
    base: Instant,
    /// Milliseconds after `base` of the last late flush, plus one (0: none yet).
    last_late: AtomicU64,
    late_ms: AtomicU64,
}

impl Admission {
    pub fn new(policy: Policy, base: Instant) -> Self {
        Self { policy, base, last_late: AtomicU64::new(0), late_ms: AtomicU64::new(0) }
    }

    fn ms(&self, t: Instant) -> u64 {
        u64::try_from(t.saturating_duration_since(self.base).as_millis()).unwrap_or(u64::MAX - 1)
    }

    /// A flush at `now` sent a viewer a packet that had `waited` since ingest.
    pub fn flushed(&self, waited: Duration, now: Instant) {
        if !self.policy.late.is_zero() && waited >= self.policy.late {
            self.late_ms.store(u64::try_from(waited.as_millis()).unwrap_or(u64::MAX), Ordering::Relaxed);
            self.last_late.store(self.ms(now) + 1, Ordering::Relaxed);
        }
    }

    /// Whether a new viewer is taken at `now`.
    pub fn admit(&self, now: Instant) -> Result<(), Overloaded> {
        let last = self.last_late.load(Ordering::Relaxed);
        if last == 0 {
            return Ok(());
        }
        let ago_ms = self.ms(now).saturating_sub(last - 1);
        let hold = u64::try_from(self.policy.hold.as_millis()).unwrap_or(u64::MAX);
        if ago_ms >= hold {
            return Ok(());
        }
        Err(Overloaded {
            late_ms: self.late_ms.load(Ordering::Relaxed),
            ago_ms,
            retry_after: Duration::from_millis(hold - ago_ms).max(Duration::from_secs(1)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LATE: Duration = Duration::from_secs(1);
    const HOLD: Duration = Duration::from_secs(2);
    const POLICY: Policy = Policy { late: LATE, hold: HOLD };

    #[test]
    fn admits_until_a_flush_is_late_then_refuses_for_the_hold() {
        let t0 = Instant::now();
        let a = Admission::new(POLICY, t0);
        assert_eq!(a.admit(t0), Ok(()));
        // Waited less than LATE: a flush merged or scheduled late, not a machine behind.
        a.flushed(Duration::from_millis(900), t0 + Duration::from_millis(100));
        assert_eq!(a.admit(t0 + Duration::from_millis(200)), Ok(()));
        a.flushed(Duration::from_millis(1500), t0 + Duration::from_millis(1000));
        let e = a.admit(t0 + Duration::from_millis(1500)).unwrap_err();
        assert_eq!((e.late_ms, e.ago_ms), (1500, 500));
        assert_eq!(e.retry_after, Duration::from_millis(1500));
        // Close to the end of the hold the advice is still a whole second.
        assert_eq!(a.admit(t0 + Duration::from_millis(2900)).unwrap_err().retry_after, Duration::from_secs(1));
        assert_eq!(a.admit(t0 + Duration::from_millis(3000)), Ok(()));
    }

    #[test]
    fn a_late_flush_at_the_start_counts() {
        let t0 = Instant::now();
        let a = Admission::new(POLICY, t0);
        a.flushed(LATE, t0);
        assert!(a.admit(t0).is_err());
        assert!(a.admit(t0 + HOLD).is_ok());
    }

    #[test]
    fn a_zero_late_threshold_never_refuses() {
        let t0 = Instant::now();
        let a = Admission::new(Policy { late: Duration::ZERO, hold: HOLD }, t0);
        a.flushed(Duration::from_secs(30), t0);
        assert_eq!(a.admit(t0), Ok(()));
    }

    #[test]
    fn the_default_policy_is_a_second_late_and_two_held() {
        assert_eq!(Policy::of(&crate::config::Config::default_config().webrtc), POLICY);
    }
}
