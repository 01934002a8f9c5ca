//! The control API under `/api/v1` (documented in `docs/openapi.yaml`).

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use http::{header, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::{json, Value};

use super::api_guard::{self, ApiRequest};
use super::HttpState;
use super::{error, json, Body};
use crate::hub::{HubError, Protocol, SeiInjectError, Stream, StreamKey};
use crate::media::aac::AudioSpecificConfig;
use crate::media::avc::{self, AvcDecoderConfig};
use crate::media::hevc::HevcDecoderConfig;
use crate::media::{Codec, Frame, MediaKind};
use crate::record::RecordError;

pub async fn handle(state: &Arc<HttpState>, addr: SocketAddr, req: Request<Incoming>) -> Response<Body> {
    if let Err(resp) = authorize(state, addr, &req) {
        return resp;
    }
    let path = req.uri().path().trim_end_matches('/').to_owned();
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let method = req.method().clone();
    match (method, parts.as_slice()) {
        (Method::GET, ["api", "v1", "streams"]) => {
            let streams: Vec<Value> = state.hub.streams().iter().map(|s| stream_json(s)).collect();
            json(StatusCode::OK, &json!({ "streams": streams }))
        }
        (Method::GET, ["api", "v1", "streams", app, name]) => match state.hub.get(&StreamKey::new(app, name)) {
            Some(s) => json(StatusCode::OK, &stream_json(&s)),
            None => not_found_stream(app, name),
        },
        (Method::DELETE, ["api", "v1", "streams", app, name]) => {
            let key = StreamKey::new(app, name);
            match state.hub.kick_publisher(&key, "kicked through the API") {
                Ok(()) => {
                    tracing::info!(stream = %key, "publisher kicked through the API");
                    json(StatusCode::OK, &json!({ "stream": key.to_string(), "kicked": true }))
                }
                Err(HubError::NotFound(_)) => not_found_stream(app, name),
                Err(e) => error(StatusCode::CONFLICT, "conflict", &e.to_string()),
            }
        }
        (Method::POST, ["api", "v1", "streams", app, name, "sei"]) => inject_sei(state, req, app, name).await,
        (Method::GET, ["api", "v1", "clients"]) => {
            let clients: Vec<Value> = state.hub.clients().iter().map(|c| client_json(c)).collect();
            json(StatusCode::OK, &json!({ "clients": clients }))
        }
        (Method::GET, ["api", "v1", "clients", id]) => match id.parse().ok().and_then(|id| state.hub.client(id)) {
            Some(c) => json(StatusCode::OK, &client_json(&c)),
            None => error(StatusCode::NOT_FOUND, "client_not_found", &format!("no client with id {id}")),
        },
        (Method::DELETE, ["api", "v1", "clients", id]) => match id.parse().ok().and_then(|id| state.hub.client(id)) {
            Some(c) => {
                c.kick("kicked through the API");
                tracing::info!(client = c.id, "client kicked through the API");
                json(StatusCode::OK, &json!({ "client_id": c.id, "kicked": true }))
            }
            None => error(StatusCode::NOT_FOUND, "client_not_found", &format!("no client with id {id}")),
        },
        (Method::GET, ["api", "v1", "recordings"]) => {
            let q = crate::names::parse_query(req.uri().query().unwrap_or(""));
            let get = |k: &str| crate::names::query_get(&q, k).filter(|v| !v.is_empty());
            let num = |k: &str| get(k).and_then(|v| v.parse::<u64>().ok());
            let files = state.recorder.list(get("app"), get("stream"), num("from"), num("to"));
            let running: Vec<Value> = state
                .recorder
                .running()
                .into_iter()
                .map(|(id, key)| json!({"record_id": id, "app": key.app, "stream": key.name}))
                .collect();
            json(StatusCode::OK, &json!({ "recordings": files, "running": running }))
        }
        (Method::POST, ["api", "v1", "recordings"]) => start_recording(state, req).await,
        (Method::POST, ["api", "v1", "recordings", "stitch"]) => stitch(state, req).await,
        (Method::GET, ["api", "v1", "recordings", "stitch", id]) => match state.recorder.stitch_job(id) {
            Some(job) => json(StatusCode::OK, &json!(job)),
            None => error(StatusCode::NOT_FOUND, "job_not_found", &format!("no stitch job {id}")),
        },
        (Method::DELETE, ["api", "v1", "recordings", "files", file_id]) => match state.recorder.delete(file_id) {
            Ok(info) => json(StatusCode::OK, &json!({ "deleted": info })),
            Err(RecordError::NotFound(d)) => error(StatusCode::NOT_FOUND, "recording_not_found", &d),
            Err(e) => error(StatusCode::CONFLICT, "conflict", &e.to_string()),
        },
        (Method::DELETE, ["api", "v1", "recordings", record_id]) => {
            if state.recorder.stop(record_id) {
                json(StatusCode::OK, &json!({ "record_id": record_id, "stopping": true }))
            } else {
                error(StatusCode::NOT_FOUND, "recording_not_found", &format!("no running recording {record_id}"))
            }
        }
        (_, ["api", "v1", "mixes", rest @ ..]) => super::mixes::handle(state, req, rest).await,
        (_, ["api", "v1", "pulls", rest @ ..]) => super::pulls::handle(state, req, rest).await,
        (Method::GET, ["api", "v1", "cluster"]) => match &state.cluster {
            Some(c) => json(StatusCode::OK, &c.status().await),
            // On its own: no directory, no other nodes; its pulls are still its own.
            None => json(StatusCode::OK, &json!({ "node": null, "pulls": state.pulls.list() })),
        },
        (_, ["api", "v1", "relays", rest @ ..]) => super::relays::handle(state, req, rest).await,
        (m, ["api", "v1", "streams" | "clients" | "recordings", ..]) => {
            error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", &format!("{m} is not allowed on {path}"))
        }
        _ => error(StatusCode::NOT_FOUND, "not_found", &format!("no API route {path}")),
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct StartRecording {
    app: String,
    stream: String,
    #[serde(default)]
    formats: Option<Vec<String>>,
    fragment_secs: Option<u64>,
    record_id: Option<String>,
    pre_roll_secs: Option<f64>,
}

/// The largest message `POST …/sei` takes (after its UUID): what live-pusher's `sendMessage` carries, with room.
pub const MAX_SEI_BYTES: usize = 4096;

/// The UUID injected messages carry unless the request names one.
pub const LIVEGATE_SEI_UUID: [u8; 16] = *b"livegate.sei.v1\0";

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct InjectSei {
    /// 32 hex digits (dashes allowed).
    uuid: Option<String>,
    /// The message: base64 bytes, or text (UTF-8), not both.
    data: Option<String>,
    text: Option<String>,
}

/// `POST /api/v1/streams/{app}/{stream}/sei`: an SEI message (user data unregistered) into the live stream,
/// carried by its next video frame to every reader.
async fn inject_sei(state: &Arc<HttpState>, req: Request<Incoming>, app: &str, name: &str) -> Response<Body> {
    use base64::Engine;
    let body = match super::read_body(state, req.into_body(), 16 * 1024).await {
        Ok(b) => b,
        Err(resp) => return *resp,
    };
    let r: InjectSei = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, "bad_json", &e.to_string()),
    };
    let data = match (&r.data, &r.text) {
        (Some(b64), None) => match base64::engine::general_purpose::STANDARD.decode(b64) {
            Ok(d) => d,
            Err(e) => return error(StatusCode::BAD_REQUEST, "invalid_field", &format!("data is not base64: {e}")),
        },
        (None, Some(t)) => t.as_bytes().to_vec(),
        _ => return error(StatusCode::BAD_REQUEST, "invalid_field", "give the message as data (base64) or text"),
    };
    if data.len() > MAX_SEI_BYTES {
        let detail = format!("the message is {} bytes; an injected SEI carries at most {MAX_SEI_BYTES}", data.len());
        return error(StatusCode::BAD_REQUEST, "too_large", &detail);
    }
    let uuid = match r.uuid.as_deref().map(parse_uuid) {
        None => LIVEGATE_SEI_UUID,
        Some(Some(u)) => u,
        Some(None) => {
            return error(StatusCode::BAD_REQUEST, "invalid_field", "uuid must be 32 hex digits (dashes allowed)")
        }
    };
    let Some(stream) = state.hub.get(&StreamKey::new(app, name)).filter(|s| s.publisher().is_some()) else {
        return not_found_stream(app, name);
    };
    let bytes = data.len();
    let nal = crate::media::sei::build_nal(&[crate::media::sei::SeiMessage::unregistered(uuid, data)]);
    match stream.inject_sei(nal) {
        Ok(()) => json(StatusCode::ACCEPTED, &json!({ "queued": true, "bytes": bytes, "uuid": hex::encode(uuid) })),
        Err(e @ SeiInjectError::Busy(_)) => error(StatusCode::TOO_MANY_REQUESTS, "busy", &e.to_string()),
        Err(e) => error(StatusCode::CONFLICT, "no_h264_video", &e.to_string()),
    }
}

fn parse_uuid(s: &str) -> Option<[u8; 16]> {
    let mut out = [0u8; 16];
    hex::decode_to_slice(s.replace('-', ""), &mut out).ok()?;
    Some(out)
}

async fn start_recording(state: &Arc<HttpState>, req: Request<Incoming>) -> Response<Body> {
    let body = match super::read_body(state, req.into_body(), 64 * 1024).await {
        Ok(b) => b,
        Err(resp) => return *resp,
    };
    let r: StartRecording = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, "bad_json", &e.to_string()),
    };
    for (what, name) in [("app", &r.app), ("stream", &r.stream)] {
        if let Err(e) = crate::names::validate(what, name) {
            return error(StatusCode::BAD_REQUEST, "invalid_field", &format!("invalid {what}: {e}"));
        }
    }
    let key = StreamKey::new(&r.app, &r.stream);
    let formats = r.formats.unwrap_or_else(|| vec!["flv".into()]);
    // A stream that is not here may be elsewhere in the cluster (an edge records what it pulls).
    if let Err(e) = state.hub.locate(&key, &[]).await {
        return super::flv::hub_error(&e);
    }
    match state.recorder.start(key, formats, r.fragment_secs, r.record_id, r.pre_roll_secs) {
        Ok(id) => json(StatusCode::CREATED, &json!({ "record_id": id })),
        Err(e @ RecordError::NotFound(_)) => error(StatusCode::NOT_FOUND, "stream_not_found", &e.to_string()),
        Err(e @ RecordError::Invalid { .. }) => error(StatusCode::BAD_REQUEST, "invalid_field", &e.to_string()),
        Err(e @ RecordError::Exists(_)) => error(StatusCode::CONFLICT, "conflict", &e.to_string()),
    }
}

/// `POST /api/v1/recordings/stitch {app, stream, from, to, callback?}`: fields are checked one by one so a
/// 400 names the one that is wrong.
async fn stitch(state: &Arc<HttpState>, req: Request<Incoming>) -> Response<Body> {
    let body = match super::read_body(state, req.into_body(), 64 * 1024).await {
        Ok(b) => b,
        Err(resp) => return *resp,
    };
    let v: Value = match serde_json::from_slice(&body) {
        Ok(v @ Value::Object(_)) => v,
        Ok(_) => return error(StatusCode::BAD_REQUEST, "bad_json", "the body must be a JSON object"),
        Err(e) => return error(StatusCode::BAD_REQUEST, "bad_json", &e.to_string()),
    };
    let bad = |field: &str, detail: &str| {
        error(StatusCode::BAD_REQUEST, "invalid_field", &format!("invalid {field}: {detail}"))
    };
    if let Some(k) = v
        .as_object()
        .and_then(|o| o.keys().find(|k| !["app", "stream", "from", "to", "callback"].contains(&k.as_str())))
    {
        return bad(k, "unknown field");
    }
    let mut names = Vec::new();
    for what in ["app", "stream"] {
        let Some(n) = v[what].as_str() else { return bad(what, "a string is required") };
        if let Err(e) = crate::names::validate(what, n) {
            return bad(what, &e.to_string());
        }
        names.push(n.to_owned());
    }
    let mut times = Vec::new();
    for what in ["from", "to"] {
        let Some(t) = v[what].as_u64() else { return bad(what, "Unix seconds (a non-negative integer) are required") };
        times.push(t);
    }
    let callback = match &v["callback"] {
        Value::Null => None,
        Value::String(u) if u.starts_with("http://") && u.len() > 7 => Some(u.clone()),
        _ => return bad("callback", "an http:// URL is expected"),
    };
    match state.recorder.stitch(&names[0], &names[1], times[0], times[1], callback) {
        Ok(job) => json(StatusCode::ACCEPTED, &json!(job)),
        Err(e @ RecordError::NotFound(_)) => error(StatusCode::NOT_FOUND, "recording_not_found", &e.to_string()),
        Err(e @ RecordError::Invalid { .. }) => error(StatusCode::BAD_REQUEST, "invalid_field", &e.to_string()),
        Err(e) => error(StatusCode::CONFLICT, "conflict", &e.to_string()),
    }
}

fn not_found_stream(app: &str, name: &str) -> Response<Body> {
    error(StatusCode::NOT_FOUND, "stream_not_found", &format!("stream {app}/{name} is not being published"))
}

/// Without a token the API answers loopback clients only; with one, mutating calls must present it.
#[allow(clippy::result_large_err)]
pub(super) fn authorize(state: &HttpState, addr: SocketAddr, req: &Request<Incoming>) -> Result<(), Response<Body>> {
    let h = req.headers();
    let text = |name: header::HeaderName| h.get(name).and_then(|v| v.to_str().ok());
    let r = ApiRequest {
        method: req.method(),
        peer: addr.ip(),
        host: text(header::HOST).or(req.uri().authority().map(|a| a.as_str())),
        origin: text(header::ORIGIN),
        sec_fetch_site: h.get("sec-fetch-site").and_then(|v| v.to_str().ok()),
        authorization: text(header::AUTHORIZATION),
        content_type: text(header::CONTENT_TYPE),
    };
    api_guard::check(&state.api_policy(), &r).map_err(|refusal| {
        let (status, code) = refusal.status();
        tracing::info!(peer = %addr, method = %req.method(), path = req.uri().path(), %refusal, "API call refused");
        let mut resp = error(status, code, &refusal.to_string());
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, "Bearer".parse().expect("static"));
        }
        resp
    })
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn client_json(c: &crate::hub::ClientHandle) -> Value {
    let st = c.info.lock().clone();
    // A player's quality and what it is judged from (crate::health::player).
    let player = c.is_player().then(|| {
        let p = &c.player;
        let q = p.quality();
        json!({
            "quality": {"level": q.level(), "name": q.name()},
            "backlog_ms": p.backlog_ms.load(Ordering::Relaxed),
            "skips": p.skips.load(Ordering::Relaxed),
            "stalls": p.stalls.load(Ordering::Relaxed),
            "dropped_packets": p.dropped_packets.load(Ordering::Relaxed),
            "loss_percent": p.loss_percent(),
            "rtt_ms": p.rtt_ms(),
        })
    });
    json!({
        "player": player,
        "id": c.id,
        "protocol": c.protocol,
        "addr": c.addr.map(|a| a.to_string()),
        "role": st.role,
        "stream": st.stream,
        "since": unix(c.since),
        "bytes_in": c.bytes_in.load(Ordering::Relaxed),
        "bytes_out": c.bytes_out.load(Ordering::Relaxed),
    })
}

pub fn stream_json(s: &Stream) -> Value {
    let headers = s.headers();
    let (in_bps, out_bps, fps) = s.rates();
    let publisher = s.publisher();
    let measured_fps = (fps > 0.0).then(|| (fps * 100.0).round() / 100.0);
    let video = headers.video.as_ref().map(|p| {
        if p.frame.codec == Codec::H265 {
            let size = HevcDecoderConfig::parse(&p.frame.payload).ok().and_then(|c| c.picture_size().ok());
            return json!({
                "codec": "H265",
                "width": size.map(|s| s.0),
                "height": size.map(|s| s.1),
                "fps": measured_fps,
            });
        }
        let cfg = AvcDecoderConfig::parse(&p.frame.payload).ok();
        let sps = cfg.as_ref().and_then(|c| c.sps.first()).and_then(|sps| avc::parse_sps(sps).ok());
        json!({
            "codec": "H264",
            "profile": sps.as_ref().map(|s| profile_name(s.profile_idc)),
            "level": sps.as_ref().map(|s| s.level_idc as f64 / 10.0),
            "width": sps.as_ref().map(|s| s.width),
            "height": sps.as_ref().map(|s| s.height),
            "fps": measured_fps.or_else(|| sps.as_ref().and_then(|s| s.fps)),
        })
    });
    let audio = headers.audio.as_ref().map(|p| {
        let asc = AudioSpecificConfig::parse(&p.frame.payload).ok();
        json!({
            "codec": "AAC",
            "object_type": asc.as_ref().map(|a| a.object_type),
            "sample_rate": asc.as_ref().map(|a| a.sample_rate),
            "channels": asc.as_ref().map(|a| a.channels),
        })
    });
    // Renditions for WebRTC (Opus, VP8) and pass-through audio carry no configuration record: describe them
    // from their newest frames instead.
    let (video, audio) = match (video, audio) {
        (Some(v), Some(a)) => (Some(v), Some(a)),
        (v, a) => {
            let (lv, la) = newest_frames(s);
            (v.or_else(|| lv.map(|f| frame_json(&f, fps))), a.or_else(|| la.map(|f| frame_json(&f, fps))))
        }
    };
    let readers: serde_json::Map<String, Value> = Protocol::ALL
        .iter()
        .map(|p| (p.as_str().to_owned(), json!(s.stats.readers[*p as usize].load(Ordering::Relaxed))))
        .collect();
    let published = s.state.lock().published_wall;
    let health = publisher.as_ref().map(|_| s.health());
    json!({
        "app": s.key.app,
        "stream": s.key.name,
        "id": s.id,
        "state": if publisher.is_some() { "live" } else { "waiting" },
        "publisher": publisher.map(|p| json!({
            "client_id": p.client_id,
            "protocol": p.protocol,
            "addr": p.addr.map(|a| a.to_string()),
            "param": p.param,
        })),
        "video": video,
        "audio": audio,
        // The publisher's network quality (live-pusher's netQualityLevel) and whether it is in the background.
        "quality": health.map(|h| json!({"level": h.quality.level(), "name": h.quality.name()})),
        "publisher_state": health.map(|h| h.publisher_state),
        "ingest": health.map(|h| json!({
            "delay_ms": h.delay_ms,
            "jitter_ms": h.jitter_ms,
            "loss_percent": h.loss_percent,
            "last_1s": h.last_1s,
            "last_10s": h.last_10s,
        })),
        "bitrate_in_kbps": (in_bps / 1000.0).round(),
        "bitrate_out_kbps": (out_bps / 1000.0).round(),
        "gop_ms": s.stats.last_key_interval_ms.load(Ordering::Relaxed),
        "readers": readers,
        "readers_total": s.reader_count(),
        "attachments": s.attachments(),
        "source": s.source(),
        "skips": s.stats.skips.load(Ordering::Relaxed),
        "sei_malformed": s.stats.sei_malformed.load(Ordering::Relaxed),
        // A placeholder picture stands in for the publisher's video now (`[apps.X] placeholder`).
        "placeholder": s.is_filling(),
        "bytes_in": s.stats.bytes_in.load(Ordering::Relaxed),
        "bytes_out": s.stats.bytes_out.load(Ordering::Relaxed),
        "published_at": unix(published),
        "media_ms": s.last_dts(),
        "uptime_secs": s.created.elapsed().as_secs(),
    })
}

/// The newest video keyframe (else frame) and audio frame in the stream's buffer.
fn newest_frames(s: &Stream) -> (Option<Frame>, Option<Frame>) {
    let ring = s.ring.read();
    let mut video: Option<&Frame> = None;
    let mut audio: Option<&Frame> = None;
    for p in ring.packets.iter().rev() {
        let f = &p.frame;
        if f.config {
            continue;
        }
        match f.kind {
            MediaKind::Video if video.is_none_or(|v| !v.keyframe) && f.keyframe => video = Some(f),
            MediaKind::Video if video.is_none() => video = Some(f),
            MediaKind::Audio if audio.is_none() => audio = Some(f),
            _ => {}
        }
        if video.is_some_and(|v| v.keyframe) && audio.is_some() {
            break;
        }
    }
    (video.cloned(), audio.cloned())
}

/// Codec details of a frame that has no configuration record.
fn frame_json(f: &Frame, fps: f64) -> Value {
    let fps = (fps > 0.0).then(|| (fps * 100.0).round() / 100.0);
    match f.codec {
        Codec::Vp8 => {
            let size = vp8_keyframe_size(&f.payload);
            json!({"codec": "VP8", "width": size.map(|s| s.0), "height": size.map(|s| s.1), "fps": fps})
        }
        Codec::Opus => json!({"codec": "Opus", "sample_rate": 48000, "channels": opus_channels(&f.payload)}),
        Codec::OtherAudio { flv_sound_byte } => {
            let format = flv_sound_byte >> 4;
            let (codec, rate) = match format {
                2 | 14 => ("MP3", None),
                7 => ("G.711 A-law", Some(8000)),
                8 => ("G.711 mu-law", Some(8000)),
                11 => ("Speex", Some(16000)),
                _ => ("other", None),
            };
            // FLV's rate bits name 5.5/11/22/44 kHz; codecs with a fixed rate ignore them.
            let rate = rate.unwrap_or([5512, 11025, 22050, 44100][(flv_sound_byte >> 2 & 3) as usize]);
            let channels = if flv_sound_byte & 1 == 1 { 2 } else { 1 };
            json!({"codec": codec, "flv_sound_format": format, "sample_rate": rate, "channels": channels})
        }
        Codec::H264 => json!({"codec": "H264", "fps": fps}),
        Codec::H265 => json!({"codec": "H265", "fps": fps}),
        Codec::Aac => json!({"codec": "AAC"}),
        Codec::Amf0 => json!({"codec": "AMF0"}),
    }
}

/// Width and height from a VP8 keyframe's header (RFC 6386 section 9.1), None for an interframe.
fn vp8_keyframe_size(b: &[u8]) -> Option<(u16, u16)> {
    let key = b.first().is_some_and(|x| x & 1 == 0);
    if !key || b.len() < 10 || b[3..6] != [0x9d, 0x01, 0x2a] {
        return None;
    }
    Some((u16::from_le_bytes([b[6], b[7]]) & 0x3fff, u16::from_le_bytes([b[8], b[9]]) & 0x3fff))
}

/// Channels from an Opus packet's TOC byte (RFC 6716 section 3.1).
fn opus_channels(b: &[u8]) -> Option<u8> {
    b.first().map(|toc| if toc & 0x04 != 0 { 2 } else { 1 })
}

fn profile_name(idc: u8) -> &'static str {
    match idc {
        66 => "Baseline",
        77 => "Main",
        88 => "Extended",
        100 => "High",
        110 => "High 10",
        122 => "High 4:2:2",
        244 => "High 4:4:4",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vp8_and_opus_details_come_from_their_frames() {
        // A 640x360 keyframe header: frame tag (key, version 0, shown), start code, sizes with scale bits.
        let key = [0x50, 0x2a, 0x01, 0x9d, 0x01, 0x2a, 0x80, 0x42, 0x68, 0x01];
        assert_eq!(vp8_keyframe_size(&key), Some((640, 360)));
        let mut inter = key;
        inter[0] |= 1;
        assert_eq!(vp8_keyframe_size(&inter), None);
        assert_eq!(vp8_keyframe_size(&key[..6]), None);
        assert_eq!(opus_channels(&[0xfc]), Some(2));
        assert_eq!(opus_channels(&[0x78]), Some(1));
        assert_eq!(opus_channels(&[]), None);
    }
}
