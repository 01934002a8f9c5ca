//! Process wiring: the services, each adapter's handles, the listeners, and graceful shutdown.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;

use crate::access::Access;
use crate::config::Config;
use crate::conn::ConnLimits;
use crate::events::EventBus;
use crate::http::HttpState;
use crate::hub::Hub;
use crate::rtmp::RtmpState;
use crate::webhooks::Webhooks;

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
    pub access: Access,
    pub limits: Arc<ConnLimits>,
    pub rooms: Arc<crate::rooms::RoomService>,
    pub pulls: Arc<crate::cluster::Pulls>,
    pub relays: Arc<crate::rtmp::relay::Relays>,
    /// This node in the origin/edge cluster, when `[cluster]` names a role (joined once the ports are bound).
    pub cluster: std::sync::OnceLock<Arc<crate::cluster::Cluster>>,
    /// The bound RTMP and RTMPS ports (room URLs carry them).
    rtmp_port: u16,
    rtmps_port: Option<u16>,
    started: Instant,
}

impl AppState {
    /// The services, on `config`; `http_addr` is the HTTP port's bound address (recording URLs point at it).
    pub fn new(
        config: Config,
        http_addr: std::net::SocketAddr,
        rtmp_port: u16,
        rtmps_port: Option<u16>,
    ) -> Result<Arc<Self>, crate::transcode::TranscodeError> {
        let config = Arc::new(config);
        let events = EventBus::new();
        let hub = Hub::new(crate::hub::HubOptions::from_config(&config.hub), events);
        let webhooks = Webhooks::new(config.webhooks.clone());
        let variants = config.apps.iter().filter_map(|(k, a)| Some((k.clone(), a.hls_variant?))).collect();
        let hls = crate::hls::Hls::new(hub.clone(), config.hls.clone(), variants);
        let recorder =
            crate::record::Recorder::new(hub.clone(), config.record.clone(), http_addr, config.hls.segment_secs);
        for (app, a) in &config.apps {
            if a.placeholder.as_ref().is_some_and(|p| !p.record) {
                recorder.leave_out_filler(app);
            }
        }
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
        let access = Access::new(config.clone(), webhooks.clone());
        let rooms = crate::rooms::RoomService::new(&config, hub.clone(), mixes.clone(), recorder.clone());
        if rooms.enabled() {
            access.set_gate(rooms.clone());
        }
        let pulls = crate::cluster::Pulls::new(hub.clone(), config.cluster.clone());
        pulls.add_dialer(Arc::new(crate::rtmp::pull::RtmpDialer));
        let relays = crate::rtmp::relay::Relays::new(hub.clone(), config.clone());
        Ok(Arc::new(Self {
            rooms,
            pulls,
            relays,
            cluster: std::sync::OnceLock::new(),
            rtmp_port,
            rtmps_port,
            hub,
            hls,
            recorder,
            whep,
            whip,
            transcoders,
            mixes,
            access,
            limits: ConnLimits::new(&config),
            config,
            webhooks,
            started: Instant::now(),
        }))
    }

    /// The RTMP adapter's handles.
    pub fn rtmp_state(&self) -> Arc<RtmpState> {
        Arc::new(RtmpState {
            hub: self.hub.clone(),
            config: self.config.clone(),
            access: self.access.clone(),
            limits: self.limits.clone(),
            started: self.started,
        })
    }

    /// The HTTP adapter's handles.
    pub fn http_state(&self) -> Arc<HttpState> {
        Arc::new(HttpState {
            hub: self.hub.clone(),
            hls: self.hls.clone(),
            recorder: self.recorder.clone(),
            whep: self.whep.clone(),
            whip: self.whip.clone(),
            mixes: self.mixes.clone(),
            config: self.config.clone(),
            access: self.access.clone(),
            limits: self.limits.clone(),
            rooms: self.rooms.clone(),
            pulls: self.pulls.clone(),
            relays: self.relays.clone(),
            cluster: self.cluster.get().cloned(),
            rtmp_port: self.rtmp_port,
            rtmps_port: self.rtmps_port,
        })
    }
}

/// The checks of a parsed config that need the services' knowledge (a recording name template, the mix
/// output defaults); `Config::parse` has done the rest. `serve` and `check-config` run both.
pub fn check_config(config: &Config) -> Result<(), crate::config::ConfigError> {
    crate::record::check_config(&config.record)?;
    crate::mix::layout::check_config(&config.mix)?;
    Ok(())
}

/// Writes the bound addresses whole: a reader polling for the file never sees half of it.
fn write_ready_file(
    path: &std::path::Path,
    rtmp: std::net::SocketAddr,
    http: std::net::SocketAddr,
    https: Option<std::net::SocketAddr>,
    rtmps: Option<std::net::SocketAddr>,
) -> std::io::Result<()> {
    let mut body = serde_json::json!({ "rtmp": rtmp.to_string(), "http": http.to_string() });
    if let Some(a) = https {
        body["https"] = a.to_string().into();
    }
    if let Some(a) = rtmps {
        body["rtmps"] = a.to_string().into();
    }
    let body = body.to_string();
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, body)?;
    std::fs::rename(&tmp, path)
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
///
/// With `ready_file`, the bound addresses are written there as JSON (`{"rtmp": "ip:port", "http": "ip:port"}`,
/// and `"https"`, `"rtmps"` when they are on)
/// once livegate accepts connections: a port of 0 in the config lets the OS choose, and this tells which.
pub async fn run(config: Config, ready_file: Option<std::path::PathBuf>) -> anyhow::Result<()> {
    raise_fd_limit();
    let rtmp = TcpListener::bind(config.rtmp.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen for RTMP on {}: {e}", config.rtmp.listen))?;
    let http = TcpListener::bind(config.http.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen for HTTP on {}: {e}", config.http.listen))?;
    let (rtmp_addr, http_addr) = (rtmp.local_addr()?, http.local_addr()?);
    let alpn_http = [crate::tls::ALPN_H2, crate::tls::ALPN_HTTP11];
    let https = tls_listener(&config, config.http.https_listen, "HTTPS", &alpn_http).await?;
    let rtmps = tls_listener(&config, config.rtmp.rtmps_listen, "RTMPS", &[]).await?;
    let https_addr = https.as_ref().map(|(l, _)| l.local_addr()).transpose()?;
    let rtmps_addr = rtmps.as_ref().map(|(l, _)| l.local_addr()).transpose()?;
    let reloadable: Vec<Arc<crate::tls::TlsCerts>> = https.iter().chain(rtmps.iter()).map(|(_, c)| c.clone()).collect();
    if !reloadable.is_empty() {
        tokio::spawn(reload_on_sighup(reloadable));
    }
    let state = AppState::new(config, http_addr, rtmp_addr.port(), rtmps_addr.map(|a| a.port()))
        .map_err(|e| anyhow::anyhow!("cannot start transcoders: {e}"))?;
    state
        .recorder
        .check_root()
        .map_err(|e| anyhow::anyhow!("recording directory {} is not writable: {e}", state.recorder.root().display()))?;
    if let Some(e) = state.whep.start_error() {
        anyhow::bail!("cannot listen for WebRTC: {e} (webrtc.udp_mux_port = 0 takes any free port)");
    }
    let auto: std::collections::HashMap<String, Vec<crate::record::RecordFormat>> =
        state.config.apps.iter().map(|(k, v)| (k.clone(), v.record.clone())).collect();
    state.recorder.spawn(auto);
    if state.config.cluster.role.is_some() {
        let advertise = crate::cluster::service::resolve_advertise(&state.config.cluster, rtmp_addr, http_addr)?;
        let cluster = crate::cluster::Cluster::start(
            state.config.clone(),
            state.hub.clone(),
            &state.access,
            state.pulls.clone(),
            advertise,
        )
        .await?;
        if let Some(c) = cluster {
            let rooms = state.rooms.clone();
            c.set_open_rooms(move || {
                let open = rooms.open_rooms().into_iter();
                open.map(|k| crate::cluster::directory::RoomRef { app: k.app, id: k.id }).collect()
            });
            let _ = state.cluster.set(c);
        }
    }
    tracing::info!(rtmp = %rtmp_addr, http = %http_addr, "livegate listening");
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(state.webhooks.clone().run(state.hub.events().clone()));
    tokio::spawn(state.hub.clone().run_health());
    state.rooms.start();
    state.relays.start();
    crate::placeholder::Placeholders::new(state.hub.clone(), state.config.clone()).start();
    let rtmp_task = tokio::spawn(crate::rtmp::server::serve(rtmp, state.rtmp_state(), stop_rx.clone()));
    let http_task = tokio::spawn(crate::http::serve(http, state.http_state(), stop_rx.clone()));
    let https_task = https.map(|(listener, certs)| {
        tracing::info!(https = ?https_addr, "livegate listening for HTTPS");
        tokio::spawn(crate::http::https::serve(listener, state.http_state(), certs, stop_rx.clone()))
    });
    let rtmps_task = rtmps.map(|(listener, certs)| {
        tracing::info!(rtmps = ?rtmps_addr, "livegate listening for RTMPS");
        tokio::spawn(crate::rtmp::server::serve_tls(listener, state.rtmp_state(), certs, stop_rx.clone()))
    });
    if let Some(path) = ready_file {
        write_ready_file(&path, rtmp_addr, http_addr, https_addr, rtmps_addr)
            .map_err(|e| anyhow::anyhow!("cannot write the ready file {}: {e}", path.display()))?;
    }

    wait_for_signal().await;
    tracing::info!("shutting down: draining connections");
    if let Some(c) = state.cluster.get() {
        c.leave().await;
    }
    let _ = stop_tx.send(true);
    let _ = rtmp_task.await;
    let _ = http_task.await;
    for t in [https_task, rtmps_task].into_iter().flatten() {
        let _ = t.await;
    }
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

/// A TLS listener on `addr` with the certificate in `[http]`, if `addr` is set.
async fn tls_listener(
    config: &Config,
    addr: Option<std::net::SocketAddr>,
    what: &str,
    alpn: &[&[u8]],
) -> anyhow::Result<Option<(TcpListener, Arc<crate::tls::TlsCerts>)>> {
    let Some(addr) = addr else { return Ok(None) };
    let (cert, key) = (std::path::Path::new(&config.http.tls_cert), std::path::Path::new(&config.http.tls_key));
    let certs = crate::tls::TlsCerts::load(cert, key, alpn)
        .map_err(|e| anyhow::anyhow!("cannot load the TLS certificate for {what} (http.tls_cert / tls_key): {e}"))?;
    let l = TcpListener::bind(addr).await.map_err(|e| anyhow::anyhow!("cannot listen for {what} on {addr}: {e}"))?;
    Ok(Some((l, certs)))
}

/// Loads the certificate files again on every SIGHUP; a failure keeps the certificate in use.
async fn reload_on_sighup(certs: Vec<Arc<crate::tls::TlsCerts>>) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else { return };
    while hup.recv().await.is_some() {
        for c in &certs {
            match c.reload() {
                Ok(()) => tracing::info!("TLS certificate reloaded"),
                Err(e) => tracing::error!(error = %e, "TLS certificate not reloaded: the old one stays in use"),
            }
        }
    }
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
