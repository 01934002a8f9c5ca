//! Validation of app and stream names, which end up in URLs, logs and (later) file paths.

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NameError {
    #[error("{0} name is empty")]
    Empty(&'static str),
    #[error("{what} name is {len} characters long (at most {MAX_NAME_LEN})")]
    TooLong { what: &'static str, len: usize },
    #[error("{what} name contains {ch:?}: only letters, digits, '-', '_' and '.' are allowed")]
    BadChar { what: &'static str, ch: char },
    #[error("{0} name may not start with '.' or contain \"..\"")]
    Dots(&'static str),
    #[error(
        "rendition @{0} cannot be played by name: players may ask for @{PLAYABLE_RENDITION} (the H.264 rendition)"
    )]
    Rendition(String),
}

/// The one rendition players may name (`live/x@cb`): H.264 constrained baseline, which every FLV/RTMP/HLS
/// player takes, for sources in H.265 or with B-frames. Opus and VP8 renditions exist for WebRTC only.
pub const PLAYABLE_RENDITION: &str = "cb";

/// Checks a stream name a player asked for: a stream name, or one with the playable rendition's suffix.
pub fn validate_play(name: &str) -> Result<(), NameError> {
    match name.split_once('@') {
        Some((base, suffix)) => {
            validate("stream", base)?;
            if suffix != PLAYABLE_RENDITION {
                return Err(NameError::Rendition(suffix.to_owned()));
            }
            Ok(())
        }
        None => validate("stream", name),
    }
}

/// Whether a stream name is a rendition's (`x@opus`, `x@cb`, …): a derived stream, never a publisher's.
pub fn is_rendition(name: &str) -> bool {
    name.contains('@')
}

/// The stream a name is about: a rendition's source (signatures are made for the source's name).
pub fn source_name(name: &str) -> &str {
    name.split_once('@').map_or(name, |(base, _)| base)
}

pub const MAX_NAME_LEN: usize = 128;

/// Checks an app or stream name: a single path segment of safe characters.
pub fn validate(what: &'static str, name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty(what));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong { what, len: name.len() });
    }
    if let Some(ch) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))) {
        return Err(NameError::BadChar { what, ch });
    }
    if name.starts_with('.') || name.contains("..") {
        return Err(NameError::Dots(what));
    }
    Ok(())
}

/// Splits `name?query` into its parts.
pub fn split_query(s: &str) -> (&str, &str) {
    match s.split_once('?') {
        Some((a, b)) => (a, b),
        None => (s, ""),
    }
}

/// Decodes `k=v&k2=v2` (percent-decoding values); later keys win.
pub fn parse_query(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

pub fn query_get<'a>(q: &'a [(String, String)], key: &str) -> Option<&'a str> {
    q.iter().rev().find(|(k, _)| k.eq_ignore_ascii_case(key)).map(|(_, v)| v.as_str())
}

/// Query keys whose values are credentials: Tencent-style URL signatures, room credentials and the usual
/// token names. Matched without regard to case.
const SECRET_KEYS: &[&str] = &[
    "txsecret",
    "memberkey",
    "usersig",
    "privatemapkey",
    "token",
    "access_token",
    "auth",
    "authorization",
    "secret",
    "sign",
    "signature",
    "key",
    "password",
    "passwd",
    "pass",
];

/// A query string fit to show (API answers, logs, webhooks other than the authorizing on_publish): the value
/// of every credential parameter becomes `***`; the rest is kept as sent.
/// A URL with its query's credentials redacted (`names::redact_query`), for logs and API answers.
pub fn redact_url(url: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, q)) => (base, Some(q)),
        None => (url, None),
    };
    // Credentials in the authority (`redis://:password@host`, `rtmp://user:key@host`) are shown as `***`.
    let base = match base.split_once("://") {
        Some((scheme, rest)) => {
            let authority_end = rest.find('/').unwrap_or(rest.len());
            match rest[..authority_end].rfind('@') {
                Some(at) => format!("{scheme}://***{}", &rest[at..]),
                None => base.to_owned(),
            }
        }
        None => base.to_owned(),
    };
    match query {
        Some(q) => format!("{base}?{}", redact_query(q)),
        None => base,
    }
}

pub fn redact_query(q: &str) -> String {
    q.split('&')
        .map(|p| {
            let k = p.split_once('=').map_or(p, |(k, _)| k);
            let secret = SECRET_KEYS.iter().any(|s| percent_decode(k).eq_ignore_ascii_case(s));
            match secret {
                true => format!("{k}=***"),
                false => p.to_owned(),
            }
        })
        .collect::<Vec<_>>()
        .join("&")
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(v) => {
                        out.push(v);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    #[test]
    fn players_may_name_the_h264_rendition_and_nothing_else() {
        assert_eq!(validate_play("cam"), Ok(()));
        assert_eq!(validate_play("cam@cb"), Ok(()));
        assert_eq!(validate_play("cam@opus"), Err(NameError::Rendition("opus".into())));
        assert!(validate_play("../x@cb").is_err());
        assert!(validate_play("cam@cb@cb").is_err());
        assert!(validate("stream", "cam@cb").is_err(), "nobody publishes a rendition's name");
        assert_eq!(source_name("cam@cb"), "cam");
        assert_eq!(source_name("cam"), "cam");
        assert!(is_rendition("cam@aac") && !is_rendition("cam"));
    }

    use super::*;

    #[test]
    fn redacts_credentials() {
        assert_eq!(redact_query("txSecret=f85a2ab3&txTime=5C271099&room=1"), "txSecret=***&txTime=5C271099&room=1");
        assert_eq!(
            redact_query("tx%53ecret=x&TOKEN=y&userSig=z&mode=rtc"),
            "tx%53ecret=***&TOKEN=***&userSig=***&mode=rtc"
        );
        assert_eq!(redact_query(""), "");
        assert_eq!(redact_query("sign"), "sign=***");
        assert_eq!(redact_query("monkey=1"), "monkey=1");
        assert_eq!(redact_url("redis://:hunter2@10.0.0.5:6379/0"), "redis://***@10.0.0.5:6379/0");
        assert_eq!(redact_url("rtmp://u:p@cdn/app/s?txSecret=a"), "rtmp://***@cdn/app/s?txSecret=***");
        // An @ after the authority is not a credential.
        assert_eq!(redact_url("http://h/a@b.flv"), "http://h/a@b.flv");
        assert_eq!(redact_url("redis://10.0.0.5"), "redis://10.0.0.5");
    }

    #[test]
    fn names() {
        assert!(validate("stream", "test").is_ok());
        assert!(validate("stream", "room-1_a.b").is_ok());
        assert_eq!(validate("stream", ""), Err(NameError::Empty("stream")));
        assert_eq!(validate("stream", "../etc"), Err(NameError::BadChar { what: "stream", ch: '/' }));
        assert_eq!(validate("stream", "a..b"), Err(NameError::Dots("stream")));
        assert_eq!(validate("stream", ".hidden"), Err(NameError::Dots("stream")));
        assert_eq!(validate("stream", "a\0b"), Err(NameError::BadChar { what: "stream", ch: '\0' }));
        assert!(matches!(validate("stream", &"x".repeat(500)), Err(NameError::TooLong { len: 500, .. })));
    }

    #[test]
    fn queries() {
        let q = parse_query("txSecret=abc&txTime=5C271099&x=a%20b&y=%zz");
        assert_eq!(query_get(&q, "txsecret"), Some("abc"));
        assert_eq!(query_get(&q, "x"), Some("a b"));
        assert_eq!(query_get(&q, "y"), Some("%zz"));
        assert_eq!(split_query("test?a=1"), ("test", "a=1"));
    }
}
