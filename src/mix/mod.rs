//! Stream mixing (MCU): up to 16 hub streams composed into one picture and one audio mix, published as an
//! ordinary hub stream. Layouts change while the mix runs without stopping its output.
//!
//! `layout` checks requests and places inputs (pure), `timing` maps input timestamps onto the mix clock
//! (pure), `pipeline` owns the GStreamer graph, `decoders` reads and decodes each input stream once for all
//! mixes, and this module runs mixes: one task per input taking its decoded media, one task draining the
//! encoders into the hub, and a bus thread that isolates failing input branches.

pub mod decoders;
pub mod layout;
pub mod pipeline;
pub mod timing;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use gstreamer as gst;
use gstreamer::prelude::*;
use parking_lot::Mutex;
use serde_json::{json, Value};
use tokio::sync::watch;
use tracing::Instrument;

use crate::events::Event;
use crate::hub::{Hub, Protocol, PublisherInfo, StreamKey};
use crate::media::{Codec, Frame, MediaKind};
use decoders::{Decoded, Decoders};
pub use layout::MixConfig;
use layout::{CreateRequest, FieldError, InputKind, InputSpec, Layout, Output, PatchRequest, Placed};
use pipeline::{Branch, Encoded, MixPipeline, Templates};
use timing::Anchor;

#[derive(Debug, thiserror::Error)]
pub enum MixError {
    #[error("{0}")]
    Invalid(#[from] FieldError),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    TooMany(String),
    #[error("GStreamer: {0}")]
    Gst(String),
    #[error("pipeline template {0}")]
    Template(String),
}

/// The running mixes.
pub struct Mixes {
    hub: Hub,
    cfg: MixConfig,
    templates: Arc<Templates>,
    decoders: Arc<Decoders>,
    mixes: Mutex<BTreeMap<String, Arc<Mix>>>,
}

struct Mix {
    id: String,
    hub: Hub,
    output: Output,
    templates: Arc<Templates>,
    decoders: Arc<Decoders>,
    pipe: MixPipeline,
    /// What the client asked for (re-placed on PATCH) and where that put every input.
    request: Mutex<(Option<String>, Option<String>, Vec<InputSpec>)>,
    layout: Mutex<Layout>,
    slots: Mutex<Vec<Arc<Slot>>>,
    next_serial: AtomicU64,
    lost_after: Duration,
    stop: watch::Sender<bool>,
    stopped: Arc<AtomicBool>,
    failed: Mutex<Option<String>>,
    created: SystemTime,
    frames_out: AtomicU64,
    latency: Mutex<timing::LatencyProbe>,
    /// The inputs' user-data SEI messages, by output running time, until the output picture covering them.
    sei: Mutex<crate::media::sei::Carry>,
}

/// One input's place in a running mix. Branches are named `in{serial}v` / `in{serial}a` so a bus message
/// can be traced back to its input.
struct Slot {
    serial: u64,
    place: Mutex<Placed>,
    status: Mutex<Status>,
    video: Mutex<Option<Branch>>,
    audio: Mutex<Option<Branch>>,
    /// The mixes its shared decoder feeds (stream inputs only, while the input runs).
    decoder: Mutex<Option<Arc<decoders::Consumers>>>,
    stop: watch::Sender<bool>,
}

struct Status {
    state: &'static str,
    visible: bool,
    width: Option<u32>,
    height: Option<u32>,
    fps: f64,
    frames: u64,
    window: (Instant, u64),
    last_frame: Option<Instant>,
    errors: u64,
    last_error: Option<String>,
    last_event: Option<Instant>,
}

impl Status {
    fn new(state: &'static str) -> Self {
        Self {
            state,
            visible: false,
            width: None,
            height: None,
            fps: 0.0,
            frames: 0,
            window: (Instant::now(), 0),
            last_frame: None,
            errors: 0,
            last_error: None,
            last_event: None,
        }
    }
}

impl Slot {
    /// Puts the input's picture where its place says, shown or not as its status says. The input's task (first
    /// frame, live, lost) and a re-layout (`Mix::patch`, on another thread) both change what a pad should show:
    /// each writes its part first and then calls this, which reads both anew while it holds the branch, so the
    /// last to apply sees every change. Applying a place or a visibility read earlier left a pad at an old
    /// layout's rectangle, or hidden, until the next re-layout: an anchor that went live while a room's mix
    /// was re-laid out three times in 30 ms stayed black in its tile.
    fn show(&self) {
        let branch = self.video.lock();
        if let Some(b) = branch.as_ref() {
            let visible = self.status.lock().visible;
            MixPipeline::place_video(b, &self.place.lock(), visible);
        }
    }

    /// A re-layout keeps this input at a new place: only pad properties change, the output and its timestamps
    /// carry on untouched.
    fn relayout(&self, p: &Placed) {
        *self.place.lock() = p.clone();
        self.show();
        if let Some(b) = self.audio.lock().as_ref() {
            MixPipeline::set_audio(b, p);
        }
    }

    /// An input that sends again is shown again. `kind` is the input's place as its task last read it: only
    /// its kind and image are used, which a slot keeps for its life (a re-layout that changes them makes a new
    /// slot); where it is drawn is read by `show`.
    fn mark_live(&self, kind: &Placed, video: bool) {
        let mut st = self.status.lock();
        st.last_frame = Some(Instant::now());
        st.state = "live";
        // Video frames show the slot; for an audio-only input, its sound shows its placeholder picture.
        let shows = video || (kind.kind == InputKind::Audio && kind.image.is_some());
        if video {
            st.frames += 1;
        }
        if shows && !st.visible {
            st.visible = true;
            drop(st);
            self.show();
            tracing::info!("input live");
        }
    }
}

impl Mixes {
    /// Loads the mix templates and builds each once, so a broken template stops start-up.
    pub fn new(hub: Hub, cfg: MixConfig, pipelines_dir: &str) -> Result<Arc<Self>, MixError> {
        gst::init().map_err(|e| MixError::Gst(e.to_string()))?;
        let templates = Templates::load(Path::new(pipelines_dir))?;
        let probe = layout::OutputRequest { stream: "live/check".into(), ..Default::default() };
        templates.validate(&layout::check_output(&probe, &cfg)?)?;
        let templates = Arc::new(templates);
        let decoders = Decoders::new(hub.clone(), templates.clone());
        Ok(Arc::new(Self { hub, cfg, templates, decoders, mixes: Mutex::new(BTreeMap::new()) }))
    }

    pub fn list(&self) -> Vec<Value> {
        let mixes: Vec<_> = self.mixes.lock().values().cloned().collect();
        mixes.iter().map(|m| m.json()).collect()
    }

    /// Input decoders running for all mixes: one per input stream in use, however many mixes share it.
    pub fn decoders(&self) -> usize {
        self.decoders.running()
    }

    pub fn get(&self, id: &str) -> Result<Value, MixError> {
        let m = self.mixes.lock().get(id).cloned().ok_or_else(|| not_found(id))?;
        Ok(m.json())
    }

    pub fn create(&self, req: CreateRequest) -> Result<Value, MixError> {
        crate::names::validate("mix", &req.id).map_err(|e| FieldError { field: "id".into(), detail: e.to_string() })?;
        let output = layout::check_output(&req.output, &self.cfg)?;
        let placed = layout::place(
            req.template.as_deref(),
            req.pip_position.as_deref(),
            &req.inputs,
            (output.width, output.height),
            self.cfg.max_inputs,
        )?;
        check_no_loop(&output, &placed)?;
        let mut mixes = self.mixes.lock();
        if mixes.contains_key(&req.id) {
            return Err(MixError::Conflict(format!("mix {} already exists", req.id)));
        }
        if mixes.len() >= self.cfg.max_mixes {
            return Err(MixError::TooMany(format!("{} mixes are running (mix.max_mixes)", mixes.len())));
        }
        if let Some(other) = mixes.values().find(|m| m.output.stream == output.stream) {
            return Err(MixError::Conflict(format!("mix {} already publishes {}", other.id, output.stream)));
        }
        if self.hub.get(&output.stream).is_some_and(|s| !s.is_closed() && s.publisher().is_some()) {
            return Err(MixError::Conflict(format!("stream {} is already being published", output.stream)));
        }
        let mix = Mix::start(&self.hub, &self.templates, &self.decoders, &self.cfg, req, output, placed)?;
        mixes.insert(mix.id.clone(), mix.clone());
        drop(mixes);
        Ok(mix.json())
    }

    pub fn patch(&self, id: &str, req: PatchRequest) -> Result<Value, MixError> {
        let m = self.mixes.lock().get(id).cloned().ok_or_else(|| not_found(id))?;
        m.patch(req, self.cfg.max_inputs)?;
        Ok(m.json())
    }

    pub fn delete(&self, id: &str) -> Result<(), MixError> {
        let m = self.mixes.lock().remove(id).ok_or_else(|| not_found(id))?;
        m.shutdown();
        Ok(())
    }
}

fn not_found(id: &str) -> MixError {
    MixError::NotFound(format!("no mix {id}"))
}

/// A mix reading its own output would feed on itself.
fn check_no_loop(output: &Output, l: &Layout) -> Result<(), MixError> {
    if let Some(i) = l.inputs.iter().position(|p| p.stream.as_ref() == Some(&output.stream)) {
        return Err(FieldError {
            field: "output.stream".into(),
            detail: format!("{} is also inputs[{i}]", output.stream),
        }
        .into());
    }
    Ok(())
}

impl Mix {
    fn start(
        hub: &Hub,
        templates: &Arc<Templates>,
        decoders: &Arc<Decoders>,
        cfg: &MixConfig,
        req: CreateRequest,
        output: Output,
        placed: Layout,
    ) -> Result<Arc<Mix>, MixError> {
        let pipe = MixPipeline::build(templates, &output, cfg.latency_ms)?;
        let guard = hub.register_client(Protocol::Transcode, None);
        let info = PublisherInfo {
            client_id: guard.handle.id,
            protocol: Protocol::Transcode,
            addr: None,
            param: format!("mix={}", req.id),
        };
        let publisher = hub.publish(output.stream.clone(), info, guard.handle.clone()).map_err(|e| match e {
            crate::hub::HubError::AlreadyPublishing(s) => {
                MixError::Conflict(format!("stream {s} is already being published"))
            }
            e => MixError::Gst(e.to_string()),
        })?;
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        pipe.drain_into(tx);
        let (stop, _) = watch::channel(false);
        let mix = Arc::new(Mix {
            id: req.id.clone(),
            hub: hub.clone(),
            output,
            templates: templates.clone(),
            decoders: decoders.clone(),
            pipe,
            request: Mutex::new((req.template.clone(), req.pip_position.clone(), req.inputs.clone())),
            layout: Mutex::new(placed.clone()),
            slots: Mutex::new(Vec::new()),
            next_serial: AtomicU64::new(1),
            lost_after: Duration::from_millis(cfg.lost_after_ms),
            stop,
            stopped: Arc::new(AtomicBool::new(false)),
            failed: Mutex::new(None),
            created: SystemTime::now(),
            frames_out: AtomicU64::new(0),
            latency: Mutex::new(timing::LatencyProbe::default()),
            sei: Mutex::new(crate::media::sei::Carry::default()),
        });
        if let Err(e) = mix.pipe.pipeline.set_state(gst::State::Playing) {
            let _ = mix.pipe.pipeline.set_state(gst::State::Null);
            return Err(MixError::Gst(format!("cannot start the mix pipeline: {e}")));
        }
        let span = tracing::info_span!("mix", mix = %mix.id);
        tokio::spawn(mix.clone().run_output(publisher, guard, rx).instrument(span.clone()));
        spawn_bus_watch(&mix, span.clone());
        let slots: Vec<_> = placed.inputs.iter().map(|p| mix.add_slot(p.clone())).collect();
        *mix.slots.lock() = slots;
        span.in_scope(|| {
            tracing::info!(output = %mix.output.stream, inputs = placed.inputs.len(), template = ?placed.template, "mix started")
        });
        Ok(mix)
    }

    /// Publishes what the encoders make; the pipeline's running time is the output's timeline, so it stays
    /// continuous whatever happens to the inputs or the layout.
    async fn run_output(
        self: Arc<Self>,
        mut publisher: crate::hub::Publisher,
        client: crate::hub::ClientGuard,
        mut rx: tokio::sync::mpsc::UnboundedReceiver<Encoded>,
    ) {
        let mut stop = self.stop.subscribe();
        let mut configs: [Option<Bytes>; 2] = [None, None];
        let mut video_nal_len = 4;
        // AAC is stamped ENCODER_PRIMING_SAMPLES early, as every AAC the hub gets from an encoder.
        let mut priming_ms = 0i64;
        let mut last_audio: Option<i64> = None;
        loop {
            tokio::select! {
                e = rx.recv() => {
                    let Some(e) = e else { break };
                    let (kind, codec, slot) = if e.video { (MediaKind::Video, Codec::H264, 0) } else { (MediaKind::Audio, Codec::Aac, 1) };
                    if let Some(cd) = e.codec_data.filter(|cd| configs[slot].as_ref() != Some(cd)) {
                        if !e.video {
                            let rate = crate::media::aac::AudioSpecificConfig::parse(&cd).map(|a| a.sample_rate).unwrap_or(48_000);
                            priming_ms = crate::media::aac::ENCODER_PRIMING_SAMPLES * 1000 / rate.max(1) as i64;
                        }
                        if e.video {
                            video_nal_len = crate::media::avc::AvcDecoderConfig::parse(&cd).map_or(4, |c| usize::from(c.nal_length_size));
                        }
                        let cfg = Frame::config(kind, codec, cd.clone());
                        publisher.push_raw(cfg, e.dts as u32, Instant::now());
                        configs[slot] = Some(cd);
                    }
                    if configs[slot].is_none() {
                        continue;
                    }
                    if e.video {
                        self.frames_out.fetch_add(1, Ordering::Relaxed);
                    }
                    let cts = if e.video { (e.pts - e.dts) as i32 } else { 0 };
                    let payload = match e.video {
                        true => {
                            let mut sei = self.sei.lock();
                            if sei.is_empty() { e.data } else { sei.attach(e.pts, e.data, video_nal_len) }
                        }
                        false => e.data,
                    };
                    let frame = Frame { kind, codec, dts: 0, cts, keyframe: e.video && e.key, config: false, payload };
                    let ts = match e.video {
                        true => e.dts,
                        false => {
                            let t = (e.dts - priming_ms).max(last_audio.map_or(0, |l| l + 1));
                            last_audio = Some(t);
                            t
                        }
                    };
                    publisher.push_raw(frame, ts as u32, Instant::now());
                    if e.video {
                        self.latency.lock().output(e.pts, Instant::now());
                    }
                }
                _ = stop.changed() => break,
                // Kicked through the API, or the server is shutting down: the output is gone for good.
                _ = client.handle.notify.notified() => {
                    if let Some(reason) = client.handle.kicked() {
                        *self.failed.lock() = Some(format!("output stopped: {reason}"));
                        let _ = self.pipe.pipeline.set_state(gst::State::Null);
                        break;
                    }
                }
            }
        }
        tracing::info!("mix output stopped");
    }

    fn add_slot(self: &Arc<Self>, p: Placed) -> Arc<Slot> {
        let serial = self.next_serial.fetch_add(1, Ordering::Relaxed);
        let (stop, stop_rx) = watch::channel(false);
        let state = if p.kind.reads_stream() { "waiting" } else { "static" };
        let slot = Arc::new(Slot {
            serial,
            place: Mutex::new(p.clone()),
            status: Mutex::new(Status::new(state)),
            video: Mutex::new(None),
            audio: Mutex::new(None),
            decoder: Mutex::new(None),
            stop,
        });
        match &p.stream {
            Some(key) => {
                if p.kind == InputKind::Audio && p.image.is_some() {
                    // Shown once the input's sound flows, like a video input's picture.
                    self.add_picture(&slot, &p, false);
                }
                let span = tracing::info_span!("mix_input", mix = %self.id, input = %key);
                tokio::spawn(self.clone().run_input(slot.clone(), key.clone(), stop_rx).instrument(span));
            }
            None => {
                self.add_picture(&slot, &p, true);
                slot.status.lock().visible = true;
            }
        }
        slot
    }

    /// A still picture in the slot: a colour or image input, or an audio-only input's placeholder image.
    fn add_picture(&self, slot: &Slot, p: &Placed, visible: bool) {
        let made = self.pipe.add_static(&format!("in{}v", slot.serial), p).and_then(|b| {
            MixPipeline::place_video(&b, p, visible);
            self.pipe.start(&b)?;
            Ok(b)
        });
        match made {
            Ok(b) => *slot.video.lock() = Some(b),
            Err(e) => self.input_error(slot, &format!("{e}")),
        }
    }

    /// Takes one input's decoded media from its shared decoder for as long as it is part of the mix.
    async fn run_input(self: Arc<Self>, slot: Arc<Slot>, key: StreamKey, mut stop: watch::Receiver<bool>) {
        let mut lease = self.decoders.lease(&key);
        *slot.decoder.lock() = Some(lease.consumers());
        let mut anchor = Anchor::default();
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        while !*stop.borrow() {
            tokio::select! {
                d = lease.rx.recv() => {
                    let Some(d) = d else { break };
                    self.take(&slot, d, &mut anchor);
                }
                _ = tick.tick() => self.check_lost(&slot),
                _ = stop.changed() => break,
            }
        }
        drop(lease);
        *slot.decoder.lock() = None;
        for b in [slot.video.lock().take(), slot.audio.lock().take()].into_iter().flatten() {
            self.pipe.remove(b);
        }
    }

    /// One message from the input's decoder. Audio and video share `anchor`, so lip-sync holds.
    fn take(&self, slot: &Slot, d: Decoded, anchor: &mut Anchor) {
        let place = slot.place.lock().clone();
        match d {
            Decoded::Size { width, height } => {
                let mut st = slot.status.lock();
                (st.width, st.height) = (Some(width), Some(height));
            }
            Decoded::Error { detail, blank } => {
                if blank && place.kind.has_video() {
                    slot.status.lock().visible = false;
                    slot.show();
                }
                self.input_error(slot, &detail);
            }
            Decoded::Ended => {
                anchor.reset();
                self.check_lost(slot);
            }
            Decoded::Media { video, buf, caps, head, received, sei } => {
                let wanted =
                    if video { place.kind.has_video() } else { matches!(place.kind, InputKind::Av | InputKind::Audio) };
                if !wanted {
                    return;
                }
                let Some(pts) = buf.pts() else { return };
                // Mapped in ms like the hub's timestamps; the sub-ms rest is kept so audio stays gapless.
                let rest = pts.nseconds() % 1_000_000;
                let rt = anchor.map(pts.mseconds() as i64, head, self.pipe.now_ms());
                let mut out = buf.copy();
                if let Some(m) = out.get_mut() {
                    m.set_pts(gst::ClockTime::from_nseconds(rt.max(0) as u64 * 1_000_000 + rest));
                    m.set_dts(gst::ClockTime::NONE);
                }
                let mut branch = if video { slot.video.lock() } else { slot.audio.lock() };
                if branch.is_none() {
                    let name = format!("in{}{}", slot.serial, if video { 'v' } else { 'a' });
                    match self.pipe.add_input(&self.templates, video, &name, &caps).and_then(|b| {
                        // The place now, not `place`: a re-layout since this message was taken found no
                        // branch to move, and waits for this lock if it comes now (see `Slot::show`).
                        let now = slot.place.lock().clone();
                        if video {
                            let visible = slot.status.lock().visible;
                            MixPipeline::place_video(&b, &now, visible);
                        } else {
                            MixPipeline::set_audio(&b, &now);
                        }
                        self.pipe.start(&b)?;
                        Ok(b)
                    }) {
                        Ok(b) => *branch = Some(b),
                        Err(e) => {
                            drop(branch);
                            self.input_error(slot, &e.to_string());
                            return;
                        }
                    }
                }
                let Some(src) = branch.as_ref().and_then(|b| b.src.clone()) else { return };
                drop(branch);
                // A new resolution or format from the decoder reaches every mix's branch.
                if src.caps().as_ref() != Some(&caps) {
                    src.set_caps(Some(&caps));
                }
                let _ = src.push_buffer(out);
                if video {
                    if let Some(msgs) = sei {
                        self.sei.lock().input(rt, msgs.to_vec());
                    }
                    if let Some(at) = received {
                        self.latency.lock().input(rt, at, Instant::now());
                    }
                    slot.mark_live(&place, true);
                } else if place.kind == InputKind::Audio {
                    slot.mark_live(&place, false);
                }
            }
        }
    }

    /// An input silent for `lost_after` shows the background until it sends again.
    fn check_lost(&self, slot: &Slot) {
        let mut st = slot.status.lock();
        let now = Instant::now();
        let elapsed = now.duration_since(st.window.0).as_secs_f64();
        if elapsed >= 1.0 {
            st.fps = ((st.frames - st.window.1) as f64 / elapsed * 10.0).round() / 10.0;
            st.window = (now, st.frames);
        }
        let silent = st.last_frame.is_none_or(|t| t.elapsed() >= self.lost_after);
        if silent && st.state == "live" {
            st.state = "lost";
            st.visible = false;
            drop(st);
            slot.show();
            tracing::info!("input lost: its slot shows the background");
        }
    }

    /// Counts an input's failure and tells the event bus (at most every 2 s per input, so a stream of garbage
    /// does not flood webhooks).
    fn input_error(&self, slot: &Slot, detail: &str) {
        let mut st = slot.status.lock();
        st.errors += 1;
        st.last_error = Some(detail.to_owned());
        if st.last_event.is_some_and(|t| t.elapsed() < Duration::from_secs(2)) {
            return;
        }
        st.last_event = Some(Instant::now());
        drop(st);
        let stream = slot.place.lock().stream.as_ref().map(|s| s.to_string()).unwrap_or_default();
        tracing::warn!(mix = %self.id, input = %stream, %detail, "mix input error");
        self.hub.events().send(Event::MixError { mix: self.id.clone(), stream, detail: detail.to_owned() });
    }

    /// An input's branch in this mix failed (decoding failures are the shared decoder's, see `take`): that
    /// branch goes, the input's task builds a fresh one from its next decoded buffer, and nothing else notices.
    fn branch_failed(&self, serial: u64, video: bool, detail: &str) {
        let Some(slot) = self.slots.lock().iter().find(|s| s.serial == serial).cloned() else { return };
        let b = if video { slot.video.lock().take() } else { slot.audio.lock().take() };
        if let Some(b) = b {
            self.pipe.remove(b);
        }
        slot.status.lock().visible = false;
        self.input_error(&slot, detail);
    }

    fn patch(self: &Arc<Self>, req: PatchRequest, max_inputs: usize) -> Result<(), MixError> {
        let mut request = self.request.lock();
        let template = req.template.clone().or_else(|| request.0.clone());
        let pip = req.pip_position.clone().or_else(|| request.1.clone());
        let inputs = req.inputs.clone().unwrap_or_else(|| request.2.clone());
        let placed = layout::place(
            template.as_deref(),
            pip.as_deref(),
            &inputs,
            (self.output.width, self.output.height),
            max_inputs,
        )?;
        check_no_loop(&self.output, &placed)?;
        let mut slots = self.slots.lock();
        let mut old: Vec<Option<Arc<Slot>>> = slots.drain(..).map(Some).collect();
        let mut new = Vec::with_capacity(placed.inputs.len());
        for p in &placed.inputs {
            let same = |s: &Arc<Slot>| {
                let q = s.place.lock();
                q.stream == p.stream && q.kind == p.kind && q.image == p.image && q.color == p.color
            };
            match old.iter_mut().find(|s| s.as_ref().is_some_and(same)).and_then(Option::take) {
                Some(s) => {
                    s.relayout(p);
                    new.push(s);
                }
                None => new.push(self.add_slot(p.clone())),
            }
        }
        for s in old.into_iter().flatten() {
            self.drop_slot(&s);
        }
        *slots = new;
        *self.layout.lock() = placed;
        *request = (template, pip, inputs);
        tracing::info!(mix = %self.id, inputs = slots.len(), "mix layout changed");
        Ok(())
    }

    fn drop_slot(&self, s: &Slot) {
        let _ = s.stop.send(true);
        // Stream inputs remove their own branches when their task ends; static ones have no task.
        if s.place.lock().stream.is_none() {
            if let Some(b) = s.video.lock().take() {
                self.pipe.remove(b);
            }
        }
    }

    fn shutdown(&self) {
        for s in self.slots.lock().drain(..) {
            let _ = s.stop.send(true);
        }
        let _ = self.stop.send(true);
        self.stopped.store(true, Ordering::Release);
        let _ = self.pipe.pipeline.set_state(gst::State::Null);
        tracing::info!(mix = %self.id, "mix stopped");
    }

    fn json(&self) -> Value {
        let layout = self.layout.lock().clone();
        let slots: Vec<_> = self.slots.lock().clone();
        let inputs: Vec<Value> = slots
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let p = s.place.lock().clone();
                let st = s.status.lock();
                let shared_by = s.decoder.lock().as_ref().map(|c| c.count());
                let fps = if st.last_frame.is_some_and(|t| t.elapsed() < self.lost_after) { st.fps } else { 0.0 };
                json!({
                    "index": i,
                    "stream": p.stream.as_ref().map(|k| k.to_string()),
                    "kind": p.kind,
                    "layer": p.layer,
                    "rect": p.rect,
                    "crop": p.crop,
                    "audio": p.audio,
                    "volume": p.volume,
                    "state": st.state,
                    "width": st.width,
                    "height": st.height,
                    "fps": fps,
                    "frames": st.frames,
                    "errors": st.errors,
                    "last_error": st.last_error,
                    "decoder_shared_by": shared_by,
                })
            })
            .collect();
        let failed = self.failed.lock().clone();
        let (lat_avg, lat_max) = self.latency.lock().report();
        json!({
            "id": self.id,
            "state": if failed.is_some() { "failed" } else { "running" },
            "error": failed,
            "template": layout.template,
            "pip_position": layout.pip_position,
            "output": self.output,
            "frames_out": self.frames_out.load(Ordering::Relaxed),
            "latency_ms": {"avg": (lat_avg * 10.0).round() / 10.0, "max_since_last_get": (lat_max * 10.0).round() / 10.0},
            "created_at": self.created.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
            "inputs": inputs,
        })
    }
}

impl Drop for Mix {
    fn drop(&mut self) {
        let _ = self.pipe.pipeline.set_state(gst::State::Null);
    }
}

/// Watches the pipeline's bus on its own thread: input failures are isolated, output failures mark the mix
/// failed, and latency changes (an input with a slower decoder) are applied.
fn spawn_bus_watch(mix: &Arc<Mix>, span: tracing::Span) {
    let Some(bus) = mix.pipe.pipeline.bus() else { return };
    let weak: Weak<Mix> = Arc::downgrade(mix);
    let stopped = mix.stopped.clone();
    let pipeline = mix.pipe.pipeline.downgrade();
    std::thread::Builder::new()
        .name(format!("mix-bus-{}", mix.id))
        .spawn(move || {
            let _e = span.enter();
            while !stopped.load(Ordering::Acquire) {
                let Some(msg) = bus.timed_pop(gst::ClockTime::from_mseconds(200)) else { continue };
                let Some(mix) = weak.upgrade() else { return };
                use gst::MessageView;
                match msg.view() {
                    MessageView::Error(e) => {
                        let path = msg.src().map(|s| s.path_string().to_string()).unwrap_or_default();
                        let detail = format!("{} ({path})", e.error());
                        match branch_of(&path) {
                            Some((serial, video)) => mix.branch_failed(serial, video, &detail),
                            None => {
                                tracing::error!(%detail, "mix pipeline failed");
                                *mix.failed.lock() = Some(detail);
                            }
                        }
                    }
                    MessageView::Warning(w) => {
                        let src = msg.src().map(|s| s.path_string().to_string()).unwrap_or_default();
                        tracing::debug!(warning = %w.error(), debug = ?w.debug(), %src, "mix pipeline warning")
                    }
                    MessageView::Latency(_) => {
                        if let Some(p) = pipeline.upgrade() {
                            let _ = p.recalculate_latency();
                        }
                    }
                    _ => {}
                }
            }
        })
        .ok();
}

/// `/GstPipeline:pipeline3/GstBin:in12v/avdec_h264:avdec_h264-0` → input serial 12, video.
fn branch_of(path: &str) -> Option<(u64, bool)> {
    path.split('/').find_map(|seg| {
        let name = seg.rsplit(':').next()?;
        let rest = name.strip_prefix("in")?;
        let video = match rest.chars().last()? {
            'v' => true,
            'a' => false,
            _ => return None,
        };
        rest[..rest.len() - 1].parse().ok().map(|n| (n, video))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Where a one-input grid and then a two-input grid put the input "live/b" (second in the latter).
    fn places() -> (Placed, Placed) {
        let spec = |s: &str| -> InputSpec { serde_json::from_value(json!({"stream": s, "kind": "av"})).unwrap() };
        let grid = |inputs: &[InputSpec]| layout::place(Some("grid"), None, inputs, (640, 360), 16).unwrap();
        let alone = grid(&[spec("live/b")]).inputs[0].clone();
        let second = grid(&[spec("live/a"), spec("live/b")]).inputs[1].clone();
        assert_ne!(alone.rect, second.rect);
        (alone, second)
    }

    /// A stream input's slot whose video branch is linked to a compositor (nothing runs).
    fn slot_at(p: &Placed) -> Slot {
        gst::init().unwrap();
        let vmix = gst::ElementFactory::make("compositor").build().unwrap();
        let pad = vmix.request_pad_simple("sink_%u").unwrap();
        Slot {
            serial: 1,
            place: Mutex::new(p.clone()),
            status: Mutex::new(Status::new("waiting")),
            video: Mutex::new(Some(Branch { bin: gst::Bin::new(), src: None, pad })),
            audio: Mutex::new(None),
            decoder: Mutex::new(None),
            stop: watch::channel(false).0,
        }
    }

    fn drawn(s: &Slot) -> (i32, i32, i32, f64) {
        let video = s.video.lock();
        let pad = &video.as_ref().unwrap().pad;
        (pad.property("xpos"), pad.property("width"), pad.property("height"), pad.property("alpha"))
    }

    #[test]
    fn an_input_going_live_during_a_relayout_is_drawn_at_its_new_place() {
        let (alone, second) = places();
        let slot = slot_at(&alone);
        // The input's task takes its first frame while the input is alone in the mix...
        let taken = slot.place.lock().clone();
        // ...a re-layout moves it before that frame reaches the compositor...
        slot.relayout(&second);
        assert_eq!(drawn(&slot).3, 0.0, "not shown before its first frame");
        // ...and the frame makes it live: it shows where the re-layout put it, not where it was.
        slot.mark_live(&taken, true);
        let r = second.rect.unwrap();
        assert_eq!(drawn(&slot), (r.x, r.width, r.height, 1.0));
        // Later re-layouts move it while it stays shown.
        slot.relayout(&alone);
        let r = alone.rect.unwrap();
        assert_eq!(drawn(&slot), (r.x, r.width, r.height, 1.0));
    }

    #[test]
    fn branch_names_lead_back_to_inputs() {
        assert_eq!(super::branch_of("/GstPipeline:pipeline3/GstBin:in12v/avdec_h264:avdec_h264-0"), Some((12, true)));
        assert_eq!(super::branch_of("/pipeline3/in12v/avdec_h264-0"), Some((12, true)));
        assert_eq!(super::branch_of("/pipeline3/in3a/aacparse0"), Some((3, false)));
        assert_eq!(super::branch_of("/pipeline3/vmix"), None);
        assert_eq!(super::branch_of("/GstPipeline:pipeline3/GstX264Enc:x264enc0"), None);
    }
}
