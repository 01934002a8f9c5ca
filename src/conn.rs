//! Accepting connections under a limit per listener (`rtmp.max_connections`, `http.max_connections`), so
//! one kind of client cannot lock the other out.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::config::Config;

/// Which listener a connection came in on; each has its own connection limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    Rtmp,
    Http,
}

impl Listener {
    pub fn name(self) -> &'static str {
        match self {
            Listener::Rtmp => "rtmp",
            Listener::Http => "http",
        }
    }

    /// The config key of its connection limit.
    pub fn limit_key(self) -> &'static str {
        match self {
            Listener::Rtmp => "rtmp.max_connections",
            Listener::Http => "http.max_connections",
        }
    }
}

/// Counts a connection against its listener's `max_connections` until dropped.
pub struct ConnPermit(Arc<AtomicUsize>);

impl Drop for ConnPermit {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The open connections per listener, against the configured limits.
pub struct ConnLimits {
    rtmp: Arc<AtomicUsize>,
    http: Arc<AtomicUsize>,
    rtmp_max: usize,
    http_max: usize,
}

impl ConnLimits {
    pub fn new(config: &Config) -> Arc<Self> {
        Arc::new(Self {
            rtmp: Arc::default(),
            http: Arc::default(),
            rtmp_max: config.rtmp.max_connections,
            http_max: config.http.max_connections,
        })
    }

    /// A permit for one more connection on `listener`, unless its limit is reached.
    pub fn try_connection(&self, listener: Listener) -> Option<ConnPermit> {
        let (count, max) = match listener {
            Listener::Rtmp => (&self.rtmp, self.rtmp_max),
            Listener::Http => (&self.http, self.http_max),
        };
        let n = count.fetch_add(1, Ordering::Relaxed);
        let permit = ConnPermit(count.clone());
        (n < max).then_some(permit)
    }
}

/// Accepts connections until `shutdown` fires, counting each against the connection limit, and hands each
/// accepted socket (with its permit) to `on_conn`, which spawns the connection's task.
pub async fn accept_loop<F>(
    listener: TcpListener,
    limits: Arc<ConnLimits>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
    listener_kind: Listener,
    mut on_conn: F,
) where
    F: FnMut(tokio::net::TcpStream, std::net::SocketAddr, ConnPermit),
{
    let what = listener_kind.name();
    loop {
        let (sock, addr) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "{what} accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let Some(permit) = limits.try_connection(listener_kind) else {
            tracing::warn!(peer = %addr, limit = listener_kind.limit_key(), "{what} connection refused: limit reached");
            continue;
        };
        crate::metrics::global().connections.fetch_add(1, Ordering::Relaxed);
        on_conn(sock, addr, permit);
    }
}
