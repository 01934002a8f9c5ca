//! SEI messages for browsers, pure: what live-player's event 2012 gives a mini program, as JSON texts on a
//! WHEP data channel the viewer opens with the label `sei`. A frame's texts are built once for every viewer
//! (cached on the hub packet) without their closing brace; each viewer appends its own RTP timestamp, which
//! a page matches with `requestVideoFrameCallback`'s `rtpTimestamp` to show the message with its picture.

use base64::Engine;
use serde::Serialize;

use crate::media::sei::{self, SeiMessage};
use crate::media::Frame;

/// The data channel label a WHEP viewer opens to receive SEI messages.
pub const LABEL: &str = "sei";

#[derive(Serialize)]
struct Text<'a> {
    /// Always "sei": room for other kinds of message on the channel later.
    #[serde(rename = "type")]
    kind: &'static str,
    payload_type: u32,
    /// 32 lowercase hex digits, for user_data_unregistered.
    #[serde(skip_serializing_if = "Option::is_none")]
    uuid: Option<String>,
    /// The payload after the UUID, base64.
    data: &'a str,
    /// The frame's presentation and decode time, ms on the stream's timeline (as FLV and the API count).
    pts: i64,
    dts: i64,
}

/// The frame's user-data SEI messages as JSON objects missing their closing brace (see [`finish`]), and how
/// many SEI NAL units were malformed (skipped; the frame itself is sent as it is).
pub fn texts(f: &Frame, len_size: usize) -> (Vec<String>, usize) {
    let (msgs, bad) = sei::messages_in(&f.payload, len_size);
    let texts = msgs.iter().filter(|m| sei::is_user_data(m.payload_type)).map(|m| text(m, f)).collect();
    (texts, bad)
}

fn text(m: &SeiMessage, f: &Frame) -> String {
    let data = base64::engine::general_purpose::STANDARD.encode(&m.data);
    let t = Text {
        kind: "sei",
        payload_type: m.payload_type,
        uuid: m.uuid.map(hex::encode),
        data: &data,
        pts: f.pts(),
        dts: f.dts,
    };
    let mut s = serde_json::to_string(&t).expect("plain fields serialize");
    s.pop(); // the closing brace: `finish` adds the viewer's field and closes it
    s
}

/// One viewer's message: the shared text with the RTP timestamp of the frame as this viewer receives it.
pub fn finish(text: &str, rtp_timestamp: u32) -> String {
    format!("{text},\"rtp_timestamp\":{rtp_timestamp}}}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::{Codec, MediaKind};
    use bytes::Bytes;

    fn frame_with(nals: &[Vec<u8>]) -> Frame {
        let mut au = Vec::new();
        for n in nals {
            au.extend_from_slice(&(n.len() as u32).to_be_bytes());
            au.extend_from_slice(n);
        }
        Frame {
            kind: MediaKind::Video,
            codec: Codec::H264,
            dts: 1000,
            cts: 40,
            keyframe: false,
            config: false,
            payload: Bytes::from(au),
        }
    }

    #[test]
    fn user_data_becomes_json_with_the_viewers_rtp_time() {
        let uuid = [7u8; 16];
        let ours = sei::build_nal(&[
            SeiMessage::unregistered(uuid, &b"hi\x00\x00\x01"[..]),
            // A picture-timing message: the encoder's business, not the page's.
            SeiMessage { payload_type: 1, uuid: None, data: Bytes::from_static(&[0x12, 0x34]) },
            SeiMessage { payload_type: 242, uuid: None, data: Bytes::from_static(b"tx") },
        ]);
        let f = frame_with(&[ours, vec![0x41, 0x9a, 0x00]]);
        let (texts, bad) = texts(&f, 4);
        assert_eq!(bad, 0);
        assert_eq!(texts.len(), 2);
        let v: serde_json::Value = serde_json::from_str(&finish(&texts[0], 4_000_000_000)).unwrap();
        assert_eq!(v["type"], "sei");
        assert_eq!(v["payload_type"], 5);
        assert_eq!(v["uuid"], "07070707070707070707070707070707");
        assert_eq!(v["data"], "aGkAAAE=");
        assert_eq!((v["pts"].as_i64(), v["dts"].as_i64()), (Some(1040), Some(1000)));
        assert_eq!(v["rtp_timestamp"], 4_000_000_000u32);
        let v: serde_json::Value = serde_json::from_str(&finish(&texts[1], 1)).unwrap();
        assert_eq!((v["payload_type"].as_u64(), v.get("uuid")), (Some(242), None));
    }

    #[test]
    fn a_malformed_sei_is_counted_and_the_rest_still_read() {
        // Claims 200 bytes of payload and has 3.
        let broken = vec![0x06, 0x05, 0xc8, 1, 2, 3, 0x80];
        let good = sei::build_nal(&[SeiMessage::unregistered([1; 16], &b"ok"[..])]);
        let (texts, bad) = texts(&frame_with(&[broken, good, vec![0x65, 0x88]]), 4);
        assert_eq!((texts.len(), bad), (1, 1));
        assert!(texts[0].contains("\"data\":\"b2s=\""));
    }
}
