//! HLS over HTTP: `GET /{app}/{stream}.m3u8[?_HLS_msn=&_HLS_part=&_HLS_skip=YES]`, and media under
//! `GET /{app}/{stream}/`: `{instance}-{seq}.ts` (MPEG-TS), `{instance}-init{n}.mp4`, `{instance}-{msn}.m4s`
//! and `{instance}-{msn}.{part}.m4s` (CMAF).

use std::sync::Arc;

use http::{header, Request, Response, StatusCode};
use hyper::body::Incoming;

use super::HttpState;
use super::{error, full, Body};
use crate::hls::HlsError;
use crate::hub::StreamKey;
use crate::names;

pub async fn handle(state: &Arc<HttpState>, req: &Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().trim_start_matches('/');
    let query_str = req.uri().query().unwrap_or("");
    let query = names::parse_query(query_str);
    let parts: Vec<&str> = path.split('/').collect();
    let (key, segment) = match parts.as_slice() {
        [app, file] if file.ends_with(".m3u8") => (StreamKey::new(app, file.trim_end_matches(".m3u8")), None),
        [app, stream, file] if file.ends_with(".ts") || file.ends_with(".m4s") || file.ends_with(".mp4") => {
            (StreamKey::new(app, stream), Some(*file))
        }
        _ => return error(StatusCode::BAD_REQUEST, "bad_path", "expected /{app}/{stream}.m3u8"),
    };
    if let Err(e) = state.access.authorize_play(&key, &query) {
        return super::access_error(&e);
    }
    if segment.is_none() {
        // A stream that is not here may be elsewhere in the cluster: looked up before waiting for segments.
        if let Err(e) = state.hub.locate(&key, &[]).await {
            return super::flv::hub_error(&e);
        }
    }
    match segment {
        None => match state.hls.playlist(&key, query_str).await {
            Ok((text, blocked)) => {
                let mut r = Response::new(full(text));
                let h = r.headers_mut();
                h.insert(header::CONTENT_TYPE, "application/vnd.apple.mpegurl".parse().expect("static"));
                // A blocking reload's answer is the playlist as of the part its query names: a CDN may keep it
                // (keyed by the query). Other live playlists change every part or segment: a second at most.
                let cache = if blocked { "public, max-age=60" } else { "public, max-age=1" };
                h.insert(header::CACHE_CONTROL, cache.parse().expect("static"));
                r
            }
            Err(e @ HlsError::NotFound(_)) => error(StatusCode::NOT_FOUND, "stream_not_found", &e.to_string()),
            Err(e @ HlsError::NotReady(_)) => error(StatusCode::SERVICE_UNAVAILABLE, "not_ready", &e.to_string()),
            Err(e @ HlsError::BadRequest(_)) => error(StatusCode::BAD_REQUEST, "bad_request", &e.to_string()),
            Err(e @ HlsError::Busy(_)) => error(StatusCode::SERVICE_UNAVAILABLE, "busy", &e.to_string()),
        },
        Some(file) if !file.ends_with(".ts") => match state.hls.media_file(&key, file).await {
            Some(m) => {
                let mut r = Response::new(full(m.data));
                let h = r.headers_mut();
                h.insert(header::CONTENT_TYPE, m.content_type.parse().expect("static"));
                h.insert(header::CACHE_CONTROL, "public, max-age=86400, immutable".parse().expect("static"));
                r
            }
            None => error(StatusCode::NOT_FOUND, "segment_not_found", &format!("no {file} for {key}")),
        },
        Some(file) => match state.hls.segment(&key, file) {
            Some(data) => {
                let mut r = Response::new(full(data));
                let h = r.headers_mut();
                h.insert(header::CONTENT_TYPE, "video/mp2t".parse().expect("static"));
                // A segment URL names one immutable piece of media (the instance id changes per segmenter run).
                h.insert(header::CACHE_CONTROL, "public, max-age=86400, immutable".parse().expect("static"));
                r
            }
            None => error(StatusCode::NOT_FOUND, "segment_not_found", &format!("no segment {file} for {key}")),
        },
    }
}
