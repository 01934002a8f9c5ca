//! Accepting connections under a limit per listener (`rtmp.max_connections`, `http.max_connections`), so
//! one kind of client cannot lock the other out, and a limit per client address (`*.max_connections_per_addr`),
//! so one host cannot take a listener's whole allowance.

use std::collections::HashMap;
use std::net::IpAddr;
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

    /// The config key of its per-address limit.
    pub fn per_addr_key(self) -> &'static str {
        match self {
            Listener::Rtmp => "rtmp.max_connections_per_addr",
            Listener::Http => "http.max_connections_per_addr",
        }
    }
}

/// Counts a connection against its listener's limits until dropped.
pub struct ConnPermit {
    count: Arc<Counts>,
    addr: Option<IpAddr>,
}

impl Drop for ConnPermit {
    fn drop(&mut self) {
        self.count.total.fetch_sub(1, Ordering::Relaxed);
        if let Some(ip) = self.addr {
            let mut per = self.count.per_addr.lock();
            if let Some(n) = per.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    per.remove(&ip);
                }
            }
        }
    }
}

/// Why a connection was refused at accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The listener holds `max_connections`.
    Limit,
    /// The client's address holds `max_connections_per_addr`.
    PerAddr,
}

#[derive(Default)]
struct Counts {
    total: AtomicUsize,
    per_addr: parking_lot::Mutex<HashMap<IpAddr, usize>>,
}

struct Limit {
    count: Arc<Counts>,
    max: usize,
    per_addr_max: usize,
}

/// The open connections per listener and per client address, against the configured limits.
pub struct ConnLimits {
    rtmp: Limit,
    http: Limit,
}

impl ConnLimits {
    pub fn new(config: &Config) -> Arc<Self> {
        let limit = |max, per_addr_max| Limit { count: Arc::default(), max, per_addr_max };
        Arc::new(Self {
            rtmp: limit(config.rtmp.max_connections, config.rtmp.max_connections_per_addr),
            http: limit(config.http.max_connections, config.http.max_connections_per_addr),
        })
    }

    /// A permit for one more connection from `ip` on `listener`, unless a limit is reached.
    pub fn try_connection(&self, listener: Listener, ip: IpAddr) -> Result<ConnPermit, Refusal> {
        let l = match listener {
            Listener::Rtmp => &self.rtmp,
            Listener::Http => &self.http,
        };
        let n = l.count.total.fetch_add(1, Ordering::Relaxed);
        let mut permit = ConnPermit { count: l.count.clone(), addr: None };
        if n >= l.max {
            return Err(Refusal::Limit);
        }
        if l.per_addr_max > 0 {
            let mut per = l.count.per_addr.lock();
            let held = per.entry(ip).or_insert(0);
            if *held >= l.per_addr_max {
                return Err(Refusal::PerAddr);
            }
            *held += 1;
            permit.addr = Some(ip);
        }
        Ok(permit)
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
        let permit = match limits.try_connection(listener_kind, addr.ip()) {
            Ok(p) => p,
            Err(refusal) => {
                // Closed at once, before reading a byte: the refusal costs the server nothing more.
                let m = crate::metrics::global();
                match refusal {
                    Refusal::Limit => {
                        m.conn_refused_limit.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(peer = %addr, limit = listener_kind.limit_key(), "{what} connection refused: limit reached");
                    }
                    Refusal::PerAddr => {
                        m.conn_refused_per_addr.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(peer = %addr, limit = listener_kind.per_addr_key(), "{what} connection refused: this address holds its limit");
                    }
                }
                continue;
            }
        };
        crate::metrics::global().connections.fetch_add(1, Ordering::Relaxed);
        on_conn(sock, addr, permit);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_per_listener_and_address() {
        let mut cfg = Config::default_config();
        cfg.http.max_connections = 3;
        cfg.http.max_connections_per_addr = 2;
        cfg.rtmp.max_connections_per_addr = 0;
        let l = ConnLimits::new(&cfg);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let p1 = l.try_connection(Listener::Http, a).unwrap();
        let p2 = l.try_connection(Listener::Http, a).unwrap();
        assert_eq!(l.try_connection(Listener::Http, a).err(), Some(Refusal::PerAddr));
        let p3 = l.try_connection(Listener::Http, b).unwrap();
        assert_eq!(l.try_connection(Listener::Http, b).err(), Some(Refusal::Limit));
        drop(p1);
        // A closed connection gives its address (and the listener) one back; refusals took nothing.
        let _p4 = l.try_connection(Listener::Http, a).unwrap();
        drop((p2, p3));
        assert_eq!(l.http.count.per_addr.lock().get(&a), Some(&1));
        assert_eq!(l.http.count.per_addr.lock().get(&b), None);
        // RTMP: its own allowance, and no per-address limit at 0.
        let rtmp: Vec<_> = (0..50).map(|_| l.try_connection(Listener::Rtmp, a).unwrap()).collect();
        assert_eq!(rtmp.len(), 50);
    }
}
