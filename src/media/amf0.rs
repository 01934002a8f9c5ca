//! AMF0 encoding and decoding, as used by RTMP command and data messages.
//!
//! Only the subset RTMP peers actually exchange is supported. References
//! (0x07), typed objects, XML documents and the AVM+ (AMF3) switch are
//! rejected with an error rather than guessed at, because a half-understood
//! value would desynchronise every value after it in the same message.
//!
//! Strings are decoded lossily: invalid UTF-8 is replaced with U+FFFD rather
//! than failing the whole message. Real encoders (old Flash builds, some
//! hardware encoders) put Latin-1 stream names and device strings into
//! `connect`/`publish`, and refusing the session over that would be worse
//! than a replacement character in a log line.

use thiserror::Error;

/// Containers nested deeper than this are refused so hostile input cannot
/// exhaust the stack through recursion.
pub const MAX_DEPTH: usize = 32;

const MARKER_NUMBER: u8 = 0x00;
const MARKER_BOOLEAN: u8 = 0x01;
const MARKER_STRING: u8 = 0x02;
const MARKER_OBJECT: u8 = 0x03;
const MARKER_NULL: u8 = 0x05;
const MARKER_UNDEFINED: u8 = 0x06;
const MARKER_REFERENCE: u8 = 0x07;
const MARKER_ECMA_ARRAY: u8 = 0x08;
const MARKER_OBJECT_END: u8 = 0x09;
const MARKER_STRICT_ARRAY: u8 = 0x0A;
const MARKER_DATE: u8 = 0x0B;
const MARKER_LONG_STRING: u8 = 0x0C;
const MARKER_AVMPLUS: u8 = 0x11;

#[derive(Debug, Clone, PartialEq)]
pub enum Amf0Value {
    Number(f64),
    Boolean(bool),
    String(String),
    Object(Vec<(String, Amf0Value)>),
    Null,
    Undefined,
    EcmaArray(Vec<(String, Amf0Value)>),
    StrictArray(Vec<Amf0Value>),
    /// Milliseconds since the Unix epoch. The wire format's timezone field is
    /// reserved by the spec and dropped on decode; encode writes zero.
    Date(f64),
    LongString(String),
}

#[derive(Debug, Error, PartialEq)]
pub enum Amf0Error {
    #[error("AMF0 data truncated")]
    Truncated,
    #[error("unknown or unsupported AMF0 marker 0x{0:02x}")]
    UnknownMarker(u8),
    #[error("AMF0 reference marker (0x07) is not supported")]
    Reference,
    #[error("AMF0 AVM+ switch to AMF3 (0x11) is not supported")]
    Amf3Switch,
    #[error("AMF0 object-end marker outside of an object")]
    UnexpectedObjectEnd,
    #[error("AMF0 values nested deeper than {MAX_DEPTH} levels")]
    TooDeep,
}

/// Decodes one value from the front of `buf` and advances it past the value.
/// On error `buf` is left unchanged so the caller can report where it failed.
pub fn decode(buf: &mut &[u8]) -> Result<Amf0Value, Amf0Error> {
    let mut cursor = *buf;
    let v = decode_value(&mut cursor, 0)?;
    *buf = cursor;
    Ok(v)
}

/// Decodes every value in `buf`; an RTMP command message is just such a
/// sequence (name, transaction id, command object, arguments...).
pub fn decode_all(buf: &[u8]) -> Result<Vec<Amf0Value>, Amf0Error> {
    let mut cursor = buf;
    let mut out = Vec::new();
    while !cursor.is_empty() {
        out.push(decode_value(&mut cursor, 0)?);
    }
    Ok(out)
}

pub fn encode(v: &Amf0Value, out: &mut Vec<u8>) {
    match v {
        Amf0Value::Number(n) => {
            out.push(MARKER_NUMBER);
            out.extend_from_slice(&n.to_be_bytes());
        }
        Amf0Value::Boolean(b) => {
            out.push(MARKER_BOOLEAN);
            out.push(u8::from(*b));
        }
        Amf0Value::String(s) => encode_string_value(s, out),
        Amf0Value::Object(pairs) => {
            out.push(MARKER_OBJECT);
            encode_pairs(pairs, out);
        }
        Amf0Value::Null => out.push(MARKER_NULL),
        Amf0Value::Undefined => out.push(MARKER_UNDEFINED),
        Amf0Value::EcmaArray(pairs) => {
            out.push(MARKER_ECMA_ARRAY);
            out.extend_from_slice(&len_u32(pairs.len()).to_be_bytes());
            encode_pairs(pairs, out);
        }
        Amf0Value::StrictArray(items) => {
            out.push(MARKER_STRICT_ARRAY);
            // The count is authoritative for strict arrays, so never write more
            // items than it announces.
            let n = len_u32(items.len());
            out.extend_from_slice(&n.to_be_bytes());
            for item in items.iter().take(n as usize) {
                encode(item, out);
            }
        }
        Amf0Value::Date(ms) => {
            out.push(MARKER_DATE);
            out.extend_from_slice(&ms.to_be_bytes());
            out.extend_from_slice(&0i16.to_be_bytes());
        }
        Amf0Value::LongString(s) => {
            out.push(MARKER_LONG_STRING);
            encode_long_utf8(s, out);
        }
    }
}

pub fn encode_all(vals: &[Amf0Value]) -> Vec<u8> {
    let mut out = Vec::new();
    for v in vals {
        encode(v, &mut out);
    }
    out
}

impl Amf0Value {
    /// Both string kinds, since which one a peer uses depends only on length.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Amf0Value::String(s) | Amf0Value::LongString(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Amf0Value::Number(n) => Some(*n),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Amf0Value::Boolean(b) => Some(*b),
            _ => None,
        }
    }

    /// Property lookup on Object or EcmaArray (encoders use either for
    /// `onMetaData`). The first matching key wins if a peer sent duplicates.
    pub fn get(&self, key: &str) -> Option<&Amf0Value> {
        match self {
            Amf0Value::Object(pairs) | Amf0Value::EcmaArray(pairs) => {
                pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v)
            }
            _ => None,
        }
    }

    pub fn object(pairs: &[(&str, Amf0Value)]) -> Amf0Value {
        Amf0Value::Object(pairs.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect())
    }
}

impl From<f64> for Amf0Value {
    fn from(n: f64) -> Self {
        Amf0Value::Number(n)
    }
}

impl From<bool> for Amf0Value {
    fn from(b: bool) -> Self {
        Amf0Value::Boolean(b)
    }
}

impl From<&str> for Amf0Value {
    fn from(s: &str) -> Self {
        Amf0Value::String(s.to_owned())
    }
}

impl From<String> for Amf0Value {
    fn from(s: String) -> Self {
        Amf0Value::String(s)
    }
}

fn len_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn encode_string_value(s: &str, out: &mut Vec<u8>) {
    // A short string's length field is 16 bits; anything longer has to switch
    // to the long-string marker or the length would silently wrap.
    if s.len() <= usize::from(u16::MAX) {
        out.push(MARKER_STRING);
        encode_short_utf8(s, out);
    } else {
        out.push(MARKER_LONG_STRING);
        encode_long_utf8(s, out);
    }
}

/// Writes a u16-length-prefixed string. Property names have no long form, so
/// an oversize key is cut at the last char boundary that fits rather than
/// producing a length field that disagrees with the bytes that follow.
fn encode_short_utf8(s: &str, out: &mut Vec<u8>) {
    let max = usize::from(u16::MAX);
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    let bytes = s.as_bytes().get(..end).unwrap_or_default();
    out.extend_from_slice(&(end as u16).to_be_bytes());
    out.extend_from_slice(bytes);
}

fn encode_long_utf8(s: &str, out: &mut Vec<u8>) {
    let max = u32::MAX as usize;
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    let bytes = s.as_bytes().get(..end).unwrap_or_default();
    out.extend_from_slice(&len_u32(end).to_be_bytes());
    out.extend_from_slice(bytes);
}

fn encode_pairs(pairs: &[(String, Amf0Value)], out: &mut Vec<u8>) {
    for (k, v) in pairs {
        encode_short_utf8(k, out);
        encode(v, out);
    }
    out.extend_from_slice(&[0x00, 0x00, MARKER_OBJECT_END]);
}

fn take<'a>(buf: &mut &'a [u8], n: usize) -> Result<&'a [u8], Amf0Error> {
    if buf.len() < n {
        return Err(Amf0Error::Truncated);
    }
    let (head, tail) = buf.split_at(n);
    *buf = tail;
    Ok(head)
}

fn take_array<const N: usize>(buf: &mut &[u8]) -> Result<[u8; N], Amf0Error> {
    let mut a = [0u8; N];
    a.copy_from_slice(take(buf, N)?);
    Ok(a)
}

fn read_u8(buf: &mut &[u8]) -> Result<u8, Amf0Error> {
    Ok(take_array::<1>(buf)?[0])
}

fn read_u16(buf: &mut &[u8]) -> Result<u16, Amf0Error> {
    Ok(u16::from_be_bytes(take_array(buf)?))
}

fn read_u32(buf: &mut &[u8]) -> Result<u32, Amf0Error> {
    Ok(u32::from_be_bytes(take_array(buf)?))
}

fn read_f64(buf: &mut &[u8]) -> Result<f64, Amf0Error> {
    Ok(f64::from_be_bytes(take_array(buf)?))
}

fn read_short_string(buf: &mut &[u8]) -> Result<String, Amf0Error> {
    let len = read_u16(buf)?;
    let bytes = take(buf, usize::from(len))?;
    Ok(String::from_utf8_lossy(bytes).into_owned())
}

fn read_long_string(buf: &mut &[u8]) -> Result<String, Amf0Error> {
    let len = read_u32(buf)?;
    let len = usize::try_from(len).map_err(|_| Amf0Error::Truncated)?;
    let bytes = take(buf, len)?;
    Ok(String::from_utf8_lossy(bytes).into_owned())
}

/// Reads key/value pairs up to the empty-key + object-end terminator. Used
/// for both objects and ECMA arrays: encoders disagree on whether the ECMA
/// array count is accurate, so only the terminator is trusted.
fn read_pairs(buf: &mut &[u8], depth: usize) -> Result<Vec<(String, Amf0Value)>, Amf0Error> {
    let mut pairs = Vec::new();
    loop {
        let key = read_short_string(buf)?;
        if key.is_empty() && buf.first() == Some(&MARKER_OBJECT_END) {
            *buf = buf.get(1..).unwrap_or_default();
            return Ok(pairs);
        }
        let value = decode_value(buf, depth + 1)?;
        pairs.push((key, value));
    }
}

fn decode_value(buf: &mut &[u8], depth: usize) -> Result<Amf0Value, Amf0Error> {
    let marker = read_u8(buf)?;
    let is_container = matches!(marker, MARKER_OBJECT | MARKER_ECMA_ARRAY | MARKER_STRICT_ARRAY);
    if is_container && depth >= MAX_DEPTH {
        return Err(Amf0Error::TooDeep);
    }
    match marker {
        MARKER_NUMBER => Ok(Amf0Value::Number(read_f64(buf)?)),
        MARKER_BOOLEAN => Ok(Amf0Value::Boolean(read_u8(buf)? != 0)),
        MARKER_STRING => Ok(Amf0Value::String(read_short_string(buf)?)),
        MARKER_OBJECT => Ok(Amf0Value::Object(read_pairs(buf, depth)?)),
        MARKER_NULL => Ok(Amf0Value::Null),
        MARKER_UNDEFINED => Ok(Amf0Value::Undefined),
        MARKER_REFERENCE => Err(Amf0Error::Reference),
        MARKER_ECMA_ARRAY => {
            let _advisory_count = read_u32(buf)?;
            Ok(Amf0Value::EcmaArray(read_pairs(buf, depth)?))
        }
        MARKER_OBJECT_END => Err(Amf0Error::UnexpectedObjectEnd),
        MARKER_STRICT_ARRAY => {
            let count = read_u32(buf)?;
            // Every value takes at least one byte, so the remaining input bounds
            // how many can really follow; this stops a forged count from
            // reserving gigabytes up front.
            let cap = (count as usize).min(buf.len());
            let mut items = Vec::with_capacity(cap);
            for _ in 0..count {
                items.push(decode_value(buf, depth + 1)?);
            }
            Ok(Amf0Value::StrictArray(items))
        }
        MARKER_DATE => {
            let ms = read_f64(buf)?;
            let _timezone = read_u16(buf)?;
            Ok(Amf0Value::Date(ms))
        }
        MARKER_LONG_STRING => Ok(Amf0Value::LongString(read_long_string(buf)?)),
        MARKER_AVMPLUS => Err(Amf0Error::Amf3Switch),
        other => Err(Amf0Error::UnknownMarker(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn connect_command_roundtrip() {
        let vals = vec![
            Amf0Value::from("connect"),
            Amf0Value::Number(1.0),
            Amf0Value::object(&[
                ("app", "live".into()),
                ("flashVer", "FMLE/3.0 (compatible; FMSc/1.0)".into()),
                ("tcUrl", "rtmp://localhost/live".into()),
                ("fpad", false.into()),
                ("audioCodecs", 3191.0.into()),
                ("objectEncoding", 0.0.into()),
            ]),
            Amf0Value::Null,
        ];
        let bytes = encode_all(&vals);
        let back = decode_all(&bytes).expect("decodes");
        assert_eq!(back, vals);
        assert_eq!(back[2].get("app").and_then(Amf0Value::as_str), Some("live"));
        assert_eq!(back[2].get("fpad").and_then(Amf0Value::as_bool), Some(false));
        assert_eq!(back[1].as_f64(), Some(1.0));
        assert_eq!(back[2].get("missing"), None);
    }

    #[test]
    fn known_wire_bytes() {
        let mut out = Vec::new();
        encode(&Amf0Value::from("ab"), &mut out);
        assert_eq!(out, [0x02, 0x00, 0x02, b'a', b'b']);

        out.clear();
        encode(&Amf0Value::Number(1.0), &mut out);
        assert_eq!(out, [0x00, 0x3f, 0xf0, 0, 0, 0, 0, 0, 0]);

        out.clear();
        encode(&Amf0Value::object(&[("a", Amf0Value::Null)]), &mut out);
        assert_eq!(out, [0x03, 0x00, 0x01, b'a', 0x05, 0x00, 0x00, 0x09]);

        out.clear();
        encode(&Amf0Value::Date(0.0), &mut out);
        assert_eq!(out.len(), 11);
    }

    #[test]
    fn decode_advances_slice() {
        let bytes = encode_all(&[Amf0Value::Boolean(true), Amf0Value::Undefined]);
        let mut cur: &[u8] = &bytes;
        assert_eq!(decode(&mut cur), Ok(Amf0Value::Boolean(true)));
        assert_eq!(cur, &[MARKER_UNDEFINED]);
        assert_eq!(decode(&mut cur), Ok(Amf0Value::Undefined));
        assert!(cur.is_empty());
        assert_eq!(decode(&mut cur), Err(Amf0Error::Truncated));
    }

    #[test]
    fn error_leaves_slice_untouched() {
        let bytes = [0x03, 0x00, 0x01, b'a'];
        let mut cur: &[u8] = &bytes;
        assert_eq!(decode(&mut cur), Err(Amf0Error::Truncated));
        assert_eq!(cur.len(), bytes.len());
    }

    #[test]
    fn ecma_array_count_is_advisory() {
        // Count says 5 but only one pair precedes the end marker, as some
        // encoders write for onMetaData.
        let bytes = [0x08, 0, 0, 0, 5, 0x00, 0x01, b'w', 0x00, 0x40, 0x59, 0, 0, 0, 0, 0, 0, 0x00, 0x00, 0x09];
        let v = decode_all(&bytes).expect("decodes");
        assert_eq!(v, vec![Amf0Value::EcmaArray(vec![("w".into(), Amf0Value::Number(100.0))])]);
        assert_eq!(v[0].get("w").and_then(Amf0Value::as_f64), Some(100.0));
    }

    #[test]
    fn rejected_markers() {
        assert_eq!(decode_all(&[0x07, 0x00, 0x01]), Err(Amf0Error::Reference));
        assert_eq!(decode_all(&[0x11, 0x01]), Err(Amf0Error::Amf3Switch));
        assert_eq!(decode_all(&[0x09]), Err(Amf0Error::UnexpectedObjectEnd));
        for m in [0x04, 0x0D, 0x0E, 0x0F, 0x10, 0x12, 0xFF] {
            assert_eq!(decode_all(&[m]), Err(Amf0Error::UnknownMarker(m)));
        }
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        let mut bytes = Vec::new();
        for _ in 0..100_000 {
            bytes.extend_from_slice(&[0x0A, 0, 0, 0, 1]);
        }
        assert_eq!(decode_all(&bytes), Err(Amf0Error::TooDeep));

        let mut objs = Vec::new();
        for _ in 0..100 {
            objs.extend_from_slice(&[0x03, 0x00, 0x01, b'k']);
        }
        assert_eq!(decode_all(&objs), Err(Amf0Error::TooDeep));
    }

    #[test]
    fn depth_limit_boundary() {
        let mut v = Amf0Value::Null;
        for _ in 0..MAX_DEPTH {
            v = Amf0Value::StrictArray(vec![v]);
        }
        let bytes = encode_all(std::slice::from_ref(&v));
        assert_eq!(decode_all(&bytes), Ok(vec![v.clone()]));
        let deeper = Amf0Value::StrictArray(vec![v]);
        assert_eq!(decode_all(&encode_all(&[deeper])), Err(Amf0Error::TooDeep));
    }

    #[test]
    fn forged_strict_array_count_does_not_allocate() {
        let bytes = [0x0A, 0xFF, 0xFF, 0xFF, 0xFF, 0x05];
        assert_eq!(decode_all(&bytes), Err(Amf0Error::Truncated));
    }

    #[test]
    fn long_strings_switch_marker() {
        let s = "x".repeat(70_000);
        let bytes = encode_all(&[Amf0Value::String(s.clone())]);
        assert_eq!(bytes[0], MARKER_LONG_STRING);
        assert_eq!(decode_all(&bytes), Ok(vec![Amf0Value::LongString(s.clone())]));
        assert_eq!(decode_all(&bytes).expect("decodes")[0].as_str(), Some(s.as_str()));

        let exact = "y".repeat(65_535);
        let bytes = encode_all(&[Amf0Value::String(exact.clone())]);
        assert_eq!(bytes[0], MARKER_STRING);
        assert_eq!(decode_all(&bytes), Ok(vec![Amf0Value::String(exact)]));
    }

    #[test]
    fn oversize_key_truncated_on_char_boundary() {
        let key = "é".repeat(40_000); // 80_000 bytes, 2-byte chars
        let v = Amf0Value::Object(vec![(key, Amf0Value::Null)]);
        let bytes = encode_all(&[v]);
        let back = decode_all(&bytes).expect("decodes");
        let Amf0Value::Object(pairs) = &back[0] else { panic!("not an object") };
        assert_eq!(pairs[0].0.len(), 65_534);
        assert!(pairs[0].0.chars().all(|c| c == 'é'));
    }

    #[test]
    fn invalid_utf8_is_lossy() {
        let bytes = [0x02, 0x00, 0x03, b'a', 0xFF, b'b'];
        assert_eq!(decode_all(&bytes), Ok(vec![Amf0Value::String("a\u{FFFD}b".into())]));
    }

    #[test]
    fn empty_key_with_value_is_a_pair() {
        let bytes = [0x03, 0x00, 0x00, 0x05, 0x00, 0x00, 0x09];
        assert_eq!(decode_all(&bytes), Ok(vec![Amf0Value::Object(vec![(String::new(), Amf0Value::Null)])]));
    }

    #[test]
    fn accessors_reject_other_types() {
        assert_eq!(Amf0Value::Null.as_str(), None);
        assert_eq!(Amf0Value::from("1").as_f64(), None);
        assert_eq!(Amf0Value::Number(1.0).as_bool(), None);
        assert_eq!(Amf0Value::StrictArray(vec![]).get("a"), None);
    }

    fn arb_key() -> impl Strategy<Value = String> {
        "[a-zA-Z0-9_é]{0,12}"
    }

    fn arb_value() -> impl Strategy<Value = Amf0Value> {
        let leaf = prop_oneof![
            any::<f64>().prop_filter("NaN != NaN", |f| !f.is_nan()).prop_map(Amf0Value::Number),
            any::<bool>().prop_map(Amf0Value::Boolean),
            ".{0,20}".prop_map(Amf0Value::String),
            ".{0,20}".prop_map(Amf0Value::LongString),
            Just(Amf0Value::Null),
            Just(Amf0Value::Undefined),
            (-1e13f64..1e13).prop_map(Amf0Value::Date),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                prop::collection::vec((arb_key(), inner.clone()), 0..6).prop_map(Amf0Value::Object),
                prop::collection::vec((arb_key(), inner.clone()), 0..6).prop_map(Amf0Value::EcmaArray),
                prop::collection::vec(inner, 0..6).prop_map(Amf0Value::StrictArray),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn prop_roundtrip(vals in prop::collection::vec(arb_value(), 0..4)) {
            let bytes = encode_all(&vals);
            prop_assert_eq!(decode_all(&bytes), Ok(vals));
        }

        #[test]
        fn prop_arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_all(&bytes);
            let mut cur: &[u8] = &bytes;
            if let Ok(v) = decode(&mut cur) {
                // Whatever decodes must re-encode to something that decodes
                // to the same value (modulo NaN payloads, compared bytewise).
                let once = encode_all(std::slice::from_ref(&v));
                let again = decode_all(&once).expect("re-decodes");
                prop_assert_eq!(encode_all(&again), once);
            }
        }
    }
}
