//! HLS pull sources (issue #12): `http://host[:port]/app/name.m3u8`, a live stream of MPEG-TS segments (H.264 and
//! AAC) that another server or a CDN publishes, read as a pull's tags.
//!
//! The playlist (a media playlist, or a master playlist whose first variant is taken) is read at its live edge and
//! re-read about twice per target duration; new segments are fetched in order, demuxed
//! ([`TsDemuxer`](crate::media::ts_demux::TsDemuxer)) and handed out as FLV-style tags on one continuous timeline,
//! across 33-bit wraps, EXT-X-DISCONTINUITY and source restarts. Segments the pull is catching up on go out at
//! once; the newest one goes out at the pace of its timestamps, while the playlist is re-read. EXT-X-ENDLIST ends
//! the stream after its last segment. Every fetch is bounded in bytes and in time.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use http_body_util::{BodyExt, Empty, LengthLimitError, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::time::Instant;

use super::pull::{Dialer, SourceFailure, SourceTag, TagSource};
use crate::media::flv;
use crate::media::ts_demux::TsDemuxer;
use crate::media::Frame;
use crate::names::redact_url;

/// The largest playlist read: thousands of segments' worth, far beyond any live window.
const MAX_PLAYLIST: usize = 1 << 20;
/// The largest segment read: minutes of high-bitrate video.
const MAX_SEGMENT: usize = 64 << 20;
/// How far behind the live edge a pull starts, in segments: enough for the first keyframe and a little buffer,
/// as players do.
const LIVE_EDGE_SEGMENTS: usize = 3;
const MAX_REDIRECTS: usize = 3;
/// Reload bounds: a tiny target duration must not make the pull hammer its source, a huge one must not make it
/// miss the session timeout while nothing changes.
const MIN_RELOAD: Duration = Duration::from_millis(250);
const MAX_RELOAD: Duration = Duration::from_secs(5);
/// The furthest ahead a paced tag may be due: a longer wait is a gap in the media, not worth waiting out.
const MAX_AHEAD: Duration = Duration::from_secs(2);
/// A new timeline (after a discontinuity) continues this long after the last frame of the old one.
const SPLICE_GAP_MS: i64 = 10;
/// Segment starts this far from where the timeline stands are a new timeline, tagged or not (a restarted
/// source): backwards at all, or forward more than a missed segment or two could explain.
const MAX_BACK_MS: i64 = 1_000;
const MAX_FORWARD_MS: i64 = 30_000;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PlaylistError {
    #[error("not an HLS playlist (it does not start with #EXTM3U)")]
    NotM3u8,
    #[error("not an HLS playlist (not UTF-8 text)")]
    NotText,
    #[error("a master playlist without a variant")]
    NoVariants,
    #[error("bad #{0} tag")]
    BadTag(String),
    #[error("encrypted segments (METHOD={0}) are not supported")]
    Encrypted(String),
    #[error("fragmented MP4 segments (EXT-X-MAP) are not supported, only MPEG-TS")]
    Fmp4,
    #[error("byte-range segments (EXT-X-BYTERANGE) are not supported")]
    ByteRange,
    #[error("{0:?} is not an http:// URL livegate can fetch")]
    BadUri(String),
}

/// A parsed playlist.
#[derive(Debug, Clone, PartialEq)]
pub enum Playlist {
    /// The variants' URIs, in playlist order.
    Master(Vec<String>),
    Media(MediaPlaylist),
}

#[derive(Debug, Clone, PartialEq)]
pub struct MediaPlaylist {
    pub target_duration: f64,
    pub media_sequence: u64,
    pub segments: Vec<SegmentRef>,
    /// EXT-X-ENDLIST: no segment will be added.
    pub ended: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SegmentRef {
    pub seq: u64,
    pub uri: String,
    pub duration: f64,
    /// Its timestamps (and maybe codec parameters) do not continue the previous segment's.
    pub discontinuity: bool,
}

/// Parses a playlist (RFC 8216): the tags a live MPEG-TS stream needs; the others are skipped.
pub fn parse_playlist(text: &str) -> Result<Playlist, PlaylistError> {
    let mut lines = text.trim_start_matches('\u{feff}').lines().map(str::trim).filter(|l| !l.is_empty());
    if lines.next() != Some("#EXTM3U") {
        return Err(PlaylistError::NotM3u8);
    }
    let mut media = MediaPlaylist { target_duration: 0.0, media_sequence: 0, segments: Vec::new(), ended: false };
    let mut variants = Vec::new();
    let mut variant_next = false;
    let (mut duration, mut discontinuity) = (None, false);
    for line in lines {
        let Some(tag) = line.strip_prefix('#') else {
            if std::mem::take(&mut variant_next) {
                variants.push(line.to_owned());
                continue;
            }
            let duration = duration.take().unwrap_or(media.target_duration);
            let discontinuity = std::mem::take(&mut discontinuity);
            media.segments.push(SegmentRef { seq: 0, uri: line.to_owned(), duration, discontinuity });
            continue;
        };
        let (name, value) = tag.split_once(':').unwrap_or((tag, ""));
        let bad = || PlaylistError::BadTag(name.to_owned());
        match name {
            "EXT-X-STREAM-INF" => variant_next = true,
            "EXT-X-TARGETDURATION" => media.target_duration = seconds(value).ok_or_else(bad)?,
            "EXT-X-MEDIA-SEQUENCE" => media.media_sequence = value.trim().parse().map_err(|_| bad())?,
            "EXTINF" => duration = Some(seconds(value.split(',').next().unwrap_or_default()).ok_or_else(bad)?),
            "EXT-X-DISCONTINUITY" => discontinuity = true,
            "EXT-X-ENDLIST" => media.ended = true,
            "EXT-X-KEY" => match attribute(value, "METHOD") {
                Some("NONE") => {}
                other => return Err(PlaylistError::Encrypted(other.unwrap_or("?").to_owned())),
            },
            "EXT-X-MAP" => return Err(PlaylistError::Fmp4),
            "EXT-X-BYTERANGE" => return Err(PlaylistError::ByteRange),
            _ => {}
        }
    }
    if !variants.is_empty() {
        return Ok(Playlist::Master(variants));
    }
    if variant_next {
        return Err(PlaylistError::NoVariants);
    }
    for (i, s) in media.segments.iter_mut().enumerate() {
        s.seq = media.media_sequence.saturating_add(i as u64);
    }
    Ok(Playlist::Media(media))
}

/// A duration in seconds: finite and not negative (Rust parses "NaN" and "inf" too).
fn seconds(s: &str) -> Option<f64> {
    s.trim().parse::<f64>().ok().filter(|v| v.is_finite() && *v >= 0.0)
}

/// The value of `name` in an attribute list (`METHOD=AES-128,URI="..."`).
fn attribute<'a>(list: &'a str, name: &str) -> Option<&'a str> {
    list.split(',').find_map(|kv| kv.split_once('=').filter(|(k, _)| k.trim() == name).map(|(_, v)| v.trim()))
}

/// Resolves a playlist's URI reference against the URL of the playlist (RFC 3986 §5.2, for the forms playlists
/// use): absolute `http://` URLs, scheme-relative, absolute paths and relative paths with dot segments.
pub fn resolve(base: &str, reference: &str) -> Result<String, PlaylistError> {
    let bad = || PlaylistError::BadUri(redact_url(reference));
    let reference = reference.split('#').next().unwrap_or_default();
    let url = match reference.split_once("://") {
        Some((scheme, _)) if !scheme.contains(['/', '?']) => {
            if !scheme.eq_ignore_ascii_case("http") {
                return Err(bad());
            }
            reference.to_owned()
        }
        _ => {
            let base: http::Uri = base.parse().map_err(|_| bad())?;
            let authority = base.authority().ok_or_else(bad)?;
            if let Some(rest) = reference.strip_prefix("//") {
                format!("http://{rest}")
            } else {
                let (path, query) = reference.split_at(reference.find('?').unwrap_or(reference.len()));
                let joined = match path {
                    "" => base.path().to_owned(),
                    p if p.starts_with('/') => p.to_owned(),
                    p => format!("{}{p}", &base.path()[..base.path().rfind('/').map_or(0, |i| i + 1)]),
                };
                // An empty reference is the playlist itself, query and all.
                let query = match (reference.is_empty(), base.query()) {
                    (true, Some(q)) => format!("?{q}"),
                    _ => query.to_owned(),
                };
                format!("http://{authority}{}{query}", remove_dot_segments(&joined))
            }
        }
    };
    let ok = url.parse::<http::Uri>().is_ok_and(|u| u.host().is_some());
    if ok {
        Ok(url)
    } else {
        Err(bad())
    }
}

fn remove_dot_segments(path: &str) -> String {
    let parts: Vec<&str> = path.split('/').skip(1).collect();
    let mut out: Vec<&str> = Vec::with_capacity(parts.len());
    for (i, p) in parts.iter().enumerate() {
        let last = i + 1 == parts.len();
        match *p {
            "." | ".." => {
                if *p == ".." {
                    out.pop();
                }
                if last {
                    out.push("");
                }
            }
            p => out.push(p),
        }
    }
    format!("/{}", out.join("/"))
}

/// Whether `url` is an HLS source this dialer reads: plain HTTP, a path ending in `.m3u8`.
pub fn is_hls_url(url: &str) -> bool {
    url.parse::<http::Uri>()
        .is_ok_and(|u| u.scheme_str() == Some("http") && u.host().is_some() && u.path().ends_with(".m3u8"))
}

/// Opens `http://…/*.m3u8` sources.
pub struct HlsDialer;

#[async_trait::async_trait]
impl Dialer for HlsDialer {
    fn accepts(&self, url: &str) -> bool {
        is_hls_url(url)
    }

    async fn open(&self, url: &str, timeout: Duration) -> Result<Box<dyn TagSource>, SourceFailure> {
        Ok(Box::new(HlsSource::open(url, timeout).await?))
    }
}

type HttpClient = Client<HttpConnector, Empty<Bytes>>;

/// What a fetch gets, for its size limit and its failure messages.
#[derive(Debug, Clone, Copy)]
enum Fetch {
    Playlist,
    Segment,
}

impl Fetch {
    fn limit(self) -> usize {
        match self {
            Fetch::Playlist => MAX_PLAYLIST,
            Fetch::Segment => MAX_SEGMENT,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Fetch::Playlist => "playlist",
            Fetch::Segment => "segment",
        }
    }
}

/// GETs `url` (following a few redirects), all within `timeout`: its body and the URL it came from.
async fn fetch(
    client: &HttpClient,
    url: &str,
    what: Fetch,
    timeout: Duration,
) -> Result<(Bytes, String), SourceFailure> {
    tokio::time::timeout(timeout, fetch_following(client, url, what)).await.map_err(|_| {
        SourceFailure(format!("the {} {} did not arrive within {timeout:?}", what.name(), redact_url(url)))
    })?
}

async fn fetch_following(client: &HttpClient, url: &str, what: Fetch) -> Result<(Bytes, String), SourceFailure> {
    let mut url = url.to_owned();
    for _ in 0..=MAX_REDIRECTS {
        let req = http::Request::get(&url)
            .header(http::header::USER_AGENT, concat!("livegate/", env!("CARGO_PKG_VERSION"), " pull"))
            .body(Empty::new())
            .map_err(|e| SourceFailure(format!("bad request: {e}")))?;
        let resp = client.request(req).await.map_err(|e| SourceFailure(format!("cannot reach the source: {e}")))?;
        let status = resp.status();
        let shown = redact_url(&url);
        if status.is_redirection() {
            let location = resp.headers().get(http::header::LOCATION).and_then(|v| v.to_str().ok());
            let location =
                location.ok_or_else(|| SourceFailure(format!("{shown} answered {status} without a Location")))?;
            url = resolve(&url, location).map_err(|e| SourceFailure(format!("{shown} redirects to {e}")))?;
            continue;
        }
        if !status.is_success() {
            return Err(SourceFailure(format!("the {} {shown} answered {status}", what.name())));
        }
        let too_big = || SourceFailure(format!("the {} {shown} is larger than {} bytes", what.name(), what.limit()));
        let declared = resp.headers().get(http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse().ok());
        if declared.is_some_and(|n: u64| n > what.limit() as u64) {
            return Err(too_big());
        }
        let body = Limited::new(resp.into_body(), what.limit()).collect().await.map_err(|e| {
            if e.is::<LengthLimitError>() {
                too_big()
            } else {
                SourceFailure(format!("reading the {} {shown}: {e}", what.name()))
            }
        })?;
        return Ok((body.to_bytes(), url));
    }
    Err(SourceFailure(format!(
        "the {} {} redirects more than {MAX_REDIRECTS} times",
        what.name(),
        redact_url(url.as_str())
    )))
}

/// Fetches and parses a playlist: it and the URL it came from.
async fn get_playlist(client: &HttpClient, url: &str, timeout: Duration) -> Result<(Playlist, String), SourceFailure> {
    let (body, at) = fetch(client, url, Fetch::Playlist, timeout).await?;
    let parsed = std::str::from_utf8(&body).map_err(|_| PlaylistError::NotText).and_then(parse_playlist);
    let playlist = parsed.map_err(|e| SourceFailure(format!("the playlist {} is unusable: {e}", redact_url(&at))))?;
    Ok((playlist, at))
}

/// The media playlist `url` leads to (itself, or a master playlist's first variant), and its URL.
async fn media_playlist(
    client: &HttpClient,
    url: &str,
    timeout: Duration,
) -> Result<(MediaPlaylist, String), SourceFailure> {
    let (variant, at) = match get_playlist(client, url, timeout).await? {
        (Playlist::Media(m), at) => return Ok((m, at)),
        (Playlist::Master(variants), at) => (variants[0].clone(), at),
    };
    let first = resolve(&at, &variant).map_err(|e| SourceFailure(format!("the master playlist's variant: {e}")))?;
    match get_playlist(client, &first, timeout).await? {
        (Playlist::Media(m), at) => Ok((m, at)),
        (Playlist::Master(_), at) => {
            Err(SourceFailure(format!("the variant {} is a master playlist too", redact_url(&at))))
        }
    }
}

/// Which segments are due: the queue to fetch, and the sequence number after the last one queued.
#[derive(Debug, Default)]
struct Cursor {
    next_seq: u64,
    queue: VecDeque<SegmentRef>,
}

impl Cursor {
    /// Queues the live edge of `pl` (its last few segments), on a new timeline.
    fn start(&mut self, pl: &MediaPlaylist) {
        let skip = pl.segments.len().saturating_sub(LIVE_EDGE_SEGMENTS);
        self.queue.extend(pl.segments[skip..].iter().cloned());
        if let Some(first) = self.queue.front_mut() {
            first.discontinuity = true;
        }
        self.next_seq = pl.segments.last().map_or(pl.media_sequence, |s| s.seq + 1);
    }

    /// Queues what a reloaded playlist added.
    fn update(&mut self, pl: &MediaPlaylist) {
        let (Some(first), Some(last)) = (pl.segments.first(), pl.segments.last()) else { return };
        if last.seq + 1 < self.next_seq {
            // The sequence went back: the source restarted (a new encoder, a new segmenter).
            tracing::info!(was = self.next_seq, now = last.seq, "hls source restarted its sequence");
            self.queue.clear();
            self.start(pl);
            return;
        }
        let missed = first.seq > self.next_seq;
        if missed {
            // Segments left the playlist before they were fetched: the timeline skips them.
            tracing::info!(missed = first.seq - self.next_seq, "hls source: segments missed");
        }
        let before = self.queue.len();
        self.queue.extend(pl.segments.iter().filter(|s| s.seq >= self.next_seq).cloned());
        if let Some(s) = self.queue.get_mut(before).filter(|_| missed) {
            s.discontinuity = true;
        }
        self.next_seq = self.next_seq.max(last.seq + 1);
    }
}

/// Keeps the pull's timeline continuous: milliseconds from the first frame, spliced across discontinuities.
#[derive(Debug, Default)]
struct Timeline {
    /// Added to the demuxer's timestamps.
    offset: Option<i64>,
    /// The latest timestamp handed out.
    last: Option<i64>,
    rebase: bool,
}

impl Timeline {
    /// The next segment starts a new timeline.
    fn rebase(&mut self) {
        self.rebase = true;
    }

    /// Moves a segment's frames onto the timeline.
    fn place(&mut self, frames: &mut [Frame]) {
        let Some(start) = frames.iter().map(|f| f.dts).min() else { return };
        let offset = match (self.offset, self.last) {
            (Some(o), Some(last))
                if !self.rebase && (last - MAX_BACK_MS..=last + MAX_FORWARD_MS).contains(&(start + o)) =>
            {
                o
            }
            (_, Some(last)) => last + SPLICE_GAP_MS - start,
            _ => -start,
        };
        self.rebase = false;
        self.offset = Some(offset);
        for f in frames.iter_mut() {
            f.dts += offset;
        }
        let end = frames.iter().map(|f| f.dts).max();
        self.last = self.last.max(end);
    }
}

/// Hands tags out as fast as their timestamps advance and no faster: readers get a steady stream instead of a burst
/// per segment, and the wait for the next segment is spread over the current one (with 10-second segments a
/// source would otherwise be silent for longer than the pull's timeout).
#[derive(Debug, Default)]
struct Pacer {
    /// A wall-clock instant and the media time due then.
    anchor: Option<(Instant, i64)>,
}

impl Pacer {
    /// When the tag stamped `ts` is due. A `burst` tag (the pull is catching up on segments it knows) is due now
    /// and takes the clock along; a paced one that is late stays late, so a stall does not add latency for good.
    fn due(&mut self, ts: i64, now: Instant, burst: bool) -> Instant {
        if let Some((wall, media)) = self.anchor.filter(|_| !burst) {
            let at = wall + Duration::from_millis((ts - media).max(0) as u64);
            if at <= now + MAX_AHEAD {
                return at;
            }
        }
        self.anchor = Some((now, ts));
        now
    }
}

/// A tag waiting to be handed out.
struct Queued {
    /// Its timestamp on the pull's timeline (the tag's own is 32-bit and wraps).
    ts: i64,
    /// Whether it may go out at once: its segment was not the newest one known.
    burst: bool,
    tag: SourceTag,
}

/// A frame as an FLV tag body, the form pull sources hand out.
fn tag_of(f: &Frame) -> SourceTag {
    let (prefix, n) = flv::body_prefix(f);
    let mut body = BytesMut::with_capacity(n + f.payload.len());
    body.put_slice(&prefix[..n]);
    body.put_slice(&f.payload);
    // FLV timestamps are 32-bit and wrap; the hub unwraps them.
    (flv::tag_type(f), f.dts.max(0) as u32, body.freeze())
}

struct HlsSource {
    client: HttpClient,
    timeout: Duration,
    /// The media playlist.
    url: String,
    /// The media playlist when a master playlist led to it (what `from` reports).
    variant: Option<String>,
    reload_every: Duration,
    ended: bool,
    reloaded: Instant,
    cursor: Cursor,
    demux: TsDemuxer,
    timeline: Timeline,
    pacer: Pacer,
    tags: VecDeque<Queued>,
}

impl HlsSource {
    async fn open(url: &str, timeout: Duration) -> Result<Self, SourceFailure> {
        let client = Client::builder(TokioExecutor::new()).build_http();
        let (playlist, at) = media_playlist(&client, url, timeout).await?;
        let mut cursor = Cursor::default();
        cursor.start(&playlist);
        tracing::debug!(playlist = %redact_url(&at), segments = cursor.queue.len(), "hls source opened");
        Ok(Self {
            client,
            timeout,
            variant: (at != url).then(|| at.clone()),
            url: at,
            reload_every: reload_every(playlist.target_duration),
            ended: playlist.ended,
            reloaded: Instant::now(),
            cursor,
            demux: TsDemuxer::new(),
            timeline: Timeline::default(),
            pacer: Pacer::default(),
            tags: VecDeque::new(),
        })
    }

    /// Re-reads the playlist (no sooner than its reload interval after the last time) and queues what is new.
    async fn reload(&mut self) -> Result<(), SourceFailure> {
        tokio::time::sleep_until(self.reloaded + self.reload_every).await;
        self.reloaded = Instant::now();
        let (playlist, _) = get_playlist(&self.client, &self.url, self.timeout).await?;
        let Playlist::Media(playlist) = playlist else {
            return Err(SourceFailure(format!("the playlist {} became a master playlist", redact_url(&self.url))));
        };
        self.reload_every = reload_every(playlist.target_duration);
        self.ended = playlist.ended;
        self.cursor.update(&playlist);
        Ok(())
    }

    /// Fetches and demuxes one segment; its frames join the tags to hand out.
    async fn load(&mut self, seg: SegmentRef) -> Result<(), SourceFailure> {
        let url = resolve(&self.url, &seg.uri).map_err(|e| SourceFailure(format!("a segment URI: {e}")))?;
        let (data, _) = fetch(&self.client, &url, Fetch::Segment, self.timeout).await?;
        if seg.discontinuity {
            self.demux.discontinuity();
            self.timeline.rebase();
        }
        let mut frames = Vec::new();
        let demuxed = self.demux.feed(&data, &mut frames).and_then(|()| self.demux.flush(&mut frames));
        demuxed.map_err(|e| SourceFailure(format!("the segment {} is not usable: {e}", redact_url(&url))))?;
        if frames.is_empty() {
            self.check_streams(&url)?;
        }
        tracing::trace!(seq = seg.seq, bytes = data.len(), frames = frames.len(), "hls segment");
        self.timeline.place(&mut frames);
        let burst = !self.cursor.queue.is_empty();
        self.tags.extend(frames.iter().map(|f| Queued { ts: f.dts, burst, tag: tag_of(f) }));
        Ok(())
    }

    /// Waits until `due`, re-reading the playlist meanwhile when that falls due first: the next segment is known
    /// by the time this one has been handed out.
    async fn wait_until(&mut self, due: Instant) -> Result<(), SourceFailure> {
        if !self.ended && self.cursor.queue.is_empty() && self.reloaded + self.reload_every < due {
            self.reload().await?;
        }
        tokio::time::sleep_until(due).await;
        Ok(())
    }

    /// Why a segment gave no frames, when that is the source's fault rather than a quiet moment.
    fn check_streams(&self, url: &str) -> Result<(), SourceFailure> {
        let listed = self.demux.listed_streams();
        let shown = redact_url(url);
        if listed.is_empty() {
            return Err(SourceFailure(format!("the segment {shown} has no MPEG-TS program (PAT/PMT)")));
        }
        if !listed.iter().any(|(_, t)| matches!(t, 0x1B | 0x0F)) {
            let types: Vec<String> = listed.iter().map(|(_, t)| format!("{t:#04x}")).collect();
            return Err(SourceFailure(format!(
                "the segment {shown} carries neither H.264 nor AAC (stream types {})",
                types.join(", ")
            )));
        }
        Ok(())
    }
}

/// How often a playlist is re-read: half its target duration, as players do, within bounds.
fn reload_every(target_duration: f64) -> Duration {
    Duration::try_from_secs_f64(target_duration / 2.0).unwrap_or(MAX_RELOAD).clamp(MIN_RELOAD, MAX_RELOAD)
}

#[async_trait::async_trait]
impl TagSource for HlsSource {
    async fn next(&mut self) -> Result<Option<SourceTag>, SourceFailure> {
        loop {
            if let Some(q) = self.tags.front() {
                let now = Instant::now();
                let due = self.pacer.due(q.ts, now, q.burst);
                if due > now {
                    self.wait_until(due).await?;
                }
                return Ok(self.tags.pop_front().map(|q| q.tag));
            }
            if let Some(seg) = self.cursor.queue.pop_front() {
                self.load(seg).await?;
                continue;
            }
            if self.ended {
                return Ok(None);
            }
            self.reload().await?;
        }
    }

    fn from(&self) -> Option<String> {
        self.variant.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::avc::AvcDecoderConfig;
    use crate::media::ts::TsMuxer;
    use crate::media::{Codec, MediaKind};
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn media(pl: Playlist) -> MediaPlaylist {
        match pl {
            Playlist::Media(m) => m,
            other => panic!("not a media playlist: {other:?}"),
        }
    }

    #[test]
    fn a_live_media_playlist() {
        let text = "\u{feff}#EXTM3U\r\n#EXT-X-VERSION:3\r\n#EXT-X-TARGETDURATION:2\r\n#EXT-X-MEDIA-SEQUENCE:17\r\n\
                    #EXT-X-DISCONTINUITY-SEQUENCE:1\r\n# a comment\r\n#EXTINF:2.002,\r\nsrc/a-17.ts\r\n\
                    #EXT-X-DISCONTINUITY\r\n#EXTINF:1.5,title, with comma\r\nsrc/a-18.ts?t=1\r\n\r\n#EXTINF:2,\r\nb.ts\r\n";
        let m = media(parse_playlist(text).unwrap());
        assert_eq!((m.target_duration, m.media_sequence, m.ended), (2.0, 17, false));
        let segs: Vec<(u64, &str, f64, bool)> =
            m.segments.iter().map(|s| (s.seq, s.uri.as_str(), s.duration, s.discontinuity)).collect();
        assert_eq!(
            segs,
            vec![(17, "src/a-17.ts", 2.002, false), (18, "src/a-18.ts?t=1", 1.5, true), (19, "b.ts", 2.0, false)]
        );
        let ended =
            media(parse_playlist("#EXTM3U\n#EXT-X-TARGETDURATION:6\n#EXTINF:6,\n0.ts\n#EXT-X-ENDLIST\n").unwrap());
        assert!(ended.ended);
        assert_eq!(ended.segments[0].seq, 0);
    }

    #[test]
    fn a_master_playlist_lists_its_variants_in_order() {
        let text =
            "#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=1280000,RESOLUTION=1280x720,CODECS=\"avc1.4d401f,mp4a.40.2\"\n\
                    hi/index.m3u8\n#EXT-X-I-FRAME-STREAM-INF:BANDWIDTH=1,URI=\"iframe.m3u8\"\n\
                    #EXT-X-STREAM-INF:BANDWIDTH=640000\nhttp://other/lo.m3u8\n";
        assert_eq!(
            parse_playlist(text),
            Ok(Playlist::Master(vec!["hi/index.m3u8".into(), "http://other/lo.m3u8".into()]))
        );
        assert_eq!(parse_playlist("#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=1\n"), Err(PlaylistError::NoVariants));
    }

    #[test]
    fn playlists_livegate_cannot_read_say_why() {
        assert_eq!(parse_playlist("<html>not found</html>"), Err(PlaylistError::NotM3u8));
        assert_eq!(parse_playlist(""), Err(PlaylistError::NotM3u8));
        assert_eq!(
            parse_playlist("#EXTM3U\n#EXT-X-KEY:METHOD=AES-128,URI=\"k\"\n#EXTINF:2,\na.ts\n"),
            Err(PlaylistError::Encrypted("AES-128".into()))
        );
        assert!(parse_playlist("#EXTM3U\n#EXT-X-KEY:METHOD=NONE\n#EXTINF:2,\na.ts\n").is_ok());
        assert_eq!(parse_playlist("#EXTM3U\n#EXT-X-MAP:URI=\"init.mp4\"\n"), Err(PlaylistError::Fmp4));
        assert_eq!(parse_playlist("#EXTM3U\n#EXT-X-BYTERANGE:100@0\n"), Err(PlaylistError::ByteRange));
        assert_eq!(parse_playlist("#EXTM3U\n#EXTINF:NaN,\na.ts\n"), Err(PlaylistError::BadTag("EXTINF".into())));
        assert_eq!(
            parse_playlist("#EXTM3U\n#EXT-X-MEDIA-SEQUENCE:-1\n"),
            Err(PlaylistError::BadTag("EXT-X-MEDIA-SEQUENCE".into()))
        );
        assert!(PlaylistError::NotM3u8.to_string().contains("not an HLS playlist"));
    }

    #[test]
    fn uris_resolve_against_the_playlist() {
        let base = "http://h:8080/live/src.m3u8?token=abc";
        let r = |u: &str| resolve(base, u);
        assert_eq!(r("src/a-1.ts").unwrap(), "http://h:8080/live/src/a-1.ts");
        assert_eq!(r("/x/y.ts?q=1").unwrap(), "http://h:8080/x/y.ts?q=1");
        assert_eq!(r("../up/./y.ts").unwrap(), "http://h:8080/up/y.ts");
        assert_eq!(r("../../../y.ts").unwrap(), "http://h:8080/y.ts");
        assert_eq!(r("//cdn:81/a.ts").unwrap(), "http://cdn:81/a.ts");
        assert_eq!(r("http://cdn/a.ts").unwrap(), "http://cdn/a.ts");
        assert_eq!(r("a.ts#frag").unwrap(), "http://h:8080/live/a.ts");
        assert_eq!(r("").unwrap(), base);
        assert_eq!(r("https://cdn/a.ts"), Err(PlaylistError::BadUri("https://cdn/a.ts".into())));
        assert!(r("a b.ts").is_err());
        assert!(resolve("not a url", "a.ts").is_err());
        assert_eq!(resolve("http://h/a/b/c.m3u8", "./d/").unwrap(), "http://h/a/b/d/");
    }

    #[test]
    fn only_http_m3u8_urls_are_hls_sources() {
        assert!(is_hls_url("http://h:1/live/x.m3u8"));
        assert!(is_hls_url("http://h/live/x.m3u8?token=1"));
        assert!(!is_hls_url("http://h/live/x.flv"));
        assert!(!is_hls_url("https://h/live/x.m3u8"));
        assert!(!is_hls_url("rtmp://h/live/x.m3u8"));
        assert!(!is_hls_url("/live/x.m3u8"));
    }

    fn playlist(seq: u64, n: u64, ended: bool) -> MediaPlaylist {
        let segments = (seq..seq + n)
            .map(|s| SegmentRef { seq: s, uri: format!("{s}.ts"), duration: 2.0, discontinuity: false })
            .collect();
        MediaPlaylist { target_duration: 2.0, media_sequence: seq, segments, ended }
    }

    fn queued(c: &Cursor) -> Vec<(u64, bool)> {
        c.queue.iter().map(|s| (s.seq, s.discontinuity)).collect()
    }

    #[test]
    fn the_cursor_starts_at_the_live_edge_and_follows_the_playlist() {
        let mut c = Cursor::default();
        c.start(&playlist(10, 6, false));
        assert_eq!(queued(&c), vec![(13, true), (14, false), (15, false)]);
        c.queue.clear();
        c.update(&playlist(10, 6, false));
        assert!(c.queue.is_empty(), "nothing new");
        c.update(&playlist(11, 7, false));
        assert_eq!(queued(&c), vec![(16, false), (17, false)]);
        c.queue.clear();
        // Fell behind: 18..=19 are gone.
        c.update(&playlist(20, 3, false));
        assert_eq!(queued(&c), vec![(20, true), (21, false), (22, false)]);
        c.queue.clear();
        // The source restarted its numbering.
        c.update(&playlist(0, 2, false));
        assert_eq!(queued(&c), vec![(0, true), (1, false)]);
        assert_eq!(c.next_seq, 2);
        c.update(&MediaPlaylist { segments: vec![], ..playlist(0, 0, false) });
        assert_eq!(c.next_seq, 2);
    }

    fn frame(kind: MediaKind, dts: i64) -> Frame {
        Frame { kind, codec: Codec::Aac, dts, cts: 0, keyframe: false, config: false, payload: Bytes::new() }
    }

    fn placed(t: &mut Timeline, dts: &[i64]) -> Vec<i64> {
        let mut f: Vec<Frame> = dts.iter().map(|d| frame(MediaKind::Audio, *d)).collect();
        t.place(&mut f);
        f.iter().map(|f| f.dts).collect()
    }

    #[test]
    fn the_timeline_is_continuous_across_discontinuities_and_jumps() {
        let mut t = Timeline::default();
        assert_eq!(placed(&mut t, &[5000, 4990, 5040]), vec![10, 0, 50]);
        assert_eq!(placed(&mut t, &[7000, 7040]), vec![2010, 2050], "a gap is kept: it is media time");
        t.rebase();
        assert_eq!(placed(&mut t, &[100_000, 100_040]), vec![2060, 2100]);
        // A restart nobody tagged: a jump back is spliced too, and so is a jump of hours.
        assert_eq!(placed(&mut t, &[0, 40]), vec![2110, 2150]);
        assert_eq!(placed(&mut t, &[90_000_000]), vec![2160]);
        assert_eq!(placed(&mut t, &[90_000_040]), vec![2200]);
    }

    #[test]
    fn the_pacer_hands_out_in_media_time_and_bursts_to_catch_up() {
        let ms = Duration::from_millis;
        let t0 = Instant::now();
        let mut p = Pacer::default();
        assert_eq!(p.due(0, t0, true), t0);
        assert_eq!(p.due(1000, t0, false), t0 + ms(1000));
        assert_eq!(p.due(500, t0 + ms(2000), false), t0 + ms(500), "late: at once, and the clock stays");
        assert_eq!(p.due(1040, t0 + ms(2000), false), t0 + ms(1040));
        assert_eq!(p.due(60_000, t0 + ms(2000), false), t0 + ms(2000), "a gap is not waited out");
        assert_eq!(p.due(60_040, t0 + ms(2000), false), t0 + ms(2040));
        assert_eq!(p.due(90_000, t0 + ms(2010), true), t0 + ms(2010), "catching up");
        assert_eq!(p.due(90_100, t0 + ms(2010), false), t0 + ms(2110));
    }

    // The x264 baseline SPS/PPS pair of the muxer's tests (320x240).
    const SPS: &[u8] = &[
        0x67, 0x42, 0xC0, 0x0D, 0xDA, 0x05, 0x07, 0xEC, 0x04, 0x40, 0x00, 0x00, 0x03, 0x00, 0x40, 0x00, 0x00, 0x0F,
        0x03, 0xC5, 0x0A, 0xA8,
    ];
    const PPS: &[u8] = &[0x68, 0xCE, 0x0F, 0xC8];

    /// One 2-second segment from livegate's own muxer: a keyframe, a P frame, two AAC frames, from `ms` on.
    fn segment(ms: i64) -> Bytes {
        let record = Bytes::from(AvcDecoderConfig::from_sps_pps(SPS, PPS).unwrap().to_bytes());
        let mut m = TsMuxer::new(true, true);
        let mut out = Vec::new();
        m.write_frame(&mut out, &Frame::config(MediaKind::Video, Codec::H264, record)).unwrap();
        m.write_frame(&mut out, &Frame::config(MediaKind::Audio, Codec::Aac, Bytes::from_static(&[0x12, 0x10])))
            .unwrap();
        m.write_tables(&mut out);
        let video = |dts: i64, key: bool, nal: &'static [u8]| {
            let mut p = (nal.len() as u32).to_be_bytes().to_vec();
            p.extend_from_slice(nal);
            Frame {
                kind: MediaKind::Video,
                codec: Codec::H264,
                dts,
                cts: 0,
                keyframe: key,
                config: false,
                payload: p.into(),
            }
        };
        let audio =
            |dts: i64| Frame { payload: Bytes::from_static(&[0x21, 0x10, 0x04]), ..frame(MediaKind::Audio, dts) };
        for f in [video(ms, true, &[0x65, 0x88]), audio(ms), video(ms + 1000, false, &[0x41, 0x9A]), audio(ms + 1000)] {
            m.write_frame(&mut out, &f).unwrap();
        }
        Bytes::from(out)
    }

    type Routes = Arc<Mutex<HashMap<String, (u16, Bytes)>>>;

    /// A tiny HTTP server answering GETs from `routes` (404 for the rest); its base URL.
    async fn serve(routes: Routes) -> String {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", l.local_addr().unwrap());
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let routes = routes.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let n = s.read(&mut buf).await.unwrap_or(0);
                    let req = String::from_utf8_lossy(&buf[..n]).to_string();
                    let path = req.split_whitespace().nth(1).unwrap_or("/").to_owned();
                    let (status, body) = routes.lock().unwrap().get(&path).cloned().unwrap_or((404, Bytes::new()));
                    let head =
                        format!("HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
                    let _ = s.write_all(head.as_bytes()).await;
                    let _ = s.write_all(&body).await;
                });
            }
        });
        base
    }

    fn routes(list: &[(&str, u16, Bytes)]) -> Routes {
        Arc::new(Mutex::new(list.iter().map(|(p, s, b)| (p.to_string(), (*s, b.clone()))).collect()))
    }

    async fn drain(src: &mut Box<dyn TagSource>) -> Result<Vec<SourceTag>, SourceFailure> {
        let mut tags = Vec::new();
        while let Some(t) = src.next().await? {
            tags.push(t);
        }
        Ok(tags)
    }

    const TIMEOUT: Duration = Duration::from_secs(5);

    #[tokio::test]
    async fn a_master_playlist_leads_to_segments_on_one_timeline_until_the_endlist() {
        let media = "#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:3\n\
                     #EXTINF:2,\n/s/3.ts\n#EXTINF:2,\n/s/4.ts\n#EXTINF:2,\n/s/5.ts\n\
                     #EXT-X-DISCONTINUITY\n#EXTINF:2,\n/s/6.ts\n#EXT-X-ENDLIST\n";
        let r = routes(&[
            ("/live/x.m3u8", 200, Bytes::from_static(b"#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=1\nv/index.m3u8\n")),
            ("/live/v/index.m3u8", 200, Bytes::from(media)),
            ("/s/3.ts", 200, Bytes::from_static(b"the first segment is past the live edge: never fetched")),
            // 2^33 ticks of 90 kHz are 95 443 717 ms: the muxer's clock (1 400 ms ahead) wraps in segment 5.
            ("/s/4.ts", 200, segment(95_439_817)),
            ("/s/5.ts", 200, segment(95_441_817)),
            ("/s/6.ts", 200, segment(0)),
        ]);
        let base = serve(r).await;
        let mut src = HlsDialer.open(&format!("{base}/live/x.m3u8"), TIMEOUT).await.unwrap();
        assert_eq!(src.from(), Some(format!("{base}/live/v/index.m3u8")));
        let tags = drain(&mut src).await.unwrap();
        for tag_type in [8, 9] {
            let track: Vec<&SourceTag> = tags.iter().filter(|t| t.0 == tag_type).collect();
            let headers: Vec<u32> = track.iter().filter(|t| t.2[1] == 0).map(|t| t.1).collect();
            assert_eq!(headers, vec![0], "one sequence header for track {tag_type}");
            assert_eq!(track[0].2[1], 0, "track {tag_type} starts with it");
        }
        let video: Vec<u32> = tags.iter().filter(|t| t.0 == 9 && t.2[1] == 1).map(|t| t.1).collect();
        // Segment 4 from 0, 5 on after it across the wrap, 6 (a new timeline) spliced on after that.
        assert_eq!(video, vec![0, 1000, 2000, 3000, 3010, 4010]);
        assert!(tags.iter().filter(|t| t.0 == 9 && t.2[1] == 1).step_by(2).all(|t| t.2[0] == 0x17), "keyframes");
    }

    #[tokio::test]
    async fn garbage_sources_fail_with_the_reason() {
        let live = |seg: &str| format!("#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:2,\n{seg}\n");
        let r = routes(&[
            ("/live/html.m3u8", 200, Bytes::from_static(b"<html><body>Hello</body></html>")),
            ("/live/badseg.m3u8", 200, Bytes::from(live("/junk.ts"))),
            ("/junk.ts", 200, Bytes::from(vec![b'x'; 1000])),
            ("/live/gone.m3u8", 200, Bytes::from(live("/nothere.ts"))),
            ("/live/loop.m3u8", 302, Bytes::new()),
        ]);
        let base = serve(r).await;
        let err = |name: &str| {
            let url = format!("{base}/live/{name}.m3u8");
            async move {
                let open = HlsDialer.open(&url, TIMEOUT).await;
                match open {
                    Err(e) => e.0,
                    Ok(mut src) => drain(&mut src).await.err().map(|e| e.0).unwrap_or_default(),
                }
            }
        };
        assert!(err("html").await.contains("is unusable: not an HLS playlist"), "{}", err("html").await);
        let e = err("badseg").await;
        assert!(e.contains("/junk.ts is not usable: not MPEG-TS"), "{e}");
        assert!(err("gone").await.contains("404"), "{}", err("gone").await);
        assert!(err("nothing").await.contains("404"));
        assert!(err("loop").await.contains("without a Location"), "{}", err("loop").await);
        let dead = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
        let e = HlsDialer.open(&format!("http://{dead}/live/x.m3u8"), TIMEOUT).await.err().unwrap().0;
        assert!(e.contains("cannot reach"), "{e}");
    }

    #[tokio::test]
    async fn a_live_playlist_is_followed_as_it_grows() {
        let pl = |first: u64, n: u64| {
            let mut s = format!("#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXT-X-MEDIA-SEQUENCE:{first}\n");
            for i in first..first + n {
                s.push_str(&format!("#EXTINF:1,\n/s/{i}.ts\n"));
            }
            Bytes::from(s)
        };
        let r = routes(&[("/live/x.m3u8", 200, pl(0, 1)), ("/s/0.ts", 200, segment(0))]);
        let base = serve(r.clone()).await;
        let mut src = HlsDialer.open(&format!("{base}/live/x.m3u8"), TIMEOUT).await.unwrap();
        let mut got = Vec::new();
        for _ in 0..6 {
            got.push(src.next().await.unwrap().unwrap());
        }
        // The playlist grows while the source waits on it.
        {
            let mut r = r.lock().unwrap();
            r.insert("/s/1.ts".into(), (200, segment(2000)));
            r.insert("/live/x.m3u8".into(), (200, pl(0, 2)));
        }
        for _ in 0..4 {
            got.push(src.next().await.unwrap().unwrap());
        }
        let video: Vec<u32> = got.iter().filter(|t| t.0 == 9 && t.2[1] == 1).map(|t| t.1).collect();
        assert_eq!(video, vec![0, 1000, 2000, 3000]);
    }
}
