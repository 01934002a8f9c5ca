//! RTMP message types, the commands livegate understands, and builders for what it sends back.

use bytes::{BufMut, Bytes};

use super::chunk;
use crate::hub::packet::{RTMP_MEDIA_STREAM_ID, RTMP_OUT_CHUNK_SIZE};
use crate::media::amf0::{self, Amf0Value};

pub const SET_CHUNK_SIZE: u8 = 1;
pub const ABORT: u8 = 2;
pub const ACK: u8 = 3;
pub const USER_CONTROL: u8 = 4;
pub const WINDOW_ACK_SIZE: u8 = 5;
pub const SET_PEER_BANDWIDTH: u8 = 6;
pub const AUDIO: u8 = 8;
pub const VIDEO: u8 = 9;
pub const DATA_AMF3: u8 = 15;
pub const COMMAND_AMF3: u8 = 17;
pub const DATA_AMF0: u8 = 18;
pub const COMMAND_AMF0: u8 = 20;

const CSID_CONTROL: u32 = 2;
const CSID_COMMAND: u32 = 3;
const CSID_STATUS: u32 = 5;

/// What livegate asks peers to acknowledge after, and the bandwidth it announces.
pub const WINDOW_SIZE: u32 = 2_500_000;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum CommandError {
    #[error("command message is not valid AMF0: {0}")]
    Amf(#[from] amf0::Amf0Error),
    #[error("command message has no name")]
    NoName,
    #[error("{0} is missing its {1}")]
    MissingArg(&'static str, &'static str),
}

/// A parsed command (AMF0 or AMF3-wrapped AMF0).
#[derive(Debug, Clone, PartialEq)]
pub struct Command {
    pub name: String,
    pub transaction: f64,
    pub object: Amf0Value,
    pub args: Vec<Amf0Value>,
}

impl Command {
    pub fn parse(type_id: u8, payload: &[u8]) -> Result<Self, CommandError> {
        // AMF3 command messages start with a format byte; the commands clients send there are still AMF0.
        let body = if type_id == COMMAND_AMF3 && !payload.is_empty() { &payload[1..] } else { payload };
        let mut vals = amf0::decode_all(body)?.into_iter();
        let name = match vals.next() {
            Some(Amf0Value::String(s)) => s,
            _ => return Err(CommandError::NoName),
        };
        let transaction = vals.next().and_then(|v| v.as_f64()).unwrap_or(0.0);
        let object = vals.next().unwrap_or(Amf0Value::Null);
        Ok(Self { name, transaction, object, args: vals.collect() })
    }

    /// The n-th argument after the command object, as a string.
    pub fn arg_str(&self, n: usize) -> Option<&str> {
        self.args.get(n).and_then(|v| v.as_str())
    }
}

/// A data message (`@setDataFrame`, `onMetaData`, ...): its values.
pub fn parse_data(type_id: u8, payload: &[u8]) -> Result<Vec<Amf0Value>, amf0::Amf0Error> {
    let body = if type_id == DATA_AMF3 && !payload.is_empty() { &payload[1..] } else { payload };
    amf0::decode_all(body)
}

fn control(out: &mut Vec<u8>, type_id: u8, body: &[u8]) {
    chunk::encode_message(out, RTMP_OUT_CHUNK_SIZE, CSID_CONTROL, 0, type_id, 0, &[body]);
}

/// The first message livegate sends after the handshake: every later message (including a refusal of
/// `connect`) is chunked at this size, so the peer must learn it before anything else. It is itself encoded at
/// the default chunk size of 128.
pub fn set_chunk_size(out: &mut Vec<u8>) {
    chunk::encode_message(out, 128, CSID_CONTROL, 0, SET_CHUNK_SIZE, 0, &[&RTMP_OUT_CHUNK_SIZE.to_be_bytes()]);
}

/// Protocol control messages sent in answer to `connect`, in the order Flash Media Server sends them.
pub fn connect_preamble(out: &mut Vec<u8>) {
    control(out, WINDOW_ACK_SIZE, &WINDOW_SIZE.to_be_bytes());
    let mut bw = WINDOW_SIZE.to_be_bytes().to_vec();
    bw.push(2);
    control(out, SET_PEER_BANDWIDTH, &bw);
}

pub fn ack(out: &mut Vec<u8>, received: u32) {
    control(out, ACK, &received.to_be_bytes());
}

/// User control event (Stream Begin = 0, Stream EOF = 1, Stream Is Recorded = 4, Ping Response = 7).
pub fn user_control(out: &mut Vec<u8>, event: u16, data: &[u8]) {
    let mut b = Vec::with_capacity(2 + data.len());
    b.put_u16(event);
    b.extend_from_slice(data);
    control(out, USER_CONTROL, &b);
}

pub fn command(out: &mut Vec<u8>, stream_id: u32, values: &[Amf0Value]) {
    let body = amf0::encode_all(values);
    let csid = if stream_id == 0 { CSID_COMMAND } else { CSID_STATUS };
    chunk::encode_message(out, RTMP_OUT_CHUNK_SIZE, csid, 0, COMMAND_AMF0, stream_id, &[&body]);
}

pub fn data(out: &mut Vec<u8>, stream_id: u32, values: &[Amf0Value]) {
    let body = amf0::encode_all(values);
    chunk::encode_message(out, RTMP_OUT_CHUNK_SIZE, CSID_STATUS, 0, DATA_AMF0, stream_id, &[&body]);
}

pub fn result(out: &mut Vec<u8>, transaction: f64, object: Amf0Value, info: Amf0Value) {
    command(out, 0, &[Amf0Value::String("_result".into()), Amf0Value::Number(transaction), object, info]);
}

/// `_error` for a command that failed, with a description clients print.
pub fn error(out: &mut Vec<u8>, transaction: f64, code: &str, description: &str) {
    command(
        out,
        0,
        &[
            Amf0Value::String("_error".into()),
            Amf0Value::Number(transaction),
            Amf0Value::Null,
            status_object("error", code, description),
        ],
    );
}

pub fn status_object(level: &str, code: &str, description: &str) -> Amf0Value {
    Amf0Value::object(&[
        ("level", Amf0Value::String(level.into())),
        ("code", Amf0Value::String(code.into())),
        ("description", Amf0Value::String(description.into())),
    ])
}

/// `onStatus` on the media stream.
pub fn on_status(out: &mut Vec<u8>, level: &str, code: &str, description: &str) {
    command(
        out,
        RTMP_MEDIA_STREAM_ID,
        &[
            Amf0Value::String("onStatus".into()),
            Amf0Value::Number(0.0),
            Amf0Value::Null,
            status_object(level, code, description),
        ],
    );
}

pub fn connect_result(out: &mut Vec<u8>, transaction: f64) {
    result(
        out,
        transaction,
        Amf0Value::object(&[
            ("fmsVer", Amf0Value::String("FMS/3,5,7,7009".into())),
            ("capabilities", Amf0Value::Number(31.0)),
            ("mode", Amf0Value::Number(1.0)),
        ]),
        Amf0Value::object(&[
            ("level", Amf0Value::String("status".into())),
            ("code", Amf0Value::String("NetConnection.Connect.Success".into())),
            ("description", Amf0Value::String("Connection succeeded.".into())),
            ("objectEncoding", Amf0Value::Number(0.0)),
        ]),
    );
}

/// Metadata as a player expects it: `onMetaData` with the publisher's object, `@setDataFrame` stripped.
pub fn metadata_body(values: &[Amf0Value]) -> Option<Bytes> {
    let rest = match values.first().and_then(|v| v.as_str()) {
        Some("@setDataFrame") => &values[1..],
        _ => values,
    };
    if rest.first().and_then(|v| v.as_str()) != Some("onMetaData") {
        return None;
    }
    let mut obj = rest.get(1).cloned().unwrap_or(Amf0Value::EcmaArray(Vec::new()));
    if let Amf0Value::Object(pairs) = obj {
        obj = Amf0Value::EcmaArray(pairs);
    }
    if let Amf0Value::EcmaArray(pairs) = &mut obj {
        pairs.retain(|(k, _)| k != "server");
        pairs.push(("server".into(), Amf0Value::String(concat!("livegate/", env!("CARGO_PKG_VERSION")).into())));
    }
    Some(Bytes::from(amf0::encode_all(&[Amf0Value::String("onMetaData".into()), obj])))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;

    #[test]
    fn command_roundtrip_through_chunks() {
        let mut out = Vec::new();
        result(&mut out, 4.0, Amf0Value::Null, Amf0Value::Number(1.0));
        let mut d = chunk::ChunkDecoder::new();
        d.set_chunk_size(RTMP_OUT_CHUNK_SIZE).unwrap();
        let m = d.decode(&mut BytesMut::from(&out[..])).unwrap().unwrap();
        let c = Command::parse(m.type_id, &m.payload).unwrap();
        assert_eq!(c.name, "_result");
        assert_eq!(c.transaction, 4.0);
        assert_eq!(c.args, vec![Amf0Value::Number(1.0)]);
    }

    #[test]
    fn wrong_types_are_errors() {
        let body = amf0::encode_all(&[Amf0Value::Number(1.0)]);
        assert_eq!(Command::parse(COMMAND_AMF0, &body), Err(CommandError::NoName));
        assert!(Command::parse(COMMAND_AMF0, &[0x02, 0x00]).is_err());
    }

    #[test]
    fn metadata_strips_set_data_frame() {
        let vals = vec![
            Amf0Value::String("@setDataFrame".into()),
            Amf0Value::String("onMetaData".into()),
            Amf0Value::EcmaArray(vec![("width".into(), Amf0Value::Number(1280.0))]),
        ];
        let b = metadata_body(&vals).unwrap();
        let back = amf0::decode_all(&b).unwrap();
        assert_eq!(back[0].as_str(), Some("onMetaData"));
        assert_eq!(back[1].get("width").and_then(|v| v.as_f64()), Some(1280.0));
        assert!(metadata_body(&[Amf0Value::String("onCuePoint".into())]).is_none());
    }
}
