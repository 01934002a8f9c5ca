//! Readers: one tokio task and one socket each, HTTP-FLV or RTMP, parsing just enough to see tag boundaries,
//! types and timestamps (payloads are not looked into beyond the first two bytes of video tags).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use anyhow::{anyhow, bail, Context, Result};
use livegate::media::amf0::Amf0Value;
use livegate::media::flv::{FlvParser, TAG_AUDIO, TAG_SCRIPT, TAG_VIDEO};
use livegate::rtmp::message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::now_ns;
use crate::rtmp_client::{parse_command, status_error, RtmpConn};

/// Live counters for the progress line.
pub static WIRE_BYTES: AtomicU64 = AtomicU64::new(0);
pub static ACTIVE: AtomicUsize = AtomicUsize::new(0);
pub static KEYED: AtomicUsize = AtomicUsize::new(0);
/// WHEP viewers: PLIs sent and H.264 keyframes (IDR access units) received, all viewers together.
pub static PLIS_SENT: AtomicU64 = AtomicU64::new(0);
pub static KEYFRAMES_RX: AtomicU64 = AtomicU64::new(0);

#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
pub enum Proto {
    Flv,
    Rtmp,
    /// Live HLS: playlist polls and segment GETs (hls.rs).
    Hls,
    /// WebRTC playback: webrtc-rs viewers POSTing recvonly offers to /whep/live/NAME (whep.rs).
    Whep,
}

pub struct ReaderCfg {
    pub proto: Proto,
    pub rtmp: SocketAddr,
    pub http: SocketAddr,
    /// Index of `http` in --read-from (0 without it).
    pub via: usize,
    pub stream: String,
    pub query: String,
    pub stop_at: tokio::time::Instant,
    pub read_buf: usize,
    pub sample_cap: usize,
    /// HLS readers: playlist poll interval.
    pub poll: std::time::Duration,
    /// WHEP viewers: offer Opus audio as well (livegate then runs its AAC→Opus transcoder).
    pub whep_audio: bool,
    /// WHEP viewers: send a PLI this often (ms; 0 = never).
    pub whep_pli_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Still reading when the run ended.
    Ran,
    /// The server ended the stream or closed the connection.
    Closed,
    Error(String),
}

/// What a reader saw that a correct server never sends.
#[derive(Default, Clone, Copy, Debug)]
pub struct Anomalies {
    /// Video timestamps going backwards.
    pub ts_backwards: u32,
    /// Jumps of more than 500 ms between consecutive video frames (a skip to a newer keyframe).
    pub gaps: u32,
    /// The first video frame was not a keyframe.
    pub nonkey_first: u32,
    /// The first keyframe arrived before any AVC sequence header.
    pub key_without_seq: u32,
    /// Tags of a type other than audio, video, script.
    pub bad_tag_type: u32,
    /// Media before onMetaData / audio before the AAC sequence header.
    pub audio_without_seq: u32,
}

pub struct ReaderResult {
    /// `ReaderCfg::via` of the reader.
    pub via: usize,
    pub start_ns: u64,
    pub end_ns: u64,
    pub first_key_ns: Option<u64>,
    pub wire_bytes: u64,
    /// Tag body bytes (what the publisher's byte count is compared with).
    pub media_bytes: u64,
    pub tags: u64,
    /// (video timestamp, receive instant) of every video frame.
    pub samples: Vec<(u32, u64)>,
    /// (audio timestamp, receive instant) of every AAC frame.
    pub audio_samples: Vec<(u32, u64)>,
    pub outcome: Outcome,
    pub anomalies: Anomalies,
}

struct Sink {
    r: ReaderResult,
    last_video: Option<u32>,
    seen_video_seq: bool,
    seen_audio_seq: bool,
    seen_video: bool,
}

impl Sink {
    fn on_tag(&mut self, tag_type: u8, ts: u32, body: &[u8], now: u64) {
        let r = &mut self.r;
        r.media_bytes += body.len() as u64;
        r.tags += 1;
        match tag_type {
            TAG_VIDEO if body.len() >= 2 => match body[1] {
                0 => self.seen_video_seq = true,
                1 => {
                    let key = body[0] == 0x17;
                    if !self.seen_video {
                        self.seen_video = true;
                        if !key {
                            r.anomalies.nonkey_first += 1;
                        }
                    }
                    if key && r.first_key_ns.is_none() {
                        r.first_key_ns = Some(now);
                        KEYED.fetch_add(1, Ordering::Relaxed);
                        if !self.seen_video_seq {
                            r.anomalies.key_without_seq += 1;
                        }
                    }
                    if let Some(l) = self.last_video {
                        if ts < l {
                            r.anomalies.ts_backwards += 1;
                        } else if ts - l > 500 {
                            r.anomalies.gaps += 1;
                        }
                    }
                    self.last_video = Some(ts);
                    if r.samples.len() < r.samples.capacity() {
                        r.samples.push((ts, now));
                    }
                }
                _ => {}
            },
            TAG_AUDIO if body.len() >= 2 && body[0] >> 4 == 10 => {
                if body[1] == 0 {
                    self.seen_audio_seq = true;
                } else {
                    if !self.seen_audio_seq {
                        r.anomalies.audio_without_seq += 1;
                        self.seen_audio_seq = true; // count once
                    }
                    if r.audio_samples.len() < r.audio_samples.capacity() {
                        r.audio_samples.push((ts, now));
                    }
                }
            }
            TAG_VIDEO | TAG_AUDIO | TAG_SCRIPT => {}
            _ => r.anomalies.bad_tag_type += 1,
        }
    }
}

pub async fn run(cfg: &ReaderCfg) -> ReaderResult {
    ACTIVE.fetch_add(1, Ordering::Relaxed);
    let mut sink = Sink {
        r: ReaderResult {
            via: cfg.via,
            start_ns: now_ns(),
            end_ns: 0,
            first_key_ns: None,
            wire_bytes: 0,
            media_bytes: 0,
            tags: 0,
            samples: Vec::with_capacity(cfg.sample_cap),
            audio_samples: Vec::with_capacity(cfg.sample_cap * 3 / 2),
            outcome: Outcome::Ran,
            anomalies: Anomalies::default(),
        },
        last_video: None,
        seen_video_seq: false,
        seen_audio_seq: false,
        seen_video: false,
    };
    let res = match cfg.proto {
        Proto::Flv => run_flv(cfg, &mut sink).await,
        Proto::Rtmp => run_rtmp(cfg, &mut sink).await,
        Proto::Hls => Err(anyhow!("HLS readers are hls::run")),
        Proto::Whep => Err(anyhow!("WHEP viewers are whep::run")),
    };
    sink.r.outcome = match res {
        Ok(o) => o,
        Err(e) => Outcome::Error(format!("{e:#}")),
    };
    sink.r.end_ns = now_ns();
    ACTIVE.fetch_sub(1, Ordering::Relaxed);
    sink.r
}

/// Runs `fut` (connection setup) unless the run ends first.
async fn before_stop<T>(cfg: &ReaderCfg, fut: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    match tokio::time::timeout_at(cfg.stop_at, fut).await {
        Ok(r) => r,
        Err(_) => bail!("setup not finished when the run ended"),
    }
}

async fn run_flv(cfg: &ReaderCfg, sink: &mut Sink) -> Result<Outcome> {
    let mut sock = before_stop(cfg, async {
        let mut sock = TcpStream::connect(cfg.http).await.with_context(|| format!("connect {}", cfg.http))?;
        sock.set_nodelay(true)?;
        let req = format!(
            "GET /live/{}.flv{} HTTP/1.1\r\nHost: {}\r\nUser-Agent: livegate-load\r\nAccept: */*\r\n\r\n",
            cfg.stream, cfg.query, cfg.http
        );
        sock.write_all(req.as_bytes()).await?;
        Ok(sock)
    })
    .await?;
    let mut buf = vec![0u8; cfg.read_buf];
    let mut head: Vec<u8> = Vec::new();
    let mut body: Option<Body> = None;
    let mut parser = FlvParser::new();
    let stop = tokio::time::sleep_until(cfg.stop_at);
    tokio::pin!(stop);
    loop {
        let n = tokio::select! {
            biased;
            _ = &mut stop => return Ok(Outcome::Ran),
            r = sock.read(&mut buf) => r.context("read")?,
        };
        if n == 0 {
            if body.is_none() {
                bail!("connection closed before the HTTP response headers ended");
            }
            return Ok(Outcome::Closed);
        }
        let now = now_ns();
        sink.r.wire_bytes += n as u64;
        WIRE_BYTES.fetch_add(n as u64, Ordering::Relaxed);
        let mut data = &buf[..n];
        let b = match &mut body {
            Some(b) => b,
            None => {
                head.extend_from_slice(data);
                let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") else {
                    if head.len() > 16 * 1024 {
                        bail!("HTTP response headers longer than 16 KiB");
                    }
                    continue;
                };
                let text = String::from_utf8_lossy(&head[..end]).to_ascii_lowercase();
                let status = text.lines().next().unwrap_or("").to_owned();
                if status.split_whitespace().nth(1) != Some("200") {
                    bail!("HTTP status: {}", status.trim());
                }
                let chunked = text.lines().any(|l| {
                    l.split_once(':').is_some_and(|(k, v)| k.trim() == "transfer-encoding" && v.contains("chunked"))
                });
                // What followed the headers in this read is body.
                let skip = end + 4 - (head.len() - n);
                data = &buf[skip..n];
                head = Vec::new();
                body.insert(if chunked { Body::Chunked(Dechunker::default()) } else { Body::Raw })
            }
        };
        let ended = match b {
            Body::Raw => {
                parser.feed(data);
                false
            }
            Body::Chunked(d) => {
                d.feed(data, |piece| parser.feed(piece)).map_err(|e| anyhow!("chunked encoding: {e}"))?
            }
        };
        while let Some(tag) = parser.next_tag().map_err(|e| anyhow!("FLV: {e}"))? {
            sink.on_tag(tag.tag_type, tag.timestamp, &tag.body, now);
        }
        if ended {
            return Ok(Outcome::Closed);
        }
    }
}

async fn run_rtmp(cfg: &ReaderCfg, sink: &mut Sink) -> Result<Outcome> {
    let mut c = before_stop(cfg, async {
        let mut c = RtmpConn::open(cfg.rtmp, cfg.read_buf).await?;
        let tc_url = format!("rtmp://{}/live", cfg.rtmp);
        c.connect_app("live", &tc_url, false).await?;
        let sid = c.create_stream(2.0).await?;
        let s = |v: &str| Amf0Value::String(v.into());
        let name = format!("{}{}", cfg.stream, cfg.query);
        c.command(sid, &[s("play"), Amf0Value::Number(3.0), Amf0Value::Null, s(&name), Amf0Value::Number(-2000.0)])
            .await?;
        // Set Buffer Length (3 s), as ffmpeg sends after play.
        let mut ev = sid.to_be_bytes().to_vec();
        ev.extend_from_slice(&3000u32.to_be_bytes());
        message::user_control(&mut c.out, 3, &ev);
        c.flush().await?;
        Ok(c)
    })
    .await?;
    let stop = tokio::time::sleep_until(cfg.stop_at);
    tokio::pin!(stop);
    let mut now = now_ns();
    let mut counted = c.read_total;
    loop {
        while let Some(m) = c.poll_message()? {
            match m.type_id {
                message::AUDIO | message::VIDEO | message::DATA_AMF0 => {
                    sink.on_tag(m.type_id, m.timestamp, &m.payload, now);
                }
                message::COMMAND_AMF0 | message::COMMAND_AMF3 => {
                    if let Some(cmd) = parse_command(&m)? {
                        if let Some(e) = status_error(&cmd) {
                            bail!("onStatus error: {e}");
                        }
                    }
                }
                _ => {}
            }
        }
        c.flush().await?;
        let n = tokio::select! {
            biased;
            _ = &mut stop => return Ok(Outcome::Ran),
            r = c.read_more() => r?,
        };
        if n == 0 {
            return Ok(Outcome::Closed);
        }
        now = now_ns();
        let got = c.read_total - counted;
        counted = c.read_total;
        sink.r.wire_bytes += got;
        WIRE_BYTES.fetch_add(got, Ordering::Relaxed);
    }
}

enum Body {
    Raw,
    Chunked(Dechunker),
}

/// Incremental HTTP/1.1 chunked transfer decoding.
#[derive(Default)]
pub struct Dechunker {
    st: St,
    size: usize,
}

#[derive(Default, Clone, Copy, PartialEq, Eq, Debug)]
enum St {
    #[default]
    Size,
    Ext,
    SizeLf,
    Data(usize),
    DataCr,
    DataLf,
    Done,
}

impl Dechunker {
    /// Hands each piece of chunk data in `input` to `out`. Returns true once the last (0-size) chunk was seen.
    pub fn feed(&mut self, mut input: &[u8], mut out: impl FnMut(&[u8])) -> Result<bool, String> {
        while let Some((&b, rest)) = input.split_first() {
            match self.st {
                St::Done => return Ok(true),
                St::Data(left) => {
                    let k = left.min(input.len());
                    out(&input[..k]);
                    input = &input[k..];
                    self.st = if k == left { St::DataCr } else { St::Data(left - k) };
                    continue;
                }
                St::Size => match b {
                    b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                        let v = (b as char).to_digit(16).unwrap_or(0) as usize;
                        self.size =
                            self.size.checked_mul(16).filter(|s| *s < 1 << 40).ok_or("chunk size overflow")? + v;
                    }
                    b';' | b' ' | b'\t' => self.st = St::Ext,
                    b'\r' => self.st = St::SizeLf,
                    b'\n' => self.end_size(),
                    _ => return Err(format!("bad byte {b:#04x} in chunk size")),
                },
                St::Ext => match b {
                    b'\r' => self.st = St::SizeLf,
                    b'\n' => self.end_size(),
                    _ => {}
                },
                St::SizeLf => {
                    if b != b'\n' {
                        return Err("chunk size line not ended by CRLF".into());
                    }
                    self.end_size();
                }
                St::DataCr => {
                    if b != b'\r' {
                        return Err(format!("chunk data not followed by CRLF (got {b:#04x})"));
                    }
                    self.st = St::DataLf;
                }
                St::DataLf => {
                    if b != b'\n' {
                        return Err("chunk data not followed by CRLF".into());
                    }
                    self.st = St::Size;
                }
            }
            input = rest;
        }
        Ok(self.st == St::Done)
    }

    fn end_size(&mut self) {
        self.st = if self.size == 0 { St::Done } else { St::Data(self.size) };
        self.size = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dechunks_in_any_split() {
        let wire = b"5\r\nhello\r\n3;x=1\r\nabc\r\n0\r\n\r\n";
        for split in 0..wire.len() {
            let mut d = Dechunker::default();
            let mut got = Vec::new();
            let a = d.feed(&wire[..split], |p| got.extend_from_slice(p)).unwrap();
            let b = d.feed(&wire[split..], |p| got.extend_from_slice(p)).unwrap();
            assert_eq!(got, b"helloabc");
            assert!(b || a);
        }
    }
}
