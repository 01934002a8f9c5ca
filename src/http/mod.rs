//! The HTTP port: HTTP-FLV playback, the control API, `/metrics` and `/healthz` (hyper, HTTP/1.1).

pub mod api;
pub mod api_guard;
pub mod files;
pub mod flv;
pub mod flv_direct;
pub mod hls;
pub mod https;
pub mod mixes;
pub mod pulls;
pub mod relays;
pub mod rooms;
pub mod whep;
pub mod whip;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use tokio::net::TcpListener;

use crate::metrics;
use crate::netio;

pub type Body = BoxBody<Bytes, std::io::Error>;

/// What the HTTP adapter uses: the hub, the services it fronts (HLS, recordings, WHEP/WHIP, mixes), the
/// config, the access checks and the connection limits.
pub struct HttpState {
    pub hub: crate::hub::Hub,
    pub hls: Arc<crate::hls::Hls>,
    pub recorder: Arc<crate::record::Recorder>,
    pub whep: Arc<crate::webrtc::Whep>,
    pub whip: Arc<crate::webrtc::Whip>,
    pub mixes: Arc<crate::mix::Mixes>,
    pub config: Arc<crate::config::Config>,
    pub access: crate::access::Access,
    pub limits: Arc<crate::conn::ConnLimits>,
    pub rooms: Arc<crate::rooms::RoomService>,
    pub pulls: Arc<crate::cluster::Pulls>,
    pub relays: Arc<crate::rtmp::relay::Relays>,
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
    /// The bound RTMP (and RTMPS) ports, for the push and play URLs rooms hand out.
    pub rtmp_port: u16,
    pub rtmps_port: Option<u16>,
}

impl HttpState {
    /// The control API's access settings.
    pub fn api_policy(&self) -> api_guard::ApiPolicy<'_> {
        let h = &self.config.http;
        api_guard::ApiPolicy { token: &h.api_token, read_token: &h.api_read_token, cors_origins: &h.api_cors_origins }
    }
}

/// Accepts HTTP connections until `shutdown` fires.
pub async fn serve(listener: TcpListener, state: Arc<HttpState>, shutdown: tokio::sync::watch::Receiver<bool>) {
    let st = state.clone();
    crate::conn::accept_loop(
        listener,
        state.limits.clone(),
        shutdown,
        crate::conn::Listener::Http,
        move |sock, addr, permit| {
            let state = st.clone();
            // Small send buffer: a stalled player's backlog stays in the hub, where max_cache can skip it.
            netio::tune_media_socket(&sock, Some(netio::PLAYER_SEND_BUFFER));
            tokio::spawn(async move {
                match peek_first_request(&sock).await {
                    Err(()) => return,
                    Ok(flv_direct::Sniff::FlvGet { head_len, uri, http10, via }) => {
                        flv_direct::serve(state, addr, sock, head_len, &uri, http10, &via).await;
                        drop(permit);
                        return;
                    }
                    Ok(_) => {}
                }
                serve_hyper(state, addr, sock, false, false, permit).await;
            });
        },
    )
    .await;
}

use std::sync::atomic::Ordering;

/// Serves one connection's requests with hyper (HTTP/1.1, or HTTP/2 when `h2`: TLS connections that chose it)
/// until it closes, or an HTTP-FLV player on it stalls.
/// The connection's slot in the connection limits. Requests carry it, so what outlives its request on the
/// connection (a WebSocket after its upgrade) keeps holding it.
#[derive(Clone)]
pub struct HeldPermit(pub Arc<crate::conn::ConnPermit>);

pub(crate) async fn serve_hyper<I>(
    state: Arc<HttpState>,
    addr: SocketAddr,
    io: I,
    h2: bool,
    tls: bool,
    permit: crate::conn::ConnPermit,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let watch: Arc<Mutex<Option<flv::Watch>>> = Arc::default();
    let svc_watch = watch.clone();
    let svc_state = state.clone();
    let held = HeldPermit(Arc::new(permit));
    let svc = service_fn(move |mut req: Request<Incoming>| {
        if tls {
            req.extensions_mut().insert(rooms::Secure);
        }
        req.extensions_mut().insert(held.clone());
        let state = svc_state.clone();
        let watch = svc_watch.clone();
        async move { Ok::<_, Infallible>(route(state, addr, req, watch).await) }
    });
    let io = TokioIo::new(io);
    let served = async {
        if h2 {
            hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                .timer(hyper_util::rt::TokioTimer::new())
                .serve_connection(io, svc)
                .await
        } else {
            hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .writev(true)
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(io, svc)
                .with_upgrades()
                .await
        }
    };
    tokio::select! {
        r = served => {
            if let Err(e) = r {
                tracing::debug!(peer = %addr, h2, error = %e, "http connection error");
            }
        }
        reason = flv::watchdog(watch, state.config.stall_timeout()) => {
            tracing::info!(peer = %addr, %reason, "http-flv player disconnected");
        }
    }
}

/// Looks at a new connection's first request without consuming it. `Err` when the client sent nothing
/// within the header timeout or hung up: the connection is dropped, as hyper would.
async fn peek_first_request(sock: &tokio::net::TcpStream) -> Result<flv_direct::Sniff, ()> {
    let mut buf = vec![0u8; flv_direct::SNIFF_BYTES];
    // A head normally arrives in one segment; give a split one a few short chances, then let hyper have it.
    for _ in 0..4 {
        let n = match tokio::time::timeout(HEADER_TIMEOUT, sock.peek(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => n,
            _ => return Err(()),
        };
        match flv_direct::sniff(&buf[..n]) {
            flv_direct::Sniff::Partial => tokio::time::sleep(Duration::from_millis(20)).await,
            s => return Ok(s),
        }
    }
    Ok(flv_direct::Sniff::Other)
}

/// Reads a request body of at most `limit` bytes within `http.body_timeout_secs`: a body that is too large
/// gets 413, one that does not arrive in time 408, so a client announcing a body and sending nothing (or
/// trickling it) cannot hold a connection and its task.
pub async fn read_body(state: &HttpState, body: Incoming, limit: usize) -> Result<Bytes, Box<Response<Body>>> {
    let timeout = Duration::from_secs_f64(state.config.http.body_timeout_secs);
    match tokio::time::timeout(timeout, http_body_util::Limited::new(body, limit).collect()).await {
        Ok(Ok(b)) => Ok(b.to_bytes()),
        Ok(Err(e)) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => Err(Box::new(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            &format!("the request body exceeds {limit} bytes"),
        ))),
        Ok(Err(e)) => {
            Err(Box::new(error(StatusCode::BAD_REQUEST, "bad_body", &format!("cannot read the request body: {e}"))))
        }
        Err(_) => {
            crate::metrics::global().body_timeouts.fetch_add(1, Ordering::Relaxed);
            let mut r = error(
                StatusCode::REQUEST_TIMEOUT,
                "body_timeout",
                &format!("the request body did not arrive within {timeout:?} (http.body_timeout_secs)"),
            );
            r.headers_mut().insert(header::CONNECTION, header::HeaderValue::from_static("close"));
            Err(Box::new(r))
        }
    }
}

/// How long a client may take to send its request head.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

async fn route(
    state: Arc<HttpState>,
    addr: SocketAddr,
    req: Request<Incoming>,
    watch: Arc<Mutex<Option<flv::Watch>>>,
) -> Response<Body> {
    let path = req.uri().path().to_owned();
    // Room calls are client-facing (members carry their own credentials): they answer CORS like playback. The
    // room routes of the control API check the API guard themselves, which refuses cross-site callers.
    let is_rooms = path == "/api/v1/rooms" || path.starts_with("/api/v1/rooms/");
    let is_api = path.starts_with("/api/") && !is_rooms;
    let origin = req.headers().get(header::ORIGIN).and_then(|v| v.to_str().ok()).map(str::to_owned);
    // The API answers CORS only for the origins listed in http.api_cors_origins; playback, WHIP/WHEP and the
    // rest use http.cors_origin (players run in pages of any site, and carry their own credentials).
    let api_origin = match is_api {
        true => api_guard::allowed_origin(&state.api_policy(), origin.as_deref()).map(str::to_owned),
        false => None,
    };
    let mut resp = if req.method() == Method::OPTIONS && is_api && api_origin.is_none() {
        let refusal = api_guard::ApiRefusal::CrossSite(origin.unwrap_or_else(|| "(none)".into()));
        error(StatusCode::FORBIDDEN, "cross_site", &refusal.to_string())
    } else if req.method() == Method::OPTIONS {
        let mut r = preflight();
        if path.starts_with("/whep/") || path.starts_with("/whip/") {
            // WHEP/WHIP clients learn the offer type and the ICE servers before they POST.
            let h = r.headers_mut();
            h.insert("accept-post", "application/sdp".parse().expect("static"));
            for link in state.config.webrtc.link_headers() {
                if let Ok(v) = link.parse() {
                    h.append(header::LINK, v);
                }
            }
        }
        r
    } else if path == "/healthz" {
        json(StatusCode::OK, &serde_json::json!({"status": "ok"}))
    } else if path == "/metrics" && req.method() == Method::GET {
        let mut text = metrics::global().render(&state.hub);
        state.pulls.render_metrics(&mut text);
        state.relays.render_metrics(&mut text);
        if let Some(c) = &state.cluster {
            c.render_metrics(&mut text);
        }
        let mut r = Response::new(full(text));
        r.headers_mut().insert(header::CONTENT_TYPE, "text/plain; version=0.0.4".parse().expect("static"));
        r
    } else if path.starts_with("/recordings/") && (req.method() == Method::GET || req.method() == Method::HEAD) {
        files::serve(state.recorder.root(), path.trim_start_matches("/recordings/"), &req).await
    } else if path.starts_with("/whep/") {
        whep::handle(&state, addr, req).await
    } else if path.starts_with("/whip/") {
        whip::handle(&state, addr, req).await
    } else if is_rooms {
        rooms::handle(&state, addr, req).await
    } else if path.starts_with("/api/") {
        api::handle(&state, addr, req).await
    } else if path.ends_with(".flv") && (req.method() == Method::GET || req.method() == Method::HEAD) {
        flv::play(&state, addr, req, watch).await
    } else if (path.ends_with(".m3u8")
        || path.ends_with(".ts")
        || path.ends_with(".m4s")
        || (path.ends_with(".mp4") && path.matches('/').count() == 3))
        && req.method() == Method::GET
    {
        hls::handle(&state, &req).await
    } else if req.method() == Method::GET || req.method() == Method::HEAD {
        static_file(&state.config.http.web_root, &path).await
    } else {
        error(StatusCode::NOT_FOUND, "not_found", &format!("no route for {} {}", req.method(), path))
    };
    let h = resp.headers_mut();
    if is_api {
        h.insert(header::VARY, header::HeaderValue::from_static("Origin"));
        if let Some(v) = api_origin.and_then(|o| o.parse().ok()) {
            h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, v);
        }
    } else {
        let cors = state.config.http.cors_origin.parse().unwrap_or(header::HeaderValue::from_static("*"));
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, cors);
    }
    resp
}

/// Serves the demo page and its assets from `http.web_root`.
async fn static_file(root: &str, path: &str) -> Response<Body> {
    let rel = if path == "/" { "index.html" } else { path.trim_start_matches('/') };
    // Only plain relative paths: no traversal, no hidden files, no absolute paths.
    let safe = rel.split('/').all(|seg| !seg.is_empty() && !seg.starts_with('.') && !seg.contains('\\'));
    if !safe {
        return error(StatusCode::NOT_FOUND, "not_found", &format!("no file {path}"));
    }
    let file = std::path::Path::new(root).join(rel);
    match tokio::fs::read(&file).await {
        Ok(data) => {
            let ctype = match file.extension().and_then(|e| e.to_str()) {
                Some("html") => "text/html; charset=utf-8",
                Some("js" | "mjs") => "text/javascript; charset=utf-8",
                Some("css") => "text/css; charset=utf-8",
                Some("png") => "image/png",
                Some("svg") => "image/svg+xml",
                Some("json") => "application/json",
                _ => "application/octet-stream",
            };
            let mut r = Response::new(full(data));
            r.headers_mut().insert(header::CONTENT_TYPE, ctype.parse().expect("static"));
            r
        }
        Err(_) if path == "/" => json(
            StatusCode::OK,
            &serde_json::json!({
                "name": "livegate",
                "version": env!("CARGO_PKG_VERSION"),
                "api": "/api/v1/streams",
                "play": "/{app}/{stream}.flv",
                "note": format!("no demo page: {root}/index.html not found (http.web_root)"),
            }),
        ),
        Err(_) => error(StatusCode::NOT_FOUND, "not_found", &format!("no file {path}")),
    }
}

fn preflight() -> Response<Body> {
    let mut r = Response::new(empty());
    *r.status_mut() = StatusCode::NO_CONTENT;
    let h = r.headers_mut();
    h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, "GET, HEAD, POST, PATCH, DELETE, OPTIONS".parse().expect("static"));
    h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, "Authorization, Content-Type, Range".parse().expect("static"));
    h.insert(header::ACCESS_CONTROL_MAX_AGE, "86400".parse().expect("static"));
    r
}

pub fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|never: Infallible| match never {}).boxed()
}

pub fn empty() -> Body {
    full(Bytes::new())
}

pub fn json(status: StatusCode, v: &serde_json::Value) -> Response<Body> {
    let mut r = Response::new(full(serde_json::to_vec_pretty(v).unwrap_or_default()));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, "application/json".parse().expect("static"));
    r
}

/// The answer to a refused play request (signature, unknown app, bad name), the same for every protocol.
pub fn access_error(e: &crate::access::AccessError) -> Response<Body> {
    use crate::access::AccessError;
    crate::metrics::global().play_refused.fetch_add(1, Ordering::Relaxed);
    let (status, code) = match e {
        AccessError::Auth(_) | AccessError::Refused(_) => (StatusCode::FORBIDDEN, "forbidden"),
        AccessError::Claim(crate::access::ClaimRefusal::Held(_)) => (StatusCode::CONFLICT, "stream_busy"),
        AccessError::Claim(crate::access::ClaimRefusal::NotHere(_)) => (StatusCode::FORBIDDEN, "not_an_origin"),
        AccessError::Claim(crate::access::ClaimRefusal::Unavailable(_)) => {
            (StatusCode::SERVICE_UNAVAILABLE, "directory_unavailable")
        }
        AccessError::UnknownApp(_) => (StatusCode::NOT_FOUND, "unknown_app"),
        _ => (StatusCode::BAD_REQUEST, "bad_name"),
    };
    error(status, code, &e.to_string())
}

/// The error shape every HTTP error uses: `{"error": code, "detail": human-readable reason}`.
pub fn error(status: StatusCode, code: &str, detail: &str) -> Response<Body> {
    json(status, &serde_json::json!({"error": code, "detail": detail}))
}
