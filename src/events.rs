//! The internal event bus (ARCHITECTURE invariant 7): what happened, for whoever listens (webhooks,
//! metrics, room event streams). Plain data at the hub's layer; delivery lives in `webhooks`.

use serde::Serialize;
use tokio::sync::broadcast;

use crate::config::RecordFormat;
use crate::health::{PublisherState, Quality};
use crate::hub::{key_path, Protocol, StreamKey};

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Event {
    #[serde(rename = "on_publish")]
    Publish {
        #[serde(serialize_with = "key_path")]
        stream: StreamKey,
        client_id: u64,
        protocol: Protocol,
        addr: Option<String>,
        param: String,
    },
    #[serde(rename = "on_unpublish")]
    Unpublish {
        #[serde(serialize_with = "key_path")]
        stream: StreamKey,
        client_id: u64,
        protocol: Protocol,
    },
    #[serde(rename = "on_play")]
    Play {
        #[serde(serialize_with = "key_path")]
        stream: StreamKey,
        client_id: u64,
        protocol: Protocol,
        addr: Option<String>,
    },
    #[serde(rename = "on_stop")]
    Stop {
        #[serde(serialize_with = "key_path")]
        stream: StreamKey,
        client_id: u64,
        protocol: Protocol,
        reason: String,
        bytes: u64,
    },
    #[serde(rename = "on_stream_closed")]
    StreamClosed {
        #[serde(serialize_with = "key_path")]
        stream: StreamKey,
    },
    /// A recording stopped on a write error (disk full, directory gone); the stream goes on.
    #[serde(rename = "on_record_failed")]
    RecordFailed {
        #[serde(serialize_with = "key_path")]
        stream: StreamKey,
        record_id: String,
        file: String,
        file_format: RecordFormat,
        error: String,
    },
    /// A mix input sent media the mix cannot use (its slot freezes or blanks; the mix carries on).
    #[serde(rename = "on_mix_error")]
    MixError { mix: String, stream: String, detail: String },
    /// A publisher's network quality level changed (live-pusher's `netQualityLevel`: 0 unknown, 1 best …
    /// 5 very poor, 6 unavailable); `quality` names it.
    #[serde(rename = "on_quality")]
    Quality {
        #[serde(serialize_with = "key_path")]
        stream: StreamKey,
        client_id: u64,
        level: Quality,
        previous: Quality,
        quality: &'static str,
    },
    /// A player's quality level changed (its backlog, skips, socket stalls, WebRTC loss: the rule is in
    /// `crate::health::player`); `stream` is the one it asked for.
    #[serde(rename = "on_player_quality")]
    PlayerQuality {
        stream: String,
        client_id: u64,
        protocol: crate::hub::Protocol,
        level: Quality,
        previous: Quality,
        quality: &'static str,
    },
    /// A publisher went to the background (its video dropped to 5 fps or less: a still picture) or came back.
    #[serde(rename = "on_publisher_state")]
    PublisherState {
        #[serde(serialize_with = "key_path")]
        stream: StreamKey,
        client_id: u64,
        state: PublisherState,
    },
    /// A relay to another server failed (it retries); `url` has its credentials redacted.
    #[serde(rename = "on_relay_failed")]
    RelayFailed {
        #[serde(serialize_with = "key_path")]
        stream: StreamKey,
        url: String,
        error: String,
    },
}

/// Fan-out of events to whoever listens (webhooks now; room event streams and SSE later). Sending never
/// blocks; a listener that lags loses the oldest events and is told so.
#[derive(Clone)]
pub struct EventBus {
    tx: broadcast::Sender<Event>,
}

impl Default for EventBus {
    fn default() -> Self {
        Self::new()
    }
}

impl EventBus {
    pub fn new() -> Self {
        Self { tx: broadcast::channel(4096).0 }
    }

    pub fn send(&self, e: Event) {
        let _ = self.tx.send(e);
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.tx.subscribe()
    }
}
