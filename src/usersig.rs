//! Tencent's userSig (TLSSigAPIv2) and privateMapKey, as TRTC, `<webrtc-room>` and trtc-wx clients carry them:
//! made and checked exactly as Tencent's published algorithm, so an integrator's existing signing code (or the
//! vendor's `tls-sig-api-v2` package) works against livegate unchanged.
//!
//! A userSig is base64 (with `+` `/` `=` written `*` `-` `_`) of a zlib stream of a JSON document:
//! `TLS.ver` "2.0", `TLS.identifier`, `TLS.sdkappid`, `TLS.time`, `TLS.expire` (seconds after `TLS.time`), an
//! optional `TLS.userbuf` (base64) and `TLS.sig`, the base64 HMAC-SHA256 under the app's secret key of the lines
//! `TLS.identifier:…\nTLS.sdkappid:…\nTLS.time:…\nTLS.expire:…\n[TLS.userbuf:…\n]`. A privateMapKey is a userSig
//! whose userbuf says which room the user may enter and what it may do there. Pure: time is passed in.

use std::io::{Read, Write};

use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// Longest userSig accepted, in characters (Tencent's are 150–400; the JSON inside is bounded below too).
pub const MAX_SIG_LEN: usize = 4096;
/// Most bytes the zlib stream may inflate to: a userSig is a small JSON document, not a zip bomb.
const MAX_DOC_LEN: u64 = 4096;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UserSigError {
    #[error("userSig is malformed: {0}")]
    Malformed(&'static str),
    #[error("userSig is for sdkAppId {got}, not {want}")]
    WrongApp { got: u64, want: u32 },
    #[error("userSig is for user {got:?}, not {want:?}")]
    WrongUser { got: String, want: String },
    #[error("userSig signature does not match (another secret key, or an altered document)")]
    BadSignature,
    #[error("userSig expired at {expired_at} (now {now})")]
    Expired { expired_at: i64, now: i64 },
    #[error("privateMapKey userbuf is malformed: {0}")]
    BadUserbuf(&'static str),
}

/// A verified userSig.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserSig {
    pub identifier: String,
    pub sdk_app_id: u32,
    /// Unix seconds it was made at, and how many seconds it lives.
    pub time: i64,
    pub expire: i64,
    /// The privateMapKey's userbuf, decoded from base64, when there is one.
    pub userbuf: Option<Vec<u8>>,
}

/// The permission bits of a privateMapKey.
pub mod privilege {
    pub const CREATE: u32 = 1;
    pub const ENTER: u32 = 2;
    pub const SEND_AUDIO: u32 = 4;
    pub const RECV_AUDIO: u32 = 8;
    pub const SEND_VIDEO: u32 = 16;
    pub const RECV_VIDEO: u32 = 32;
    pub const SEND_SUB_VIDEO: u32 = 64;
    pub const RECV_SUB_VIDEO: u32 = 128;
    pub const ALL: u32 = 255;
}

/// Which room a privateMapKey is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoomRef {
    Number(u32),
    Name(String),
}

/// What a privateMapKey's userbuf grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrivateMap {
    pub user: String,
    pub sdk_app_id: u32,
    pub room: RoomRef,
    /// Unix seconds after which the key grants nothing.
    pub expires_at: u32,
    pub privileges: u32,
}

impl PrivateMap {
    pub fn allows(&self, bits: u32) -> bool {
        self.privileges & bits == bits
    }

    /// The binary userbuf (version 0 for a numeric room, 1 for a string room), as Tencent's libraries lay it out.
    pub fn to_userbuf(&self) -> Vec<u8> {
        let (ver, num, name) = match &self.room {
            RoomRef::Number(n) => (0u8, *n, None),
            RoomRef::Name(s) => (1u8, 0, Some(s.as_bytes())),
        };
        let mut b = vec![ver];
        b.extend_from_slice(&(self.user.len() as u16).to_be_bytes());
        b.extend_from_slice(self.user.as_bytes());
        for v in [self.sdk_app_id, num, self.expires_at, self.privileges, 0] {
            b.extend_from_slice(&v.to_be_bytes());
        }
        if let Some(name) = name {
            b.extend_from_slice(&(name.len() as u16).to_be_bytes());
            b.extend_from_slice(name);
        }
        b
    }

    pub fn parse(b: &[u8]) -> Result<Self, UserSigError> {
        let bad = UserSigError::BadUserbuf;
        let mut r = b;
        let mut take = |n: usize| -> Result<&[u8], UserSigError> {
            let (head, rest) = r.split_at_checked(n).ok_or(bad("truncated"))?;
            r = rest;
            Ok(head)
        };
        let ver = take(1)?[0];
        if ver > 1 {
            return Err(bad("unknown version"));
        }
        let ulen = u16::from_be_bytes(take(2)?.try_into().expect("2 bytes")) as usize;
        let user = String::from_utf8(take(ulen)?.to_vec()).map_err(|_| bad("user id is not UTF-8"))?;
        let mut word = || -> Result<u32, UserSigError> { Ok(u32::from_be_bytes(take(4)?.try_into().expect("4"))) };
        let (sdk_app_id, num, expires_at, privileges, _account_type) = (word()?, word()?, word()?, word()?, word()?);
        let room = if ver == 1 {
            let rlen = u16::from_be_bytes(take(2)?.try_into().expect("2 bytes")) as usize;
            RoomRef::Name(String::from_utf8(take(rlen)?.to_vec()).map_err(|_| bad("room id is not UTF-8"))?)
        } else {
            RoomRef::Number(num)
        };
        Ok(Self { user, sdk_app_id, room, expires_at, privileges })
    }
}

fn content(identifier: &str, sdk_app_id: u64, time: i64, expire: i64, userbuf_b64: Option<&str>) -> String {
    let mut s =
        format!("TLS.identifier:{identifier}\nTLS.sdkappid:{sdk_app_id}\nTLS.time:{time}\nTLS.expire:{expire}\n");
    if let Some(u) = userbuf_b64 {
        s.push_str(&format!("TLS.userbuf:{u}\n"));
    }
    s
}

fn hmac_b64(key: &[u8], text: &str) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(text.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// Makes a userSig (with `userbuf`, a privateMapKey) for `identifier`, valid `expire` seconds from `time`.
pub fn sign(key: &[u8], sdk_app_id: u32, identifier: &str, time: i64, expire: i64, userbuf: Option<&[u8]>) -> String {
    let b64 = base64::engine::general_purpose::STANDARD;
    let userbuf_b64 = userbuf.map(|u| b64.encode(u));
    let sig = hmac_b64(key, &content(identifier, u64::from(sdk_app_id), time, expire, userbuf_b64.as_deref()));
    let mut doc = serde_json::Map::new();
    doc.insert("TLS.ver".into(), "2.0".into());
    doc.insert("TLS.identifier".into(), identifier.into());
    doc.insert("TLS.sdkappid".into(), sdk_app_id.into());
    doc.insert("TLS.time".into(), time.into());
    doc.insert("TLS.expire".into(), expire.into());
    if let Some(u) = userbuf_b64 {
        doc.insert("TLS.userbuf".into(), u.into());
    }
    doc.insert("TLS.sig".into(), sig.into());
    let json = serde_json::Value::Object(doc).to_string();
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    z.write_all(json.as_bytes()).expect("writing to a Vec");
    let compressed = z.finish().expect("writing to a Vec");
    b64.encode(compressed).replace('+', "*").replace('/', "-").replace('=', "_")
}

/// Checks a userSig for `user` of app `sdk_app_id` under `key` at Unix time `now`: the app, the user, the
/// signature, then the expiry.
pub fn verify(key: &[u8], sdk_app_id: u32, user: &str, sig: &str, now: i64) -> Result<UserSig, UserSigError> {
    let doc = decode(sig)?;
    let str_field = |k: &str| doc.get(k).and_then(|v| v.as_str());
    let int_field = |k: &str| doc.get(k).and_then(|v| v.as_i64().or_else(|| v.as_str()?.parse().ok()));
    let identifier = str_field("TLS.identifier").ok_or(UserSigError::Malformed("no TLS.identifier"))?;
    let app = doc
        .get("TLS.sdkappid")
        .and_then(|v| v.as_u64().or_else(|| v.as_str()?.parse().ok()))
        .ok_or(UserSigError::Malformed("no TLS.sdkappid"))?;
    let time = int_field("TLS.time").ok_or(UserSigError::Malformed("no TLS.time"))?;
    let expire = int_field("TLS.expire").ok_or(UserSigError::Malformed("no TLS.expire"))?;
    let mac = str_field("TLS.sig").ok_or(UserSigError::Malformed("no TLS.sig"))?;
    let userbuf_b64 = str_field("TLS.userbuf");
    if app != u64::from(sdk_app_id) {
        return Err(UserSigError::WrongApp { got: app, want: sdk_app_id });
    }
    if identifier != user {
        return Err(UserSigError::WrongUser { got: identifier.to_owned(), want: user.to_owned() });
    }
    let want = hmac_b64(key, &content(identifier, app, time, expire, userbuf_b64));
    if !bool::from(want.as_bytes().ct_eq(mac.as_bytes())) {
        return Err(UserSigError::BadSignature);
    }
    let expired_at = time.saturating_add(expire);
    if now > expired_at {
        return Err(UserSigError::Expired { expired_at, now });
    }
    let userbuf = match userbuf_b64 {
        Some(u) => Some(
            base64::engine::general_purpose::STANDARD
                .decode(u)
                .map_err(|_| UserSigError::Malformed("TLS.userbuf is not base64"))?,
        ),
        None => None,
    };
    Ok(UserSig { identifier: identifier.to_owned(), sdk_app_id, time, expire, userbuf })
}

/// The JSON document inside a userSig, inflated with a size bound.
fn decode(sig: &str) -> Result<serde_json::Map<String, serde_json::Value>, UserSigError> {
    if sig.is_empty() || sig.len() > MAX_SIG_LEN {
        return Err(UserSigError::Malformed("empty or over 4096 characters"));
    }
    let b64: String = sig
        .trim()
        .chars()
        .map(|c| match c {
            '*' => '+',
            '-' => '/',
            '_' => '=',
            c => c,
        })
        .collect();
    // Tencent's own encoders differ in padding: accept it present or not.
    let raw = base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    )
    .decode(b64.trim_end_matches('='))
    .map_err(|_| UserSigError::Malformed("not base64"))?;
    let mut json = Vec::new();
    flate2::read::ZlibDecoder::new(&raw[..])
        .take(MAX_DOC_LEN + 1)
        .read_to_end(&mut json)
        .map_err(|_| UserSigError::Malformed("not a zlib stream"))?;
    if json.len() as u64 > MAX_DOC_LEN {
        return Err(UserSigError::Malformed("document over 4096 bytes"));
    }
    match serde_json::from_slice(&json) {
        Ok(serde_json::Value::Object(m)) => Ok(m),
        _ => Err(UserSigError::Malformed("not a JSON object")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"5bd2850fff3ecb11d7c805251c51ee463a25727bddc2385f3fa8bfee1bb93b5e";

    #[test]
    fn a_sig_verifies_for_its_app_user_and_lifetime_only() {
        let sig = sign(KEY, 1400000000, "xiaojun", 1_700_000_000, 86400, None);
        let ok = verify(KEY, 1400000000, "xiaojun", &sig, 1_700_000_100).unwrap();
        assert_eq!((ok.identifier.as_str(), ok.expire, ok.userbuf), ("xiaojun", 86400, None));
        assert!(!sig.contains(['+', '/', '=']), "URL-safe as Tencent writes it: {sig}");
        assert_eq!(
            verify(KEY, 1400000001, "xiaojun", &sig, 1_700_000_100),
            Err(UserSigError::WrongApp { got: 1400000000, want: 1400000001 })
        );
        assert!(matches!(verify(KEY, 1400000000, "other", &sig, 1_700_000_100), Err(UserSigError::WrongUser { .. })));
        assert_eq!(verify(b"another key", 1400000000, "xiaojun", &sig, 1_700_000_100), Err(UserSigError::BadSignature));
        assert_eq!(
            verify(KEY, 1400000000, "xiaojun", &sig, 1_700_086_401),
            Err(UserSigError::Expired { expired_at: 1_700_086_400, now: 1_700_086_401 })
        );
        for bad in ["", "!!!", "eJyrVkrOzFGyUlAqSS0uUdJRKk4tykvMzQUAbJEIEQ__", &"A".repeat(5000)] {
            assert!(matches!(verify(KEY, 1, "u", bad, 0), Err(UserSigError::Malformed(_))), "{bad:?}");
        }
    }

    #[test]
    fn a_zip_bomb_is_refused_before_it_is_inflated() {
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
        z.write_all(&vec![b' '; 2 << 20]).unwrap();
        let sig = base64::engine::general_purpose::STANDARD.encode(z.finish().unwrap());
        let sig = sig.replace('+', "*").replace('/', "-").replace('=', "_");
        assert!(sig.len() < MAX_SIG_LEN);
        assert_eq!(verify(KEY, 1, "u", &sig, 0), Err(UserSigError::Malformed("document over 4096 bytes")));
    }

    #[test]
    fn private_map_keys_carry_room_and_privileges() {
        for room in [RoomRef::Number(1234), RoomRef::Name("class-7".into())] {
            let map = PrivateMap {
                user: "u1".into(),
                sdk_app_id: 1400000000,
                room: room.clone(),
                expires_at: 1_700_000_300,
                privileges: privilege::ENTER | privilege::RECV_AUDIO | privilege::RECV_VIDEO,
            };
            let key = sign(KEY, 1400000000, "u1", 1_700_000_000, 300, Some(&map.to_userbuf()));
            let sig = verify(KEY, 1400000000, "u1", &key, 1_700_000_001).unwrap();
            let parsed = PrivateMap::parse(sig.userbuf.as_deref().unwrap()).unwrap();
            assert_eq!(parsed, map);
            assert!(parsed.allows(privilege::ENTER) && !parsed.allows(privilege::SEND_VIDEO));
        }
        assert!(PrivateMap::parse(&[0, 0, 5, b'a']).is_err());
        assert!(PrivateMap::parse(&[7]).is_err());
    }

    proptest::proptest! {
        #[test]
        fn garbage_never_panics(s in "\\PC{0,300}", b in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..80)) {
            let _ = verify(KEY, 1, "u", &s, 0);
            let _ = PrivateMap::parse(&b);
        }
    }
}
