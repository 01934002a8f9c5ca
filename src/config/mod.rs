//! The TOML configuration. Every key is documented in `config/livegate.toml`, which is also the embedded
//! default, so the documentation cannot drift from what the code accepts.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::auth::KeyPair;

mod sections;
pub use sections::*;

pub const DEFAULT_TOML: &str = include_str!("../../config/livegate.toml");

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{0}")]
    Parse(#[from] toml::de::Error),
    #[error("invalid value for {key}: {detail}")]
    Invalid { key: String, detail: String },
}

impl ConfigError {
    pub fn invalid(key: &str, detail: impl Into<String>) -> Self {
        ConfigError::Invalid { key: key.into(), detail: detail.into() }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub rtmp: RtmpConfig,
    pub http: HttpConfig,
    pub hub: HubConfig,
    pub play: PlayConfig,
    #[serde(default)]
    pub apps: BTreeMap<String, AppConfig>,
    #[serde(default)]
    pub webhooks: WebhookConfig,
    pub hls: HlsConfig,
    pub record: RecordConfig,
    pub webrtc: WebrtcConfig,
    pub transcode: TranscodeConfig,
    pub mix: MixConfig,
    pub rooms: RoomsConfig,
    pub cluster: ClusterConfig,
    pub log: LogConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RtmpConfig {
    pub listen: SocketAddr,
    pub handshake_timeout_secs: f64,
    pub idle_timeout_secs: f64,
    pub publish_timeout_secs: f64,
    pub max_connections: usize,
    /// Connections one client address may hold (0 = no limit).
    pub max_connections_per_addr: usize,
    /// Bytes of unfinished messages a publisher's connection may hold (other connections: 64 KiB).
    pub max_message_bytes: usize,
    /// Where RTMPS (RTMP in TLS, with `http.tls_cert`) is served; `None`: no RTMPS.
    #[serde(deserialize_with = "optional_addr")]
    pub rtmps_listen: Option<SocketAddr>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    pub listen: SocketAddr,
    pub cors_origin: String,
    pub api_token: String,
    /// A second token that opens API reads only (dashboards, monitoring).
    pub api_read_token: String,
    /// Origins whose pages may call the API (CORS); empty: none.
    pub api_cors_origins: Vec<String>,
    pub web_root: String,
    pub max_connections: usize,
    /// Connections one client address may hold (0 = no limit).
    pub max_connections_per_addr: usize,
    /// How long a request body may take to arrive once its head is in.
    pub body_timeout_secs: f64,
    /// Where HTTPS (HTTP/1.1 and HTTP/2) is served; `None`: no HTTPS.
    #[serde(deserialize_with = "optional_addr")]
    pub https_listen: Option<SocketAddr>,
    /// PEM certificate chain (leaf first) and key for HTTPS.
    pub tls_cert: String,
    pub tls_key: String,
}

/// An address, or `""` for none.
fn optional_addr<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
    let s = String::deserialize(d)?;
    match s.trim() {
        "" => Ok(None),
        a => a.parse().map(Some).map_err(serde::de::Error::custom),
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HubConfig {
    pub buffer_secs: f64,
    pub max_stream_mib: usize,
    pub reconnect_grace_secs: f64,
    pub allow_takeover: bool,
    pub merge_window_ms: u64,
    pub audio_hold_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlayConfig {
    pub min_cache: f64,
    pub max_cache: f64,
    pub rtc_min_cache: f64,
    pub rtc_max_cache: f64,
    pub max_skips_per_minute: u32,
    pub stall_timeout_secs: f64,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppConfig {
    #[serde(default)]
    pub push_key: String,
    #[serde(default)]
    pub push_key_backup: String,
    #[serde(default)]
    pub play_key: String,
    #[serde(default)]
    pub play_key_backup: String,
    /// Record every push to this app in these formats.
    #[serde(default)]
    pub record: Vec<RecordFormat>,
    /// Relay every stream of this app to these RTMP bases (`rtmp://host/app`: the stream's name is appended).
    #[serde(default)]
    pub forward: Vec<String>,
    /// This app's live HLS variant, instead of `hls.variant`.
    #[serde(default)]
    pub hls_variant: Option<HlsVariant>,
    /// A picture that stands in for a publisher's video when it stops (the server placeholder).
    #[serde(default)]
    pub placeholder: Option<PlaceholderConfig>,
}

/// `[apps.X] placeholder = { image = "…", after_ms = 1500 }`: when the publisher sends no video for
/// `after_ms`, or dropped and is in its reconnect grace, livegate keeps the stream going with `image`
/// (encoded once per stream at the stream's size, H.264, `fps` frames a second) and, with no publisher,
/// silence for AAC audio; the publisher's next keyframe takes over on the same timeline.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlaceholderConfig {
    /// A PNG or JPEG file.
    pub image: std::path::PathBuf,
    #[serde(default = "default_placeholder_after_ms")]
    pub after_ms: u64,
    #[serde(default = "default_placeholder_fps")]
    pub fps: f64,
    /// Whether recordings keep the placeholder's frames (else they leave them out).
    #[serde(default = "default_true")]
    pub record: bool,
}

fn default_placeholder_after_ms() -> u64 {
    1500
}

fn default_placeholder_fps() -> f64 {
    5.0
}

fn default_true() -> bool {
    true
}

impl AppConfig {
    pub fn push_keys(&self) -> KeyPair {
        KeyPair { key: self.push_key.clone(), backup: self.push_key_backup.clone() }
    }
    pub fn play_keys(&self) -> KeyPair {
        KeyPair { key: self.play_key.clone(), backup: self.play_key_backup.clone() }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    #[serde(default)]
    pub on_publish: Vec<String>,
    #[serde(default)]
    pub on_unpublish: Vec<String>,
    #[serde(default)]
    pub on_play: Vec<String>,
    #[serde(default)]
    pub on_stop: Vec<String>,
    /// Publisher quality level and background/foreground changes (`on_quality`, `on_publisher_state`).
    #[serde(default)]
    pub on_stream_health: Vec<String>,
    #[serde(default = "default_webhook_timeout")]
    pub timeout_ms: u64,
}

fn default_webhook_timeout() -> u64 {
    3000
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    pub level: String,
}

impl Config {
    pub fn default_config() -> Self {
        Self::parse(DEFAULT_TOML).expect("embedded default config is valid")
    }

    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.display().to_string(), source })?;
        Self::parse(&text)
    }

    /// Parses a config. Keys left out take the embedded default's value, so a file need only say what differs.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let mut base: toml::Value = toml::from_str(DEFAULT_TOML)?;
        let over: toml::Value = toml::from_str(text)?;
        if over.get("hub").and_then(|h| h.get("flush_interval_ms")).is_some() {
            return Err(ConfigError::Invalid {
                key: "hub.flush_interval_ms".into(),
                detail: "replaced by hub.merge_window_ms (how long a video frame may wait to share its write with \
                         the next one; 0 = every frame at once)"
                    .into(),
            });
        }
        merge(&mut base, over);
        let mut cfg: Config = base.try_into()?;
        cfg.validate()?;
        cfg.add_room_app();
        Ok(cfg)
    }

    /// With rooms configured, the app members publish in exists and is signed: keys the operator left empty
    /// are derived from the first room app's secret key, so every node with this config (and every restart)
    /// makes and accepts the same member URLs.
    fn add_room_app(&mut self) {
        let Some(first) = self.rooms.apps.first() else { return };
        use hmac::Mac;
        let derive = |what: &str| {
            let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(first.secret_key.as_bytes()).expect("any key");
            mac.update(b"livegate rooms ");
            mac.update(what.as_bytes());
            hex::encode(mac.finalize().into_bytes())
        };
        let app = self.apps.entry(self.rooms.stream_app.clone()).or_default();
        if app.push_key.is_empty() {
            app.push_key = derive("push");
        }
        if app.play_key.is_empty() {
            app.play_key = derive("play");
        }
    }

    /// `[mix]`: limits in range (the output defaults are checked like a request's by `mix::check_config`).
    fn validate_mix(&self) -> Result<(), ConfigError> {
        let m = &self.mix;
        let bad = |key: &str, detail: String| Err(ConfigError::Invalid { key: key.into(), detail });
        if !(1..=16).contains(&m.max_inputs) {
            return bad("mix.max_inputs", format!("{} is outside 1..=16", m.max_inputs));
        }
        if !(1..=64).contains(&m.max_mixes) {
            return bad("mix.max_mixes", format!("{} is outside 1..=64", m.max_mixes));
        }
        if m.latency_ms > 1000 {
            return bad("mix.latency_ms", format!("{} is above 1000 ms", m.latency_ms));
        }
        if !(100..=60_000).contains(&m.lost_after_ms) {
            return bad("mix.lost_after_ms", format!("{} is outside 100..=60000 ms", m.lost_after_ms));
        }
        Ok(())
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, detail: String| Err(ConfigError::Invalid { key: key.into(), detail });
        let secs = |key: &str, v: f64, min: f64, max: f64| -> Result<(), ConfigError> {
            if !(v.is_finite() && v >= min && v <= max) {
                return Err(ConfigError::Invalid {
                    key: key.into(),
                    detail: format!("{v} is outside {min}..={max} seconds"),
                });
            }
            Ok(())
        };
        secs("rtmp.handshake_timeout_secs", self.rtmp.handshake_timeout_secs, 0.1, 600.0)?;
        secs("rtmp.idle_timeout_secs", self.rtmp.idle_timeout_secs, 0.1, 86_400.0)?;
        secs("rtmp.publish_timeout_secs", self.rtmp.publish_timeout_secs, 1.0, 3600.0)?;
        secs("hub.buffer_secs", self.hub.buffer_secs, 1.0, 300.0)?;
        secs("hub.reconnect_grace_secs", self.hub.reconnect_grace_secs, 0.0, 3600.0)?;
        secs("play.min_cache", self.play.min_cache, 0.0, 60.0)?;
        secs("play.max_cache", self.play.max_cache, 0.05, 60.0)?;
        secs("play.rtc_min_cache", self.play.rtc_min_cache, 0.0, 60.0)?;
        secs("play.rtc_max_cache", self.play.rtc_max_cache, 0.05, 60.0)?;
        secs("play.stall_timeout_secs", self.play.stall_timeout_secs, 0.5, 3600.0)?;
        if self.play.min_cache > self.play.max_cache {
            return bad(
                "play.min_cache",
                format!("{} is larger than play.max_cache {}", self.play.min_cache, self.play.max_cache),
            );
        }
        if self.play.max_cache > self.hub.buffer_secs {
            return bad(
                "play.max_cache",
                format!(
                    "{} exceeds hub.buffer_secs {}: the server cannot hold that much",
                    self.play.max_cache, self.hub.buffer_secs
                ),
            );
        }
        if self.hub.audio_hold_ms > 1000 {
            return bad("hub.audio_hold_ms", format!("{} is above 1000 ms", self.hub.audio_hold_ms));
        }
        if self.hub.merge_window_ms > 1000 {
            return bad("hub.merge_window_ms", format!("{} is above 1000 ms", self.hub.merge_window_ms));
        }
        if self.hub.max_stream_mib == 0 || self.hub.max_stream_mib > 4096 {
            return bad("hub.max_stream_mib", format!("{} is outside 1..=4096", self.hub.max_stream_mib));
        }
        self.hls.validate()?;
        self.validate_mix()?;
        if !(6_000..=510_000).contains(&self.transcode.opus_bitrate) {
            return bad(
                "transcode.opus_bitrate",
                format!("{} is outside 6000..=510000 bit/s", self.transcode.opus_bitrate),
            );
        }
        if ![10, 20, 40, 60].contains(&self.transcode.opus_frame_ms) {
            return bad(
                "transcode.opus_frame_ms",
                format!("{} is not one of 10, 20, 40, 60 (ms)", self.transcode.opus_frame_ms),
            );
        }
        if !(100..=50_000).contains(&self.transcode.video_kbps) {
            return bad("transcode.video_kbps", format!("{} is outside 100..=50000 kbit/s", self.transcode.video_kbps));
        }
        if !(32..=320).contains(&self.transcode.audio_kbps) {
            return bad("transcode.audio_kbps", format!("{} is outside 32..=320 kbit/s", self.transcode.audio_kbps));
        }
        if !(self.transcode.idle_stop_secs.is_finite() && (0.5..=3600.0).contains(&self.transcode.idle_stop_secs)) {
            return bad("transcode.idle_stop_secs", format!("{} is outside 0.5..=3600", self.transcode.idle_stop_secs));
        }
        self.webrtc.validate()?;
        self.record.validate()?;
        self.rooms.validate()?;
        secs("cluster.edge_idle_secs", self.cluster.edge_idle_secs, 0.0, 3600.0)?;
        secs("cluster.pull_timeout_secs", self.cluster.pull_timeout_secs, 1.0, 120.0)?;
        self.cluster.validate()?;
        if self.rtmp.max_connections == 0 {
            return bad("rtmp.max_connections", "must be at least 1".into());
        }
        secs("http.body_timeout_secs", self.http.body_timeout_secs, 0.1, 600.0)?;
        if self.http.https_listen.is_some() && (self.http.tls_cert.is_empty() || self.http.tls_key.is_empty()) {
            return bad("http.https_listen", "needs http.tls_cert and http.tls_key (PEM files)".into());
        }
        if self.rtmp.rtmps_listen.is_some() && (self.http.tls_cert.is_empty() || self.http.tls_key.is_empty()) {
            return bad("rtmp.rtmps_listen", "needs http.tls_cert and http.tls_key (PEM files)".into());
        }
        let mib = 1024 * 1024;
        if !(256 * 1024..=64 * mib).contains(&self.rtmp.max_message_bytes) {
            return bad(
                "rtmp.max_message_bytes",
                format!("{} is outside 262144..=67108864 bytes", self.rtmp.max_message_bytes),
            );
        }
        if !self.http.api_read_token.is_empty() && self.http.api_token.is_empty() {
            return bad(
                "http.api_read_token",
                "needs http.api_token: without it the API trusts loopback clients and has no tokens".into(),
            );
        }
        if !self.http.api_read_token.is_empty() && self.http.api_read_token == self.http.api_token {
            return bad("http.api_read_token", "must differ from http.api_token".into());
        }
        for (name, app) in &self.apps {
            if let Some(p) = &app.placeholder {
                let key = format!("apps.{name}.placeholder");
                if !(100..=600_000).contains(&p.after_ms) {
                    return bad(&key, format!("after_ms {} is outside 100..=600000", p.after_ms));
                }
                if !(p.fps.is_finite() && (0.5..=30.0).contains(&p.fps)) {
                    return bad(&key, format!("fps {} is outside 0.5..=30", p.fps));
                }
                if !p.image.is_file() {
                    return bad(&key, format!("image {} is not a readable file", p.image.display()));
                }
            }
            for f in &app.forward {
                let base = f.split('?').next().unwrap_or("");
                let ok = base.starts_with("rtmp://") && base.trim_start_matches("rtmp://").contains('/');
                if !ok {
                    return bad(
                        &format!("apps.{name}.forward"),
                        format!("{f:?} is not an rtmp://host[:port]/app base (the stream name is appended)"),
                    );
                }
            }
        }
        for o in &self.http.api_cors_origins {
            let ok = (o.starts_with("http://") || o.starts_with("https://"))
                && !o.trim_end_matches('/').contains(|c: char| c == '*' || c.is_whitespace())
                && o.split("://").nth(1).is_some_and(|rest| !rest.is_empty() && !rest.contains('/'));
            if !ok {
                return bad(
                    "http.api_cors_origins",
                    format!("{o:?} is not an origin (scheme://host[:port], no path, no wildcard)"),
                );
            }
        }
        if self.http.max_connections == 0 {
            return bad("http.max_connections", "must be at least 1".into());
        }
        for app in self.apps.keys() {
            if let Err(e) = crate::names::validate("app", app) {
                return bad(&format!("apps.{app}"), e.to_string());
            }
        }
        for (key, urls) in [
            ("webhooks.on_publish", &self.webhooks.on_publish),
            ("webhooks.on_unpublish", &self.webhooks.on_unpublish),
            ("webhooks.on_play", &self.webhooks.on_play),
            ("webhooks.on_stop", &self.webhooks.on_stop),
            ("webhooks.on_stream_health", &self.webhooks.on_stream_health),
        ] {
            for u in urls {
                if !u.starts_with("http://") || u.parse::<http::Uri>().is_err() {
                    return bad(key, format!("{u:?} is not an http:// URL"));
                }
            }
        }
        if tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err() {
            return bad("log.level", format!("{:?} is not a tracing filter", self.log.level));
        }
        Ok(())
    }

    pub fn app(&self, name: &str) -> Option<&AppConfig> {
        self.apps.get(name)
    }

    pub fn stall_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.play.stall_timeout_secs)
    }
}

/// Overlays `over` onto `base`, table by table. The `apps` table is replaced whole: an operator who lists
/// apps means exactly those apps.
fn merge(base: &mut toml::Value, over: toml::Value) {
    match (base, over) {
        (toml::Value::Table(b), toml::Value::Table(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(existing) if k != "apps" && existing.is_table() && v.is_table() => merge(existing, v),
                    _ => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (b, o) => *b = o,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_parses() {
        let c = Config::default_config();
        assert_eq!(c.rtmp.listen.port(), 1935);
        assert_eq!(c.http.listen.port(), 8080);
        assert!(c.apps.contains_key("live"));
    }

    #[test]
    fn the_replaced_flush_interval_names_its_successor() {
        let e = Config::parse("[hub]\nflush_interval_ms = 30\n").unwrap_err().to_string();
        assert!(e.contains("hub.flush_interval_ms") && e.contains("merge_window_ms"), "{e}");
        let c = Config::parse("[hub]\nmerge_window_ms = 0\n").unwrap();
        assert_eq!(c.hub.merge_window_ms, 0);
        assert_eq!(Config::parse("").unwrap().hub.merge_window_ms, 40);
    }

    #[test]
    fn unknown_key_is_an_error() {
        let e = Config::parse("[rtmp]\nlisten_port = 1\n").unwrap_err().to_string();
        assert!(e.contains("listen_port"), "{e}");
    }

    #[test]
    fn bad_value_names_the_key() {
        let e = Config::parse("[play]\nmin_cache = 5.0\nmax_cache = 1.0\n").unwrap_err().to_string();
        assert!(e.contains("play.min_cache"), "{e}");
        let e = Config::parse("[webhooks]\non_publish = [\"ftp://x\"]\n").unwrap_err().to_string();
        assert!(e.contains("webhooks.on_publish"), "{e}");
    }

    #[test]
    fn the_opus_packet_duration_is_one_opusenc_makes() {
        assert_eq!(Config::parse("[transcode]\nopus_frame_ms = 40\n").unwrap().transcode.opus_frame_ms, 40);
        assert_eq!(Config::default_config().transcode.opus_frame_ms, 20);
        let e = Config::parse("[transcode]\nopus_frame_ms = 30\n").unwrap_err().to_string();
        assert!(e.contains("transcode.opus_frame_ms") && e.contains("10, 20, 40, 60"), "{e}");
    }

    #[test]
    fn room_apps_are_checked_and_their_keys_never_printed() {
        let app = |id: u32, key: &str| format!("[[rooms.apps]]\nsdk_app_id = {id}\nsecret_key = \"{key}\"\n");
        let e =
            Config::parse(&format!("{}{}", app(1400000123, "0123456789abcdef"), app(1400000123, "fedcba9876543210")))
                .unwrap_err()
                .to_string();
        assert!(e.contains("rooms.apps") && e.contains("listed twice"), "{e}");
        let e = Config::parse(&app(7, "short")).unwrap_err().to_string();
        assert!(e.contains("rooms.apps.secret_key") && !e.contains("short"), "{e}");
        let c = Config::parse(&app(7, "0123456789abcdef-secret")).unwrap();
        assert_eq!(c.rooms.app(7).map(|a| a.sdk_app_id), Some(7));
        assert!(!format!("{c:?}").contains("0123456789abcdef-secret"), "Debug shows the secret key");
        assert!(Config::parse("[rooms]\nmax_members = 0\n").unwrap_err().to_string().contains("rooms.max_members"));
    }

    #[test]
    fn whep_admission_settings_are_checked() {
        let c = Config::parse("[webrtc]\noverload_late_secs = 0.0\noverload_hold_secs = 5.0\n").unwrap();
        assert_eq!((c.webrtc.overload_late_secs, c.webrtc.overload_hold_secs), (0.0, 5.0));
        for (key, bad) in [("overload_late_secs", "-1.0"), ("overload_late_secs", "nan"), ("overload_hold_secs", "0.0")]
        {
            let e = Config::parse(&format!("[webrtc]\n{key} = {bad}\n")).unwrap_err().to_string();
            assert!(e.contains(&format!("webrtc.{key}")), "{e}");
        }
    }

    #[test]
    fn a_forward_must_be_an_rtmp_base() {
        let e = Config::parse("[apps.live]\nforward = [\"http://cdn/live\"]\n").unwrap_err().to_string();
        assert!(e.contains("apps.live.forward") && e.contains("rtmp://"), "{e}");
        assert!(Config::parse("[apps.live]\nforward = [\"rtmp://cdn\"]\n").is_err(), "no app in the base");
        let c = Config::parse("[apps.live]\nforward = [\"rtmp://cdn:1936/live?key=1\"]\n").unwrap();
        assert_eq!(c.apps["live"].forward.len(), 1);
    }

    #[test]
    fn an_unknown_recording_format_is_named() {
        let e = Config::parse("[apps.live]\nrecord = [\"flv\", \"avi\"]\n").unwrap_err().to_string();
        assert!(e.contains("avi") && e.contains("mp4"), "{e}");
        let c = Config::parse("[apps.live]\nrecord = [\"hls\"]\n").unwrap();
        assert_eq!(c.apps["live"].record, [RecordFormat::Hls]);
    }

    #[test]
    fn partial_file_overrides() {
        let c = Config::parse("[hub]\nreconnect_grace_secs = 2.5\n[apps.cam]\npush_key = \"k\"\n").unwrap();
        assert_eq!(c.hub.reconnect_grace_secs, 2.5);
        assert_eq!(c.hub.buffer_secs, Config::default_config().hub.buffer_secs);
        assert!(c.apps.contains_key("cam") && !c.apps.contains_key("live"));
    }
}
