//! Renditions (ARCHITECTURE invariant 5): derived hub streams made by GStreamer pipelines, once per source
//! stream, started by their first reader and stopped after their last one leaves.
//!
//! Now: AAC → Opus for WebRTC viewers, as the derived stream `{app}/{name}@opus`. Pipelines come from
//! templates (`pipelines/*.pipeline`, gst-launch syntax with `{placeholders}`), validated at start-up, so an
//! operator can swap elements without recompiling.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use parking_lot::Mutex;
use serde::Deserialize;

use crate::hub::{CachePolicy, Hub, Packet, Protocol, PublisherInfo, StreamKey};
use crate::media::{Codec, Frame, MediaKind};

const AAC_TO_OPUS: &str = include_str!("../../pipelines/aac_to_opus.pipeline");

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TranscodeConfig {
    /// Directory whose `*.pipeline` files override the built-in templates.
    pub pipelines_dir: String,
    /// Opus bitrate for WebRTC audio, bit/s.
    pub opus_bitrate: u32,
    /// A rendition nobody reads is stopped after this long.
    pub idle_stop_secs: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum TranscodeError {
    #[error("GStreamer: {0}")]
    Gst(String),
    #[error("pipeline template {name}: {detail}")]
    Template { name: String, detail: String },
    #[error("{0}")]
    NotFound(String),
}

/// A pipeline template: gst-launch text with `{name}` placeholders; `#` lines are comments.
#[derive(Debug, Clone)]
pub struct Template {
    pub name: String,
    text: String,
}

impl Template {
    fn load(dir: &Path, name: &str, builtin: &str) -> Result<Self, TranscodeError> {
        let path = dir.join(format!("{name}.pipeline"));
        let raw = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => builtin.to_owned(),
            Err(e) => {
                return Err(TranscodeError::Template { name: name.into(), detail: format!("{}: {e}", path.display()) })
            }
        };
        let text = raw.lines().filter(|l| !l.trim_start().starts_with('#')).collect::<Vec<_>>().join(" ");
        Ok(Self { name: name.into(), text })
    }

    pub fn render(&self, vars: &[(&str, String)]) -> Result<String, TranscodeError> {
        let mut out = self.text.clone();
        for (k, v) in vars {
            out = out.replace(&format!("{{{k}}}"), v);
        }
        if let Some(i) = out.find('{') {
            let rest = &out[i..];
            let end = rest.find('}').map_or(rest.len(), |e| e + 1);
            return Err(TranscodeError::Template {
                name: self.name.clone(),
                detail: format!("unknown placeholder {}", &rest[..end]),
            });
        }
        Ok(out)
    }

    /// Builds the pipeline and finds its `src` appsrc and `sink` appsink.
    fn build(
        &self,
        vars: &[(&str, String)],
    ) -> Result<(gst::Pipeline, gst_app::AppSrc, gst_app::AppSink), TranscodeError> {
        let text = self.render(vars)?;
        let bad = |detail: String| TranscodeError::Template { name: self.name.clone(), detail };
        let el = gst::parse::launch(&text).map_err(|e| bad(e.to_string()))?;
        let pipeline = el.downcast::<gst::Pipeline>().map_err(|_| bad("not a pipeline".into()))?;
        let src = pipeline
            .by_name("src")
            .and_then(|e| e.downcast::<gst_app::AppSrc>().ok())
            .ok_or_else(|| bad("needs an appsrc named \"src\"".into()))?;
        let sink = pipeline
            .by_name("sink")
            .and_then(|e| e.downcast::<gst_app::AppSink>().ok())
            .ok_or_else(|| bad("needs an appsink named \"sink\"".into()))?;
        Ok((pipeline, src, sink))
    }
}

struct Running {
    derived: StreamKey,
}

/// Starts and shares renditions.
pub struct Transcoders {
    hub: Hub,
    cfg: TranscodeConfig,
    aac_to_opus: Template,
    running: Mutex<HashMap<StreamKey, Running>>,
}

impl Transcoders {
    /// Initializes GStreamer and validates every template by building it once.
    pub fn new(hub: Hub, cfg: TranscodeConfig) -> Result<Arc<Self>, TranscodeError> {
        gst::init().map_err(|e| TranscodeError::Gst(e.to_string()))?;
        let aac_to_opus = Template::load(Path::new(&cfg.pipelines_dir), "aac_to_opus", AAC_TO_OPUS)?;
        let (p, _, _) = aac_to_opus.build(&[("bitrate", cfg.opus_bitrate.to_string())])?;
        let _ = p.set_state(gst::State::Null);
        Ok(Arc::new(Self { hub, cfg, aac_to_opus, running: Mutex::new(HashMap::new()) }))
    }

    /// The Opus rendition of `key` (started if needed). `None` when the stream has no AAC audio.
    pub fn opus(self: &Arc<Self>, key: &StreamKey) -> Result<Option<StreamKey>, TranscodeError> {
        let mut running = self.running.lock();
        if let Some(r) = running.get(key) {
            if self.hub.get(&r.derived).is_some_and(|s| !s.is_closed()) {
                return Ok(Some(r.derived.clone()));
            }
        }
        let source = self
            .hub
            .get(key)
            .filter(|s| !s.is_closed())
            .ok_or_else(|| TranscodeError::NotFound(format!("stream {key} is not being published")))?;
        let Some(asc) =
            source.headers().slots[2].as_ref().filter(|p| p.frame.codec == Codec::Aac).map(|p| p.frame.payload.clone())
        else {
            return Ok(None);
        };
        let derived = StreamKey::new(&key.app, &format!("{}@opus", key.name));
        let (pipeline, src, sink) = self.aac_to_opus.build(&[("bitrate", self.cfg.opus_bitrate.to_string())])?;
        let caps = gst::Caps::builder("audio/mpeg")
            .field("mpegversion", 4i32)
            .field("stream-format", "raw")
            .field("codec_data", gst::Buffer::from_slice(asc.to_vec()))
            .build();
        src.set_caps(Some(&caps));
        let guard = self.hub.register_client(Protocol::Transcode, None);
        let policy = CachePolicy {
            min_cache: Duration::ZERO,
            max_cache: self.hub.options().retention,
            max_skips_per_minute: u32::MAX,
        };
        let reader = self
            .hub
            .subscribe(key, Protocol::Transcode, policy, guard.handle.clone())
            .map_err(|e| TranscodeError::NotFound(e.to_string()))?;
        let info = PublisherInfo {
            client_id: guard.handle.id,
            protocol: Protocol::Transcode,
            addr: None,
            param: String::new(),
        };
        let publisher = self
            .hub
            .publish(derived.clone(), info, guard.handle.clone())
            .map_err(|e| TranscodeError::Gst(e.to_string()))?;
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<(Bytes, i64)>();
        sink.set_callbacks(
            gst_app::AppSinkCallbacks::builder()
                .new_sample(move |s| {
                    let sample = s.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                    if let Some(buf) = sample.buffer() {
                        let pts = buf.pts().map(|t| t.mseconds() as i64).unwrap_or(0);
                        if let Ok(map) = buf.map_readable() {
                            let _ = tx.send((Bytes::copy_from_slice(map.as_slice()), pts));
                        }
                    }
                    Ok(gst::FlowSuccess::Ok)
                })
                .build(),
        );
        pipeline.set_state(gst::State::Playing).map_err(|e| TranscodeError::Gst(e.to_string()))?;
        running.insert(key.clone(), Running { derived: derived.clone() });
        drop(running);
        tracing::info!(stream = %key, rendition = %derived, "AAC→Opus transcoder started");
        let this = self.clone();
        let key = key.clone();
        let d = derived.clone();
        tokio::spawn(async move {
            let _client = guard;
            let reason = this.run(reader, publisher, &src, rx, &d).await;
            let _ = src.end_of_stream();
            let _ = pipeline.set_state(gst::State::Null);
            let mut running = this.running.lock();
            if running.get(&key).is_some_and(|r| r.derived == d) {
                running.remove(&key);
            }
            tracing::info!(stream = %key, rendition = %d, %reason, "AAC→Opus transcoder stopped");
        });
        Ok(Some(derived))
    }

    async fn run(
        &self,
        mut reader: crate::hub::Reader,
        mut publisher: crate::hub::Publisher,
        src: &gst_app::AppSrc,
        mut rx: tokio::sync::mpsc::UnboundedReceiver<(Bytes, i64)>,
        derived: &StreamKey,
    ) -> String {
        let idle = Duration::from_secs_f64(self.cfg.idle_stop_secs);
        let mut last_reader = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut batch: Vec<Arc<Packet>> = Vec::new();
        let mut base: Option<i64> = None;
        loop {
            tokio::select! {
                r = reader.next_batch(&mut batch) => {
                    if let Err(reason) = r {
                        return format!("source: {reason}");
                    }
                    for p in batch.drain(..) {
                        let f = &p.frame;
                        if f.kind != MediaKind::Audio || f.config || f.codec != Codec::Aac {
                            continue;
                        }
                        // GStreamer timestamps start near zero; the hub timeline is restored on the way out.
                        let b = *base.get_or_insert(f.dts);
                        let mut buf = gst::Buffer::from_slice(f.payload.clone());
                        if let Some(m) = buf.get_mut() {
                            m.set_pts(gst::ClockTime::from_mseconds((f.dts - b).max(0) as u64));
                        }
                        if src.push_buffer(buf).is_err() {
                            return "pipeline stopped".into();
                        }
                    }
                }
                Some((data, pts)) = rx.recv() => {
                    let b = base.unwrap_or(0);
                    let frame = Frame { kind: MediaKind::Audio, codec: Codec::Opus, dts: 0, cts: 0, keyframe: false, config: false, payload: data };
                    publisher.push_raw(frame, (b + pts) as u32, Instant::now());
                }
                _ = tick.tick() => {
                    let readers = self.hub.get(derived).map(|s| s.reader_count()).unwrap_or(0);
                    if readers > 0 {
                        last_reader = Instant::now();
                    } else if last_reader.elapsed() >= idle {
                        return "no readers".into();
                    }
                }
            }
        }
    }
}
