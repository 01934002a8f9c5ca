//! RTMP: pure protocol pieces (`handshake`, `chunk`, `message`, and the sans-IO `session` over them) and the
//! socket adapter (`server`).

pub mod chunk;
pub mod client;
pub mod handshake;
pub mod message;
pub mod pull;
pub mod relay;
pub mod server;
pub mod session;

use std::sync::Arc;
use std::time::Instant;

/// What the RTMP adapter uses: the hub, the config, the access checks and the connection limits.
pub struct RtmpState {
    pub hub: crate::hub::Hub,
    pub config: Arc<crate::config::Config>,
    pub access: crate::access::Access,
    pub limits: Arc<crate::conn::ConnLimits>,
    /// The server's start: the handshake's S1 time is the milliseconds since.
    pub started: Instant,
}

impl RtmpState {
    pub fn uptime_ms(&self) -> u32 {
        self.started.elapsed().as_millis() as u32
    }
}
