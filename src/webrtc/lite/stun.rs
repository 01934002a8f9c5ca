//! The STUN an ICE-lite server speaks (RFC 8445 §6.1.1, RFC 8489): it answers binding requests and sends
//! none. A request is accepted only with the right USERNAME ("our-ufrag:their-ufrag") and a
//! MESSAGE-INTEGRITY made with our password; the answer tells the viewer the address its check came from.
//! Pure: bytes in, bytes out.

use std::net::SocketAddr;

use hmac::{Hmac, Mac};
use sha1::Sha1;

const MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xA4, 0x42];
const HEADER: usize = 20;
const BINDING_REQUEST: [u8; 2] = [0x00, 0x01];
const BINDING_SUCCESS: [u8; 2] = [0x01, 0x01];
const ATTR_USERNAME: u16 = 0x0006;
const ATTR_MESSAGE_INTEGRITY: u16 = 0x0008;
const ATTR_XOR_MAPPED_ADDRESS: u16 = 0x0020;
const ATTR_USE_CANDIDATE: u16 = 0x0025;
const ATTR_PRIORITY: u16 = 0x0024;
const ATTR_ICE_CONTROLLED: u16 = 0x8029;
/// The priority of livegate's one host candidate, as the answer states it (RFC 8445 §5.1.2.1).
const HOST_PRIORITY: u32 = 2_130_706_431;
const ATTR_FINGERPRINT: u16 = 0x8028;
const FINGERPRINT_XOR: u32 = 0x5354_554e;
const INTEGRITY_LEN: usize = 20;

/// Why a datagram is not a binding request this session answers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StunError {
    #[error("not a STUN binding request")]
    NotABindingRequest,
    #[error("truncated or malformed STUN attributes")]
    Malformed,
    #[error("no USERNAME")]
    NoUsername,
    #[error("USERNAME is not this session's")]
    WrongUsername,
    #[error("no MESSAGE-INTEGRITY")]
    NoIntegrity,
    #[error("MESSAGE-INTEGRITY does not match this session's password")]
    BadIntegrity,
    #[error("FINGERPRINT does not match")]
    BadFingerprint,
}

/// A binding request that passed its checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindingRequest {
    pub transaction: [u8; 12],
    /// USE-CANDIDATE: the controlling agent nominates the pair this check came on.
    pub nominates: bool,
}

/// What a session checks requests against: its credentials and the viewer's ufrag from the offer.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub local_ufrag: String,
    pub local_pwd: String,
    pub remote_ufrag: String,
    /// The viewer's password: keys the checks livegate sends it, and their answers.
    pub remote_pwd: String,
}

/// A STUN message's parts that matter here, its framing and FINGERPRINT checked.
struct Walked<'a> {
    transaction: [u8; 12],
    username: Option<&'a [u8]>,
    integrity_at: Option<usize>,
    nominates: bool,
}

/// Walks a message of type `kind`: bounded by the datagram, FINGERPRINT (if any) last and matching.
fn walk(p: &[u8], kind: [u8; 2]) -> Result<Walked<'_>, StunError> {
    if p.len() < HEADER || p[0..2] != kind || p[4..8] != MAGIC_COOKIE {
        return Err(StunError::NotABindingRequest);
    }
    let body = usize::from(u16::from_be_bytes([p[2], p[3]]));
    if body % 4 != 0 || HEADER + body != p.len() {
        return Err(StunError::Malformed);
    }
    let mut transaction = [0u8; 12];
    transaction.copy_from_slice(&p[8..20]);
    let (mut username, mut integrity_at, mut fingerprint_at, mut nominates) = (None, None, None, false);
    let mut i = HEADER;
    while i < p.len() {
        let head = p.get(i..i + 4).ok_or(StunError::Malformed)?;
        let (t, len) = (u16::from_be_bytes([head[0], head[1]]), usize::from(u16::from_be_bytes([head[2], head[3]])));
        let value = p.get(i + 4..i + 4 + len).ok_or(StunError::Malformed)?;
        // Nothing may follow FINGERPRINT, and only FINGERPRINT counts after MESSAGE-INTEGRITY (RFC 8489
        // §14.5): an attribute appended there is not covered by the integrity and is ignored.
        if fingerprint_at.is_some() {
            return Err(StunError::Malformed);
        }
        match t {
            ATTR_FINGERPRINT if len == 4 => fingerprint_at = Some(i),
            _ if integrity_at.is_some() => {}
            ATTR_USERNAME => username = Some(value),
            ATTR_MESSAGE_INTEGRITY if len == INTEGRITY_LEN => integrity_at = Some(i),
            ATTR_USE_CANDIDATE => nominates = true,
            _ => {}
        }
        i += 4 + len.div_ceil(4) * 4;
    }
    if i != p.len() {
        return Err(StunError::Malformed);
    }
    if let Some(at) = fingerprint_at {
        let want = u32::from_be_bytes([p[at + 4], p[at + 5], p[at + 6], p[at + 7]]);
        if fingerprint(&p[..at]) != want {
            return Err(StunError::BadFingerprint);
        }
    }
    Ok(Walked { transaction, username, integrity_at, nominates })
}

/// Checks MESSAGE-INTEGRITY, keyed with `pwd`, in constant time.
fn check_integrity(p: &[u8], at: Option<usize>, pwd: &str) -> Result<(), StunError> {
    let at = at.ok_or(StunError::NoIntegrity)?;
    let mac = integrity(&p[..at], at + 4 + INTEGRITY_LEN, pwd.as_bytes());
    if bool::from(subtle::ConstantTimeEq::ct_eq(&mac[..], &p[at + 4..at + 4 + INTEGRITY_LEN])) {
        Ok(())
    } else {
        Err(StunError::BadIntegrity)
    }
}

/// Whether a datagram is a STUN request (what [`read_request`] reads), as opposed to a response or an
/// indication.
pub fn is_request(p: &[u8]) -> bool {
    p.len() >= 2 && p[0] & 0x01 == 0 && p[1] & 0x10 == 0
}

/// Whether a datagram is a binding success response (what [`read_response`] reads).
pub fn is_success_response(p: &[u8]) -> bool {
    p.len() >= 2 && p[0..2] == BINDING_SUCCESS
}

/// Reads and authenticates a binding request (RFC 8445 §7.3: USERNAME and MESSAGE-INTEGRITY; FINGERPRINT
/// when present).
pub fn read_request(p: &[u8], creds: &Credentials) -> Result<BindingRequest, StunError> {
    let w = walk(p, BINDING_REQUEST)?;
    let username = w.username.ok_or(StunError::NoUsername)?;
    let expected = (creds.local_ufrag.as_bytes(), creds.remote_ufrag.as_bytes());
    let ok = username.len() == expected.0.len() + 1 + expected.1.len()
        && username.starts_with(expected.0)
        && username[expected.0.len()] == b':'
        && username.ends_with(expected.1);
    if !ok {
        return Err(StunError::WrongUsername);
    }
    check_integrity(p, w.integrity_at, &creds.local_pwd)?;
    Ok(BindingRequest { transaction: w.transaction, nominates: w.nominates })
}

/// Reads a success response to a request of ours: its transaction id, once its MESSAGE-INTEGRITY, keyed
/// with the viewer's password, checks.
pub fn read_response(p: &[u8], creds: &Credentials) -> Result<[u8; 12], StunError> {
    let w = walk(p, BINDING_SUCCESS)?;
    check_integrity(p, w.integrity_at, &creds.remote_pwd)?;
    Ok(w.transaction)
}

/// A binding request of ours to the viewer (RFC 8445 §7.1): USERNAME "their-ufrag:our-ufrag", PRIORITY of our
/// host candidate, ICE-CONTROLLED, MESSAGE-INTEGRITY keyed with the viewer's password, FINGERPRINT. Its
/// answer proves the viewer receives at the address it went to.
pub fn request(transaction: &[u8; 12], creds: &Credentials, tiebreaker: u64) -> Vec<u8> {
    let username = format!("{}:{}", creds.remote_ufrag, creds.local_ufrag);
    let mut m = Vec::with_capacity(HEADER + 4 + username.len() + 3 + 8 + 12 + 24 + 8);
    m.extend_from_slice(&BINDING_REQUEST);
    m.extend_from_slice(&[0, 0]);
    m.extend_from_slice(&MAGIC_COOKIE);
    m.extend_from_slice(transaction);
    put_attr_head(&mut m, ATTR_USERNAME, username.len() as u16);
    m.extend_from_slice(username.as_bytes());
    while m.len() % 4 != 0 {
        m.push(0);
    }
    put_attr_head(&mut m, ATTR_PRIORITY, 4);
    m.extend_from_slice(&HOST_PRIORITY.to_be_bytes());
    put_attr_head(&mut m, ATTR_ICE_CONTROLLED, 8);
    m.extend_from_slice(&tiebreaker.to_be_bytes());
    finish(&mut m, &creds.remote_pwd);
    m
}

/// Appends MESSAGE-INTEGRITY (keyed with `pwd`) and FINGERPRINT.
fn finish(m: &mut Vec<u8>, pwd: &str) {
    let at = m.len();
    let mac = integrity(m, at + 4 + INTEGRITY_LEN, pwd.as_bytes());
    put_attr_head(m, ATTR_MESSAGE_INTEGRITY, INTEGRITY_LEN as u16);
    m.extend_from_slice(&mac);
    let at = m.len();
    set_length(m, at + 8);
    let crc = fingerprint(m);
    put_attr_head(m, ATTR_FINGERPRINT, 4);
    m.extend_from_slice(&crc.to_be_bytes());
}

/// The success response to `transaction`, telling the viewer its address as seen here (`from`).
pub fn success(transaction: &[u8; 12], from: SocketAddr, local_pwd: &str) -> Vec<u8> {
    let mut m = Vec::with_capacity(HEADER + 24 + 24 + 8);
    m.extend_from_slice(&BINDING_SUCCESS);
    m.extend_from_slice(&[0, 0]);
    m.extend_from_slice(&MAGIC_COOKIE);
    m.extend_from_slice(transaction);
    // XOR-MAPPED-ADDRESS (RFC 8489 §14.2): port and address XORed with the cookie (and the transaction id).
    let port = from.port() ^ 0x2112;
    // A v4 peer on a dual-stack socket is told its v4 address, not the mapped v6 form.
    match SocketAddr::new(from.ip().to_canonical(), from.port()) {
        SocketAddr::V4(a) => {
            put_attr_head(&mut m, ATTR_XOR_MAPPED_ADDRESS, 8);
            m.extend_from_slice(&[0, 0x01]);
            m.extend_from_slice(&port.to_be_bytes());
            m.extend(a.ip().octets().iter().zip(MAGIC_COOKIE).map(|(b, k)| b ^ k));
        }
        SocketAddr::V6(a) => {
            put_attr_head(&mut m, ATTR_XOR_MAPPED_ADDRESS, 20);
            m.extend_from_slice(&[0, 0x02]);
            m.extend_from_slice(&port.to_be_bytes());
            let key = MAGIC_COOKIE.iter().chain(transaction.iter());
            m.extend(a.ip().octets().iter().zip(key).map(|(b, k)| b ^ k));
        }
    }
    finish(&mut m, local_pwd);
    m
}

fn put_attr_head(m: &mut Vec<u8>, t: u16, len: u16) {
    m.extend_from_slice(&t.to_be_bytes());
    m.extend_from_slice(&len.to_be_bytes());
}

/// Writes the header's length field as if the message ended at `end`.
fn set_length(m: &mut [u8], end: usize) {
    let len = (end - HEADER) as u16;
    m[2..4].copy_from_slice(&len.to_be_bytes());
}

/// HMAC-SHA1 over `before` (the message up to MESSAGE-INTEGRITY) with the header's length as if the
/// message ended right after that attribute (`end`), as RFC 8489 §14.5 computes it.
fn integrity(before: &[u8], end: usize, key: &[u8]) -> [u8; INTEGRITY_LEN] {
    let mut header = [0u8; HEADER];
    header.copy_from_slice(&before[..HEADER]);
    set_length(&mut header, end);
    let mut mac = <Hmac<Sha1> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(&header);
    mac.update(&before[HEADER..]);
    mac.finalize().into_bytes().into()
}

/// CRC-32 of `before` (the message up to FINGERPRINT, its length already covering it) XOR "STUN".
fn fingerprint(before: &[u8]) -> u32 {
    let mut header = [0u8; HEADER];
    header.copy_from_slice(&before[..HEADER]);
    set_length(&mut header, before.len() + 8);
    let mut h = crc32fast::Hasher::new();
    h.update(&header);
    h.update(&before[HEADER..]);
    h.finalize() ^ FINGERPRINT_XOR
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn creds() -> Credentials {
        Credentials {
            local_ufrag: "srvU".into(),
            local_pwd: "server-password-0123456789".into(),
            remote_ufrag: "cliU".into(),
            remote_pwd: "client-password-0123456789".into(),
        }
    }

    /// A binding request as a full ICE agent sends it: USERNAME, PRIORITY, ICE-CONTROLLING, maybe
    /// USE-CANDIDATE, then MESSAGE-INTEGRITY and FINGERPRINT.
    pub(crate) fn request(username: &str, pwd: &str, nominate: bool) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&BINDING_REQUEST);
        m.extend_from_slice(&[0, 0]);
        m.extend_from_slice(&MAGIC_COOKIE);
        m.extend_from_slice(&[9; 12]);
        put_attr_head(&mut m, ATTR_USERNAME, username.len() as u16);
        m.extend_from_slice(username.as_bytes());
        while m.len() % 4 != 0 {
            m.push(0);
        }
        put_attr_head(&mut m, 0x0024, 4);
        m.extend_from_slice(&[0x6e, 0, 0x1e, 0xff]);
        put_attr_head(&mut m, 0x802A, 8);
        m.extend_from_slice(&[1; 8]);
        if nominate {
            put_attr_head(&mut m, ATTR_USE_CANDIDATE, 0);
        }
        let at = m.len();
        let mac = integrity(&m, at + 24, pwd.as_bytes());
        put_attr_head(&mut m, ATTR_MESSAGE_INTEGRITY, 20);
        m.extend_from_slice(&mac);
        let at = m.len();
        set_length(&mut m, at + 8);
        let crc = fingerprint(&m);
        put_attr_head(&mut m, ATTR_FINGERPRINT, 4);
        m.extend_from_slice(&crc.to_be_bytes());
        m
    }

    #[test]
    fn accepts_a_request_with_our_username_and_password() {
        let c = creds();
        let r = read_request(&request("srvU:cliU", &c.local_pwd, true), &c).unwrap();
        assert_eq!(r, BindingRequest { transaction: [9; 12], nominates: true });
        assert!(!read_request(&request("srvU:cliU", &c.local_pwd, false), &c).unwrap().nominates);
    }

    #[test]
    fn refuses_wrong_credentials_and_tampering() {
        let c = creds();
        assert_eq!(
            read_request(&request("srvU:cliU", "another-password-xxxxxxx", false), &c),
            Err(StunError::BadIntegrity)
        );
        assert!(matches!(read_request(&request("srvU:other", &c.local_pwd, false), &c), Err(StunError::WrongUsername)));
        assert!(matches!(read_request(&request("srvUx:cliU", &c.local_pwd, false), &c), Err(StunError::WrongUsername)));
        let mut p = request("srvU:cliU", &c.local_pwd, false);
        p[30] ^= 1; // inside PRIORITY: the fingerprint catches it first
        assert_eq!(read_request(&p, &c), Err(StunError::BadFingerprint));
        let mut p = request("srvU:cliU", &c.local_pwd, false);
        p[1] = 0x03;
        assert_eq!(read_request(&p, &c), Err(StunError::NotABindingRequest));
        let p = request("srvU:cliU", &c.local_pwd, false);
        assert_eq!(read_request(&p[..p.len() - 4], &c), Err(StunError::Malformed));
    }

    /// The answer is read back with webrtc-rs' own STUN code: its integrity, fingerprint and mapped address.
    #[test]
    fn the_answer_carries_the_mapped_address_and_verifies() {
        use rtc::stun::message::{Getter, Message};
        let c = creds();
        for from in ["192.0.2.7:40000", "[2001:db8::7]:40001"] {
            let from: SocketAddr = from.parse().unwrap();
            let bytes = success(&[5; 12], from, &c.local_pwd);
            let mut m = Message::new();
            m.unmarshal_binary(&bytes).unwrap();
            assert_eq!(m.transaction_id.0, [5; 12]);
            let mut xor = rtc::stun::xoraddr::XorMappedAddress::default();
            xor.get_from(&m).unwrap();
            assert_eq!(SocketAddr::new(xor.ip, xor.port), from);
            rtc::stun::fingerprint::FINGERPRINT.check(&m).unwrap();
            let provider = rtc::crypto::default_provider().unwrap();
            rtc::stun::integrity::MessageIntegrity::check(&mut m, c.local_pwd.as_bytes(), provider.crypto()).unwrap();
        }
    }

    /// Our own check, read back by webrtc-rs' STUN code (as the viewer's agent reads it); the viewer's answer,
    /// made with the viewer's password, is accepted and one made with another is not.
    #[test]
    fn our_check_and_its_answer() {
        use rtc::stun::message::Message;
        let c = creds();
        let bytes = super::request(&[3; 12], &c, 77);
        assert!(is_request(&bytes) && !is_success_response(&bytes));
        let mut m = Message::new();
        m.unmarshal_binary(&bytes).unwrap();
        let user = rtc::stun::textattrs::TextAttribute::get_from_as(&m, rtc::stun::attributes::ATTR_USERNAME).unwrap();
        assert_eq!(user.text, "cliU:srvU");
        let provider = rtc::crypto::default_provider().unwrap();
        rtc::stun::integrity::MessageIntegrity::check(&mut m, c.remote_pwd.as_bytes(), provider.crypto()).unwrap();
        rtc::stun::fingerprint::FINGERPRINT.check(&m).unwrap();
        let from: SocketAddr = "192.0.2.7:40000".parse().unwrap();
        let answer = success(&[3; 12], from, &c.remote_pwd);
        assert!(is_success_response(&answer) && !is_request(&answer));
        assert_eq!(read_response(&answer, &c), Ok([3; 12]));
        assert_eq!(read_response(&success(&[3; 12], from, &c.local_pwd), &c), Err(StunError::BadIntegrity));
    }

    proptest::proptest! {
        #[test]
        fn never_panics_on_garbage(p in proptest::collection::vec(0u8..=255, 0..200)) {
            let _ = read_request(&p, &creds());
            let _ = read_response(&p, &creds());
        }

        #[test]
        fn never_panics_on_a_damaged_request(at in 0usize..200, bit in 0u8..8) {
            let c = creds();
            let mut p = request("srvU:cliU", &c.local_pwd, true);
            let i = at % p.len();
            p[i] ^= 1 << bit;
            let _ = read_request(&p, &c);
        }
    }
}
