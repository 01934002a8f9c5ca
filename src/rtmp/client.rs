//! The client side of RTMP, for livegate's own connections to other servers (relays now; RTMP pulls later):
//! handshake, connect, createStream, publish, and the protocol control a server expects, on the same sans-IO
//! pieces the server uses (`handshake`, `chunk`, `message`, AMF0).

use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::chunk::{self, ChunkDecoder, Message};
use super::handshake;
use super::message::{self, Command};
use crate::media::amf0::{self, Amf0Value};

const CSID_CONTROL: u32 = 2;
const CSID_COMMAND: u32 = 3;
const CSID_STREAM_COMMAND: u32 = 8;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{0:?} is not an rtmp:// URL with an app and a stream (rtmp://host[:port]/app/stream)")]
    BadUrl(String),
    #[error("cannot connect to {addr}: {source}")]
    Connect { addr: String, source: std::io::Error },
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("handshake: {0}")]
    Handshake(String),
    #[error("the server closed the connection")]
    Closed,
    #[error("bad data from the server: {0}")]
    Protocol(String),
    #[error("the server refused: {0}")]
    Refused(String),
}

/// An `rtmp://host[:port]/app/stream?query` URL, split as RTMP needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RtmpUrl {
    pub host: String,
    pub port: u16,
    pub app: String,
    /// The stream name with its query (what `publish` and `play` send).
    pub stream: String,
}

impl RtmpUrl {
    pub fn parse(url: &str) -> Result<Self, ClientError> {
        let bad = || ClientError::BadUrl(crate::names::redact_url(url));
        let rest = url.strip_prefix("rtmp://").ok_or_else(bad)?;
        let (authority, path) = rest.split_once('/').ok_or_else(bad)?;
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.is_empty() && !p.contains(']') => (h, p.parse().map_err(|_| bad())?),
            _ => (authority, 1935),
        };
        let (app, stream) = path.split_once('/').ok_or_else(bad)?;
        if host.is_empty() || app.is_empty() || stream.is_empty() || stream.starts_with('?') {
            return Err(bad());
        }
        Ok(Self { host: host.to_owned(), port, app: app.to_owned(), stream: stream.to_owned() })
    }

    pub fn tc_url(&self) -> String {
        format!("rtmp://{}:{}/{}", self.host, self.port, self.app)
    }
}

/// A connection to an RTMP server.
pub struct RtmpClient {
    sock: TcpStream,
    rbuf: BytesMut,
    dec: ChunkDecoder,
    /// Outbound bytes not written yet.
    pub out: Vec<u8>,
    pub out_chunk: u32,
    read_total: u64,
    last_ack: u64,
    window: u64,
    timeout: Duration,
}

impl RtmpClient {
    /// TCP connect and the handshake, each within `timeout`.
    pub async fn connect(url: &RtmpUrl, timeout: Duration) -> Result<Self, ClientError> {
        let addr = format!("{}:{}", url.host, url.port);
        let sock = tokio::time::timeout(timeout, TcpStream::connect(&addr))
            .await
            .map_err(|_| ClientError::Timeout(timeout))?
            .map_err(|source| ClientError::Connect { addr, source })?;
        sock.set_nodelay(true)?;
        let mut c = Self {
            sock,
            rbuf: BytesMut::with_capacity(16 * 1024),
            dec: ChunkDecoder::new(),
            out: Vec::with_capacity(4096),
            out_chunk: 128,
            read_total: 0,
            last_ack: 0,
            window: 0,
            timeout,
        };
        let c0c1 = handshake::client_c0c1(true, &mut rand::thread_rng());
        c.sock.write_all(&c0c1).await?;
        let mut s = vec![0u8; 1 + 2 * handshake::HANDSHAKE_SIZE];
        tokio::time::timeout(timeout, c.sock.read_exact(&mut s)).await.map_err(|_| ClientError::Timeout(timeout))??;
        let c2 = handshake::client_c2(&c0c1, &s, &mut rand::thread_rng())
            .map_err(|e| ClientError::Handshake(e.to_string()))?;
        c.sock.write_all(&c2).await?;
        Ok(c)
    }

    pub async fn flush(&mut self) -> Result<(), ClientError> {
        if !self.out.is_empty() {
            self.sock.write_all(&self.out).await?;
            self.out.clear();
        }
        Ok(())
    }

    pub async fn set_chunk_size(&mut self, size: u32) -> Result<(), ClientError> {
        let body = size.to_be_bytes();
        chunk::encode_message(&mut self.out, self.out_chunk, CSID_CONTROL, 0, message::SET_CHUNK_SIZE, 0, &[&body]);
        self.out_chunk = size;
        self.flush().await
    }

    async fn command(&mut self, stream_id: u32, values: &[Amf0Value]) -> Result<(), ClientError> {
        let body = amf0::encode_all(values);
        let csid = if stream_id == 0 { CSID_COMMAND } else { CSID_STREAM_COMMAND };
        chunk::encode_message(&mut self.out, self.out_chunk, csid, 0, message::COMMAND_AMF0, stream_id, &[&body]);
        self.flush().await
    }

    /// `connect` to `url`'s app, `createStream`, `publish` its stream: the message stream id to send media on.
    pub async fn publish(&mut self, url: &RtmpUrl) -> Result<u32, ClientError> {
        let s = |v: &str| Amf0Value::String(v.into());
        let n = Amf0Value::Number;
        let tc = url.tc_url();
        let obj = Amf0Value::object(&[
            ("app", s(&url.app)),
            ("type", s("nonprivate")),
            ("flashVer", s("FMLE/3.0 (compatible; livegate)")),
            ("tcUrl", s(&tc)),
        ]);
        self.command(0, &[s("connect"), n(1.0), obj]).await?;
        self.wait_result(1.0).await?;
        self.command(0, &[s("releaseStream"), n(2.0), Amf0Value::Null, s(&url.stream)]).await?;
        self.command(0, &[s("FCPublish"), n(3.0), Amf0Value::Null, s(&url.stream)]).await?;
        self.command(0, &[s("createStream"), n(4.0), Amf0Value::Null]).await?;
        let r = self.wait_result(4.0).await?;
        let sid = r.args.first().and_then(|v| v.as_f64()).ok_or(ClientError::Protocol("no stream id".into()))? as u32;
        self.command(sid, &[s("publish"), n(5.0), Amf0Value::Null, s(&url.stream), s("live")]).await?;
        self.wait_status("NetStream.Publish.Start").await?;
        Ok(sid)
    }

    /// `connect` to `url`'s app as a player, `createStream`, `play` its stream, until the server says it plays.
    pub async fn play(&mut self, url: &RtmpUrl) -> Result<u32, ClientError> {
        let s = |v: &str| Amf0Value::String(v.into());
        let n = Amf0Value::Number;
        let obj = Amf0Value::object(&[
            ("app", s(&url.app)),
            ("flashVer", s("LNX 9,0,124,2")),
            ("tcUrl", s(&url.tc_url())),
            ("fpad", Amf0Value::Boolean(false)),
            ("capabilities", n(15.0)),
            ("audioCodecs", n(4071.0)),
            ("videoCodecs", n(252.0)),
            ("videoFunction", n(1.0)),
        ]);
        self.command(0, &[s("connect"), n(1.0), obj]).await?;
        self.wait_result(1.0).await?;
        self.command(0, &[s("createStream"), n(2.0), Amf0Value::Null]).await?;
        let r = self.wait_result(2.0).await?;
        let sid = r.args.first().and_then(|v| v.as_f64()).ok_or(ClientError::Protocol("no stream id".into()))? as u32;
        // SetBufferLength (user control event 3): stream id and 1000 ms, as players send it before play.
        let mut ev = sid.to_be_bytes().to_vec();
        ev.extend_from_slice(&1000u32.to_be_bytes());
        message::user_control(&mut self.out, 3, &ev);
        self.command(sid, &[s("play"), n(3.0), Amf0Value::Null, s(&url.stream), n(-1000.0)]).await?;
        self.wait_status("NetStream.Play.Start").await?;
        Ok(sid)
    }

    /// The next audio, video or data message of a play; `None` when the server says the stream ended
    /// (`NetStream.Play.UnpublishNotify`, `NetStream.Play.Stop`). Waits as long as it takes: the caller bounds it.
    pub async fn next_media(&mut self) -> Result<Option<Message>, ClientError> {
        loop {
            if let Some(m) = self.poll_message()? {
                match m.type_id {
                    message::AUDIO | message::VIDEO | message::DATA_AMF0 => return Ok(Some(m)),
                    _ => {}
                }
                if let Some(c) = parse_command(&m)? {
                    if let Some(e) = status_error(&c) {
                        return Err(ClientError::Refused(e));
                    }
                    let code = status_code(&c).unwrap_or("");
                    if code == "NetStream.Play.UnpublishNotify" || code == "NetStream.Play.Stop" {
                        return Ok(None);
                    }
                }
                continue;
            }
            self.flush().await?;
            let n = self.sock.read_buf(&mut self.rbuf).await?;
            if n == 0 {
                return Err(ClientError::Closed);
            }
            self.account(n);
        }
    }

    /// Reads what the server sent: queues the answers its protocol control needs (written with the next
    /// `write`) and returns an error status (a kick, a refusal) as an error. Cancel-safe (it only reads), so a
    /// publisher can `select!` it against its media.
    pub async fn service(&mut self) -> Result<(), ClientError> {
        let n = self.sock.read_buf(&mut self.rbuf).await?;
        if n == 0 {
            return Err(ClientError::Closed);
        }
        self.account(n);
        while let Some(m) = self.poll_message()? {
            if let Some(c) = parse_command(&m)? {
                if let Some(e) = status_error(&c) {
                    return Err(ClientError::Refused(e));
                }
            }
        }
        Ok(())
    }

    fn account(&mut self, n: usize) {
        self.read_total += n as u64;
        if self.window > 0 && self.read_total - self.last_ack >= self.window {
            message::ack(&mut self.out, self.read_total as u32);
            self.last_ack = self.read_total;
        }
    }

    /// The next complete message, with protocol control handled here.
    fn poll_message(&mut self) -> Result<Option<Message>, ClientError> {
        loop {
            let Some(m) = self.dec.decode(&mut self.rbuf).map_err(|e| ClientError::Protocol(e.to_string()))? else {
                return Ok(None);
            };
            let p = &m.payload[..];
            match m.type_id {
                message::SET_CHUNK_SIZE if p.len() >= 4 => {
                    let size = u32::from_be_bytes([p[0], p[1], p[2], p[3]]) & 0x7FFF_FFFF;
                    self.dec.set_chunk_size(size).map_err(|e| ClientError::Protocol(e.to_string()))?;
                }
                message::WINDOW_ACK_SIZE if p.len() >= 4 => {
                    self.window = u32::from_be_bytes([p[0], p[1], p[2], p[3]]) as u64;
                }
                // A ping request: answer with a ping response carrying the same timestamp.
                message::USER_CONTROL if p.len() >= 6 && p[0] == 0 && p[1] == 6 => {
                    message::user_control(&mut self.out, 7, &p[2..6]);
                }
                message::SET_CHUNK_SIZE
                | message::WINDOW_ACK_SIZE
                | message::USER_CONTROL
                | message::ABORT
                | message::ACK
                | message::SET_PEER_BANDWIDTH => {}
                _ => return Ok(Some(m)),
            }
        }
    }

    async fn next_message(&mut self) -> Result<Message, ClientError> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            if let Some(m) = self.poll_message()? {
                return Ok(m);
            }
            self.flush().await?;
            let n = tokio::time::timeout_at(deadline, self.sock.read_buf(&mut self.rbuf))
                .await
                .map_err(|_| ClientError::Timeout(self.timeout))??;
            if n == 0 {
                return Err(ClientError::Closed);
            }
            self.account(n);
        }
    }

    async fn wait_result(&mut self, transaction: f64) -> Result<Command, ClientError> {
        loop {
            let m = self.next_message().await?;
            let Some(c) = parse_command(&m)? else { continue };
            if c.name == "onStatus" {
                if let Some(e) = status_error(&c) {
                    return Err(ClientError::Refused(e));
                }
            } else if c.transaction == transaction {
                match c.name.as_str() {
                    "_error" => return Err(ClientError::Refused(describe(&c))),
                    "_result" => return Ok(c),
                    _ => {}
                }
            }
        }
    }

    async fn wait_status(&mut self, want: &str) -> Result<(), ClientError> {
        loop {
            let m = self.next_message().await?;
            let Some(c) = parse_command(&m)? else { continue };
            if c.name != "onStatus" {
                continue;
            }
            if let Some(e) = status_error(&c) {
                return Err(ClientError::Refused(e));
            }
            if status_code(&c).is_some_and(|code| code.starts_with(want)) {
                return Ok(());
            }
        }
    }

    /// Writes `bytes` (already chunked media) and what is queued.
    pub async fn write(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        self.flush().await?;
        self.sock.write_all(bytes).await?;
        Ok(())
    }
}

fn parse_command(m: &Message) -> Result<Option<Command>, ClientError> {
    if m.type_id != message::COMMAND_AMF0 && m.type_id != message::COMMAND_AMF3 {
        return Ok(None);
    }
    Command::parse(m.type_id, &m.payload).map(Some).map_err(|e| ClientError::Protocol(format!("bad command: {e}")))
}

fn status_code(c: &Command) -> Option<&str> {
    c.args.first().and_then(|o| o.get("code")).and_then(|v| v.as_str())
}

/// "code description" of an error-level onStatus.
fn status_error(c: &Command) -> Option<String> {
    let info = c.args.first()?;
    if info.get("level").and_then(|v| v.as_str()) != Some("error") {
        return None;
    }
    Some(describe(c))
}

fn describe(c: &Command) -> String {
    let info = c.args.first();
    let get = |k: &str| info.and_then(|o| o.get(k)).and_then(|v| v.as_str()).unwrap_or("");
    format!("{} {}", get("code"), get("description")).trim().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rtmp_urls_split_as_rtmp_needs_them() {
        let u = RtmpUrl::parse("rtmp://cdn.example.com/live/cam?txSecret=x&txTime=y").unwrap();
        assert_eq!((u.host.as_str(), u.port, u.app.as_str()), ("cdn.example.com", 1935, "live"));
        assert_eq!(u.stream, "cam?txSecret=x&txTime=y");
        assert_eq!(u.tc_url(), "rtmp://cdn.example.com:1935/live");
        assert_eq!(RtmpUrl::parse("rtmp://127.0.0.1:19350/a/b").unwrap().port, 19350);
        for bad in ["http://h/a/b", "rtmp://h/a", "rtmp://h/a/", "rtmp:///a/b", "rtmp://h:x/a/b", "rtmp://h/a/?q"] {
            assert!(RtmpUrl::parse(bad).is_err(), "{bad}");
        }
        let e = RtmpUrl::parse("rtmp://h/a?txSecret=secret").unwrap_err().to_string();
        assert!(!e.contains("secret\""), "{e}");
    }
}
