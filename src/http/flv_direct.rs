//! HTTP-FLV on a connection of its own, without hyper: the common case (a player opens a connection and GETs
//! `/{app}/{stream}.flv`). The HTTP port peeks at each new connection's first request; if it is such a GET,
//! the connection is served here, so that once the player has caught up with live its socket can be parked
//! for direct fan-out (`hub::fanout`): a thousand players then cost the stream one `writev` each per flush
//! and no task wake-ups. Anything else (other paths, HEAD, a `.flv` GET later on a keep-alive connection)
//! goes to hyper, whose `flv::play` serves the same stream the ordinary way.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Response;
use http_body_util::BodyExt;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tracing::Instrument;

use super::Body;
use super::HttpState;
use crate::hub::fanout::{chunk_frame, Format, Slot};
use crate::hub::{EndReason, Packet};
use crate::media::flv;
use crate::metrics;
use crate::netio::{self, SharedStream};

/// How much of a first request is looked at; longer heads go to hyper.
pub const SNIFF_BYTES: usize = 8192;

/// What a connection's first bytes are.
#[derive(Debug, PartialEq, Eq)]
pub enum Sniff {
    /// A complete `GET /….flv` head of `head_len` bytes; `via`: the cluster nodes an edge's pull came
    /// through (its `x-livegate-via` header).
    FlvGet { head_len: usize, uri: String, http10: bool, via: Vec<String> },
    /// Not complete yet.
    Partial,
    /// Anything else: hyper's.
    Other,
}

/// Classifies a connection's first bytes (pure, for the peek).
pub fn sniff(buf: &[u8]) -> Sniff {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Complete(head_len)) => {
            let (Some(method), Some(path), Some(version)) = (req.method, req.path, req.version) else {
                return Sniff::Other;
            };
            let has_body = req.headers.iter().any(|h| {
                h.name.eq_ignore_ascii_case("content-length") && h.value != b"0"
                    || h.name.eq_ignore_ascii_case("transfer-encoding")
            });
            let path_only = path.split('?').next().unwrap_or("");
            // Exactly the routes `http::route` sends to `flv::play`: other prefixes win there.
            let other_route = ["/recordings/", "/api/", "/whep/", "/whip/"].iter().any(|p| path_only.starts_with(p));
            // A cluster edge's pull is a player like any other (the direct fan-out), naming the nodes it came
            // through.
            let via = req
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(crate::cluster::VIA_HEADER))
                .and_then(|h| std::str::from_utf8(h.value).ok())
                .map(super::flv::parse_via)
                .unwrap_or_default();
            if method == "GET" && path_only.ends_with(".flv") && path.starts_with('/') && !has_body && !other_route {
                Sniff::FlvGet { head_len, uri: path.to_owned(), http10: version == 0, via }
            } else {
                Sniff::Other
            }
        }
        Ok(httparse::Status::Partial) if buf.len() < SNIFF_BYTES => Sniff::Partial,
        _ => Sniff::Other,
    }
}

/// Serves one HTTP-FLV player; `head_len` bytes of request head are still unread on `sock`.
pub async fn serve(
    state: Arc<HttpState>,
    addr: SocketAddr,
    sock: TcpStream,
    head_len: usize,
    uri: &str,
    http10: bool,
    via: &[String],
) {
    let sock = Arc::new(sock);
    let mut io = SharedStream(sock.clone());
    let mut head = vec![0u8; head_len];
    if tokio::io::AsyncReadExt::read_exact(&mut io, &mut head).await.is_err() {
        return;
    }
    // As hyper's path does: a value that is not a valid header value falls back to "*".
    let cors = match http::HeaderValue::from_str(&state.config.http.cors_origin) {
        Ok(_) => state.config.http.cors_origin.clone(),
        Err(_) => "*".to_owned(),
    };
    let uri: http::Uri = match uri.parse() {
        Ok(u) => u,
        Err(_) => {
            let resp = super::error(http::StatusCode::BAD_REQUEST, "bad_path", "unparsable request target");
            write_response(&mut io, resp, &cors).await;
            return;
        }
    };
    let (key, mut reader, guard) = match super::flv::open(&state, addr, &uri, via).await {
        Ok(x) => x,
        Err(resp) => {
            write_response(&mut io, *resp, &cors).await;
            return;
        }
    };
    let handle = guard.handle.clone();
    let span = tracing::info_span!("http-flv", client = handle.id, stream = %key);
    async move {
        tracing::info!(peer = %addr, "http-flv playing");
        let chunked = !http10;
        let mut head = String::from("HTTP/1.1 200 OK\r\n");
        for (k, v) in super::flv::PLAY_HEADERS {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str(&format!("access-control-allow-origin: {cors}\r\n"));
        if chunked {
            head.push_str("transfer-encoding: chunked\r\n");
        }
        head.push_str("connection: close\r\n\r\n");
        let stall = state.config.stall_timeout();
        let slot = Slot::new(sock.clone(), handle.clone(), Format::Flv, chunked, reader.policy().low_latency);
        let result = play(&mut io, &sock, &mut reader, &slot, Bytes::from(head), chunked, stall).await;
        let reason = match &result {
            Ok(()) => EndReason::StreamClosed.to_string(),
            Err(e) => e.to_string(),
        };
        if result.is_ok() && chunked {
            let _ = tokio::time::timeout(Duration::from_secs(1), io.write_all(b"0\r\n\r\n")).await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), io.shutdown()).await;
        tracing::info!(%reason, "http-flv stopped");
        // The reader's drop sends on_stop with this reason.
        reader.set_end_reason(reason);
        drop(reader);
        drop(guard);
    }
    .instrument(span)
    .await
}

/// Why a direct HTTP-FLV player stopped before its stream ended (the reason in its `on_stop`).
#[derive(Debug, thiserror::Error)]
enum PlayEnd {
    /// Kicked, or too slow for its max_cache: the reader's own verdict.
    #[error("{0}")]
    Reader(EndReason),
    #[error("kicked: {0}")]
    Kicked(String),
    #[error("write failed: {0}")]
    Write(std::io::Error),
    #[error("stalled: socket accepted nothing for {:.1}s", .0.as_secs_f64())]
    Stalled(Duration),
    #[error("socket error: {0}")]
    Socket(std::io::Error),
    #[error("client closed")]
    ClientClosed,
}

/// The play loop: the task sends the join burst and any backlog itself; when caught up, it parks the socket
/// for the stream's fan-out and only watches for its return, a kick, or the player hanging up.
/// `Ok` when the stream ended.
async fn play(
    io: &mut SharedStream,
    sock: &TcpStream,
    reader: &mut crate::hub::Reader,
    slot: &Arc<Slot>,
    head: Bytes,
    chunked: bool,
    stall: Duration,
) -> Result<(), PlayEnd> {
    let handle = reader.handle().clone();
    let mut batch: Vec<Arc<Packet>> = Vec::new();
    let mut bufs: Vec<Bytes> = Vec::new();
    // The response head goes out at once (players time out waiting for it); the FLV header rides with the
    // first batch, when the stream's tracks are known.
    write(io, &[head], stall).await?;
    let mut started = false;
    let mut parked = false;
    let mut scratch = [0u8; 512];
    let result = loop {
        if let Some(r) = handle.kicked() {
            metrics::global().disconnects_kicked.fetch_add(1, Ordering::Relaxed);
            break Err(PlayEnd::Kicked(r));
        }
        if parked {
            tokio::select! {
                _ = slot.handed_back() => {
                    let Some(hb) = slot.unpark() else { continue };
                    parked = false;
                    if let Some(e) = hb.error {
                        break Err(PlayEnd::Write(e));
                    }
                    if !hb.tail.is_empty() {
                        if let Err(e) = send(io, reader, &hb.tail, stall).await {
                            break Err(e);
                        }
                    }
                    reader.resume(hb.next_seq, hb.headers);
                }
                _ = handle.notify.notified() => {}
                r = sock.readable() => if let Err(e) = hung_up(sock, r, &mut scratch) { break Err(e) },
            }
            continue;
        }
        tokio::select! {
            r = reader.next_batch(&mut batch) => {
                if let Err(reason) = r {
                    match reason {
                        EndReason::TooSlow(_) => {
                            metrics::global().disconnects_slow.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(%reason, "http-flv player disconnected");
                        }
                        EndReason::Kicked(_) => {
                            metrics::global().disconnects_kicked.fetch_add(1, Ordering::Relaxed);
                        }
                        EndReason::StreamClosed => {}
                    }
                    break if reason == EndReason::StreamClosed { Ok(()) } else { Err(PlayEnd::Reader(reason)) };
                }
            }
            _ = handle.notify.notified() => continue,
            r = sock.readable() => {
                if let Err(e) = hung_up(sock, r, &mut scratch) { break Err(e) }
                continue;
            }
        }
        bufs.clear();
        if let Some(p) = batch.first() {
            metrics::global().observe_latency(p.received.elapsed());
        }
        if !std::mem::replace(&mut started, true) {
            let t = reader.tracks();
            bufs.push(Bytes::copy_from_slice(&flv::file_header(t.audio, t.video)));
        }
        bufs.extend(batch.drain(..).map(|p| p.flv_tag().clone()));
        if chunked {
            chunk_frame(&mut bufs);
        }
        if let Err(e) = send(io, reader, &bufs, stall).await {
            break Err(e);
        }
        if reader.caught_up() {
            if let Some(c) = reader.cursor() {
                slot.park(reader.stream(), c);
                parked = true;
            }
        }
    };
    if parked {
        slot.leave(reader.stream());
    }
    result
}

/// Writes media and counts it for the player and its stream.
async fn send(
    io: &mut SharedStream,
    reader: &crate::hub::Reader,
    bufs: &[Bytes],
    stall: Duration,
) -> Result<(), PlayEnd> {
    let n = write(io, bufs, stall).await?;
    reader.add_bytes_out(n);
    Ok(())
}

async fn write(io: &mut SharedStream, bufs: &[Bytes], stall: Duration) -> Result<usize, PlayEnd> {
    match tokio::time::timeout(stall, netio::write_all_vectored(io, bufs)).await {
        Ok(Ok(n)) => Ok(n),
        Ok(Err(e)) => Err(PlayEnd::Write(e)),
        Err(_) => {
            metrics::global().disconnects_slow.fetch_add(1, Ordering::Relaxed);
            let reason = PlayEnd::Stalled(stall);
            tracing::warn!(%reason, "http-flv player disconnected");
            Err(reason)
        }
    }
}

/// A player sends nothing after its request; bytes are read and dropped, end of stream means it hung up.
fn hung_up(sock: &TcpStream, ready: std::io::Result<()>, scratch: &mut [u8]) -> Result<(), PlayEnd> {
    ready.map_err(PlayEnd::Socket)?;
    match sock.try_read(scratch) {
        Ok(0) => Err(PlayEnd::ClientClosed),
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(()),
        Err(e) => Err(PlayEnd::Socket(e)),
    }
}

/// Writes a complete (small, JSON) response and lets the connection close.
async fn write_response(io: &mut SharedStream, resp: Response<Body>, cors: &str) {
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let mut out = format!("HTTP/1.1 {} {}\r\n", parts.status.as_u16(), parts.status.canonical_reason().unwrap_or(""));
    for (k, v) in &parts.headers {
        if let Ok(v) = v.to_str() {
            out.push_str(&format!("{k}: {v}\r\n"));
        }
    }
    out.push_str(&format!(
        "access-control-allow-origin: {cors}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    ));
    let mut all = out.into_bytes();
    all.extend_from_slice(&body);
    let _ = tokio::time::timeout(Duration::from_secs(5), io.write_all(&all)).await;
    let _ = tokio::time::timeout(Duration::from_secs(1), io.shutdown()).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniff_tells_flv_gets_from_the_rest() {
        let get = b"GET /live/test.flv?mode=rtc HTTP/1.1\r\nHost: x\r\n\r\n";
        assert_eq!(
            sniff(get),
            Sniff::FlvGet { head_len: get.len(), uri: "/live/test.flv?mode=rtc".into(), http10: false, via: vec![] }
        );
        // A cluster edge's pull takes the direct path too, with the nodes it came through.
        let edge = b"GET /live/a.flv HTTP/1.1\r\nX-Livegate-Via: edge-2, edge-1\r\n\r\n";
        assert!(matches!(sniff(edge), Sniff::FlvGet { via, .. } if via == ["edge-2", "edge-1"]));
        let old = b"GET /live/t.flv HTTP/1.0\r\n\r\n";
        assert!(matches!(sniff(old), Sniff::FlvGet { http10: true, .. }));
        assert_eq!(sniff(b"GET /live/test.flv HTTP/1.1\r\nHost"), Sniff::Partial);
        assert_eq!(sniff(b"HEAD /live/test.flv HTTP/1.1\r\n\r\n"), Sniff::Other);
        assert_eq!(sniff(b"GET /api/v1/streams HTTP/1.1\r\n\r\n"), Sniff::Other);
        assert_eq!(sniff(b"GET /live/x.flv.m3u8 HTTP/1.1\r\n\r\n"), Sniff::Other);
        assert_eq!(sniff(b"GET /recordings/live/x/1.flv HTTP/1.1\r\n\r\n"), Sniff::Other);
        assert_eq!(sniff(b"GET /api/x.flv HTTP/1.1\r\n\r\n"), Sniff::Other);
        assert_eq!(sniff(b"POST /live/x.flv HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc"), Sniff::Other);
        assert_eq!(sniff(b"\x16\x03\x01garbage"), Sniff::Other);
        assert_eq!(sniff(&[b'A'; SNIFF_BYTES]), Sniff::Other);
    }
}
