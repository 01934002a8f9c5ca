//! Process wiring: shared state, access checks, the listeners, and graceful shutdown.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;

use crate::auth::{self, AuthError};
use crate::config::Config;
use crate::events::{Event, EventBus};
use crate::hub::{Hub, PublisherInfo, StreamKey};
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
}

pub struct AppState {
    pub hub: Hub,
    pub hls: Arc<crate::hls::Hls>,
    pub recorder: Arc<crate::record::Recorder>,
    pub whep: Arc<crate::webrtc::Whep>,
    pub whip: Arc<crate::webrtc::Whip>,
    pub transcoders: Arc<crate::transcode::Transcoders>,
    pub mixes: Arc<crate::mix::Mixes>,
    pub config: Arc<Config>,
    pub webhooks: Webhooks,
    started: Instant,
    rtmp_connections: Arc<AtomicUsize>,
    http_connections: Arc<AtomicUsize>,
}

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

impl AppState {
    pub fn new(config: Config) -> Result<Arc<Self>, crate::transcode::TranscodeError> {
        let events = EventBus::new();
        let hub = Hub::new(crate::hub::HubOptions::from_config(&config.hub), events);
        let webhooks = Webhooks::new(config.webhooks.clone());
        let hls = crate::hls::Hls::new(hub.clone(), config.hls.clone());
        let recorder = crate::record::Recorder::new(
            hub.clone(),
            config.record.clone(),
            config.http.listen,
            config.hls.segment_secs,
        );
        let transcoders = crate::transcode::Transcoders::new(hub.clone(), config.transcode.clone())?;
        hub.add_source_factory(transcoders.source_factory());
        let peers = Arc::new(crate::webrtc::PeerFactory::new(config.webrtc.clone()));
        let whep = crate::webrtc::Whep::new(hub.clone(), config.webrtc.clone(), transcoders.clone(), peers.clone());
        let whip = crate::webrtc::Whip::new(
            hub.clone(),
            config.webrtc.clone(),
            peers,
            &config.transcode.pipelines_dir,
            Duration::from_secs_f64(config.rtmp.publish_timeout_secs),
        )?;
        let mixes = crate::mix::Mixes::new(hub.clone(), config.mix.clone(), &config.transcode.pipelines_dir)
            .map_err(|e| crate::transcode::TranscodeError::Template { name: "mix".into(), detail: e.to_string() })?;
        Ok(Arc::new(Self {
            hub,
            hls,
            recorder,
            whep,
            whip,
            transcoders,
            mixes,
            config: Arc::new(config),
            webhooks,
            started: Instant::now(),
            rtmp_connections: Arc::new(AtomicUsize::new(0)),
            http_connections: Arc::new(AtomicUsize::new(0)),
        }))
    }

    pub fn uptime_ms(&self) -> u32 {
        self.started.elapsed().as_millis() as u32
    }

    pub fn try_connection(&self, listener: Listener) -> Option<ConnPermit> {
        let (count, max) = match listener {
            Listener::Rtmp => (&self.rtmp_connections, self.config.rtmp.max_connections),
            Listener::Http => (&self.http_connections, self.config.http.max_connections),
        };
        let n = count.fetch_add(1, Ordering::Relaxed);
        let permit = ConnPermit(count.clone());
        (n < max).then_some(permit)
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
                self.check_app(&key.app)?;
                names::validate("stream", &key.name)?;
                let app = self.config.app(&key.app).ok_or_else(|| AccessError::UnknownApp(key.app.clone()))?;
                auth::verify(
                    &app.push_keys(),
                    &key.name,
                    names::query_get(query, "txSecret"),
                    names::query_get(query, "txTime"),
                    auth::unix_now(),
                )?;
                let event = Event::Publish {
                    stream: key.clone(),
                    client_id: info.client_id,
                    protocol: info.protocol,
                    addr: info.addr.map(|a| a.to_string()),
                    param: info.param.clone(),
                };
                self.webhooks.authorize_publish(&event).await?;
                Ok(())
            }
        }
    }

    pub fn authorize_play(&self, key: &StreamKey, query: &[(String, String)]) -> Result<(), AccessError> {
        self.check_app(&key.app)?;
        names::validate("stream", &key.name)?;
        let app = self.config.app(&key.app).ok_or_else(|| AccessError::UnknownApp(key.app.clone()))?;
        auth::verify(
            &app.play_keys(),
            &key.name,
            names::query_get(query, "txSecret"),
            names::query_get(query, "txTime"),
            auth::unix_now(),
        )?;
        Ok(())
    }
}

/// The checks of a parsed config that need the services' knowledge (a recording name template, the mix
/// output defaults); `Config::parse` has done the rest. `serve` and `check-config` run both.
pub fn check_config(config: &Config) -> Result<(), crate::config::ConfigError> {
    crate::record::check_config(&config.record)?;
    crate::mix::layout::check_config(&config.mix)?;
    Ok(())
}

/// Accepts connections until `shutdown` fires, counting each against the connection limit, and hands each
/// accepted socket (with its permit) to `on_conn`, which spawns the connection's task.
pub async fn accept_loop<F>(
    listener: TcpListener,
    state: Arc<AppState>,
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
        let Some(permit) = state.try_connection(listener_kind) else {
            tracing::warn!(peer = %addr, limit = listener_kind.limit_key(), "{what} connection refused: limit reached");
            continue;
        };
        crate::metrics::global().connections.fetch_add(1, Ordering::Relaxed);
        on_conn(sock, addr, permit);
    }
}

/// Raises the open-file limit to its hard maximum: every player is a socket.
pub fn raise_fd_limit() {
    unsafe {
        let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 && r.rlim_cur < r.rlim_max {
            r.rlim_cur = r.rlim_max;
            let _ = libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}

/// Binds the listeners, serves until SIGTERM/SIGINT, then drains: stop accepting, end every stream so
/// readers close cleanly, give connections a moment to flush, return.
pub async fn run(config: Config) -> anyhow::Result<()> {
    raise_fd_limit();
    let state = AppState::new(config).map_err(|e| anyhow::anyhow!("cannot start transcoders: {e}"))?;
    let rtmp = TcpListener::bind(state.config.rtmp.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen for RTMP on {}: {e}", state.config.rtmp.listen))?;
    let http = TcpListener::bind(state.config.http.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen for HTTP on {}: {e}", state.config.http.listen))?;
    state
        .recorder
        .check_root()
        .map_err(|e| anyhow::anyhow!("recording directory {} is not writable: {e}", state.recorder.root().display()))?;
    let auto: std::collections::HashMap<String, Vec<crate::record::RecordFormat>> =
        state.config.apps.iter().map(|(k, v)| (k.clone(), v.record.clone())).collect();
    state.recorder.spawn(auto);
    tracing::info!(rtmp = %rtmp.local_addr()?, http = %http.local_addr()?, "livegate listening");
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(state.webhooks.clone().run(state.hub.events().clone()));
    let rtmp_task = tokio::spawn(crate::rtmp::server::serve(rtmp, state.clone(), stop_rx.clone()));
    let http_task = tokio::spawn(crate::http::serve(http, state.clone(), stop_rx.clone()));

    wait_for_signal().await;
    tracing::info!("shutting down: draining connections");
    let _ = stop_tx.send(true);
    let _ = rtmp_task.await;
    let _ = http_task.await;
    state.hub.shutdown();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !state.hub.clients().is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // MP4 files closed just now are being rewritten into flat files; one left unfinished is finalized at the
    // next start, so this wait is bounded.
    let deadline = Instant::now() + Duration::from_secs(60);
    while state.recorder.finalizing() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tracing::info!(remaining = state.hub.clients().len(), "stopped");
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mix_defaults_are_checked_like_requests() {
        for (text, key) in [
            ("[mix]\nfps = 0\n", "mix.fps"),
            ("[mix]\nbackground_color = \"black\"\n", "mix.background_color"),
            ("[mix]\nmax_inputs = 17\n", "mix.max_inputs"),
            ("[mix]\nlost_after_ms = 10\n", "mix.lost_after_ms"),
            ("[record]\ntemplate = \"{nope}\"\n", "record.template"),
        ] {
            let e = Config::parse(text).and_then(|c| check_config(&c)).unwrap_err().to_string();
            assert!(e.contains(key), "{text}: {e}");
        }
        assert_eq!(Config::default_config().mix.max_inputs, 16);
        check_config(&Config::default_config()).unwrap();
    }
}
