//! Mix requests and layout maths: what a client asked for, checked field by field, and where each input lands
//! on the canvas. Pure: no GStreamer, no I/O beyond checking that an image file exists.

use serde::{Deserialize, Serialize};

use crate::hub::StreamKey;

/// A request field that is wrong, named the way the client wrote it (`inputs[2].width`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {detail}")]
pub struct FieldError {
    pub field: String,
    pub detail: String,
}

use crate::config::ConfigError;
pub use crate::config::MixConfig;

/// The part of `[mix]` only mixing can judge: its output defaults pass the checks a request's output does.
pub fn check_config(cfg: &MixConfig) -> Result<(), ConfigError> {
    let probe = OutputRequest { stream: "live/check".into(), ..Default::default() };
    check_output(&probe, cfg)
        .map(|_| ())
        .map_err(|e| ConfigError::invalid(&format!("mix.{}", e.field.trim_start_matches("output.")), e.detail))
}

fn bad<T>(field: impl Into<String>, detail: impl Into<String>) -> Result<T, FieldError> {
    Err(FieldError { field: field.into(), detail: detail.into() })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum InputKind {
    #[default]
    Av,
    Video,
    Audio,
    Image,
    Color,
}

impl InputKind {
    pub fn reads_stream(self) -> bool {
        matches!(self, InputKind::Av | InputKind::Video | InputKind::Audio)
    }
    pub fn has_video(self) -> bool {
        !matches!(self, InputKind::Audio)
    }
}

/// Pixels cut from each edge of an input before it is scaled into its slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Crop {
    #[serde(default)]
    pub left: u32,
    #[serde(default)]
    pub top: u32,
    #[serde(default)]
    pub right: u32,
    #[serde(default)]
    pub bottom: u32,
}

fn yes() -> bool {
    true
}
fn one() -> f64 {
    1.0
}

/// One input as the client describes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputSpec {
    /// `APP/NAME` of a hub stream (kinds av, video, audio).
    #[serde(default)]
    pub stream: Option<String>,
    #[serde(default)]
    pub kind: InputKind,
    /// Z-order: 1 is the bottom. Templates choose one when it is left out.
    #[serde(default)]
    pub layer: Option<u32>,
    /// Slot rectangle, in pixels or (when all four are ≤ 1) fractions of the canvas. Templates place inputs
    /// themselves and ignore these.
    #[serde(default)]
    pub x: Option<f64>,
    #[serde(default)]
    pub y: Option<f64>,
    #[serde(default)]
    pub width: Option<f64>,
    #[serde(default)]
    pub height: Option<f64>,
    #[serde(default)]
    pub crop: Option<Crop>,
    #[serde(default = "yes")]
    pub audio: bool,
    #[serde(default = "one")]
    pub volume: f64,
    /// A PNG or JPEG file (kind image).
    #[serde(default)]
    pub image: Option<String>,
    /// `#RRGGBB` (kind color).
    #[serde(default)]
    pub color: Option<String>,
}

/// The mix output as the client describes it; left-out fields take `[mix]` defaults.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputRequest {
    pub stream: String,
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub fps: Option<u32>,
    /// kbit/s.
    pub video_bitrate: Option<u32>,
    pub gop_secs: Option<f64>,
    /// bit/s.
    pub audio_bitrate: Option<u32>,
    pub sample_rate: Option<u32>,
    pub channels: Option<u32>,
    pub background_color: Option<String>,
    pub background_image: Option<String>,
}

/// `POST /api/v1/mixes`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateRequest {
    pub id: String,
    #[serde(default)]
    pub template: Option<String>,
    /// Where the inset goes in the `bigsmall`/`pip` template.
    #[serde(default)]
    pub pip_position: Option<String>,
    pub inputs: Vec<InputSpec>,
    pub output: OutputRequest,
}

/// `PATCH /api/v1/mixes/{id}`: a new input list and/or template; the output is fixed for the mix's life.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatchRequest {
    #[serde(default)]
    pub template: Option<String>,
    #[serde(default)]
    pub pip_position: Option<String>,
    #[serde(default)]
    pub inputs: Option<Vec<InputSpec>>,
}

/// A checked output.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Output {
    #[serde(serialize_with = "crate::hub::key_path")]
    pub stream: StreamKey,
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    pub video_bitrate: u32,
    pub gop_secs: f64,
    pub audio_bitrate: u32,
    pub sample_rate: u32,
    pub channels: u32,
    pub background_color: String,
    pub background_image: Option<String>,
}

impl Output {
    /// Frames between keyframes.
    pub fn gop_frames(&self) -> u32 {
        ((self.gop_secs * self.fps as f64).round() as u32).max(1)
    }
}

/// Where an input is drawn, in canvas pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Rect {
    pub x: i32,
    pub y: i32,
    pub width: i32,
    pub height: i32,
}

/// A checked input with its place on the canvas (`rect` is `None` for an audio-only input outside a
/// template).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Placed {
    pub stream: Option<StreamKey>,
    pub kind: InputKind,
    pub layer: u32,
    pub rect: Option<Rect>,
    pub crop: Crop,
    pub audio: bool,
    pub volume: f64,
    pub image: Option<String>,
    /// 0xAARRGGBB, for kind color.
    pub color: Option<u32>,
}

/// A checked layout: the template it came from and every input placed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Layout {
    pub template: Template,
    pub pip_position: Corner,
    pub inputs: Vec<Placed>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Template {
    #[serde(rename = "1v1")]
    OneVOne,
    #[serde(rename = "1v3")]
    OneVThree,
    Grid,
    Float,
    Bigsmall,
    Custom,
}

impl Template {
    pub fn parse(s: &str) -> Option<Template> {
        Some(match s {
            "1v1" => Template::OneVOne,
            "1v3" => Template::OneVThree,
            "grid" => Template::Grid,
            "float" => Template::Float,
            "bigsmall" | "pip" => Template::Bigsmall,
            "custom" => Template::Custom,
            _ => return None,
        })
    }

    /// Most inputs the template has slots for.
    pub fn capacity(self, max_inputs: usize) -> usize {
        match self {
            Template::OneVOne | Template::Bigsmall => 2,
            Template::OneVThree => 4,
            Template::Float => 5,
            Template::Grid | Template::Custom => max_inputs,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Corner {
    TopLeft,
    TopRight,
    BottomLeft,
    BottomRight,
}

impl Corner {
    fn parse(s: &str) -> Option<Corner> {
        Some(match s {
            "top-left" => Corner::TopLeft,
            "top-right" => Corner::TopRight,
            "bottom-left" => Corner::BottomLeft,
            "bottom-right" => Corner::BottomRight,
            _ => return None,
        })
    }
}

/// `#RRGGBB` → opaque 0xAARRGGBB.
pub fn parse_color(s: &str) -> Option<u32> {
    let hex = s.strip_prefix('#')?;
    if hex.len() != 6 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    u32::from_str_radix(hex, 16).ok().map(|rgb| 0xff00_0000 | rgb)
}

/// `APP/NAME` → key, both parts checked as names.
pub fn parse_stream(field: &str, s: &str) -> Result<StreamKey, FieldError> {
    let Some((app, name)) = s.split_once('/') else {
        return bad(field, format!("{s:?} is not APP/NAME"));
    };
    for (what, part) in [("app", app), ("stream", name)] {
        if let Err(e) = crate::names::validate(what, part) {
            return bad(field, e.to_string());
        }
    }
    Ok(StreamKey::new(app, name))
}

fn range<T: PartialOrd + std::fmt::Display + Copy>(
    field: &str,
    v: T,
    min: T,
    max: T,
    unit: &str,
) -> Result<T, FieldError> {
    if v < min || v > max {
        return bad(field, format!("{v} is outside {min}..={max}{unit}"));
    }
    Ok(v)
}

/// Checks the output, filling defaults from the config.
pub fn check_output(o: &OutputRequest, cfg: &MixConfig) -> Result<Output, FieldError> {
    let stream = parse_stream("output.stream", &o.stream)?;
    let width = range("output.width", o.width.unwrap_or(cfg.width), 16, 3840, " pixels")?;
    let height = range("output.height", o.height.unwrap_or(cfg.height), 16, 2160, " pixels")?;
    if width % 2 != 0 {
        return bad("output.width", format!("{width} is odd: 4:2:0 video needs even sizes"));
    }
    if height % 2 != 0 {
        return bad("output.height", format!("{height} is odd: 4:2:0 video needs even sizes"));
    }
    let fps = range("output.fps", o.fps.unwrap_or(cfg.fps), 1, 60, " frames/s")?;
    let video_bitrate =
        range("output.video_bitrate", o.video_bitrate.unwrap_or(cfg.video_bitrate), 50, 50_000, " kbit/s")?;
    let gop_secs = o.gop_secs.unwrap_or(cfg.gop_secs);
    if !gop_secs.is_finite() {
        return bad("output.gop_secs", "must be a number");
    }
    let gop_secs = range("output.gop_secs", gop_secs, 0.1, 20.0, " s")?;
    let audio_bitrate =
        range("output.audio_bitrate", o.audio_bitrate.unwrap_or(cfg.audio_bitrate), 8_000, 512_000, " bit/s")?;
    let sample_rate = o.sample_rate.unwrap_or(cfg.sample_rate);
    if ![8_000, 11_025, 16_000, 22_050, 24_000, 32_000, 44_100, 48_000].contains(&sample_rate) {
        return bad("output.sample_rate", format!("{sample_rate} is not an AAC sample rate (8000 … 48000)"));
    }
    let channels = range("output.channels", o.channels.unwrap_or(cfg.channels), 1, 2, "")?;
    let background_color = o.background_color.clone().unwrap_or_else(|| cfg.background_color.clone());
    if parse_color(&background_color).is_none() {
        return bad("output.background_color", format!("{background_color:?} is not #RRGGBB"));
    }
    if let Some(img) = &o.background_image {
        check_image("output.background_image", img)?;
    }
    Ok(Output {
        stream,
        width,
        height,
        fps,
        video_bitrate,
        gop_secs,
        audio_bitrate,
        sample_rate,
        channels,
        background_color,
        background_image: o.background_image.clone(),
    })
}

fn check_image(field: &str, path: &str) -> Result<(), FieldError> {
    let lower = path.to_ascii_lowercase();
    if !(lower.ends_with(".png") || lower.ends_with(".jpg") || lower.ends_with(".jpeg")) {
        return bad(field, format!("{path:?} is not a .png, .jpg or .jpeg file"));
    }
    if path.contains('"') {
        return bad(field, "the path may not contain '\"'");
    }
    if !std::path::Path::new(path).is_file() {
        return bad(field, format!("{path:?} is not a readable file"));
    }
    Ok(())
}

/// Checks the inputs and places them: by the template, or by each input's own rectangle.
pub fn place(
    template: Option<&str>,
    pip_position: Option<&str>,
    inputs: &[InputSpec],
    canvas: (u32, u32),
    max_inputs: usize,
) -> Result<Layout, FieldError> {
    let template = match template {
        None => Template::Custom,
        Some(t) => Template::parse(t).ok_or_else(|| FieldError {
            field: "template".into(),
            detail: format!("unknown template {t:?} (1v1, 1v3, grid, float, bigsmall, pip, custom)"),
        })?,
    };
    let pip_position = match pip_position {
        None => Corner::BottomRight,
        Some(p) => Corner::parse(p).ok_or_else(|| FieldError {
            field: "pip_position".into(),
            detail: format!("{p:?} is not top-left, top-right, bottom-left or bottom-right"),
        })?,
    };
    if inputs.is_empty() {
        return bad("inputs", "a mix needs at least one input");
    }
    let cap = template.capacity(max_inputs).min(max_inputs);
    if inputs.len() > cap {
        return bad("inputs", format!("{} inputs, but the {template:?} layout takes at most {cap}", inputs.len()));
    }
    let slots = template_slots(template, pip_position, inputs.len(), canvas);
    let mut placed = Vec::with_capacity(inputs.len());
    for (i, inp) in inputs.iter().enumerate() {
        let f = |name: &str| format!("inputs[{i}].{name}");
        let stream = match (&inp.stream, inp.kind.reads_stream()) {
            (Some(s), true) => Some(parse_stream(&f("stream"), s)?),
            (None, true) => return bad(f("stream"), format!("an input of kind {:?} needs a stream", inp.kind)),
            (Some(_), false) => return bad(f("stream"), format!("an input of kind {:?} reads no stream", inp.kind)),
            (None, false) => None,
        };
        let color = match (inp.kind, &inp.color) {
            (InputKind::Color, Some(c)) => Some(
                parse_color(c)
                    .ok_or_else(|| FieldError { field: f("color"), detail: format!("{c:?} is not #RRGGBB") })?,
            ),
            (InputKind::Color, None) => return bad(f("color"), "an input of kind color needs a color"),
            (_, Some(_)) => return bad(f("color"), "only inputs of kind color take a color"),
            (_, None) => None,
        };
        match (inp.kind, &inp.image) {
            (InputKind::Image, Some(p)) => check_image(&f("image"), p)?,
            (InputKind::Image, None) => return bad(f("image"), "an input of kind image needs an image file"),
            // An audio-only input's slot shows this picture (its placeholder) instead of the background.
            (InputKind::Audio, Some(p)) => check_image(&f("image"), p)?,
            (_, Some(_)) => return bad(f("image"), "only inputs of kind image or audio take an image"),
            (_, None) => {}
        }
        if !(inp.volume.is_finite() && (0.0..=10.0).contains(&inp.volume)) {
            return bad(f("volume"), format!("{} is outside 0..=10", inp.volume));
        }
        if let Some(l) = inp.layer {
            range(&f("layer"), l, 1, 100, "")?;
        }
        let (rect, layer) = match &slots {
            Some(s) => (Some(s[i].0), inp.layer.unwrap_or(s[i].1)),
            None => {
                let r = own_rect(i, inp, canvas)?;
                if r.is_none() && inp.kind.has_video() {
                    return bad(f("x"), "without a template every video input needs x, y, width and height");
                }
                (r, inp.layer.unwrap_or(1))
            }
        };
        let crop = inp.crop.unwrap_or_default();
        if crop.left.max(crop.right).max(crop.top).max(crop.bottom) > 7680 {
            return bad(f("crop"), "crop edges must be at most 7680 pixels");
        }
        placed.push(Placed {
            stream,
            kind: inp.kind,
            layer,
            rect,
            crop,
            audio: inp.audio && matches!(inp.kind, InputKind::Av | InputKind::Audio),
            volume: inp.volume,
            image: inp.image.clone(),
            color,
        });
    }
    Ok(Layout { template, pip_position, inputs: placed })
}

/// An input's own rectangle, converted from fractions when all four values are at most 1.
fn own_rect(i: usize, inp: &InputSpec, (cw, ch): (u32, u32)) -> Result<Option<Rect>, FieldError> {
    let f = |name: &str| format!("inputs[{i}].{name}");
    let vals = [("x", inp.x), ("y", inp.y), ("width", inp.width), ("height", inp.height)];
    if vals.iter().all(|(_, v)| v.is_none()) {
        return Ok(None);
    }
    let mut got = [0f64; 4];
    for (k, (name, v)) in vals.iter().enumerate() {
        let Some(v) = v else { return bad(f(name), "x, y, width and height go together") };
        if !v.is_finite() || *v < 0.0 {
            return bad(f(name), format!("{v} is negative or not a number"));
        }
        got[k] = *v;
    }
    let fractions = got.iter().all(|v| *v <= 1.0);
    let (x, y, w, h) = if fractions {
        (got[0] * cw as f64, got[1] * ch as f64, got[2] * cw as f64, got[3] * ch as f64)
    } else {
        (got[0], got[1], got[2], got[3])
    };
    let r = Rect { x: x.round() as i32, y: y.round() as i32, width: w.round() as i32, height: h.round() as i32 };
    if r.width < 2 {
        return bad(f("width"), format!("{} is too small (at least 2 pixels)", got[2]));
    }
    if r.height < 2 {
        return bad(f("height"), format!("{} is too small (at least 2 pixels)", got[3]));
    }
    if r.x as i64 + r.width as i64 > cw as i64 || r.x >= cw as i32 {
        return bad(f("width"), format!("x {} + width {} is outside the {cw}-pixel-wide canvas", r.x, r.width));
    }
    if r.y as i64 + r.height as i64 > ch as i64 || r.y >= ch as i32 {
        return bad(f("height"), format!("y {} + height {} is outside the {ch}-pixel-high canvas", r.y, r.height));
    }
    Ok(Some(r))
}

fn rect(x: u32, y: u32, w: u32, h: u32) -> Rect {
    Rect { x: x as i32, y: y as i32, width: w as i32, height: h as i32 }
}

/// The template's slots (rectangle and layer) for `n` inputs; `None` for custom.
pub fn template_slots(t: Template, corner: Corner, n: usize, (w, h): (u32, u32)) -> Option<Vec<(Rect, u32)>> {
    let slots = match t {
        Template::Custom => return None,
        // Side by side, each half the width at the canvas's aspect, centred vertically.
        Template::OneVOne => (0..n as u32).map(|i| (rect(i * w / 2, h / 4, w / 2, h / 2), 1)).collect(),
        // The first at three quarters of the canvas, the others stacked in the right-hand quarter.
        Template::OneVThree => (0..n as u32)
            .map(|i| match i {
                0 => (rect(0, h / 8, w * 3 / 4, h * 3 / 4), 1),
                k => (rect(w * 3 / 4, h / 8 + (k - 1) * h / 4, w / 4, h / 4), 1),
            })
            .collect(),
        // Equal tiles, row by row, in the smallest square number of columns: 4 inputs make 2x2, 5 and 6 make
        // 3x2, 7..9 make 3x3, 10..16 make 4 columns.
        Template::Grid => {
            let cols = (1..).find(|c| c * c >= n).unwrap_or(1) as u32;
            let rows = (n as u32).div_ceil(cols);
            let (cw, rh) = (w / cols, h / rows);
            (0..n as u32).map(|i| (rect((i % cols) * cw, (i / cols) * rh, cw, rh), 1)).collect()
        }
        // The first full-screen; up to four more, a fifth of the canvas each, along the bottom.
        Template::Float => {
            let (sw, sh) = (w / 5, h / 5);
            let (mx, my) = (w / 25, h / 25);
            (0..n as u32)
                .map(|i| match i {
                    0 => (rect(0, 0, w, h), 1),
                    k => (rect(mx + (k - 1) * (sw + mx), h - sh - my, sw, sh), 2),
                })
                .collect()
        }
        // The first full-screen, the second a quarter-size inset in a corner.
        Template::Bigsmall => {
            let (sw, sh) = (w / 4, h / 4);
            let (mx, my) = (w / 40, h / 40);
            let (x, y) = match corner {
                Corner::TopLeft => (mx, my),
                Corner::TopRight => (w - sw - mx, my),
                Corner::BottomLeft => (mx, h - sh - my),
                Corner::BottomRight => (w - sw - mx, h - sh - my),
            };
            (0..n as u32).map(|i| if i == 0 { (rect(0, 0, w, h), 1) } else { (rect(x, y, sw, sh), 2) }).collect()
        }
    };
    Some(slots)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> MixConfig {
        MixConfig {
            max_inputs: 16,
            max_mixes: 8,
            latency_ms: 80,
            lost_after_ms: 1000,
            width: 1280,
            height: 720,
            fps: 30,
            video_bitrate: 2000,
            gop_secs: 2.0,
            audio_bitrate: 96000,
            sample_rate: 48000,
            channels: 2,
            background_color: "#000000".into(),
        }
    }

    fn av(s: &str) -> InputSpec {
        InputSpec {
            stream: Some(s.into()),
            kind: InputKind::Av,
            layer: None,
            x: None,
            y: None,
            width: None,
            height: None,
            crop: None,
            audio: true,
            volume: 1.0,
            image: None,
            color: None,
        }
    }

    fn out(stream: &str) -> OutputRequest {
        OutputRequest { stream: stream.into(), ..Default::default() }
    }

    fn rects(l: &Layout) -> Vec<(i32, i32, i32, i32)> {
        l.inputs.iter().map(|p| p.rect.map(|r| (r.x, r.y, r.width, r.height)).unwrap()).collect()
    }

    #[test]
    fn grid_fills_row_by_row() {
        let ins: Vec<_> = (0..4).map(|i| av(&format!("live/s{i}"))).collect();
        let l = place(Some("grid"), None, &ins, (640, 360), 16).unwrap();
        assert_eq!(rects(&l), vec![(0, 0, 320, 180), (320, 0, 320, 180), (0, 180, 320, 180), (320, 180, 320, 180)]);
        let ins: Vec<_> = (0..16).map(|i| av(&format!("live/s{i}"))).collect();
        let l = place(Some("grid"), None, &ins, (1280, 720), 16).unwrap();
        assert_eq!(rects(&l)[5], (320, 180, 320, 180));
        assert_eq!(rects(&l)[15], (960, 540, 320, 180));
        let ins: Vec<_> = (0..5).map(|i| av(&format!("live/s{i}"))).collect();
        let l = place(Some("grid"), None, &ins, (1200, 600), 16).unwrap();
        assert_eq!(rects(&l)[3], (0, 300, 400, 300), "5 inputs make 3 columns, 2 rows");
    }

    #[test]
    fn templates_stay_inside_the_canvas_and_do_not_overlap_on_one_layer() {
        for (t, n) in [("1v1", 2), ("1v3", 4), ("grid", 16), ("grid", 7), ("float", 5), ("pip", 2)] {
            for corner in ["top-left", "top-right", "bottom-left", "bottom-right"] {
                let ins: Vec<_> = (0..n).map(|i| av(&format!("live/s{i}"))).collect();
                let l = place(Some(t), Some(corner), &ins, (1280, 720), 16).unwrap();
                for (i, a) in l.inputs.iter().enumerate() {
                    let r = a.rect.unwrap();
                    assert!(r.x >= 0 && r.y >= 0 && r.x + r.width <= 1280 && r.y + r.height <= 720, "{t} {i} {r:?}");
                    for b in &l.inputs[i + 1..] {
                        let s = b.rect.unwrap();
                        let overlap =
                            r.x < s.x + s.width && s.x < r.x + r.width && r.y < s.y + s.height && s.y < r.y + r.height;
                        assert!(!(overlap && a.layer == b.layer), "{t}: {r:?} overlaps {s:?} on layer {}", a.layer);
                    }
                }
            }
        }
    }

    #[test]
    fn one_v_three_has_one_big_slot() {
        let ins: Vec<_> = (0..4).map(|i| av(&format!("live/s{i}"))).collect();
        let l = place(Some("1v3"), None, &ins, (640, 360), 16).unwrap();
        assert_eq!(rects(&l), vec![(0, 45, 480, 270), (480, 45, 160, 90), (480, 135, 160, 90), (480, 225, 160, 90)]);
    }

    #[test]
    fn pip_corner_is_configurable() {
        let ins = vec![av("live/a"), av("live/b")];
        let l = place(Some("bigsmall"), Some("top-left"), &ins, (1280, 720), 16).unwrap();
        assert_eq!(rects(&l)[1], (32, 18, 320, 180));
        assert_eq!(l.inputs[1].layer, 2);
        let e = place(Some("pip"), Some("middle"), &ins, (1280, 720), 16).unwrap_err();
        assert_eq!(e.field, "pip_position");
    }

    #[test]
    fn custom_rects_in_pixels_or_fractions() {
        let mut a = av("live/a");
        (a.x, a.y, a.width, a.height) = (Some(0.5), Some(0.0), Some(0.5), Some(0.5));
        let mut b = av("live/b");
        (b.x, b.y, b.width, b.height) = (Some(10.0), Some(20.0), Some(100.0), Some(50.0));
        b.layer = Some(3);
        let l = place(None, None, &[a, b], (1280, 720), 16).unwrap();
        assert_eq!(rects(&l), vec![(640, 0, 640, 360), (10, 20, 100, 50)]);
        assert_eq!(l.inputs[1].layer, 3);
    }

    #[test]
    fn bad_requests_name_the_field() {
        let e = place(Some("mosaic"), None, &[av("live/a")], (640, 360), 16).unwrap_err();
        assert_eq!(e.field, "template");
        let many: Vec<_> = (0..17).map(|i| av(&format!("live/s{i}"))).collect();
        assert_eq!(place(Some("grid"), None, &many, (640, 360), 16).unwrap_err().field, "inputs");
        assert_eq!(place(Some("1v3"), None, &many[..5], (640, 360), 16).unwrap_err().field, "inputs");
        let mut neg = av("live/a");
        (neg.x, neg.y, neg.width, neg.height) = (Some(-1.0), Some(0.0), Some(10.0), Some(10.0));
        assert_eq!(place(None, None, &[neg], (640, 360), 16).unwrap_err().field, "inputs[0].x");
        let mut wide = av("live/a");
        (wide.x, wide.y, wide.width, wide.height) = (Some(600.0), Some(0.0), Some(100.0), Some(10.0));
        assert_eq!(place(None, None, &[av("live/b"), wide.clone()], (640, 360), 16).unwrap_err().field, "inputs[0].x");
        assert_eq!(place(Some("custom"), None, &[wide], (640, 360), 16).unwrap_err().field, "inputs[0].width");
        let mut zero = av("live/a");
        (zero.x, zero.y, zero.width, zero.height) = (Some(0.0), Some(0.0), Some(0.0), Some(10.0));
        assert_eq!(place(None, None, &[zero], (640, 360), 16).unwrap_err().field, "inputs[0].width");
        let mut loud = av("live/a");
        loud.volume = 11.0;
        assert_eq!(place(Some("grid"), None, &[loud], (640, 360), 16).unwrap_err().field, "inputs[0].volume");
        let mut badname = av("live/../x");
        badname.kind = InputKind::Video;
        assert_eq!(place(Some("grid"), None, &[badname], (640, 360), 16).unwrap_err().field, "inputs[0].stream");
        let mut nocolor = av("live/a");
        nocolor.stream = None;
        nocolor.kind = InputKind::Color;
        assert_eq!(place(Some("grid"), None, &[nocolor], (640, 360), 16).unwrap_err().field, "inputs[0].color");
        assert_eq!(place(Some("grid"), None, &[], (640, 360), 16).unwrap_err().field, "inputs");
    }

    #[test]
    fn output_limits() {
        let c = cfg();
        let o = check_output(&out("live/room-mix"), &c).unwrap();
        assert_eq!((o.width, o.height, o.fps, o.gop_frames()), (1280, 720, 30, 60));
        type Change = Box<dyn Fn(&mut OutputRequest)>;
        let cases: Vec<(&str, Change)> = vec![
            ("output.width", Box::new(|o| o.width = Some(0))),
            ("output.height", Box::new(|o| o.height = Some(100_000))),
            ("output.width", Box::new(|o| o.width = Some(641))),
            ("output.fps", Box::new(|o| o.fps = Some(0))),
            ("output.fps", Box::new(|o| o.fps = Some(1000))),
            ("output.video_bitrate", Box::new(|o| o.video_bitrate = Some(0))),
            ("output.video_bitrate", Box::new(|o| o.video_bitrate = Some(10_000_000))),
            ("output.audio_bitrate", Box::new(|o| o.audio_bitrate = Some(1))),
            ("output.gop_secs", Box::new(|o| o.gop_secs = Some(0.0))),
            ("output.sample_rate", Box::new(|o| o.sample_rate = Some(12345))),
            ("output.channels", Box::new(|o| o.channels = Some(6))),
            ("output.background_color", Box::new(|o| o.background_color = Some("red".into()))),
            ("output.background_image", Box::new(|o| o.background_image = Some("/nonexistent.png".into()))),
            ("output.stream", Box::new(|o| o.stream = "nope".into())),
        ];
        for (field, f) in cases {
            let mut o = out("live/m");
            f(&mut o);
            assert_eq!(check_output(&o, &c).unwrap_err().field, field);
        }
    }

    #[test]
    fn colors() {
        assert_eq!(parse_color("#ff0000"), Some(0xffff0000));
        assert_eq!(parse_color("#00FF7f"), Some(0xff00ff7f));
        assert_eq!(parse_color("ff0000"), None);
        assert_eq!(parse_color("#ff000"), None);
        assert_eq!(parse_color("#gg0000"), None);
    }
}
