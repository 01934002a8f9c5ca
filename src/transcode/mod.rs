//! Renditions (ARCHITECTURE invariant 5): derived hub streams made by GStreamer pipelines, once per source
//! stream, started by their first reader and stopped after their last one leaves.
//!
//! Now: AAC → Opus for WebRTC viewers, as the derived stream `{app}/{name}@opus`. Pipelines come from
//! templates (`pipelines/*.pipeline`, gst-launch syntax with `{placeholders}`), validated at start-up, so an
//! operator can swap elements without recompiling.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;

pub use crate::config::TranscodeConfig;
use crate::hub::{
    Audience, CachePolicy, Hub, Packet, Protocol, PublisherInfo, Purpose, SourceError, SourceFactory, SourceHandle,
    SourceInfo, SourceKind, StreamKey,
};
use crate::media::avc::AvcDecoderConfig;
use crate::media::{Codec, Frame, MediaKind};

const AAC_TO_OPUS: &str = include_str!("../../pipelines/aac_to_opus.pipeline");
const MP3_TO_OPUS: &str = include_str!("../../pipelines/mp3_to_opus.pipeline");
const MP3_TO_AAC: &str = include_str!("../../pipelines/mp3_to_aac.pipeline");
const AAC_TO_MP3: &str = include_str!("../../pipelines/aac_to_mp3.pipeline");
const H264_TO_BASELINE: &str = include_str!("../../pipelines/h264_to_baseline.pipeline");
const H264_TO_VP8: &str = include_str!("../../pipelines/h264_to_vp8.pipeline");
const H265_TO_BASELINE: &str = include_str!("../../pipelines/h265_to_baseline.pipeline");
const H265_TO_VP8: &str = include_str!("../../pipelines/h265_to_vp8.pipeline");

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
pub(crate) struct Template {
    pub name: String,
    text: String,
}

impl Template {
    pub(crate) fn load(dir: &Path, name: &str, builtin: &str) -> Result<Self, TranscodeError> {
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
    pub(crate) fn build(
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

/// What comes out of a pipeline's appsink: payload, pts and dts (ms from the pipeline's start), keyframe,
/// and the AVC decoder configuration when the output caps carry one.
pub(crate) type Out = (Bytes, i64, i64, bool, Option<Bytes>);

/// Starts and shares renditions.
pub struct Transcoders {
    hub: Hub,
    cfg: TranscodeConfig,
    aac_to_opus: Template,
    mp3_to_opus: Template,
    mp3_to_aac: Template,
    aac_to_mp3: Template,
    h264_to_baseline: Template,
    h264_to_vp8: Template,
    h265_to_baseline: Template,
    h265_to_vp8: Template,
}

/// Which rendition of a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Opus,
    Baseline,
    Vp8,
    /// MP3 audio as AAC, for recordings in formats that take AAC only (MP4, M4A, ADTS).
    Aac,
    /// AAC audio as MP3, for MP3 recordings of AAC pushes.
    Mp3,
}

impl Kind {
    const ALL: [Kind; 5] = [Kind::Opus, Kind::Baseline, Kind::Vp8, Kind::Aac, Kind::Mp3];

    /// The derived stream's name is the source's with `@` and this.
    fn suffix(self) -> &'static str {
        match self {
            Kind::Opus => "opus",
            Kind::Baseline => "cb",
            Kind::Vp8 => "vp8",
            Kind::Aac => "aac",
            Kind::Mp3 => "mp3",
        }
    }

    /// Renditions for recordings transcode the push from its start in the cache, so a recording made from them
    /// begins where one of the source would; the ones for players start at the live edge.
    fn reads_from_push_start(self) -> bool {
        matches!(self, Kind::Aac | Kind::Mp3)
    }
}

/// The rendition name recordings read for audio in `codec`, when a stream's audio is not that (`None` when the
/// stream's own audio will do, or is not one livegate can transcode).
pub fn audio_rendition(source_audio: Codec, want: crate::config::AudioNeed) -> Option<&'static str> {
    use crate::config::AudioNeed;
    match want {
        AudioNeed::Aac if source_audio.is_mp3() => Some(Kind::Aac.suffix()),
        AudioNeed::Mp3 if source_audio == Codec::Aac => Some(Kind::Mp3.suffix()),
        _ => None,
    }
}

/// What a rendition of `kind` transcodes from.
#[derive(Debug, Clone)]
enum Input {
    /// AAC audio, H.264 or H.265 video, with its decoder configuration.
    Config { codec: Codec, record: Bytes },
    /// MP3 audio (its frames carry their own headers); `stereo` from the FLV sound byte.
    Mp3 { stereo: bool },
}

impl Input {
    /// Whether `f` is what the pipeline is fed.
    fn accepts(&self, f: &Frame) -> bool {
        match self {
            Input::Config { codec, .. } => f.codec == *codec,
            Input::Mp3 { .. } => f.codec.is_mp3(),
        }
    }

    /// The channels of an audio rendition made from this input: mono stays mono (it costs the Opus encoder a
    /// quarter less than the same sound as stereo), anything else is stereo (more channels mixed down: WebRTC
    /// plays at most two). An AAC configuration that defines its channels elsewhere (0) counts as stereo.
    fn audio_channels(&self) -> u8 {
        let mono = match self {
            Input::Config { codec: Codec::Aac, record } => {
                crate::media::aac::AudioSpecificConfig::parse(record).is_ok_and(|c| c.channels == 1)
            }
            Input::Config { .. } => false,
            Input::Mp3 { stereo } => !stereo,
        };
        if mono {
            1
        } else {
            2
        }
    }

    /// The appsrc caps for this input with decoder configuration `record`.
    fn caps(&self, record: &[u8]) -> gst::Caps {
        let cd = gst::Buffer::from_slice(record.to_vec());
        match self {
            Input::Config { codec: Codec::Aac, .. } => gst::Caps::builder("audio/mpeg")
                .field("mpegversion", 4i32)
                .field("stream-format", "raw")
                .field("codec_data", cd)
                .build(),
            Input::Config { codec: Codec::H265, .. } => gst::Caps::builder("video/x-h265")
                .field("stream-format", "hvc1")
                .field("alignment", "au")
                .field("codec_data", cd)
                .build(),
            Input::Config { .. } => gst::Caps::builder("video/x-h264")
                .field("stream-format", "avc")
                .field("alignment", "au")
                .field("codec_data", cd)
                .build(),
            Input::Mp3 { .. } => gst::Caps::builder("audio/mpeg").field("mpegversion", 1i32).build(),
        }
    }
}

/// What a rendition of `kind` starts from, if `source` has a codec it transcodes: AAC or MP3 for Opus, H.264
/// or H.265 for the H.264 baseline and VP8 renditions.
fn input_config(source: &crate::hub::Stream, kind: Kind) -> Option<Input> {
    let headers = source.headers();
    let (track, codecs): (_, &[Codec]) = match kind {
        Kind::Opus | Kind::Mp3 => (MediaKind::Audio, &[Codec::Aac]),
        Kind::Aac => (MediaKind::Audio, &[]),
        Kind::Baseline | Kind::Vp8 => (MediaKind::Video, &[Codec::H264, Codec::H265]),
    };
    let config = headers
        .get(track)
        .filter(|p| codecs.contains(&p.frame.codec))
        .map(|p| Input::Config { codec: p.frame.codec, record: p.frame.payload.clone() });
    let mp3 = match source.audio_codec() {
        Some(c @ Codec::OtherAudio { flv_sound_byte }) if c.is_mp3() && matches!(kind, Kind::Opus | Kind::Aac) => {
            Some(Input::Mp3 { stereo: flv_sound_byte & 1 == 1 })
        }
        _ => None,
    };
    config.or(mp3)
}

/// The placeholders of the `*_to_opus` templates.
fn opus_vars(cfg: &TranscodeConfig, channels: u8) -> [(&'static str, String); 3] {
    [
        ("bitrate", cfg.opus_bitrate.to_string()),
        ("frame_ms", cfg.opus_frame_ms.to_string()),
        ("channels", channels.to_string()),
    ]
}

/// Renditions as the hub's on-demand sources: reading `live/a@opus` starts `live/a`'s AAC → Opus transcoder,
/// and the hub stops it `transcode.idle_stop_secs` after its last reader left.
struct Renditions(Arc<Transcoders>);

impl SourceFactory for Renditions {
    fn start(&self, key: &StreamKey) -> Option<Result<SourceHandle, SourceError>> {
        let (base, suffix) = key.name.rsplit_once('@')?;
        let kind = Kind::ALL.into_iter().find(|k| k.suffix() == suffix)?;
        let source = StreamKey::new(&key.app, base);
        let stop = Arc::new(tokio::sync::Notify::new());
        match self.0.start(&source, key, kind, stop.clone()) {
            Ok(None) => None,
            Ok(Some(())) => Some(Ok(SourceHandle::new(
                SourceInfo { kind: SourceKind::Rendition, from: source.to_string() },
                Duration::from_secs(10),
                Duration::from_secs_f64(self.0.cfg.idle_stop_secs),
                move || stop.notify_one(),
            ))),
            Err(e) => {
                Some(Err(SourceError { kind: SourceKind::Rendition, stream: key.to_string(), detail: e.to_string() }))
            }
        }
    }
}

impl Transcoders {
    /// Initializes GStreamer and validates every template by building it once.
    pub fn new(hub: Hub, cfg: TranscodeConfig) -> Result<Arc<Self>, TranscodeError> {
        gst::init().map_err(|e| TranscodeError::Gst(e.to_string()))?;
        let aac_to_opus = Template::load(Path::new(&cfg.pipelines_dir), "aac_to_opus", AAC_TO_OPUS)?;
        for channels in [1, 2] {
            let (p, _, _) = aac_to_opus.build(&opus_vars(&cfg, channels))?;
            let _ = p.set_state(gst::State::Null);
        }
        let mp3_to_opus = Template::load(Path::new(&cfg.pipelines_dir), "mp3_to_opus", MP3_TO_OPUS)?;
        let (p, _, _) = mp3_to_opus.build(&opus_vars(&cfg, 2))?;
        let _ = p.set_state(gst::State::Null);
        let mp3_to_aac = Template::load(Path::new(&cfg.pipelines_dir), "mp3_to_aac", MP3_TO_AAC)?;
        let (p, _, _) = mp3_to_aac.build(&[("bitrate", (cfg.audio_kbps * 1000).to_string())])?;
        let _ = p.set_state(gst::State::Null);
        let aac_to_mp3 = Template::load(Path::new(&cfg.pipelines_dir), "aac_to_mp3", AAC_TO_MP3)?;
        let (p, _, _) = aac_to_mp3.build(&[("kbps", cfg.audio_kbps.to_string())])?;
        let _ = p.set_state(gst::State::Null);
        let h264_to_baseline = Template::load(Path::new(&cfg.pipelines_dir), "h264_to_baseline", H264_TO_BASELINE)?;
        let (p, _, _) = h264_to_baseline.build(&[("bitrate", cfg.video_kbps.to_string()), ("gop", "60".into())])?;
        let _ = p.set_state(gst::State::Null);
        let h264_to_vp8 = Template::load(Path::new(&cfg.pipelines_dir), "h264_to_vp8", H264_TO_VP8)?;
        let (p, _, _) = h264_to_vp8.build(&[("bitrate", (cfg.video_kbps * 1000).to_string()), ("gop", "60".into())])?;
        let _ = p.set_state(gst::State::Null);
        let h265_to_baseline = Template::load(Path::new(&cfg.pipelines_dir), "h265_to_baseline", H265_TO_BASELINE)?;
        let (p, _, _) = h265_to_baseline.build(&[("bitrate", cfg.video_kbps.to_string()), ("gop", "60".into())])?;
        let _ = p.set_state(gst::State::Null);
        let h265_to_vp8 = Template::load(Path::new(&cfg.pipelines_dir), "h265_to_vp8", H265_TO_VP8)?;
        let (p, _, _) = h265_to_vp8.build(&[("bitrate", (cfg.video_kbps * 1000).to_string()), ("gop", "60".into())])?;
        let _ = p.set_state(gst::State::Null);
        Ok(Arc::new(Self {
            hub,
            cfg,
            aac_to_opus,
            mp3_to_opus,
            mp3_to_aac,
            aac_to_mp3,
            h264_to_baseline,
            h264_to_vp8,
            h265_to_baseline,
            h265_to_vp8,
        }))
    }

    /// The stream carrying `key`'s audio as Opus: its `@opus` rendition, made on demand by its first reader,
    /// when the stream has AAC or someone publishes that name (a WHIP session publishes its browser's own
    /// Opus). `None` when there is no Opus to be had.
    pub fn opus(&self, key: &StreamKey) -> Result<Option<StreamKey>, TranscodeError> {
        self.rendition(key, Kind::Opus)
    }

    /// The constrained-baseline H.264 rendition of `key` (for B-frame sources). `None` without H.264 video.
    pub fn baseline(&self, key: &StreamKey) -> Result<Option<StreamKey>, TranscodeError> {
        self.rendition(key, Kind::Baseline)
    }

    /// The VP8 rendition of `key` (for browsers that offer no H.264). `None` without H.264 video.
    pub fn vp8(&self, key: &StreamKey) -> Result<Option<StreamKey>, TranscodeError> {
        self.rendition(key, Kind::Vp8)
    }

    /// The name of `key`'s rendition of `kind`, if it exists or can be made; reading it starts it.
    fn rendition(&self, key: &StreamKey, kind: Kind) -> Result<Option<StreamKey>, TranscodeError> {
        let derived = StreamKey::new(&key.app, &format!("{}@{}", key.name, kind.suffix()));
        if self.hub.get(&derived).is_some_and(|s| !s.is_closed()) {
            return Ok(Some(derived));
        }
        let source = self
            .hub
            .get(key)
            .filter(|s| !s.is_closed())
            .ok_or_else(|| TranscodeError::NotFound(format!("stream {key} is not being published")))?;
        Ok(input_config(&source, kind).is_some().then_some(derived))
    }

    /// Starts the transcoder publishing `derived`, the `kind` rendition of `key`; it runs until `stop`.
    fn start(
        self: &Arc<Self>,
        key: &StreamKey,
        derived: &StreamKey,
        kind: Kind,
        stop: Arc<tokio::sync::Notify>,
    ) -> Result<Option<()>, TranscodeError> {
        let Some(source) = self.hub.get(key).filter(|s| !s.is_closed()) else { return Ok(None) };
        let Some(input) = input_config(&source, kind) else { return Ok(None) };
        let hevc = matches!(input, Input::Config { codec: Codec::H265, .. });
        let (pipeline, src, sink) = match kind {
            Kind::Opus if matches!(input, Input::Mp3 { .. }) => {
                self.mp3_to_opus.build(&opus_vars(&self.cfg, input.audio_channels()))?
            }
            Kind::Opus => self.aac_to_opus.build(&opus_vars(&self.cfg, input.audio_channels()))?,
            Kind::Aac => self.mp3_to_aac.build(&[("bitrate", (self.cfg.audio_kbps * 1000).to_string())])?,
            Kind::Mp3 => self.aac_to_mp3.build(&[("kbps", self.cfg.audio_kbps.to_string())])?,
            Kind::Baseline => {
                let t = if hevc { &self.h265_to_baseline } else { &self.h264_to_baseline };
                t.build(&[("bitrate", self.cfg.video_kbps.to_string()), ("gop", "60".into())])?
            }
            Kind::Vp8 => {
                let t = if hevc { &self.h265_to_vp8 } else { &self.h264_to_vp8 };
                t.build(&[("bitrate", (self.cfg.video_kbps * 1000).to_string()), ("gop", "60".into())])?
            }
        };
        let initial = match &input {
            Input::Config { record, .. } => input.caps(record),
            Input::Mp3 { .. } => input.caps(&[]),
        };
        src.set_caps(Some(&initial));
        let guard = self.hub.register_client(Protocol::Transcode, None);
        let retention = self.hub.options().retention;
        let policy = CachePolicy {
            min_cache: if kind.reads_from_push_start() { retention } else { Duration::ZERO },
            max_cache: retention,
            max_skips_per_minute: u32::MAX,
            low_latency: true,
        };
        let mut reader = self
            .hub
            .subscribe_as(
                key,
                Protocol::Transcode,
                policy,
                guard.handle.clone(),
                Audience::Internal(Purpose::Rendition { output: derived.to_string() }),
            )
            .map_err(|e| TranscodeError::NotFound(e.to_string()))?;
        if kind.reads_from_push_start() {
            reader.start_from_session(source.current_session());
        }
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
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Out>();
        sink_to_channel(&sink, tx);
        pipeline.set_state(gst::State::Playing).map_err(|e| TranscodeError::Gst(e.to_string()))?;
        tracing::info!(stream = %key, rendition = %derived, "transcoder started");
        let this = self.clone();
        let key = key.clone();
        let d = derived.clone();
        tokio::spawn(async move {
            let _client = guard;
            let reason = this.run(kind, &input, reader, publisher, &src, &sink, rx, &d, &stop).await;
            let _ = src.end_of_stream();
            let _ = pipeline.set_state(gst::State::Null);
            tracing::info!(stream = %key, rendition = %d, %reason, "transcoder stopped");
        });
        Ok(Some(()))
    }

    /// The hub's source factory for rendition names (`{name}@opus`, `@cb`, `@vp8`).
    pub fn source_factory(self: &Arc<Self>) -> Arc<dyn SourceFactory> {
        Arc::new(Renditions(self.clone()))
    }

    #[allow(clippy::too_many_arguments)]
    async fn run(
        &self,
        kind: Kind,
        input: &Input,
        mut reader: crate::hub::Reader,
        mut publisher: crate::hub::Publisher,
        src: &gst_app::AppSrc,
        sink: &gst_app::AppSink,
        mut rx: tokio::sync::mpsc::UnboundedReceiver<Out>,
        derived: &StreamKey,
        stop: &tokio::sync::Notify,
    ) -> String {
        let mut batch: Vec<Arc<Packet>> = Vec::new();
        let mut base: Option<i64> = None;
        let mut out_config: Option<Bytes> = None;
        let derived_stream = publisher.stream().clone();
        let source_stream = reader.stream().clone();
        let mut last_forced: Option<Instant> = None;
        // User-data SEI (a pusher's messages, injected ones) rides from the H.264 source into the H.264
        // rendition, on the output picture covering the input's time; VP8 and audio have nowhere to put it.
        let mut sei = crate::media::sei::Carry::default();
        let nal_len = |record: &[u8]| AvcDecoderConfig::parse(record).map_or(4, |c| usize::from(c.nal_length_size));
        let mut in_len = match input {
            Input::Config { codec: Codec::H264, record } if kind == Kind::Baseline => Some(nal_len(record)),
            _ => None,
        };
        let mut out_len = 4;
        let want_kind = match kind {
            Kind::Opus | Kind::Aac | Kind::Mp3 => MediaKind::Audio,
            Kind::Baseline | Kind::Vp8 => MediaKind::Video,
        };
        loop {
            tokio::select! {
                r = reader.next_batch(&mut batch) => {
                    if let Err(reason) = r {
                        return format!("source: {reason}");
                    }
                    for p in batch.drain(..) {
                        let f = &p.frame;
                        if f.kind != want_kind || !input.accepts(f) {
                            continue;
                        }
                        if f.config {
                            // A new decoder configuration (the publisher changed resolution): new caps.
                            src.set_caps(Some(&input.caps(&f.payload)));
                            if kind == Kind::Opus {
                                let now = Input::Config { codec: f.codec, record: f.payload.clone() };
                                follow_channels(src, now.audio_channels());
                            }
                            in_len = in_len.map(|_| nal_len(&f.payload));
                            continue;
                        }
                        // GStreamer timestamps start near zero; the hub timeline is restored on the way out.
                        let b = *base.get_or_insert(f.dts);
                        if let Some(len) = in_len {
                            source_stream.count_malformed_sei(sei.input_au(f.pts() - b, &f.payload, len));
                        }
                        let mut buf = gst::Buffer::from_slice(f.payload.clone());
                        if let Some(m) = buf.get_mut() {
                            m.set_pts(gst::ClockTime::from_mseconds((f.pts() - b).max(0) as u64));
                            m.set_dts(gst::ClockTime::from_mseconds((f.dts - b).max(0) as u64));
                            if f.kind == MediaKind::Video && !f.keyframe {
                                m.set_flags(gst::BufferFlags::DELTA_UNIT);
                            }
                        }
                        if src.push_buffer(buf).is_err() {
                            return "pipeline stopped".into();
                        }
                    }
                }
                Some((data, pts, dts, key, codec_data)) = rx.recv() => {
                    let b = base.unwrap_or(0);
                    match kind {
                        Kind::Opus => {
                            let frame = Frame { kind: MediaKind::Audio, codec: Codec::Opus, dts: 0, cts: 0, keyframe: false, config: false, payload: data };
                            publisher.push_raw(frame, (b + pts) as u32, Instant::now());
                        }
                        Kind::Aac => {
                            if let Some(cd) = codec_data.filter(|cd| out_config.as_ref() != Some(cd)) {
                                let cfg = Frame::config(MediaKind::Audio, Codec::Aac, cd.clone());
                                publisher.push_raw(cfg, (b + pts) as u32, Instant::now());
                                out_config = Some(cd);
                            }
                            let frame = Frame { kind: MediaKind::Audio, codec: Codec::Aac, dts: 0, cts: 0, keyframe: false, config: false, payload: data };
                            publisher.push_raw(frame, (b + pts) as u32, Instant::now());
                        }
                        Kind::Mp3 => {
                            // lamemp3enc here makes 44.1 kHz stereo: FLV's sound byte for that is 0x2F.
                            let codec = Codec::OtherAudio { flv_sound_byte: 0x2F };
                            let frame = Frame { kind: MediaKind::Audio, codec, dts: 0, cts: 0, keyframe: false, config: false, payload: data };
                            publisher.push_raw(frame, (b + pts) as u32, Instant::now());
                        }
                        Kind::Baseline => {
                            if let Some(cd) = codec_data.filter(|cd| out_config.as_ref() != Some(cd)) {
                                let cfg = Frame::config(MediaKind::Video, Codec::H264, cd.clone());
                                publisher.push_raw(cfg, (b + dts) as u32, Instant::now());
                                out_len = nal_len(&cd);
                                out_config = Some(cd);
                            }
                            let data = if sei.is_empty() { data } else { sei.attach(pts, data, out_len) };
                            let frame = Frame { kind: MediaKind::Video, codec: Codec::H264, dts: 0, cts: (pts - dts) as i32, keyframe: key, config: false, payload: data };
                            publisher.push_raw(frame, (b + dts) as u32, Instant::now());
                        }
                        Kind::Vp8 => {
                            let frame = Frame { kind: MediaKind::Video, codec: Codec::Vp8, dts: 0, cts: 0, keyframe: key, config: false, payload: data };
                            publisher.push_raw(frame, (b + pts) as u32, Instant::now());
                        }
                    }
                }
                _ = derived_stream.keyframe_requested(), if want_kind == MediaKind::Video => {
                    // Many viewers may ask at once (a network hiccup): one keyframe per 500 ms is plenty.
                    if last_forced.is_none_or(|t| t.elapsed() >= Duration::from_millis(500)) {
                        tracing::debug!(rendition = %derived, "keyframe requested by a reader");
                        force_keyframe(sink);
                        last_forced = Some(Instant::now());
                    }
                }
                _ = stop.notified() => return "no readers".into(),
            }
        }
    }
}

/// Sets the channels the Opus encoder gets (the template's capsfilter named "channels", if it has one) when
/// they change: a publisher whose audio turns from mono to stereo mid-session is not kept mono.
fn follow_channels(src: &gst_app::AppSrc, channels: u8) {
    let Some(filter) = src.parent().and_then(|p| p.downcast::<gst::Bin>().ok()).and_then(|b| b.by_name("channels"))
    else {
        return;
    };
    let caps = filter.property::<Option<gst::Caps>>("caps");
    let Some(mut caps) = caps.filter(|c| c.structure(0).is_some()) else { return };
    let channels = i32::from(channels);
    if caps.structure(0).and_then(|s| s.get::<i32>("channels").ok()) == Some(channels) {
        return;
    }
    if let Some(s) = caps.make_mut().structure_mut(0) {
        s.set("channels", channels);
    }
    tracing::info!(channels, "the source's audio changed its channels: so does its Opus");
    filter.set_property("caps", &caps);
}

/// Asks the encoder upstream of `sink` for a keyframe (GstForceKeyUnit, which x264enc and every
/// GstVideoEncoder honour), so a WebRTC viewer that lost a picture gets a fresh one instead of waiting a GOP.
pub(crate) fn force_keyframe(sink: &gst_app::AppSink) {
    let s = gst::Structure::builder("GstForceKeyUnit").field("all-headers", true).build();
    if !sink.send_event(gst::event::CustomUpstream::new(s)) {
        tracing::debug!("no element took the keyframe request");
    }
}

/// Sends every sample of `sink` (payload, pts, dts, keyframe, codec_data of the caps) to `tx`.
pub(crate) fn sink_to_channel(sink: &gst_app::AppSink, tx: tokio::sync::mpsc::UnboundedSender<Out>) {
    sink.set_callbacks(
        gst_app::AppSinkCallbacks::builder()
            .new_sample(move |s| {
                let sample = s.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                if let Some(out) = read_sample(&sample) {
                    let _ = tx.send(out);
                }
                Ok(gst::FlowSuccess::Ok)
            })
            .build(),
    );
}

/// A sample's payload, pts and dts (ms of running time), keyframe flag and the caps' codec_data.
///
/// Running time, not raw buffer time: x264enc (GstVideoEncoder's min-pts) shifts its output buffers and
/// segment by 1000 hours so that a DTS can never be negative; raw, that put a WHIP VP8 stream's H.264 1000 h
/// away from its AAC, and a mix's video away from its audio. Segments here are live, forward, rate 1.0, so
/// running time = buffer time - segment start + segment base (also for a DTS before the segment start).
pub(crate) fn read_sample(sample: &gst::Sample) -> Option<Out> {
    let codec_data = sample
        .caps()
        .and_then(|c| c.structure(0))
        .and_then(|st| st.get::<gst::Buffer>("codec_data").ok())
        .and_then(|b| b.map_readable().ok().map(|m| Bytes::copy_from_slice(m.as_slice())));
    let shift = sample.segment().and_then(|seg| seg.downcast_ref::<gst::ClockTime>()).map_or(0, |seg| {
        let ms = |t: Option<gst::ClockTime>| t.map_or(0, |t| t.mseconds() as i64);
        ms(seg.start()) - ms(seg.base())
    });
    let buf = sample.buffer()?;
    let pts = buf.pts().map(|t| t.mseconds() as i64 - shift).unwrap_or(0);
    let dts = buf.dts().map(|t| t.mseconds() as i64 - shift).unwrap_or(pts);
    let key = !buf.flags().contains(gst::BufferFlags::DELTA_UNIT);
    let map = buf.map_readable().ok()?;
    Some((Bytes::copy_from_slice(map.as_slice()), pts, dts, key, codec_data))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::aac::AudioSpecificConfig;

    #[test]
    fn a_mono_source_makes_mono_opus_and_anything_else_stereo() {
        let aac = |channels: u8| Input::Config {
            codec: Codec::Aac,
            record: Bytes::from(AudioSpecificConfig::new(2, 44_100, channels).to_bytes()),
        };
        assert_eq!(aac(1).audio_channels(), 1);
        assert_eq!(aac(2).audio_channels(), 2);
        // 5.1 is mixed down; 0 (channels defined in a program config element) is taken as stereo.
        assert_eq!(aac(6).audio_channels(), 2);
        assert_eq!(aac(0).audio_channels(), 2);
        assert_eq!(Input::Config { codec: Codec::Aac, record: Bytes::from_static(&[0xFF]) }.audio_channels(), 2);
        assert_eq!(Input::Mp3 { stereo: false }.audio_channels(), 1);
        assert_eq!(Input::Mp3 { stereo: true }.audio_channels(), 2);
    }
}
