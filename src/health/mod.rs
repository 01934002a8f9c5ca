//! Stream health, pure: what a publisher's ingest looked like over the last second and the last ten, the
//! quality level live-pusher's `netQualityLevel` names (0 unknown … 6 unavailable), and whether the publisher
//! went to the background (WeChat's `<live-pusher>` in the background sends a still picture at 1–5 fps and
//! often no audio). Arrival times and media timestamps in, summaries out: the hub feeds a meter per publish and
//! a ticker reads it once a second; nothing here knows about sockets or clocks.
//!
//! The quality rule (documented in the README, unit-tested on recorded traces in `ingest`):
//! - `delay`: how much later than its best the newest frame arrived, relative to its media timestamp (its
//!   transit time minus the least transit time of the last 10 s). A publisher that cannot send in real time
//!   (a slow uplink, a throttled socket) builds a backlog and its delay grows; jitter alone does not.
//! - `jitter`: the RFC 3550 interarrival jitter estimate over all media frames, in ms.
//! - `loss` (WebRTC publishers): RTP packets lost on the way over the last second, before repair (a packet
//!   NACKed and retransmitted counts), percent.
//! - The level is the worst of these, by these thresholds (a level applies from its bound up):
//!
//!   | level | delay ms | jitter ms | loss % |
//!   |---|---|---|---|
//!   | 1 best | < 150 | < 30 | < 2 |
//!   | 2 good | 150 | 30 | 2 |
//!   | 3 normal | 300 | 60 | 5 |
//!   | 4 poor | 600 | 120 | 10 |
//!   | 5 very poor | 1200 | 250 | 20 |
//!
//! - 6 unavailable: nothing arrived for 3 s (the publisher is connected but its media stalled). 0 unknown:
//!   less than 2 s of media so far.
//! - A background publisher is not a bad one: its few frames arrive on time, so it stays best or good.
//!
//! Players get a level of their own from their backlog, skips, socket stalls and (WebRTC) receiver-reported
//! loss: see `player`.

mod ingest;
mod player;

pub use ingest::{IngestMeter, IngestWindow};
pub use player::{PlayerMeter, PlayerSample};

use serde::Serialize;

/// live-pusher's `netQualityLevel`: 0 unknown, 1 best … 5 very poor, 6 unavailable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum Quality {
    #[default]
    Unknown = 0,
    Best = 1,
    Good = 2,
    Normal = 3,
    Poor = 4,
    VeryPoor = 5,
    Unavailable = 6,
}

impl Quality {
    pub fn level(self) -> u8 {
        self as u8
    }

    /// The level numbered `n` (0–6); unknown for anything else.
    pub fn from_level(n: u8) -> Self {
        match n {
            1 => Quality::Best,
            2 => Quality::Good,
            3 => Quality::Normal,
            4 => Quality::Poor,
            5 => Quality::VeryPoor,
            6 => Quality::Unavailable,
            _ => Quality::Unknown,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Quality::Unknown => "unknown",
            Quality::Best => "best",
            Quality::Good => "good",
            Quality::Normal => "normal",
            Quality::Poor => "poor",
            Quality::VeryPoor => "very_poor",
            Quality::Unavailable => "unavailable",
        }
    }

    /// The level a measured delay (ms) calls for.
    pub fn for_delay(ms: f64) -> Self {
        Self::banded(ms, [150.0, 300.0, 600.0, 1200.0])
    }

    /// The level a WebRTC publisher's loss before repair (percent) calls for.
    pub fn for_loss(percent: f64) -> Self {
        Self::banded(percent, [2.0, 5.0, 10.0, 20.0])
    }

    /// The level a measured jitter (ms) calls for.
    pub fn for_jitter(ms: f64) -> Self {
        Self::banded(ms, [30.0, 60.0, 120.0, 250.0])
    }

    /// The level for `v` against ascending bounds (best below the first, very poor from the last).
    pub(crate) fn banded(v: f64, bounds: [f64; 4]) -> Self {
        match bounds.iter().filter(|b| v >= **b).count() {
            0 => Quality::Best,
            1 => Quality::Good,
            2 => Quality::Normal,
            3 => Quality::Poor,
            _ => Quality::VeryPoor,
        }
    }
}

impl Serialize for Quality {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u8(self.level())
    }
}

/// What a publisher is doing, as its media rate says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PublisherState {
    /// Its camera at its usual rate (or too little seen to say otherwise).
    #[default]
    Foreground,
    /// Its video dropped to 5 fps or less from at least twice that: an app in the background sending a still
    /// picture (live-pusher's `waiting-image`), or a paused pusher.
    Background,
}

/// A change the ticker reports (and the hub sends as an event).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthChange {
    Quality { level: Quality, previous: Quality },
    State { state: PublisherState },
}
