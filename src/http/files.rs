//! Recorded files over HTTP with range requests (so a browser can seek in an MP4 or FLV).

use std::io::SeekFrom;
use std::path::Path;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::{header, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming};
use tokio::io::{AsyncRead, AsyncSeekExt, ReadBuf};

use super::{error, Body};

/// Parses a single `bytes=` range against a file of `len` bytes; `Err(())` when unsatisfiable.
pub fn parse_range(h: &str, len: u64) -> Option<Result<(u64, u64), ()>> {
    let spec = h.trim().strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None; // multiple ranges: answer with the whole file
    }
    let (a, b) = spec.split_once('-')?;
    let r = match (a.trim(), b.trim()) {
        ("", n) => {
            let n: u64 = n.parse().ok()?;
            if n == 0 || len == 0 {
                return Some(Err(()));
            }
            (len.saturating_sub(n), len - 1)
        }
        (s, "") => (s.parse().ok()?, len.saturating_sub(1)),
        (s, e) => (s.parse().ok()?, e.parse::<u64>().ok()?.min(len.saturating_sub(1))),
    };
    if r.0 >= len || r.0 > r.1 {
        return Some(Err(()));
    }
    Some(Ok(r))
}

pub async fn serve(root: &Path, rel: &str, req: &Request<Incoming>) -> Response<Body> {
    let safe = !rel.is_empty() && rel.split('/').all(|s| !s.is_empty() && !s.starts_with('.'));
    if !safe || rel.ends_with(".json") {
        return error(StatusCode::NOT_FOUND, "not_found", &format!("no recording {rel}"));
    }
    let path = root.join(rel);
    let Ok(mut file) = tokio::fs::File::open(&path).await else {
        return error(StatusCode::NOT_FOUND, "not_found", &format!("no recording {rel}"));
    };
    let len = match file.metadata().await {
        Ok(m) if m.is_file() => m.len(),
        _ => return error(StatusCode::NOT_FOUND, "not_found", &format!("no recording {rel}")),
    };
    let range = req.headers().get(header::RANGE).and_then(|v| v.to_str().ok()).and_then(|h| parse_range(h, len));
    let (status, start, end) = match range {
        None => (StatusCode::OK, 0, len.saturating_sub(1)),
        Some(Ok((s, e))) => (StatusCode::PARTIAL_CONTENT, s, e),
        Some(Err(())) => {
            let mut r =
                error(StatusCode::RANGE_NOT_SATISFIABLE, "range_not_satisfiable", &format!("file has {len} bytes"));
            r.headers_mut().insert(header::CONTENT_RANGE, format!("bytes */{len}").parse().expect("valid"));
            return r;
        }
    };
    let count = if len == 0 { 0 } else { end - start + 1 };
    if file.seek(SeekFrom::Start(start)).await.is_err() {
        return error(StatusCode::INTERNAL_SERVER_ERROR, "io_error", "seek failed");
    }
    let body = if req.method() == http::Method::HEAD { super::empty() } else { FileBody { file, left: count }.boxed() };
    let mut r = Response::new(body);
    *r.status_mut() = status;
    let ctype = match path.extension().and_then(|e| e.to_str()) {
        Some("mp4") => "video/mp4",
        Some("flv") => "video/x-flv",
        Some("ts") => "video/mp2t",
        Some("m3u8") => "application/vnd.apple.mpegurl",
        _ => "application/octet-stream",
    };
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, ctype.parse().expect("static"));
    h.insert(header::ACCEPT_RANGES, "bytes".parse().expect("static"));
    h.insert(header::CONTENT_LENGTH, count.to_string().parse().expect("valid"));
    if status == StatusCode::PARTIAL_CONTENT {
        h.insert(header::CONTENT_RANGE, format!("bytes {start}-{end}/{len}").parse().expect("valid"));
    }
    r
}

/// Streams `left` bytes of a file in 64 KiB pieces.
struct FileBody {
    file: tokio::fs::File,
    left: u64,
}

impl hyper::body::Body for FileBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        let n = self.left.min(64 * 1024) as usize;
        let mut buf = BytesMut::zeroed(n);
        let mut rb = ReadBuf::new(&mut buf);
        match Pin::new(&mut self.file).poll_read(cx, &mut rb) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(e)) => Poll::Ready(Some(Err(e))),
            Poll::Ready(Ok(())) => {
                let got = rb.filled().len();
                if got == 0 {
                    return Poll::Ready(Some(Err(std::io::ErrorKind::UnexpectedEof.into())));
                }
                buf.truncate(got);
                self.left -= got as u64;
                Poll::Ready(Some(Ok(Frame::data(buf.freeze()))))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_range;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-99", 1000), Some(Ok((0, 99))));
        assert_eq!(parse_range("bytes=500-", 1000), Some(Ok((500, 999))));
        assert_eq!(parse_range("bytes=-100", 1000), Some(Ok((900, 999))));
        assert_eq!(parse_range("bytes=900-5000", 1000), Some(Ok((900, 999))));
        assert_eq!(parse_range("bytes=1000-", 1000), Some(Err(())));
        assert_eq!(parse_range("bytes=5-1", 1000), Some(Err(())));
        assert_eq!(parse_range("items=1-2", 1000), None);
        assert_eq!(parse_range("bytes=0-1,5-6", 1000), None);
    }
}
