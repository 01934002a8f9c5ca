//! Decoders shared between mixes: one hub reader and one decoder per input stream, however many mixes use it.
//! The first mix to lease a stream starts its decoder, the last lease dropped stops it. Decoded buffers keep
//! the input's own timestamps; each mix maps them onto its clock (`timing::Anchor`), as every mix runs its own.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use parking_lot::Mutex;
use tokio::sync::{mpsc, watch};
use tracing::Instrument;

use super::pipeline::{self, Templates};
use super::timing;
use crate::hub::{Audience, CachePolicy, Hub, Protocol, Purpose, Stream, StreamKey};
use crate::media::avc::{self, AvcDecoderConfig};
use crate::media::sei::{self, SeiMessage};
use crate::media::{Codec, Frame, MediaKind};
use crate::transcode::{Template, TranscodeError};

/// Messages a mix may have waiting from one input: about 1.5 s of 30 fps video with its AAC audio.
const QUEUE: usize = 128;

/// What a shared decoder tells every mix using it. Buffers and caps are reference-counted: a clone per mix
/// copies no media.
#[derive(Clone)]
pub enum Decoded {
    /// A decoded picture or audio chunk, with the stream's newest media timestamp (ms) when it came out (what
    /// the mix's clock mapping places at "now"), and for video when its access unit reached the hub.
    /// `sei`: the user-data SEI messages of the access units up to this picture (carried into the mix's output).
    Media {
        video: bool,
        buf: gst::Buffer,
        caps: gst::Caps,
        head: i64,
        received: Option<Instant>,
        sei: Option<Arc<Vec<SeiMessage>>>,
    },
    /// The input's resolution from its decoder configuration (before anything is decoded).
    Size { width: u32, height: u32 },
    /// Bad input. `blank`: the decoder failed and restarts at the next keyframe, so the slot has no picture
    /// until then; otherwise an access unit was dropped before reaching it.
    Error { detail: String, blank: bool },
    /// The input's stream ended; its next session has a new timeline.
    Ended,
}

/// The mixes one decoder feeds.
#[derive(Default)]
pub struct Consumers {
    list: Mutex<Vec<(u64, mpsc::Sender<Decoded>)>>,
    next: AtomicU64,
    /// The last size, for a mix that joins after the configuration was read.
    size: Mutex<Option<(u32, u32)>>,
}

impl Consumers {
    pub fn count(&self) -> usize {
        self.list.lock().len()
    }

    fn send(&self, d: Decoded) {
        if let Decoded::Size { width, height } = d {
            *self.size.lock() = Some((width, height));
        }
        // A mix that falls behind loses media rather than pinning decoded pictures without bound; the others
        // are not held up by it.
        self.list.lock().retain(|(_, tx)| !matches!(tx.try_send(d.clone()), Err(mpsc::error::TrySendError::Closed(_))));
    }
}

/// A running decoder; dropping the last handle stops its task.
struct Shared {
    consumers: Arc<Consumers>,
    stop: watch::Sender<bool>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// One mix's use of an input's decoder.
pub struct Lease {
    shared: Arc<Shared>,
    id: u64,
    pub rx: mpsc::Receiver<Decoded>,
}

impl Lease {
    pub fn consumers(&self) -> Arc<Consumers> {
        self.shared.consumers.clone()
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.shared.consumers.list.lock().retain(|(id, _)| *id != self.id);
    }
}

/// The shared decoders of all mixes, by input stream.
pub struct Decoders {
    hub: Hub,
    templates: Arc<Templates>,
    running: Mutex<HashMap<StreamKey, Weak<Shared>>>,
}

impl Decoders {
    pub fn new(hub: Hub, templates: Arc<Templates>) -> Arc<Self> {
        Arc::new(Self { hub, templates, running: Mutex::new(HashMap::new()) })
    }

    /// Joins the decoder of `key`, starting it if no mix uses it yet.
    pub fn lease(&self, key: &StreamKey) -> Lease {
        let mut running = self.running.lock();
        running.retain(|_, w| w.strong_count() > 0);
        let shared = match running.get(key).and_then(Weak::upgrade) {
            Some(s) => s,
            None => {
                let (stop, stop_rx) = watch::channel(false);
                let s = Arc::new(Shared { consumers: Arc::default(), stop });
                let task = Decoder {
                    hub: self.hub.clone(),
                    templates: self.templates.clone(),
                    key: key.clone(),
                    consumers: s.consumers.clone(),
                };
                let span = tracing::info_span!("mix_decoder", input = %key);
                tokio::spawn(task.run(stop_rx).instrument(span));
                running.insert(key.clone(), Arc::downgrade(&s));
                s
            }
        };
        let (tx, rx) = mpsc::channel(QUEUE);
        let c = &shared.consumers;
        let id = c.next.fetch_add(1, Ordering::Relaxed);
        if let Some((width, height)) = *c.size.lock() {
            let _ = tx.try_send(Decoded::Size { width, height });
        }
        c.list.lock().push((id, tx));
        Lease { shared, id, rx }
    }

    /// How many decoders run (one per input stream in use).
    pub fn running(&self) -> usize {
        self.running.lock().values().filter(|w| w.strong_count() > 0).count()
    }
}

/// One decoding pipeline (video or audio) of an input.
struct DecodePipe {
    pipeline: gst::Pipeline,
    src: gst_app::AppSrc,
}

impl Drop for DecodePipe {
    fn drop(&mut self) {
        let _ = self.src.end_of_stream();
        let _ = self.pipeline.set_state(gst::State::Null);
    }
}

/// An access unit on its way through a decoder: when it reached the hub (for the mixes' latency probes) and
/// its user-data SEI messages (for the mixes' outputs), by pts (ms).
struct Arrival {
    pts: i64,
    at: Instant,
    sei: Vec<SeiMessage>,
}

type Arrivals = Arc<Mutex<VecDeque<Arrival>>>;

impl DecodePipe {
    fn build(
        t: &Template,
        caps: &gst::Caps,
        video: bool,
        stream: &Arc<Stream>,
        consumers: &Arc<Consumers>,
        arrivals: &Arrivals,
    ) -> Result<Self, TranscodeError> {
        let (pipeline, src, sink) = t.build(&[])?;
        src.set_caps(Some(caps));
        let (stream, consumers, arrivals) = (Arc::downgrade(stream), consumers.clone(), arrivals.clone());
        sink.set_callbacks(
            gst_app::AppSinkCallbacks::builder()
                .new_sample(move |s| {
                    let sample = s.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                    let (Some(buf), Some(caps)) = (sample.buffer_owned(), sample.caps_owned()) else {
                        return Ok(gst::FlowSuccess::Ok);
                    };
                    let Some(pts) = buf.pts().map(|t| t.mseconds() as i64) else { return Ok(gst::FlowSuccess::Ok) };
                    let head = stream.upgrade().and_then(|s| s.last_dts()).unwrap_or(pts);
                    let (received, sei) = if video {
                        let mut a = arrivals.lock();
                        let at = a.iter().find(|x| x.pts == pts).map(|x| x.at);
                        // A picture the decoder dropped passes its messages on to this one (arrivals are in decode
                        // order, pictures come out in presentation order: every earlier one is done).
                        let mut msgs = Vec::new();
                        a.retain_mut(|x| {
                            let done = x.pts <= pts;
                            if done {
                                msgs.append(&mut x.sei);
                            }
                            !done
                        });
                        (at, (!msgs.is_empty()).then(|| Arc::new(msgs)))
                    } else {
                        (None, None)
                    };
                    consumers.send(Decoded::Media { video, buf, caps, head, received, sei });
                    Ok(gst::FlowSuccess::Ok)
                })
                .build(),
        );
        pipeline
            .set_state(gst::State::Playing)
            .map_err(|e| TranscodeError::Gst(format!("{}: cannot start: {e}", t.name)))?;
        Ok(Self { pipeline, src })
    }

    /// The first error on the bus, if any.
    fn failed(&self) -> Option<String> {
        let bus = self.pipeline.bus()?;
        while let Some(msg) = bus.pop_filtered(&[gst::MessageType::Error]) {
            if let gst::MessageView::Error(e) = msg.view() {
                let path = msg.src().map(|s| s.path_string().to_string()).unwrap_or_default();
                return Some(format!("{} ({path})", e.error()));
            }
        }
        None
    }

    fn push(&self, f: &Frame, dts: i64, pts: i64) {
        let mut buf = gst::Buffer::from_slice(f.payload.clone());
        if let Some(m) = buf.get_mut() {
            m.set_pts(gst::ClockTime::from_mseconds(pts.max(0) as u64));
            m.set_dts(gst::ClockTime::from_mseconds(dts.max(0) as u64));
            if f.kind == MediaKind::Video && !f.keyframe {
                m.set_flags(gst::BufferFlags::DELTA_UNIT);
            }
        }
        let _ = self.src.push_buffer(buf);
    }
}

/// The task behind one shared decoder.
struct Decoder {
    hub: Hub,
    templates: Arc<Templates>,
    key: StreamKey,
    consumers: Arc<Consumers>,
}

/// One session of the input (from subscribing to its stream's end): the decoder configurations and pipelines.
#[derive(Default)]
struct Session {
    vcfg: Option<(Bytes, u8)>,
    acfg: Option<Bytes>,
    video: Option<DecodePipe>,
    audio: Option<DecodePipe>,
    arrivals: Arrivals,
}

impl Decoder {
    async fn run(self, mut stop: watch::Receiver<bool>) {
        tracing::info!("mix decoder started");
        let mut batch = Vec::new();
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        while !*stop.borrow() {
            // An input pulled on demand (a cluster edge's) is started by its mix as by a player.
            let Some(stream) = self.hub.open_stream(&self.key).ok().flatten() else {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                    _ = stop.changed() => {}
                }
                continue;
            };
            let guard = self.hub.register_client(Protocol::Transcode, None);
            // A decoder that falls behind skips to a newer keyframe rather than showing an input seconds late.
            let policy = CachePolicy::internal(Duration::from_secs(2));
            let audience = Audience::Internal(Purpose::MixInput);
            let Ok(mut reader) =
                self.hub.subscribe_as(&self.key, Protocol::Transcode, policy, guard.handle.clone(), audience)
            else {
                continue;
            };
            tracing::debug!("input subscribed");
            let mut s = Session::default();
            loop {
                tokio::select! {
                    r = reader.next_batch(&mut batch) => {
                        if let Err(reason) = r {
                            tracing::info!(%reason, "input stream ended");
                            break;
                        }
                        for p in batch.drain(..) {
                            self.feed(&stream, &mut s, &p.frame, p.received);
                        }
                    }
                    _ = tick.tick() => self.check(&mut s),
                    _ = stop.changed() => break,
                }
            }
            drop(s);
            self.consumers.send(Decoded::Ended);
            drop(guard);
        }
        tracing::info!("mix decoder stopped");
    }

    fn error(&self, detail: String, blank: bool) {
        self.consumers.send(Decoded::Error { detail, blank });
    }

    /// A failed decoder (garbage that looked like H.264) goes; the next keyframe starts a fresh one.
    fn check(&self, s: &mut Session) {
        for video in [true, false] {
            let pipe = if video { &mut s.video } else { &mut s.audio };
            if let Some(detail) = pipe.as_ref().and_then(DecodePipe::failed) {
                *pipe = None;
                self.error(detail, video);
            }
        }
    }

    fn feed(&self, stream: &Arc<Stream>, s: &mut Session, f: &Frame, received: Instant) {
        let t = &self.templates;
        match (f.kind, f.codec) {
            (MediaKind::Video, Codec::H264) => {
                if f.config {
                    match AvcDecoderConfig::parse(&f.payload) {
                        Ok(c) => {
                            if let Some(sps) = c.sps.first().and_then(|s| avc::parse_sps(s).ok()) {
                                self.consumers.send(Decoded::Size { width: sps.width, height: sps.height });
                            }
                            if let Some(p) = &s.video {
                                p.src.set_caps(Some(&pipeline::h264_caps(&f.payload)));
                            }
                            s.vcfg = Some((f.payload.clone(), c.nal_length_size));
                        }
                        Err(e) => self.error(format!("bad AVC decoder configuration: {e}"), false),
                    }
                    return;
                }
                let Some((config, nls)) = s.vcfg.as_ref() else { return };
                if !timing::avcc_plausible(&f.payload, *nls) {
                    self.error("undecodable H.264 access unit dropped".into(), false);
                    return;
                }
                if s.video.is_none() {
                    // A decoder can only start on a keyframe.
                    if !f.keyframe {
                        return;
                    }
                    let caps = pipeline::h264_caps(config);
                    match DecodePipe::build(t.video_decode(), &caps, true, stream, &self.consumers, &s.arrivals) {
                        Ok(p) => s.video = Some(p),
                        Err(e) => return self.error(e.to_string(), true),
                    }
                }
                let pts = f.dts + f.cts as i64;
                let (mut msgs, bad) = sei::messages_in(&f.payload, usize::from(*nls));
                stream.count_malformed_sei(bad);
                msgs.retain(|m| sei::is_user_data(m.payload_type));
                {
                    let mut a = s.arrivals.lock();
                    if a.len() == 64 {
                        a.pop_front();
                    }
                    a.push_back(Arrival { pts, at: received, sei: msgs });
                }
                if let Some(p) = &s.video {
                    p.push(f, f.dts, pts);
                }
            }
            (MediaKind::Video, Codec::H265) if f.config => {
                // Said once per configuration, not per frame: the input stays black with the reason shown.
                self.error("H.265 video cannot be mixed yet: mix the input's H.264 rendition ({name}@cb)".into(), true);
            }
            (MediaKind::Audio, Codec::Aac) => {
                if f.config {
                    if let Some(p) = &s.audio {
                        p.src.set_caps(Some(&pipeline::aac_caps(&f.payload)));
                    }
                    s.acfg = Some(f.payload.clone());
                    return;
                }
                let Some(config) = s.acfg.as_ref() else { return };
                if s.audio.is_none() {
                    let caps = pipeline::aac_caps(config);
                    match DecodePipe::build(t.audio_decode(), &caps, false, stream, &self.consumers, &s.arrivals) {
                        Ok(p) => s.audio = Some(p),
                        Err(e) => return self.error(e.to_string(), false),
                    }
                }
                if let Some(p) = &s.audio {
                    p.push(f, f.dts, f.dts);
                }
            }
            _ => {}
        }
    }
}
