//! HLS readers: each polls the live playlist every `poll` (hls.segment_secs / 2) and fetches every segment
//! that appeared since its last poll (on its first poll, only the newest one: it joins at the live edge), as
//! plain HTTP/1.1 GETs on one keep-alive connection per reader (reconnected if livegate closes it).

use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use anyhow::{bail, Context, Result};
use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::now_ns;
use crate::reader::{Dechunker, Outcome, ReaderCfg, ACTIVE, KEYED, WIRE_BYTES};

pub struct HlsResult {
    pub start_ns: u64,
    pub end_ns: u64,
    /// When the first segment was complete.
    pub first_segment_ns: Option<u64>,
    pub wire_bytes: u64,
    pub segment_bytes: u64,
    pub playlists: u32,
    pub segments: u32,
    /// Segments that left the playlist window before this reader saw them (sequence-number gaps).
    pub missed: u32,
    /// Segment requests answered other than 200 (a listed segment that is already gone).
    pub segment_errors: u32,
    /// Segment bodies that are not whole 188-byte TS packets starting with 0x47.
    pub bad_ts: u32,
    /// Request -> last body byte of each segment, microseconds.
    pub fetch_us: Vec<u32>,
    /// TCP connections opened (1 when keep-alive held throughout).
    pub connects: u32,
    pub outcome: Outcome,
}

pub async fn run(cfg: &ReaderCfg) -> HlsResult {
    ACTIVE.fetch_add(1, Ordering::Relaxed);
    let mut r = HlsResult {
        start_ns: now_ns(),
        end_ns: 0,
        first_segment_ns: None,
        wire_bytes: 0,
        segment_bytes: 0,
        playlists: 0,
        segments: 0,
        missed: 0,
        segment_errors: 0,
        bad_ts: 0,
        fetch_us: Vec::new(),
        connects: 0,
        outcome: Outcome::Ran,
    };
    let mut http = Http::new(cfg.http, cfg.read_buf);
    let res = poll_loop(cfg, &mut http, &mut r).await;
    r.outcome = match res {
        Ok(o) => o,
        Err(e) => Outcome::Error(format!("{e:#}")),
    };
    r.wire_bytes = http.wire;
    r.connects = http.connects;
    r.end_ns = now_ns();
    ACTIVE.fetch_sub(1, Ordering::Relaxed);
    r
}

async fn poll_loop(cfg: &ReaderCfg, http: &mut Http, r: &mut HlsResult) -> Result<Outcome> {
    let playlist = format!("/live/{}.m3u8{}", cfg.stream, cfg.query);
    let stop = tokio::time::sleep_until(cfg.stop_at);
    tokio::pin!(stop);
    let mut last_seq: Option<u64> = None;
    let mut next = tokio::time::Instant::now();
    loop {
        let ended = tokio::select! {
            biased;
            _ = &mut stop => return Ok(Outcome::Ran),
            e = poll_once(&playlist, http, r, &mut last_seq) => e?,
        };
        if ended {
            return Ok(Outcome::Closed);
        }
        next += cfg.poll;
        let now = tokio::time::Instant::now();
        if next < now {
            next = now; // the poll took longer than the interval: poll again at once, without a burst
        }
        tokio::select! {
            biased;
            _ = &mut stop => return Ok(Outcome::Ran),
            _ = tokio::time::sleep_until(next) => {}
        }
    }
}

/// One playlist poll plus the new segments. Returns true when the playlist has ended (#EXT-X-ENDLIST).
async fn poll_once(playlist: &str, http: &mut Http, r: &mut HlsResult, last_seq: &mut Option<u64>) -> Result<bool> {
    let resp = http.get(playlist, true).await.context("playlist")?;
    r.playlists += 1;
    if resp.status != 200 {
        let body = String::from_utf8_lossy(&resp.body);
        bail!("playlist: HTTP {} {}", resp.status, body.chars().take(120).collect::<String>());
    }
    let text = String::from_utf8_lossy(&resp.body);
    let (media_seq, uris, ended) = parse_playlist(&text)?;
    if uris.is_empty() {
        return Ok(ended);
    }
    let newest = media_seq + uris.len() as u64 - 1;
    let from = match *last_seq {
        None => newest,
        Some(l) => {
            if media_seq > l + 1 {
                r.missed += (media_seq - l - 1) as u32;
            }
            (l + 1).max(media_seq)
        }
    };
    for seq in from..=newest {
        let path = resolve(playlist, uris[(seq - media_seq) as usize]);
        let t = now_ns();
        let seg = http.get(&path, false).await.with_context(|| format!("segment {path}"))?;
        *last_seq = Some(seq);
        if seg.status != 200 {
            r.segment_errors += 1;
            continue;
        }
        let done = now_ns();
        r.fetch_us.push(((done - t) / 1000).min(u32::MAX as u64) as u32);
        r.segments += 1;
        r.segment_bytes += seg.body_len;
        if seg.body_len == 0 || seg.body_len % 188 != 0 || seg.first != Some(0x47) {
            r.bad_ts += 1;
        }
        if r.first_segment_ns.is_none() {
            r.first_segment_ns = Some(done);
            KEYED.fetch_add(1, Ordering::Relaxed);
        }
    }
    Ok(ended)
}

/// (EXT-X-MEDIA-SEQUENCE, segment URIs in order, whether #EXT-X-ENDLIST is present).
fn parse_playlist(text: &str) -> Result<(u64, Vec<&str>, bool)> {
    if !text.starts_with("#EXTM3U") {
        bail!("playlist does not start with #EXTM3U: {:?}", text.chars().take(60).collect::<String>());
    }
    let mut media_seq = 0;
    let mut uris = Vec::new();
    let mut ended = false;
    for l in text.lines().map(str::trim) {
        if let Some(v) = l.strip_prefix("#EXT-X-MEDIA-SEQUENCE:") {
            media_seq = v.trim().parse().with_context(|| format!("bad {l:?}"))?;
        } else if l == "#EXT-X-ENDLIST" {
            ended = true;
        } else if !l.is_empty() && !l.starts_with('#') {
            uris.push(l);
        }
    }
    Ok((media_seq, uris, ended))
}

/// A segment URI relative to the playlist's path (or absolute), as a request path.
fn resolve(playlist: &str, uri: &str) -> String {
    if let Some(rest) = uri.strip_prefix("http://") {
        return rest.find('/').map_or_else(|| "/".into(), |i| rest[i..].to_owned());
    }
    if uri.starts_with('/') {
        return uri.to_owned();
    }
    let path = playlist.split('?').next().unwrap_or(playlist);
    let dir = &path[..path.rfind('/').map_or(0, |i| i + 1)];
    format!("{dir}{uri}")
}

pub struct Response {
    pub status: u16,
    pub body_len: u64,
    pub first: Option<u8>,
    /// The body, when asked for.
    pub body: Vec<u8>,
}

/// A minimal HTTP/1.1 client on one keep-alive connection (no pipelining).
pub struct Http {
    addr: SocketAddr,
    sock: Option<TcpStream>,
    buf: BytesMut,
    read_size: usize,
    pub wire: u64,
    pub connects: u32,
}

impl Http {
    pub fn new(addr: SocketAddr, read_size: usize) -> Self {
        Self { addr, sock: None, buf: BytesMut::new(), read_size: read_size.max(4096), wire: 0, connects: 0 }
    }

    /// GET `path`. A kept-alive connection the server closed before answering is reopened once.
    pub async fn get(&mut self, path: &str, keep_body: bool) -> Result<Response> {
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: livegate-load\r\nAccept: */*\r\nConnection: keep-alive\r\n\r\n",
            self.addr
        );
        for attempt in 0.. {
            let reused = self.sock.is_some();
            if !reused {
                let s = TcpStream::connect(self.addr).await.with_context(|| format!("connect {}", self.addr))?;
                s.set_nodelay(true)?;
                self.sock = Some(s);
                self.connects += 1;
                self.buf.clear();
            }
            let sent = self.sock.as_mut().expect("connected above").write_all(req.as_bytes()).await;
            let res = match sent {
                Ok(()) => self.response(keep_body).await,
                Err(e) => Err(Failure::Unanswered(e.into())),
            };
            match res {
                Ok((resp, close)) => {
                    if close {
                        self.sock = None;
                    }
                    return Ok(resp);
                }
                Err(Failure::Unanswered(_)) if reused && attempt == 0 => self.sock = None,
                Err(Failure::Unanswered(e) | Failure::Broken(e)) => {
                    self.sock = None;
                    return Err(e);
                }
            }
        }
        unreachable!("the loop returns")
    }

    /// Reads more into `buf`; 0 at EOF.
    async fn fill(&mut self) -> Result<usize> {
        self.buf.reserve(self.read_size);
        let n = self.sock.as_mut().expect("connected").read_buf(&mut self.buf).await.context("read")?;
        self.wire += n as u64;
        WIRE_BYTES.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }

    /// One response: (it, whether the server closes the connection after it).
    async fn response(&mut self, keep_body: bool) -> Result<(Response, bool), Failure> {
        let end = loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break end;
            }
            if self.buf.len() > 16 * 1024 {
                return Err(Failure::Broken(anyhow::anyhow!("HTTP response headers longer than 16 KiB")));
            }
            let empty = self.buf.is_empty();
            match self.fill().await {
                Ok(0) if empty => return Err(Failure::Unanswered(anyhow::anyhow!("connection closed"))),
                Ok(0) => return Err(Failure::Broken(anyhow::anyhow!("connection closed inside the headers"))),
                Ok(_) => {}
                Err(e) if empty => return Err(Failure::Unanswered(e)),
                Err(e) => return Err(Failure::Broken(e)),
            }
        };
        let head = String::from_utf8_lossy(&self.buf[..end]).to_ascii_lowercase();
        self.buf.advance(end + 4);
        let mut lines = head.lines();
        let status: u16 = lines
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| Failure::Broken(anyhow::anyhow!("bad HTTP status line")))?;
        let (mut length, mut chunked, mut close) = (None, false, false);
        for l in lines {
            let Some((k, v)) = l.split_once(':') else { continue };
            match (k.trim(), v.trim()) {
                ("content-length", v) => length = v.parse::<u64>().ok(),
                ("transfer-encoding", v) => chunked = v.contains("chunked"),
                ("connection", v) => close = v.contains("close"),
                _ => {}
            }
        }
        let mut resp = Response { status, body_len: 0, first: None, body: Vec::new() };
        let take = |resp: &mut Response, piece: &[u8]| {
            if piece.is_empty() {
                return;
            }
            resp.first.get_or_insert(piece[0]);
            resp.body_len += piece.len() as u64;
            if keep_body {
                resp.body.extend_from_slice(piece);
            }
        };
        if chunked {
            let mut d = Dechunker::default();
            loop {
                let data = self.buf.split();
                let done = d.feed(&data, |p| take(&mut resp, p)).map_err(|e| Failure::Broken(anyhow::anyhow!(e)))?;
                if done {
                    // Trailers are not expected (livegate sends none); what follows is the next response.
                    break;
                }
                if self.fill().await.map_err(Failure::Broken)? == 0 {
                    return Err(Failure::Broken(anyhow::anyhow!("connection closed inside a chunked body")));
                }
            }
        } else if let Some(mut left) = length {
            loop {
                let k = (self.buf.len() as u64).min(left) as usize;
                let piece = self.buf.split_to(k);
                take(&mut resp, &piece);
                left -= k as u64;
                if left == 0 {
                    break;
                }
                if self.fill().await.map_err(Failure::Broken)? == 0 {
                    return Err(Failure::Broken(anyhow::anyhow!("connection closed inside the body")));
                }
            }
        } else {
            // No length: the body runs to the end of the connection.
            loop {
                let piece = self.buf.split();
                take(&mut resp, &piece);
                if self.fill().await.map_err(Failure::Broken)? == 0 {
                    break;
                }
            }
            close = true;
        }
        Ok((resp, close))
    }
}

enum Failure {
    /// Nothing of a response arrived (a kept-alive connection the server had closed): worth one retry.
    Unanswered(anyhow::Error),
    Broken(anyhow::Error),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn playlist_and_uris() {
        let text = "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:7\n\
                    #EXTINF:2.000,\nload/ab12-7.ts\n#EXTINF:2.000,\nload/ab12-8.ts?k=1\n";
        let (seq, uris, ended) = parse_playlist(text).unwrap();
        assert_eq!((seq, uris.len(), ended), (7, 2, false));
        assert_eq!(resolve("/live/load.m3u8?k=1", uris[1]), "/live/load/ab12-8.ts?k=1");
        assert_eq!(resolve("/live/load.m3u8", "/x/y.ts"), "/x/y.ts");
        assert_eq!(resolve("/live/load.m3u8", "http://h:1/live/z.ts"), "/live/z.ts");
    }
}
