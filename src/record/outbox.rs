//! Completion callbacks kept on disk until delivered (ARCHITECTURE invariant 8): one JSON file per pending
//! callback under `{root}/.outbox/`, retried with a fixed interval, moved to `.outbox/failed/` after the last try.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Pending {
    urls: Vec<String>,
    body: serde_json::Value,
    /// The exact body to post, when a header signs its bytes (room callbacks' `Sign`).
    #[serde(default)]
    raw: Option<String>,
    #[serde(default)]
    headers: Vec<(String, String)>,
    attempts: u32,
    /// Unix seconds before which the next attempt must not happen.
    not_before: u64,
}

#[derive(Clone)]
pub struct Outbox {
    dir: PathBuf,
    retries: u32,
    interval: Duration,
}

fn now() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

impl Outbox {
    pub fn new(root: &Path, retries: u32, interval: Duration) -> Self {
        Self::at(root.join(".outbox"), retries, interval)
    }

    /// An outbox in `dir` (its own delivery loop: one loop per directory).
    pub fn at(dir: PathBuf, retries: u32, interval: Duration) -> Self {
        Self { dir, retries, interval }
    }

    /// Stores `body` to be posted byte for byte with `headers` (which sign it). Entries are delivered in the
    /// order of their ids.
    pub fn enqueue_raw(
        &self,
        id: &str,
        urls: &[String],
        body: String,
        headers: Vec<(String, String)>,
    ) -> std::io::Result<()> {
        self.store(
            id,
            Pending {
                urls: urls.to_vec(),
                body: serde_json::Value::Null,
                raw: Some(body),
                headers,
                attempts: 0,
                not_before: 0,
            },
        )
    }

    /// Stores a callback for delivery (blocking file I/O: call from the writer thread or spawn_blocking).
    pub fn enqueue(&self, id: &str, urls: &[String], body: serde_json::Value) -> std::io::Result<()> {
        if urls.is_empty() {
            return Ok(());
        }
        self.store(
            id,
            Pending { urls: urls.to_vec(), body, raw: None, headers: Vec::new(), attempts: 0, not_before: 0 },
        )
    }

    fn store(&self, id: &str, p: Pending) -> std::io::Result<()> {
        if p.urls.is_empty() {
            return Ok(());
        }
        std::fs::create_dir_all(&self.dir)?;
        let tmp = self.dir.join(format!("{id}.json.tmp"));
        std::fs::write(&tmp, serde_json::to_vec_pretty(&p).unwrap_or_default())?;
        // Rename is atomic: the delivery loop never sees half a file.
        std::fs::rename(&tmp, self.dir.join(format!("{id}.json")))
    }

    /// Delivers pending callbacks forever, scanning the outbox once a second.
    pub async fn run(self) {
        let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let Ok(entries) = std::fs::read_dir(&self.dir) else { continue };
            // In id order: room callbacks' ids are their time and sequence.
            let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
            paths.sort();
            for path in paths {
                if path.extension().and_then(|x| x.to_str()) != Some("json") {
                    continue;
                }
                let Ok(text) = std::fs::read(&path) else { continue };
                let Ok(mut p) = serde_json::from_slice::<Pending>(&text) else {
                    tracing::warn!(file = %path.display(), "unreadable outbox entry moved aside");
                    let _ = self.fail(&path);
                    continue;
                };
                if p.not_before > now() {
                    continue;
                }
                let body = match &p.raw {
                    Some(raw) => raw.clone().into_bytes(),
                    None => serde_json::to_vec(&p.body).unwrap_or_default(),
                };
                let mut ok = true;
                for url in &p.urls {
                    if let Err(e) = post(&client, url, body.clone(), &p.headers).await {
                        tracing::warn!(%url, attempt = p.attempts + 1, error = %e, "callback not delivered");
                        ok = false;
                    }
                }
                if ok {
                    let _ = std::fs::remove_file(&path);
                    continue;
                }
                p.attempts += 1;
                if p.attempts >= self.retries {
                    tracing::error!(file = %path.display(), "callback given up after {} attempts", p.attempts);
                    let _ = self.fail(&path);
                    continue;
                }
                p.not_before = now() + self.interval.as_secs().max(1);
                let _ = std::fs::write(&path, serde_json::to_vec_pretty(&p).unwrap_or_default());
            }
        }
    }

    fn fail(&self, path: &Path) -> std::io::Result<()> {
        let failed = self.dir.join("failed");
        std::fs::create_dir_all(&failed)?;
        std::fs::rename(path, failed.join(path.file_name().unwrap_or_default()))
    }
}

async fn post(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    url: &str,
    body: Vec<u8>,
    headers: &[(String, String)],
) -> Result<(), CallbackError> {
    let mut req = http::Request::post(url).header(http::header::CONTENT_TYPE, "application/json");
    for (k, v) in headers {
        req = req.header(k.as_str(), v.as_str());
    }
    let req = req.body(Full::new(Bytes::from(body)))?;
    let resp = tokio::time::timeout(Duration::from_secs(10), client.request(req))
        .await
        .map_err(|_| CallbackError::Timeout)??;
    let status = resp.status();
    // Only the status matters: a small answer is drained for reuse, an endless or stalled one is dropped.
    let drain = http_body_util::Limited::new(resp.into_body(), 64 * 1024).collect();
    let _ = tokio::time::timeout(Duration::from_secs(1), drain).await;
    if status.is_success() {
        Ok(())
    } else {
        Err(CallbackError::Refused(status))
    }
}

/// Why one delivery of a recording callback failed (it is retried).
#[derive(Debug, thiserror::Error)]
enum CallbackError {
    #[error("{0}")]
    Request(#[from] http::Error),
    #[error("no answer within 10 s")]
    Timeout,
    #[error("{0}")]
    Send(#[from] hyper_util::client::legacy::Error),
    #[error("answered {0}")]
    Refused(http::StatusCode),
}
