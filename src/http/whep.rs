//! WHEP signalling: `POST /whep/{app}/{stream}` (SDP offer → 201 + answer + Location),
//! `DELETE /whep/session/{id}`, `PATCH` → 405 (livegate is ICE-lite and puts every candidate in its answer).

use std::net::SocketAddr;
use std::sync::Arc;

use http::{header, Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use super::HttpState;
use super::{error, full, Body};
use crate::hub::StreamKey;
use crate::names;
use crate::webrtc::WhepError;

pub async fn handle(state: &Arc<HttpState>, addr: SocketAddr, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().trim_start_matches('/').to_owned();
    let parts: Vec<&str> = path.split('/').collect();
    match (req.method().clone(), parts.as_slice()) {
        (Method::DELETE, ["whep", "session", id]) => session_deleted(state.whep.delete(id).await, "WHEP", id),
        (Method::PATCH, ["whep", "session", _]) => trickle_not_supported(),
        (Method::POST, ["whep", app, stream]) => play(state, addr, StreamKey::new(app, stream), req).await,
        (m, ["whep", ..]) => {
            error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", &format!("{m} is not allowed on /{path}"))
        }
        _ => error(StatusCode::NOT_FOUND, "not_found", &format!("no route /{path}")),
    }
}

/// The request's query joined with its bearer token: WHIP/WHEP clients may send the signature
/// ("txSecret=..&txTime=..") either way.
pub(super) fn query_with_bearer(req: &Request<Incoming>) -> String {
    let mut q = req.uri().query().unwrap_or("").to_owned();
    if let Some(bearer) =
        req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "))
    {
        if !q.is_empty() {
            q.push('&');
        }
        q.push_str(bearer);
    }
    q
}

/// 201 with the SDP answer, the session's Location and the configured ICE servers as Link headers.
pub(super) fn sdp_created(state: &HttpState, answer: String, location: &str) -> Response<Body> {
    let mut r = Response::new(full(answer));
    *r.status_mut() = StatusCode::CREATED;
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, "application/sdp".parse().expect("static"));
    if let Ok(v) = location.parse() {
        h.insert(header::LOCATION, v);
    }
    h.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, "Location, Link".parse().expect("static"));
    for link in state.config.webrtc.link_headers() {
        if let Ok(v) = link.parse() {
            h.append(header::LINK, v);
        }
    }
    r
}

/// PATCH on a session: livegate is ICE-lite and has nothing to trickle (WHIP/WHEP allow 405 here).
/// WHIP and WHEP offers must be `application/sdp` (415 otherwise).
pub(super) fn sdp_content_type(req: &Request<Incoming>) -> Result<(), Box<Response<Body>>> {
    let ctype = req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    if ctype.starts_with("application/sdp") {
        return Ok(());
    }
    Err(Box::new(error(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
        "the offer must be Content-Type: application/sdp",
    )))
}

/// Reads an SDP offer body (at most 64 KiB, within `http.body_timeout_secs`).
pub(super) async fn read_offer(state: &HttpState, body: Incoming) -> Result<String, Box<Response<Body>>> {
    let b = super::read_body(state, body, 64 * 1024).await?;
    Ok(String::from_utf8_lossy(&b).into_owned())
}

/// The answer to a session DELETE (RFC 9725 / WHEP): 200, or 404 for a session that does not exist.
pub(super) fn session_deleted(found: bool, kind: &str, id: &str) -> Response<Body> {
    if found {
        Response::new(super::empty())
    } else {
        error(StatusCode::NOT_FOUND, "session_not_found", &format!("no {kind} session {id}"))
    }
}

pub(super) fn trickle_not_supported() -> Response<Body> {
    let mut r = error(
        StatusCode::METHOD_NOT_ALLOWED,
        "trickle_not_supported",
        "livegate is ICE-lite and sends all its candidates in the answer; trickle ICE is not needed",
    );
    r.headers_mut().insert(header::ALLOW, "DELETE, OPTIONS".parse().expect("static"));
    r
}

async fn play(state: &Arc<HttpState>, addr: SocketAddr, key: StreamKey, req: Request<Incoming>) -> Response<Body> {
    if let Err(r) = sdp_content_type(&req) {
        return *r;
    }
    let mut query = names::parse_query(&query_with_bearer(&req));
    if let Err(e) = state.access.authorize_play(&key, &query) {
        return super::access_error(&e);
    }
    // WebRTC is the low-latency path: viewers get the rtc cache policy unless they ask otherwise (?mode=live,
    // or explicit min_cache/max_cache). With the player defaults (start 1 s back, lag 3 s before skipping),
    // every join bursts seconds of video into UDP, and 250 viewers of one stream fell behind in the load test.
    if names::query_get(&query, "mode").is_none() {
        query.push(("mode".into(), "rtc".into()));
    }
    let policy = match crate::hub::CachePolicy::for_query(&state.config, &query) {
        Ok(p) => p,
        Err(e) => return error(StatusCode::BAD_REQUEST, "bad_parameter", &e.to_string()),
    };
    let offer = match read_offer(state, req.into_body()).await {
        Ok(o) => o,
        Err(r) => return *r,
    };
    // A stream that is not here may be elsewhere in the cluster: looked up before any WebRTC work.
    if let Err(e) = state.hub.locate(&key, &[]).await {
        return super::flv::hub_error(&e);
    }
    let tag = crate::access::Access::player_tag(&query);
    match state.whep.play(&key, offer, policy, Some(addr), tag).await {
        Ok((id, answer)) => sdp_created(state, answer, &format!("/whep/session/{id}")),
        Err(e @ WhepError::NotFound(_)) => error(StatusCode::NOT_FOUND, "stream_not_found", &e.to_string()),
        Err(e @ WhepError::BadOffer(_)) => error(StatusCode::BAD_REQUEST, "bad_offer", &e.to_string()),
        Err(e @ WhepError::NoCodec) => error(StatusCode::NOT_ACCEPTABLE, "no_usable_codec", &e.to_string()),
        Err(e @ WhepError::Internal(_)) => error(StatusCode::INTERNAL_SERVER_ERROR, "webrtc_error", &e.to_string()),
        Err(WhepError::Overloaded(o)) => {
            crate::metrics::global().whep_overloaded.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let mut r = error(StatusCode::SERVICE_UNAVAILABLE, "overloaded", &o.to_string());
            r.headers_mut().insert(hyper::header::RETRY_AFTER, o.retry_after.as_secs().max(1).into());
            r
        }
    }
}
