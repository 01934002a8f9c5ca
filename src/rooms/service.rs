//! The room service: the rooms' state behind one lock, the members' logins and credentials, the event channels
//! their sockets read, and the media events read from the hub. The HTTP adapter (`http::rooms`) translates
//! requests and sockets; everything a member may do is decided here.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rand::RngCore;
use tokio::sync::broadcast;
use tracing::Instrument;

use super::media::{Presence, Tracks};
use super::state::{
    ClientKind, EnterRequest, LeaveReason, Member, RoomError, RoomEvent, RoomKey, RoomLimits, RoomSummary, Rooms,
    Sequenced,
};
use crate::access::{GateError, StreamGate, MEMBER_KEY_PARAM};
use crate::config::{Config, RoomsConfig};
use crate::events::Event;
use crate::hub::{Audience, CachePolicy, Hub, Protocol, Purpose, StreamKey};
use crate::usersig::{self, privilege, RoomRef, UserSigError};

/// How long member URLs' signatures last. The gate checks the member is still in its room on every publish
/// and play, so a URL dies with the member's stay whatever its signature says.
const URL_LIFETIME_SECS: u64 = 86_400;
/// Bytes a message's text or custom data may take.
pub const MAX_MESSAGE_BYTES: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("sdkAppId {0} is not configured under [[rooms.apps]]")]
    UnknownApp(u32),
    #[error("invalid {field}: {detail}")]
    Invalid { field: &'static str, detail: String },
    #[error("{0}")]
    BadUserSig(UserSigError),
    #[error("privateMapKey refused: {0}")]
    BadPrivateMapKey(String),
    #[error("stream {0} is used by another member")]
    StreamInUse(String),
    #[error("the member token is unknown or its member has left")]
    BadToken,
    #[error(transparent)]
    Room(#[from] RoomError),
}

/// What a room or member call is made with: the control API's token, or a member's login.
#[derive(Debug, Clone, Copy)]
pub enum Actor {
    Admin,
    Member(u64),
}

/// An enter, as the HTTP adapter parsed it.
#[derive(Debug, Clone)]
pub struct EnterParams {
    pub sdk_app_id: u32,
    pub user_id: String,
    pub user_sig: String,
    pub private_map_key: Option<String>,
    pub client: ClientKind,
    pub presenter: bool,
    pub room_name: Option<String>,
    pub stream_id: Option<String>,
    /// For a room this enter creates: keep a mix of its anchors, and record it.
    pub mix: Option<super::mix_plan::MixOptions>,
    pub record: Vec<crate::config::RecordFormat>,
    pub record_id: Option<String>,
}

/// A member's login as the adapter needs it (its own credentials included: it hands them to that member).
#[derive(Debug, Clone)]
pub struct SessionView {
    pub id: u64,
    pub room: RoomKey,
    pub user: String,
    pub token: String,
    pub member_key: String,
    pub stream: String,
    /// When the signatures of the URLs this login is handed expire (Unix seconds): fixed for the login, so
    /// a URL handed out twice is the same URL (a `<live-player>` whose `src` changes starts over).
    pub url_expiry: u64,
}

#[derive(Debug, Clone)]
pub struct MemberView {
    pub member: Member,
    pub stream: String,
}

#[derive(Debug)]
pub struct EnterOutcome {
    pub session: SessionView,
    pub room: RoomSummary,
    pub created: bool,
    pub may_publish: bool,
    pub role: super::Role,
    /// The others.
    pub members: Vec<MemberView>,
    pub seq: u64,
    /// The room's mix stream, if it keeps one.
    pub mix_stream: Option<String>,
}

/// What a socket starts with: the events it missed, or (no `since`, or a gap older than the replay) the room
/// as it is now.
#[derive(Debug)]
pub enum Backlog {
    Replay(Vec<Sequenced>),
    Snapshot { seq: u64, members: Vec<MemberView> },
}

pub struct Subscription {
    pub rx: broadcast::Receiver<Arc<Sequenced>>,
    pub backlog: Backlog,
}

struct Session {
    room: RoomKey,
    user: String,
    token: String,
    member_key: String,
    stream: String,
    /// From the privateMapKey, when the member entered with one.
    privileges: Option<u32>,
    sockets: usize,
    pushing: bool,
    /// When the member last had neither a socket nor a push.
    idle_since: Option<Instant>,
    url_expiry: u64,
}

impl Session {
    fn view(&self, id: u64) -> SessionView {
        SessionView {
            id,
            room: self.room.clone(),
            user: self.user.clone(),
            token: self.token.clone(),
            member_key: self.member_key.clone(),
            stream: self.stream.clone(),
            url_expiry: self.url_expiry,
        }
    }

    fn allows(&self, bits: u32) -> bool {
        self.privileges.is_none_or(|p| p & bits != 0)
    }
}

/// What has to happen outside the lock when logins end.
enum Effect {
    KickPublisher(String, String),
    KickPlays(String, String),
}

/// A room's mix as asked for, and the plan it runs now.
struct RoomMix {
    stream: String,
    options: super::mix_plan::MixOptions,
    record: Vec<crate::config::RecordFormat>,
    record_id: Option<String>,
    running: Option<super::mix_plan::Plan>,
}

/// What the mix worker does to a room's mix, in order.
enum MixCommand {
    Start {
        key: RoomKey,
        stream: String,
        plan: super::mix_plan::Plan,
        options: super::mix_plan::MixOptions,
        record: Vec<crate::config::RecordFormat>,
        record_id: Option<String>,
    },
    Update {
        key: RoomKey,
        plan: super::mix_plan::Plan,
    },
    Stop {
        key: RoomKey,
    },
}

/// Where room webhooks go: a writer thread that puts each in the on-disk outbox, in order.
type Hooks = std::sync::mpsc::Sender<(RoomKey, super::callbacks::Callback, u64)>;

#[derive(Default)]
struct Inner {
    hooks: Option<Hooks>,
    mixes: HashMap<RoomKey, RoomMix>,
    /// Mix stream name → its room (played with a signature alone: the CDN-style room stream).
    mix_streams: HashMap<String, RoomKey>,
    mix_tx: Option<tokio::sync::mpsc::UnboundedSender<MixCommand>>,
    max_mix_inputs: usize,
    sessions: HashMap<u64, Session>,
    by_token: HashMap<String, u64>,
    by_member_key: HashMap<String, u64>,
    by_stream: HashMap<String, u64>,
    channels: HashMap<RoomKey, broadcast::Sender<Arc<Sequenced>>>,
}

pub struct RoomService {
    cfg: RoomsConfig,
    push_key: String,
    play_key: String,
    hub: Hub,
    rooms: Mutex<(Rooms, Inner)>,
    outbox: Option<crate::record::outbox::Outbox>,
    mixer: Arc<crate::mix::Mixes>,
    recorder: Arc<crate::record::Recorder>,
    mix_rx: Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<MixCommand>>>,
}

impl RoomService {
    pub fn new(
        config: &Config,
        hub: Hub,
        mixer: Arc<crate::mix::Mixes>,
        recorder: Arc<crate::record::Recorder>,
    ) -> Arc<Self> {
        let cfg = config.rooms.clone();
        let app = config.app(&cfg.stream_app).cloned().unwrap_or_default();
        let limits = RoomLimits {
            max_members: cfg.max_members,
            max_rooms: cfg.max_rooms,
            empty_grace: Duration::from_secs_f64(cfg.empty_grace_secs),
            replay_events: cfg.replay_events,
        };
        let mut inner = Inner::default();
        let (mix_tx, mix_rx) = tokio::sync::mpsc::unbounded_channel();
        inner.mix_tx = Some(mix_tx);
        inner.max_mix_inputs = config.mix.max_inputs;
        let outbox = (!cfg.callback_urls.is_empty()).then(|| {
            let r = &config.record;
            let outbox = crate::record::outbox::Outbox::at(
                std::path::Path::new(&r.root).join(".room-outbox"),
                r.callback_retries,
                Duration::from_secs_f64(r.callback_interval_secs),
            );
            inner.hooks = Some(spawn_hook_writer(outbox.clone(), cfg.callback_urls.clone(), cfg.callback_key.clone()));
            outbox
        });
        Arc::new(Self {
            push_key: app.push_key,
            play_key: app.play_key,
            cfg,
            hub,
            rooms: Mutex::new((Rooms::new(limits), inner)),
            outbox,
            mixer,
            recorder,
            mix_rx: Mutex::new(Some(mix_rx)),
        })
    }

    pub fn enabled(&self) -> bool {
        !self.cfg.apps.is_empty()
    }

    pub fn stream_app(&self) -> &str {
        &self.cfg.stream_app
    }

    /// Watches the hub for members' pushes and closes idle members and empty rooms, until the runtime ends.
    pub fn start(self: &Arc<Self>) {
        if !self.enabled() {
            return;
        }
        if let Some(o) = &self.outbox {
            tokio::spawn(o.clone().run());
        }
        if let Some(mut rx) = self.mix_rx.lock().take() {
            let this = self.clone();
            tokio::spawn(async move {
                while let Some(cmd) = rx.recv().await {
                    let t = this.clone();
                    // Building or re-placing a GStreamer mix blocks: one at a time, off the runtime's workers.
                    let _ = tokio::task::spawn_blocking(move || t.apply_mix(cmd)).await;
                }
            });
        }
        let this = self.clone();
        tokio::spawn(async move {
            let mut events = this.hub.events().subscribe();
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            loop {
                tokio::select! {
                    e = events.recv() => match e {
                        Ok(Event::Publish { stream, .. }) if stream.app == this.cfg.stream_app => {
                            this.clone().watch(stream);
                        }
                        Ok(Event::Quality { stream, level, .. }) if stream.app == this.cfg.stream_app => {
                            this.network_quality(&stream, level.level());
                        }
                        Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                        Err(broadcast::error::RecvError::Closed) => return,
                    },
                    _ = tick.tick() => this.tick(Instant::now()),
                }
            }
        });
    }

    /// `?txSecret=…&txTime=…` for a member's push of `stream`, valid until `expiry`.
    pub fn push_query(&self, stream: &str, expiry: u64) -> String {
        let t = format!("{expiry:x}");
        format!("txSecret={}&txTime={t}", crate::auth::sign(&self.push_key, stream, &t))
    }

    /// The query of a play URL of `stream` for the member holding `member_key` (none: the room's mix).
    pub fn play_query(&self, stream: &str, member_key: Option<&str>, expiry: u64) -> String {
        let t = format!("{expiry:x}");
        let q = format!("txSecret={}&txTime={t}", crate::auth::sign(&self.play_key, stream, &t));
        match member_key {
            Some(k) => format!("{q}&{MEMBER_KEY_PARAM}={k}"),
            None => q,
        }
    }

    /// Enters `room` (`None`: a new room with a numeric id chosen here).
    pub fn enter(&self, room: Option<&str>, p: EnterParams, unix: u64) -> Result<EnterOutcome, ServiceError> {
        let app = self.cfg.app(p.sdk_app_id).ok_or(ServiceError::UnknownApp(p.sdk_app_id))?;
        check_id("userId", &p.user_id)?;
        if let Some(r) = room {
            check_id("roomId", r)?;
        }
        if let Some(n) = &p.room_name {
            if n.is_empty() || n.len() > 128 || n.chars().any(char::is_control) {
                return Err(ServiceError::Invalid { field: "roomName", detail: "1-128 printable characters".into() });
            }
        }
        let key_bytes = app.secret_key.as_bytes();
        let now = unix as i64;
        usersig::verify(key_bytes, p.sdk_app_id, &p.user_id, &p.user_sig, now).map_err(ServiceError::BadUserSig)?;
        let map = match &p.private_map_key {
            Some(pmk) => {
                let sig = usersig::verify(key_bytes, p.sdk_app_id, &p.user_id, pmk, now)
                    .map_err(|e| ServiceError::BadPrivateMapKey(e.to_string()))?;
                let buf = sig.userbuf.ok_or_else(|| ServiceError::BadPrivateMapKey("it has no userbuf".into()))?;
                let map =
                    usersig::PrivateMap::parse(&buf).map_err(|e| ServiceError::BadPrivateMapKey(e.to_string()))?;
                if map.user != p.user_id || map.sdk_app_id != p.sdk_app_id {
                    return Err(ServiceError::BadPrivateMapKey(format!(
                        "it is for user {:?} of sdkAppId {}",
                        map.user, map.sdk_app_id
                    )));
                }
                if u64::from(map.expires_at) < unix {
                    return Err(ServiceError::BadPrivateMapKey(format!("it expired at {}", map.expires_at)));
                }
                Some(map)
            }
            None if self.cfg.require_private_map_key => {
                return Err(ServiceError::BadPrivateMapKey(
                    "rooms.require_private_map_key is set and the enter has no privateMapKey".into(),
                ))
            }
            None => None,
        };

        let mut guard = self.rooms.lock();
        let (rooms, inner) = &mut *guard;
        let id = match room {
            Some(r) => r.to_owned(),
            None => loop {
                let n = 100_000 + rand::thread_rng().next_u32() % 4_000_000_000;
                if !rooms.contains(&RoomKey { app: p.sdk_app_id, id: n.to_string() }) {
                    break n.to_string();
                }
            },
        };
        let key = RoomKey { app: p.sdk_app_id, id };
        if let Some(map) = &map {
            let same = match &map.room {
                RoomRef::Number(n) => n.to_string() == key.id,
                RoomRef::Name(s) => *s == key.id,
            };
            if !same {
                return Err(ServiceError::BadPrivateMapKey(format!("it is for room {:?}, not {:?}", map.room, key.id)));
            }
            if !map.allows(privilege::ENTER) {
                return Err(ServiceError::BadPrivateMapKey("it does not grant enter (2)".into()));
            }
            if !rooms.contains(&key) && !map.allows(privilege::CREATE) {
                return Err(ServiceError::BadPrivateMapKey(format!(
                    "room {} is not open and the key does not grant create (1)",
                    key.id
                )));
            }
        }
        let stream = match &p.stream_id {
            Some(s) => {
                crate::names::validate("stream", s)
                    .map_err(|e| ServiceError::Invalid { field: "streamId", detail: e.to_string() })?;
                s.clone()
            }
            None => format!("{}.{}.{}", key.app, key.id, p.user_id),
        };
        if let Some(other) = inner.by_stream.get(&stream).and_then(|s| inner.sessions.get(s)) {
            if other.room != key || other.user != p.user_id {
                return Err(ServiceError::StreamInUse(stream));
            }
        }
        let req = EnterRequest {
            user_id: p.user_id.clone(),
            client: p.client,
            presenter: p.presenter,
            room_name: p.room_name.clone(),
        };
        let entered = rooms.enter(&key, req, unix)?;
        let mut effects = Vec::new();
        if let Some(old) = entered.replaced {
            end_session(inner, old, "logged in again elsewhere", &mut effects);
        }
        let session = Session {
            room: key.clone(),
            user: p.user_id.clone(),
            token: random_hex(32),
            member_key: random_hex(16),
            stream: stream.clone(),
            privileges: map.map(|m| m.privileges),
            sockets: 0,
            pushing: false,
            idle_since: Some(Instant::now()),
            url_expiry: unix + URL_LIFETIME_SECS,
        };
        let sid = entered.session;
        inner.by_token.insert(session.token.clone(), sid);
        inner.by_member_key.insert(session.member_key.clone(), sid);
        inner.by_stream.insert(stream, sid);
        let view = session.view(sid);
        inner.sessions.insert(sid, session);
        if entered.created {
            if let Some(options) = p.mix.clone() {
                let stream = format!("{}.{}", key.app, key.id);
                inner.mix_streams.insert(stream.clone(), key.clone());
                let record_id = p.record_id.clone();
                let conf = RoomMix { stream, options, record: p.record.clone(), record_id, running: None };
                inner.mixes.insert(key.clone(), conf);
            }
            let cb = super::callbacks::Callback {
                event_type: super::callbacks::event_type::ROOM_CREATED,
                user: Some(p.user_id.clone()),
                role: None,
                reason: None,
            };
            hook(inner, &key, cb);
        }
        deliver(rooms, inner, &key, entered.events);
        let me = rooms.member(&key, &p.user_id).cloned().expect("just entered");
        let outcome = EnterOutcome {
            session: view,
            room: rooms.summary(&key)?,
            created: entered.created,
            may_publish: me.may_publish,
            role: me.role,
            members: member_views(rooms, inner, &key).into_iter().filter(|m| m.member.user_id != p.user_id).collect(),
            seq: rooms.seq(&key).unwrap_or(0),
            mix_stream: inner.mixes.get(&key).map(|m| m.stream.clone()),
        };
        drop(guard);
        self.apply(effects);
        tracing::info!(room = %key, user = %p.user_id, created = outcome.created, "member entered");
        Ok(outcome)
    }

    /// The login a member token belongs to.
    pub fn session(&self, token: &str) -> Result<SessionView, ServiceError> {
        let g = self.rooms.lock();
        let id = *g.1.by_token.get(token).ok_or(ServiceError::BadToken)?;
        Ok(g.1.sessions[&id].view(id))
    }

    /// Leaves, for the member itself.
    pub fn leave(&self, session: u64, now: Instant) -> Result<(), ServiceError> {
        let mut effects = Vec::new();
        {
            let mut g = self.rooms.lock();
            let (rooms, inner) = &mut *g;
            let s = inner.sessions.get(&session).ok_or(ServiceError::BadToken)?;
            let (key, user) = (s.room.clone(), s.user.clone());
            let ev = rooms.leave(&key, &user, Some(session), LeaveReason::Left, now)?;
            end_session(inner, session, "left the room", &mut effects);
            deliver(rooms, inner, &key, ev);
            tracing::info!(room = %key, %user, "member left");
        }
        self.apply(effects);
        Ok(())
    }

    /// Puts `user` out of `key`: by the control API, or by the member allowed to (a live room's presenter, a
    /// call room's creator).
    pub fn kick(&self, actor: Actor, key: &RoomKey, user: &str, now: Instant) -> Result<(), ServiceError> {
        let mut effects = Vec::new();
        {
            let mut g = self.rooms.lock();
            let (rooms, inner) = &mut *g;
            self.check_actor(rooms, inner, actor, key, |r, u| r.may_kick(key, u), "kick members")?;
            let sid = rooms.member(key, user).map(|m| m.session);
            let ev = rooms.leave(key, user, None, LeaveReason::Kicked, now)?;
            if let Some(sid) = sid {
                end_session(inner, sid, "kicked out of the room", &mut effects);
            }
            deliver(rooms, inner, key, ev);
            tracing::info!(room = %key, %user, ?actor, "member kicked");
        }
        self.apply(effects);
        Ok(())
    }

    /// Ends a room: by the control API, or by its creator.
    pub fn dissolve(&self, actor: Actor, key: &RoomKey) -> Result<(), ServiceError> {
        let mut effects = Vec::new();
        {
            let mut g = self.rooms.lock();
            let (rooms, inner) = &mut *g;
            self.check_actor(rooms, inner, actor, key, |r, u| r.may_dissolve(key, u), "dissolve the room")?;
            let sessions: Vec<u64> = rooms.members(key)?.iter().map(|m| m.session).collect();
            let ev = rooms.dissolve(key)?;
            for sid in sessions {
                end_session(inner, sid, "the room was dissolved", &mut effects);
            }
            deliver(rooms, inner, key, ev);
            inner.channels.remove(key);
            forget_mix(inner, key);
            tracing::info!(room = %key, ?actor, "room dissolved");
        }
        self.apply(effects);
        Ok(())
    }

    fn check_actor(
        &self,
        rooms: &Rooms,
        inner: &Inner,
        actor: Actor,
        key: &RoomKey,
        allowed: impl Fn(&Rooms, &str) -> bool,
        what: &str,
    ) -> Result<(), ServiceError> {
        match actor {
            Actor::Admin => Ok(()),
            Actor::Member(sid) => {
                let s = inner.sessions.get(&sid).ok_or(ServiceError::BadToken)?;
                if s.room != *key {
                    return Err(RoomError::Forbidden(format!("{} is not in room {key}", s.user)).into());
                }
                if !allowed(rooms, &s.user) {
                    return Err(RoomError::Forbidden(format!("{} may not {what}", s.user)).into());
                }
                Ok(())
            }
        }
    }

    /// A message from a member, to the room or to one member.
    pub fn message(&self, session: u64, make: impl FnOnce(String) -> RoomEvent) -> Result<u64, ServiceError> {
        let mut g = self.rooms.lock();
        let (rooms, inner) = &mut *g;
        let s = inner.sessions.get(&session).ok_or(ServiceError::BadToken)?;
        let key = s.room.clone();
        let ev = rooms.message(&key, make(s.user.clone()))?;
        let seq = ev.seq;
        deliver(rooms, inner, &key, vec![ev]);
        Ok(seq)
    }

    pub fn request_join(&self, session: u64, reason: &str, now: Instant) -> Result<u64, ServiceError> {
        let mut g = self.rooms.lock();
        let (rooms, inner) = &mut *g;
        let s = inner.sessions.get(&session).ok_or(ServiceError::BadToken)?;
        let key = s.room.clone();
        let (id, ev) = rooms.request_join(&key, &s.user, reason, now)?;
        deliver(rooms, inner, &key, ev);
        Ok(id)
    }

    pub fn respond_join(&self, session: u64, id: u64, accept: bool, reason: &str) -> Result<(), ServiceError> {
        let mut g = self.rooms.lock();
        let (rooms, inner) = &mut *g;
        let s = inner.sessions.get(&session).ok_or(ServiceError::BadToken)?;
        let key = s.room.clone();
        let (_, ev) = rooms.respond_join(&key, &s.user.clone(), id, accept, reason)?;
        deliver(rooms, inner, &key, ev);
        Ok(())
    }

    /// The room, its members and the sequence number they are current to.
    pub fn room(&self, key: &RoomKey) -> Result<(RoomSummary, Vec<MemberView>, u64), ServiceError> {
        let g = self.rooms.lock();
        let (rooms, inner) = &*g;
        Ok((rooms.summary(key)?, member_views(rooms, inner, key), rooms.seq(key).unwrap_or(0)))
    }

    /// Every room open on this node (the cluster keeps them in its directory).
    pub fn open_rooms(&self) -> Vec<RoomKey> {
        self.rooms.lock().0.keys()
    }

    pub fn list(&self, app: u32, index: usize, cnt: usize) -> (usize, Vec<RoomSummary>) {
        self.rooms.lock().0.list(app, index, cnt)
    }

    /// Checks a userSig for the room list (members list rooms before they enter one).
    pub fn check_user_sig(&self, sdk_app_id: u32, user: &str, sig: &str, unix: u64) -> Result<(), ServiceError> {
        let app = self.cfg.app(sdk_app_id).ok_or(ServiceError::UnknownApp(sdk_app_id))?;
        usersig::verify(app.secret_key.as_bytes(), sdk_app_id, user, sig, unix as i64)
            .map(drop)
            .map_err(ServiceError::BadUserSig)
    }

    /// The only app configured, for control calls that leave `sdkAppId` out.
    pub fn default_app(&self) -> Option<u32> {
        match self.cfg.apps.as_slice() {
            [one] => Some(one.sdk_app_id),
            _ => None,
        }
    }

    /// A socket of login `session` opens: what it missed since `since` (or the room now), and the channel.
    pub fn subscribe(&self, session: u64, since: Option<u64>) -> Result<Subscription, ServiceError> {
        let mut g = self.rooms.lock();
        let (rooms, inner) = &mut *g;
        let s = inner.sessions.get_mut(&session).ok_or(ServiceError::BadToken)?;
        s.sockets += 1;
        s.idle_since = None;
        let (key, user) = (s.room.clone(), s.user.clone());
        let replay = match since {
            Some(n) => rooms.events_since(&key, n)?,
            None => None,
        };
        let backlog = match replay {
            Some(ev) => Backlog::Replay(ev.into_iter().filter(|e| e.is_for(&user, session)).collect()),
            None => Backlog::Snapshot { seq: rooms.seq(&key).unwrap_or(0), members: member_views(rooms, inner, &key) },
        };
        let rx = channel(inner, &key).subscribe();
        Ok(Subscription { rx, backlog })
    }

    /// What a lagging socket missed after `since` (it lost events from its channel).
    pub fn catch_up(&self, session: u64, since: u64) -> Result<Backlog, ServiceError> {
        let g = self.rooms.lock();
        let (rooms, inner) = &*g;
        let s = inner.sessions.get(&session).ok_or(ServiceError::BadToken)?;
        Ok(match rooms.events_since(&s.room, since)? {
            Some(ev) => Backlog::Replay(ev.into_iter().filter(|e| e.is_for(&s.user, session)).collect()),
            None => {
                Backlog::Snapshot { seq: rooms.seq(&s.room).unwrap_or(0), members: member_views(rooms, inner, &s.room) }
            }
        })
    }

    /// Event sockets login `session` has open.
    pub fn socket_count(&self, session: u64) -> usize {
        self.rooms.lock().1.sessions.get(&session).map_or(0, |s| s.sockets)
    }

    pub fn socket_closed(&self, session: u64) {
        let mut g = self.rooms.lock();
        if let Some(s) = g.1.sessions.get_mut(&session) {
            s.sockets = s.sockets.saturating_sub(1);
            if s.sockets == 0 && !s.pushing {
                s.idle_since = Some(Instant::now());
            }
        }
    }

    /// Whether login `session` is still in its room.
    pub fn is_live(&self, session: u64) -> bool {
        self.rooms.lock().1.sessions.contains_key(&session)
    }

    /// The stream name of a member (for play URLs in events).
    pub fn stream_of(&self, key: &RoomKey, user: &str) -> Option<String> {
        let g = self.rooms.lock();
        let sid = g.0.member(key, user)?.session;
        g.1.sessions.get(&sid).map(|s| s.stream.clone())
    }

    fn apply(&self, effects: Vec<Effect>) {
        for e in effects {
            match e {
                Effect::KickPublisher(stream, reason) => {
                    let _ = self.hub.kick_publisher(&StreamKey::new(&self.cfg.stream_app, &stream), &reason);
                }
                Effect::KickPlays(member_key, reason) => {
                    self.hub.kick_tagged(&member_key, &reason);
                }
            }
        }
    }

    /// Empty rooms past their grace close; members with neither socket nor push past the timeout leave.
    fn tick(&self, now: Instant) {
        let timeout = Duration::from_secs_f64(self.cfg.member_timeout_secs);
        let mut effects = Vec::new();
        {
            let mut g = self.rooms.lock();
            let (rooms, inner) = &mut *g;
            let idle: Vec<u64> = inner
                .sessions
                .iter()
                .filter(|(_, s)| s.idle_since.is_some_and(|t| now.saturating_duration_since(t) >= timeout))
                .map(|(id, _)| *id)
                .collect();
            for sid in idle {
                time_out(rooms, inner, sid, now, "timed out: no event socket and no push", &mut effects);
            }
            for (key, ev) in rooms.tick(now) {
                deliver(rooms, inner, &key, vec![ev]);
                inner.channels.remove(&key);
                forget_mix(inner, &key);
                tracing::info!(room = %key, "empty room closed");
            }
        }
        self.apply(effects);
    }

    /// Reads a member's stream for which tracks it carries, from its publish until the stream ends.
    fn watch(self: Arc<Self>, key: StreamKey) {
        if crate::names::is_rendition(&key.name) {
            return;
        }
        let (sid, user, privileges) = {
            let mut g = self.rooms.lock();
            let Some(&sid) = g.1.by_stream.get(&key.name) else { return };
            let s = g.1.sessions.get_mut(&sid).expect("indexed");
            if s.pushing {
                return; // the publisher came back within its grace: the watcher from before reads on
            }
            s.pushing = true;
            s.idle_since = None;
            (sid, s.user.clone(), s.privileges)
        };
        let span = tracing::info_span!("room_media", stream = %key, %user);
        tokio::spawn(
            async move {
                let guard = self.hub.register_client(Protocol::Room, None);
                let policy = CachePolicy::internal(Duration::from_secs(2));
                let audience = Audience::Internal(Purpose::RoomMedia { user_id: user.clone() });
                let reader = self.hub.subscribe_as(&key, Protocol::Room, policy, guard.handle.clone(), audience);
                if let Ok(mut reader) = reader {
                    let mut presence = Presence::new(Duration::from_secs_f64(self.cfg.media_timeout_secs));
                    let mut shown = Tracks::default();
                    let mut batch = Vec::new();
                    loop {
                        let now = Instant::now();
                        let wake = presence.next_check(now).unwrap_or(now + Duration::from_secs(3600));
                        tokio::select! {
                            r = reader.next_batch(&mut batch) => {
                                if r.is_err() {
                                    break;
                                }
                                for p in batch.drain(..) {
                                    if !p.frame.config {
                                        presence.frame(p.frame.kind, p.received);
                                    }
                                }
                            }
                            _ = tokio::time::sleep_until(wake.into()) => {}
                        }
                        let mut now_tracks = presence.at(Instant::now());
                        if let Some(refusal) = refused_track(privileges, now_tracks) {
                            tracing::info!(%refusal, "member push refused");
                            let _ = self.hub.kick_publisher(&key, &refusal);
                            now_tracks = Tracks::default();
                        }
                        if now_tracks != shown {
                            shown = now_tracks;
                            if !self.set_media(sid, shown) {
                                break;
                            }
                        }
                    }
                }
                self.set_media(sid, Tracks::default());
                // The stream ended: its publisher did not come back within the hub's reconnect grace. A member
                // with no event socket either is gone (a mini program killed, out of coverage): it leaves now.
                let mut effects = Vec::new();
                {
                    let mut g = self.rooms.lock();
                    let (rooms, inner) = &mut *g;
                    let alone = inner.sessions.get_mut(&sid).map(|s| {
                        s.pushing = false;
                        s.sockets == 0
                    });
                    if alone == Some(true) {
                        let why = "its push ended beyond the reconnect grace and it has no event socket";
                        time_out(rooms, inner, sid, Instant::now(), why, &mut effects);
                    }
                }
                self.apply(effects);
            }
            .instrument(span),
        );
    }

    /// Carries out one change of a room's mix (on a blocking thread: GStreamer).
    fn apply_mix(&self, cmd: MixCommand) {
        let app = &self.cfg.stream_app;
        match cmd {
            MixCommand::Start { key, stream, plan, options, record, record_id } => {
                let inputs = self.mix_inputs(&key, &plan);
                let output = crate::mix::layout::OutputRequest {
                    stream: format!("{app}/{stream}"),
                    width: options.width,
                    height: options.height,
                    fps: options.fps,
                    ..Default::default()
                };
                let req = crate::mix::layout::CreateRequest {
                    id: mix_id(&key),
                    template: Some(plan.template.clone()),
                    pip_position: None,
                    inputs,
                    output,
                };
                match self.mixer.create(req) {
                    Ok(_) => {
                        tracing::info!(room = %key, template = %plan.template, inputs = plan.slots.len(), "room mix started");
                        if !record.is_empty() {
                            let formats = record.iter().map(|f| f.to_string()).collect();
                            let k = StreamKey::new(app, &stream);
                            if let Err(e) = self.recorder.start(k, formats, None, record_id, None) {
                                self.room_error(&key, "record_failed", &format!("the room mix is not recorded: {e}"));
                            }
                        }
                    }
                    Err(e) => {
                        self.room_error(&key, "mix_failed", &format!("the room mix did not start: {e}"));
                        // Try again at the next change of anchors.
                        if let Some(conf) = self.rooms.lock().1.mixes.get_mut(&key) {
                            conf.running = None;
                        }
                    }
                }
            }
            MixCommand::Update { key, plan } => {
                let req = crate::mix::layout::PatchRequest {
                    template: Some(plan.template.clone()),
                    pip_position: None,
                    inputs: Some(self.mix_inputs(&key, &plan)),
                };
                match self.mixer.patch(&mix_id(&key), req) {
                    Ok(_) => {
                        tracing::info!(room = %key, template = %plan.template, inputs = plan.slots.len(), "room mix re-laid out")
                    }
                    Err(e) => self.room_error(&key, "mix_failed", &format!("the room mix was not re-laid out: {e}")),
                }
            }
            MixCommand::Stop { key } => {
                if self.mixer.delete(&mix_id(&key)).is_ok() {
                    tracing::info!(room = %key, "room mix stopped");
                }
            }
        }
    }

    /// The mix inputs of a plan: each anchor's stream, audio-only ones as audio.
    fn mix_inputs(&self, key: &RoomKey, plan: &super::mix_plan::Plan) -> Vec<crate::mix::layout::InputSpec> {
        let app = &self.cfg.stream_app;
        let g = self.rooms.lock();
        plan.slots
            .iter()
            .filter_map(|s| {
                let sid = g.0.member(key, &s.user)?.session;
                let stream = &g.1.sessions.get(&sid)?.stream;
                let kind = if s.video { "av" } else { "audio" };
                serde_json::from_value(serde_json::json!({"stream": format!("{app}/{stream}"), "kind": kind})).ok()
            })
            .collect()
    }

    /// Tells the room something it asked for failed.
    fn room_error(&self, key: &RoomKey, code: &str, detail: &str) {
        tracing::warn!(room = %key, code, detail, "room error");
        let mut g = self.rooms.lock();
        let (rooms, inner) = &mut *g;
        if let Some(ev) = rooms.error(key, code, detail) {
            deliver(rooms, inner, key, vec![ev]);
        }
    }

    /// Reports a member's tracks; false when the member has left.
    /// Forwards a member's push quality to its room as `NETWORK_QUALITY`.
    fn network_quality(&self, stream: &StreamKey, level: u8) {
        let mut g = self.rooms.lock();
        let (rooms, inner) = &mut *g;
        let Some(s) = inner.by_stream.get(&stream.name).and_then(|sid| inner.sessions.get(sid)) else { return };
        let (key, user) = (s.room.clone(), s.user.clone());
        let events = rooms.network_quality(&key, &user, level);
        deliver(rooms, inner, &key, events);
    }

    fn set_media(&self, session: u64, t: Tracks) -> bool {
        let mut g = self.rooms.lock();
        let (rooms, inner) = &mut *g;
        let Some(s) = inner.sessions.get(&session) else { return false };
        let key = s.room.clone();
        let user = s.user.clone();
        match rooms.set_media(&key, &user, t.audio, t.video) {
            Ok(ev) => {
                deliver(rooms, inner, &key, ev);
                true
            }
            Err(_) => false,
        }
    }
}

/// The reason a member's push must end when it carries a track its privateMapKey does not grant.
fn refused_track(privileges: Option<u32>, t: Tracks) -> Option<String> {
    let p = privileges?;
    if t.video && p & privilege::SEND_VIDEO == 0 {
        return Some("the member's privateMapKey does not grant send-video (16)".into());
    }
    if t.audio && p & privilege::SEND_AUDIO == 0 {
        return Some("the member's privateMapKey does not grant send-audio (4)".into());
    }
    None
}

impl StreamGate for RoomService {
    fn app(&self) -> &str {
        &self.cfg.stream_app
    }

    fn publish(&self, key: &StreamKey) -> Result<(), GateError> {
        let g = self.rooms.lock();
        let (rooms, inner) = &*g;
        let Some(s) = inner.by_stream.get(&key.name).and_then(|id| inner.sessions.get(id)) else {
            return Err(GateRefusal::NoMember { stream: key.name.clone() }.into());
        };
        if !rooms.member(&s.room, &s.user).is_some_and(|m| m.may_publish) {
            return Err(GateRefusal::Audience { user: s.user.clone(), room: s.room.id.clone() }.into());
        }
        if !s.allows(privilege::SEND_AUDIO | privilege::SEND_VIDEO) {
            return Err(GateRefusal::NoSendBits { user: s.user.clone() }.into());
        }
        Ok(())
    }

    fn play(&self, key: &StreamKey, query: &[(String, String)]) -> Result<(), GateError> {
        let name = crate::names::source_name(&key.name);
        let g = self.rooms.lock();
        let inner = &g.1;
        if inner.mix_streams.contains_key(name) {
            return Ok(()); // the room's mix: CDN-style, its signature is enough
        }
        let stream = || name.to_owned();
        let viewer = crate::names::query_get(query, MEMBER_KEY_PARAM)
            .and_then(|k| inner.by_member_key.get(k))
            .and_then(|id| inner.sessions.get(id))
            .ok_or_else(|| GateRefusal::NoMemberKey { stream: stream() })?;
        let owner = inner
            .by_stream
            .get(name)
            .and_then(|id| inner.sessions.get(id))
            .ok_or_else(|| GateRefusal::NotMemberStream { stream: stream() })?;
        if owner.room != viewer.room {
            return Err(GateRefusal::OtherRoom { user: viewer.user.clone(), stream: stream() }.into());
        }
        if !viewer.allows(privilege::RECV_AUDIO | privilege::RECV_VIDEO) {
            return Err(GateRefusal::NoRecvBits { user: viewer.user.clone() }.into());
        }
        Ok(())
    }
}

/// Why the room service refused a publish or a play of a room stream.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GateRefusal {
    #[error("stream {stream} belongs to no member of an open room: enter a room for a push URL")]
    NoMember { stream: String },
    #[error("{user} is in the audience of live room {room}: the presenter must accept a join request first")]
    Audience { user: String, room: String },
    #[error("the privateMapKey of {user} grants neither send-audio (4) nor send-video (16)")]
    NoSendBits { user: String },
    #[error("stream {stream} belongs to no member of an open room")]
    NotMemberStream { stream: String },
    #[error("playing {stream} needs the memberKey of a member in its room (room play URLs)")]
    NoMemberKey { stream: String },
    #[error("{user} is not in the room of stream {stream}")]
    OtherRoom { user: String, stream: String },
    #[error("the privateMapKey of {user} grants neither recv-audio (8) nor recv-video (32)")]
    NoRecvBits { user: String },
}

/// The mix of a room, by id in the mix API.
fn mix_id(key: &RoomKey) -> String {
    format!("room-{}-{}", key.app, key.id)
}

fn channel<'a>(inner: &'a mut Inner, key: &RoomKey) -> &'a broadcast::Sender<Arc<Sequenced>> {
    inner.channels.entry(key.clone()).or_insert_with(|| broadcast::channel(256).0)
}

fn deliver(rooms: &Rooms, inner: &mut Inner, key: &RoomKey, events: Vec<Sequenced>) {
    if events.iter().any(|e| affects_mix(&e.event)) {
        remix(rooms, inner, key);
    }
    for e in &events {
        if let Some(cb) = super::callbacks::for_event(&e.event) {
            hook(inner, key, cb);
        }
    }
    let tx = channel(inner, key);
    for e in events {
        let _ = tx.send(Arc::new(e));
    }
}

/// Whether an event can change who the room's mix shows.
fn affects_mix(e: &RoomEvent) -> bool {
    matches!(
        e,
        RoomEvent::RemoteVideoAdd { .. }
            | RoomEvent::RemoteVideoRemove { .. }
            | RoomEvent::RemoteAudioAdd { .. }
            | RoomEvent::RemoteAudioRemove { .. }
            | RoomEvent::RemoteUserLeave { .. }
            | RoomEvent::RoleChanged { .. }
    )
}

/// Compares the room's mix plan with what runs and tells the mix worker what to change.
fn remix(rooms: &Rooms, inner: &mut Inner, key: &RoomKey) {
    let max = inner.max_mix_inputs;
    let Some(conf) = inner.mixes.get_mut(key) else { return };
    let (Ok(summary), Ok(members)) = (rooms.summary(key), rooms.members(key)) else { return };
    let plan = super::mix_plan::plan(summary.kind, conf.options.template.as_deref(), members, max);
    if plan == conf.running {
        return;
    }
    let cmd = match (&conf.running, &plan) {
        (_, None) => MixCommand::Stop { key: key.clone() },
        (None, Some(p)) => MixCommand::Start {
            key: key.clone(),
            stream: conf.stream.clone(),
            plan: p.clone(),
            options: conf.options.clone(),
            record: conf.record.clone(),
            record_id: conf.record_id.clone(),
        },
        (Some(_), Some(p)) => MixCommand::Update { key: key.clone(), plan: p.clone() },
    };
    conf.running = plan;
    if let Some(tx) = &inner.mix_tx {
        let _ = tx.send(cmd);
    }
}

/// A closed room's mix stops.
fn forget_mix(inner: &mut Inner, key: &RoomKey) {
    if let Some(conf) = inner.mixes.remove(key) {
        inner.mix_streams.remove(&conf.stream);
        if conf.running.is_some() {
            if let Some(tx) = &inner.mix_tx {
                let _ = tx.send(MixCommand::Stop { key: key.clone() });
            }
        }
    }
}

fn hook(inner: &Inner, key: &RoomKey, cb: super::callbacks::Callback) {
    if let Some(h) = &inner.hooks {
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let _ = h.send((key.clone(), cb, ms));
    }
}

/// The thread that writes room webhooks to the outbox in the order they happened (file I/O stays off the
/// rooms' lock and the runtime).
fn spawn_hook_writer(outbox: crate::record::outbox::Outbox, urls: Vec<String>, key: String) -> Hooks {
    let (tx, rx) = std::sync::mpsc::channel::<(RoomKey, super::callbacks::Callback, u64)>();
    let spawned = std::thread::Builder::new().name("room-webhooks".into()).spawn(move || {
        for (n, (room, cb, ms)) in rx.into_iter().enumerate() {
            let body = super::callbacks::body(&room, &cb, ms).to_string();
            let headers = match key.is_empty() {
                true => vec![("SdkAppId".to_owned(), room.app.to_string())],
                false => vec![
                    ("SdkAppId".to_owned(), room.app.to_string()),
                    ("Sign".to_owned(), super::callbacks::sign(&key, body.as_bytes())),
                ],
            };
            // Ids sort in the order the events happened, across restarts too (time first).
            let id = format!("{ms:013}-{n:010}");
            if let Err(e) = outbox.enqueue_raw(&id, &urls, body, headers) {
                tracing::error!(error = %e, room = %room, event = cb.event_type, "room webhook not stored");
            }
        }
    });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the room webhook writer");
    }
    tx
}

fn member_views(rooms: &Rooms, inner: &Inner, key: &RoomKey) -> Vec<MemberView> {
    let Ok(members) = rooms.members(key) else { return Vec::new() };
    members
        .iter()
        .map(|m| MemberView {
            member: m.clone(),
            stream: inner.sessions.get(&m.session).map(|s| s.stream.clone()).unwrap_or_default(),
        })
        .collect()
}

/// A member that is gone leaves with reason `timeout`.
fn time_out(rooms: &mut Rooms, inner: &mut Inner, sid: u64, now: Instant, why: &str, effects: &mut Vec<Effect>) {
    let Some(s) = inner.sessions.get(&sid) else { return };
    let (key, user) = (s.room.clone(), s.user.clone());
    if let Ok(ev) = rooms.leave(&key, &user, Some(sid), LeaveReason::Timeout, now) {
        deliver(rooms, inner, &key, ev);
    }
    end_session(inner, sid, why, effects);
    tracing::info!(room = %key, %user, why, "member timed out");
}

/// Forgets a login and its credentials; its push and plays end (outside the lock).
fn end_session(inner: &mut Inner, sid: u64, reason: &str, effects: &mut Vec<Effect>) {
    if let Some(s) = inner.sessions.remove(&sid) {
        inner.by_token.remove(&s.token);
        inner.by_member_key.remove(&s.member_key);
        if inner.by_stream.get(&s.stream) == Some(&sid) {
            inner.by_stream.remove(&s.stream);
        }
        effects.push(Effect::KickPublisher(s.stream, reason.to_owned()));
        effects.push(Effect::KickPlays(s.member_key, reason.to_owned()));
    }
}

/// Room and user ids: 1–64 of `A-Z a-z 0-9 _ -` (they make stream names and URLs).
fn check_id(field: &'static str, id: &str) -> Result<(), ServiceError> {
    let ok = (1..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(ServiceError::Invalid { field, detail: format!("{id:?} is not 1-64 characters of A-Z a-z 0-9 _ -") })
    }
}

fn random_hex(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    rand::thread_rng().fill_bytes(&mut b);
    hex::encode(b)
}
