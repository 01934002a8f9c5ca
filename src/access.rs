//! Who may publish and play (ARCHITECTURE invariant 11): app and stream names, signed URLs, and for a
//! publish the on_publish webhook. Every adapter (RTMP, HTTP-FLV, HLS, WHIP, WHEP) asks here.

use std::sync::{Arc, OnceLock};

use crate::auth::KeyPair;
use crate::auth::{self, AuthError};
use crate::config::{AppConfig, Config};
use crate::events::Event;
use crate::hub::{PublisherInfo, StreamKey};
use crate::names::{self, NameError};
use crate::webhooks::{WebhookError, Webhooks};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Publish,
    Play,
}

#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error("unknown app {0:?}: it is not configured under [apps]")]
    UnknownApp(String),
    #[error("{0}")]
    BadName(#[from] NameError),
    #[error("signature check failed: {0}")]
    Auth(#[from] AuthError),
    #[error("on_publish webhook refused: {0}")]
    Webhook(#[from] WebhookError),
    #[error("{0}")]
    Refused(GateError),
    #[error("{0}")]
    Claim(ClaimRefusal),
}

/// Why a [`PublishClaim`] refused a publish.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ClaimRefusal {
    /// Another node publishes the stream (HTTP 409).
    #[error("{0}")]
    Held(String),
    /// This node takes no publishers (HTTP 403).
    #[error("{0}")]
    NotHere(String),
    /// Whether another node publishes it cannot be known now (HTTP 503).
    #[error("{0}")]
    Unavailable(String),
}

/// The last check of a publish, beyond this node: the cluster's one publisher per stream.
#[async_trait::async_trait]
pub trait PublishClaim: Send + Sync {
    async fn claim(&self, key: &StreamKey) -> Result<(), ClaimRefusal>;
}

/// Why a [`StreamGate`] refused: the gate's own error type (the rooms': `rooms::service::GateRefusal`).
pub type GateError = Box<dyn std::error::Error + Send + Sync>;

/// A check the streams of one app need beyond the signature, made by the service that hands out their URLs
/// (the rooms: a member's push URL publishes that member's stream only while it is in its room, a member's
/// play URL plays only while the member is in the room).
pub trait StreamGate: Send + Sync {
    /// The app this gate guards.
    fn app(&self) -> &str;
    fn publish(&self, key: &StreamKey) -> Result<(), GateError>;
    fn play(&self, key: &StreamKey, query: &[(String, String)]) -> Result<(), GateError>;
}

/// The query parameter that ties a play to the member it was handed to (see `Access::player_tag`).
pub const MEMBER_KEY_PARAM: &str = "memberKey";

/// The access checks, with the config and webhooks they need.
#[derive(Clone)]
pub struct Access {
    config: Arc<Config>,
    webhooks: Webhooks,
    gate: Arc<OnceLock<Arc<dyn StreamGate>>>,
    claim: Arc<OnceLock<Arc<dyn PublishClaim>>>,
}

impl Access {
    pub fn new(config: Arc<Config>, webhooks: Webhooks) -> Self {
        Self { config, webhooks, gate: Arc::default(), claim: Arc::default() }
    }

    /// Installs the gate of the app it names (once: the room service at start-up).
    pub fn set_gate(&self, gate: Arc<dyn StreamGate>) {
        if self.gate.set(gate).is_err() {
            tracing::warn!("a stream gate is installed already");
        }
    }

    /// Installs the publish claim (once: the cluster service at start-up).
    pub fn set_claim(&self, claim: Arc<dyn PublishClaim>) {
        if self.claim.set(claim).is_err() {
            tracing::warn!("a publish claim is installed already");
        }
    }

    fn gate_for(&self, key: &StreamKey) -> Option<&Arc<dyn StreamGate>> {
        self.gate.get().filter(|g| g.app() == key.app)
    }

    /// What a player is known by beyond its connection (the member a room play URL was handed to), so that
    /// its plays end with the member's stay.
    pub fn player_tag(query: &[(String, String)]) -> Option<String> {
        names::query_get(query, MEMBER_KEY_PARAM).filter(|v| !v.is_empty()).map(str::to_owned)
    }

    pub fn check_app(&self, app: &str) -> Result<(), AccessError> {
        names::validate("app", app)?;
        if self.config.app(app).is_none() {
            return Err(AccessError::UnknownApp(app.to_owned()));
        }
        Ok(())
    }

    /// Name, app, signature and (for publish) the on_publish webhook.
    pub async fn authorize(
        &self,
        op: Op,
        key: &StreamKey,
        query: &[(String, String)],
        info: &PublisherInfo,
    ) -> Result<(), AccessError> {
        match op {
            Op::Play => self.authorize_play(key, query),
            Op::Publish => {
                names::validate("stream", &key.name)?;
                self.check_signed(key, query, AppConfig::push_keys)?;
                if let Some(g) = self.gate_for(key) {
                    g.publish(key).map_err(AccessError::Refused)?;
                }
                let event = Event::Publish {
                    stream: key.clone(),
                    client_id: info.client_id,
                    protocol: info.protocol,
                    addr: info.addr.map(|a| a.to_string()),
                    param: info.param.clone(),
                };
                self.webhooks.authorize_publish(&event).await?;
                // Last: a claim that another check would refuse would keep the stream from its real publisher
                // on another node until it expired.
                if let Some(c) = self.claim.get() {
                    c.claim(key).await.map_err(AccessError::Claim)?;
                }
                Ok(())
            }
        }
    }

    /// A player may name the stream's H.264 rendition (`x@cb`); the play signature is the source's.
    pub fn authorize_play(&self, key: &StreamKey, query: &[(String, String)]) -> Result<(), AccessError> {
        names::validate_play(&key.name)?;
        self.check_signed(key, query, AppConfig::play_keys)?;
        if let Some(g) = self.gate_for(key) {
            g.play(key, query).map_err(AccessError::Refused)?;
        }
        Ok(())
    }

    /// App, stream name, and the URL signature against the app's push or play keys.
    fn check_signed(
        &self,
        key: &StreamKey,
        query: &[(String, String)],
        keys: fn(&AppConfig) -> KeyPair,
    ) -> Result<(), AccessError> {
        self.check_app(&key.app)?;
        let app = self.config.app(&key.app).ok_or_else(|| AccessError::UnknownApp(key.app.clone()))?;
        auth::verify(
            &keys(app),
            names::source_name(&key.name),
            names::query_get(query, "txSecret"),
            names::query_get(query, "txTime"),
            auth::unix_now(),
        )?;
        Ok(())
    }
}
