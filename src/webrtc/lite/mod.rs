//! livegate's own WHEP session: ICE-lite and DTLS-SRTP for a viewer on the shared UDP port, in place of a
//! webrtc-rs PeerConnection. The pure parts: STUN (`stun`), the offer and answer (`sdp`), and a viewer's
//! transport state (`link`).

pub mod link;
pub mod sdp;
pub mod stun;
