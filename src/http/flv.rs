//! HTTP-FLV playback: `GET /{app}/{stream}.flv[?min_cache=&max_cache=&mode=rtc&txSecret=&txTime=]`.
//!
//! The response body pulls straight from the hub reader: each poll hands hyper the stream's shared FLV tags
//! (one `Bytes` clone per tag, no copy), and hyper writes whatever is queued with one `writev`.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming};
use parking_lot::Mutex;

use super::HttpState;
use super::{error, Body};
use crate::hub::{ClientGuard, ClientHandle, EndReason, HubError, Packet, Protocol, Reader, StreamKey};
use crate::media::flv;
use crate::metrics;
use crate::names;

/// What the connection watchdog needs to tell a stalled or kicked player from an idle one.
pub struct Watch {
    handle: Arc<ClientHandle>,
    progress: Arc<Progress>,
    stream: Arc<crate::hub::Stream>,
}

#[derive(Default)]
pub struct Progress {
    /// Milliseconds since `epoch` of the body's last poll.
    last_poll_ms: AtomicU64,
    /// The stream's frame counter at that poll.
    frames_at_poll: AtomicU64,
    epoch: Option<Instant>,
    /// Set by the watchdog when it ends the connection, so the stop event carries the real reason.
    reason: Mutex<Option<String>>,
}

/// A player admitted to a stream: checks path, signature and cache parameters and subscribes. The error is
/// the response to send instead (400/403/404/503 JSON).
/// `via`: the cluster nodes an edge's pull came through (its `x-livegate-via` header), for loop refusal.
pub async fn open(
    state: &Arc<HttpState>,
    addr: SocketAddr,
    uri: &http::Uri,
    via: &[String],
) -> Result<(StreamKey, Reader, ClientGuard), Box<Response<Body>>> {
    let path = uri.path();
    let query = names::parse_query(uri.query().unwrap_or(""));
    let Some((app, name)) = path.trim_start_matches('/').strip_suffix(".flv").and_then(|p| p.split_once('/')) else {
        return Err(Box::new(error(StatusCode::BAD_REQUEST, "bad_path", "expected /{app}/{stream}.flv")));
    };
    let key = StreamKey::new(app, name);
    if let Err(e) = state.access.authorize_play(&key, &query) {
        return Err(Box::new(super::access_error(&e)));
    }
    let policy = match crate::hub::CachePolicy::for_query(&state.config, &query) {
        Ok(p) => p,
        Err(e) => return Err(Box::new(error(StatusCode::BAD_REQUEST, "bad_parameter", &e.to_string()))),
    };
    // A stream that is not here may be elsewhere in the cluster: looked up before the player waits for it.
    if let Err(e) = state.hub.locate(&key, via).await {
        return Err(Box::new(hub_error(&e)));
    }
    let guard = state.hub.register_client(Protocol::HttpFlv, Some(addr));
    if let Some(tag) = crate::access::Access::player_tag(&query) {
        let _ = guard.handle.tag.set(tag);
    } else if !via.is_empty() {
        // Another node's pull: put out when this node stops holding the stream (see cluster::service).
        let _ = guard.handle.tag.set(crate::cluster::service::edge_reader_tag(&key));
    }
    match state.hub.subscribe(&key, Protocol::HttpFlv, policy, guard.handle.clone()) {
        Ok(r) => Ok((key, r, guard)),
        Err(e) => Err(Box::new(hub_error(&e))),
    }
}

/// A player refused by the hub: 404 for a stream that is nowhere, 503 when it cannot be served now, 508 for a
/// cluster loop.
pub fn hub_error(e: &HubError) -> Response<Body> {
    metrics::global().play_refused.fetch_add(1, Ordering::Relaxed);
    match e {
        HubError::NotFound(_) | HubError::Nowhere(_) => {
            error(StatusCode::NOT_FOUND, "stream_not_found", &e.to_string())
        }
        HubError::Loop(_) => error(StatusCode::LOOP_DETECTED, "cluster_loop", &e.to_string()),
        _ => error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", &e.to_string()),
    }
}

/// The cluster nodes a request came through (`x-livegate-via: a,b`).
pub fn via(headers: &http::HeaderMap) -> Vec<String> {
    headers.get(crate::cluster::VIA_HEADER).and_then(|v| v.to_str().ok()).map(parse_via).unwrap_or_default()
}

/// An `x-livegate-via` value's node ids (at most 16: a longer chain is a loop or garbage either way).
pub fn parse_via(v: &str) -> Vec<String> {
    v.split(',').map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()).take(16).collect()
}

/// The response headers of a playing HTTP-FLV stream (besides CORS, which every response gets).
pub const PLAY_HEADERS: [(&str, &str); 3] = [
    ("content-type", "video/x-flv"),
    ("cache-control", "no-cache, no-store"),
    ("access-control-expose-headers", "Content-Type"),
];

/// HTTP-FLV through hyper: for a `.flv` request that is not the first on its connection, and for HEAD.
/// (The common case, a fresh connection's GET, is served by `flv_direct`.)
pub async fn play(
    state: &Arc<HttpState>,
    addr: SocketAddr,
    req: Request<Incoming>,
    watch: Arc<Mutex<Option<Watch>>>,
) -> Response<Body> {
    let (key, reader, guard) = match open(state, addr, req.uri(), &via(req.headers())).await {
        Ok(x) => x,
        Err(resp) => return *resp,
    };
    tracing::info!(client = guard.handle.id, peer = %addr, stream = %key, "http-flv playing");
    let progress = Arc::new(Progress { epoch: Some(Instant::now()), ..Default::default() });
    *watch.lock() =
        Some(Watch { handle: guard.handle.clone(), progress: progress.clone(), stream: reader.stream().clone() });
    let is_head = req.method() == http::Method::HEAD;
    let mut resp = if is_head {
        Response::new(super::empty())
    } else {
        Response::new(
            FlvBody {
                reader,
                guard,
                pending: VecDeque::new(),
                batch: Vec::new(),
                started: false,
                progress,
                ended: None,
            }
            .boxed(),
        )
    };
    let h = resp.headers_mut();
    for (k, v) in PLAY_HEADERS {
        h.insert(k, header::HeaderValue::from_static(v));
    }
    resp
}

struct FlvBody {
    reader: Reader,
    guard: ClientGuard,
    pending: VecDeque<Bytes>,
    batch: Vec<Arc<Packet>>,
    started: bool,
    progress: Arc<Progress>,
    ended: Option<String>,
}

impl hyper::body::Body for FlvBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if let Some(epoch) = this.progress.epoch {
            this.progress.last_poll_ms.store(epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
            this.progress
                .frames_at_poll
                .store(this.reader.stream().stats.frames_in.load(Ordering::Relaxed), Ordering::Relaxed);
        }
        if let Some(b) = this.pending.pop_front() {
            return Poll::Ready(Some(Ok(Frame::data(b))));
        }
        match this.reader.poll_batch(cx, &mut this.batch) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(())) => {
                if !this.started {
                    let t = this.reader.tracks();
                    this.pending.push_back(Bytes::copy_from_slice(&flv::file_header(t.audio, t.video)));
                    this.started = true;
                }
                let mut n = 0;
                if let Some(p) = this.batch.first() {
                    metrics::global().observe_latency(p.received.elapsed());
                }
                for p in this.batch.drain(..) {
                    let tag = p.flv_tag().clone();
                    n += tag.len();
                    this.pending.push_back(tag);
                }
                this.reader.add_bytes_out(n);
                Poll::Ready(this.pending.pop_front().map(|b| Ok(Frame::data(b))))
            }
            Poll::Ready(Err(reason)) => {
                let clean = reason == EndReason::StreamClosed;
                if let EndReason::TooSlow(_) = reason {
                    metrics::global().disconnects_slow.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(client = this.guard.handle.id, %reason, "http-flv player disconnected");
                }
                this.ended = Some(reason.to_string());
                if clean {
                    Poll::Ready(None)
                } else {
                    Poll::Ready(Some(Err(std::io::Error::other(reason.to_string()))))
                }
            }
        }
    }
}

impl Drop for FlvBody {
    fn drop(&mut self) {
        let reason =
            self.ended.take().or_else(|| self.progress.reason.lock().take()).unwrap_or_else(|| "client closed".into());
        tracing::info!(client = self.guard.handle.id, stream = %self.reader.stream().key, %reason, "http-flv stopped");
        // The reader's drop sends on_stop with this reason.
        self.reader.set_end_reason(reason);
    }
}

/// Resolves when the connection's player must go: kicked, or its socket accepted nothing for `stall` while
/// the stream kept producing (hyper stops polling a body whose socket is full, so the body cannot notice).
pub async fn watchdog(watch: Arc<Mutex<Option<Watch>>>, stall: Duration) -> String {
    let tick = (stall / 4).clamp(Duration::from_millis(100), Duration::from_secs(1));
    loop {
        tokio::time::sleep(tick).await;
        let w = watch.lock();
        let Some(w) = w.as_ref() else { continue };
        if let Some(r) = w.handle.kicked() {
            metrics::global().disconnects_kicked.fetch_add(1, Ordering::Relaxed);
            let reason = format!("kicked: {r}");
            *w.progress.reason.lock() = Some(reason.clone());
            return reason;
        }
        let Some(epoch) = w.progress.epoch else { continue };
        let since = epoch.elapsed().as_millis() as u64 - w.progress.last_poll_ms.load(Ordering::Relaxed);
        let frames_then = w.progress.frames_at_poll.load(Ordering::Relaxed);
        let stream_moved = w.stream.stats.frames_in.load(Ordering::Relaxed) > frames_then;
        if since > stall.as_millis() as u64 && stream_moved {
            metrics::global().disconnects_slow.fetch_add(1, Ordering::Relaxed);
            let reason = format!("stalled: socket accepted nothing for {:.1}s", since as f64 / 1000.0);
            *w.progress.reason.lock() = Some(reason.clone());
            return reason;
        }
    }
}
