//! A WHEP viewer's offer read, and the answer an ICE-lite, DTLS-passive, send-only server gives it
//! (RFC 8829 §5.3, RFC 8842, RFC 8843). Pure: text in, text out.
//!
//! The answer keeps the offer's sections in order. It sends video on the first video section that takes
//! what this server sends (H.264 with packetization-mode 1, or VP8) and Opus on the first audio section
//! that takes Opus; every other section is rejected (port 0) and left out of the bundle.

use std::fmt::Write as _;
use std::net::SocketAddr;

/// Why an offer cannot be answered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OfferError {
    #[error("an SDP offer starts with \"v=0\"")]
    NotSdp,
    #[error("the offer has no {0}")]
    Missing(&'static str),
    #[error("the offer's DTLS role is setup:{0}; an offer must say actpass (RFC 8842 §5.2)")]
    Setup(String),
    #[error("the offer's certificate fingerprint uses {0}; this server checks sha-256")]
    FingerprintAlgorithm(String),
    #[error("the offer's video section does not multiplex RTCP with RTP (a=rtcp-mux), which this server needs")]
    NoRtcpMux,
    #[error("the offer has no video this server can send (it sends H.264, packetization-mode 1, or VP8)")]
    NoCodec,
}

/// One `a=rtpmap` of a section, with its `a=fmtp` and `a=rtcp-fb` lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Format {
    pub pt: u8,
    /// As written ("H264", "opus"); compared case-insensitively.
    pub name: String,
    pub clock_rate: u32,
    pub params: Option<String>,
    pub fmtp: Option<String>,
    pub feedback: Vec<String>,
}

/// An offered m= section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    pub kind: String,
    pub port: u16,
    pub protocol: String,
    pub payload_types: Vec<String>,
    pub mid: Option<String>,
    pub direction: Direction,
    pub formats: Vec<Format>,
    pub rtcp_mux: bool,
    pub rtcp_rsize: bool,
    /// The section's own ICE credentials, when it has them (without BUNDLE each section may).
    pub ice_ufrag: Option<String>,
    pub ice_pwd: Option<String>,
}

/// The offerer's media direction for a section.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    SendRecv,
    SendOnly,
    RecvOnly,
    Inactive,
}

/// What the answer needs from an offer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offer {
    pub ice_ufrag: String,
    pub ice_pwd: String,
    /// The viewer's certificate's SHA-256 fingerprints, lowercase "aa:bb:…".
    pub fingerprints: Vec<String>,
    pub sections: Vec<Section>,
    /// The offer bundles its sections (a=group:BUNDLE): they may share one transport.
    pub bundle: bool,
}

impl Offer {
    /// Reads an offer. ICE credentials, fingerprint and setup may be at session level or in sections (the
    /// first section's count under BUNDLE).
    pub fn parse(sdp: &str) -> Result<Offer, OfferError> {
        if !sdp.starts_with("v=0") {
            return Err(OfferError::NotSdp);
        }
        let (mut ufrag, mut pwd, mut fingerprints) = (None, None, Vec::new());
        let mut other_algorithm = None;
        let mut bundle = false;
        let mut sections: Vec<Section> = Vec::new();
        for line in sdp.lines().map(str::trim) {
            if let Some(m) = line.strip_prefix("m=") {
                let mut f = m.split_ascii_whitespace();
                let (kind, port, protocol) = (f.next(), f.next(), f.next());
                let (Some(kind), Some(port), Some(protocol)) = (kind, port, protocol) else {
                    return Err(OfferError::Missing("well-formed m= line"));
                };
                let port = port.split('/').next().and_then(|p| p.parse().ok()).ok_or(OfferError::Missing("m= port"))?;
                sections.push(Section {
                    kind: kind.to_ascii_lowercase(),
                    port,
                    protocol: protocol.to_owned(),
                    payload_types: f.map(str::to_owned).collect(),
                    mid: None,
                    direction: Direction::SendRecv,
                    formats: Vec::new(),
                    rtcp_mux: false,
                    rtcp_rsize: false,
                    ice_ufrag: None,
                    ice_pwd: None,
                });
                continue;
            }
            let Some(a) = line.strip_prefix("a=") else { continue };
            let (name, value) = a.split_once(':').unwrap_or((a, ""));
            if name == "group" && sections.is_empty() && value.starts_with("BUNDLE") {
                bundle = true;
            }
            // Session-level lines, and the first section's under BUNDLE.
            let first = sections.len() <= 1;
            match name {
                "ice-ufrag" if ufrag.is_none() || first => ufrag = Some(value.to_owned()),
                "ice-pwd" if pwd.is_none() || first => pwd = Some(value.to_owned()),
                // Every section's role is checked: any of them may be the one answered.
                "setup" => match value.to_ascii_lowercase().as_str() {
                    "actpass" | "active" => {}
                    other => return Err(OfferError::Setup(other.to_owned())),
                },
                "fingerprint" => {
                    let (alg, fp) = value.split_once(' ').ok_or(OfferError::Missing("fingerprint value"))?;
                    if alg.eq_ignore_ascii_case("sha-256") {
                        fingerprints.push(fp.trim().to_ascii_lowercase());
                    } else {
                        other_algorithm = Some(alg.to_owned());
                    }
                }
                _ => {}
            }
            let Some(s) = sections.last_mut() else { continue };
            match name {
                "ice-ufrag" => s.ice_ufrag = Some(value.to_owned()),
                "ice-pwd" => s.ice_pwd = Some(value.to_owned()),
                "mid" => s.mid = Some(value.to_owned()),
                "sendrecv" => s.direction = Direction::SendRecv,
                "sendonly" => s.direction = Direction::SendOnly,
                "recvonly" => s.direction = Direction::RecvOnly,
                "inactive" => s.direction = Direction::Inactive,
                "rtcp-mux" => s.rtcp_mux = true,
                "rtcp-rsize" => s.rtcp_rsize = true,
                "rtpmap" => {
                    let Some((pt, codec)) = value.split_once(' ') else { continue };
                    let Ok(pt) = pt.parse::<u8>() else { continue };
                    let mut c = codec.trim().split('/');
                    let (Some(name), Some(Ok(clock_rate))) = (c.next(), c.next().map(str::parse::<u32>)) else {
                        continue;
                    };
                    let params = c.next().map(str::to_owned);
                    s.formats.push(Format {
                        pt,
                        name: name.to_owned(),
                        clock_rate,
                        params,
                        fmtp: None,
                        feedback: Vec::new(),
                    });
                }
                "fmtp" | "rtcp-fb" => {
                    let Some((pt, rest)) = value.split_once(' ') else { continue };
                    let Some(f) = pt.parse::<u8>().ok().and_then(|pt| s.formats.iter_mut().find(|f| f.pt == pt)) else {
                        continue;
                    };
                    if name == "fmtp" {
                        f.fmtp = Some(rest.trim().to_owned());
                    } else {
                        f.feedback.push(rest.trim().to_ascii_lowercase());
                    }
                }
                _ => {}
            }
        }
        let ice_ufrag = ufrag.filter(|u| !u.is_empty()).ok_or(OfferError::Missing("a=ice-ufrag"))?;
        let ice_pwd = pwd.filter(|p| !p.is_empty()).ok_or(OfferError::Missing("a=ice-pwd"))?;
        if fingerprints.is_empty() {
            return Err(other_algorithm.map_or(OfferError::Missing("a=fingerprint"), OfferError::FingerprintAlgorithm));
        }
        Ok(Offer { ice_ufrag, ice_pwd, fingerprints, sections, bundle })
    }
}

impl Offer {
    /// The viewer's ICE credentials for the transport the answer's sections share: the offer's (its first
    /// section's under BUNDLE), or, without BUNDLE, the answered video section's own.
    pub fn credentials(&self, plan: &Plan) -> (&str, &str) {
        let s = &self.sections[plan.video.0];
        match (&s.ice_ufrag, &s.ice_pwd) {
            (Some(u), Some(p)) if !self.bundle => (u, p),
            _ => (&self.ice_ufrag, &self.ice_pwd),
        }
    }
}

/// What the viewer can be sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wants {
    /// VP8 video (the stream's VP8 rendition), else H.264.
    pub vp8: bool,
    /// Opus audio, when the offer takes it.
    pub audio: bool,
}

/// The sections the answer sends on: index into the offer's sections, and the payload type chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub video: (usize, u8),
    pub audio: Option<(usize, u8)>,
}

fn is_secure_rtp(s: &Section) -> bool {
    s.protocol.to_ascii_uppercase().starts_with("UDP/TLS/RTP/SAVP")
}

fn takes_media(s: &Section) -> bool {
    s.port != 0 && is_secure_rtp(s) && matches!(s.direction, Direction::RecvOnly | Direction::SendRecv)
}

/// How well an offered H.264 format suits passthrough: packetization-mode 1 is required (FU-A); constrained
/// baseline 42e01f is what browsers match first, then other baseline profiles, then the rest.
fn h264_rank(f: &Format) -> Option<u8> {
    let fmtp = f.fmtp.as_deref().unwrap_or("").to_ascii_lowercase();
    let param = |k: &str| fmtp.split(';').find_map(|p| p.trim().strip_prefix(k)?.strip_prefix('='));
    if param("packetization-mode") != Some("1") {
        return None;
    }
    Some(match param("profile-level-id") {
        Some(p) if p.starts_with("42e0") => 0,
        Some(p) if p.starts_with("42") => 1,
        _ => 2,
    })
}

/// Picks the sections and payload types to send on.
pub fn plan(offer: &Offer, wants: Wants) -> Result<Plan, OfferError> {
    let mut video = None;
    for (i, s) in offer.sections.iter().enumerate().filter(|(_, s)| s.kind == "video" && takes_media(s)) {
        let chosen = if wants.vp8 {
            s.formats.iter().find(|f| f.name.eq_ignore_ascii_case("vp8") && f.clock_rate == 90_000).map(|f| f.pt)
        } else {
            s.formats
                .iter()
                .filter(|f| f.name.eq_ignore_ascii_case("h264") && f.clock_rate == 90_000)
                .filter_map(|f| h264_rank(f).map(|r| (r, f.pt)))
                .min_by_key(|(r, _)| *r)
                .map(|(_, pt)| pt)
        };
        if let Some(pt) = chosen {
            if !s.rtcp_mux {
                return Err(OfferError::NoRtcpMux);
            }
            video = Some((i, pt));
            break;
        }
    }
    let video = video.ok_or(OfferError::NoCodec)?;
    // One transport is all this server runs: without BUNDLE only the video section can be on it.
    let audio = if wants.audio && offer.bundle {
        offer.sections.iter().enumerate().filter(|(_, s)| s.kind == "audio" && takes_media(s) && s.rtcp_mux).find_map(
            |(i, s)| {
                s.formats
                    .iter()
                    .find(|f| f.name.eq_ignore_ascii_case("opus") && f.clock_rate == 48_000)
                    .map(|f| (i, f.pt))
            },
        )
    } else {
        None
    };
    Ok(Plan { video, audio })
}

/// This end of the session, as the answer states it.
#[derive(Debug, Clone)]
pub struct Local<'a> {
    pub ufrag: &'a str,
    pub pwd: &'a str,
    /// SHA-256 of the server's DTLS certificate, "AA:BB:…".
    pub fingerprint: &'a str,
    /// The shared UDP socket's address, the one host candidate.
    pub candidate: SocketAddr,
    pub video_ssrc: u32,
    pub audio_ssrc: u32,
    pub session_id: u64,
}

/// The feedback livegate acts on for video: NACK (it retransmits), PLI and FIR (keyframe requests).
const VIDEO_FEEDBACK: [&str; 3] = ["nack", "nack pli", "ccm fir"];

/// What an answered section sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Track {
    Video,
    Audio,
}

impl Track {
    /// Its track id in the answer's msid.
    fn id(self) -> &'static str {
        match self {
            Track::Video => "video",
            Track::Audio => "audio",
        }
    }
}

/// Writes the answer: the offer's sections in order, `plan`'s sent on and bundled, the rest rejected.
pub fn answer(offer: &Offer, plan: &Plan, local: &Local<'_>) -> String {
    let chosen = |i: usize| -> Option<(u8, Track)> {
        if plan.video.0 == i {
            Some((plan.video.1, Track::Video))
        } else {
            plan.audio.filter(|a| a.0 == i).map(|(_, pt)| (pt, Track::Audio))
        }
    };
    let bundle: Vec<&str> = offer
        .sections
        .iter()
        .enumerate()
        .filter(|(i, _)| chosen(*i).is_some())
        .filter_map(|(_, s)| s.mid.as_deref())
        .collect();
    let ip = local.candidate.ip();
    let family = if ip.is_ipv4() { "IP4" } else { "IP6" };
    let mut sdp = String::with_capacity(2048);
    let _ = write!(sdp, "v=0\r\no=- {} 2 IN {family} {ip}\r\ns=-\r\nt=0 0\r\n", local.session_id);
    // A bundle only where the offer proposed one (RFC 8843 §7.3).
    if offer.bundle && !bundle.is_empty() {
        let _ = write!(sdp, "a=group:BUNDLE {}\r\n", bundle.join(" "));
    }
    sdp.push_str("a=ice-lite\r\na=msid-semantic: WMS livegate\r\n");
    for (i, s) in offer.sections.iter().enumerate() {
        let Some((pt, track)) = chosen(i) else {
            // Rejected: port 0, the offer's first format, its mid kept (RFC 8829 §5.3.1).
            let fmt = s.payload_types.first().map(String::as_str).unwrap_or("0");
            let _ = write!(sdp, "m={} 0 {} {fmt}\r\nc=IN {family} {ip}\r\n", s.kind, s.protocol);
            if let Some(mid) = &s.mid {
                let _ = write!(sdp, "a=mid:{mid}\r\n");
            }
            sdp.push_str("a=inactive\r\n");
            continue;
        };
        let port = local.candidate.port();
        let _ = write!(sdp, "m={} {port} {} {pt}\r\nc=IN {family} {ip}\r\n", s.kind, s.protocol);
        if let Some(mid) = &s.mid {
            let _ = write!(sdp, "a=mid:{mid}\r\n");
        }
        let _ = write!(
            sdp,
            "a=ice-ufrag:{}\r\na=ice-pwd:{}\r\na=fingerprint:sha-256 {}\r\na=setup:passive\r\n",
            local.ufrag, local.pwd, local.fingerprint
        );
        let _ = write!(sdp, "a=candidate:1 1 udp 2130706431 {ip} {port} typ host\r\na=end-of-candidates\r\n");
        sdp.push_str("a=sendonly\r\na=rtcp-mux\r\n");
        if s.rtcp_rsize {
            sdp.push_str("a=rtcp-rsize\r\n");
        }
        let f = s.formats.iter().find(|f| f.pt == pt).expect("the plan's payload type is one of the section's");
        match &f.params {
            Some(p) => {
                let _ = write!(sdp, "a=rtpmap:{pt} {}/{}/{p}\r\n", f.name, f.clock_rate);
            }
            None => {
                let _ = write!(sdp, "a=rtpmap:{pt} {}/{}\r\n", f.name, f.clock_rate);
            }
        }
        if track == Track::Video {
            for fb in VIDEO_FEEDBACK.iter().filter(|fb| f.feedback.iter().any(|o| o == *fb)) {
                let _ = write!(sdp, "a=rtcp-fb:{pt} {fb}\r\n");
            }
        }
        if let Some(fmtp) = &f.fmtp {
            let _ = write!(sdp, "a=fmtp:{pt} {fmtp}\r\n");
        }
        let ssrc = match track {
            Track::Video => local.video_ssrc,
            Track::Audio => local.audio_ssrc,
        };
        let track = track.id();
        let _ = write!(
            sdp,
            "a=msid:livegate {track}\r\na=ssrc:{ssrc} cname:livegate\r\na=ssrc:{ssrc} msid:livegate {track}\r\n"
        );
    }
    sdp
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An offer as Chrome makes it for a recvonly audio + video WHEP viewer (trimmed), with a data channel.
    pub(crate) const CHROME: &str = "v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
a=group:BUNDLE 0 1 2\r\na=extmap-allow-mixed\r\na=msid-semantic: WMS\r\n\
m=audio 9 UDP/TLS/RTP/SAVPF 111 63 0\r\nc=IN IP4 0.0.0.0\r\na=rtcp:9 IN IP4 0.0.0.0\r\n\
a=ice-ufrag:Cl1U\r\na=ice-pwd:client-password-0123456789\r\na=ice-options:trickle\r\n\
a=fingerprint:sha-256 AB:CD:EF:01\r\na=setup:actpass\r\na=mid:0\r\na=recvonly\r\na=rtcp-mux\r\n\
a=rtpmap:111 opus/48000/2\r\na=rtcp-fb:111 transport-cc\r\na=fmtp:111 minptime=10;useinbandfec=1\r\n\
a=rtpmap:63 red/48000/2\r\na=rtpmap:0 PCMU/8000\r\n\
m=video 9 UDP/TLS/RTP/SAVPF 96 97 102 103 108\r\nc=IN IP4 0.0.0.0\r\na=ice-ufrag:Cl1U\r\n\
a=ice-pwd:client-password-0123456789\r\na=fingerprint:sha-256 AB:CD:EF:01\r\na=setup:actpass\r\na=mid:1\r\n\
a=recvonly\r\na=rtcp-mux\r\na=rtcp-rsize\r\na=rtpmap:96 VP8/90000\r\na=rtcp-fb:96 nack\r\na=rtcp-fb:96 nack pli\r\n\
a=rtpmap:97 rtx/90000\r\na=fmtp:97 apt=96\r\n\
a=rtpmap:102 H264/90000\r\na=rtcp-fb:102 goog-remb\r\na=rtcp-fb:102 nack\r\na=rtcp-fb:102 nack pli\r\n\
a=rtcp-fb:102 ccm fir\r\na=fmtp:102 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42001f\r\n\
a=rtpmap:103 H264/90000\r\na=fmtp:103 level-asymmetry-allowed=1;packetization-mode=0;profile-level-id=42e01f\r\n\
a=rtpmap:108 H264/90000\r\na=rtcp-fb:108 nack\r\n\
a=fmtp:108 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f\r\n\
m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\nc=IN IP4 0.0.0.0\r\na=mid:2\r\na=sctp-port:5000\r\n";

    fn local() -> Local<'static> {
        Local {
            ufrag: "srvU",
            pwd: "server-password",
            fingerprint: "11:22",
            candidate: "192.0.2.1:8443".parse().unwrap(),
            video_ssrc: 1111,
            audio_ssrc: 2222,
            session_id: 7,
        }
    }

    #[test]
    fn reads_credentials_fingerprint_and_sections() {
        let o = Offer::parse(CHROME).unwrap();
        assert_eq!((o.ice_ufrag.as_str(), o.ice_pwd.as_str()), ("Cl1U", "client-password-0123456789"));
        assert_eq!(o.fingerprints, vec!["ab:cd:ef:01", "ab:cd:ef:01"]);
        assert_eq!(o.sections.len(), 3);
        let v = &o.sections[1];
        assert_eq!((v.kind.as_str(), v.mid.as_deref(), v.direction), ("video", Some("1"), Direction::RecvOnly));
        assert!(v.rtcp_mux && v.rtcp_rsize);
        let h = v.formats.iter().find(|f| f.pt == 102).unwrap();
        assert_eq!(h.feedback, vec!["goog-remb", "nack", "nack pli", "ccm fir"]);
    }

    #[test]
    fn picks_constrained_baseline_with_fu_a_and_opus() {
        let o = Offer::parse(CHROME).unwrap();
        assert_eq!(plan(&o, Wants { vp8: false, audio: true }), Ok(Plan { video: (1, 108), audio: Some((0, 111)) }));
        assert_eq!(plan(&o, Wants { vp8: true, audio: false }), Ok(Plan { video: (1, 96), audio: None }));
        // Without packetization-mode 1 there is no H.264 to send.
        let only_mode0 = CHROME.replace("packetization-mode=1", "packetization-mode=0");
        assert_eq!(
            plan(&Offer::parse(&only_mode0).unwrap(), Wants { vp8: false, audio: false }),
            Err(OfferError::NoCodec)
        );
    }

    #[test]
    fn the_answer_sends_on_the_planned_sections_and_rejects_the_rest() {
        let o = Offer::parse(CHROME).unwrap();
        let p = plan(&o, Wants { vp8: false, audio: true }).unwrap();
        let a = answer(&o, &p, &local());
        assert!(a.starts_with("v=0\r\n"), "{a}");
        assert!(a.contains("a=group:BUNDLE 0 1\r\n") && a.contains("a=ice-lite\r\n"), "{a}");
        let sections: Vec<&str> = a.lines().filter(|l| l.starts_with("m=")).collect();
        assert_eq!(
            sections,
            vec![
                "m=audio 8443 UDP/TLS/RTP/SAVPF 111",
                "m=video 8443 UDP/TLS/RTP/SAVPF 108",
                "m=application 0 UDP/DTLS/SCTP webrtc-datachannel"
            ]
        );
        for want in [
            "a=setup:passive",
            "a=candidate:1 1 udp 2130706431 192.0.2.1 8443 typ host",
            "a=rtpmap:108 H264/90000",
            "a=rtcp-fb:108 nack",
            "a=fmtp:108 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f",
            "a=rtpmap:111 opus/48000/2",
            "a=ssrc:1111 cname:livegate",
            "a=ssrc:2222 msid:livegate audio",
            "a=mid:2",
        ] {
            assert!(a.lines().any(|l| l == want), "{want} missing from\n{a}");
        }
        // Only the feedback the offer named for that format, and none livegate does not act on.
        assert!(!a.contains("nack pli") && !a.contains("goog-remb") && !a.contains("transport-cc"), "{a}");
    }

    #[test]
    fn refuses_what_it_cannot_answer() {
        assert_eq!(Offer::parse("hello"), Err(OfferError::NotSdp));
        assert_eq!(Offer::parse(&CHROME.replace("a=ice-pwd", "a=x")), Err(OfferError::Missing("a=ice-pwd")));
        assert_eq!(Offer::parse(&CHROME.replace("actpass", "passive")), Err(OfferError::Setup("passive".into())));
        assert_eq!(
            Offer::parse(&CHROME.replace("sha-256", "sha-1")),
            Err(OfferError::FingerprintAlgorithm("sha-1".into()))
        );
        let o = Offer::parse(&CHROME.replace("a=rtcp-mux\r\na=rtcp-rsize", "a=rtcp-rsize")).unwrap();
        assert_eq!(plan(&o, Wants { vp8: false, audio: false }), Err(OfferError::NoRtcpMux));
        // Without BUNDLE each section would need a transport of its own: only video is answered, with the
        // video section's own credentials, and no bundle in the answer.
        let unbundled =
            CHROME.replace("a=group:BUNDLE 0 1 2\r\n", "").replacen("a=ice-ufrag:Cl1U", "a=ice-ufrag:AuD1", 1);
        let o = Offer::parse(&unbundled).unwrap();
        let p = plan(&o, Wants { vp8: false, audio: true }).unwrap();
        assert_eq!(p, Plan { video: (1, 108), audio: None });
        assert_eq!(o.credentials(&p).0, "Cl1U");
        assert!(!answer(&o, &p, &local()).contains("a=group"));
        let o = Offer::parse(CHROME).unwrap();
        assert_eq!(o.credentials(&plan(&o, Wants { vp8: false, audio: true }).unwrap()).0, "Cl1U");
        // A viewer that only sends gets nothing from a server that only sends.
        let o = Offer::parse(&CHROME.replace("a=recvonly", "a=sendonly")).unwrap();
        assert_eq!(plan(&o, Wants { vp8: false, audio: true }), Err(OfferError::NoCodec));
    }

    proptest::proptest! {
        #[test]
        fn never_panics_on_garbage(s in "v=0\\r\\n(([ma]=[a-z0-9 :/;=-]{0,40})\\r\\n){0,30}") {
            if let Ok(o) = Offer::parse(&s) {
                if let Ok(p) = plan(&o, Wants { vp8: false, audio: true }) {
                    let _ = answer(&o, &p, &local());
                }
            }
        }
    }
}
