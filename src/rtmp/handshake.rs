//! RTMP handshake: the plain "simple" form and the HMAC-SHA256 "digest"
//! (a.k.a. complex) form used by Flash Player, FMS, ffmpeg and librtmp.
//!
//! Digest layout: a 1536-byte C1/S1 is `time(4) | version(4) | 1528 bytes`.
//! The 32-byte digest lives in one of two 764-byte blocks:
//!
//! * scheme 0: block at bytes 8..772; digest offset =
//!   `(b[8]+b[9]+b[10]+b[11]) % 728 + 12`
//! * scheme 1: block at bytes 772..1536; digest offset =
//!   `(b[772]+..+b[775]) % 728 + 776`
//!
//! (SRS numbers these the other way round; here scheme 0 is the layout
//! ffmpeg's and librtmp's plain-RTMP clients emit.) The digest is
//! HMAC-SHA256 over the packet with the 32 digest bytes cut out, keyed with
//! the first 30 bytes of the Flash Player key for C1 and the first 36 bytes
//! of the Flash Media Server key for S1. S2/C2 are 1504 random bytes followed
//! by HMAC(HMAC(full key, peer's digest), those 1504 bytes), the full key
//! being the 68-byte FMS key for S2 and the 62-byte FP key for C2.
//!
//! Key bytes and offset arithmetic were checked against ffmpeg's
//! libavformat/rtmpproto.c (`rtmp_player_key`, `rtmp_server_key`,
//! `ff_rtmp_calc_digest_pos`, `rtmp_validate_digest`, `rtmp_handshake`).

use hmac::{Hmac, Mac};
use sha2::Sha256;
use thiserror::Error;

pub const HANDSHAKE_SIZE: usize = 1536;

/// C0/S0 value for plain RTMP.
pub const RTMP_VERSION: u8 = 3;

const DIGEST_LEN: usize = 32;
const SIGNED_PART: usize = HANDSHAKE_SIZE - DIGEST_LEN;

// The furthest digest offset (727 + 776) must still leave room for the
// digest, which is what makes the slicing in `find_digest` infallible.
const _: () = assert!(727 + 776 + DIGEST_LEN <= HANDSHAKE_SIZE);

/// "Genuine Adobe Flash Player 001" followed by 32 fixed bytes.
const FP_KEY: [u8; 62] = [
    0x47, 0x65, 0x6E, 0x75, 0x69, 0x6E, 0x65, 0x20, 0x41, 0x64, 0x6F, 0x62, 0x65, 0x20, 0x46, 0x6C, 0x61, 0x73, 0x68,
    0x20, 0x50, 0x6C, 0x61, 0x79, 0x65, 0x72, 0x20, 0x30, 0x30, 0x31, 0xF0, 0xEE, 0xC2, 0x4A, 0x80, 0x68, 0xBE, 0xE8,
    0x2E, 0x00, 0xD0, 0xD1, 0x02, 0x9E, 0x7E, 0x57, 0x6E, 0xEC, 0x5D, 0x2D, 0x29, 0x80, 0x6F, 0xAB, 0x93, 0xB8, 0xE6,
    0x36, 0xCF, 0xEB, 0x31, 0xAE,
];
const FP_KEY_OPEN_LEN: usize = 30;

/// "Genuine Adobe Flash Media Server 001" followed by the same 32 bytes.
const FMS_KEY: [u8; 68] = [
    0x47, 0x65, 0x6E, 0x75, 0x69, 0x6E, 0x65, 0x20, 0x41, 0x64, 0x6F, 0x62, 0x65, 0x20, 0x46, 0x6C, 0x61, 0x73, 0x68,
    0x20, 0x4D, 0x65, 0x64, 0x69, 0x61, 0x20, 0x53, 0x65, 0x72, 0x76, 0x65, 0x72, 0x20, 0x30, 0x30, 0x31, 0xF0, 0xEE,
    0xC2, 0x4A, 0x80, 0x68, 0xBE, 0xE8, 0x2E, 0x00, 0xD0, 0xD1, 0x02, 0x9E, 0x7E, 0x57, 0x6E, 0xEC, 0x5D, 0x2D, 0x29,
    0x80, 0x6F, 0xAB, 0x93, 0xB8, 0xE6, 0x36, 0xCF, 0xEB, 0x31, 0xAE,
];
const FMS_KEY_OPEN_LEN: usize = 36;

/// Version we advertise in S1. Flash Player and ffmpeg only look for a digest
/// when the first byte is >= 3; this is the value nginx-rtmp sends.
const SERVER_VERSION: [u8; 4] = [0x0D, 0x0E, 0x0A, 0x0D];
/// Version ffmpeg puts in its C1 (9.0.124.2); any non-zero value marks a
/// digest-capable client.
const CLIENT_VERSION: [u8; 4] = [0x09, 0x00, 0x7C, 0x02];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeKind {
    Simple,
    /// `scheme` is 0 (digest block at bytes 8..772) or 1 (772..1536).
    Digest {
        scheme: u8,
    },
}

#[derive(Debug, Error, PartialEq)]
pub enum HandshakeError {
    #[error("not an RTMP handshake: version byte 0x{0:02x} (expected 3; 'G'/'P' = HTTP, 0x16 = TLS)")]
    BadVersion(u8),
    #[error("encrypted RTMPE handshake (version {0}) is not supported; use plain rtmp:// or TLS")]
    Encrypted(u8),
    #[error("handshake truncated: need {expected} bytes, got {got}")]
    Truncated { expected: usize, got: usize },
    #[error("handshake too long: expected {expected} bytes, got {got}")]
    TooLong { expected: usize, got: usize },
    #[error("server S1 digest does not validate with the FMS key")]
    BadServerDigest,
    #[error("server S2 signature does not match our C1 digest")]
    BadServerSignature,
    #[error("server S2 does not echo our C1")]
    S2EchoMismatch,
}

/// Builds S0+S1+S2 for a received C0+C1. `epoch_ms` is the server uptime
/// written into S1's time field.
pub fn server_response(
    c0c1: &[u8],
    rng: &mut impl rand::RngCore,
    epoch_ms: u32,
) -> Result<(Vec<u8>, HandshakeKind), HandshakeError> {
    let c1 = split_c0(c0c1, 1)?;

    let mut out = Vec::with_capacity(1 + 2 * HANDSHAKE_SIZE);
    out.push(RTMP_VERSION);

    let mut s1 = [0u8; HANDSHAKE_SIZE];
    rng.fill_bytes(&mut s1);
    s1[0..4].copy_from_slice(&epoch_ms.to_be_bytes());

    // Try the scheme ffmpeg/librtmp use first; the order only matters for the
    // astronomically unlikely C1 that validates in both.
    let found = [0u8, 1]
        .into_iter()
        .find_map(|scheme| find_digest(c1, scheme, &FP_KEY[..FP_KEY_OPEN_LEN]).map(|d| (scheme, d)));

    match found {
        None => {
            // Simple handshake: a zero version field tells the client not to
            // look for a digest, and S2 must echo C1.
            s1[4..8].fill(0);
            out.extend_from_slice(&s1);
            out.extend_from_slice(c1);
            Ok((out, HandshakeKind::Simple))
        }
        Some((scheme, client_digest)) => {
            s1[4..8].copy_from_slice(&SERVER_VERSION);
            // Answer in the client's scheme: some clients only look there.
            imprint_digest(&mut s1, scheme, &FMS_KEY[..FMS_KEY_OPEN_LEN]);
            out.extend_from_slice(&s1);
            out.extend_from_slice(&signed_response(rng, &FMS_KEY, &client_digest));
            Ok((out, HandshakeKind::Digest { scheme }))
        }
    }
}

/// C0+C1 as a client. With `digest`, uses scheme 0 like ffmpeg and librtmp.
pub fn client_c0c1(digest: bool, rng: &mut impl rand::RngCore) -> Vec<u8> {
    let kind = if digest { HandshakeKind::Digest { scheme: 0 } } else { HandshakeKind::Simple };
    client_c0c1_kind(kind, rng)
}

/// Like [`client_c0c1`] but lets tests and the load tool choose the scheme.
/// A scheme other than 0 or 1 is treated as 1.
pub fn client_c0c1_kind(kind: HandshakeKind, rng: &mut impl rand::RngCore) -> Vec<u8> {
    let mut c1 = [0u8; HANDSHAKE_SIZE];
    rng.fill_bytes(&mut c1);
    // Uptime 0, as ffmpeg sends; the server must not rely on it.
    c1[0..4].fill(0);
    match kind {
        HandshakeKind::Simple => c1[4..8].fill(0),
        HandshakeKind::Digest { scheme } => {
            c1[4..8].copy_from_slice(&CLIENT_VERSION);
            imprint_digest(&mut c1, scheme, &FP_KEY[..FP_KEY_OPEN_LEN]);
        }
    }
    let mut out = Vec::with_capacity(1 + HANDSHAKE_SIZE);
    out.push(RTMP_VERSION);
    out.extend_from_slice(&c1);
    out
}

/// Verifies the server's S0+S1+S2 against the C0+C1 we sent and returns C2.
///
/// If we sent a digest C1 and S1 carries a valid FMS digest, S2 must carry
/// the matching signature and C2 is signed the same way. Otherwise the
/// server chose the simple handshake (as ffmpeg's `-listen` server does), so
/// S2 must echo our C1 and C2 echoes S1.
pub fn client_c2(c0c1: &[u8], s0s1s2: &[u8], rng: &mut impl rand::RngCore) -> Result<Vec<u8>, HandshakeError> {
    let c1 = split_c0(c0c1, 1)?;
    let (s1, s2) = split_c0(s0s1s2, 2)?.split_at(HANDSHAKE_SIZE);

    let our_digest = [0u8, 1].into_iter().find_map(|scheme| find_digest(c1, scheme, &FP_KEY[..FP_KEY_OPEN_LEN]));
    let server_version_set = s1.get(4).is_some_and(|&v| v != 0);

    if let Some(our_digest) = our_digest {
        if server_version_set {
            // Same order ffmpeg checks: 772-based block first.
            let server_digest = [1u8, 0]
                .into_iter()
                .find_map(|scheme| find_digest(s1, scheme, &FMS_KEY[..FMS_KEY_OPEN_LEN]))
                .ok_or(HandshakeError::BadServerDigest)?;
            let sig_key = hmac(&FMS_KEY, &[&our_digest]);
            let want = hmac(&sig_key, &[&s2[..SIGNED_PART]]);
            if want[..] != s2[SIGNED_PART..] {
                return Err(HandshakeError::BadServerSignature);
            }
            return Ok(signed_response(rng, &FP_KEY, &server_digest).to_vec());
        }
    }

    // Only the random part is compared: servers may rewrite the two time
    // fields of the echo (the spec puts their read time in bytes 4..8).
    if s2[8..] != c1[8..] {
        return Err(HandshakeError::S2EchoMismatch);
    }
    Ok(s1.to_vec())
}

/// Checks a client's C2 the way FMS does for a digest handshake: signed with
/// a key derived from the S1 digest we sent. Servers usually skip this check
/// (nginx-rtmp and SRS do), so it is offered for tests and strict callers.
pub fn verify_digest_c2(s1: &[u8], c2: &[u8], scheme: u8) -> bool {
    let (Ok(s1), Ok(c2)) = (<&[u8; HANDSHAKE_SIZE]>::try_from(s1), <&[u8; HANDSHAKE_SIZE]>::try_from(c2)) else {
        return false;
    };
    let pos = digest_pos(s1, scheme);
    let server_digest = &s1[pos..pos + DIGEST_LEN];
    let key = hmac(&FP_KEY, &[server_digest]);
    hmac(&key, &[&c2[..SIGNED_PART]])[..] == c2[SIGNED_PART..]
}

/// Checks S0/C0 and the exact length (`packets` handshake packets after
/// it), returning the bytes after the version. The version byte is checked
/// before the length so an HTTP request or TLS hello that arrives in a short
/// first read is still recognised for what it is.
fn split_c0(buf: &[u8], packets: usize) -> Result<&[u8], HandshakeError> {
    let expected = 1 + packets * HANDSHAKE_SIZE;
    let Some((&version, rest)) = buf.split_first() else {
        return Err(HandshakeError::Truncated { expected, got: 0 });
    };
    match version {
        RTMP_VERSION => {}
        // 6 = RTMPE (DH + RC4); 8 and 9 are its XTEA/Blowfish variants.
        6 | 8 | 9 => return Err(HandshakeError::Encrypted(version)),
        other => return Err(HandshakeError::BadVersion(other)),
    }
    let got = buf.len();
    match got.cmp(&expected) {
        std::cmp::Ordering::Less => Err(HandshakeError::Truncated { expected, got }),
        std::cmp::Ordering::Greater => Err(HandshakeError::TooLong { expected, got }),
        std::cmp::Ordering::Equal => Ok(rest),
    }
}

/// Position of the 32-byte digest; always within `base+4 .. base+764`, so
/// `pos + 32 <= 1536` for any input bytes.
fn digest_pos(packet: &[u8; HANDSHAKE_SIZE], scheme: u8) -> usize {
    let base = if scheme == 0 { 8 } else { 772 };
    let sum: usize = packet[base..base + 4].iter().map(|&b| usize::from(b)).sum();
    sum % 728 + base + 4
}

/// Returns the packet's digest if it validates with `key` in `scheme`.
fn find_digest(packet: &[u8], scheme: u8, key: &[u8]) -> Option<[u8; DIGEST_LEN]> {
    let packet = <&[u8; HANDSHAKE_SIZE]>::try_from(packet.get(..HANDSHAKE_SIZE)?).ok()?;
    let pos = digest_pos(packet, scheme);
    let want = hmac(key, &[&packet[..pos], &packet[pos + DIGEST_LEN..]]);
    let have: [u8; DIGEST_LEN] = packet[pos..pos + DIGEST_LEN].try_into().ok()?;
    (want == have).then_some(have)
}

fn imprint_digest(packet: &mut [u8; HANDSHAKE_SIZE], scheme: u8, key: &[u8]) {
    let pos = digest_pos(packet, scheme);
    let d = hmac(key, &[&packet[..pos], &packet[pos + DIGEST_LEN..]]);
    packet[pos..pos + DIGEST_LEN].copy_from_slice(&d);
}

/// S2/C2 body for the digest handshake: random bytes signed with a key
/// derived from the peer's digest, proving we saw its C1/S1.
fn signed_response(rng: &mut impl rand::RngCore, full_key: &[u8], peer_digest: &[u8]) -> [u8; HANDSHAKE_SIZE] {
    let mut out = [0u8; HANDSHAKE_SIZE];
    rng.fill_bytes(&mut out[..SIGNED_PART]);
    let key = hmac(full_key, &[peer_digest]);
    let sig = hmac(&key, &[&out[..SIGNED_PART]]);
    out[SIGNED_PART..].copy_from_slice(&sig);
    out
}

fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; DIGEST_LEN] {
    // HMAC is defined for keys of any length (long ones are pre-hashed), so
    // this cannot fail; the key is never peer-controlled in length anyway.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::rngs::StdRng;
    use rand::{RngCore, SeedableRng};

    fn rng(seed: u64) -> StdRng {
        StdRng::seed_from_u64(seed)
    }

    fn s1_of(resp: &[u8]) -> &[u8] {
        &resp[1..1 + HANDSHAKE_SIZE]
    }

    #[test]
    fn key_constants() {
        assert_eq!(&FP_KEY[..FP_KEY_OPEN_LEN], b"Genuine Adobe Flash Player 001");
        assert_eq!(&FMS_KEY[..FMS_KEY_OPEN_LEN], b"Genuine Adobe Flash Media Server 001");
        assert_eq!(FP_KEY[FP_KEY_OPEN_LEN..], FMS_KEY[FMS_KEY_OPEN_LEN..]);
    }

    #[test]
    fn digest_pos_matches_ffmpeg_formula() {
        let mut p = [0u8; HANDSHAKE_SIZE];
        p[8..12].copy_from_slice(&[255, 255, 255, 255]);
        assert_eq!(digest_pos(&p, 0), 1020 % 728 + 12);
        p[772..776].copy_from_slice(&[1, 2, 3, 4]);
        assert_eq!(digest_pos(&p, 1), 10 + 776);
    }

    #[test]
    fn simple_roundtrip() {
        let mut r = rng(1);
        let c0c1 = client_c0c1(false, &mut r);
        assert_eq!(c0c1.len(), 1 + HANDSHAKE_SIZE);
        let (resp, kind) = server_response(&c0c1, &mut r, 1234).expect("server");
        assert_eq!(kind, HandshakeKind::Simple);
        assert_eq!(resp.len(), 1 + 2 * HANDSHAKE_SIZE);
        assert_eq!(resp[0], 3);
        assert_eq!(&resp[1..5], &1234u32.to_be_bytes());
        assert_eq!(&resp[5..9], &[0, 0, 0, 0]);
        assert_eq!(&resp[1 + HANDSHAKE_SIZE..], &c0c1[1..]);
        let c2 = client_c2(&c0c1, &resp, &mut r).expect("client");
        assert_eq!(c2, s1_of(&resp));
    }

    #[test]
    fn digest_roundtrip_both_schemes() {
        for scheme in [0u8, 1] {
            for seed in 0..8 {
                let mut r = rng(100 + seed);
                let c0c1 = client_c0c1_kind(HandshakeKind::Digest { scheme }, &mut r);
                let (resp, kind) = server_response(&c0c1, &mut r, 7).expect("server");
                assert_eq!(kind, HandshakeKind::Digest { scheme });
                let s1 = s1_of(&resp);
                assert_eq!(&s1[4..8], &SERVER_VERSION);
                assert!(s1[4] >= 3, "ffmpeg only checks digests when S1[4] >= 3");
                let c2 = client_c2(&c0c1, &resp, &mut r).expect("client verifies S1/S2");
                assert_eq!(c2.len(), HANDSHAKE_SIZE);
                assert!(verify_digest_c2(s1, &c2, scheme));
                assert!(!verify_digest_c2(s1, &c2, 1 - scheme) || scheme_collision(s1));
            }
        }
    }

    // Both schemes can land on the same digest offset by chance.
    fn scheme_collision(s1: &[u8]) -> bool {
        let p = <&[u8; HANDSHAKE_SIZE]>::try_from(s1).expect("size");
        digest_pos(p, 0) == digest_pos(p, 1)
    }

    #[test]
    fn client_c0c1_digest_uses_scheme0() {
        let mut r = rng(3);
        let c0c1 = client_c0c1(true, &mut r);
        assert_eq!(&c0c1[5..9], &CLIENT_VERSION);
        assert!(find_digest(&c0c1[1..], 0, &FP_KEY[..FP_KEY_OPEN_LEN]).is_some());
        let (_, kind) = server_response(&c0c1, &mut r, 0).expect("server");
        assert_eq!(kind, HandshakeKind::Digest { scheme: 0 });
    }

    /// Re-implements ffmpeg's client-side checks literally (rtmp_validate_digest
    /// then the S2 signature check) to make sure we are not just consistent
    /// with ourselves.
    #[test]
    fn server_digest_validates_like_ffmpeg() {
        let mut r = rng(9);
        let c0c1 = client_c0c1(true, &mut r);
        let client_pos = digest_pos(c0c1[1..].try_into().expect("size"), 0);
        let (resp, _) = server_response(&c0c1, &mut r, 0).expect("server");
        let serverdata = &resp[..1 + HANDSHAKE_SIZE];
        let clientdata = &resp[1 + HANDSHAKE_SIZE..];

        let validate = |buf: &[u8], off: usize| -> Option<usize> {
            let sum: usize = buf[off..off + 4].iter().map(|&b| b as usize).sum();
            let pos = sum % 728 + off + 4;
            let mut m = Hmac::<Sha256>::new_from_slice(&FMS_KEY[..36]).expect("key");
            m.update(&buf[..pos]);
            m.update(&buf[pos + 32..]);
            (m.finalize().into_bytes()[..] == buf[pos..pos + 32]).then_some(pos)
        };
        let server_pos = validate(&serverdata[1..], 772)
            .or_else(|| validate(&serverdata[1..], 8))
            .expect("Server response validating failed");

        let mut m = Hmac::<Sha256>::new_from_slice(&FMS_KEY).expect("key");
        m.update(&c0c1[1 + client_pos..1 + client_pos + 32]);
        let digest = m.finalize().into_bytes();
        let mut m = Hmac::<Sha256>::new_from_slice(&digest).expect("key");
        m.update(&clientdata[..HANDSHAKE_SIZE - 32]);
        assert_eq!(m.finalize().into_bytes()[..], clientdata[HANDSHAKE_SIZE - 32..], "Signature mismatch");
        assert!(server_pos >= 12);
    }

    #[test]
    fn digest_client_accepts_simple_server() {
        // Like ffmpeg's own -listen server: zero version, S2 echoes C1.
        let mut r = rng(4);
        let c0c1 = client_c0c1(true, &mut r);
        let mut resp = vec![3u8];
        let mut s1 = [0u8; HANDSHAKE_SIZE];
        r.fill_bytes(&mut s1);
        s1[4..8].fill(0);
        resp.extend_from_slice(&s1);
        resp.extend_from_slice(&c0c1[1..]);
        assert_eq!(client_c2(&c0c1, &resp, &mut r), Ok(s1.to_vec()));
    }

    #[test]
    fn tampered_responses_are_rejected() {
        let mut r = rng(5);
        let c0c1 = client_c0c1(true, &mut r);
        let (resp, _) = server_response(&c0c1, &mut r, 0).expect("server");

        let mut bad_s2 = resp.clone();
        let last = bad_s2.len() - 1;
        bad_s2[last] ^= 1;
        assert_eq!(client_c2(&c0c1, &bad_s2, &mut r), Err(HandshakeError::BadServerSignature));

        let mut bad_s1 = resp.clone();
        for b in &mut bad_s1[13..1 + HANDSHAKE_SIZE] {
            *b ^= 0x55;
        }
        assert_eq!(client_c2(&c0c1, &bad_s1, &mut r), Err(HandshakeError::BadServerDigest));

        let simple = client_c0c1(false, &mut r);
        let (mut resp, _) = server_response(&simple, &mut r, 0).expect("server");
        resp[1 + HANDSHAKE_SIZE + 100] ^= 1;
        assert_eq!(client_c2(&simple, &resp, &mut r), Err(HandshakeError::S2EchoMismatch));
    }

    #[test]
    fn non_rtmp_first_bytes() {
        let mut r = rng(6);
        let http = b"GET /live/x.flv HTTP/1.1\r\nHost: a\r\n\r\n";
        assert_eq!(server_response(http, &mut r, 0), Err(HandshakeError::BadVersion(b'G')));
        let tls = [0x16, 0x03, 0x01, 0x02, 0x00];
        assert_eq!(server_response(&tls, &mut r, 0), Err(HandshakeError::BadVersion(0x16)));
        let mut rtmpe = client_c0c1(true, &mut r);
        rtmpe[0] = 6;
        assert_eq!(server_response(&rtmpe, &mut r, 0), Err(HandshakeError::Encrypted(6)));
        let msg = HandshakeError::Encrypted(6).to_string();
        assert!(msg.contains("RTMPE"), "{msg}");
    }

    #[test]
    fn length_errors() {
        let mut r = rng(7);
        assert_eq!(server_response(&[], &mut r, 0), Err(HandshakeError::Truncated { expected: 1537, got: 0 }));
        assert_eq!(server_response(&[3; 100], &mut r, 0), Err(HandshakeError::Truncated { expected: 1537, got: 100 }));
        assert_eq!(server_response(&[3; 1538], &mut r, 0), Err(HandshakeError::TooLong { expected: 1537, got: 1538 }));
        let c0c1 = client_c0c1(false, &mut r);
        let (resp, _) = server_response(&c0c1, &mut r, 0).expect("server");
        assert!(matches!(client_c2(&c0c1, &resp[..2000], &mut r), Err(HandshakeError::Truncated { .. })));
    }

    #[test]
    fn random_c1_is_simple() {
        let mut r = rng(8);
        let mut c0c1 = vec![3u8; 1 + HANDSHAKE_SIZE];
        r.fill_bytes(&mut c0c1[1..]);
        c0c1[5] = 9; // non-zero version but no digest, as some encoders send
        let (resp, kind) = server_response(&c0c1, &mut r, 0).expect("server");
        assert_eq!(kind, HandshakeKind::Simple);
        assert_eq!(&resp[1 + HANDSHAKE_SIZE..], &c0c1[1..]);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn prop_arbitrary_bytes_never_panic(
            mut bytes in prop::collection::vec(any::<u8>(), 0..3200),
            force_version in any::<bool>(),
            seed in any::<u64>(),
        ) {
            if force_version && !bytes.is_empty() {
                bytes[0] = 3;
            }
            let mut r = rng(seed);
            let _ = server_response(&bytes, &mut r, 0);
            let c0c1 = client_c0c1(seed % 2 == 0, &mut r);
            let _ = client_c2(&c0c1, &bytes, &mut r);
            let _ = client_c2(&bytes, &bytes, &mut r);
            let _ = verify_digest_c2(&bytes, &bytes, 0);
        }

        #[test]
        fn prop_roundtrip(seed in any::<u64>(), kind in 0u8..3) {
            let mut r = rng(seed);
            let kind = match kind {
                0 => HandshakeKind::Simple,
                s => HandshakeKind::Digest { scheme: s - 1 },
            };
            let c0c1 = client_c0c1_kind(kind, &mut r);
            let (resp, got) = server_response(&c0c1, &mut r, 0).expect("server");
            prop_assert_eq!(got, kind);
            prop_assert!(client_c2(&c0c1, &resp, &mut r).is_ok());
        }
    }
}
