//! `/api/v1/relays`: the HTTP face of [`Relays`](crate::rtmp::relay::Relays) (documented in `docs/openapi.yaml`).

use std::sync::Arc;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::json;

use super::HttpState;
use super::{error, json, Body};
use crate::hub::StreamKey;
use crate::rtmp::relay::RelayError;

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateRelay {
    /// `app/name` here.
    stream: String,
    /// The target: `rtmp://host[:port]/app/name[?query]`.
    url: String,
}

pub async fn handle(state: &Arc<HttpState>, req: Request<Incoming>, parts: &[&str]) -> Response<Body> {
    let relays = &state.relays;
    let method = req.method().clone();
    match (method, parts) {
        (Method::GET, []) => json(StatusCode::OK, &json!({ "relays": relays.list() })),
        (Method::POST, []) => {
            let body = match super::read_body(state, req.into_body(), 16 * 1024).await {
                Ok(b) => b,
                Err(r) => return *r,
            };
            let r: CreateRelay = match serde_json::from_slice(&body) {
                Ok(r) => r,
                Err(e) => return error(StatusCode::BAD_REQUEST, "bad_json", &e.to_string()),
            };
            let Some((app, name)) = r.stream.split_once('/') else {
                return error(StatusCode::BAD_REQUEST, "invalid_field", "stream: expected app/name");
            };
            for (what, v) in [("app", app), ("stream", name)] {
                if let Err(e) = crate::names::validate(what, v) {
                    return error(StatusCode::BAD_REQUEST, "invalid_field", &format!("stream: {e}"));
                }
            }
            match relays.create(StreamKey::new(app, name), r.url) {
                Ok(v) => json(StatusCode::CREATED, &v),
                Err(e) => relay_error(&e),
            }
        }
        (Method::GET, [id]) => match relays.get(id) {
            Some(v) => json(StatusCode::OK, &v),
            None => relay_error(&RelayError::NotFound((*id).to_owned())),
        },
        (Method::DELETE, [id]) => match relays.delete(id) {
            Ok(()) => json(StatusCode::OK, &json!({ "id": id, "deleted": true })),
            Err(e) => relay_error(&e),
        },
        (m, [] | [_]) => {
            error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", &format!("{m} is not allowed here"))
        }
        _ => error(StatusCode::NOT_FOUND, "not_found", "no such relay route: /api/v1/relays[/{id}]"),
    }
}

fn relay_error(e: &RelayError) -> Response<Body> {
    let (status, code) = match e {
        RelayError::BadUrl(_) => (StatusCode::BAD_REQUEST, "invalid_field"),
        RelayError::Exists(_) => (StatusCode::CONFLICT, "conflict"),
        RelayError::NotFound(_) => (StatusCode::NOT_FOUND, "relay_not_found"),
    };
    error(status, code, &e.to_string())
}
