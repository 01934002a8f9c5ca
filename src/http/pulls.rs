//! `/api/v1/pulls`: the HTTP face of [`Pulls`](crate::cluster::Pulls) (documented in `docs/openapi.yaml`).

use std::sync::Arc;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::json;

use super::HttpState;
use super::{error, json, Body};
use crate::cluster::PullError;
use crate::hub::StreamKey;

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct CreatePull {
    /// `app/name` here.
    stream: String,
    /// The source: `http://host[:port]/app/name.flv[?query]`, `http://…/name.m3u8` (live HLS, MPEG-TS) or
    /// `rtmp://host[:port]/app/name`.
    url: String,
    #[serde(default)]
    on_demand: bool,
}

pub async fn handle(state: &Arc<HttpState>, req: Request<Incoming>, parts: &[&str]) -> Response<Body> {
    let pulls = &state.pulls;
    let method = req.method().clone();
    match (method, parts) {
        (Method::GET, []) => json(StatusCode::OK, &json!({ "pulls": pulls.list() })),
        (Method::POST, []) => {
            let body = match super::read_body(state, req.into_body(), 16 * 1024).await {
                Ok(b) => b,
                Err(r) => return *r,
            };
            let r: CreatePull = match serde_json::from_slice(&body) {
                Ok(r) => r,
                Err(e) => return error(StatusCode::BAD_REQUEST, "bad_json", &e.to_string()),
            };
            let Some((app, name)) = r.stream.split_once('/') else {
                return error(StatusCode::BAD_REQUEST, "invalid_field", "stream: expected app/name");
            };
            if let Err(e) = state
                .access
                .check_app(app)
                .and_then(|()| crate::names::validate("stream", name).map_err(crate::access::AccessError::from))
            {
                return error(StatusCode::BAD_REQUEST, "invalid_field", &format!("stream: {e}"));
            }
            match pulls.create(StreamKey::new(app, name), r.url, r.on_demand) {
                Ok(v) => json(StatusCode::CREATED, &v),
                Err(e) => pull_error(&e),
            }
        }
        (Method::GET, [app, name]) => match pulls.get(&StreamKey::new(app, name)) {
            Some(v) => json(StatusCode::OK, &v),
            None => pull_error(&PullError::NotFound(format!("{app}/{name}"))),
        },
        (Method::DELETE, [app, name]) => match pulls.delete(&StreamKey::new(app, name)) {
            Ok(()) => json(StatusCode::OK, &json!({ "stream": format!("{app}/{name}"), "deleted": true })),
            Err(e) => pull_error(&e),
        },
        (m, [] | [_, _]) => {
            error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", &format!("{m} is not allowed here"))
        }
        _ => error(StatusCode::NOT_FOUND, "not_found", "no such pull route: /api/v1/pulls[/{app}/{stream}]"),
    }
}

fn pull_error(e: &PullError) -> Response<Body> {
    let (status, code) = match e {
        PullError::BadUrl(_) => (StatusCode::BAD_REQUEST, "invalid_field"),
        PullError::Exists(_) | PullError::Published(_) => (StatusCode::CONFLICT, "conflict"),
        PullError::NotFound(_) => (StatusCode::NOT_FOUND, "pull_not_found"),
    };
    error(status, code, &e.to_string())
}
