//! A reader's view of a stream: a cursor into the ring plus the latency policy (min/max-cache).
//!
//! Readers hold no copy of media: each poll hands back `Arc<Packet>`s from the ring. A reader's backlog is the
//! media time between its cursor and the newest packet, so "too far behind" is measured in seconds of media,
//! not bytes, and a reader that falls behind jumps to a keyframe without the publisher noticing.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use super::attach::AttachGuard;
use super::packet::{HeaderSet, Packet};
use super::stream::{KeyEntry, Ring, Stream};
use super::{ClientHandle, Protocol};
use crate::config::{Config, ConfigError};
use crate::media::MediaKind;
use crate::metrics;
use crate::names::query_get;

/// Per-reader latency policy.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CachePolicy {
    /// Start this far behind live (seconds of media), on the newest keyframe at or before that point.
    pub min_cache: Duration,
    /// Never be more than this far behind: skip to a newer keyframe instead.
    pub max_cache: Duration,
    /// A reader that has to skip more often than this within a minute cannot keep up and is disconnected.
    pub max_skips_per_minute: u32,
    /// An rtc-mode player: its writes are never held back to be merged with later frames.
    pub low_latency: bool,
}

impl CachePolicy {
    /// One of livegate's own readers that follows live: it starts at the newest keyframe, is never cut off,
    /// and skips to a newer keyframe rather than fall more than `max_cache` behind.
    pub fn internal(max_cache: Duration) -> CachePolicy {
        CachePolicy { min_cache: Duration::ZERO, max_cache, max_skips_per_minute: u32::MAX, low_latency: true }
    }

    /// The policy for a play request's query: `min_cache`, `max_cache` (seconds) and `mode=rtc`, with the
    /// `[play]` defaults, bounded by what the hub keeps (`hub.buffer_secs`).
    pub fn for_query(cfg: &Config, query: &[(String, String)]) -> Result<CachePolicy, ConfigError> {
        let rtc = query_get(query, "mode").is_some_and(|m| m.eq_ignore_ascii_case("rtc"));
        let play = &cfg.play;
        let (dmin, dmax) =
            if rtc { (play.rtc_min_cache, play.rtc_max_cache) } else { (play.min_cache, play.max_cache) };
        let buffer = cfg.hub.buffer_secs;
        let num = |key: &str, default: f64| -> Result<f64, ConfigError> {
            match query_get(query, key) {
                None => Ok(default),
                Some(v) => {
                    v.parse::<f64>().ok().filter(|x| x.is_finite() && *x >= 0.0 && *x <= buffer).ok_or_else(|| {
                        ConfigError::invalid(key, format!("{v:?} is not a number of seconds in 0..={buffer}"))
                    })
                }
            }
        };
        let min = num("min_cache", dmin)?;
        let max = num("max_cache", dmax.max(min))?;
        if max < min || max < 0.05 {
            return Err(ConfigError::invalid(
                "max_cache",
                format!("{max} must be at least min_cache ({min}) and 0.05"),
            ));
        }
        Ok(CachePolicy {
            min_cache: Duration::from_secs_f64(min),
            max_cache: Duration::from_secs_f64(max),
            max_skips_per_minute: play.max_skips_per_minute,
            low_latency: rtc,
        })
    }
}

/// Which tracks a stream has (what a container's header announces).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tracks {
    pub audio: bool,
    pub video: bool,
}

/// Why a reader stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndReason {
    /// The publisher left and did not come back within the grace period, or the server is shutting down.
    StreamClosed,
    Kicked(String),
    TooSlow(String),
}

impl std::fmt::Display for EndReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EndReason::StreamClosed => write!(f, "stream closed"),
            EndReason::Kicked(r) => write!(f, "kicked: {r}"),
            EndReason::TooSlow(r) => write!(f, "too slow: {r}"),
        }
    }
}

/// Most packets handed out per poll: bounds one write batch (and the iovecs it needs).
const MAX_BATCH: usize = 512;

pub struct Reader {
    stream: Arc<Stream>,
    protocol: Protocol,
    policy: CachePolicy,
    handle: Arc<ClientHandle>,
    cursor: Option<u64>,
    /// Just joined or just skipped: the next batch is a deliberate burst, not a backlog.
    fresh: bool,
    /// After a join or skip: audio stamped before the start keyframe is left out, so every track starts at
    /// the same time (audio from a transcoder lands in the ring after video of the same instant).
    audio_floor: Option<i64>,
    asked_keyframe: bool,
    /// The earliest publish session this reader may start in (0: any).
    from_session: u64,
    sent_headers: HeaderSet,
    skip_times: VecDeque<Instant>,
    pub skips: u64,
    wake_gen: u64,
    tracks: Tracks,
    /// Why this reader stops, for its player's `on_stop` (the first reason told wins).
    end_reason: Option<String>,
    attach: AttachGuard,
    /// Whether its backlog is its client's (a WebRTC viewer's audio reader shares the video's client).
    reports_backlog: bool,
}

impl std::fmt::Debug for Reader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reader").field("stream", &self.stream.key).field("cursor", &self.cursor).finish()
    }
}

impl Reader {
    pub(crate) fn new(
        stream: Arc<Stream>,
        protocol: Protocol,
        policy: CachePolicy,
        handle: Arc<ClientHandle>,
        attach: AttachGuard,
    ) -> Self {
        stream.stats.readers[protocol as usize].fetch_add(1, Ordering::Relaxed);
        stream.readers_changed.notify_waiters();
        metrics::global().readers_inc(protocol);
        Self {
            stream,
            protocol,
            policy,
            handle,
            cursor: None,
            fresh: true,
            audio_floor: None,
            asked_keyframe: false,
            from_session: 0,
            sent_headers: Default::default(),
            skip_times: VecDeque::new(),
            skips: 0,
            wake_gen: u64::MAX,
            tracks: Tracks::default(),
            end_reason: None,
            attach,
            reports_backlog: true,
        }
    }

    /// Tells why the reader stops (a stall, a hang-up, a failed write), for its player's `on_stop`. The
    /// first reason told wins: an end the reader itself saw (kicked, too slow, stream closed) is kept.
    pub fn set_end_reason(&mut self, reason: impl Into<String>) {
        self.end_reason.get_or_insert_with(|| reason.into());
    }

    pub fn stream(&self) -> &Arc<Stream> {
        &self.stream
    }

    /// Whether this reader's backlog is its client's quality input (it is unless told otherwise).
    pub fn set_reports_backlog(&mut self, yes: bool) {
        self.reports_backlog = yes;
    }

    /// Starts this reader (before its first read) no earlier than publish session `session`: a recording
    /// started in a reconnect grace must not begin with the previous push's cache.
    pub fn start_from_session(&mut self, session: u64) {
        self.from_session = session;
    }

    pub fn policy(&self) -> &CachePolicy {
        &self.policy
    }

    pub fn handle(&self) -> &Arc<ClientHandle> {
        &self.handle
    }

    /// The stream's tracks as known when the reader joined; valid after the first batch.
    pub fn tracks(&self) -> Tracks {
        self.tracks
    }

    /// Whether everything the ring holds has been handed out (after a join, once audio has caught up with
    /// the start keyframe): the player may then be parked for direct fan-out from [`cursor`](Self::cursor).
    pub fn caught_up(&self) -> bool {
        match self.cursor {
            Some(c) => {
                // The floor only waits for audio: a stream without audio never clears it.
                let ring = self.stream.ring.read();
                let audio_pending = self.audio_floor.is_some() && (ring.has_audio || self.tracks.audio);
                !self.fresh && !audio_pending && c == ring.next_seq()
            }
            None => false,
        }
    }

    /// The sequence number of the next packet this reader would hand out.
    pub fn cursor(&self) -> Option<u64> {
        self.cursor
    }

    /// Continues after the fan-out sent this player everything before `next_seq` (with `headers` in force).
    pub fn resume(&mut self, next_seq: u64, headers: Option<Arc<HeaderSet>>) {
        self.cursor = Some(next_seq);
        self.fresh = false;
        self.audio_floor = None;
        if let Some(h) = headers {
            self.sent_headers = (*h).clone();
        }
    }

    /// Records bytes this reader delivered (for its client, its stream and the global counters).
    pub fn add_bytes_out(&self, n: usize) {
        self.handle.bytes_out.fetch_add(n as u64, Ordering::Relaxed);
        self.stream.stats.bytes_out.fetch_add(n as u64, Ordering::Relaxed);
        metrics::global().bytes_out(self.protocol, n as u64);
    }

    /// Fills `out` with the next packets (headers first after a join or skip). `Ready(Ok)` with a non-empty
    /// `out`, `Ready(Err)` when the reader must stop, `Pending` until the stream has more.
    pub fn poll_batch(&mut self, cx: &mut Context<'_>, out: &mut Vec<Arc<Packet>>) -> Poll<Result<(), EndReason>> {
        let r = self.poll_batch_inner(cx, out);
        if let Poll::Ready(Err(reason)) = &r {
            self.set_end_reason(reason.to_string());
        }
        r
    }

    fn poll_batch_inner(&mut self, cx: &mut Context<'_>, out: &mut Vec<Arc<Packet>>) -> Poll<Result<(), EndReason>> {
        if let Some(reason) = self.handle.kicked() {
            return Poll::Ready(Err(EndReason::Kicked(reason)));
        }
        match self.try_read(out) {
            Ok(true) => return Poll::Ready(Ok(())),
            Ok(false) => {}
            Err(e) => return Poll::Ready(Err(e)),
        }
        // Register, then look again: a push between the first look and the registration is not lost.
        self.stream.register_waker(cx.waker(), &mut self.wake_gen);
        self.handle.register_waker(cx.waker());
        if let Some(reason) = self.handle.kicked() {
            return Poll::Ready(Err(EndReason::Kicked(reason)));
        }
        match self.try_read(out) {
            Ok(true) => Poll::Ready(Ok(())),
            Ok(false) => Poll::Pending,
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    /// Async form of [`poll_batch`](Self::poll_batch).
    pub async fn next_batch(&mut self, out: &mut Vec<Arc<Packet>>) -> Result<(), EndReason> {
        std::future::poll_fn(|cx| self.poll_batch(cx, out)).await
    }

    fn try_read(&mut self, out: &mut Vec<Arc<Packet>>) -> Result<bool, EndReason> {
        let stream = self.stream.clone();
        let ring = stream.ring.read();
        let start_len = out.len();
        match self.cursor {
            None => {
                let Some(entry) = self.join_point(&ring) else {
                    if !self.asked_keyframe {
                        // Nothing to start on: a publisher that can make a keyframe on demand should.
                        self.asked_keyframe = true;
                        stream.request_keyframe();
                    }
                    return self.closed_or_nothing();
                };
                self.tracks = Tracks {
                    audio: ring.has_audio || entry.headers.has_audio(),
                    video: ring.has_video || entry.headers.has_video(),
                };
                self.jump(&entry, out);
            }
            Some(c) if c < ring.first_seq => {
                // The ring moved past us (we were blocked writing for longer than it keeps).
                let Some(entry) = ring.keys.back().cloned() else {
                    return self.closed_or_nothing();
                };
                self.count_skip()?;
                self.jump(&entry, out);
            }
            Some(c) if !self.fresh => {
                let backlog = ring.get(c).map(|p| ring.head_dts - p.frame.dts).unwrap_or(0);
                if backlog > self.policy.max_cache.as_millis() as i64 {
                    if let Some(entry) = ring.keys.iter().rev().find(|k| k.seq > c).cloned() {
                        self.count_skip()?;
                        self.jump(&entry, out);
                    }
                }
            }
            Some(_) => {}
        }
        self.collect(&ring, out, start_len)
    }

    fn closed_or_nothing(&self) -> Result<bool, EndReason> {
        if self.stream.is_closed() {
            Err(EndReason::StreamClosed)
        } else {
            Ok(false)
        }
    }

    fn collect(&mut self, ring: &Ring, out: &mut Vec<Arc<Packet>>, start_len: usize) -> Result<bool, EndReason> {
        let Some(mut c) = self.cursor else { return Ok(false) };
        let end = ring.next_seq();
        while c < end && out.len() - start_len < MAX_BATCH {
            if let Some(p) = ring.get(c) {
                if p.is_header() {
                    *self.sent_headers.slot_mut(p.frame.kind) = Some(p.clone());
                } else if let Some(floor) = self.audio_floor.filter(|_| p.frame.kind == MediaKind::Audio) {
                    if p.frame.dts < floor {
                        c += 1;
                        continue;
                    }
                    self.audio_floor = None;
                }
                out.push(p.clone());
            }
            c += 1;
        }
        self.cursor = Some(c);
        // What the player has yet to take (its quality's backlog): nothing once it has everything.
        if self.reports_backlog {
            let backlog = if c >= end { 0 } else { ring.get(c).map_or(0, |p| ring.head_dts - p.frame.dts) };
            self.handle.player.backlog_ms.store(backlog, Ordering::Relaxed);
        }
        if out.len() > start_len {
            // Only after the burst has been handed out does a backlog count against max_cache.
            if c >= end {
                self.fresh = false;
            }
            return Ok(true);
        }
        if self.stream.is_closed() {
            return Err(EndReason::StreamClosed);
        }
        Ok(false)
    }

    /// Where a new reader starts: the newest start point at or before (live - min_cache), moved forward if
    /// that is more than max_cache behind; the newest start point if even that is too old.
    fn join_point(&self, ring: &Ring) -> Option<KeyEntry> {
        let head = ring.head_dts;
        let min = self.policy.min_cache.as_millis() as i64;
        let max = self.policy.max_cache.as_millis() as i64;
        let target = head - min;
        let floor = self.from_session;
        let first = ring.keys.iter().find(|k| k.session >= floor)?;
        let mut pick = ring.keys.iter().rev().find(|k| k.dts <= target && k.session >= floor).unwrap_or(first);
        if head - pick.dts > max {
            pick = ring.keys.iter().find(|k| head - k.dts <= max && k.session >= floor).unwrap_or(ring.keys.back()?);
        }
        Some(pick.clone())
    }

    /// Moves the cursor to a start point, emitting whichever of its headers this reader has not seen.
    fn jump(&mut self, entry: &KeyEntry, out: &mut Vec<Arc<Packet>>) {
        for h in entry.headers.iter() {
            let seen = self.sent_headers.get(h.frame.kind).is_some_and(|s| Arc::ptr_eq(s, h));
            if !seen {
                out.push(h.clone());
                *self.sent_headers.slot_mut(h.frame.kind) = Some(h.clone());
            }
        }
        self.cursor = Some(entry.seq);
        self.fresh = true;
        self.audio_floor = Some(entry.dts);
    }

    fn count_skip(&mut self) -> Result<(), EndReason> {
        let now = Instant::now();
        self.skips += 1;
        self.stream.stats.skips.fetch_add(1, Ordering::Relaxed);
        self.handle.player.skips.fetch_add(1, Ordering::Relaxed);
        metrics::global().skip(self.protocol);
        self.skip_times.push_back(now);
        while self.skip_times.front().is_some_and(|t| now.duration_since(*t) > Duration::from_secs(60)) {
            self.skip_times.pop_front();
        }
        if self.skip_times.len() as u32 > self.policy.max_skips_per_minute {
            return Err(EndReason::TooSlow(format!(
                "skipped to a keyframe {} times in the last minute (max_cache {:.1}s)",
                self.skip_times.len(),
                self.policy.max_cache.as_secs_f64()
            )));
        }
        tracing::debug!(stream = %self.stream.key, client = self.handle.id, skips = self.skips, "reader skipped to keyframe");
        Ok(())
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.attach.finish(self.end_reason.as_deref().unwrap_or("client left"));
        self.stream.stats.readers[self.protocol as usize].fetch_sub(1, Ordering::Relaxed);
        self.stream.readers_changed.notify_waiters();
        metrics::global().readers_dec(self.protocol);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::names::parse_query;

    #[test]
    fn cache_policy_from_query() {
        let c = Config::default_config();
        let p = CachePolicy::for_query(&c, &parse_query("min_cache=0.5&max_cache=2")).unwrap();
        assert_eq!(p.min_cache, Duration::from_millis(500));
        assert_eq!(p.max_cache, Duration::from_secs(2));
        let rtc = CachePolicy::for_query(&c, &parse_query("mode=rtc")).unwrap();
        assert!(rtc.max_cache < Duration::from_secs(1));
        assert!(CachePolicy::for_query(&c, &parse_query("max_cache=abc")).is_err());
        assert!(CachePolicy::for_query(&c, &parse_query("min_cache=3&max_cache=1")).is_err());
    }
}
