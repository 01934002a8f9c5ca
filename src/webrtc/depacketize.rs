//! RTP payloads from WebRTC publishers back into frames: H.264 (RFC 6184, packetization-mode 1: single NAL
//! units, STAP-A, FU-A) and VP8 (RFC 7741). Pure code over in-order packets; loss is signalled by the caller
//! (the reorder buffer), and a frame that lost a packet is dropped whole rather than handed to a decoder.

use bytes::{Bytes, BytesMut};

/// An access unit: every NAL unit with one RTP timestamp, without start codes or length prefixes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct H264AccessUnit {
    pub rtp_ts: u32,
    pub nalus: Vec<Bytes>,
    /// Contains an IDR slice (NAL type 5).
    pub keyframe: bool,
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum DepacketizeError {
    #[error("empty RTP payload")]
    Empty,
    #[error("H.264 NAL type {0} is not supported (packetization-mode 1 carries 1-23, STAP-A and FU-A)")]
    UnsupportedNal(u8),
    #[error("STAP-A aggregate is truncated")]
    BadStap,
    #[error("FU-A fragment is truncated")]
    BadFu,
    #[error("VP8 payload descriptor is truncated")]
    BadVp8,
}

/// Reassembles H.264 access units. Feed packets in sequence order; `lost` says packets were missing before
/// this one.
#[derive(Debug, Default)]
pub struct H264Depacketizer {
    ts: Option<u32>,
    nalus: Vec<Bytes>,
    fu: Option<BytesMut>,
    /// The unit being built lost a packet: it is dropped when complete.
    damaged: bool,
}

impl H264Depacketizer {
    /// Returns the access units this packet completed (the previous one when the timestamp moved on without a
    /// marker, and this one when the marker bit closes it). Damaged units are dropped, counted in the
    /// returned `dropped` count.
    pub fn push(
        &mut self,
        rtp_ts: u32,
        marker: bool,
        payload: &Bytes,
        lost: bool,
    ) -> (Vec<H264AccessUnit>, usize, Option<DepacketizeError>) {
        let mut out = Vec::new();
        let mut dropped = 0;
        if self.ts.is_some_and(|t| t != rtp_ts) {
            // The previous unit's marker packet never came.
            self.damaged |= self.fu.is_some();
            self.finish(&mut out, &mut dropped);
        }
        if lost {
            self.damaged = true;
            self.fu = None;
        }
        self.ts = Some(rtp_ts);
        let err = self.parse(payload).err();
        if err.is_some() {
            self.damaged = true;
        }
        if marker {
            self.finish(&mut out, &mut dropped);
        }
        (out, dropped, err)
    }

    fn finish(&mut self, out: &mut Vec<H264AccessUnit>, dropped: &mut usize) {
        let nalus = std::mem::take(&mut self.nalus);
        let ts = self.ts.take();
        let damaged = std::mem::replace(&mut self.damaged, false) || self.fu.take().is_some();
        match ts {
            Some(rtp_ts) if !nalus.is_empty() && !damaged => {
                let keyframe = nalus.iter().any(|n| n.first().is_some_and(|b| b & 0x1F == 5));
                out.push(H264AccessUnit { rtp_ts, nalus, keyframe });
            }
            Some(_) if !nalus.is_empty() || damaged => *dropped += 1,
            _ => {}
        }
    }

    fn parse(&mut self, p: &Bytes) -> Result<(), DepacketizeError> {
        let first = *p.first().ok_or(DepacketizeError::Empty)?;
        match first & 0x1F {
            1..=23 => {
                self.fu = None;
                self.nalus.push(p.clone());
            }
            24 => {
                let mut i = 1;
                while i < p.len() {
                    if i + 2 > p.len() {
                        return Err(DepacketizeError::BadStap);
                    }
                    let len = u16::from_be_bytes([p[i], p[i + 1]]) as usize;
                    i += 2;
                    if len == 0 || i + len > p.len() {
                        return Err(DepacketizeError::BadStap);
                    }
                    self.nalus.push(p.slice(i..i + len));
                    i += len;
                }
            }
            28 => {
                if p.len() < 3 {
                    return Err(DepacketizeError::BadFu);
                }
                let fu_header = p[1];
                let (start, end) = (fu_header & 0x80 != 0, fu_header & 0x40 != 0);
                if start {
                    let mut nal = BytesMut::with_capacity(p.len() * 4);
                    nal.extend_from_slice(&[(first & 0xE0) | (fu_header & 0x1F)]);
                    nal.extend_from_slice(&p[2..]);
                    self.fu = Some(nal);
                } else if let Some(nal) = self.fu.as_mut() {
                    nal.extend_from_slice(&p[2..]);
                } else {
                    // A middle or end fragment whose start was lost.
                    self.damaged = true;
                    return Ok(());
                }
                if end {
                    if let Some(nal) = self.fu.take() {
                        self.nalus.push(nal.freeze());
                    }
                }
            }
            other => return Err(DepacketizeError::UnsupportedNal(other)),
        }
        Ok(())
    }
}

/// One VP8 frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vp8Frame {
    pub rtp_ts: u32,
    pub data: Bytes,
    pub keyframe: bool,
}

/// Reassembles VP8 frames from RTP (RFC 7741 §4.2 payload descriptor).
#[derive(Debug, Default)]
pub struct Vp8Depacketizer {
    ts: Option<u32>,
    buf: Option<BytesMut>,
    keyframe: bool,
    damaged: bool,
}

impl Vp8Depacketizer {
    pub fn push(
        &mut self,
        rtp_ts: u32,
        marker: bool,
        payload: &[u8],
        lost: bool,
    ) -> (Option<Vp8Frame>, usize, Option<DepacketizeError>) {
        let mut dropped = 0;
        let mut out = None;
        if self.ts.is_some_and(|t| t != rtp_ts) && self.buf.is_some() {
            self.buf = None;
            dropped += 1;
        }
        if lost {
            self.damaged = true;
        }
        self.ts = Some(rtp_ts);
        let (start, data) = match vp8_payload(payload) {
            Ok(v) => v,
            Err(e) => {
                self.damaged = true;
                return (None, dropped, Some(e));
            }
        };
        if start {
            if self.buf.take().is_some() {
                dropped += 1;
            }
            self.damaged = false;
            // VP8 frame tag (RFC 6386 §9.1): bit 0 of the first byte is 0 for a key frame.
            self.keyframe = data.first().is_some_and(|b| b & 1 == 0);
            self.buf = Some(BytesMut::with_capacity(data.len() * 4));
        }
        match self.buf.as_mut() {
            Some(b) => b.extend_from_slice(data),
            None => self.damaged = true,
        }
        if marker {
            match self.buf.take() {
                Some(b) if !self.damaged && !b.is_empty() => {
                    out = Some(Vp8Frame { rtp_ts, data: b.freeze(), keyframe: self.keyframe });
                }
                _ => dropped += 1,
            }
            self.damaged = false;
            self.ts = None;
        }
        (out, dropped, None)
    }
}

/// Splits a VP8 RTP payload into (starts a frame, VP8 bytes).
fn vp8_payload(p: &[u8]) -> Result<(bool, &[u8]), DepacketizeError> {
    let bad = DepacketizeError::BadVp8;
    let b0 = *p.first().ok_or(DepacketizeError::Empty)?;
    let mut i = 1;
    if b0 & 0x80 != 0 {
        let x = *p.get(i).ok_or(bad.clone())?;
        i += 1;
        if x & 0x80 != 0 {
            // PictureID: 7 or 15 bits.
            let pid = *p.get(i).ok_or(bad.clone())?;
            i += if pid & 0x80 != 0 { 2 } else { 1 };
        }
        if x & 0x40 != 0 {
            i += 1; // TL0PICIDX
        }
        if x & 0x30 != 0 {
            i += 1; // TID/Y/KEYIDX
        }
    }
    if i >= p.len() {
        return Err(bad);
    }
    let start = b0 & 0x10 != 0 && b0 & 0x07 == 0;
    Ok((start, &p[i..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(v: &[u8]) -> Bytes {
        Bytes::copy_from_slice(v)
    }

    #[test]
    fn h264_single_stap_and_fu() {
        let mut d = H264Depacketizer::default();
        // STAP-A with SPS and PPS, then an IDR in three FU-A fragments, marker on the last.
        let stap = b(&[24, 0, 2, 0x67, 0xAA, 0, 2, 0x68, 0xBB]);
        assert!(d.push(90, false, &stap, false).0.is_empty());
        assert!(d.push(90, false, &b(&[0x7C, 0x85, 1, 2]), false).0.is_empty());
        assert!(d.push(90, false, &b(&[0x7C, 0x05, 3]), false).0.is_empty());
        let (out, dropped, err) = d.push(90, true, &b(&[0x7C, 0x45, 4]), false);
        assert_eq!((dropped, err), (0, None));
        assert_eq!(out.len(), 1);
        let au = &out[0];
        assert!(au.keyframe);
        assert_eq!(au.nalus, vec![b(&[0x67, 0xAA]), b(&[0x68, 0xBB]), b(&[0x65, 1, 2, 3, 4])]);
        // A single non-IDR slice.
        let (out, _, _) = d.push(180, true, &b(&[0x41, 9]), false);
        assert_eq!(out, vec![H264AccessUnit { rtp_ts: 180, nalus: vec![b(&[0x41, 9])], keyframe: false }]);
    }

    #[test]
    fn h264_loss_drops_the_unit() {
        let mut d = H264Depacketizer::default();
        d.push(90, false, &b(&[0x7C, 0x85, 1]), false);
        // The middle fragment went missing: the caller says so with the next packet.
        let (out, dropped, _) = d.push(90, true, &b(&[0x7C, 0x45, 4]), true);
        assert!(out.is_empty());
        assert_eq!(dropped, 1);
        // The next unit is fine again.
        let (out, _, _) = d.push(180, true, &b(&[0x41, 9]), false);
        assert_eq!(out.len(), 1);
    }

    #[test]
    fn h264_missing_marker_is_closed_by_the_next_timestamp() {
        let mut d = H264Depacketizer::default();
        d.push(90, false, &b(&[0x41, 1]), false);
        let (out, _, _) = d.push(180, true, &b(&[0x41, 2]), false);
        assert_eq!(out.iter().map(|a| a.rtp_ts).collect::<Vec<_>>(), vec![90, 180]);
    }

    #[test]
    fn h264_garbage_is_an_error_not_a_panic() {
        let mut d = H264Depacketizer::default();
        assert_eq!(d.push(1, true, &b(&[]), false).2, Some(DepacketizeError::Empty));
        assert_eq!(d.push(2, true, &b(&[24, 0, 9, 1]), false).2, Some(DepacketizeError::BadStap));
        assert_eq!(d.push(3, true, &b(&[0x7C]), false).2, Some(DepacketizeError::BadFu));
        assert_eq!(d.push(4, true, &b(&[25, 1]), false).2, Some(DepacketizeError::UnsupportedNal(25)));
    }

    #[test]
    fn vp8_frames_and_keyframes() {
        let mut d = Vp8Depacketizer::default();
        // X=1, S=1, PID=0; I=1 with a 15-bit picture id; key frame (P bit 0).
        let (out, _, _) = d.push(90, false, &[0x90, 0x80, 0x81, 0x23, 0x10, 0xAA], false);
        assert!(out.is_none());
        let (out, _, _) = d.push(90, true, &[0x80, 0x80, 0x81, 0x23, 0xBB], false);
        assert_eq!(out, Some(Vp8Frame { rtp_ts: 90, data: b(&[0x10, 0xAA, 0xBB]), keyframe: true }));
        // A one-packet inter frame without extensions.
        let (out, _, _) = d.push(180, true, &[0x10, 0x01, 0x02], false);
        assert_eq!(out, Some(Vp8Frame { rtp_ts: 180, data: b(&[0x01, 0x02]), keyframe: false }));
        // Loss inside a frame drops it.
        d.push(270, false, &[0x10, 0x01], false);
        let (out, dropped, _) = d.push(270, true, &[0x00, 0x02], true);
        assert_eq!((out, dropped), (None, 1));
    }

    proptest::proptest! {
        #[test]
        fn never_panics(packets in proptest::collection::vec((proptest::collection::vec(0u8..=255, 0..40), proptest::bool::ANY, proptest::bool::ANY, 0u32..4), 0..50)) {
            let mut h = H264Depacketizer::default();
            let mut v = Vp8Depacketizer::default();
            for (p, marker, lost, ts) in packets {
                let _ = h.push(ts, marker, &Bytes::from(p.clone()), lost);
                let _ = v.push(ts, marker, &p, lost);
            }
        }
    }
}
