//! Process-wide counters rendered in the Prometheus text format at `GET /metrics`.

use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use crate::hub::{Hub, Protocol};

/// Upper bounds (seconds) of the ingest→egress latency histogram.
const LATENCY_BUCKETS: [f64; 12] = [0.001, 0.002, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56];

#[derive(Default)]
pub struct Metrics {
    readers: [AtomicI64; Protocol::COUNT],
    bytes_out: [AtomicU64; Protocol::COUNT],
    skips: [AtomicU64; Protocol::COUNT],
    parked: [AtomicI64; Protocol::COUNT],
    /// Parked players the fan-out handed back to their tasks because their sockets were full (or failed).
    pub fanout_handbacks: AtomicU64,
    /// WHEP datagrams the shared UDP socket refused (a full send buffer); their viewers skipped to a keyframe.
    pub whep_datagrams_refused: AtomicU64,
    /// New WHEP viewers refused with 503 because the machine was behind (`webrtc::admission`).
    pub whep_overloaded: AtomicU64,
    /// WHEP viewers' SRTCP datagrams read by livegate on the shared port, and those refused (failed
    /// authentication, a replay, malformed).
    pub whep_rtcp_read: AtomicU64,
    pub whep_rtcp_refused: AtomicU64,
    /// STUN requests to livegate's own WHEP sessions refused (wrong USERNAME, MESSAGE-INTEGRITY or
    /// FINGERPRINT): unanswered, their address not routed.
    pub whep_stun_refused: AtomicU64,
    /// STUN/DTLS/RTCP datagrams of the sessions themselves that a full shared socket buffer dropped.
    pub webrtc_control_datagrams_dropped: AtomicU64,
    /// RTP/RTCP datagrams in on the shared WebRTC port dropped because their session was behind.
    pub webrtc_datagrams_shed: AtomicU64,
    pub bytes_in: AtomicU64,
    pub connections: AtomicU64,
    pub disconnects_slow: AtomicU64,
    pub disconnects_kicked: AtomicU64,
    pub disconnects_error: AtomicU64,
    pub publish_refused: AtomicU64,
    pub play_refused: AtomicU64,
    /// HTTP request bodies that did not arrive within http.body_timeout_secs.
    pub body_timeouts: AtomicU64,
    /// Connections refused at accept: over the listener's limit, or over the per-address limit.
    pub conn_refused_limit: AtomicU64,
    pub conn_refused_per_addr: AtomicU64,
    /// Bytes of unfinished inbound RTMP messages held, over all connections.
    pub rtmp_reassembly_bytes: AtomicI64,
    /// RTMP connections closed for announcing more unfinished message bytes than they may hold.
    pub rtmp_reassembly_refused: AtomicU64,
    latency_buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    latency_count: AtomicU64,
    latency_sum_us: AtomicU64,
}

pub fn global() -> &'static Metrics {
    static M: OnceLock<Metrics> = OnceLock::new();
    M.get_or_init(Metrics::default)
}

impl Metrics {
    pub fn readers_inc(&self, p: Protocol) {
        self.readers[p as usize].fetch_add(1, Ordering::Relaxed);
    }
    pub fn readers_dec(&self, p: Protocol) {
        self.readers[p as usize].fetch_sub(1, Ordering::Relaxed);
    }
    pub fn bytes_out(&self, p: Protocol, n: u64) {
        self.bytes_out[p as usize].fetch_add(n, Ordering::Relaxed);
    }
    /// Bytes delivered to readers, over every protocol.
    pub fn bytes_out_total(&self) -> u64 {
        self.bytes_out.iter().map(|b| b.load(Ordering::Relaxed)).sum()
    }
    /// Readers of `p` attached now.
    pub fn readers_of(&self, p: Protocol) -> u64 {
        self.readers[p as usize].load(Ordering::Relaxed).max(0) as u64
    }
    /// A player's socket entered (+1) or left (-1) its stream's direct fan-out.
    pub fn parked(&self, p: Protocol, delta: i64) {
        self.parked[p as usize].fetch_add(delta, Ordering::Relaxed);
    }
    pub fn skip(&self, p: Protocol) {
        self.skips[p as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// One observation of the time from ingest to the write that delivered a frame.
    pub fn observe_latency(&self, d: Duration) {
        let s = d.as_secs_f64();
        if let Some(i) = LATENCY_BUCKETS.iter().position(|b| s <= *b) {
            self.latency_buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.latency_count.fetch_add(1, Ordering::Relaxed);
        self.latency_sum_us.fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }

    pub fn render(&self, hub: &Hub) -> String {
        let mut o = String::with_capacity(4096);
        let streams = hub.streams();
        let live = streams.iter().filter(|s| s.publisher().is_some()).count();
        let _ = writeln!(o, "# HELP livegate_streams Streams in the hub (live = with a publisher).");
        let _ = writeln!(o, "# TYPE livegate_streams gauge");
        let _ = writeln!(o, "livegate_streams{{state=\"live\"}} {live}");
        let _ = writeln!(o, "livegate_streams{{state=\"waiting\"}} {}", streams.len() - live);
        let _ = writeln!(
            o,
            "# HELP livegate_publisher_quality A publisher's network quality (netQualityLevel: 0 unknown, 1 best ... 5 very poor, 6 unavailable)."
        );
        let _ = writeln!(o, "# TYPE livegate_publisher_quality gauge");
        let mut background = 0;
        for s in streams.iter().filter(|s| s.publisher().is_some() && !crate::names::is_rendition(&s.key.name)) {
            let h = s.health();
            background += usize::from(h.publisher_state == crate::health::PublisherState::Background);
            let _ = writeln!(o, "livegate_publisher_quality{{stream=\"{}\"}} {}", s.key, h.quality.level());
        }
        let _ =
            writeln!(o, "# HELP livegate_publishers_background Publishers in the background (video at 5 fps or less).");
        let _ = writeln!(o, "# TYPE livegate_publishers_background gauge");
        let _ = writeln!(o, "livegate_publishers_background {background}");
        let _ = writeln!(
            o,
            "# HELP livegate_players_by_quality Players (RTMP, HTTP-FLV, WHEP) by quality level (0 unknown, 1 best ... 6 unavailable)."
        );
        let _ = writeln!(o, "# TYPE livegate_players_by_quality gauge");
        let mut levels = [0usize; 7];
        for c in hub.clients().iter().filter(|c| c.is_player()) {
            levels[c.player.quality().level() as usize] += 1;
        }
        for (level, n) in levels.iter().enumerate() {
            let _ = writeln!(o, "livegate_players_by_quality{{level=\"{level}\"}} {n}");
        }
        let _ = writeln!(o, "# HELP livegate_clients Connected clients.");
        let _ = writeln!(o, "# TYPE livegate_clients gauge");
        let _ = writeln!(o, "livegate_clients {}", hub.clients().len());
        let all = &Protocol::ALL[..];
        by_protocol(&mut o, "livegate_readers", "gauge", "Attached readers by protocol.", all, |p| {
            self.readers[p as usize].load(Ordering::Relaxed) as i128
        });
        let _ = writeln!(o, "# HELP livegate_bytes_in_total Media payload bytes received from publishers.");
        let _ = writeln!(o, "# TYPE livegate_bytes_in_total counter");
        let _ = writeln!(o, "livegate_bytes_in_total {}", self.bytes_in.load(Ordering::Relaxed));
        by_protocol(&mut o, "livegate_bytes_out_total", "counter", "Bytes delivered to readers.", all, |p| {
            self.bytes_out[p as usize].load(Ordering::Relaxed) as i128
        });
        by_protocol(
            &mut o,
            "livegate_reader_skips_total",
            "counter",
            "Times a reader over its max_cache skipped to a keyframe.",
            all,
            |p| self.skips[p as usize].load(Ordering::Relaxed) as i128,
        );
        by_protocol(
            &mut o,
            "livegate_fanout_parked",
            "gauge",
            "Players caught up with live, written to directly by their stream's fan-out.",
            &[Protocol::HttpFlv, Protocol::Rtmp, Protocol::Whep],
            |p| self.parked[p as usize].load(Ordering::Relaxed) as i128,
        );
        let _ = writeln!(
            o,
            "# HELP livegate_fanout_handbacks_total Parked players handed back to their connection task (socket full)."
        );
        let _ = writeln!(o, "# TYPE livegate_fanout_handbacks_total counter");
        let _ = writeln!(o, "livegate_fanout_handbacks_total {}", self.fanout_handbacks.load(Ordering::Relaxed));
        let _ = writeln!(
            o,
            "# HELP livegate_whep_datagrams_refused_total WHEP datagrams the shared UDP socket refused (send buffer full); their viewers skipped to the next keyframe."
        );
        let _ = writeln!(o, "# TYPE livegate_whep_datagrams_refused_total counter");
        let _ = writeln!(
            o,
            "livegate_whep_datagrams_refused_total {}",
            self.whep_datagrams_refused.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            o,
            "# HELP livegate_whep_overloaded_total New WHEP viewers refused with 503 because the server's fan-out was behind (webrtc.overload_late_secs)."
        );
        let _ = writeln!(o, "# TYPE livegate_whep_overloaded_total counter");
        let _ = writeln!(o, "livegate_whep_overloaded_total {}", self.whep_overloaded.load(Ordering::Relaxed));
        let _ = writeln!(
            o,
            "# HELP livegate_whep_rtcp_total WHEP viewers' SRTCP datagrams livegate read on the shared port, and refused (authentication, replay, malformed)."
        );
        let _ = writeln!(o, "# TYPE livegate_whep_rtcp_total counter");
        let _ =
            writeln!(o, "livegate_whep_rtcp_total{{result=\"read\"}} {}", self.whep_rtcp_read.load(Ordering::Relaxed));
        let _ = writeln!(
            o,
            "livegate_whep_rtcp_total{{result=\"refused\"}} {}",
            self.whep_rtcp_refused.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            o,
            "# HELP livegate_whep_stun_refused_total STUN requests to livegate's own WHEP sessions that failed their checks (USERNAME, MESSAGE-INTEGRITY, FINGERPRINT)."
        );
        let _ = writeln!(o, "# TYPE livegate_whep_stun_refused_total counter");
        let _ = writeln!(o, "livegate_whep_stun_refused_total {}", self.whep_stun_refused.load(Ordering::Relaxed));
        let _ = writeln!(
            o,
            "# HELP livegate_webrtc_control_datagrams_dropped_total The WebRTC sessions' own STUN, DTLS and RTCP datagrams a full shared socket buffer dropped (their protocols retransmit)."
        );
        let _ = writeln!(o, "# TYPE livegate_webrtc_control_datagrams_dropped_total counter");
        let _ = writeln!(
            o,
            "livegate_webrtc_control_datagrams_dropped_total {}",
            self.webrtc_control_datagrams_dropped.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            o,
            "# HELP livegate_webrtc_datagrams_shed_total RTP/RTCP datagrams in on the shared WebRTC port dropped because their session was behind (STUN and DTLS are never shed)."
        );
        let _ = writeln!(o, "# TYPE livegate_webrtc_datagrams_shed_total counter");
        let _ =
            writeln!(o, "livegate_webrtc_datagrams_shed_total {}", self.webrtc_datagrams_shed.load(Ordering::Relaxed));
        let _ = writeln!(o, "# HELP livegate_disconnects_total Connections ended by livegate, by reason.");
        let _ = writeln!(o, "# TYPE livegate_disconnects_total counter");
        let _ = writeln!(
            o,
            "livegate_disconnects_total{{reason=\"too_slow\"}} {}",
            self.disconnects_slow.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            o,
            "livegate_disconnects_total{{reason=\"kicked\"}} {}",
            self.disconnects_kicked.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            o,
            "livegate_disconnects_total{{reason=\"error\"}} {}",
            self.disconnects_error.load(Ordering::Relaxed)
        );
        let _ = writeln!(o, "# HELP livegate_connections_total Connections accepted.");
        let _ = writeln!(o, "# TYPE livegate_connections_total counter");
        let _ = writeln!(o, "livegate_connections_total {}", self.connections.load(Ordering::Relaxed));
        let _ = writeln!(
            o,
            "# HELP livegate_refused_total Publish and play requests refused (auth, name, busy, not found)."
        );
        let _ = writeln!(o, "# TYPE livegate_refused_total counter");
        let _ =
            writeln!(o, "livegate_refused_total{{op=\"publish\"}} {}", self.publish_refused.load(Ordering::Relaxed));
        let _ = writeln!(o, "livegate_refused_total{{op=\"play\"}} {}", self.play_refused.load(Ordering::Relaxed));
        let _ = writeln!(o, "# HELP livegate_connections_refused_total Connections closed at accept, by reason.");
        let _ = writeln!(o, "# TYPE livegate_connections_refused_total counter");
        let _ = writeln!(
            o,
            "livegate_connections_refused_total{{reason=\"limit\"}} {}",
            self.conn_refused_limit.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            o,
            "livegate_connections_refused_total{{reason=\"per_addr\"}} {}",
            self.conn_refused_per_addr.load(Ordering::Relaxed)
        );
        let _ = writeln!(o, "# HELP livegate_http_body_timeouts_total Request bodies that did not arrive in time.");
        let _ = writeln!(o, "# TYPE livegate_http_body_timeouts_total counter");
        let _ = writeln!(o, "livegate_http_body_timeouts_total {}", self.body_timeouts.load(Ordering::Relaxed));
        let _ = writeln!(
            o,
            "# HELP livegate_rtmp_reassembly_bytes Bytes of unfinished inbound RTMP messages held, all connections."
        );
        let _ = writeln!(o, "# TYPE livegate_rtmp_reassembly_bytes gauge");
        let _ = writeln!(o, "livegate_rtmp_reassembly_bytes {}", self.rtmp_reassembly_bytes.load(Ordering::Relaxed));
        let _ = writeln!(
            o,
            "# HELP livegate_rtmp_reassembly_refused_total RTMP connections closed for holding too many unfinished bytes."
        );
        let _ = writeln!(o, "# TYPE livegate_rtmp_reassembly_refused_total counter");
        let _ = writeln!(
            o,
            "livegate_rtmp_reassembly_refused_total {}",
            self.rtmp_reassembly_refused.load(Ordering::Relaxed)
        );
        let _ = writeln!(o, "# HELP livegate_egress_latency_seconds Time from a frame's arrival at ingest to the write that delivered it.");
        let _ = writeln!(o, "# TYPE livegate_egress_latency_seconds histogram");
        let mut cum = 0;
        for (i, b) in LATENCY_BUCKETS.iter().enumerate() {
            cum += self.latency_buckets[i].load(Ordering::Relaxed);
            let _ = writeln!(o, "livegate_egress_latency_seconds_bucket{{le=\"{b}\"}} {cum}");
        }
        let count = self.latency_count.load(Ordering::Relaxed);
        let _ = writeln!(o, "livegate_egress_latency_seconds_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(
            o,
            "livegate_egress_latency_seconds_sum {}",
            self.latency_sum_us.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(o, "livegate_egress_latency_seconds_count {count}");
        o
    }
}

/// One metric family with a `protocol` label: HELP, TYPE and a sample per protocol.
/// One metric family: its HELP and TYPE lines, then a sample per (labels, value), the labels written as
/// given (`stream="live/a"`). For the services that render their own families (pulls, relays).
pub fn family(o: &mut String, name: &str, kind: &str, help: &str, samples: impl IntoIterator<Item = (String, u64)>) {
    let _ = writeln!(o, "# HELP {name} {help}");
    let _ = writeln!(o, "# TYPE {name} {kind}");
    for (labels, v) in samples {
        let _ = writeln!(o, "{name}{{{labels}}} {v}");
    }
}

fn by_protocol(
    o: &mut String,
    name: &str,
    kind: &str,
    help: &str,
    protocols: &[Protocol],
    value: impl Fn(Protocol) -> i128,
) {
    let _ = writeln!(o, "# HELP {name} {help}");
    let _ = writeln!(o, "# TYPE {name} {kind}");
    for p in protocols {
        let _ = writeln!(o, "{name}{{protocol=\"{}\"}} {}", p.as_str(), value(*p));
    }
}
