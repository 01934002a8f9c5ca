//! WHIP signalling (RFC 9725): `POST /whip/{app}/{stream}` (sendonly SDP offer → 201 + answer + Location),
//! `DELETE /whip/session/{id}`, `PATCH` → 405 (livegate is ICE-lite and puts every candidate in its answer).
//! Publishing rules are RTMP's: signed URLs (query, or the query string as the bearer token), the on_publish
//! webhook, and one publisher per stream (409).

use std::net::SocketAddr;
use std::sync::Arc;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use super::HttpState;
use super::{error, Body};
use crate::access::Op;
use crate::hub::{Protocol, PublisherInfo, StreamKey};
use crate::names;
use crate::webrtc::WhipError;

pub async fn handle(state: &Arc<HttpState>, addr: SocketAddr, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().trim_start_matches('/').to_owned();
    let parts: Vec<&str> = path.split('/').collect();
    match (req.method().clone(), parts.as_slice()) {
        (Method::DELETE, ["whip", "session", id]) => {
            super::whep::session_deleted(state.whip.delete(id).await, "WHIP", id)
        }
        (Method::PATCH, ["whip", "session", _]) => super::whep::trickle_not_supported(),
        (Method::POST, ["whip", app, stream]) => publish(state, addr, StreamKey::new(app, stream), req).await,
        (m, ["whip", ..]) => {
            error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", &format!("{m} is not allowed on /{path}"))
        }
        _ => error(StatusCode::NOT_FOUND, "not_found", &format!("no route /{path}")),
    }
}

async fn publish(state: &Arc<HttpState>, addr: SocketAddr, key: StreamKey, req: Request<Incoming>) -> Response<Body> {
    if let Err(r) = super::whep::sdp_content_type(&req) {
        return *r;
    }
    let query_str = super::whep::query_with_bearer(&req);
    let query = names::parse_query(&query_str);
    let guard = state.hub.register_client(Protocol::Whip, Some(addr));
    let info =
        PublisherInfo { client_id: guard.handle.id, protocol: Protocol::Whip, addr: Some(addr), param: query_str };
    if let Err(e) = state.access.authorize(Op::Publish, &key, &query, &info).await {
        return super::access_error(&e);
    }
    let offer = match super::whep::read_offer(state, req.into_body()).await {
        Ok(o) => o,
        Err(r) => return *r,
    };
    match state.whip.publish(key, offer, guard, info).await {
        Ok((id, answer)) => super::whep::sdp_created(state, answer, &format!("/whip/session/{id}")),
        Err(e @ WhipError::Taken(_)) => error(StatusCode::CONFLICT, "stream_busy", &e.to_string()),
        Err(e @ WhipError::BadOffer(_)) => error(StatusCode::BAD_REQUEST, "bad_offer", &e.to_string()),
        Err(e @ WhipError::NoCodec(_)) => error(StatusCode::NOT_ACCEPTABLE, "no_usable_codec", &e.to_string()),
        Err(e @ WhipError::Internal(_)) => error(StatusCode::INTERNAL_SERVER_ERROR, "webrtc_error", &e.to_string()),
    }
}
