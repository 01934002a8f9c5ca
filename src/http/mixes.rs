//! `/api/v1/mixes`: the HTTP face of [`Mixes`](crate::mix::Mixes) (documented in `docs/openapi.yaml`).

use std::sync::Arc;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::json;

use super::HttpState;
use super::{error, json, Body};
use crate::mix::MixError;

pub async fn handle(state: &Arc<HttpState>, req: Request<Incoming>, parts: &[&str]) -> Response<Body> {
    let mixes = &state.mixes;
    let method = req.method().clone();
    match (method, parts) {
        (Method::GET, []) => json(StatusCode::OK, &json!({ "mixes": mixes.list(), "decoders": mixes.decoders() })),
        (Method::POST, []) => match read_json(state, req).await {
            Ok(r) => reply(StatusCode::CREATED, mixes.create(r)),
            Err(resp) => resp,
        },
        (Method::GET, [id]) => reply(StatusCode::OK, mixes.get(id)),
        (Method::PATCH, [id]) => match read_json(state, req).await {
            Ok(r) => reply(StatusCode::OK, mixes.patch(id, r)),
            Err(resp) => resp,
        },
        (Method::DELETE, [id]) => {
            reply(StatusCode::OK, mixes.delete(id).map(|()| json!({ "id": id, "stopped": true })))
        }
        (m, [] | [_]) => {
            error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", &format!("{m} is not allowed here"))
        }
        _ => error(StatusCode::NOT_FOUND, "not_found", "no such mix route"),
    }
}

async fn read_json<T: serde::de::DeserializeOwned>(
    state: &HttpState,
    req: Request<Incoming>,
) -> Result<T, Response<Body>> {
    let body = super::read_body(state, req.into_body(), 256 * 1024).await.map_err(|r| *r)?;
    serde_json::from_slice(&body).map_err(|e| error(StatusCode::BAD_REQUEST, "bad_json", &e.to_string()))
}

fn reply(ok: StatusCode, r: Result<serde_json::Value, MixError>) -> Response<Body> {
    match r {
        Ok(v) => json(ok, &v),
        Err(MixError::Invalid(e)) => json(
            StatusCode::BAD_REQUEST,
            &json!({ "error": "invalid_field", "field": e.field, "detail": e.to_string() }),
        ),
        Err(e @ MixError::Conflict(_)) => error(StatusCode::CONFLICT, "conflict", &e.to_string()),
        Err(e @ MixError::NotFound(_)) => error(StatusCode::NOT_FOUND, "mix_not_found", &e.to_string()),
        Err(e @ MixError::TooMany(_)) => error(StatusCode::TOO_MANY_REQUESTS, "too_many_mixes", &e.to_string()),
        Err(e @ (MixError::Gst(_) | MixError::Template(_))) => {
            error(StatusCode::INTERNAL_SERVER_ERROR, "mix_failed", &e.to_string())
        }
    }
}
