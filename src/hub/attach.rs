//! What hangs off a stream (ARCHITECTURE invariant 9), and the one place its life is told.
//!
//! Everything that reads a stream holds an [`Attachment`] on it for exactly as long as it reads: a player
//! (RTMP, HTTP-FLV, WHEP), or a reader inside livegate (the HLS segmenter, a recording, a transcoder making a
//! rendition, a mix's input decoder, a WHEP viewer's audio). The stream lists them (the API shows them per
//! stream) and they leave it when dropped, whatever ended them. A player's attachment is also where its
//! `on_play` and `on_stop` come from: the first is sent when it is made, the second when it drops, with the
//! reason and bytes, so the two are paired by construction and no adapter has to remember to send them.
//! Internal readers send neither: they are livegate's own plumbing, not an audience.
//!
//! What happens when the last WHEP viewer of a stream leaves: its session task ends, dropping its two
//! readers; the video reader's attachment sends `on_stop` (reason and bytes of the whole viewer) and leaves
//! the stream; the audio reader's leaves the `@opus` rendition, an on-demand stream (`hub::source`) whose
//! watcher is woken by the reader count dropping to zero. If no reader comes back within
//! `transcode.idle_stop_secs`, the watcher drops the rendition's source handle, which stops the transcoder
//! (its reader of the stream leaves too), and closes the rendition's stream.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use parking_lot::Mutex;
use serde::Serialize;

use super::stream::Stream;
use super::{ClientHandle, Protocol, StreamKey};
use crate::events::{Event, EventBus};

/// Why an internal reader reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "purpose", rename_all = "snake_case")]
pub enum Purpose {
    /// The stream's live HLS segmenter (one per stream, however many HLS clients fetch its segments).
    HlsSegmenter,
    /// A recording, by its id.
    Recording { record_id: String },
    /// A transcoder making the derived stream `output` from this one.
    Rendition { output: String },
    /// The decoder feeding this stream to one or more mixes.
    MixInput,
    /// The audio of a WHEP viewer of `viewer_of` (its video reader is the viewer's player attachment).
    ViewerAudio { viewer_of: String },
    /// The room service reading a member's stream for which tracks it carries.
    RoomMedia { user_id: String },
    /// A relay pushing this stream to another server.
    Relay { to: String },
}

/// Who is attached to a stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Attachment {
    /// A client playing the stream: `on_play` when it joined, `on_stop` when it leaves.
    Player { client_id: u64, protocol: Protocol },
    /// A reader inside livegate; no webhooks.
    Internal {
        client_id: u64,
        protocol: Protocol,
        #[serde(flatten)]
        purpose: Purpose,
    },
}

/// An attachment as the API lists it.
#[derive(Debug, Clone, Serialize)]
pub struct AttachmentInfo {
    pub id: u64,
    #[serde(flatten)]
    pub what: Attachment,
    /// Unix seconds when it attached.
    pub since: u64,
}

/// A stream's attachments, in the order they came.
#[derive(Debug, Default)]
pub(crate) struct Attachments {
    next_id: AtomicU64,
    list: Mutex<Vec<(u64, Attachment, SystemTime)>>,
}

impl Attachments {
    fn add(&self, what: Attachment) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        self.list.lock().push((id, what, SystemTime::now()));
        id
    }

    fn remove(&self, id: u64) {
        self.list.lock().retain(|(i, _, _)| *i != id);
    }

    pub fn snapshot(&self) -> Vec<AttachmentInfo> {
        self.list
            .lock()
            .iter()
            .map(|(id, what, since)| AttachmentInfo {
                id: *id,
                what: what.clone(),
                since: since.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
            })
            .collect()
    }
}

/// Who a new reader reads for.
#[derive(Debug, Clone)]
pub enum Audience {
    /// A client playing `requested` (which may differ from the stream read: a WHEP viewer of `live/a` whose
    /// browser takes only VP8 reads `live/a@vp8`, and its webhooks name `live/a`).
    Player {
        requested: StreamKey,
    },
    Internal(Purpose),
}

/// A reader's hold on its stream's attachment list, and for a player its `on_stop`. Dropped with the reader.
pub(crate) struct AttachGuard {
    stream: Arc<Stream>,
    id: u64,
    player: Option<PlayerStop>,
}

struct PlayerStop {
    events: EventBus,
    requested: StreamKey,
    handle: Arc<ClientHandle>,
    protocol: Protocol,
}

impl AttachGuard {
    /// Attaches a reader of `stream` to it; a player's `on_play` goes out now.
    pub(crate) fn reader(
        stream: &Arc<Stream>,
        events: &EventBus,
        protocol: Protocol,
        handle: &Arc<ClientHandle>,
        audience: Audience,
    ) -> Self {
        let (what, player) = match audience {
            Audience::Player { requested } => {
                events.send(Event::Play {
                    stream: requested.clone(),
                    client_id: handle.id,
                    protocol,
                    addr: handle.addr.map(|a| a.to_string()),
                });
                let stop = PlayerStop { events: events.clone(), requested, handle: handle.clone(), protocol };
                (Attachment::Player { client_id: handle.id, protocol }, Some(stop))
            }
            Audience::Internal(purpose) => (Attachment::Internal { client_id: handle.id, protocol, purpose }, None),
        };
        let id = stream.attachments.add(what);
        Self { stream: stream.clone(), id, player }
    }

    /// Sends the player's `on_stop` with `reason` (at most once; the drop sends it otherwise).
    pub(crate) fn finish(&mut self, reason: &str) {
        if let Some(p) = self.player.take() {
            p.events.send(Event::Stop {
                stream: p.requested.clone(),
                client_id: p.handle.id,
                protocol: p.protocol,
                reason: reason.to_owned(),
                bytes: p.handle.bytes_out.load(Ordering::Relaxed),
            });
        }
    }
}

impl Drop for AttachGuard {
    fn drop(&mut self) {
        self.stream.attachments.remove(self.id);
        self.finish("client left");
    }
}
