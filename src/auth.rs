//! Signed URLs, compatible with Tencent Cloud's hotlink protection:
//! `txSecret = lowercase hex MD5(key + StreamName + txTime)`, `txTime` = hex Unix time of expiry.

use md5::{Digest, Md5};
use subtle::ConstantTimeEq;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("missing txSecret/txTime: this app requires a signed URL")]
    Missing,
    #[error("txTime {0:?} is not a hexadecimal Unix time")]
    BadTime(String),
    #[error("signature expired at {expired} (Unix time), now {now}")]
    Expired { expired: u64, now: u64 },
    #[error("txSecret does not match: wrong key or stream name")]
    Mismatch,
}

/// A primary key and an optional backup (so keys can be rotated without breaking live URLs).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyPair {
    pub key: String,
    pub backup: String,
}

impl KeyPair {
    pub fn is_set(&self) -> bool {
        !self.key.is_empty() || !self.backup.is_empty()
    }
}

/// `txSecret` for a key, stream and hex `txTime`.
pub fn sign(key: &str, stream: &str, tx_time: &str) -> String {
    let mut h = Md5::new();
    h.update(key.as_bytes());
    h.update(stream.as_bytes());
    h.update(tx_time.as_bytes());
    hex::encode(h.finalize())
}

/// Checks a request's signature. `tx_time` is used exactly as sent (its case matters to the hash, as in
/// Tencent's scheme); it parses as hex in either case. The comparison is constant-time.
pub fn verify(
    keys: &KeyPair,
    stream: &str,
    tx_secret: Option<&str>,
    tx_time: Option<&str>,
    now: u64,
) -> Result<(), AuthError> {
    if !keys.is_set() {
        return Ok(());
    }
    let (Some(secret), Some(time)) = (tx_secret, tx_time) else {
        return Err(AuthError::Missing);
    };
    let expiry = u64::from_str_radix(time, 16).map_err(|_| AuthError::BadTime(time.to_owned()))?;
    if time.is_empty() || time.len() > 16 {
        return Err(AuthError::BadTime(time.to_owned()));
    }
    let given = secret.to_ascii_lowercase();
    let mut ok = subtle::Choice::from(0);
    for key in [&keys.key, &keys.backup] {
        if !key.is_empty() {
            let expect = sign(key, stream, time);
            ok |= expect.as_bytes().ct_eq(given.as_bytes());
        }
    }
    if !bool::from(ok) {
        return Err(AuthError::Mismatch);
    }
    if expiry < now {
        return Err(AuthError::Expired { expired: expiry, now });
    }
    Ok(())
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_answer() {
        assert_eq!(sign("e12c46f2612d5106e2034781ab261ca3", "test", "5C271099"), "f85a2ab363fe4deaffef9754d79da6fe");
    }

    #[test]
    fn verify_cases() {
        let keys = KeyPair { key: "e12c46f2612d5106e2034781ab261ca3".into(), backup: "backup".into() };
        let good = Some("f85a2ab363fe4deaffef9754d79da6fe");
        let t = Some("5C271099");
        assert_eq!(verify(&keys, "test", good, t, 0x5C27_1000), Ok(()));
        assert_eq!(verify(&keys, "test", Some("F85A2AB363FE4DEAFFEF9754D79DA6FE"), t, 0x5C27_1000), Ok(()));
        assert_eq!(
            verify(&keys, "test", good, t, 0x5C27_1100),
            Err(AuthError::Expired { expired: 0x5C27_1099, now: 0x5C27_1100 })
        );
        assert_eq!(verify(&keys, "other", good, t, 0), Err(AuthError::Mismatch));
        assert_eq!(verify(&keys, "test", None, t, 0), Err(AuthError::Missing));
        assert_eq!(verify(&keys, "test", good, Some("zz"), 0), Err(AuthError::BadTime("zz".into())));
        let b = sign("backup", "test", "5c271099");
        assert_eq!(verify(&keys, "test", Some(&b), Some("5c271099"), 0), Ok(()));
        assert_eq!(verify(&KeyPair::default(), "test", None, None, 0), Ok(()));
    }
}
