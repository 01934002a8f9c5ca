//! The service sections of the config (`[hls]`, `[webrtc]`, `[transcode]`, `[mix]`, `[record]`): plain data
//! and the checks that need nothing but the values. Checks that need a service's knowledge (a recording
//! name template, a mix's output defaults) are the service's, run by `server::check_config`.

use serde::{Deserialize, Serialize};

use super::ConfigError;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HlsConfig {
    pub segment_secs: f64,
    pub window: usize,
    pub idle_stop_secs: f64,
    /// What live HLS serves (per app: `[apps.NAME] hls_variant`).
    #[serde(default)]
    pub variant: HlsVariant,
    /// Low-Latency HLS part length (PART-TARGET), seconds.
    #[serde(default = "default_part_secs")]
    pub part_secs: f64,
    /// The audio fMP4 and Low-Latency HLS carry for a stream published over WHIP.
    #[serde(default)]
    pub webrtc_audio: WebrtcAudio,
}

/// A WHIP stream's audio in fMP4 and Low-Latency HLS (MPEG-TS always carries AAC).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WebrtcAudio {
    /// The browser's own Opus, as sent (no transcode in the path): hls.js in Chromium and Firefox, ffmpeg,
    /// GStreamer.
    #[default]
    Opus,
    /// The AAC livegate makes from it for RTMP and FLV readers: for players without Opus in MP4 (Apple's
    /// native HLS players before iOS 17, many TVs).
    Aac,
}

fn default_part_secs() -> f64 {
    0.2
}

/// The kind of live HLS a stream gets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HlsVariant {
    /// MPEG-TS segments (HLS version 3): every player, 6–10 s behind live.
    #[default]
    Mpegts,
    /// CMAF segments (fMP4: an init section, then `moof`+`mdat`).
    Fmp4,
    /// Apple's Low-Latency HLS on CMAF: parts, blocking playlist reload, preload hints, delta playlists.
    Lowlatency,
}

impl HlsConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(self.segment_secs.is_finite() && (0.5..=30.0).contains(&self.segment_secs)) {
            return Err(ConfigError::invalid("hls.segment_secs", format!("{} is outside 0.5..=30", self.segment_secs)));
        }
        if !(self.part_secs.is_finite() && (0.1..=2.0).contains(&self.part_secs)) {
            return Err(ConfigError::invalid("hls.part_secs", format!("{} is outside 0.1..=2", self.part_secs)));
        }
        if self.part_secs * 2.0 > self.segment_secs {
            return Err(ConfigError::invalid(
                "hls.part_secs",
                format!("{} s leaves fewer than two parts in a {} s segment", self.part_secs, self.segment_secs),
            ));
        }
        if !(2..=30).contains(&self.window) {
            return Err(ConfigError::invalid("hls.window", format!("{} is outside 2..=30", self.window)));
        }
        if !(self.idle_stop_secs.is_finite() && (1.0..=3600.0).contains(&self.idle_stop_secs)) {
            return Err(ConfigError::invalid(
                "hls.idle_stop_secs",
                format!("{} is outside 1..=3600", self.idle_stop_secs),
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebrtcConfig {
    /// The address ICE binds and advertises (the host candidate browsers connect to).
    pub ice_ip: std::net::IpAddr,
    /// With `udp_mux = false`: UDP ports for sessions, one per session; 0/0 lets the OS pick.
    pub udp_port_min: u16,
    /// Every session shares one UDP socket (the default): one port to open in a firewall, and WHEP media is
    /// protected and sent by livegate itself in batches (`webrtc::media_out`). `false`: a socket per session
    /// from udp_port_min..=udp_port_max, and webrtc-rs sends the media (several times the CPU per viewer).
    #[serde(default = "super::default_true")]
    pub udp_mux: bool,
    /// Who runs a WHEP viewer's ICE and DTLS on the shared port: `livegate` (its own ICE-lite and DTLS, the
    /// default: a fraction of a viewer's memory and of the control thread's time) or `webrtc-rs` (a
    /// PeerConnection per viewer). Offers with a data channel (SEI) always get webrtc-rs.
    #[serde(default)]
    pub whep_engine: WhepEngine,
    /// The shared socket's port; 0 lets the OS pick one (the answer's candidate names it).
    #[serde(default)]
    pub udp_mux_port: u16,
    pub udp_port_max: u16,
    /// A session that has not connected by then is closed.
    pub connect_timeout_secs: f64,
    /// STUN/TURN servers announced to WHEP clients in `Link: <url>; rel="ice-server"` headers (RFC 9725 §4.6).
    #[serde(default)]
    pub ice_servers: Vec<String>,
    /// Credentials sent with `turn:`/`turns:` entries.
    #[serde(default)]
    pub turn_username: String,
    #[serde(default)]
    pub turn_credential: String,
    /// WHIP: AAC bitrate (bit/s) of the Opus→AAC transcode for RTMP/FLV/HLS readers.
    pub aac_bitrate: u32,
    /// WHIP: bitrate (kbit/s) of the VP8→H.264 transcode, for browsers that offer no H.264.
    pub vp8_transcode_kbps: u32,
    /// WHIP: browsers send keyframes only when asked; livegate asks this often so players start at once.
    pub whip_keyframe_interval_secs: f64,
    /// WHEP admission: a fan-out flush whose oldest packet waited this long since ingest means the machine is
    /// behind, and new viewers get `503 overloaded` (0: never refused).
    #[serde(default = "default_overload_late_secs")]
    pub overload_late_secs: f64,
    /// For how long after the last late flush new WHEP viewers are refused (their Retry-After).
    #[serde(default = "default_overload_hold_secs")]
    pub overload_hold_secs: f64,
}

/// See [`WebrtcConfig::whep_engine`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WhepEngine {
    #[default]
    Livegate,
    WebrtcRs,
}

fn default_overload_late_secs() -> f64 {
    1.0
}

fn default_overload_hold_secs() -> f64 {
    2.0
}

impl WebrtcConfig {
    /// The `Link` header values announcing the configured ICE servers.
    pub fn link_headers(&self) -> Vec<String> {
        self.ice_servers
            .iter()
            .map(|u| {
                if u.starts_with("turn") && !self.turn_username.is_empty() {
                    format!(
                        "<{u}>; rel=\"ice-server\"; username=\"{}\"; credential=\"{}\"; credential-type=\"password\"",
                        self.turn_username, self.turn_credential
                    )
                } else {
                    format!("<{u}>; rel=\"ice-server\"")
                }
            })
            .collect()
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.ice_ip.is_unspecified() {
            return Err(ConfigError::invalid(
                "webrtc.ice_ip",
                "must be a concrete address browsers can reach, not 0.0.0.0",
            ));
        }
        if self.udp_port_min > self.udp_port_max {
            return Err(ConfigError::invalid(
                "webrtc.udp_port_min",
                format!("{} is above udp_port_max {}", self.udp_port_min, self.udp_port_max),
            ));
        }
        if (self.udp_port_min == 0) != (self.udp_port_max == 0) {
            return Err(ConfigError::invalid(
                "webrtc.udp_port_min",
                "udp_port_min and udp_port_max are both 0 (any port) or both set",
            ));
        }
        for u in &self.ice_servers {
            if !["stun:", "stuns:", "turn:", "turns:"].iter().any(|p| u.starts_with(p))
                || u.contains(['<', '>', '"', ' '])
            {
                return Err(ConfigError::invalid("webrtc.ice_servers", format!("{u:?} is not a stun:/turn: URL")));
            }
        }
        if !(16_000..=512_000).contains(&self.aac_bitrate) {
            return Err(ConfigError::invalid(
                "webrtc.aac_bitrate",
                format!("{} is outside 16000..=512000", self.aac_bitrate),
            ));
        }
        if !(100..=50_000).contains(&self.vp8_transcode_kbps) {
            return Err(ConfigError::invalid(
                "webrtc.vp8_transcode_kbps",
                format!("{} is outside 100..=50000", self.vp8_transcode_kbps),
            ));
        }
        if !(self.whip_keyframe_interval_secs.is_finite() && (0.5..=60.0).contains(&self.whip_keyframe_interval_secs)) {
            return Err(ConfigError::invalid(
                "webrtc.whip_keyframe_interval_secs",
                format!("{} is outside 0.5..=60", self.whip_keyframe_interval_secs),
            ));
        }
        if !(self.connect_timeout_secs.is_finite() && (1.0..=300.0).contains(&self.connect_timeout_secs)) {
            return Err(ConfigError::invalid(
                "webrtc.connect_timeout_secs",
                format!("{} is outside 1..=300", self.connect_timeout_secs),
            ));
        }
        if !(self.overload_late_secs.is_finite() && (0.0..=60.0).contains(&self.overload_late_secs)) {
            return Err(ConfigError::invalid(
                "webrtc.overload_late_secs",
                format!("{} is outside 0..=60", self.overload_late_secs),
            ));
        }
        if !(self.overload_hold_secs.is_finite() && (0.1..=600.0).contains(&self.overload_hold_secs)) {
            return Err(ConfigError::invalid(
                "webrtc.overload_hold_secs",
                format!("{} is outside 0.1..=600", self.overload_hold_secs),
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TranscodeConfig {
    /// Directory whose `*.pipeline` files override the built-in templates.
    pub pipelines_dir: String,
    /// Opus bitrate for WebRTC audio, bit/s.
    pub opus_bitrate: u32,
    /// Milliseconds of audio in each Opus packet for WebRTC viewers (10, 20, 40 or 60).
    pub opus_frame_ms: u32,
    /// Bitrate of the H.264 constrained-baseline rendition (for B-frame sources), kbit/s.
    pub video_kbps: u32,
    /// Bitrate of the AAC and MP3 renditions recordings read, kbit/s.
    pub audio_kbps: u32,
    /// A rendition nobody reads is stopped after this long.
    pub idle_stop_secs: f64,
}

/// Limits and defaults (from `[mix]` in the config).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MixConfig {
    /// Most inputs one mix may have.
    pub max_inputs: usize,
    /// Most mixes running at once.
    pub max_mixes: usize,
    /// Extra time the compositor and audio mixer wait for late inputs before producing a frame without them.
    pub latency_ms: u64,
    /// An input that sends nothing for this long shows the background until it comes back.
    pub lost_after_ms: u64,
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    pub video_bitrate: u32,
    pub gop_secs: f64,
    pub audio_bitrate: u32,
    pub sample_rate: u32,
    pub channels: u32,
    pub background_color: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordConfig {
    /// HLS recordings as MPEG-TS or fMP4 segments (`lowlatency` is for live playback only).
    #[serde(default)]
    pub hls_variant: HlsVariant,
    pub root: String,
    pub template: String,
    pub fragment_secs: u64,
    pub resume_secs: f64,
    pub min_secs: f64,
    pub sync_secs: f64,
    pub callback_urls: Vec<String>,
    pub callback_key: String,
    pub callback_retries: u32,
    pub callback_interval_secs: f64,
    pub public_url: String,
    pub fragment_unit_ms: u64,
}

/// A recording's file format, as `[apps.*] record`, the API and the callbacks name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RecordFormat {
    Flv,
    Mp4,
    Hls,
    /// Audio only, in MP4 (AAC).
    M4a,
    /// Audio only, ADTS (AAC).
    Aac,
    /// Audio only, MPEG audio Layer III.
    Mp3,
}

/// The audio codec a recording format must be given (an MP3 push recorded to MP4 reads the stream's AAC
/// rendition; an AAC push recorded to MP3, its MP3 rendition).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AudioNeed {
    Aac,
    Mp3,
}

impl RecordFormat {
    pub const ALL: [RecordFormat; 6] = [
        RecordFormat::Flv,
        RecordFormat::Mp4,
        RecordFormat::Hls,
        RecordFormat::M4a,
        RecordFormat::Aac,
        RecordFormat::Mp3,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RecordFormat::Flv => "flv",
            RecordFormat::Mp4 => "mp4",
            RecordFormat::Hls => "hls",
            RecordFormat::M4a => "m4a",
            RecordFormat::Aac => "aac",
            RecordFormat::Mp3 => "mp3",
        }
    }

    /// What audio the format takes, when it cannot take every codec FLV carries.
    pub fn audio_need(self) -> Option<AudioNeed> {
        match self {
            RecordFormat::Mp4 | RecordFormat::M4a | RecordFormat::Aac => Some(AudioNeed::Aac),
            RecordFormat::Mp3 => Some(AudioNeed::Mp3),
            RecordFormat::Flv | RecordFormat::Hls => None,
        }
    }

    /// Whether the file holds audio only.
    pub fn audio_only(self) -> bool {
        matches!(self, RecordFormat::M4a | RecordFormat::Aac | RecordFormat::Mp3)
    }

    /// The file name extension: an HLS recording is named by its playlist.
    pub fn extension(self) -> &'static str {
        match self {
            RecordFormat::Hls => "m3u8",
            other => other.as_str(),
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.as_str() == s)
    }
}

impl std::fmt::Display for RecordFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
/// Seconds a recording fragment may last.
pub const RECORD_FRAGMENT_RANGE: std::ops::RangeInclusive<u64> = 60..=7200;

impl RecordConfig {
    /// The ranges; the name template is the recorder's to check (`record::check_config`).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.hls_variant == HlsVariant::Lowlatency {
            return Err(ConfigError::invalid(
                "record.hls_variant",
                "\"lowlatency\" is for live playback: a recording is \"mpegts\" or \"fmp4\"",
            ));
        }
        if !RECORD_FRAGMENT_RANGE.contains(&self.fragment_secs) {
            return Err(ConfigError::invalid(
                "record.fragment_secs",
                format!("{} is outside 60..=7200", self.fragment_secs),
            ));
        }
        if !(1..=1000).contains(&self.fragment_unit_ms) {
            return Err(ConfigError::invalid(
                "record.fragment_unit_ms",
                format!("{} is outside 1..=1000", self.fragment_unit_ms),
            ));
        }
        for (k, v) in [("resume_secs", self.resume_secs), ("min_secs", self.min_secs), ("sync_secs", self.sync_secs)] {
            if !(v.is_finite() && (0.0..=86_400.0).contains(&v)) {
                return Err(ConfigError::invalid(&format!("record.{k}"), format!("{v} is out of range")));
            }
        }
        for u in &self.callback_urls {
            if !u.starts_with("http://") {
                return Err(ConfigError::invalid("record.callback_urls", format!("{u:?} is not an http:// URL")));
            }
        }
        Ok(())
    }
}

/// `[cluster]`: pulls from other servers, and the origin/edge cluster on Redis (docs/cluster.md). Without
/// `redis_url` the node is on its own. Debug output leaves the Redis password out.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// An on-demand pull stops this long after its stream's last reader left.
    pub edge_idle_secs: f64,
    /// A pull source must answer, and keep sending, within this long (else the pull retries).
    pub pull_timeout_secs: f64,
    /// What this node does in the cluster; `None` (no `role`): not in a cluster.
    #[serde(default)]
    pub role: Option<NodeRole>,
    /// This node's name in the directory (unique in the cluster; `[A-Za-z0-9_-]`).
    #[serde(default)]
    pub node_id: String,
    /// The directory: `redis://[:password@]host:port[/db]`.
    #[serde(default)]
    pub redis_url: String,
    /// Prefix of every key this cluster writes (several clusters may share one Redis).
    #[serde(default = "default_key_prefix")]
    pub key_prefix: String,
    /// A stream's and a node's directory entries live this long without a heartbeat (a node that dies is gone
    /// from the directory after it); heartbeats come three times per TTL.
    #[serde(default = "default_ttl_secs")]
    pub ttl_secs: f64,
    /// Where other nodes and players reach this node.
    #[serde(default)]
    pub advertise: Advertise,
    /// An edge of a second tier: pull every stream from this node (`http://host:port`, another edge) instead of
    /// from the origin that has it.
    #[serde(default)]
    pub upstream: String,
}

fn default_key_prefix() -> String {
    "livegate".into()
}

fn default_ttl_secs() -> f64 {
    3.0
}

/// What a node does in the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeRole {
    /// Takes publishers; its streams are in the directory for edges to pull.
    Origin,
    /// Takes players only; pulls each stream from the origin that has it, on demand.
    Edge,
    /// Both: its own publishers' streams are served here and pulled by edges; other streams are pulled.
    Both,
}

impl NodeRole {
    pub fn publishes(self) -> bool {
        matches!(self, NodeRole::Origin | NodeRole::Both)
    }
    pub fn pulls(self) -> bool {
        matches!(self, NodeRole::Edge | NodeRole::Both)
    }
}

/// `[cluster.advertise]`: this node's addresses as others reach them.
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Advertise {
    /// `rtmp://host:port`. Empty: the bound RTMP address, when `rtmp.listen` names one.
    #[serde(default)]
    pub rtmp: String,
    /// `http://host:port`: edges pull HTTP-FLV from it, rooms send members to it. Empty: the bound HTTP address,
    /// when `http.listen` names one (not 0.0.0.0).
    #[serde(default)]
    pub http: String,
}

impl std::fmt::Debug for ClusterConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterConfig")
            .field("edge_idle_secs", &self.edge_idle_secs)
            .field("pull_timeout_secs", &self.pull_timeout_secs)
            .field("role", &self.role)
            .field("node_id", &self.node_id)
            .field("redis_url", &crate::names::redact_url(&self.redis_url))
            .field("key_prefix", &self.key_prefix)
            .field("ttl_secs", &self.ttl_secs)
            .field("advertise", &self.advertise)
            .field("upstream", &self.upstream)
            .finish()
    }
}

impl ClusterConfig {
    /// The checks `[cluster]` needs beyond the value ranges.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, detail: String| Err(ConfigError::invalid(key, detail));
        let Some(role) = self.role else {
            if !self.redis_url.is_empty() {
                return bad("cluster.role", "redis_url is set: say what this node is (origin, edge or both)".into());
            }
            return Ok(());
        };
        if !self.redis_url.starts_with("redis://") {
            return bad("cluster.redis_url", format!("{role:?} needs a redis:// URL of the directory"));
        }
        if self.node_id.is_empty()
            || self.node_id.len() > 64
            || !self.node_id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return bad("cluster.node_id", format!("{:?} is not 1-64 of [A-Za-z0-9_-]", self.node_id));
        }
        if !(1.0..=60.0).contains(&self.ttl_secs) {
            return bad("cluster.ttl_secs", format!("{} is outside 1..=60", self.ttl_secs));
        }
        if self.key_prefix.is_empty() || self.key_prefix.contains(char::is_whitespace) {
            return bad("cluster.key_prefix", format!("{:?} is empty or has white space", self.key_prefix));
        }
        let http_url =
            |u: &str| u.parse::<http::Uri>().is_ok_and(|u| u.scheme_str() == Some("http") && u.host().is_some());
        let extra_path = |u: &str| u.trim_end_matches('/').matches('/').count() > 2;
        if !self.advertise.http.is_empty() && (!http_url(&self.advertise.http) || extra_path(&self.advertise.http)) {
            return bad("cluster.advertise.http", format!("{:?} is not http://host:port", self.advertise.http));
        }
        if !self.advertise.rtmp.is_empty() && !self.advertise.rtmp.starts_with("rtmp://") {
            return bad("cluster.advertise.rtmp", format!("{:?} is not rtmp://host:port", self.advertise.rtmp));
        }
        if !self.upstream.is_empty() {
            if !role.pulls() {
                return bad("cluster.upstream", "only an edge (or both) pulls from an upstream".into());
            }
            if !http_url(&self.upstream) {
                return bad("cluster.upstream", format!("{:?} is not http://host:port", self.upstream));
            }
        }
        Ok(())
    }
}

/// `[rooms]`: the room service (docs/rooms.md). Without an app, no room can be entered. Debug output leaves the
/// keys out.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoomsConfig {
    /// Apps whose members may enter rooms, each with the secret key its userSigs are signed with.
    #[serde(default)]
    pub apps: Vec<RoomAppConfig>,
    /// Entering needs a privateMapKey granting `enter` for the room (and its send bits to publish).
    pub require_private_map_key: bool,
    /// Members one room may hold (`409 room_full` beyond).
    pub max_members: usize,
    /// Rooms open at once, over all apps.
    pub max_rooms: usize,
    /// A room its last member left is closed after this long (a member who comes back keeps it).
    pub empty_grace_secs: f64,
    /// Events kept per room for sockets that reconnect with `?since=SEQ`.
    pub replay_events: usize,
    /// The app members' streams are published in.
    pub stream_app: String,
    /// No frames of a kind for this long: that track is gone (`REMOTE_*_REMOVE`).
    pub media_timeout_secs: f64,
    /// A member with neither an event socket nor a push for this long leaves.
    pub member_timeout_secs: f64,
    /// Room webhooks (TRTC's event shape, 101–204), kept on disk until delivered.
    pub callback_urls: Vec<String>,
    /// Signs each room webhook: `Sign` = base64(HMAC-SHA256(key, body)).
    pub callback_key: String,
}

impl std::fmt::Debug for RoomsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RoomsConfig")
            .field("apps", &self.apps)
            .field("require_private_map_key", &self.require_private_map_key)
            .field("max_members", &self.max_members)
            .field("max_rooms", &self.max_rooms)
            .field("stream_app", &self.stream_app)
            .field("callback_urls", &self.callback_urls)
            .field("callback_key", &if self.callback_key.is_empty() { "" } else { "***" })
            .finish_non_exhaustive()
    }
}

/// One sdkAppId and its secret key. Debug output leaves the key out: it signs every member's userSig.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoomAppConfig {
    pub sdk_app_id: u32,
    pub secret_key: String,
}

impl std::fmt::Debug for RoomAppConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RoomAppConfig").field("sdk_app_id", &self.sdk_app_id).field("secret_key", &"***").finish()
    }
}

impl RoomsConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut seen = std::collections::BTreeSet::new();
        for a in &self.apps {
            if !seen.insert(a.sdk_app_id) {
                return Err(ConfigError::invalid("rooms.apps", format!("sdk_app_id {} is listed twice", a.sdk_app_id)));
            }
            if a.secret_key.len() < 16 {
                return Err(ConfigError::invalid(
                    "rooms.apps.secret_key",
                    format!("the key of sdk_app_id {} is under 16 characters", a.sdk_app_id),
                ));
            }
        }
        if !(1..=64).contains(&self.max_members) {
            return Err(ConfigError::invalid("rooms.max_members", format!("{} is outside 1..=64", self.max_members)));
        }
        if self.max_rooms == 0 {
            return Err(ConfigError::invalid("rooms.max_rooms", "must be at least 1"));
        }
        if !(self.empty_grace_secs.is_finite() && (0.0..=3600.0).contains(&self.empty_grace_secs)) {
            return Err(ConfigError::invalid(
                "rooms.empty_grace_secs",
                format!("{} is outside 0..=3600", self.empty_grace_secs),
            ));
        }
        crate::names::validate("app", &self.stream_app)
            .map_err(|e| ConfigError::invalid("rooms.stream_app", e.to_string()))?;
        for (key, v, lo, hi) in [
            ("rooms.media_timeout_secs", self.media_timeout_secs, 0.5, 600.0),
            ("rooms.member_timeout_secs", self.member_timeout_secs, 1.0, 86_400.0),
        ] {
            if !(v.is_finite() && (lo..=hi).contains(&v)) {
                return Err(ConfigError::invalid(key, format!("{v} is outside {lo}..={hi}")));
            }
        }
        if let Some(u) = self.callback_urls.iter().find(|u| !u.starts_with("http://")) {
            return Err(ConfigError::invalid("rooms.callback_urls", format!("{u:?} is not an http:// URL")));
        }
        if !(16..=100_000).contains(&self.replay_events) {
            return Err(ConfigError::invalid(
                "rooms.replay_events",
                format!("{} is outside 16..=100000", self.replay_events),
            ));
        }
        Ok(())
    }

    pub fn app(&self, sdk_app_id: u32) -> Option<&RoomAppConfig> {
        self.apps.iter().find(|a| a.sdk_app_id == sdk_app_id)
    }
}
