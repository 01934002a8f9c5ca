//! Puts one RTP stream's packets back in sequence order. Retransmissions (NACK) and UDP reordering deliver
//! packets late; a packet that is still missing after `max_wait` is given up on, and the packet after the
//! hole goes out marked `lost` so the depacketizer drops the damaged frame.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct Reorder<T> {
    /// Extended (64-bit) sequence number expected next.
    next: Option<u64>,
    highest: Option<u64>,
    held: BTreeMap<u64, (T, Instant)>,
    max_wait: Duration,
    max_held: usize,
    /// Packets given up on so far.
    pub lost: u64,
    /// Packets that arrived behind a newer one (a retransmission after a NACK, or reordering): with `lost`,
    /// what the network lost before repair.
    pub late: u64,
    /// The first extended sequence number seen.
    first: Option<u64>,
}

impl<T> Reorder<T> {
    pub fn new(max_wait: Duration, max_held: usize) -> Self {
        Self { next: None, highest: None, held: BTreeMap::new(), max_wait, max_held, lost: 0, late: 0, first: None }
    }

    /// Extends a 16-bit sequence number to the one nearest the highest seen.
    fn extend(&mut self, seq: u16) -> u64 {
        let Some(h) = self.highest else {
            // Start well away from zero so a wrap backwards right at the start stays positive.
            let e = (1u64 << 32) | seq as u64;
            self.highest = Some(e);
            return e;
        };
        let delta = seq.wrapping_sub(h as u16) as i16 as i64;
        let e = (h as i64 + delta) as u64;
        if e > h {
            self.highest = Some(e);
        }
        e
    }

    /// Takes a packet. Duplicates and packets older than what was already released are dropped.
    pub fn push(&mut self, seq: u16, item: T, now: Instant) {
        let before = self.highest;
        let e = self.extend(seq);
        self.first.get_or_insert(e);
        let next = *self.next.get_or_insert(e);
        if e < next || self.held.contains_key(&e) {
            return;
        }
        if before.is_some_and(|h| e < h) {
            self.late += 1;
        }
        self.held.insert(e, (item, now));
    }

    /// Packets the sender has numbered so far (RFC 3550's "expected"): highest − first + 1.
    pub fn expected(&self) -> u64 {
        match (self.first, self.highest) {
            (Some(f), Some(h)) => h - f + 1,
            _ => 0,
        }
    }

    /// The next packet in order, if it is here or the wait for a missing one is over. The flag is true when
    /// packets before it were given up on.
    pub fn pop(&mut self, now: Instant) -> Option<(T, bool)> {
        let next = self.next?;
        let (&first, (_, at)) = self.held.iter().next()?;
        let gap = first != next;
        if gap && now.saturating_duration_since(*at) < self.max_wait && self.held.len() <= self.max_held {
            return None;
        }
        let (item, _) = self.held.remove(&first)?;
        if gap {
            self.lost += first - next;
        }
        self.next = Some(first + 1);
        Some((item, gap))
    }

    /// When `pop` will next have something to give up on, if it is waiting for a missing packet.
    pub fn deadline(&self) -> Option<Instant> {
        let (&first, (_, at)) = self.held.iter().next()?;
        (Some(first) != self.next).then_some(*at + self.max_wait)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(r: &mut Reorder<u16>, now: Instant) -> Vec<(u16, bool)> {
        std::iter::from_fn(|| r.pop(now)).collect()
    }

    #[test]
    fn in_order_passes_straight_through() {
        let mut r = Reorder::new(Duration::from_millis(100), 100);
        let t = Instant::now();
        for s in [65534u16, 65535, 0, 1] {
            r.push(s, s, t);
        }
        assert_eq!(drain(&mut r, t), vec![(65534, false), (65535, false), (0, false), (1, false)]);
    }

    #[test]
    fn late_packet_is_put_back_in_place() {
        let mut r = Reorder::new(Duration::from_millis(100), 100);
        let t = Instant::now();
        r.push(10, 10, t);
        r.push(12, 12, t);
        assert_eq!(drain(&mut r, t), vec![(10, false)]);
        assert!(r.deadline().is_some());
        r.push(11, 11, t + Duration::from_millis(30));
        assert_eq!(r.late, 1, "filled a hole: lost on the way, then repaired");
        assert_eq!(r.expected(), 3);
        assert_eq!(drain(&mut r, t + Duration::from_millis(30)), vec![(11, false), (12, false)]);
        // A duplicate of something already released is ignored.
        r.push(11, 11, t);
        assert!(r.pop(t).is_none());
    }

    #[test]
    fn a_hole_is_given_up_after_the_wait() {
        let mut r = Reorder::new(Duration::from_millis(100), 100);
        let t = Instant::now();
        r.push(1, 1, t);
        r.push(3, 3, t);
        assert_eq!(drain(&mut r, t + Duration::from_millis(50)), vec![(1, false)]);
        assert_eq!(drain(&mut r, t + Duration::from_millis(100)), vec![(3, true)]);
        assert_eq!(r.lost, 1);
    }

    #[test]
    fn too_many_held_releases_early() {
        let mut r = Reorder::new(Duration::from_secs(10), 3);
        let t = Instant::now();
        r.push(0, 0, t);
        for s in 2..=5 {
            r.push(s, s, t);
        }
        assert_eq!(drain(&mut r, t), vec![(0, false), (2, true), (3, false), (4, false), (5, false)]);
    }
}
