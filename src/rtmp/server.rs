//! RTMP over TCP: one task per connection, driving the pure handshake, chunk and command code.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tracing::Instrument;

use super::chunk::ChunkDecoder;
use super::handshake::{self, HANDSHAKE_SIZE};
use super::message::{self as msg, Command};
use super::RtmpState;
use crate::access::{AccessError, Op};
use crate::conn::{accept_loop, Listener};
use crate::hub::fanout::{Format, Slot};
use crate::hub::packet::RTMP_MEDIA_STREAM_ID;
use crate::hub::{ClientHandle, EndReason, Packet, Protocol, PublisherInfo, Reader, StreamKey};
use crate::media::amf0::Amf0Value;
use crate::media::{flv, Codec, Frame, MediaKind};
use crate::metrics;
use crate::names;
use crate::netio::{self, SharedStream};

/// Accepts RTMP connections until `shutdown` fires.
pub async fn serve(listener: TcpListener, state: Arc<RtmpState>, shutdown: tokio::sync::watch::Receiver<bool>) {
    let st = state.clone();
    accept_loop(listener, state.limits.clone(), shutdown, Listener::Rtmp, move |sock, addr, permit| {
        let state = st.clone();
        tokio::spawn(async move {
            let guard = state.hub.register_client(Protocol::Rtmp, Some(addr));
            let handle = guard.handle.clone();
            let span = tracing::info_span!("rtmp", client = handle.id, peer = %addr, stream = tracing::field::Empty);
            let result = Session::new(state, handle, addr).run(sock).instrument(span.clone()).await;
            let _e = span.enter();
            match result {
                Ok(()) => tracing::debug!("connection closed"),
                Err(e) => tracing::info!(reason = %e, "connection ended"),
            }
            drop(permit);
        });
    })
    .await;
}

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("handshake: {0}")]
    Handshake(#[from] handshake::HandshakeError),
    #[error("no handshake within {0:?}")]
    HandshakeTimeout(Duration),
    #[error("chunk stream: {0}")]
    Chunk(#[from] super::chunk::ChunkError),
    #[error("bad command: {0}")]
    Command(#[from] msg::CommandError),
    #[error("malformed {0} message")]
    Malformed(&'static str),
    #[error("{0}")]
    Refused(String),
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
    decoder: ChunkDecoder,
    out: Vec<u8>,
    app: String,
    app_query: String,
    role: Role,
    received: u64,
    last_ack: u64,
    peer_window: u32,
    warned_codec: bool,
    idle_since: Instant,
    became_player: bool,
    last_input: Instant,
    last_media: Instant,
    /// A player's place in its stream's fan-out, and whether its socket is parked there (see `hub::fanout`).
    slot: Option<Arc<Slot>>,
    parked: bool,
}

impl Session {
    fn new(state: Arc<RtmpState>, handle: Arc<ClientHandle>, addr: SocketAddr) -> Self {
        Self {
            state,
            handle,
            addr,
            decoder: ChunkDecoder::new(),
            out: Vec::with_capacity(4096),
            app: String::new(),
            app_query: String::new(),
            role: Role::Idle,
            received: 0,
            last_ack: 0,
            peer_window: 0,
            warned_codec: false,
            idle_since: Instant::now(),
            became_player: false,
            last_input: Instant::now(),
            last_media: Instant::now(),
            slot: None,
            parked: false,
        }
    }

    async fn run(mut self, mut sock: TcpStream) -> Result<(), SessionError> {
        netio::tune_media_socket(&sock, None);
        let hs_timeout = Duration::from_secs_f64(self.state.config.rtmp.handshake_timeout_secs);
        tokio::time::timeout(hs_timeout, self.handshake(&mut sock))
            .await
            .map_err(|_| SessionError::HandshakeTimeout(hs_timeout))??;
        let sock = Arc::new(sock);
        let (mut rd, mut wr) = (SharedStream(sock.clone()), SharedStream(sock));
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
                self.out.clear();
                msg::on_status(&mut self.out, "status", "NetStream.Play.UnpublishNotify", "stream was unpublished");
                msg::on_status(&mut self.out, "status", "NetStream.Play.Stop", "stopped playing");
                msg::user_control(&mut self.out, 1, &RTMP_MEDIA_STREAM_ID.to_be_bytes());
                let _ = tokio::time::timeout(Duration::from_secs(1), wr.write_all(&self.out)).await;
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), wr.shutdown()).await;
        match result {
            Err(SessionError::Eof) => Ok(()),
            other => other,
        }
    }

    async fn handshake(&mut self, sock: &mut TcpStream) -> Result<(), SessionError> {
        let mut c0c1 = vec![0u8; 1 + HANDSHAKE_SIZE];
        // Look at the version byte first: an HTTP request or TLS hello gets a precise error at once.
        sock.read_exact(&mut c0c1[..1]).await?;
        if c0c1[0] != handshake::RTMP_VERSION {
            return Err(handshake::server_response(&c0c1[..1], &mut rand::thread_rng(), 0)
                .err()
                .map(SessionError::Handshake)
                .unwrap_or(SessionError::Malformed("handshake")));
        }
        sock.read_exact(&mut c0c1[1..]).await?;
        let (reply, kind) = handshake::server_response(&c0c1, &mut rand::thread_rng(), self.state.uptime_ms())?;
        sock.write_all(&reply).await?;
        let mut c2 = vec![0u8; HANDSHAKE_SIZE];
        sock.read_exact(&mut c2).await?;
        msg::set_chunk_size(&mut self.out);
        sock.write_all(&self.out).await?;
        self.out.clear();
        tracing::debug!(?kind, "handshake done");
        Ok(())
    }

    /// Takes the socket back from the fan-out (writing what it left half-sent) before the session writes.
    async fn take_back(&mut self, wr: &mut SharedStream) -> Result<(), SessionError> {
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
    async fn write_media(&self, wr: &mut SharedStream, bufs: &[Bytes]) -> Result<(), SessionError> {
        let stall = self.state.config.stall_timeout();
        let n = tokio::time::timeout(stall, netio::write_all_vectored(wr, bufs)).await.map_err(|_| {
            metrics::global().disconnects_slow.fetch_add(1, Ordering::Relaxed);
            SessionError::Stalled(stall)
        })??;
        if let Role::Playing(r) = &self.role {
            r.add_bytes_out(n);
        }
        Ok(())
    }

    async fn main_loop(&mut self, rd: &mut SharedStream, wr: &mut SharedStream) -> Result<(), SessionError> {
        let mut buf = BytesMut::with_capacity(64 * 1024);
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
                r = rd.read_buf(&mut buf) => {
                    let n = r?;
                    if n == 0 {
                        return Err(SessionError::Eof);
                    }
                    self.last_input = Instant::now();
                    self.received += n as u64;
                    self.handle.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
                    while let Some(m) = self.decoder.decode(&mut buf)? {
                        if let Err(e) = self.on_message(m).await {
                            // A refusal carries its onStatus/_error: make sure the client gets it.
                            self.take_back(wr).await?;
                            let _ = tokio::time::timeout(Duration::from_secs(1), wr.write_all(&self.out)).await;
                            return Err(e);
                        }
                    }
                    if self.peer_window > 0 && self.received - self.last_ack >= self.peer_window as u64 {
                        msg::ack(&mut self.out, self.received as u32);
                        self.last_ack = self.received;
                    }
                    if std::mem::take(&mut self.became_player) {
                        netio::tune_media_socket(&wr.0, Some(netio::PLAYER_SEND_BUFFER));
                    }
                    if !self.out.is_empty() {
                        // Acks and pings interleave with media, so the session writes them itself.
                        self.take_back(wr).await?;
                        wr.write_all(&self.out).await?;
                        self.out.clear();
                    }
                    if buf.capacity() - buf.len() < 4096 {
                        buf.reserve(64 * 1024);
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
                        if r.caught_up() {
                            if let Some(c) = r.cursor() {
                                let low_latency = r.policy().low_latency;
                                let slot = self.slot.get_or_insert_with(|| {
                                    Slot::new(wr.0.clone(), self.handle.clone(), Format::Rtmp, false, low_latency)
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

    async fn on_message(&mut self, m: super::chunk::Message) -> Result<(), SessionError> {
        match m.type_id {
            msg::SET_CHUNK_SIZE => {
                let v = be_u32(&m.payload).ok_or(SessionError::Malformed("set chunk size"))?;
                self.decoder.set_chunk_size(v & 0x7FFF_FFFF)?;
            }
            msg::WINDOW_ACK_SIZE => {
                self.peer_window = be_u32(&m.payload).ok_or(SessionError::Malformed("window ack size"))?;
            }
            // Ping request (6) wants a ping response (7) echoing its timestamp.
            msg::USER_CONTROL if m.payload.len() >= 6 && u16::from_be_bytes([m.payload[0], m.payload[1]]) == 6 => {
                msg::user_control(&mut self.out, 7, &m.payload[2..6]);
            }
            msg::AUDIO | msg::VIDEO => self.on_media(m),
            msg::DATA_AMF0 | msg::DATA_AMF3 => self.on_data(m),
            msg::COMMAND_AMF0 | msg::COMMAND_AMF3 => {
                let cmd = Command::parse(m.type_id, &m.payload)?;
                self.on_command(cmd).await?;
            }
            _ => {}
        }
        Ok(())
    }

    fn on_media(&mut self, m: super::chunk::Message) {
        let Role::Publishing(publisher) = &mut self.role else { return };
        self.last_media = Instant::now();
        let len = m.payload.len();
        metrics::global().bytes_in.fetch_add(len as u64, Ordering::Relaxed);
        match flv::frame_from_tag(m.type_id, 0, m.payload) {
            Ok(Some(frame)) => publisher.push_raw(frame, m.timestamp, Instant::now()),
            Ok(None) => {}
            Err(e) => {
                if !self.warned_codec {
                    tracing::warn!(error = %e, "dropping media the hub cannot carry");
                    self.warned_codec = true;
                }
            }
        }
    }

    fn on_data(&mut self, m: super::chunk::Message) {
        let Role::Publishing(publisher) = &mut self.role else { return };
        let Ok(values) = msg::parse_data(m.type_id, &m.payload) else {
            tracing::debug!("ignoring undecodable data message");
            return;
        };
        if let Some(body) = msg::metadata_body(&values) {
            let frame = Frame {
                kind: MediaKind::Data,
                codec: Codec::Amf0,
                dts: 0,
                cts: 0,
                keyframe: false,
                config: true,
                payload: body,
            };
            publisher.push_raw(frame, m.timestamp, Instant::now());
        }
    }

    async fn on_command(&mut self, cmd: Command) -> Result<(), SessionError> {
        tracing::debug!(name = %cmd.name, txn = cmd.transaction, "command");
        match cmd.name.as_str() {
            "connect" => {
                let Some(app_raw) = cmd.object.get("app").and_then(|v| v.as_str()) else {
                    let e = "connect carries no command object with a string \"app\"";
                    msg::error(&mut self.out, cmd.transaction, "NetConnection.Connect.Rejected", e);
                    return Err(SessionError::Refused(e.into()));
                };
                let app_raw = app_raw.trim_end_matches('/');
                let tc_url = cmd.object.get("tcUrl").and_then(|v| v.as_str()).unwrap_or("");
                let (app, q) = names::split_query(app_raw);
                self.app = app.to_owned();
                let (_, tc_q) = names::split_query(tc_url);
                self.app_query = [tc_q, q].iter().filter(|s| !s.is_empty()).copied().collect::<Vec<_>>().join("&");
                if let Err(e) = self.state.access.check_app(&self.app) {
                    msg::error(&mut self.out, cmd.transaction, "NetConnection.Connect.Rejected", &e.to_string());
                    return Err(SessionError::Refused(e.to_string()));
                }
                msg::connect_preamble(&mut self.out);
                msg::connect_result(&mut self.out, cmd.transaction);
            }
            "createStream" => {
                msg::result(
                    &mut self.out,
                    cmd.transaction,
                    Amf0Value::Null,
                    Amf0Value::Number(RTMP_MEDIA_STREAM_ID as f64),
                );
            }
            "releaseStream" | "FCPublish" | "FCUnpublish" | "FCSubscribe" | "getStreamLength" => {
                if cmd.transaction != 0.0 {
                    msg::result(&mut self.out, cmd.transaction, Amf0Value::Null, Amf0Value::Undefined);
                }
                if cmd.name == "FCUnpublish" {
                    self.stop_publishing();
                }
            }
            "publish" => self.on_publish(&cmd).await?,
            "play" => self.on_play(&cmd)?,
            "deleteStream" | "closeStream" => {
                if matches!(self.role, Role::Publishing(_)) {
                    self.stop_publishing();
                } else if matches!(self.role, Role::Playing(_)) {
                    return Err(SessionError::Eof);
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn stop_publishing(&mut self) {
        if let Role::Publishing(p) = std::mem::replace(&mut self.role, Role::Idle) {
            self.idle_since = Instant::now();
            tracing::info!(stream = %p.stream().key, "unpublished by client");
            msg::on_status(&mut self.out, "status", "NetStream.Unpublish.Success", "stream is now unpublished");
        }
    }

    /// The stream key and query of a publish/play request: name from the command, query merged from tcUrl,
    /// app and stream name (the stream name's parameters win).
    fn target(&self, cmd: &Command, op: &'static str) -> Result<Target, String> {
        let raw = cmd.arg_str(0).ok_or_else(|| format!("{op} has no stream name"))?;
        let (name, q) = names::split_query(raw);
        // Some clients put the app in front of the name ("live/test"); accept it when it matches.
        let name = name.strip_prefix(&format!("{}/", self.app)).unwrap_or(name);
        names::validate("stream", name).map_err(|e| e.to_string())?;
        let query_str =
            [self.app_query.as_str(), q].iter().filter(|s| !s.is_empty()).copied().collect::<Vec<_>>().join("&");
        let query = names::parse_query(&query_str);
        Ok((StreamKey::new(&self.app, name), query, query_str))
    }

    async fn on_publish(&mut self, cmd: &Command) -> Result<(), SessionError> {
        if !matches!(self.role, Role::Idle) {
            return self.refuse_publish(
                "NetStream.Publish.BadName",
                "this connection is already publishing or playing".into(),
            );
        }
        let (key, query, query_str) = match self.target(cmd, "publish") {
            Ok(t) => t,
            Err(e) => return self.refuse_publish("NetStream.Publish.BadName", e),
        };
        tracing::Span::current().record("stream", tracing::field::display(&key));
        let span = tracing::info_span!("publish");
        let info = PublisherInfo {
            client_id: self.handle.id,
            protocol: Protocol::Rtmp,
            addr: Some(self.addr),
            param: query_str,
        };
        match self.state.access.authorize(Op::Publish, &key, &query, &info).instrument(span.clone()).await {
            Ok(()) => {}
            Err(e) => return self.refuse_publish("NetStream.Publish.BadName", e.to_string()),
        }
        match self.state.hub.publish(key.clone(), info, self.handle.clone()) {
            Ok(p) => {
                self.role = Role::Publishing(Box::new(p));
                self.last_media = Instant::now();
                msg::user_control(&mut self.out, 0, &RTMP_MEDIA_STREAM_ID.to_be_bytes());
                msg::on_status(&mut self.out, "status", "NetStream.Publish.Start", &format!("{key} is now published"));
                Ok(())
            }
            Err(e) => self.refuse_publish("NetStream.Publish.BadName", e.to_string()),
        }
    }

    fn refuse_publish(&mut self, code: &str, description: String) -> Result<(), SessionError> {
        metrics::global().publish_refused.fetch_add(1, Ordering::Relaxed);
        msg::on_status(&mut self.out, "error", code, &description);
        tracing::info!(reason = %description, "publish refused");
        Err(SessionError::Refused(format!("publish refused: {description}")))
    }

    fn on_play(&mut self, cmd: &Command) -> Result<(), SessionError> {
        if !matches!(self.role, Role::Idle) {
            return self
                .refuse_play("NetStream.Play.Failed", "this connection is already publishing or playing".into());
        }
        let (key, query, _) = match self.target(cmd, "play") {
            Ok(t) => t,
            Err(e) => return self.refuse_play("NetStream.Play.BadName", e),
        };
        tracing::Span::current().record("stream", tracing::field::display(&key));
        if let Err(e) = self.state.access.authorize_play(&key, &query) {
            let code = match e {
                AccessError::UnknownApp(_) | AccessError::BadName(_) => "NetStream.Play.BadName",
                _ => "NetStream.Play.Failed",
            };
            return self.refuse_play(code, e.to_string());
        }
        let policy = match crate::hub::CachePolicy::for_query(&self.state.config, &query) {
            Ok(p) => p,
            Err(e) => return self.refuse_play("NetStream.Play.Failed", e.to_string()),
        };
        match self.state.hub.subscribe(&key, Protocol::Rtmp, policy, self.handle.clone()) {
            Ok(reader) => {
                tracing::info!(stream = %key, min_cache = ?policy.min_cache, max_cache = ?policy.max_cache, "playing");
                self.role = Role::Playing(Box::new(reader));
                self.became_player = true;
                msg::user_control(&mut self.out, 0, &RTMP_MEDIA_STREAM_ID.to_be_bytes());
                msg::on_status(
                    &mut self.out,
                    "status",
                    "NetStream.Play.Reset",
                    &format!("playing and resetting {key}"),
                );
                msg::on_status(&mut self.out, "status", "NetStream.Play.Start", &format!("started playing {key}"));
                msg::data(
                    &mut self.out,
                    RTMP_MEDIA_STREAM_ID,
                    &[
                        Amf0Value::String("|RtmpSampleAccess".into()),
                        Amf0Value::Boolean(true),
                        Amf0Value::Boolean(true),
                    ],
                );
                Ok(())
            }
            Err(e) => self.refuse_play("NetStream.Play.StreamNotFound", e.to_string()),
        }
    }

    fn refuse_play(&mut self, code: &str, description: String) -> Result<(), SessionError> {
        metrics::global().play_refused.fetch_add(1, Ordering::Relaxed);
        msg::on_status(&mut self.out, "error", code, &description);
        tracing::info!(reason = %description, "play refused");
        Err(SessionError::Refused(format!("play refused: {description}")))
    }
}

/// Stream key, parsed query and raw query string of a publish/play request.
type Target = (StreamKey, Vec<(String, String)>, String);

fn be_u32(b: &[u8]) -> Option<u32> {
    b.get(..4).map(|x| u32::from_be_bytes([x[0], x[1], x[2], x[3]]))
}
