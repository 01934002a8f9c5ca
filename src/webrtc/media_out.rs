//! A WHEP viewer's RTP, protected and sent by livegate itself rather than through webrtc-rs (issue 16).
//!
//! webrtc-rs walks every outgoing packet through a driver task, eight pipeline handlers and an interceptor
//! chain: ~70 % of a viewer's CPU (docs/notes/whep-cost.md). Here the stream's RTP payloads are made once for
//! all viewers (`Packet::rtp_payloads`); each viewer's copy gets its 12-byte header and its SRTP protection
//! from the keys its DTLS handshake negotiated, and goes out of the shared UDP socket in one batch per frame.
//! webrtc-rs keeps ICE, DTLS, RTCP in, and data channels. A track's RTCP out (its sender reports) and its
//! NACK retransmissions are made here too, since its packets no longer pass webrtc-rs' interceptors.
//!
//! Sans-IO: a [`TrackOut`] leaves protected datagrams in a [`Datagrams`] and takes the time as an argument;
//! the caller sends them (`super::udp_batch`).

use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use rtc::peer_connection::transport::SrtpLocalKeying;
use rtc::rtcp::sender_report::SenderReport;
use rtc::shared::marshal::Marshal;
use rtc::srtp::context::Context;

/// Packets kept per track for NACK retransmission: 256 is about 1.6 s of 720p video at 1.5 Mbit/s, several
/// round trips (a NACK comes one RTT after the loss; a retransmission later than that is past the viewer's
/// jitter buffer anyway). Each entry holds a reference to the stream's shared payload, not a copy.
pub const HISTORY: usize = 256;

/// A track's first RTP sequence number: random (RFC 3550 §5.1), but below 2^15, as libwebrtc picks it. An SRTP
/// receiver takes its rollover counter as 0 at the first packet it decrypts (RFC 3711 §3.3.1); a viewer that
/// misses the first packets (its receivers not ready when the join burst arrives) and first decrypts one after a
/// wrap is a whole rollover behind, and then authenticates nothing, for good. Below 2^15 a wrap comes after
/// 32,768 packets at the soonest, long after any viewer is ready.
pub fn first_sequence_number() -> u16 {
    rand::random::<u16>() & 0x7fff
}

/// How often a track sends a sender report (browsers sync audio to video by them).
pub const REPORT_EVERY: Duration = Duration::from_secs(1);

const RTP_HEADER: usize = 12;

#[derive(Debug, thiserror::Error)]
pub enum MediaOutError {
    #[error("SRTP/RTCP: {0}")]
    Rtc(#[from] rtc::shared::error::Error),
    #[error("no crypto provider: {0}")]
    Crypto(#[from] rtc::crypto::CryptoError),
}

/// Protected datagrams for one peer, back to back in one buffer.
#[derive(Debug, Default)]
pub struct Datagrams {
    pub buf: Vec<u8>,
    /// Where each datagram ends in `buf`.
    pub ends: Vec<usize>,
}

impl Datagrams {
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    pub fn clear(&mut self) {
        self.buf.clear();
        self.ends.clear();
    }

    /// The datagrams in order (the sender reads `buf` and `ends` directly).
    #[cfg(test)]
    pub fn iter(&self) -> impl Iterator<Item = &[u8]> {
        let mut start = 0;
        self.ends.iter().map(move |&end| {
            let d = &self.buf[start..end];
            start = end;
            d
        })
    }

    fn push(&mut self, d: &[u8]) {
        self.buf.extend_from_slice(d);
        self.ends.push(self.buf.len());
    }
}

/// A sent packet, as much as a retransmission needs: the payload is the stream's shared one.
#[derive(Debug, Clone)]
struct Sent {
    seq: u16,
    timestamp: u32,
    marker: bool,
    payload: Bytes,
}

/// One outgoing track of one viewer: its RTP numbering, SRTP state, history and report counters.
pub struct TrackOut {
    srtp: Context,
    ssrc: u32,
    payload_type: u8,
    clock_rate: u32,
    seq: u16,
    history: Vec<Option<Sent>>,
    packets: u32,
    octets: u32,
    /// The newest packet's timestamp and when it was sent: a report's RTP time extrapolates from it.
    last: Option<(u32, Instant)>,
    last_report: Option<Instant>,
    plain: Vec<u8>,
}

impl std::fmt::Debug for TrackOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrackOut").field("ssrc", &self.ssrc).field("seq", &self.seq).finish_non_exhaustive()
    }
}

impl TrackOut {
    /// A track protected with the session's local SRTP keys. Each track has its own SRTP context: the
    /// contexts share the key, and SRTP keeps per-SSRC state, so tracks never need to share one.
    pub fn new(
        keying: &SrtpLocalKeying,
        ssrc: u32,
        payload_type: u8,
        clock_rate: u32,
        first_seq: u16,
        history: usize,
    ) -> Result<Self, MediaOutError> {
        let provider = rtc::crypto::default_provider()?;
        let srtp =
            Context::new(&keying.master_key, &keying.master_salt, keying.profile, None, None, provider.crypto())?;
        Ok(Self {
            srtp,
            ssrc,
            payload_type,
            clock_rate,
            seq: first_seq,
            history: vec![None; history],
            packets: 0,
            octets: 0,
            last: None,
            last_report: None,
            plain: Vec::with_capacity(1500),
        })
    }

    pub fn ssrc(&self) -> u32 {
        self.ssrc
    }

    /// Numbers, protects and queues one RTP packet.
    pub fn push(
        &mut self,
        payload: &Bytes,
        timestamp: u32,
        marker: bool,
        now: Instant,
        out: &mut Datagrams,
    ) -> Result<(), MediaOutError> {
        let seq = self.seq;
        self.seq = seq.wrapping_add(1);
        self.protect(seq, timestamp, marker, payload, out)?;
        let slots = self.history.len();
        if let Some(slot) = self.history.get_mut(usize::from(seq) % slots.max(1)) {
            *slot = Some(Sent { seq, timestamp, marker, payload: payload.clone() });
        }
        self.packets = self.packets.wrapping_add(1);
        self.octets = self.octets.wrapping_add(payload.len() as u32);
        self.last = Some((timestamp, now));
        Ok(())
    }

    /// Queues again the packets a NACK names that are still in the history; returns how many.
    pub fn resend(&mut self, seqs: &[u16], out: &mut Datagrams) -> Result<usize, MediaOutError> {
        let mut n = 0;
        for &seq in seqs {
            let slot = usize::from(seq) % self.history.len().max(1);
            let Some(s) = self.history.get(slot).cloned().flatten().filter(|s| s.seq == seq) else { continue };
            self.protect(s.seq, s.timestamp, s.marker, &s.payload, out)?;
            n += 1;
        }
        Ok(n)
    }

    /// A sender report, when one is due (every [`REPORT_EVERY`] once the track has sent something).
    pub fn report_if_due(
        &mut self,
        now: Instant,
        wall: SystemTime,
        out: &mut Datagrams,
    ) -> Result<bool, MediaOutError> {
        let Some((ts, at)) = self.last else { return Ok(false) };
        if self.last_report.is_some_and(|r| now.saturating_duration_since(r) < REPORT_EVERY) {
            return Ok(false);
        }
        self.last_report = Some(now);
        let elapsed = now.saturating_duration_since(at);
        let rtp_time = ts.wrapping_add((elapsed.as_secs_f64() * f64::from(self.clock_rate)) as u32);
        let sr = SenderReport {
            ssrc: self.ssrc,
            ntp_time: ntp(wall),
            rtp_time,
            packet_count: self.packets,
            octet_count: self.octets,
            reports: vec![],
            profile_extensions: Bytes::new(),
        };
        let plain = sr.marshal()?;
        let protected = self.srtp.encrypt_rtcp(&plain)?;
        out.push(&protected);
        Ok(true)
    }

    fn protect(
        &mut self,
        seq: u16,
        timestamp: u32,
        marker: bool,
        payload: &[u8],
        out: &mut Datagrams,
    ) -> Result<(), MediaOutError> {
        let header = rtc::rtp::header::Header {
            version: 2,
            marker,
            payload_type: self.payload_type,
            sequence_number: seq,
            timestamp,
            ssrc: self.ssrc,
            ..Default::default()
        };
        self.plain.clear();
        self.plain.push(0x80);
        self.plain.push((u8::from(marker) << 7) | (self.payload_type & 0x7f));
        self.plain.extend_from_slice(&seq.to_be_bytes());
        self.plain.extend_from_slice(&timestamp.to_be_bytes());
        self.plain.extend_from_slice(&self.ssrc.to_be_bytes());
        debug_assert_eq!(self.plain.len(), RTP_HEADER);
        self.plain.extend_from_slice(payload);
        let protected = self.srtp.encrypt_rtp_with_header(&self.plain, &header)?;
        out.push(&protected);
        Ok(())
    }
}

/// A wall-clock time as a 64-bit NTP timestamp (RFC 3550 §4).
pub fn ntp(wall: SystemTime) -> u64 {
    let d = wall.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() + 2_208_988_800;
    let frac = (u64::from(d.subsec_nanos()) << 32) / 1_000_000_000;
    (secs << 32) | frac
}

/// A session's keys for tests: fixed local and remote keys of `profile`.
#[cfg(test)]
pub(crate) fn test_keying(profile: rtc::srtp::protection_profile::ProtectionProfile) -> SrtpLocalKeying {
    SrtpLocalKeying {
        profile,
        master_key: vec![7; profile.key_len()],
        master_salt: vec![9; profile.salt_len()],
        peer_addr: "127.0.0.1:5000".parse().unwrap(),
        remote_master_key: vec![3; profile.key_len()],
        remote_master_salt: vec![4; profile.salt_len()],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtc::shared::marshal::Unmarshal;
    use rtc::srtp::protection_profile::ProtectionProfile;

    use super::test_keying as keying;

    fn receiver(k: &SrtpLocalKeying) -> Context {
        let provider = rtc::crypto::default_provider().unwrap();
        Context::new(&k.master_key, &k.master_salt, k.profile, None, None, provider.crypto()).unwrap()
    }

    #[test]
    fn a_peer_with_the_keys_reads_the_packets_and_their_retransmissions() {
        for profile in [ProtectionProfile::AeadAes128Gcm, ProtectionProfile::Aes128CmHmacSha1_80] {
            let k = keying(profile);
            let mut t = TrackOut::new(&k, 0x1234, 102, 90_000, 65_534, HISTORY).unwrap();
            let mut out = Datagrams::default();
            let now = Instant::now();
            let payloads: Vec<Bytes> = (0..4u8).map(|i| Bytes::from(vec![i; 100 + usize::from(i)])).collect();
            for (i, p) in payloads.iter().enumerate() {
                t.push(p, 3000, i == 3, now, &mut out).unwrap();
            }
            // Lost: the two around the sequence wrap.
            assert_eq!(t.resend(&[65_535, 0, 77], &mut out).unwrap(), 2);
            assert_eq!(out.len(), 6);
            let mut rx = receiver(&k);
            let mut got = Vec::new();
            for d in out.iter().take(4) {
                let plain = rx.decrypt_rtp(d).unwrap();
                let mut b = &plain[..];
                let h = rtc::rtp::header::Header::unmarshal(&mut b).unwrap();
                got.push((h.sequence_number, h.marker, h.payload_type, h.ssrc, h.timestamp, b.to_vec()));
            }
            let seqs: Vec<u16> = got.iter().map(|g| g.0).collect();
            assert_eq!(seqs, [65_534, 65_535, 0, 1], "{profile:?}");
            assert!(got[3].1 && !got[0].1);
            assert!(got.iter().all(|g| g.2 == 102 && g.3 == 0x1234 && g.4 == 3000));
            assert_eq!(got[2].5, payloads[2].to_vec());
            // A retransmission is the same packet again: a fresh receiver (one that lost the first copies) reads it.
            let mut rx2 = receiver(&k);
            let again: Vec<_> = out.iter().skip(4).map(|d| rx2.decrypt_rtp(d).unwrap()).collect();
            assert_eq!(&again[0][RTP_HEADER..], &payloads[1][..]);
            assert_eq!(&again[1][RTP_HEADER..], &payloads[2][..]);
        }
    }

    #[test]
    fn reports_come_once_a_second_with_the_counts_and_extrapolated_rtp_time() {
        let k = keying(ProtectionProfile::AeadAes128Gcm);
        let mut t = TrackOut::new(&k, 42, 111, 48_000, 1, 0).unwrap();
        let mut out = Datagrams::default();
        let t0 = Instant::now();
        let wall = SystemTime::now();
        assert!(!t.report_if_due(t0, wall, &mut out).unwrap(), "nothing sent yet: no report");
        t.push(&Bytes::from_static(&[1; 50]), 10_000, false, t0, &mut out).unwrap();
        t.push(&Bytes::from_static(&[2; 70]), 10_960, false, t0, &mut out).unwrap();
        out.clear();
        let later = t0 + Duration::from_millis(500);
        assert!(t.report_if_due(later, wall, &mut out).unwrap());
        assert!(!t.report_if_due(later + Duration::from_millis(999), wall, &mut out).unwrap());
        assert!(t.report_if_due(later + REPORT_EVERY, wall, &mut out).unwrap());
        let mut rx = receiver(&k);
        let plain = rx.decrypt_rtcp(out.iter().next().unwrap()).unwrap();
        let pkts = rtc::rtcp::packet::unmarshal(&mut &plain[..]).unwrap();
        let sr = pkts[0].as_any().downcast_ref::<SenderReport>().unwrap();
        assert_eq!((sr.ssrc, sr.packet_count, sr.octet_count), (42, 2, 120));
        assert_eq!(sr.rtp_time, 10_960 + 24_000, "half a second after the last packet at 48 kHz");
        assert_eq!(sr.ntp_time, ntp(wall));
        // Without a history (audio: no NACK negotiated) a NACK finds nothing to send again.
        out.clear();
        assert_eq!(t.resend(&[1, 2], &mut out).unwrap(), 0);
        assert!(out.is_empty());
    }

    #[test]
    fn first_sequence_numbers_leave_a_rollover_far_off() {
        let firsts: Vec<u16> = (0..10_000).map(|_| first_sequence_number()).collect();
        assert!(firsts.iter().all(|&s| s < 0x8000));
        // Still random: spread over the range, not a constant.
        assert!(firsts.iter().any(|&s| s < 0x1000) && firsts.iter().any(|&s| s > 0x7000));
    }

    #[test]
    fn the_history_forgets_what_was_overwritten() {
        let k = keying(ProtectionProfile::AeadAes128Gcm);
        let mut t = TrackOut::new(&k, 1, 102, 90_000, 0, HISTORY).unwrap();
        let mut out = Datagrams::default();
        let p = Bytes::from_static(&[0; 10]);
        for _ in 0..HISTORY + 3 {
            t.push(&p, 0, false, Instant::now(), &mut out).unwrap();
        }
        out.clear();
        assert_eq!(t.resend(&[0, 1, 2, 3, HISTORY as u16 + 2], &mut out).unwrap(), 2, "3 and the newest remain");
    }
}
