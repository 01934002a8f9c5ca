//! A WHEP viewer's SRTCP, read by livegate itself on the control thread: receiver reports, NACKs and keyframe
//! requests for the tracks livegate sends it. Through webrtc-rs each of these datagrams took its session's
//! driver loop, channels and async mutexes (~50 µs a datagram, two thirds of the datagrams a viewer sends);
//! here it is one SRTCP authentication and decryption and a parse. Sans-IO: bytes in, `Feedback` out.

use rtc::peer_connection::transport::SrtpLocalKeying;
use rtc::srtp::context::Context;
use rtc::srtp::option::srtcp_replay_protection;

use super::Feedback;

/// How many SRTCP indexes back a replayed packet is still recognised (as webrtc-rs' own session does).
const REPLAY_WINDOW: usize = 64;

/// Why a datagram gave no feedback.
#[derive(Debug, thiserror::Error)]
pub enum RtcpInError {
    #[error("no crypto provider: {0}")]
    Crypto(#[from] rtc::crypto::CryptoError),
    #[error("SRTCP/RTCP: {0}")]
    Rtc(#[from] rtc::shared::error::Error),
}

/// The viewer's side of a session's SRTP keys, for its RTCP.
pub struct RtcpIn {
    srtcp: Context,
}

impl std::fmt::Debug for RtcpIn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RtcpIn").finish_non_exhaustive()
    }
}

impl RtcpIn {
    pub fn new(keying: &SrtpLocalKeying) -> Result<Self, RtcpInError> {
        let provider = rtc::crypto::default_provider()?;
        let srtcp = Context::new(
            &keying.remote_master_key,
            &keying.remote_master_salt,
            keying.profile,
            None,
            Some(srtcp_replay_protection(REPLAY_WINDOW)),
            provider.crypto(),
        )?;
        Ok(Self { srtcp })
    }

    /// What one SRTCP datagram says about the track sent with `ssrc` (`now_ntp_mid` as for `feedback`). A
    /// datagram that fails authentication, or is a replay, is an error and changes nothing.
    pub(crate) fn read(&mut self, datagram: &[u8], ssrc: u32, now_ntp_mid: u32) -> Result<Feedback, RtcpInError> {
        let plain = self.srtcp.decrypt_rtcp(datagram)?;
        let packets = rtc::rtcp::packet::unmarshal(&mut &plain[..])?;
        Ok(super::feedback(&packets, ssrc, now_ntp_mid))
    }
}

/// Whether a datagram on a WebRTC port is RTCP rather than RTP (RFC 5761 §4: its second byte, the RTCP
/// packet type, is 192-223; RTP's marker and payload type never are, by the payload types WebRTC uses).
pub fn is_rtcp(datagram: &[u8]) -> bool {
    datagram.len() >= 8 && (192..=223).contains(&datagram[1])
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
    use rtc::rtcp::receiver_report::ReceiverReport;
    use rtc::rtcp::reception_report::ReceptionReport;
    use rtc::rtcp::transport_feedbacks::transport_layer_nack::{NackPair, TransportLayerNack};
    use rtc::srtp::protection_profile::ProtectionProfile;

    const VIDEO: u32 = 0x1234;

    use crate::webrtc::media_out::test_keying as keying;

    /// The viewer's end: it protects with what is the remote key on ours.
    fn viewer(k: &SrtpLocalKeying) -> Context {
        let provider = rtc::crypto::default_provider().unwrap();
        Context::new(&k.remote_master_key, &k.remote_master_salt, k.profile, None, None, provider.crypto()).unwrap()
    }

    fn compound() -> Vec<u8> {
        let rr = ReceiverReport {
            ssrc: 1,
            reports: vec![
                ReceptionReport { ssrc: VIDEO, fraction_lost: 64, ..Default::default() },
                ReceptionReport { ssrc: 0x9999, fraction_lost: 255, ..Default::default() },
            ],
            ..Default::default()
        };
        let nack = TransportLayerNack {
            sender_ssrc: 1,
            media_ssrc: VIDEO,
            nacks: vec![NackPair { packet_id: 100, lost_packets: 0b101 }],
        };
        let pli = PictureLossIndication { sender_ssrc: 1, media_ssrc: VIDEO };
        let packets: Vec<Box<dyn rtc::rtcp::Packet>> = vec![Box::new(rr), Box::new(nack), Box::new(pli)];
        rtc::rtcp::packet::marshal(&packets).unwrap().to_vec()
    }

    #[test]
    fn a_viewers_report_nacks_and_keyframe_request_are_read_for_our_track() {
        for profile in [ProtectionProfile::AeadAes128Gcm, ProtectionProfile::Aes128CmHmacSha1_80] {
            let k = keying(profile);
            let mut ours = RtcpIn::new(&k).unwrap();
            let datagram = viewer(&k).encrypt_rtcp(&compound()).unwrap();
            assert!(is_rtcp(&datagram));
            let f = ours.read(&datagram, VIDEO, 0).unwrap();
            assert!(f.keyframe, "{profile:?}");
            assert_eq!(f.nacks, vec![100, 101, 103], "{profile:?}");
            assert_eq!(f.loss_centi_percent, Some(2500), "our track's report only: {profile:?}");
            // The same datagram again is a replay: refused, not read twice.
            assert!(ours.read(&datagram, VIDEO, 0).is_err());
        }
    }

    #[test]
    fn a_forged_or_foreign_datagram_is_refused() {
        let k = keying(ProtectionProfile::AeadAes128Gcm);
        let mut ours = RtcpIn::new(&k).unwrap();
        let mut datagram = viewer(&k).encrypt_rtcp(&compound()).unwrap().to_vec();
        let last = datagram.len() - 1;
        datagram[last] ^= 1;
        assert!(ours.read(&datagram, VIDEO, 0).is_err(), "a flipped tag bit");
        // Protected with our own (local) key, as a reflection of our packets would be.
        let provider = rtc::crypto::default_provider().unwrap();
        let mut mirror = Context::new(&k.master_key, &k.master_salt, k.profile, None, None, provider.crypto()).unwrap();
        assert!(ours.read(&mirror.encrypt_rtcp(&compound()).unwrap(), VIDEO, 0).is_err());
        assert!(ours.read(b"\x80\xc9\x00\x01", VIDEO, 0).is_err(), "too short");
        // RTP (payload type 96, marker set or not) is not RTCP.
        assert!(!is_rtcp(&[0x80, 96, 0, 1, 0, 0, 0, 0]) && !is_rtcp(&[0x80, 96 | 0x80, 0, 1, 0, 0, 0, 0]));
    }
}
