//! One WHEP viewer's transport, sans-IO: ICE-lite (answer the viewer's checks, follow its nomination, end
//! when its consent checks stop) and a DTLS server handshake whose SRTP keys livegate's own media path
//! uses. Datagrams and the time are passed in; datagrams to send and events come out (str0m's `Rtc` is
//! the model). No RTP passes here: media goes out through `media_out`, RTCP in through `rtcp_in`.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use rtc::crypto::RTCCryptoProvider;
use rtc::dtls::config::{ClientAuthType, ConfigBuilder, ExtendedMasterSecretType, HandshakeConfig};
use rtc::dtls::crypto::Certificate;
use rtc::dtls::endpoint::{Endpoint, EndpointEvent};
use rtc::dtls::extension::extension_use_srtp::SrtpProtectionProfile;
use rtc::peer_connection::transport::SrtpLocalKeying;
use rtc::srtp::protection_profile::ProtectionProfile;
use sha2::Digest;

use super::stun::{self, Credentials};

/// Why the server's DTLS identity or a session's handshake configuration could not be made.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("no crypto provider: {0}")]
    Crypto(String),
    #[error("DTLS: {0}")]
    Dtls(#[from] rtc::shared::error::Error),
}

/// The server's DTLS certificate, one for every session (as SRS and MediaMTX do): generating a key pair per
/// viewer costs a signature's worth of CPU and memory for nothing a viewer checks.
pub struct Identity {
    crypto: Arc<dyn RTCCryptoProvider>,
    certificate: Certificate,
    /// SHA-256 of the certificate, "AB:CD:…", as the answer's a=fingerprint gives it.
    pub fingerprint: String,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity").field("fingerprint", &self.fingerprint).finish_non_exhaustive()
    }
}

/// The SRTP profiles offered in DTLS' use_srtp, best first; `media_out` and `rtcp_in` protect with any.
const SRTP_PROFILES: [SrtpProtectionProfile; 4] = [
    SrtpProtectionProfile::Srtp_Aead_Aes_128_Gcm,
    SrtpProtectionProfile::Srtp_Aead_Aes_256_Gcm,
    SrtpProtectionProfile::Srtp_Aes128_Cm_Hmac_Sha1_80,
    SrtpProtectionProfile::Srtp_Aes128_Cm_Hmac_Sha1_32,
];

fn srtp_profile(p: SrtpProtectionProfile) -> Option<ProtectionProfile> {
    Some(match p {
        SrtpProtectionProfile::Srtp_Aead_Aes_128_Gcm => ProtectionProfile::AeadAes128Gcm,
        SrtpProtectionProfile::Srtp_Aead_Aes_256_Gcm => ProtectionProfile::AeadAes256Gcm,
        SrtpProtectionProfile::Srtp_Aes128_Cm_Hmac_Sha1_80 => ProtectionProfile::Aes128CmHmacSha1_80,
        SrtpProtectionProfile::Srtp_Aes128_Cm_Hmac_Sha1_32 => ProtectionProfile::Aes128CmHmacSha1_32,
        _ => return None,
    })
}

/// "AB:CD:…" of `der`'s SHA-256.
fn sha256_fingerprint(der: &[u8]) -> String {
    sha2::Sha256::digest(der).iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(":")
}

impl Identity {
    pub fn generate() -> Result<Self, IdentityError> {
        let crypto = rtc::crypto::default_provider().map_err(|e| IdentityError::Crypto(e.to_string()))?;
        let certificate = Certificate::generate_self_signed(vec!["livegate".to_owned()], crypto.crypto())?;
        let der = certificate.certificate.first().map(|c| c.as_ref().to_vec()).unwrap_or_default();
        Ok(Self { crypto, fingerprint: sha256_fingerprint(&der), certificate })
    }

    /// A server handshake that accepts only the certificate whose SHA-256 the viewer's offer gave
    /// (`fingerprints`, lowercase "ab:cd:…"): the offer, signed by the viewer's HTTPS session, is what
    /// authenticates the DTLS peer.
    pub fn handshake(&self, fingerprints: Vec<String>) -> Result<Arc<HandshakeConfig>, IdentityError> {
        let verify = Arc::new(move |certs: &[Vec<u8>], _: &[rustls_pki_types::CertificateDer<'static>]| {
            let first = certs.first().ok_or(rtc::shared::error::Error::ErrNonCertificate)?;
            let got = sha256_fingerprint(first).to_ascii_lowercase();
            if fingerprints.contains(&got) {
                Ok(())
            } else {
                Err(rtc::shared::error::Error::ErrNoMatchingCertificateFingerprint)
            }
        });
        let config = ConfigBuilder::default()
            .with_crypto_provider(self.crypto.clone())
            .with_certificates(vec![self.certificate.clone()])
            .with_srtp_protection_profiles(SRTP_PROFILES.to_vec())
            .with_client_auth(ClientAuthType::RequireAnyClientCert)
            // The chain is self-signed by design; the fingerprint above is the check.
            .with_insecure_skip_verify(true)
            .with_verify_peer_certificate(Some(verify))
            .with_extended_master_secret(ExtendedMasterSecretType::Require)
            .build(false, None)?;
        Ok(Arc::new(config))
    }
}

/// How long a viewer may send no valid consent check before its session ends. An ICE-lite server sends no
/// checks of its own. Chrome checks a stable pair every 2.5 s; RFC 7675 clients (aiortc, libnice) every
/// 4–6 s without retransmitting a lost one: 13 s outlasts one lost check at the longest interval.
pub const CONSENT_TIMEOUT: Duration = Duration::from_secs(13);

/// What a session reports.
#[derive(Debug, Clone)]
pub enum Event {
    /// The first valid check arrived: ICE is under way.
    Checking,
    /// Media goes to this address from now on: where DTLS completed, then a nominated address that answered a
    /// check of ours.
    Peer(SocketAddr),
    /// DTLS completed: the keys to protect the viewer's media with, and to read its SRTCP.
    Connected(SrtpLocalKeying),
    /// The session is over.
    Ended(End),
}

#[cfg(test)]
impl PartialEq for Event {
    /// Keys compare by what identifies them (profile and peer): the keys are secrets, and the profile has no `PartialEq`.
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Event::Checking, Event::Checking) => true,
            (Event::Peer(a), Event::Peer(b)) => a == b,
            (Event::Connected(a), Event::Connected(b)) => {
                format!("{:?}", a.profile) == format!("{:?}", b.profile) && a.peer_addr == b.peer_addr
            }
            (Event::Ended(a), Event::Ended(b)) => a == b,
            _ => false,
        }
    }
}

/// Why a session ended.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum End {
    #[error("the viewer's consent checks stopped (none for {0:?})")]
    ConsentExpired(Duration),
    #[error("the viewer closed DTLS")]
    PeerClosed,
    #[error("DTLS handshake failed: {0}")]
    Handshake(String),
    #[error("closed by the server")]
    Closed,
}

/// The address the DTLS endpoint files the viewer's association under. Routing is by ICE, not by DTLS: a
/// viewer that moves to another candidate pair keeps its association.
const DTLS_KEY: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 9);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    New,
    Checking,
    Connected,
    Ended,
}

/// DTLS datagrams a viewer may send before its handshake completes: a handshake is a few flights of a few
/// datagrams, retransmitted on loss. More is a flood (rtc-dtls' reassembly does work per fragment, zero-length
/// ones uncapped) on the thread every session shares: the session ends instead.
const HANDSHAKE_DATAGRAMS: u32 = 64;
const HANDSHAKE_BYTES: usize = 128 * 1024;
/// After the handshake only a repeated final flight (its Finished lost) or an alert (close_notify) has a use:
/// this many more reach DTLS, and application data (no SCTP here) none.
const CONNECTED_DATAGRAMS: u32 = 32;
const DTLS_APPLICATION_DATA: u8 = 23;

/// How many addresses a session remembers as proven to be the viewer's (its candidates).
const VERIFIED: usize = 4;
/// A check of ours is sent again to an address no sooner than this (the viewer's checks trigger them).
const PROBE_AGAIN: Duration = Duration::from_millis(500);

/// A check livegate sent to an address the viewer's checks came from, awaiting its answer.
#[derive(Debug, Clone)]
struct Probe {
    to: SocketAddr,
    transaction: [u8; 12],
    sent: Instant,
}

/// A viewer's ICE-lite and DTLS state.
pub struct Link {
    creds: Credentials,
    dtls: Endpoint,
    phase: Phase,
    /// Where media goes: where DTLS completed, then where the viewer nominates, once that address has answered
    /// a check of ours. A check alone proves credentials, not that its sender receives at its source address,
    /// and media must never be pointed at an address on a check's say-so (a viewer could aim its stream at
    /// anyone).
    selected: Option<SocketAddr>,
    /// Addresses shown to be the viewer's: DTLS completed there, or they answered a check of ours.
    verified: VecDeque<SocketAddr>,
    probes: VecDeque<Probe>,
    tiebreaker: u64,
    /// Where the last DTLS datagram came from: its replies go back there.
    dtls_from: Option<SocketAddr>,
    dtls_in: u32,
    dtls_bytes: usize,
    last_check: Option<Instant>,
    transmits: VecDeque<(Vec<u8>, SocketAddr)>,
    events: VecDeque<Event>,
}

/// What a datagram did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handled {
    /// A valid check from this address: its sender has the session's credentials, and the address may be
    /// routed here from now on.
    Proven,
    /// Taken (DTLS, an answer to a check of ours), or ignored.
    Taken,
    /// A STUN request that failed its checks.
    Refused,
}

impl Link {
    pub fn new(creds: Credentials, handshake: Arc<HandshakeConfig>) -> Self {
        Self {
            creds,
            dtls: Endpoint::new(DTLS_KEY, rtc::shared::TransportProtocol::UDP, Some(handshake)),
            phase: Phase::New,
            selected: None,
            verified: VecDeque::new(),
            probes: VecDeque::new(),
            tiebreaker: rand::random(),
            dtls_from: None,
            dtls_in: 0,
            dtls_bytes: 0,
            last_check: None,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    pub fn is_ended(&self) -> bool {
        self.phase == Phase::Ended
    }

    /// A STUN or DTLS datagram from `from` (RFC 7983: STUN starts with 0–3, DTLS with 20–63).
    pub fn handle(&mut self, p: &[u8], from: SocketAddr, now: Instant) -> Handled {
        if self.phase == Phase::Ended {
            return Handled::Taken;
        }
        match p.first() {
            Some(0..=3) if stun::is_request(p) => self.handle_check(p, from, now),
            Some(0..=3) if stun::is_success_response(p) => {
                self.handle_answer(p, from, now);
                Handled::Taken
            }
            Some(20..=63) => {
                self.handle_dtls(p, from, now);
                Handled::Taken
            }
            _ => Handled::Taken,
        }
    }

    fn handle_check(&mut self, p: &[u8], from: SocketAddr, now: Instant) -> Handled {
        let req = match stun::read_request(p, &self.creds) {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(%from, error = %e, "STUN request refused");
                return Handled::Refused;
            }
        };
        self.transmits.push_back((stun::success(&req.transaction, from, &self.creds.local_pwd), from));
        if self.phase == Phase::New {
            self.phase = Phase::Checking;
            self.events.push_back(Event::Checking);
        }
        // Consent (RFC 7675) is the selected address's; before DTLS has chosen one, any valid check keeps the
        // attempt alive (its connect timeout still bounds it).
        if self.selected.is_none_or(|s| s == from) {
            self.last_check = Some(now);
        }
        // A nomination of another address (the viewer's network changed) moves the media there once that
        // address answers a check of ours.
        if req.nominates && self.selected.is_some_and(|s| s != from) {
            tracing::debug!(%from, selected = ?self.selected, "another address nominated");
            if self.verified.contains(&from) {
                self.select(from, now);
            } else {
                self.probe(from, now);
            }
        }
        Handled::Proven
    }

    /// Sends a check of ours to `to`, unless one went there lately.
    fn probe(&mut self, to: SocketAddr, now: Instant) {
        if self.probes.iter().any(|p| p.to == to && now < p.sent + PROBE_AGAIN) {
            return;
        }
        let transaction: [u8; 12] = rand::random();
        self.transmits.push_back((stun::request(&transaction, &self.creds, self.tiebreaker), to));
        if self.probes.len() == VERIFIED {
            self.probes.pop_front();
        }
        self.probes.push_back(Probe { to, transaction, sent: now });
    }

    /// The viewer's answer to a check of ours: the address it came from is the viewer's.
    fn handle_answer(&mut self, p: &[u8], from: SocketAddr, now: Instant) {
        let Ok(transaction) = stun::read_response(p, &self.creds) else { return };
        let Some(i) = self.probes.iter().position(|q| q.transaction == transaction && q.to == from) else { return };
        self.probes.remove(i);
        self.select(from, now);
    }

    /// Media goes to `to`, an address shown to be the viewer's.
    fn select(&mut self, to: SocketAddr, now: Instant) {
        if !self.verified.contains(&to) {
            if self.verified.len() == VERIFIED {
                self.verified.pop_front();
            }
            self.verified.push_back(to);
        }
        self.last_check = Some(now);
        if self.selected != Some(to) {
            tracing::debug!(from = ?self.selected, %to, "media address selected");
            self.selected = Some(to);
            self.events.push_back(Event::Peer(to));
        }
    }

    fn handle_dtls(&mut self, p: &[u8], from: SocketAddr, now: Instant) {
        self.dtls_in += 1;
        self.dtls_bytes += p.len();
        if self.phase == Phase::Connected {
            if p[0] == DTLS_APPLICATION_DATA || self.dtls_in > CONNECTED_DATAGRAMS {
                return;
            }
        } else if self.dtls_in > HANDSHAKE_DATAGRAMS || self.dtls_bytes > HANDSHAKE_BYTES {
            let why =
                format!("over {HANDSHAKE_DATAGRAMS} datagrams or {HANDSHAKE_BYTES} bytes of DTLS before it completed");
            self.end(End::Handshake(why));
            return;
        }
        self.dtls_from = Some(from);
        let read = self.dtls.read(now, DTLS_KEY, None, BytesMut::from(p));
        let mut ended = None;
        match read {
            Ok(events) => {
                for ev in events {
                    match ev {
                        EndpointEvent::HandshakeComplete => match self.keying(from) {
                            Ok(k) => {
                                // The handshake's round trips went to `from`: the viewer is there.
                                self.phase = Phase::Connected;
                                self.dtls_in = 0;
                                self.select(from, now);
                                self.events.push_back(Event::Connected(k));
                            }
                            Err(e) => ended = Some(End::Handshake(e.to_string())),
                        },
                        EndpointEvent::PeerClosed => ended = Some(End::PeerClosed),
                        // No SCTP on this path: application data has no reader.
                        _ => {}
                    }
                }
            }
            // Before the handshake completes an error is the handshake's end (a certificate that does not
            // match the offer, an alert); after it, a damaged or replayed record is dropped, as DTLS does.
            Err(e) if self.phase != Phase::Connected => ended = Some(End::Handshake(e.to_string())),
            Err(e) => tracing::debug!(%from, error = %e, "DTLS record dropped"),
        }
        self.flush_dtls();
        if let Some(end) = ended {
            self.end(end);
        }
    }

    /// The SRTP keys of the completed handshake (RFC 5764 §4.2).
    fn keying(&self, from: SocketAddr) -> Result<SrtpLocalKeying, rtc::shared::error::Error> {
        use rtc::shared::error::Error;
        let state = self.dtls.get_connection_state(DTLS_KEY).ok_or(Error::ErrNoSuchSrtpProfile)?;
        let profile = srtp_profile(state.srtp_protection_profile()).ok_or(Error::ErrNoSuchSrtpProfile)?;
        let mut config = rtc::srtp::config::Config { profile, ..Default::default() };
        let material = state.export_keying_material(
            rtc::srtp::config::LABEL_EXTRACTOR_DTLS_SRTP,
            &[],
            config.keying_material_len(),
        )?;
        config.set_session_keys_from_keying_material(material.as_ref(), state.is_client())?;
        let k = config.keys;
        Ok(SrtpLocalKeying {
            profile,
            master_key: k.local_master_key,
            master_salt: k.local_master_salt,
            peer_addr: from,
            remote_master_key: k.remote_master_key,
            remote_master_salt: k.remote_master_salt,
        })
    }

    fn flush_dtls(&mut self) {
        while let Some(t) = self.dtls.poll_transmit() {
            if let Some(to) = self.dtls_from.or(self.selected) {
                self.transmits.push_back((t.message.to_vec(), to));
            }
        }
    }

    fn end(&mut self, why: End) {
        if self.phase != Phase::Ended {
            self.phase = Phase::Ended;
            self.events.push_back(Event::Ended(why));
        }
    }

    /// When [`Link::handle_timeout`] is next due: a DTLS retransmission, or the consent deadline.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.phase == Phase::Ended {
            return None;
        }
        let consent = self.last_check.map(|t| t + CONSENT_TIMEOUT);
        match (self.dtls.poll_timeout(&DTLS_KEY), consent) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if self.phase == Phase::Ended {
            return;
        }
        // Only an association with a retransmission due: without one (no ClientHello yet) the endpoint
        // answers with an error that means nothing here.
        let due = self.dtls.poll_timeout(&DTLS_KEY).is_some_and(|t| now >= t);
        if let Err(e) = if due { self.dtls.handle_timeout(DTLS_KEY, now) } else { Ok(()) } {
            if self.phase != Phase::Connected {
                self.flush_dtls();
                self.end(End::Handshake(e.to_string()));
                return;
            }
        }
        self.flush_dtls();
        if let Some(last) = self.last_check.filter(|t| now >= *t + CONSENT_TIMEOUT) {
            self.end(End::ConsentExpired(now - last));
        }
    }

    /// Ends the session from this side, with a close_notify to the viewer.
    pub fn close(&mut self, now: Instant) {
        if self.phase == Phase::Ended {
            return;
        }
        let _ = self.dtls.stop(now, DTLS_KEY);
        self.flush_dtls();
        self.end(End::Closed);
    }

    pub fn poll_transmit(&mut self) -> Option<(Vec<u8>, SocketAddr)> {
        self.transmits.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::webrtc::lite::stun::tests::{creds, request};

    fn drain(l: &mut Link) -> (Vec<(Vec<u8>, SocketAddr)>, Vec<Event>) {
        let t = std::iter::from_fn(|| l.poll_transmit()).collect();
        let e = std::iter::from_fn(|| l.poll_event()).collect();
        (t, e)
    }

    /// A DTLS client as a viewer runs it (rtc-dtls' own endpoint), with its certificate.
    struct Viewer {
        dtls: Endpoint,
        fingerprint: String,
        addr: SocketAddr,
    }

    impl Viewer {
        fn new(server_fingerprint: &str, now: Instant) -> Viewer {
            let id = Identity::generate().unwrap();
            let server = server_fingerprint.to_ascii_lowercase();
            let verify = Arc::new(move |certs: &[Vec<u8>], _: &[rustls_pki_types::CertificateDer<'static>]| {
                if sha256_fingerprint(&certs[0]).to_ascii_lowercase() == server {
                    Ok(())
                } else {
                    Err(rtc::shared::error::Error::ErrNoMatchingCertificateFingerprint)
                }
            });
            let config = ConfigBuilder::default()
                .with_crypto_provider(id.crypto.clone())
                .with_certificates(vec![id.certificate.clone()])
                .with_srtp_protection_profiles(vec![SrtpProtectionProfile::Srtp_Aes128_Cm_Hmac_Sha1_80])
                .with_insecure_skip_verify(true)
                .with_verify_peer_certificate(Some(verify))
                .with_extended_master_secret(ExtendedMasterSecretType::Require)
                .build(true, None)
                .unwrap();
            let addr: SocketAddr = "192.0.2.9:5000".parse().unwrap();
            let mut dtls = Endpoint::new(addr, rtc::shared::TransportProtocol::UDP, None);
            dtls.connect(now, DTLS_KEY, Arc::new(config), None).unwrap();
            Viewer { dtls, fingerprint: id.fingerprint.to_ascii_lowercase(), addr }
        }

        /// Runs the handshake against `link` until neither side has anything to send.
        fn handshake(&mut self, link: &mut Link, now: Instant) -> bool {
            let mut done = false;
            for _ in 0..20 {
                let mut sent = false;
                while let Some(t) = self.dtls.poll_transmit() {
                    link.handle(&t.message, self.addr, now);
                    sent = true;
                }
                while let Some((p, _)) = link.poll_transmit() {
                    if p.first().is_some_and(|b| (20..=63).contains(b)) {
                        let evs = self.dtls.read(now, DTLS_KEY, None, BytesMut::from(&p[..])).unwrap_or_default();
                        done |= evs.iter().any(|e| matches!(e, EndpointEvent::HandshakeComplete));
                    }
                }
                if !sent {
                    break;
                }
            }
            done
        }
    }

    /// A link that accepts only the certificate with this fingerprint, and the server identity it uses.
    fn link_for(viewer_fingerprint: &str) -> (Link, Identity) {
        let id = Identity::generate().unwrap();
        let hs = id.handshake(vec![viewer_fingerprint.to_owned()]).unwrap();
        (Link::new(creds(), hs), id)
    }

    /// A viewer and a link that expects its certificate, as an offer and its answer pair them.
    fn viewer_and_link(now: Instant) -> (Viewer, Link) {
        let id = Identity::generate().unwrap();
        let viewer = Viewer::new(&id.fingerprint, now);
        let link = Link::new(creds(), id.handshake(vec![viewer.fingerprint.clone()]).unwrap());
        (viewer, link)
    }

    #[test]
    fn answers_checks_follows_nomination_and_hands_out_keys() {
        let now = Instant::now();
        let (mut viewer, mut link) = viewer_and_link(now);
        let c = creds();
        assert_eq!(link.handle(&request("srvU:cliU", &c.local_pwd, false), viewer.addr, now), Handled::Proven);
        let (t, e) = drain(&mut link);
        assert_eq!(t.len(), 1);
        // A check proves credentials, not where its sender receives: no media address yet.
        assert_eq!(e, vec![Event::Checking]);
        assert!(viewer.handshake(&mut link, now), "the viewer's handshake did not complete");
        let (_, e) = drain(&mut link);
        assert_eq!(e.first(), Some(&Event::Peer(viewer.addr)), "media goes where DTLS completed");
        let Some(Event::Connected(k)) = e.get(1) else { panic!("{e:?}") };
        assert!(matches!(k.profile, ProtectionProfile::Aes128CmHmacSha1_80), "{:?}", k.profile);
        assert_eq!(k.peer_addr, viewer.addr);
        // Both ends derived the same keys: the viewer's remote key is our local one.
        let state = viewer.dtls.get_connection_state(DTLS_KEY).unwrap();
        let mut cfg = rtc::srtp::config::Config { profile: k.profile, ..Default::default() };
        let m =
            state.export_keying_material(rtc::srtp::config::LABEL_EXTRACTOR_DTLS_SRTP, &[], cfg.keying_material_len());
        cfg.set_session_keys_from_keying_material(m.unwrap().as_ref(), true).unwrap();
        assert_eq!(
            (cfg.keys.remote_master_key, cfg.keys.local_master_key),
            (k.master_key.clone(), k.remote_master_key.clone())
        );
        // A nominated check from another address: answered, and a check of ours goes there.
        let moved: SocketAddr = "192.0.2.9:6000".parse().unwrap();
        link.handle(&request("srvU:cliU", &c.local_pwd, true), moved, now);
        let (t, e) = drain(&mut link);
        assert!(e.is_empty(), "media moves on no check's say-so: {e:?}");
        let ours = t.iter().find(|(p, to)| *to == moved && stun::is_request(p)).expect("a check of ours");
        let transaction: [u8; 12] = ours.0[8..20].try_into().unwrap();
        // An answer from elsewhere, or keyed with another password, moves nothing.
        link.handle(&stun::success(&transaction, moved, &c.remote_pwd), viewer.addr, now);
        link.handle(&stun::success(&transaction, moved, &c.local_pwd), moved, now);
        assert_eq!(drain(&mut link), (vec![], vec![]));
        // The viewer's answer from there does.
        link.handle(&stun::success(&transaction, moved, &c.remote_pwd), moved, now);
        assert_eq!(drain(&mut link).1, vec![Event::Peer(moved)]);
        // A check with the wrong password proves nothing and is not answered.
        assert_eq!(
            link.handle(&request("srvU:cliU", "wrong-password-xxxxxxxxx", true), viewer.addr, now),
            Handled::Refused
        );
        assert_eq!(drain(&mut link), (vec![], vec![]));
    }

    #[test]
    fn a_certificate_other_than_the_offers_fails_the_handshake() {
        let now = Instant::now();
        let (mut link, id) = link_for("00:11:22");
        let mut viewer = Viewer::new(&id.fingerprint, now);
        link.handle(&request("srvU:cliU", &creds().local_pwd, false), viewer.addr, now);
        drain(&mut link);
        assert!(!viewer.handshake(&mut link, now));
        let (_, e) = drain(&mut link);
        assert!(matches!(e.last(), Some(Event::Ended(End::Handshake(_)))), "{e:?}");
        assert!(link.is_ended());
    }

    /// The server's last flight is lost (a viewer's full socket buffer at the join burst): the viewer sends
    /// its own again, and the link answers with its flight again, though it counts itself connected.
    #[test]
    fn a_lost_final_flight_is_sent_again() {
        let now = Instant::now();
        let (mut viewer, mut link) = viewer_and_link(now);
        let mut connected = false;
        for _ in 0..20 {
            let mut sent = false;
            while let Some(t) = viewer.dtls.poll_transmit() {
                link.handle(&t.message, viewer.addr, now);
                sent = true;
            }
            connected |= drain_events(&mut link).iter().any(|e| matches!(e, Event::Connected(_)));
            // Until the link counts itself connected its datagrams arrive; its last flight is lost.
            while let Some((p, _)) = link.poll_transmit() {
                if !connected && p.first().is_some_and(|b| (20..=63).contains(b)) {
                    let _ = viewer.dtls.read(now, DTLS_KEY, None, BytesMut::from(&p[..]));
                }
            }
            if !sent || connected {
                break;
            }
        }
        assert!(connected, "the link never completed");
        // The viewer's retransmission timer fires: its flight again, and the link's answer completes it.
        let later = viewer.dtls.poll_timeout(&DTLS_KEY).expect("the viewer waits for the link's flight");
        viewer.dtls.handle_timeout(DTLS_KEY, later).unwrap();
        let mut done = false;
        while let Some(t) = viewer.dtls.poll_transmit() {
            link.handle(&t.message, viewer.addr, later);
        }
        while let Some((p, _)) = link.poll_transmit() {
            let evs = viewer.dtls.read(later, DTLS_KEY, None, BytesMut::from(&p[..])).unwrap_or_default();
            done |= evs.iter().any(|e| matches!(e, EndpointEvent::HandshakeComplete));
        }
        assert!(done, "the viewer never completed after its retransmission");
        assert!(!link.is_ended());
    }

    fn drain_events(l: &mut Link) -> Vec<Event> {
        std::iter::from_fn(|| l.poll_event()).collect()
    }

    #[test]
    fn a_dtls_flood_before_the_handshake_ends_the_session() {
        let now = Instant::now();
        let (mut link, _) = link_for("00");
        let from: SocketAddr = "192.0.2.9:5000".parse().unwrap();
        // Handshake records with zero-length fragments, as a flood would send them.
        let junk = [22u8, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 1, 0, 12, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        for _ in 0..=HANDSHAKE_DATAGRAMS {
            link.handle(&junk, from, now);
        }
        assert!(link.is_ended());
        let (_, e) = drain(&mut link);
        assert!(matches!(e.last(), Some(Event::Ended(End::Handshake(w))) if w.contains("datagrams")), "{e:?}");
    }

    #[test]
    fn ends_when_consent_checks_stop_and_not_before() {
        let now = Instant::now();
        let (mut link, _) = link_for("00");
        let from: SocketAddr = "192.0.2.9:5000".parse().unwrap();
        assert_eq!(link.poll_timeout(), None);
        link.handle(&request("srvU:cliU", &creds().local_pwd, false), from, now);
        drain(&mut link);
        assert_eq!(link.poll_timeout(), Some(now + CONSENT_TIMEOUT));
        let later = now + CONSENT_TIMEOUT - Duration::from_secs(1);
        link.handle(&request("srvU:cliU", &creds().local_pwd, false), from, later);
        link.handle_timeout(now + CONSENT_TIMEOUT);
        assert!(!link.is_ended());
        link.handle_timeout(later + CONSENT_TIMEOUT);
        assert_eq!(drain(&mut link).1, vec![Event::Ended(End::ConsentExpired(CONSENT_TIMEOUT))]);
        assert_eq!(link.poll_timeout(), None);
    }
}
