//! H.264 SEI (supplemental enhancement information) messages, pure: what `LivePusherContext.sendMessage` and
//! x264 put into a stream beside the pictures, and what livegate injects (`POST …/sei`). Builds and parses
//! SEI NAL units (ITU-T H.264 §7.3.2.3) with their emulation-prevention bytes and multi-byte type/size fields,
//! and finds them in, or adds them to, an AVCC access unit (length-prefixed NAL units, as FLV carries them).

use bytes::Bytes;

/// NAL unit type of an SEI in H.264.
pub const NAL_SEI: u8 = 6;
const NAL_AUD: u8 = 9;
/// `user_data_registered_itu_t_t35`.
pub const PAYLOAD_REGISTERED: u32 = 4;
/// `user_data_unregistered`: a 16-byte UUID, then the sender's bytes (x264's version string, live-pusher's
/// messages).
pub const PAYLOAD_UNREGISTERED: u32 = 5;

/// Whether a message is the sender's own data (what `LivePusherContext.sendMessage`, x264 and `POST …/sei`
/// put in: registered and unregistered user data, and the types above the standard's range that pushers use,
/// such as Tencent's 242/243), as opposed to the decoding-process messages (buffering period, picture timing,
/// recovery point …) that belong to one encoding and must not outlive it.
pub fn is_user_data(payload_type: u32) -> bool {
    payload_type == PAYLOAD_REGISTERED || payload_type == PAYLOAD_UNREGISTERED || payload_type >= 100
}

/// One SEI message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeiMessage {
    pub payload_type: u32,
    /// The UUID of a `user_data_unregistered` message (the first 16 bytes of its payload).
    pub uuid: Option<[u8; 16]>,
    /// The payload after the UUID (for unregistered messages), or all of it.
    pub data: Bytes,
}

impl SeiMessage {
    pub fn unregistered(uuid: [u8; 16], data: impl Into<Bytes>) -> Self {
        Self { payload_type: PAYLOAD_UNREGISTERED, uuid: Some(uuid), data: data.into() }
    }

    fn payload_len(&self) -> usize {
        self.data.len() + if self.uuid.is_some() { 16 } else { 0 }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SeiError {
    #[error("not an SEI NAL unit (type {0})")]
    NotSei(u8),
    #[error("SEI message truncated: {0}")]
    Truncated(&'static str),
    #[error("user_data_unregistered shorter than its 16-byte UUID")]
    ShortUuid,
    #[error("access unit truncated: a NAL length runs past its end")]
    BadAccessUnit,
}

/// An SEI NAL unit (header byte included) carrying `msgs`, emulation-prevented, ready to be length-prefixed.
pub fn build_nal(msgs: &[SeiMessage]) -> Vec<u8> {
    let mut rbsp = Vec::with_capacity(msgs.iter().map(|m| m.payload_len() + 8).sum::<usize>() + 1);
    for m in msgs {
        put_ff_coded(&mut rbsp, m.payload_type as usize);
        put_ff_coded(&mut rbsp, m.payload_len());
        if let Some(u) = &m.uuid {
            rbsp.extend_from_slice(u);
        }
        rbsp.extend_from_slice(&m.data);
    }
    rbsp.push(0x80); // rbsp_stop_one_bit + alignment
    let mut nal = Vec::with_capacity(rbsp.len() + rbsp.len() / 64 + 2);
    nal.push(NAL_SEI); // forbidden_zero 0, nal_ref_idc 0, type 6
    escape_into(&rbsp, &mut nal);
    nal
}

/// The messages of an SEI NAL unit (header byte included).
pub fn parse_nal(nal: &[u8]) -> Result<Vec<SeiMessage>, SeiError> {
    let Some(&header) = nal.first() else { return Err(SeiError::Truncated("empty NAL unit")) };
    if header & 0x1f != NAL_SEI {
        return Err(SeiError::NotSei(header & 0x1f));
    }
    let rbsp = unescape(&nal[1..]);
    let mut at = 0;
    let mut out = Vec::new();
    // more_rbsp_data: stop at the trailing bits (0x80, possibly followed by cabac_zero_words / padding).
    while at < rbsp.len() && !(rbsp[at] == 0x80 && rbsp[at + 1..].iter().all(|b| *b == 0)) {
        let payload_type = ff_coded(&rbsp, &mut at).ok_or(SeiError::Truncated("payload type"))?;
        let size = ff_coded(&rbsp, &mut at).ok_or(SeiError::Truncated("payload size"))?;
        let body = rbsp.get(at..at + size).ok_or(SeiError::Truncated("payload"))?;
        at += size;
        let msg = if payload_type == PAYLOAD_UNREGISTERED as usize {
            let uuid: [u8; 16] = body.get(..16).ok_or(SeiError::ShortUuid)?.try_into().expect("16 bytes");
            SeiMessage {
                payload_type: payload_type as u32,
                uuid: Some(uuid),
                data: Bytes::copy_from_slice(&body[16..]),
            }
        } else {
            SeiMessage { payload_type: payload_type as u32, uuid: None, data: Bytes::copy_from_slice(body) }
        };
        out.push(msg);
    }
    Ok(out)
}

/// The NAL units of an AVCC access unit (`len_size`-byte big-endian lengths), all or an error.
pub fn nal_units(au: &[u8], len_size: usize) -> Result<Vec<&[u8]>, SeiError> {
    crate::media::avc::avcc_nalus(au, len_size as u8).collect::<Result<_, _>>().map_err(|_| SeiError::BadAccessUnit)
}

/// Every SEI message in an AVCC access unit, with how many SEI NAL units were malformed (skipped).
pub fn messages_in(au: &[u8], len_size: usize) -> (Vec<SeiMessage>, usize) {
    let mut out = Vec::new();
    let mut bad = 0;
    for nal in nal_units(au, len_size).unwrap_or_default() {
        if nal.first().is_some_and(|h| h & 0x1f == NAL_SEI) {
            match parse_nal(nal) {
                Ok(m) => out.extend(m),
                Err(_) => bad += 1,
            }
        }
    }
    (out, bad)
}

/// The access unit with an SEI NAL unit added where H.264 wants it: after an access unit delimiter if there
/// is one, else first. `None` if the access unit is malformed (it is then left as it is).
pub fn insert_into(au: &[u8], len_size: usize, sei_nal: &[u8]) -> Option<Bytes> {
    let nals = nal_units(au, len_size).ok()?;
    // Where the delimiter ends, in the access unit's bytes (empty units before it are skipped by the parse).
    let split = match nals.first() {
        Some(first) if first.first().is_some_and(|h| h & 0x1f == NAL_AUD) => {
            first.as_ptr() as usize - au.as_ptr() as usize + first.len()
        }
        _ => 0,
    };
    let mut out = Vec::with_capacity(au.len() + len_size + sei_nal.len());
    out.extend_from_slice(&au[..split]);
    let len = sei_nal.len() as u64;
    out.extend((0..len_size).rev().map(|i| (len >> (8 * i)) as u8));
    out.extend_from_slice(sei_nal);
    out.extend_from_slice(&au[split..]);
    Some(out.into())
}

/// `ff_byte`-coded value: as many 0xFF as fit, then the rest.
fn put_ff_coded(out: &mut Vec<u8>, mut v: usize) {
    while v >= 255 {
        out.push(0xFF);
        v -= 255;
    }
    out.push(v as u8);
}

fn ff_coded(b: &[u8], at: &mut usize) -> Option<usize> {
    let mut v = 0usize;
    loop {
        let byte = *b.get(*at)?;
        *at += 1;
        v = v.checked_add(byte as usize)?;
        if byte != 0xFF {
            return Some(v);
        }
    }
}

/// RBSP → NAL payload: a 0x03 after two zeros whenever the next byte is 0..=3.
fn escape_into(rbsp: &[u8], out: &mut Vec<u8>) {
    let mut zeros = 0;
    for &b in rbsp {
        if zeros >= 2 && b <= 3 {
            out.push(3);
            zeros = 0;
        }
        out.push(b);
        zeros = if b == 0 { zeros + 1 } else { 0 };
    }
}

/// NAL payload → RBSP: every 0x03 after two zeros removed.
fn unescape(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(b.len());
    let mut zeros = 0;
    for &x in b {
        if zeros >= 2 && x == 3 {
            zeros = 0;
            continue;
        }
        out.push(x);
        zeros = if x == 0 { zeros + 1 } else { 0 };
    }
    out
}

/// User-data SEI messages on their way through a re-encode (a transcoded rendition, a mix): taken from the
/// input's access units and attached to the first output access unit whose time covers theirs, so a message
/// reaches the output with the picture it came with (or the next one, if the encoder dropped that).
/// Timestamps are the caller's (ms on one timeline); at most [`Carry::MAX`] input frames' messages wait.
#[derive(Debug, Default)]
pub struct Carry {
    pending: std::collections::VecDeque<(i64, Vec<SeiMessage>)>,
    /// Messages given up because too many waited (an encoder that stopped producing).
    pub dropped: u64,
}

impl Carry {
    pub const MAX: usize = 64;

    /// Keeps the user-data messages of an input frame at `ts`.
    pub fn input(&mut self, ts: i64, msgs: Vec<SeiMessage>) {
        let msgs: Vec<_> = msgs.into_iter().filter(|m| is_user_data(m.payload_type)).collect();
        if msgs.is_empty() {
            return;
        }
        if self.pending.len() == Self::MAX {
            if let Some((_, lost)) = self.pending.pop_front() {
                self.dropped += lost.len() as u64;
            }
        }
        self.pending.push_back((ts, msgs));
    }

    /// Keeps the user-data messages of an input AVCC access unit at `ts`; returns how many of its SEI NAL
    /// units were malformed (skipped).
    pub fn input_au(&mut self, ts: i64, au: &[u8], len_size: usize) -> usize {
        let (msgs, bad) = messages_in(au, len_size);
        self.input(ts, msgs);
        bad
    }

    /// Whether any message waits (checked per output frame before doing anything).
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// The output AVCC access unit at `ts` with every waiting message from inputs at or before `ts` added as
    /// one SEI NAL unit (unchanged when none waits, or when it is malformed).
    pub fn attach(&mut self, ts: i64, au: Bytes, len_size: usize) -> Bytes {
        // Inputs come in decode order: with B-frames a later one may be due before an earlier one.
        let mut msgs = Vec::new();
        self.pending.retain_mut(|(t, m)| {
            let due = *t <= ts;
            if due {
                msgs.append(m);
            }
            !due
        });
        if msgs.is_empty() {
            return au;
        }
        insert_into(&au, len_size, &build_nal(&msgs)).unwrap_or(au)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UUID: [u8; 16] = *b"livegate-sei-000";

    #[test]
    fn messages_round_trip_with_emulation_prevention_and_long_sizes() {
        // 300 bytes (a two-byte size field: 255 + 45) full of start-code-like runs.
        let data: Vec<u8> = (0..300u32).map(|i| if i % 3 == 2 { (i % 4) as u8 } else { 0 }).collect();
        let msgs = vec![
            SeiMessage::unregistered(UUID, data.clone()),
            SeiMessage { payload_type: 300, uuid: None, data: Bytes::from_static(&[0, 0, 1, 0, 0, 0]) },
        ];
        let nal = build_nal(&msgs);
        assert_eq!(nal[0], NAL_SEI);
        // No start code (00 00 0x, x <= 2) survives in the NAL unit's payload.
        assert!(nal[1..].windows(3).all(|w| !(w[0] == 0 && w[1] == 0 && w[2] <= 2)), "unescaped start code");
        assert!(nal[1..].windows(3).any(|w| w == [0, 0, 3]), "escaped");
        // Size 316 = 0xFF + 61; type 300 = 0xFF + 45.
        assert_eq!(&nal[1..4], &[5, 0xFF, 61]);
        assert_eq!(parse_nal(&nal).unwrap(), msgs);
    }

    /// x264's own SEI, as it writes it in the first frame of every stream it encodes.
    #[test]
    fn x264s_version_message_parses() {
        let text = b"x264 - core 164 r3095 baf4a1d - H.264/MPEG-4 AVC codec - options: cabac=1\0";
        let uuid = [0xdc, 0x45, 0xe9, 0xbd, 0xe6, 0xd9, 0x48, 0xb7, 0x96, 0x2c, 0xd8, 0x20, 0xd9, 0x23, 0xee, 0xef];
        let mut rbsp = vec![5, (16 + text.len()) as u8];
        rbsp.extend_from_slice(&uuid);
        rbsp.extend_from_slice(text);
        rbsp.push(0x80);
        let mut nal = vec![6];
        escape_into(&rbsp, &mut nal);
        let m = parse_nal(&nal).unwrap();
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].uuid, Some(uuid));
        assert_eq!(&m[0].data[..], text);
    }

    #[test]
    fn malformed_messages_are_errors_not_panics() {
        assert_eq!(parse_nal(&[]), Err(SeiError::Truncated("empty NAL unit")));
        assert_eq!(parse_nal(&[0x65, 1, 2]), Err(SeiError::NotSei(5)));
        assert_eq!(parse_nal(&[6, 5, 40, 1, 2, 3]), Err(SeiError::Truncated("payload")));
        assert_eq!(parse_nal(&[6, 5, 4, 1, 2, 3, 4, 0x80]), Err(SeiError::ShortUuid));
        assert_eq!(parse_nal(&[6, 0xFF, 0xFF]), Err(SeiError::Truncated("payload type")));
        // A NAL that is only its trailing bits has no messages.
        assert_eq!(parse_nal(&[6, 0x80]), Ok(vec![]));
    }

    #[test]
    fn an_sei_goes_after_the_delimiter_and_is_found_again() {
        let sei = build_nal(&[SeiMessage::unregistered(UUID, &b"hello"[..])]);
        let idr = [0x65, 0x88, 0x84];
        let mut au = vec![0, 0, 0, 2, 0x09, 0xf0];
        au.extend_from_slice(&[0, 0, 0, 3]);
        au.extend_from_slice(&idr);
        let out = insert_into(&au, 4, &sei).unwrap();
        let nals = nal_units(&out, 4).unwrap();
        assert_eq!(nals.len(), 3);
        assert_eq!(nals[0], &[0x09, 0xf0]);
        assert_eq!(nals[1], &sei[..]);
        assert_eq!(nals[2], &idr);
        let (found, bad) = messages_in(&out, 4);
        assert_eq!((found[0].data.as_ref(), bad), (&b"hello"[..], 0));
        // Without a delimiter it goes first; a malformed access unit is left alone.
        let bare = [0, 0, 0, 3, 0x65, 0x88, 0x84];
        assert_eq!(nal_units(&insert_into(&bare, 4, &sei).unwrap(), 4).unwrap()[0], &sei[..]);
        assert_eq!(insert_into(&[0, 0, 0, 9, 1], 4, &sei), None);
        // A malformed SEI among good NAL units is counted, the rest still found.
        let mut two = insert_into(&bare, 4, &[6, 5, 40, 1]).unwrap().to_vec();
        two = insert_into(&two, 4, &sei).unwrap().to_vec();
        let (found, bad) = messages_in(&two, 4);
        assert_eq!((found.len(), bad), (1, 1));
    }

    #[test]
    fn carried_messages_land_on_the_output_frame_covering_their_time() {
        let au = |nals: &[&[u8]]| -> Bytes {
            let mut v = Vec::new();
            for n in nals {
                v.extend_from_slice(&(n.len() as u32).to_be_bytes());
                v.extend_from_slice(n);
            }
            v.into()
        };
        let ours = SeiMessage::unregistered([9; 16], &b"at 40"[..]);
        let timing = SeiMessage { payload_type: 1, uuid: None, data: Bytes::from_static(&[1, 2]) };
        let input = au(&[&build_nal(&[ours.clone(), timing]), &[0x41, 0x9a]]);
        let mut c = Carry::default();
        assert_eq!(c.input_au(40, &input, 4), 0);
        c.input_au(73, &au(&[&[0x41, 0x9b]]), 4); // no SEI: nothing kept
                                                  // A B-frame's message (decode order after a later picture) is due at its own time.
        let b_frame = SeiMessage::unregistered([8; 16], &b"b at 45"[..]);
        c.input(120, vec![SeiMessage::unregistered([7; 16], &b"p at 120"[..])]);
        c.input(45, vec![b_frame.clone()]);
        assert!(!c.is_empty());
        // An output frame before the message's time does not take it; the one at its time (or after) does,
        // without the decoding-process message (picture timing belongs to the input's encoding).
        let out = au(&[&[0x09, 0x10], &[0x65, 0x88]]);
        assert_eq!(c.attach(33, out.clone(), 4), out);
        let with = c.attach(47, out.clone(), 4);
        assert_eq!(messages_in(&with, 4).0, vec![ours, b_frame]);
        let nals = nal_units(&with, 4).unwrap();
        assert_eq!(nals[0], &[0x09, 0x10], "after the access unit delimiter");
        assert_eq!(messages_in(&c.attach(120, out.clone(), 4), 4).0.len(), 1);
        assert!(c.is_empty());
        assert_eq!(c.attach(80, out.clone(), 4), out, "given once");
        // Bounded: an encoder that stops taking frames costs at most MAX waiting frames.
        for i in 0..(Carry::MAX as i64 + 5) {
            c.input(1000 + i, vec![SeiMessage::unregistered([1; 16], &b"x"[..])]);
        }
        assert_eq!(c.dropped, 5);
    }
}
