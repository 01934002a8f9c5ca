//! A minimal RTMP client on livegate's sans-IO protocol code: handshake, commands, protocol control.

use std::net::SocketAddr;

use anyhow::{anyhow, bail, Context, Result};
use bytes::BytesMut;
use livegate::media::amf0::{self, Amf0Value};
use livegate::rtmp::chunk::{self, ChunkDecoder, Message};
use livegate::rtmp::handshake;
use livegate::rtmp::message::{self, Command};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const CSID_CONTROL: u32 = 2;
const CSID_COMMAND: u32 = 3;
/// ffmpeg sends publish/play on this chunk stream.
pub const CSID_STREAM_COMMAND: u32 = 8;

pub struct RtmpConn {
    pub sock: TcpStream,
    pub rbuf: BytesMut,
    dec: ChunkDecoder,
    /// Pending outbound bytes (commands, acks, pong, media); `flush` writes them.
    pub out: Vec<u8>,
    pub out_chunk: u32,
    pub read_total: u64,
    last_ack: u64,
    window: u64,
    read_size: usize,
}

impl RtmpConn {
    /// TCP connect plus the client side of the (digest) handshake.
    pub async fn open(addr: SocketAddr, read_size: usize) -> Result<Self> {
        let mut sock = TcpStream::connect(addr).await.with_context(|| format!("connect {addr}"))?;
        sock.set_nodelay(true)?;
        let c0c1 = handshake::client_c0c1(true, &mut rand::thread_rng());
        sock.write_all(&c0c1).await?;
        let mut s = vec![0u8; 1 + 2 * handshake::HANDSHAKE_SIZE];
        sock.read_exact(&mut s).await.context("reading S0S1S2")?;
        let c2 = handshake::client_c2(&c0c1, &s, &mut rand::thread_rng()).map_err(|e| anyhow!("handshake: {e}"))?;
        sock.write_all(&c2).await?;
        Ok(Self {
            sock,
            rbuf: BytesMut::with_capacity(read_size),
            dec: ChunkDecoder::new(),
            out: Vec::with_capacity(4096),
            out_chunk: 128,
            read_total: 0,
            last_ack: 0,
            window: 0,
            read_size,
        })
    }

    pub async fn flush(&mut self) -> Result<()> {
        if !self.out.is_empty() {
            self.sock.write_all(&self.out).await.context("write")?;
            self.out.clear();
        }
        Ok(())
    }

    pub async fn set_chunk_size(&mut self, size: u32) -> Result<()> {
        chunk::encode_message(
            &mut self.out,
            self.out_chunk,
            CSID_CONTROL,
            0,
            message::SET_CHUNK_SIZE,
            0,
            &[&size.to_be_bytes()],
        );
        self.out_chunk = size;
        self.flush().await
    }

    /// Queues an AMF0 command (encoded with our current outbound chunk size) and flushes.
    pub async fn command(&mut self, stream_id: u32, values: &[Amf0Value]) -> Result<()> {
        let body = amf0::encode_all(values);
        let csid = if stream_id == 0 { CSID_COMMAND } else { CSID_STREAM_COMMAND };
        chunk::encode_message(&mut self.out, self.out_chunk, csid, 0, message::COMMAND_AMF0, stream_id, &[&body]);
        self.flush().await
    }

    /// Reads once into `rbuf` (queuing an acknowledgement when the window is crossed). 0 means EOF.
    pub async fn read_more(&mut self) -> Result<usize> {
        self.rbuf.reserve(self.read_size);
        let n = self.sock.read_buf(&mut self.rbuf).await.context("read")?;
        self.account(n);
        Ok(n)
    }

    /// Counts `n` bytes read and queues an Acknowledgement when the peer's window is crossed.
    pub fn account(&mut self, n: usize) {
        self.read_total += n as u64;
        if self.window > 0 && self.read_total - self.last_ack >= self.window {
            message::ack(&mut self.out, self.read_total as u32);
            self.last_ack = self.read_total;
        }
    }

    /// The next complete message already buffered, with protocol control messages handled here (Set Chunk
    /// Size, Window Acknowledgement Size, ping requests) and not returned.
    pub fn poll_message(&mut self) -> Result<Option<Message>> {
        loop {
            let Some(m) = self.dec.decode(&mut self.rbuf).map_err(|e| anyhow!("chunk stream: {e}"))? else {
                return Ok(None);
            };
            let p = &m.payload[..];
            match m.type_id {
                message::SET_CHUNK_SIZE if p.len() >= 4 => {
                    let size = u32::from_be_bytes([p[0], p[1], p[2], p[3]]) & 0x7FFF_FFFF;
                    self.dec.set_chunk_size(size).map_err(|e| anyhow!("server Set Chunk Size: {e}"))?;
                }
                message::WINDOW_ACK_SIZE if p.len() >= 4 => {
                    self.window = u32::from_be_bytes([p[0], p[1], p[2], p[3]]) as u64;
                }
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

    pub async fn next_message(&mut self) -> Result<Message> {
        loop {
            if let Some(m) = self.poll_message()? {
                return Ok(m);
            }
            self.flush().await?;
            if self.read_more().await? == 0 {
                bail!("server closed the connection");
            }
        }
    }

    /// Waits for `_result` / `_error` of `transaction`; an `_error` or an error-level onStatus is an error.
    pub async fn wait_result(&mut self, transaction: f64) -> Result<Command> {
        loop {
            let m = self.next_message().await?;
            let Some(c) = parse_command(&m)? else { continue };
            if c.name == "onStatus" {
                if let Some(e) = status_error(&c) {
                    bail!("{e}");
                }
            } else if c.transaction == transaction {
                if c.name == "_error" {
                    bail!("_error: {}", describe(&c));
                }
                if c.name == "_result" {
                    return Ok(c);
                }
            }
        }
    }

    /// Waits for an onStatus whose code starts with `want`; error-level statuses are errors.
    pub async fn wait_status(&mut self, want: &str) -> Result<()> {
        loop {
            let m = self.next_message().await?;
            let Some(c) = parse_command(&m)? else { continue };
            if c.name != "onStatus" {
                continue;
            }
            if let Some(e) = status_error(&c) {
                bail!("{e}");
            }
            if status_code(&c).is_some_and(|code| code.starts_with(want)) {
                return Ok(());
            }
        }
    }

    /// `connect` to an app; a publisher introduces itself like OBS/ffmpeg, a player like ffplay.
    pub async fn connect_app(&mut self, app: &str, tc_url: &str, publisher: bool) -> Result<()> {
        let s = |v: &str| Amf0Value::String(v.into());
        let n = Amf0Value::Number;
        let obj = if publisher {
            Amf0Value::object(&[
                ("app", s(app)),
                ("type", s("nonprivate")),
                ("flashVer", s("FMLE/3.0 (compatible; FMSc/1.0)")),
                ("swfUrl", s(tc_url)),
                ("tcUrl", s(tc_url)),
            ])
        } else {
            Amf0Value::object(&[
                ("app", s(app)),
                ("flashVer", s("LNX 9,0,124,2")),
                ("tcUrl", s(tc_url)),
                ("fpad", Amf0Value::Boolean(false)),
                ("capabilities", n(15.0)),
                ("audioCodecs", n(4071.0)),
                ("videoCodecs", n(252.0)),
                ("videoFunction", n(1.0)),
            ])
        };
        self.command(0, &[s("connect"), n(1.0), obj]).await?;
        self.wait_result(1.0).await.context("connect")?;
        Ok(())
    }

    /// `createStream`; returns the message stream id.
    pub async fn create_stream(&mut self, transaction: f64) -> Result<u32> {
        self.command(0, &[Amf0Value::String("createStream".into()), Amf0Value::Number(transaction), Amf0Value::Null])
            .await?;
        let r = self.wait_result(transaction).await.context("createStream")?;
        let id =
            r.args.first().and_then(|v| v.as_f64()).ok_or_else(|| anyhow!("createStream result has no stream id"))?;
        Ok(id as u32)
    }
}

pub fn parse_command(m: &Message) -> Result<Option<Command>> {
    if m.type_id != message::COMMAND_AMF0 && m.type_id != message::COMMAND_AMF3 {
        return Ok(None);
    }
    Command::parse(m.type_id, &m.payload).map(Some).map_err(|e| anyhow!("bad command from server: {e}"))
}

pub fn status_code(c: &Command) -> Option<&str> {
    c.args.first().and_then(|o| o.get("code")).and_then(|v| v.as_str())
}

/// "code: description" of an error-level onStatus.
pub fn status_error(c: &Command) -> Option<String> {
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
