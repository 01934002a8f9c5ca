//! livegate's own WHEP session: ICE-lite and DTLS-SRTP for a viewer on the shared UDP port, in place of a
//! webrtc-rs PeerConnection. A viewer's media is already packetized once per stream, protected per viewer
//! and sent in batches by livegate (`fanout`, `media_out`) and its RTCP read by livegate (`rtcp_in`); what
//! webrtc-rs still did per viewer was answer STUN and run one DTLS handshake, at the price of a
//! PeerConnection (its driver task, channels, ICE agent ticking every 200 ms, interceptors): most of a
//! viewer's memory and of the control thread's time (benches/README.md, "A WHEP viewer without
//! webrtc-rs"). Here a session is a sans-IO [`link::Link`] handled on the mux's control thread as its
//! datagrams arrive, and one timer task for DTLS retransmissions and the consent deadline.
//!
//! Offers with a data channel (a viewer asking for SEI) still get a webrtc-rs session: SCTP is not here.

pub mod link;
pub mod sdp;
pub mod stun;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock, Weak};
use std::time::Instant;

use parking_lot::Mutex;
use rand::distributions::{Alphanumeric, DistString};
use rtc::peer_connection::transport::SrtpLocalKeying;
use tokio::sync::{watch, Notify};
use webrtc::peer_connection::RTCPeerConnectionState;

use super::mux_socket::SharedSocket;
use super::udp_mux::{ControlSink, RtcpSlot, UdpMux};
pub use link::{End, Identity, IdentityError};
use link::{Event, Handled, Link};

/// Why a viewer's offer got no session.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    Offer(#[from] sdp::OfferError),
    #[error("the shared WebRTC socket: {0}")]
    Socket(std::io::Error),
    #[error(transparent)]
    Identity(#[from] IdentityError),
}

/// What the viewer is sent on: an RTP stream's SSRC and the payload type the answer chose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sending {
    pub ssrc: u32,
    pub pt: u8,
}

/// A negotiated session.
pub struct Opened {
    pub session: Lean,
    pub answer: String,
    pub video: Sending,
    pub audio: Option<Sending>,
    /// Connecting once the viewer's checks arrive, Connected once DTLS is done, then Closed, Disconnected
    /// (consent lost) or Failed (handshake): what `await_connected` and the media pump watch.
    pub state: watch::Receiver<RTCPeerConnectionState>,
}

/// Answers `offer` and starts its session on `mux`.
pub fn open(mux: &Arc<UdpMux>, identity: &Identity, offer: &str, wants: sdp::Wants) -> Result<Opened, OpenError> {
    let offer = sdp::Offer::parse(offer)?;
    let plan = sdp::plan(&offer, wants)?;
    let socket = mux.shared_socket().map_err(OpenError::Socket)?;
    let mut rng = rand::thread_rng();
    let (remote_ufrag, remote_pwd) = offer.credentials(&plan);
    let creds = stun::Credentials {
        local_ufrag: Alphanumeric.sample_string(&mut rng, 16),
        local_pwd: Alphanumeric.sample_string(&mut rng, 32),
        remote_ufrag: remote_ufrag.to_owned(),
        remote_pwd: remote_pwd.to_owned(),
    };
    let handshake = identity.handshake(offer.fingerprints.clone())?;
    let (video_ssrc, audio_ssrc) = (rand::random(), rand::random());
    let answer = sdp::answer(
        &offer,
        &plan,
        &sdp::Local {
            ufrag: &creds.local_ufrag,
            pwd: &creds.local_pwd,
            fingerprint: &identity.fingerprint,
            candidate: mux.addr,
            video_ssrc,
            audio_ssrc,
            session_id: rand::random::<u64>() >> 1,
        },
    );
    let ufrag = creds.local_ufrag.clone();
    let (state_tx, state) = watch::channel(RTCPeerConnectionState::New);
    let timer = Arc::new(Notify::new());
    let session = Arc::new(Session {
        link: Mutex::new(Link::new(creds, handshake)),
        socket,
        state: state_tx,
        peer: watch::channel(None).0,
        keying: OnceLock::new(),
        end: OnceLock::new(),
        timer: timer.clone(),
    });
    let rtcp = RtcpSlot::default();
    let route = mux.register_control(&ufrag, session.clone(), rtcp.clone());
    mux.spawn_control(drive_timers(Arc::downgrade(&session), timer));
    Ok(Opened {
        session: Lean { session, rtcp, _route: route },
        answer,
        video: Sending { ssrc: video_ssrc, pt: plan.video.1 },
        audio: plan.audio.map(|(_, pt)| Sending { ssrc: audio_ssrc, pt }),
        state,
    })
}

/// A viewer's session as the mux and its timer task share it.
struct Session {
    link: Mutex<Link>,
    socket: Arc<SharedSocket>,
    state: watch::Sender<RTCPeerConnectionState>,
    peer: watch::Sender<Option<SocketAddr>>,
    keying: OnceLock<SrtpLocalKeying>,
    end: OnceLock<End>,
    timer: Arc<Notify>,
}

impl Session {
    /// Sends what the link queued and publishes what it reported.
    fn flush(&self, link: &mut Link) {
        while let Some((p, to)) = link.poll_transmit() {
            if let Err(e) = self.socket.send_to(&p, to) {
                tracing::debug!(%to, error = %e, "STUN/DTLS reply not sent");
            }
        }
        while let Some(ev) = link.poll_event() {
            match ev {
                Event::Checking => {
                    self.state.send_replace(RTCPeerConnectionState::Connecting);
                }
                Event::Peer(a) => {
                    self.peer.send_replace(Some(a));
                }
                Event::Connected(k) => {
                    let _ = self.keying.set(k);
                    self.state.send_replace(RTCPeerConnectionState::Connected);
                }
                Event::Ended(end) => {
                    let state = match &end {
                        End::PeerClosed | End::Closed => RTCPeerConnectionState::Closed,
                        // Connected, the viewer went away; before, its connection attempt failed.
                        End::ConsentExpired(_) if self.keying.get().is_some() => RTCPeerConnectionState::Disconnected,
                        End::ConsentExpired(_) => RTCPeerConnectionState::Failed,
                        End::Handshake(_) => RTCPeerConnectionState::Failed,
                    };
                    let _ = self.end.set(end);
                    self.state.send_replace(state);
                }
            }
        }
    }
}

impl ControlSink for Session {
    fn control(&self, datagram: &[u8], from: SocketAddr) -> bool {
        let mut link = self.link.lock();
        let before = link.poll_timeout();
        let handled = link.handle(datagram, from, Instant::now());
        self.flush(&mut link);
        if handled == Handled::Refused {
            crate::metrics::global().whep_stun_refused.fetch_add(1, Ordering::Relaxed);
        }
        // The first check sets the consent deadline and a handshake flight arms a retransmission: sooner than
        // the timer task sleeps. A later check only moves the deadline on, which the task finds when it wakes.
        if link.poll_timeout().is_some_and(|t| before.is_none_or(|b| t < b)) {
            self.timer.notify_one();
        }
        handled == Handled::Proven
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.timer.notify_one();
    }
}

/// A session's DTLS retransmissions and consent deadline. Ends with the session.
async fn drive_timers(session: Weak<Session>, timer: Arc<Notify>) {
    loop {
        let next = {
            let Some(s) = session.upgrade() else { return };
            let link = s.link.lock();
            if link.is_ended() {
                return;
            }
            link.poll_timeout()
        };
        match next {
            Some(at) => tokio::select! {
                _ = tokio::time::sleep_until(at.into()) => {}
                _ = timer.notified() => continue,
            },
            None => {
                timer.notified().await;
                continue;
            }
        }
        let Some(s) = session.upgrade() else { return };
        let mut link = s.link.lock();
        link.handle_timeout(Instant::now());
        s.flush(&mut link);
    }
}

/// A WHEP viewer's session, held by its task: dropping it takes the session off the shared port.
pub struct Lean {
    session: Arc<Session>,
    rtcp: RtcpSlot,
    _route: super::udp_mux::ControlRoute,
}

impl Lean {
    /// The SRTP keys, once connected (the peer address in them is the one selected then).
    pub fn keying(&self) -> Option<SrtpLocalKeying> {
        let mut k = self.session.keying.get()?.clone();
        if let Some(a) = *self.session.peer.borrow() {
            k.peer_addr = a;
        }
        Some(k)
    }

    /// Where the viewer's RTCP reader goes.
    pub fn rtcp_slot(&self) -> RtcpSlot {
        self.rtcp.clone()
    }

    /// The address media goes to, as the viewer's nominations move it.
    pub fn peer(&self) -> watch::Receiver<Option<SocketAddr>> {
        self.session.peer.subscribe()
    }

    pub fn socket(&self) -> Arc<SharedSocket> {
        self.session.socket.clone()
    }

    /// Why the session ended, once it has.
    pub fn end(&self) -> Option<&End> {
        self.session.end.get()
    }

    /// Ends the session with a close_notify to the viewer.
    pub fn close(&self) {
        let mut link = self.session.link.lock();
        link.close(Instant::now());
        self.session.flush(&mut link);
    }
}
