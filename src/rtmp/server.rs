//! RTMP over TCP: one task per connection, driving the pure handshake and the sans-IO `session`, and doing
//! what the session asks of the rest of livegate (access checks, the hub's publisher and reader, the fan-out).

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tracing::Instrument;

use super::chunk::ChunkError;
use super::handshake::{self, HANDSHAKE_SIZE};
use super::session::{self, Event, StreamRequest};
use super::RtmpState;
use crate::access::{AccessError, Op};
use crate::conn::{accept_loop, Listener};
use crate::hub::fanout::{Format, Slot};
use crate::hub::{ClientHandle, EndReason, Packet, Protocol, PublisherInfo, Reader, StreamKey};
use crate::media::{flv, Codec, Frame, MediaKind};
use crate::metrics;
use crate::netio::{self, SharedStream};

/// Accepts RTMP connections until `shutdown` fires.
pub async fn serve(listener: TcpListener, state: Arc<RtmpState>, shutdown: tokio::sync::watch::Receiver<bool>) {
    let st = state.clone();
    accept_loop(listener, state.limits.clone(), shutdown, Listener::Rtmp, move |sock, addr, permit| {
        let state = st.clone();
        tokio::spawn(async move {
            serve_conn(state, Conn::Plain(sock), addr, false).await;
            drop(permit);
        });
    })
    .await;
}

/// Accepts RTMPS connections (RTMP inside TLS, `rtmp.rtmps_listen`) until `shutdown` fires; counted against the
/// RTMP limits.
pub async fn serve_tls(
    listener: TcpListener,
    state: Arc<RtmpState>,
    certs: Arc<crate::tls::TlsCerts>,
    shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let st = state.clone();
    accept_loop(listener, state.limits.clone(), shutdown, Listener::Rtmp, move |sock, addr, permit| {
        let state = st.clone();
        let acceptor = certs.acceptor();
        tokio::spawn(async move {
            netio::tune_media_socket(&sock, None);
            let hs_timeout = Duration::from_secs_f64(state.config.rtmp.handshake_timeout_secs);
            match tokio::time::timeout(hs_timeout, acceptor.accept(sock)).await {
                Ok(Ok(tls)) => serve_conn(state, Conn::Tls(Box::new(tls)), addr, true).await,
                Ok(Err(e)) => tracing::info!(peer = %addr, error = %e, "RTMPS: TLS handshake failed"),
                Err(_) => tracing::info!(peer = %addr, "RTMPS: no TLS handshake within {hs_timeout:?}"),
            }
            drop(permit);
        });
    })
    .await;
}

async fn serve_conn(state: Arc<RtmpState>, conn: Conn, addr: SocketAddr, tls: bool) {
    let guard = state.hub.register_client(Protocol::Rtmp, Some(addr));
    let handle = guard.handle.clone();
    let span = tracing::info_span!("rtmp", client = handle.id, peer = %addr, tls, stream = tracing::field::Empty);
    let result = Session::new(state, handle, addr).run(conn).instrument(span.clone()).await;
    let _e = span.enter();
    match result {
        Ok(()) => tracing::debug!("connection closed"),
        Err(e) => tracing::info!(reason = %e, "connection ended"),
    }
}

type TlsConn = tokio_rustls::server::TlsStream<TcpStream>;

/// An accepted connection: a plain socket, or one inside TLS (RTMPS).
enum Conn {
    Plain(TcpStream),
    Tls(Box<TlsConn>),
}

/// The read side of a connection. A plain socket is shared with the stream's fan-out (which writes to it
/// directly); a TLS stream is split, and its players are written by their own task.
enum RdHalf {
    Plain(SharedStream),
    Tls(tokio::io::ReadHalf<Box<TlsConn>>),
}

enum WrHalf {
    Plain(SharedStream),
    Tls(tokio::io::WriteHalf<Box<TlsConn>>),
}

impl tokio::io::AsyncRead for RdHalf {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            RdHalf::Plain(s) => std::pin::Pin::new(s).poll_read(cx, buf),
            RdHalf::Tls(s) => std::pin::Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl tokio::io::AsyncWrite for WrHalf {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            WrHalf::Plain(s) => std::pin::Pin::new(s).poll_write(cx, buf),
            WrHalf::Tls(s) => std::pin::Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            WrHalf::Plain(s) => std::pin::Pin::new(s).poll_write_vectored(cx, bufs),
            WrHalf::Tls(s) => std::pin::Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            WrHalf::Plain(s) => s.is_write_vectored(),
            WrHalf::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            WrHalf::Plain(s) => std::pin::Pin::new(s).poll_flush(cx),
            WrHalf::Tls(s) => std::pin::Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            WrHalf::Plain(s) => std::pin::Pin::new(s).poll_shutdown(cx),
            WrHalf::Tls(s) => std::pin::Pin::new(s).poll_shutdown(cx),
        }
    }
}

impl WrHalf {
    /// The plain socket, when there is one to hand to the fan-out.
    fn plain(&self) -> Option<&Arc<TcpStream>> {
        match self {
            WrHalf::Plain(s) => Some(&s.0),
            WrHalf::Tls(_) => None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("handshake: {0}")]
    Handshake(#[from] handshake::HandshakeError),
    #[error("no handshake within {0:?}")]
    HandshakeTimeout(Duration),
    #[error("{0}")]
    Protocol(#[from] session::SessionError),
    #[error("idle for {0:?} without publishing or playing")]
    Idle(Duration),
    #[error("publisher sent nothing for {0:?}")]
    PublisherTimeout(Duration),
    #[error("player stalled: its socket accepted nothing for {0:?}")]
    Stalled(Duration),
    #[error("{0}")]
    Ended(EndReason),
    #[error("peer closed the connection")]
    Eof,
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

enum Role {
    Idle,
    Publishing(Box<crate::hub::Publisher>),
    Playing(Box<Reader>),
}

struct Session {
    state: Arc<RtmpState>,
    handle: Arc<ClientHandle>,
    addr: SocketAddr,
    /// The protocol (sans-IO); this task does the I/O and what its events ask.
    proto: session::Session,
    role: Role,
    warned_codec: bool,
    idle_since: Instant,
    became_player: bool,
    last_input: Instant,
    last_media: Instant,
    /// A player's place in its stream's fan-out, and whether its socket is parked there (see `hub::fanout`).
    slot: Option<Arc<Slot>>,
    parked: bool,
    /// What this connection adds to `livegate_rtmp_reassembly_bytes` now.
    reassembly: usize,
}

impl Drop for Session {
    fn drop(&mut self) {
        metrics::global().rtmp_reassembly_bytes.fetch_sub(self.reassembly as i64, Ordering::Relaxed);
    }
}

impl Session {
    fn new(state: Arc<RtmpState>, handle: Arc<ClientHandle>, addr: SocketAddr) -> Self {
        let max_message_bytes = state.config.rtmp.max_message_bytes;
        Self {
            state,
            handle,
            addr,
            proto: session::Session::with_max_message_bytes(max_message_bytes),
            role: Role::Idle,
            warned_codec: false,
            idle_since: Instant::now(),
            became_player: false,
            last_input: Instant::now(),
            last_media: Instant::now(),
            slot: None,
            parked: false,
            reassembly: 0,
        }
    }

    /// Keeps the reassembly gauge in step with the session's unfinished messages.
    fn count_reassembly(&mut self) {
        let now = self.proto.pending_bytes();
        if now != self.reassembly {
            let delta = now as i64 - self.reassembly as i64;
            metrics::global().rtmp_reassembly_bytes.fetch_add(delta, Ordering::Relaxed);
            self.reassembly = now;
        }
    }

    async fn run(mut self, conn: Conn) -> Result<(), SessionError> {
        let hs_timeout = Duration::from_secs_f64(self.state.config.rtmp.handshake_timeout_secs);
        let (mut rd, mut wr) = match conn {
            Conn::Plain(mut sock) => {
                netio::tune_media_socket(&sock, None);
                tokio::time::timeout(hs_timeout, self.handshake(&mut sock))
                    .await
                    .map_err(|_| SessionError::HandshakeTimeout(hs_timeout))??;
                let sock = Arc::new(sock);
                (RdHalf::Plain(SharedStream(sock.clone())), WrHalf::Plain(SharedStream(sock)))
            }
            Conn::Tls(mut tls) => {
                tokio::time::timeout(hs_timeout, self.handshake(&mut tls))
                    .await
                    .map_err(|_| SessionError::HandshakeTimeout(hs_timeout))??;
                let (r, w) = tokio::io::split(tls);
                (RdHalf::Tls(r), WrHalf::Tls(w))
            }
        };
        let mut result = self.main_loop(&mut rd, &mut wr).await;
        if let Err(e) = self.take_back(&mut wr).await {
            result = result.and(Err(e));
        }
        if let (Some(slot), Role::Playing(r)) = (&self.slot, &self.role) {
            slot.leave(r.stream());
        }
        // Tell a player why it stops, as Flash Media Server does, before closing.
        if let Role::Playing(reader) = &mut self.role {
            let reason = match &result {
                Err(SessionError::Ended(r)) => r.to_string(),
                Err(e) => e.to_string(),
                Ok(()) => "closed".into(),
            };
            // The reader's drop sends on_stop with this reason.
            reader.set_end_reason(reason);
            if matches!(result, Err(SessionError::Ended(EndReason::StreamClosed))) {
                let _ = self.proto.take_output();
                self.proto.play_unpublished();
                let out = self.proto.take_output();
                let _ = tokio::time::timeout(Duration::from_secs(1), async {
                    wr.write_all(&out).await?;
                    wr.flush().await
                })
                .await;
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), wr.shutdown()).await;
        match result {
            Err(SessionError::Eof) => Ok(()),
            other => other,
        }
    }

    async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(&mut self, sock: &mut S) -> Result<(), SessionError> {
        let mut c0c1 = vec![0u8; 1 + HANDSHAKE_SIZE];
        // Look at the version byte first: an HTTP request or TLS hello gets a precise error at once.
        sock.read_exact(&mut c0c1[..1]).await?;
        if c0c1[0] != handshake::RTMP_VERSION {
            return Err(handshake::server_response(&c0c1[..1], &mut rand::thread_rng(), 0)
                .err()
                .map(SessionError::Handshake)
                .unwrap_or(SessionError::Protocol(session::SessionError::Malformed("handshake"))));
        }
        sock.read_exact(&mut c0c1[1..]).await?;
        let (reply, kind) = handshake::server_response(&c0c1, &mut rand::thread_rng(), self.state.uptime_ms())?;
        sock.write_all(&reply).await?;
        let mut c2 = vec![0u8; HANDSHAKE_SIZE];
        sock.read_exact(&mut c2).await?;
        // The session's first output: the chunk size every later message uses.
        sock.write_all(&self.proto.take_output()).await?;
        sock.flush().await?;
        tracing::debug!(?kind, "handshake done");
        Ok(())
    }

    /// Takes the socket back from the fan-out (writing what it left half-sent) before the session writes.
    async fn take_back(&mut self, wr: &mut WrHalf) -> Result<(), SessionError> {
        if !std::mem::take(&mut self.parked) {
            return Ok(());
        }
        let Some(hb) = self.slot.as_ref().and_then(|s| s.unpark()) else { return Ok(()) };
        if let Some(e) = hb.error {
            return Err(SessionError::Io(e));
        }
        if !hb.tail.is_empty() {
            self.write_media(wr, &hb.tail).await?;
        }
        if let Role::Playing(r) = &mut self.role {
            r.resume(hb.next_seq, hb.headers);
        }
        Ok(())
    }

    /// Writes media to a player within the stall timeout, counting the bytes for the client and the stream.
    async fn write_media(&self, wr: &mut WrHalf, bufs: &[Bytes]) -> Result<(), SessionError> {
        let stall = self.state.config.stall_timeout();
        let write = async {
            let n = netio::write_all_vectored(&mut *wr, bufs).await?;
            // TLS holds records until flushed; a plain socket's flush does nothing.
            wr.flush().await?;
            Ok::<_, std::io::Error>(n)
        };
        let n = tokio::time::timeout(stall, write).await.map_err(|_| {
            metrics::global().disconnects_slow.fetch_add(1, Ordering::Relaxed);
            SessionError::Stalled(stall)
        })??;
        if let Role::Playing(r) = &self.role {
            r.add_bytes_out(n);
        }
        Ok(())
    }

    async fn main_loop(&mut self, rd: &mut RdHalf, wr: &mut WrHalf) -> Result<(), SessionError> {
        let mut batch: Vec<Arc<Packet>> = Vec::new();
        let mut bufs: Vec<Bytes> = Vec::new();
        let idle = Duration::from_secs_f64(self.state.config.rtmp.idle_timeout_secs);
        let publish_timeout = Duration::from_secs_f64(self.state.config.rtmp.publish_timeout_secs);
        let handle = self.handle.clone();
        loop {
            // Idle connections get a fixed deadline (trickling bytes does not extend it); publishers must keep
            // sending media; players send little (acks, pings), so only a dead connection is silent that long.
            let (since, timeout) = match self.role {
                Role::Idle => (self.idle_since, idle),
                Role::Publishing(_) => (self.last_media, publish_timeout),
                Role::Playing(_) => (self.last_input, Duration::from_secs(3600)),
            };
            let deadline = tokio::time::Instant::from_std(since + timeout);
            let reader = match &mut self.role {
                Role::Playing(r) => Some(r),
                _ => None,
            };
            let playing = reader.is_some();
            let parked = self.parked;
            let slot = self.slot.clone();
            let media = async {
                match (reader, slot) {
                    (Some(_), Some(slot)) if parked => {
                        slot.handed_back().await;
                        None
                    }
                    (Some(r), _) => Some(r.next_batch(&mut batch).await),
                    _ => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                _ = handle.notify.notified() => {
                    if let Some(reason) = handle.kicked() {
                        metrics::global().disconnects_kicked.fetch_add(1, Ordering::Relaxed);
                        return Err(SessionError::Ended(EndReason::Kicked(reason)));
                    }
                }
                r = rd.read_buf(self.proto.input_buf()) => {
                    let n = r?;
                    if n == 0 {
                        return Err(SessionError::Eof);
                    }
                    self.last_input = Instant::now();
                    self.proto.fed(n);
                    self.handle.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
                    if let Err(e) = self.on_input().await {
                        // A refusal carries its onStatus/_error: make sure the client gets it.
                        self.take_back(wr).await?;
                        let out = self.proto.take_output();
                        let _ = tokio::time::timeout(Duration::from_secs(1), async {
                            wr.write_all(&out).await?;
                            wr.flush().await
                        })
                        .await;
                        return Err(e);
                    }
                    if std::mem::take(&mut self.became_player) {
                        if let Some(sock) = wr.plain() {
                            netio::tune_media_socket(sock, Some(netio::PLAYER_SEND_BUFFER));
                        }
                    }
                    if self.proto.has_output() {
                        // Acks and pings interleave with media, so the session writes them itself.
                        self.take_back(wr).await?;
                        wr.write_all(&self.proto.take_output()).await?;
                        wr.flush().await?;
                    }
                }
                r = media, if playing => {
                    let Some(r) = r else {
                        // The fan-out handed the socket back: the Reader continues from where it stopped.
                        self.take_back(wr).await?;
                        continue;
                    };
                    if let Err(reason) = r {
                        if matches!(reason, EndReason::TooSlow(_)) {
                            metrics::global().disconnects_slow.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(%reason, "player disconnected");
                        }
                        return Err(SessionError::Ended(reason));
                    }
                    bufs.clear();
                    bufs.extend(batch.iter().map(|p| p.rtmp_chunks().clone()));
                    let oldest = batch.first().map(|p| p.received);
                    batch.clear();
                    self.write_media(wr, &bufs).await?;
                    if let Some(t) = oldest {
                        metrics::global().observe_latency(t.elapsed());
                    }
                    if let Role::Playing(r) = &self.role {
                        // Only a plain socket can be written by the fan-out; an RTMPS player is written here.
                        if let (true, Some(sock)) = (r.caught_up(), wr.plain()) {
                            if let Some(c) = r.cursor() {
                                let low_latency = r.policy().low_latency;
                                let slot = self.slot.get_or_insert_with(|| {
                                    Slot::new(sock.clone(), self.handle.clone(), Format::Rtmp, false, low_latency)
                                });
                                slot.park(r.stream(), c);
                                self.parked = true;
                            }
                        }
                    }
                }
                _ = tokio::time::sleep_until(deadline) => {
                    return Err(match self.role {
                        Role::Publishing(_) => SessionError::PublisherTimeout(timeout),
                        _ => SessionError::Idle(timeout),
                    });
                }
            }
        }
    }

    /// Feeds what the socket read to the session and does what its events ask, until it has nothing more.
    async fn on_input(&mut self) -> Result<(), SessionError> {
        loop {
            let r = self.proto.process();
            self.count_reassembly();
            if let Err(e) = r {
                if matches!(e, session::SessionError::Chunk(ChunkError::TooMuchPending { .. })) {
                    metrics::global().rtmp_reassembly_refused.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(error = %e, "connection closed: unfinished messages over the limit");
                }
                return Err(e.into());
            }
            let mut any = false;
            while let Some(ev) = self.proto.poll_event() {
                any = true;
                self.on_event(ev).await?;
            }
            if !any {
                return Ok(());
            }
        }
    }

    async fn on_event(&mut self, ev: Event) -> Result<(), SessionError> {
        match ev {
            Event::Connect { app } => {
                tracing::debug!(%app, "connect");
                match self.state.access.check_app(&app) {
                    Ok(()) => self.proto.accept_connect(),
                    Err(e) => return Err(self.proto.reject_connect(&e.to_string()).into()),
                }
            }
            Event::Publish(req) => self.on_publish(req).await?,
            Event::Play(req) => self.on_play(req).await?,
            Event::Media { type_id, timestamp, payload } => self.on_media(type_id, timestamp, payload)?,
            Event::Metadata { timestamp, body } => {
                if let Role::Publishing(publisher) = &mut self.role {
                    let frame = Frame {
                        kind: MediaKind::Data,
                        codec: Codec::Amf0,
                        dts: 0,
                        cts: 0,
                        keyframe: false,
                        config: true,
                        payload: body,
                    };
                    publisher.push_raw(frame, timestamp, Instant::now());
                }
            }
            Event::Unpublished => {
                if let Role::Publishing(p) = std::mem::replace(&mut self.role, Role::Idle) {
                    self.idle_since = Instant::now();
                    tracing::info!(stream = %p.stream().key, "unpublished by client");
                }
            }
            Event::PlayClosed => return Err(SessionError::Eof),
        }
        Ok(())
    }

    fn on_media(&mut self, type_id: u8, timestamp: u32, payload: Bytes) -> Result<(), SessionError> {
        let Role::Publishing(publisher) = &mut self.role else { return Ok(()) };
        self.last_media = Instant::now();
        metrics::global().bytes_in.fetch_add(payload.len() as u64, Ordering::Relaxed);
        match flv::frame_from_tag(type_id, 0, payload) {
            Ok(Some(frame)) => publisher.push_raw(frame, timestamp, Instant::now()),
            Ok(None) => {}
            // A video codec livegate cannot carry: refused with the reason rather than dropped, which would
            // leave viewers an audio-only stream and the publisher none the wiser.
            Err(
                e @ (flv::FlvError::UnsupportedVideoCodec(_)
                | flv::FlvError::EnhancedVideo(_)
                | flv::FlvError::EnhancedPacket(_)
                | flv::FlvError::BadHevcConfig(_)),
            ) => {
                let reason = format!("{e}: publish H.264 or H.265 video (the encoder's AVC or HEVC setting)");
                tracing::warn!(%reason, "publish ended: unsupported video");
                metrics::global().publish_refused.fetch_add(1, Ordering::Relaxed);
                return Err(self.proto.refuse_publish("NetStream.Publish.Failed", &reason).into());
            }
            Err(e) => {
                if !self.warned_codec {
                    tracing::warn!(error = %e, "dropping media the hub cannot carry");
                    self.warned_codec = true;
                }
            }
        }
        Ok(())
    }

    async fn on_publish(&mut self, req: StreamRequest) -> Result<(), SessionError> {
        let key = StreamKey::new(&req.app, &req.name);
        tracing::Span::current().record("stream", tracing::field::display(&key));
        let span = tracing::info_span!("publish");
        let info = PublisherInfo {
            client_id: self.handle.id,
            protocol: Protocol::Rtmp,
            addr: Some(self.addr),
            param: req.query_str,
        };
        if let Err(e) = self.state.access.authorize(Op::Publish, &key, &req.query, &info).instrument(span).await {
            return Err(self.refuse_publish(e.to_string()));
        }
        match self.state.hub.publish(key.clone(), info, self.handle.clone()) {
            Ok(p) => {
                self.role = Role::Publishing(Box::new(p));
                self.last_media = Instant::now();
                self.proto.publish_started(&key.to_string());
                Ok(())
            }
            Err(e) => Err(self.refuse_publish(e.to_string())),
        }
    }

    fn refuse_publish(&mut self, description: String) -> SessionError {
        metrics::global().publish_refused.fetch_add(1, Ordering::Relaxed);
        tracing::info!(reason = %description, "publish refused");
        self.proto.refuse_publish("NetStream.Publish.BadName", &description).into()
    }

    async fn on_play(&mut self, req: StreamRequest) -> Result<(), SessionError> {
        let key = StreamKey::new(&req.app, &req.name);
        tracing::Span::current().record("stream", tracing::field::display(&key));
        if let Err(e) = self.state.access.authorize_play(&key, &req.query) {
            let code = match e {
                AccessError::UnknownApp(_) | AccessError::BadName(_) => "NetStream.Play.BadName",
                _ => "NetStream.Play.Failed",
            };
            return Err(self.refuse_play(code, e.to_string()));
        }
        let policy = match crate::hub::CachePolicy::for_query(&self.state.config, &req.query) {
            Ok(p) => p,
            Err(e) => return Err(self.refuse_play("NetStream.Play.Failed", e.to_string())),
        };
        if let Some(tag) = crate::access::Access::player_tag(&req.query) {
            let _ = self.handle.tag.set(tag);
        }
        // A stream that is not here may be elsewhere in the cluster: looked up before the player waits for it.
        if let Err(e) = self.state.hub.locate(&key, &[]).await {
            return Err(self.refuse_play("NetStream.Play.StreamNotFound", e.to_string()));
        }
        match self.state.hub.subscribe(&key, Protocol::Rtmp, policy, self.handle.clone()) {
            Ok(reader) => {
                tracing::info!(stream = %key, min_cache = ?policy.min_cache, max_cache = ?policy.max_cache, "playing");
                self.role = Role::Playing(Box::new(reader));
                self.became_player = true;
                self.proto.play_started(&key.to_string());
                Ok(())
            }
            Err(e) => Err(self.refuse_play("NetStream.Play.StreamNotFound", e.to_string())),
        }
    }

    fn refuse_play(&mut self, code: &str, description: String) -> SessionError {
        metrics::global().play_refused.fetch_add(1, Ordering::Relaxed);
        tracing::info!(reason = %description, "play refused");
        self.proto.refuse_play(code, &description).into()
    }
}
