//! The server placeholder (`[apps.X] placeholder = {image, after_ms}`, what MediaMTX calls "always
//! available"): when a publisher sends no video for `after_ms`, or dropped and is in its reconnect grace, the
//! stream goes on with a still picture (and, with no publisher, silence), so players neither freeze nor time
//! out; the publisher's next keyframe takes over on the same timeline (`hub::Stream::push_session`).
//!
//! The picture is encoded once per stream, at the stream's size, as one H.264 IDR frame (GStreamer: decode,
//! scale, x264) and sent `fps` times a second; the silence is one AAC frame at the stream's rate and channels,
//! encoded once and repeated.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use parking_lot::Mutex;

use crate::config::{Config, PlaceholderConfig};
use crate::events::Event;
use crate::hub::{Hub, Protocol, Stream, StreamKey};
use crate::media::{aac, avc, Codec, Frame, MediaKind};

#[derive(Debug, thiserror::Error)]
pub enum PlaceholderError {
    #[error("GStreamer: {0}")]
    Gst(String),
    #[error("the image gave no picture: {0}")]
    NoPicture(String),
}

/// Size used when the stream's own is unknown (no H.264 configuration yet).
const DEFAULT_SIZE: (u32, u32) = (1280, 720);

/// Watches the streams of apps with a placeholder.
pub struct Placeholders {
    hub: Hub,
    config: Arc<Config>,
    running: Mutex<HashSet<StreamKey>>,
}

impl Placeholders {
    pub fn new(hub: Hub, config: Arc<Config>) -> Arc<Self> {
        Arc::new(Self { hub, config, running: Mutex::new(HashSet::new()) })
    }

    /// Starts watching every stream published to an app with a placeholder, from its publish until it closes.
    pub fn start(self: &Arc<Self>) {
        if self.config.apps.values().all(|a| a.placeholder.is_none()) {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            let mut events = this.hub.events().subscribe();
            loop {
                match events.recv().await {
                    Ok(Event::Publish { stream, protocol, .. })
                        if !crate::names::is_rendition(&stream.name) && protocol != Protocol::Edge =>
                    {
                        let Some(cfg) = this.config.app(&stream.app).and_then(|a| a.placeholder.clone()) else {
                            continue;
                        };
                        // A publisher back within its grace finds its watcher still there.
                        if !this.running.lock().insert(stream.clone()) {
                            continue;
                        }
                        let (hub, this2) = (this.hub.clone(), this.clone());
                        let span = tracing::info_span!("placeholder", stream = %stream);
                        tokio::spawn(tracing::Instrument::instrument(
                            async move {
                                if let Some(s) = hub.get(&stream) {
                                    watch(&s, &cfg).await;
                                }
                                this2.running.lock().remove(&stream);
                            },
                            span,
                        ));
                    }
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
        });
    }
}

/// What stands in for the publisher: the picture (configuration + IDR frame) and, for AAC streams, silence.
struct Filler {
    avcc: Bytes,
    picture: Bytes,
    /// One silent AAC frame and its duration (ms), if the stream's audio is AAC.
    silence: Option<(Bytes, f64)>,
}

/// A stream's placeholder while it is in force: where its timeline started and what was sent.
struct Standing {
    started: Instant,
    base_dts: i64,
    pictures: u64,
    silences: u64,
}

async fn watch(stream: &Arc<Stream>, cfg: &PlaceholderConfig) {
    let after = Duration::from_millis(cfg.after_ms);
    let interval_ms = 1000.0 / cfg.fps;
    let mut filler: Option<Arc<Filler>> = None;
    let mut standing: Option<Standing> = None;
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
        if stream.is_closed() {
            stream.stop_filling();
            return;
        }
        let publishing = stream.publisher().is_some();
        if standing.is_some() && !stream.is_filling() {
            // The publisher's keyframe took over.
            standing = None;
            continue;
        }
        let Some(silent) = stream.video_silent_for() else { continue };
        if standing.is_none() {
            if publishing && silent < after {
                continue;
            }
            let f = match &filler {
                Some(f) => f.clone(),
                None => match encode_for(stream, cfg).await {
                    Ok(f) => filler.insert(Arc::new(f)).clone(),
                    Err(e) => {
                        tracing::warn!(error = %e, "no placeholder for this stream");
                        return;
                    }
                },
            };
            let base_dts = stream.last_dts().unwrap_or(0) + 1;
            tracing::info!(silent_ms = silent.as_millis() as u64, publishing, "placeholder stands in");
            stream.start_filling();
            let now = Instant::now();
            let cfg_frame = Frame::config(MediaKind::Video, Codec::H264, f.avcc.clone());
            if !stream.push_filler(Frame { dts: base_dts, ..cfg_frame }, now) {
                continue;
            }
            standing = Some(Standing { started: now, base_dts, pictures: 0, silences: 0 });
        }
        let (Some(st), Some(f)) = (standing.as_mut(), filler.as_ref()) else { continue };
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(st.started).as_secs_f64() * 1000.0;
        // Pictures at `fps`, each a keyframe, on a timeline that runs on from the stream's last frame.
        while (st.pictures as f64) * interval_ms <= elapsed {
            let dts = st.base_dts + ((st.pictures as f64) * interval_ms) as i64;
            if !stream.push_filler(media_frame(MediaKind::Video, Codec::H264, dts, &f.picture), now) {
                break;
            }
            st.pictures += 1;
        }
        // Silence only while nobody publishes: a connected publisher's own audio goes on (and the silence's
        // count keeps up with the time, so a publisher that leaves now is followed by silence from now).
        if let Some((frame, ms)) = f.silence.as_ref() {
            if stream.publisher().is_some() {
                st.silences = (elapsed / ms).ceil() as u64;
                continue;
            }
            while (st.silences as f64) * ms <= elapsed {
                let dts = st.base_dts + ((st.silences as f64) * ms) as i64;
                if !stream.push_filler(media_frame(MediaKind::Audio, Codec::Aac, dts, frame), now) {
                    break;
                }
                st.silences += 1;
            }
        }
    }
}

/// A placeholder media frame: every picture is a keyframe (the same IDR again), audio frames stand alone.
fn media_frame(kind: MediaKind, codec: Codec, dts: i64, payload: &Bytes) -> Frame {
    let keyframe = kind == MediaKind::Video;
    Frame { kind, codec, dts, cts: 0, keyframe, config: false, payload: payload.clone() }
}

/// Encodes the picture at the stream's size, and silence for its AAC audio (blocking work, off the runtime).
async fn encode_for(stream: &Stream, cfg: &PlaceholderConfig) -> Result<Filler, PlaceholderError> {
    let headers = stream.headers();
    let size = headers
        .video
        .as_ref()
        .and_then(|p| avc::AvcDecoderConfig::parse(&p.frame.payload).ok())
        .and_then(|c| c.sps.first().and_then(|s| avc::parse_sps(s).ok()))
        .map_or(DEFAULT_SIZE, |s| (s.width, s.height));
    let audio = headers
        .audio
        .as_ref()
        .filter(|p| p.frame.codec == Codec::Aac)
        .and_then(|p| aac::AudioSpecificConfig::parse(&p.frame.payload).ok())
        .map(|a| (a.sample_rate, a.channels.max(1)));
    let image = cfg.image.clone();
    let started = Instant::now();
    let f = tokio::task::spawn_blocking(move || {
        let (avcc, picture) = encode_picture(&image, size)?;
        let silence = match audio {
            Some((rate, channels)) => match encode_silence(rate, channels) {
                Ok(s) => Some((s, 1024.0 * 1000.0 / f64::from(rate))),
                Err(e) => {
                    tracing::warn!(error = %e, "no silence for the placeholder: pictures only");
                    None
                }
            },
            None => None,
        };
        Ok(Filler { avcc, picture, silence })
    })
    .await
    .map_err(|e| PlaceholderError::Gst(e.to_string()))??;
    tracing::info!(
        width = size.0,
        height = size.1,
        bytes = f.picture.len(),
        ms = started.elapsed().as_millis() as u64,
        "placeholder picture encoded"
    );
    Ok(f)
}

/// Runs a pipeline that ends in `appsink name=sink` to its end; every sample's bytes and the caps' codec_data.
fn run_to_end(description: &str) -> Result<(Vec<Bytes>, Option<Bytes>), PlaceholderError> {
    let gst_err = |e: &dyn std::fmt::Display| PlaceholderError::Gst(e.to_string());
    gst::init().map_err(|e| gst_err(&e))?;
    let pipeline = gst::parse::launch(description)
        .map_err(|e| gst_err(&e))?
        .downcast::<gst::Pipeline>()
        .map_err(|_| PlaceholderError::Gst("not a pipeline".into()))?;
    let sink = pipeline
        .by_name("sink")
        .and_then(|e| e.downcast::<gst_app::AppSink>().ok())
        .ok_or_else(|| PlaceholderError::Gst("no appsink".into()))?;
    pipeline.set_state(gst::State::Playing).map_err(|e| gst_err(&e))?;
    let mut out = Vec::new();
    let mut codec_data = None;
    let deadline = Instant::now() + Duration::from_secs(20);
    let result = loop {
        if Instant::now() > deadline {
            break Err(PlaceholderError::Gst("encoding took over 20 s".into()));
        }
        match sink.try_pull_sample(gst::ClockTime::from_mseconds(500)) {
            Some(sample) => {
                if codec_data.is_none() {
                    codec_data = sample
                        .caps()
                        .and_then(|c| c.structure(0))
                        .and_then(|s| s.get::<gst::Buffer>("codec_data").ok())
                        .and_then(|b| b.map_readable().ok().map(|m| Bytes::copy_from_slice(m.as_slice())));
                }
                if let Some(map) = sample.buffer().and_then(|b| b.map_readable().ok()) {
                    out.push(Bytes::copy_from_slice(map.as_slice()));
                }
            }
            None if sink.is_eos() => break Ok(()),
            None => {
                if let Some(bus) = pipeline.bus() {
                    if let Some(msg) = bus.pop_filtered(&[gst::MessageType::Error]) {
                        if let gst::MessageView::Error(e) = msg.view() {
                            break Err(PlaceholderError::Gst(e.error().to_string()));
                        }
                    }
                }
            }
        }
    };
    let _ = pipeline.set_state(gst::State::Null);
    result.map(|()| (out, codec_data))
}

/// The picture as (avcC, one IDR access unit in AVCC form) at `width`x`height`.
fn encode_picture(image: &std::path::Path, (width, height): (u32, u32)) -> Result<(Bytes, Bytes), PlaceholderError> {
    let location = image.to_string_lossy().replace('"', "");
    let description = format!(
        "filesrc location=\"{location}\" ! decodebin ! videoconvert ! videoscale ! imagefreeze num-buffers=1 \
         ! video/x-raw,format=I420,width={width},height={height},framerate=1/1,pixel-aspect-ratio=1/1 \
         ! x264enc tune=zerolatency speed-preset=veryfast key-int-max=1 bframes=0 \
         ! video/x-h264,profile=constrained-baseline,stream-format=avc,alignment=au ! appsink name=sink sync=false"
    );
    let (frames, codec_data) = run_to_end(&description)?;
    let picture = frames.into_iter().next().ok_or_else(|| PlaceholderError::NoPicture(image.display().to_string()))?;
    let avcc = codec_data.ok_or_else(|| PlaceholderError::NoPicture("no H.264 configuration".into()))?;
    Ok((avcc, picture))
}

/// One AAC-LC frame of silence at `rate` and `channels` (taken after the encoder's priming frames).
fn encode_silence(rate: u32, channels: u8) -> Result<Bytes, PlaceholderError> {
    let description = format!(
        "audiotestsrc wave=silence num-buffers=8 samplesperbuffer=1024 \
         ! audio/x-raw,format=S16LE,rate={rate},channels={channels},layout=interleaved \
         ! audioconvert ! avenc_aac ! audio/mpeg,mpegversion=4,stream-format=raw ! appsink name=sink sync=false"
    );
    let (frames, _) = run_to_end(&description)?;
    frames.into_iter().nth(4).ok_or_else(|| PlaceholderError::NoPicture("no AAC frame of silence".into()))
}
