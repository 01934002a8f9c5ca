//! The mix's GStreamer graph: the output part from `pipelines/mix.pipeline` (compositor, audio mixer,
//! encoders, appsinks), a live background that keeps both mixers producing on their own clock when no input
//! has data, and one branch per input (appsrc of decoded buffers → converter from
//! `pipelines/mix_*_input.pipeline`, or a static image/colour source) linked to a request pad. Decoding
//! happens once per input for all mixes, in `decoders`.

use std::path::Path;

use bytes::Bytes;
use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;

use super::layout::{Output, Placed};
use super::MixError;
use crate::transcode::Template;

const MIX: &str = include_str!("../../pipelines/mix.pipeline");
const VIDEO_INPUT: &str = include_str!("../../pipelines/mix_video_input.pipeline");
const AUDIO_INPUT: &str = include_str!("../../pipelines/mix_audio_input.pipeline");
const VIDEO_DECODE: &str = include_str!("../../pipelines/mix_video_decode.pipeline");
const AUDIO_DECODE: &str = include_str!("../../pipelines/mix_audio_decode.pipeline");

/// Live test sources report a maximum latency of one buffer; a decoding input reports more as its minimum,
/// and an aggregator whose upstream min exceeds max refuses to time out and waits for every pad forever. A
/// queue after each live source raises the maximum.
const HEADROOM: &str = "queue max-size-buffers=0 max-size-bytes=0 max-size-time=1000000000";

fn gst_err(e: impl std::fmt::Display) -> MixError {
    MixError::Gst(e.to_string())
}

/// The templates, loaded (and overridable) like the transcoders'.
pub struct Templates {
    output: Template,
    video_in: Template,
    audio_in: Template,
    video_decode: Template,
    audio_decode: Template,
}

impl Templates {
    pub fn load(dir: &Path) -> Result<Self, MixError> {
        let t = |name, builtin| Template::load(dir, name, builtin).map_err(|e| MixError::Template(e.to_string()));
        Ok(Self {
            output: t("mix", MIX)?,
            video_in: t("mix_video_input", VIDEO_INPUT)?,
            audio_in: t("mix_audio_input", AUDIO_INPUT)?,
            video_decode: t("mix_video_decode", VIDEO_DECODE)?,
            audio_decode: t("mix_audio_decode", AUDIO_DECODE)?,
        })
    }

    pub(crate) fn video_decode(&self) -> &Template {
        &self.video_decode
    }

    pub(crate) fn audio_decode(&self) -> &Template {
        &self.audio_decode
    }

    /// Builds each template once (nothing runs) so a broken one stops start-up with its name.
    pub fn validate(&self, out: &Output) -> Result<(), MixError> {
        let p = MixPipeline::build(self, out, 80)?;
        let v = p.input_bin(&self.video_in, "check-v")?;
        let a = p.input_bin(&self.audio_in, "check-a")?;
        for b in [v, a] {
            if b.static_pad("src").is_none() {
                return Err(MixError::Template("an input template must leave exactly one src pad unlinked".into()));
            }
        }
        let _ = p.pipeline.set_state(gst::State::Null);
        for t in [&self.video_decode, &self.audio_decode] {
            let text = t.render(&[]).map_err(|e| MixError::Template(e.to_string()))?;
            let p = gst::parse::launch(&text).map_err(|e| MixError::Template(format!("{}: {e}", t.name)))?;
            let bin =
                p.downcast::<gst::Bin>().map_err(|_| MixError::Template(format!("{}: not a pipeline", t.name)))?;
            let src = bin.by_name("src").and_then(|e| e.downcast::<gst_app::AppSrc>().ok());
            let sink = bin.by_name("sink").and_then(|e| e.downcast::<gst_app::AppSink>().ok());
            if src.is_none() || sink.is_none() {
                return Err(MixError::Template(format!("{}: needs an appsrc \"src\" and an appsink \"sink\"", t.name)));
            }
        }
        Ok(())
    }
}

/// An input's branch: its bin, the appsrc livegate feeds (none for images and colours), and the mixer pad.
pub struct Branch {
    pub bin: gst::Bin,
    pub src: Option<gst_app::AppSrc>,
    pub pad: gst::Pad,
}

/// What leaves the encoders: payload, pts and dts (ms of running time), keyframe, and the decoder
/// configuration when the caps carry one.
pub struct Encoded {
    pub video: bool,
    pub data: Bytes,
    pub pts: i64,
    pub dts: i64,
    pub key: bool,
    pub codec_data: Option<Bytes>,
}

pub struct MixPipeline {
    pub pipeline: gst::Pipeline,
    vmix: gst::Element,
    amix: gst::Element,
    vsink: gst_app::AppSink,
    asink: gst_app::AppSink,
    fps: u32,
}

impl MixPipeline {
    pub fn build(t: &Templates, out: &Output, latency_ms: u64) -> Result<Self, MixError> {
        let vars = [
            ("width", out.width.to_string()),
            ("height", out.height.to_string()),
            ("fps", out.fps.to_string()),
            ("gop", out.gop_frames().to_string()),
            ("video_bitrate", out.video_bitrate.to_string()),
            ("audio_bitrate", out.audio_bitrate.to_string()),
            ("sample_rate", out.sample_rate.to_string()),
            ("channels", out.channels.to_string()),
            ("latency", (latency_ms * 1_000_000).to_string()),
        ];
        let text = t.output.render(&vars).map_err(|e| MixError::Template(e.to_string()))?;
        let bad = |d: &str| MixError::Template(format!("mix: {d}"));
        let el = gst::parse::launch(&text).map_err(|e| bad(&e.to_string()))?;
        let pipeline = el.downcast::<gst::Pipeline>().map_err(|_| bad("not a pipeline"))?;
        let by = |n: &str| pipeline.by_name(n).ok_or_else(|| bad(&format!("needs an element named {n:?}")));
        let sink =
            |n: &str| by(n)?.downcast::<gst_app::AppSink>().map_err(|_| bad(&format!("{n:?} must be an appsink")));
        let p = Self {
            vmix: by("vmix")?,
            amix: by("amix")?,
            vsink: sink("vsink")?,
            asink: sink("asink")?,
            pipeline,
            fps: out.fps,
        };
        p.add_background(out)?;
        Ok(p)
    }

    /// A live source under every input, so the mixers run at the output rate with no input at all.
    fn add_background(&self, out: &Output) -> Result<(), MixError> {
        let caps = format!("video/x-raw,width={},height={},framerate={}/1", out.width, out.height, out.fps);
        let video = match &out.background_image {
            Some(path) => {
                format!("{} ! videoconvert ! videoscale ! capsfilter caps=\"{caps}\" ! {HEADROOM}", image_source(path))
            }
            None => {
                let argb = super::layout::parse_color(&out.background_color).unwrap_or(0xff00_0000);
                format!("videotestsrc is-live=true pattern=solid-color foreground-color={argb} ! capsfilter caps=\"{caps}\" ! {HEADROOM}")
            }
        };
        let bin = gst::parse::bin_from_description(&video, true).map_err(gst_err)?;
        let pad = self.attach(&bin, &self.vmix)?;
        pad.set_property("zorder", 0u32);
        let audio = format!(
            "audiotestsrc is-live=true wave=silence samplesperbuffer={} ! capsfilter caps=\"audio/x-raw,rate={},channels={}\" ! {HEADROOM}",
            out.sample_rate / 50,
            out.sample_rate,
            out.channels
        );
        let bin = gst::parse::bin_from_description(&audio, true).map_err(gst_err)?;
        self.attach(&bin, &self.amix)?;
        Ok(())
    }

    fn attach(&self, bin: &gst::Bin, mixer: &gst::Element) -> Result<gst::Pad, MixError> {
        self.pipeline.add(bin).map_err(gst_err)?;
        let src = bin.static_pad("src").ok_or_else(|| gst_err("branch has no src pad"))?;
        let pad = mixer.request_pad_simple("sink_%u").ok_or_else(|| gst_err("mixer gave no sink pad"))?;
        if let Err(e) = src.link(&pad) {
            mixer.release_request_pad(&pad);
            let _ = self.pipeline.remove(bin);
            return Err(gst_err(format!("cannot link input: {e:?}")));
        }
        Ok(pad)
    }

    fn input_bin(&self, t: &Template, name: &str) -> Result<gst::Bin, MixError> {
        let text = t.render(&[]).map_err(|e| MixError::Template(e.to_string()))?;
        let bin = gst::parse::bin_from_description(&text, true)
            .map_err(|e| MixError::Template(format!("{}: {e}", t.name)))?;
        bin.set_property("name", name);
        if bin.by_name("src").and_then(|e| e.downcast::<gst_app::AppSrc>().ok()).is_none() {
            return Err(MixError::Template(format!("{}: needs an appsrc named \"src\"", t.name)));
        }
        Ok(bin)
    }

    /// Adds a branch for a video or audio input, fed through its appsrc with decoded buffers of `caps` from
    /// the input's shared decoder.
    pub fn add_input(&self, t: &Templates, video: bool, name: &str, caps: &gst::Caps) -> Result<Branch, MixError> {
        let bin = self.input_bin(if video { &t.video_in } else { &t.audio_in }, name)?;
        let src = bin.by_name("src").and_then(|e| e.downcast::<gst_app::AppSrc>().ok()).expect("checked");
        src.set_caps(Some(caps));
        let pad = self.attach(&bin, if video { &self.vmix } else { &self.amix })?;
        Ok(Branch { bin, src: Some(src), pad })
    }

    /// Adds a still image or a solid colour as an input.
    pub fn add_static(&self, name: &str, p: &Placed) -> Result<Branch, MixError> {
        let caps = format!("video/x-raw,framerate={}/1", self.fps);
        let text = match (&p.image, p.color) {
            (Some(path), _) => format!("{} ! videoconvert ! capsfilter caps=\"{caps}\" ! {HEADROOM}", image_source(path)),
            (None, Some(argb)) => format!(
                "videotestsrc is-live=true pattern=solid-color foreground-color={argb} ! capsfilter caps=\"{caps},width=16,height=16\" ! {HEADROOM}"
            ),
            (None, None) => return Err(gst_err("a static input needs an image or a colour")),
        };
        let bin = gst::parse::bin_from_description(&text, true).map_err(gst_err)?;
        bin.set_property("name", name);
        let pad = self.attach(&bin, &self.vmix)?;
        Ok(Branch { bin, src: None, pad })
    }

    /// Starts a branch added to the running pipeline.
    pub fn start(&self, b: &Branch) -> Result<(), MixError> {
        b.bin.sync_state_with_parent().map_err(gst_err)
    }

    /// Takes a branch out while the mix runs: releasing the pad first unblocks a streaming thread waiting in
    /// the mixer, so stopping the bin cannot deadlock.
    pub fn remove(&self, b: Branch) {
        let mixer = b.pad.parent_element();
        if let Some(src) = &b.src {
            let _ = src.end_of_stream();
        }
        if let Some(m) = mixer {
            m.release_request_pad(&b.pad);
        }
        let _ = b.bin.set_state(gst::State::Null);
        let _ = self.pipeline.remove(&b.bin);
    }

    /// Where and whether an input's picture is drawn; takes effect from the next output frame.
    pub fn place_video(b: &Branch, p: &Placed, visible: bool) {
        if let Some(r) = p.rect {
            b.pad.set_property("xpos", r.x);
            b.pad.set_property("ypos", r.y);
            b.pad.set_property("width", r.width);
            b.pad.set_property("height", r.height);
        }
        b.pad.set_property("zorder", p.layer);
        b.pad.set_property("alpha", if visible && p.rect.is_some() { 1.0f64 } else { 0.0 });
        if let Some(crop) = b.bin.by_name("crop") {
            for (k, v) in
                [("left", p.crop.left), ("right", p.crop.right), ("top", p.crop.top), ("bottom", p.crop.bottom)]
            {
                if crop.find_property(k).is_some() {
                    crop.set_property(k, v as i32);
                }
            }
        }
    }

    pub fn set_audio(b: &Branch, p: &Placed) {
        b.pad.set_property("volume", p.volume);
        b.pad.set_property("mute", !p.audio);
    }

    /// Running time of the mix in ms (what input timestamps are mapped onto).
    pub fn now_ms(&self) -> i64 {
        self.pipeline.current_running_time().map(|t| t.mseconds() as i64).unwrap_or(0)
    }

    /// Sends encoded output to `tx` from the appsinks' streaming threads.
    pub fn drain_into(&self, tx: tokio::sync::mpsc::UnboundedSender<Encoded>) {
        for (sink, video) in [(&self.vsink, true), (&self.asink, false)] {
            let tx = tx.clone();
            sink.set_callbacks(
                gst_app::AppSinkCallbacks::builder()
                    .new_sample(move |s| {
                        let sample = s.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                        if let Some((data, pts, dts, key, codec_data)) = crate::transcode::read_sample(&sample) {
                            let e = Encoded { video, data, pts, dts, key, codec_data };
                            if tx.send(e).is_err() {
                                return Err(gst::FlowError::Flushing);
                            }
                        }
                        Ok(gst::FlowSuccess::Ok)
                    })
                    .build(),
            );
        }
    }
}

/// A still image as a live video source (decoded once, repeated at the output rate).
fn image_source(path: &str) -> String {
    let dec = if path.to_ascii_lowercase().ends_with(".png") { "pngdec" } else { "jpegdec" };
    format!("filesrc location=\"{path}\" ! {dec} ! imagefreeze is-live=true")
}

pub fn h264_caps(config: &[u8]) -> gst::Caps {
    gst::Caps::builder("video/x-h264")
        .field("stream-format", "avc")
        .field("alignment", "au")
        .field("codec_data", gst::Buffer::from_slice(config.to_vec()))
        .build()
}

pub fn aac_caps(config: &[u8]) -> gst::Caps {
    gst::Caps::builder("audio/mpeg")
        .field("mpegversion", 4i32)
        .field("stream-format", "raw")
        .field("codec_data", gst::Buffer::from_slice(config.to_vec()))
        .build()
}
