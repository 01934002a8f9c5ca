//! Webhooks: the events operators asked for, POSTed as JSON (`[webhooks]`), and the on_publish check that
//! may refuse a publish.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::sync::broadcast;

use crate::config::WebhookConfig;

/// How much of a hook's answer is read, and for how long: the status is all that matters.
const DRAIN_BYTES: usize = 64 * 1024;
const DRAIN_TIME: Duration = Duration::from_secs(1);
use crate::events::{Event, EventBus};

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("{url} answered {status}")]
    Refused { url: String, status: u16 },
    #[error("{url} failed: {detail}")]
    Failed { url: String, detail: String },
}

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

/// POSTs events as JSON to the configured URLs.
#[derive(Clone)]
pub struct Webhooks {
    cfg: WebhookConfig,
    client: HttpClient,
}

impl Webhooks {
    pub fn new(cfg: WebhookConfig) -> Self {
        let client = Client::builder(TokioExecutor::new()).build_http();
        Self { cfg, client }
    }

    /// Asks the on_publish hooks; any non-2xx answer (or failure) refuses the publish.
    pub async fn authorize_publish(&self, event: &Event) -> Result<(), WebhookError> {
        for url in &self.cfg.on_publish {
            self.post(url, event).await?;
        }
        Ok(())
    }

    async fn post(&self, url: &str, event: &Event) -> Result<(), WebhookError> {
        let body = serde_json::to_vec(event).unwrap_or_default();
        let req = http::Request::post(url)
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::USER_AGENT, concat!("livegate/", env!("CARGO_PKG_VERSION")))
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| WebhookError::Failed { url: url.into(), detail: e.to_string() })?;
        let fut = self.client.request(req);
        let resp = tokio::time::timeout(Duration::from_millis(self.cfg.timeout_ms), fut)
            .await
            .map_err(|_| WebhookError::Failed {
                url: url.into(),
                detail: format!("no answer within {} ms", self.cfg.timeout_ms),
            })?
            .map_err(|e| WebhookError::Failed { url: url.into(), detail: e.to_string() })?;
        let status = resp.status();
        // Drain the body so the connection can be reused, but only a small one and only briefly: a hook that
        // answers with an endless or stalled body must not hold a publish (or this task) forever.
        let drain = http_body_util::Limited::new(resp.into_body(), DRAIN_BYTES).collect();
        let _ = tokio::time::timeout(DRAIN_TIME, drain).await;
        if !status.is_success() {
            return Err(WebhookError::Refused { url: url.into(), status: status.as_u16() });
        }
        Ok(())
    }

    /// Delivers notification events from the bus until it closes.
    pub async fn run(self, bus: EventBus) {
        let mut rx = bus.subscribe();
        loop {
            let event = match rx.recv().await {
                Ok(e) => e,
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(lost = n, "webhook dispatcher lagged; events dropped");
                    continue;
                }
                Err(broadcast::error::RecvError::Closed) => return,
            };
            let urls = match &event {
                // An edge's copy of another node's stream is no publish of this cluster's (its on_publish
                // was never asked either).
                Event::Unpublish { protocol: crate::hub::Protocol::Edge, .. } => continue,
                Event::Unpublish { .. } => &self.cfg.on_unpublish,
                Event::Play { .. } => &self.cfg.on_play,
                Event::Stop { .. } => &self.cfg.on_stop,
                Event::Quality { .. } | Event::PublisherState { .. } | Event::PlayerQuality { .. } => {
                    &self.cfg.on_stream_health
                }
                // on_publish is asked synchronously before the publish is accepted.
                Event::Publish { .. }
                | Event::StreamClosed { .. }
                | Event::RecordFailed { .. }
                | Event::MixError { .. }
                | Event::RelayFailed { .. } => continue,
            };
            for url in urls.clone() {
                let this = self.clone();
                let event = event.clone();
                tokio::spawn(async move {
                    if let Err(e) = this.post(&url, &event).await {
                        tracing::warn!(error = %e, "webhook delivery failed");
                    }
                });
            }
        }
    }
}
