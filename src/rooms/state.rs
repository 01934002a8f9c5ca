//! The rooms' state: who is in which room, with what role and media, and the numbered events each change makes.
//! Pure: the caller passes the monotonic time (`Instant`) and the wall time (Unix seconds) in, and delivers the
//! events returned; nothing here blocks, spawns or reads a clock.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

/// A room: an sdkAppId and the room id. Numeric room ids are kept as their decimal string, so a mini program
/// entering room 1234 and a browser entering "1234" meet (as the vendor's string/number ids do).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RoomKey {
    pub app: u32,
    pub id: String,
}

impl std::fmt::Display for RoomKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.app, self.id)
    }
}

/// What a member is to the room. In call rooms the role follows the uplink (trtc-wx): a member publishing
/// audio or video is an anchor, one publishing nothing is audience. A live room's presenter stays presenter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Presenter,
    Anchor,
    Audience,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientKind {
    Miniprogram,
    Web,
}

/// A call room (webrtc-room, rtc-room, trtc-wx): every member may publish. A live room (live-room): the
/// presenter publishes, the audience watches the room's stream and co-hosts only when the presenter accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RoomKind {
    Call,
    Live,
}

/// Why a member is no longer in the room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LeaveReason {
    Left,
    Kicked,
    Dissolved,
    DuplicateLogin,
    Timeout,
}

/// Events, named as trtc-wx names them; each carries the room's next sequence number when logged.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "event", rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RoomEvent {
    RemoteUserJoin {
        user_id: String,
        role: Role,
        client: ClientKind,
    },
    RemoteUserLeave {
        user_id: String,
        reason: LeaveReason,
    },
    RemoteVideoAdd {
        user_id: String,
    },
    RemoteVideoRemove {
        user_id: String,
    },
    RemoteAudioAdd {
        user_id: String,
    },
    RemoteAudioRemove {
        user_id: String,
    },
    /// To the member (session) put out: kicked, dissolved or logged in elsewhere.
    KickedOut {
        user_id: String,
        #[serde(skip)]
        session: u64,
        reason: LeaveReason,
    },
    TextMessage {
        from: String,
        to: Option<String>,
        text: String,
    },
    CustomMessage {
        from: String,
        to: Option<String>,
        cmd: String,
        data: serde_json::Value,
    },
    /// To the presenter: an audience member asks to co-host.
    JoinRequest {
        request_id: u64,
        user_id: String,
        reason: String,
    },
    /// To the member who asked.
    JoinResponse {
        request_id: u64,
        accept: bool,
        reason: String,
    },
    RoleChanged {
        user_id: String,
        role: Role,
    },
    RoomClosed {
        reason: LeaveReason,
    },
    /// A member's push quality changed (live-pusher's `netQualityLevel`: 0 unknown, 1 best … 5 very poor, 6
    /// unavailable), from what livegate measures of its ingest.
    NetworkQuality {
        user_id: String,
        quality: u8,
    },
    /// Something the room asked for failed (its mix could not start): to everyone.
    Error {
        code: String,
        detail: String,
    },
}

/// Who an event is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recipient {
    All,
    /// One member (a C2C message, a join request to the presenter, the answer to it).
    User(String),
    /// One login of a member (the one put out).
    Session(u64),
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Sequenced {
    pub seq: u64,
    #[serde(skip)]
    pub to: Recipient,
    #[serde(flatten)]
    pub event: RoomEvent,
}

impl Sequenced {
    /// Whether the login `session` of `user` receives this event.
    pub fn is_for(&self, user: &str, session: u64) -> bool {
        match &self.to {
            Recipient::All => true,
            Recipient::User(u) => u == user,
            Recipient::Session(s) => *s == session,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Member {
    pub user_id: String,
    pub client: ClientKind,
    pub role: Role,
    /// Unix seconds.
    pub joined_at: u64,
    /// The login this member entered with: a second login of the same user id replaces it.
    #[serde(skip)]
    pub session: u64,
    pub audio: bool,
    pub video: bool,
    /// Whether its push is let in: always in a call room; in a live room the presenter's, and a co-host's
    /// once the presenter accepted its join request.
    pub may_publish: bool,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RoomError {
    #[error("room {room} is full ({max} members)")]
    RoomFull { room: RoomKey, max: usize },
    #[error("{max} rooms are open: no more can be created")]
    TooManyRooms { max: usize },
    #[error("room {0} does not exist")]
    NotFound(RoomKey),
    #[error("{user} is not in room {room}")]
    NotMember { room: RoomKey, user: String },
    #[error("{0}")]
    Forbidden(String),
    #[error("join request {0} is not pending")]
    NoSuchRequest(u64),
    #[error("{0}")]
    RateLimited(String),
}

/// How often a member may ask to co-host.
pub const JOIN_REQUESTS_PER_MINUTE: usize = 5;

#[derive(Debug, Clone, Copy)]
pub struct RoomLimits {
    pub max_members: usize,
    pub max_rooms: usize,
    pub empty_grace: Duration,
    pub replay_events: usize,
}

#[derive(Debug, Clone)]
pub struct EnterRequest {
    pub user_id: String,
    pub client: ClientKind,
    /// A live room's presenter says so when it creates the room; everyone else starts as audience and becomes
    /// an anchor when its media arrives.
    pub presenter: bool,
    pub room_name: Option<String>,
}

/// What `enter` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entered {
    pub session: u64,
    pub created: bool,
    /// The session this login replaced (the same user id, entered before): it is put out with
    /// `KICKED_OUT duplicate_login`.
    pub replaced: Option<u64>,
    pub events: Vec<Sequenced>,
}

/// A room as the room list shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RoomSummary {
    #[serde(rename = "sdk_app_id")]
    pub app: u32,
    pub room_id: String,
    pub name: String,
    pub kind: RoomKind,
    pub creator: String,
    pub created_at: u64,
    pub members: usize,
}

struct Room {
    kind: RoomKind,
    name: String,
    creator: String,
    created_at: u64,
    members: Vec<Member>,
    next_seq: u64,
    log: VecDeque<Sequenced>,
    empty_since: Option<Instant>,
    next_request: u64,
    /// Pending join requests: id → who asked.
    pending: BTreeMap<u64, String>,
    /// When each member asked lately (for the rate limit).
    asked: BTreeMap<String, VecDeque<Instant>>,
}

impl Room {
    fn emit(&mut self, replay: usize, event: RoomEvent, out: &mut Vec<Sequenced>) {
        let to = match &event {
            RoomEvent::KickedOut { session, .. } => Recipient::Session(*session),
            RoomEvent::TextMessage { to: Some(u), .. } | RoomEvent::CustomMessage { to: Some(u), .. } => {
                Recipient::User(u.clone())
            }
            _ => Recipient::All,
        };
        self.emit_to(replay, event, to, out);
    }

    fn emit_to(&mut self, replay: usize, event: RoomEvent, to: Recipient, out: &mut Vec<Sequenced>) {
        self.next_seq += 1;
        let s = Sequenced { seq: self.next_seq, to, event };
        self.log.push_back(s.clone());
        while self.log.len() > replay {
            self.log.pop_front();
        }
        out.push(s);
    }

    fn summary(&self, key: &RoomKey) -> RoomSummary {
        RoomSummary {
            app: key.app,
            room_id: key.id.clone(),
            name: self.name.clone(),
            kind: self.kind,
            creator: self.creator.clone(),
            created_at: self.created_at,
            members: self.members.len(),
        }
    }
}

/// Every open room.
pub struct Rooms {
    limits: RoomLimits,
    rooms: BTreeMap<RoomKey, Room>,
    next_session: u64,
}

impl Rooms {
    pub fn new(limits: RoomLimits) -> Self {
        Self { limits, rooms: BTreeMap::new(), next_session: 0 }
    }

    /// Enters `key`, creating it if it is not open. A user id already in the room is logged in again: its old
    /// session is put out (`KICKED_OUT duplicate_login`) and the others see no leave and join.
    pub fn enter(&mut self, key: &RoomKey, req: EnterRequest, unix: u64) -> Result<Entered, RoomError> {
        let created = !self.rooms.contains_key(key);
        if created && self.rooms.len() >= self.limits.max_rooms {
            return Err(RoomError::TooManyRooms { max: self.limits.max_rooms });
        }
        let replay = self.limits.replay_events;
        let room = self.rooms.entry(key.clone()).or_insert_with(|| Room {
            kind: if req.presenter { RoomKind::Live } else { RoomKind::Call },
            name: req.room_name.clone().unwrap_or_else(|| key.id.clone()),
            creator: req.user_id.clone(),
            created_at: unix,
            members: Vec::new(),
            next_seq: 0,
            log: VecDeque::new(),
            empty_since: None,
            next_request: 0,
            pending: BTreeMap::new(),
            asked: BTreeMap::new(),
        });
        let existing = room.members.iter().position(|m| m.user_id == req.user_id);
        if existing.is_none() && room.members.len() >= self.limits.max_members {
            return Err(RoomError::RoomFull { room: key.clone(), max: self.limits.max_members });
        }
        self.next_session += 1;
        let session = self.next_session;
        let mut events = Vec::new();
        room.empty_since = None;
        let replaced = match existing {
            Some(i) => {
                let old = std::mem::replace(&mut room.members[i].session, session);
                room.members[i].client = req.client;
                let ev = RoomEvent::KickedOut {
                    user_id: req.user_id.clone(),
                    session: old,
                    reason: LeaveReason::DuplicateLogin,
                };
                room.emit(replay, ev, &mut events);
                Some(old)
            }
            None => {
                let role = if req.presenter && created { Role::Presenter } else { Role::Audience };
                let may_publish = room.kind == RoomKind::Call || role == Role::Presenter;
                room.members.push(Member {
                    may_publish,
                    user_id: req.user_id.clone(),
                    client: req.client,
                    role,
                    joined_at: unix,
                    session,
                    audio: false,
                    video: false,
                });
                let ev = RoomEvent::RemoteUserJoin { user_id: req.user_id, role, client: req.client };
                room.emit(replay, ev, &mut events);
                None
            }
        };
        Ok(Entered { session, created, replaced, events })
    }

    /// `user` leaves (or is put out, or timed out). `session`, when given, must be the current login: a
    /// replaced session's late leave does not take the new login out.
    pub fn leave(
        &mut self,
        key: &RoomKey,
        user: &str,
        session: Option<u64>,
        reason: LeaveReason,
        now: Instant,
    ) -> Result<Vec<Sequenced>, RoomError> {
        let replay = self.limits.replay_events;
        let room = self.rooms.get_mut(key).ok_or_else(|| RoomError::NotFound(key.clone()))?;
        let not_member = || RoomError::NotMember { room: key.clone(), user: user.to_owned() };
        let i = room.members.iter().position(|m| m.user_id == user).ok_or_else(not_member)?;
        if session.is_some_and(|s| s != room.members[i].session) {
            return Err(not_member());
        }
        let m = room.members.remove(i);
        room.pending.retain(|_, u| *u != m.user_id);
        room.asked.remove(&m.user_id);
        let mut events = Vec::new();
        if matches!(reason, LeaveReason::Kicked) {
            let ev = RoomEvent::KickedOut { user_id: m.user_id.clone(), session: m.session, reason };
            room.emit(replay, ev, &mut events);
        }
        if m.video {
            room.emit(replay, RoomEvent::RemoteVideoRemove { user_id: m.user_id.clone() }, &mut events);
        }
        if m.audio {
            room.emit(replay, RoomEvent::RemoteAudioRemove { user_id: m.user_id.clone() }, &mut events);
        }
        room.emit(replay, RoomEvent::RemoteUserLeave { user_id: m.user_id, reason }, &mut events);
        if room.members.is_empty() {
            room.empty_since = Some(now);
        }
        Ok(events)
    }

    /// Ends a room: every member is put out, then the room is closed (and forgotten).
    pub fn dissolve(&mut self, key: &RoomKey) -> Result<Vec<Sequenced>, RoomError> {
        let replay = self.limits.replay_events;
        let mut room = self.rooms.remove(key).ok_or_else(|| RoomError::NotFound(key.clone()))?;
        let mut events = Vec::new();
        for m in std::mem::take(&mut room.members) {
            let ev = RoomEvent::KickedOut { user_id: m.user_id, session: m.session, reason: LeaveReason::Dissolved };
            room.emit(replay, ev, &mut events);
        }
        room.emit(replay, RoomEvent::RoomClosed { reason: LeaveReason::Dissolved }, &mut events);
        Ok(events)
    }

    /// What a member's stream carries now, as the hub sees it (media, not what a client claims): the
    /// differences become `*_ADD`/`*_REMOVE` events, and in call rooms the role follows the uplink.
    /// A member's push quality changed: everyone hears it (a member not in the room: nothing).
    pub fn network_quality(&mut self, key: &RoomKey, user: &str, quality: u8) -> Vec<Sequenced> {
        let replay = self.limits.replay_events;
        let mut events = Vec::new();
        if let Some(room) = self.rooms.get_mut(key).filter(|r| r.members.iter().any(|m| m.user_id == user)) {
            room.emit(replay, RoomEvent::NetworkQuality { user_id: user.to_owned(), quality }, &mut events);
        }
        events
    }

    pub fn set_media(
        &mut self,
        key: &RoomKey,
        user: &str,
        audio: bool,
        video: bool,
    ) -> Result<Vec<Sequenced>, RoomError> {
        let replay = self.limits.replay_events;
        let room = self.rooms.get_mut(key).ok_or_else(|| RoomError::NotFound(key.clone()))?;
        let i = room
            .members
            .iter()
            .position(|m| m.user_id == user)
            .ok_or_else(|| RoomError::NotMember { room: key.clone(), user: user.to_owned() })?;
        let (was_audio, was_video, role) = (room.members[i].audio, room.members[i].video, room.members[i].role);
        room.members[i].audio = audio;
        room.members[i].video = video;
        let u = || user.to_owned();
        let mut events = Vec::new();
        let role_now = match role {
            Role::Presenter => Role::Presenter,
            _ if audio || video => Role::Anchor,
            _ => Role::Audience,
        };
        if role_now != role {
            room.members[i].role = role_now;
            room.emit(replay, RoomEvent::RoleChanged { user_id: u(), role: role_now }, &mut events);
        }
        match (was_video, video) {
            (false, true) => room.emit(replay, RoomEvent::RemoteVideoAdd { user_id: u() }, &mut events),
            (true, false) => room.emit(replay, RoomEvent::RemoteVideoRemove { user_id: u() }, &mut events),
            _ => {}
        }
        match (was_audio, audio) {
            (false, true) => room.emit(replay, RoomEvent::RemoteAudioAdd { user_id: u() }, &mut events),
            (true, false) => room.emit(replay, RoomEvent::RemoteAudioRemove { user_id: u() }, &mut events),
            _ => {}
        }
        Ok(events)
    }

    /// A text or custom message from `from`, to everyone or to the member `to`.
    pub fn message(&mut self, key: &RoomKey, event: RoomEvent) -> Result<Sequenced, RoomError> {
        let replay = self.limits.replay_events;
        let room = self.rooms.get_mut(key).ok_or_else(|| RoomError::NotFound(key.clone()))?;
        let (from, to) = match &event {
            RoomEvent::TextMessage { from, to, .. } | RoomEvent::CustomMessage { from, to, .. } => (from, to),
            _ => return Err(RoomError::Forbidden("only text and custom messages may be sent".into())),
        };
        for u in std::iter::once(from).chain(to) {
            if !room.members.iter().any(|m| &m.user_id == u) {
                return Err(RoomError::NotMember { room: key.clone(), user: u.clone() });
            }
        }
        let mut out = Vec::new();
        room.emit(replay, event, &mut out);
        Ok(out.remove(0))
    }

    /// An audience member of a live room asks the presenter to co-host: the request's id and the
    /// `JOIN_REQUEST` to the presenter. One pending request per member, `JOIN_REQUESTS_PER_MINUTE` a minute.
    pub fn request_join(
        &mut self,
        key: &RoomKey,
        user: &str,
        reason: &str,
        now: Instant,
    ) -> Result<(u64, Vec<Sequenced>), RoomError> {
        let replay = self.limits.replay_events;
        let room = self.rooms.get_mut(key).ok_or_else(|| RoomError::NotFound(key.clone()))?;
        let m = room
            .members
            .iter()
            .find(|m| m.user_id == user)
            .ok_or_else(|| RoomError::NotMember { room: key.clone(), user: user.to_owned() })?;
        if room.kind != RoomKind::Live {
            return Err(RoomError::Forbidden(format!("room {key} is a call room: every member may publish")));
        }
        if m.may_publish {
            return Err(RoomError::Forbidden(format!("{user} may publish already")));
        }
        let Some(presenter) = room.members.iter().find(|m| m.role == Role::Presenter).map(|m| m.user_id.clone()) else {
            return Err(RoomError::Forbidden(format!("room {key} has no presenter to answer")));
        };
        if room.pending.values().any(|u| u == user) {
            return Err(RoomError::RateLimited(format!("{user} has a join request pending")));
        }
        let asked = room.asked.entry(user.to_owned()).or_default();
        while asked.front().is_some_and(|t| now.saturating_duration_since(*t) >= Duration::from_secs(60)) {
            asked.pop_front();
        }
        if asked.len() >= JOIN_REQUESTS_PER_MINUTE {
            return Err(RoomError::RateLimited(format!(
                "{user} asked {JOIN_REQUESTS_PER_MINUTE} times within a minute"
            )));
        }
        asked.push_back(now);
        room.next_request += 1;
        let id = room.next_request;
        room.pending.insert(id, user.to_owned());
        let mut out = Vec::new();
        let ev = RoomEvent::JoinRequest { request_id: id, user_id: user.to_owned(), reason: reason.to_owned() };
        room.emit_to(replay, ev, Recipient::User(presenter), &mut out);
        Ok((id, out))
    }

    /// The presenter answers join request `id`; on accept the member may publish. Returns who asked and the
    /// `JOIN_RESPONSE` to them.
    pub fn respond_join(
        &mut self,
        key: &RoomKey,
        responder: &str,
        id: u64,
        accept: bool,
        reason: &str,
    ) -> Result<(String, Vec<Sequenced>), RoomError> {
        let replay = self.limits.replay_events;
        let room = self.rooms.get_mut(key).ok_or_else(|| RoomError::NotFound(key.clone()))?;
        if !room.members.iter().any(|m| m.user_id == responder && m.role == Role::Presenter) {
            return Err(RoomError::Forbidden(format!("only the presenter answers join requests, not {responder}")));
        }
        let user = room.pending.remove(&id).ok_or(RoomError::NoSuchRequest(id))?;
        if accept {
            if let Some(m) = room.members.iter_mut().find(|m| m.user_id == user) {
                m.may_publish = true;
            }
        }
        let mut out = Vec::new();
        let ev = RoomEvent::JoinResponse { request_id: id, accept, reason: reason.to_owned() };
        room.emit_to(replay, ev, Recipient::User(user.clone()), &mut out);
        Ok((user, out))
    }

    /// Whether `user` may put other members out: a live room's presenter, a call room's creator.
    pub fn may_kick(&self, key: &RoomKey, user: &str) -> bool {
        self.rooms.get(key).is_some_and(|r| match r.kind {
            RoomKind::Live => r.members.iter().any(|m| m.user_id == user && m.role == Role::Presenter),
            RoomKind::Call => r.creator == user && r.members.iter().any(|m| m.user_id == user),
        })
    }

    /// Whether `user` may dissolve the room: its creator, while in it.
    pub fn may_dissolve(&self, key: &RoomKey, user: &str) -> bool {
        self.rooms.get(key).is_some_and(|r| r.creator == user && r.members.iter().any(|m| m.user_id == user))
    }

    pub fn member(&self, key: &RoomKey, user: &str) -> Option<&Member> {
        self.rooms.get(key).and_then(|r| r.members.iter().find(|m| m.user_id == user))
    }

    /// A room-wide error event.
    pub fn error(&mut self, key: &RoomKey, code: &str, detail: &str) -> Option<Sequenced> {
        let replay = self.limits.replay_events;
        let room = self.rooms.get_mut(key)?;
        let mut out = Vec::new();
        room.emit(replay, RoomEvent::Error { code: code.into(), detail: detail.into() }, &mut out);
        out.pop()
    }

    /// The room's last sequence number.
    pub fn seq(&self, key: &RoomKey) -> Option<u64> {
        self.rooms.get(key).map(|r| r.next_seq)
    }

    pub fn contains(&self, key: &RoomKey) -> bool {
        self.rooms.contains_key(key)
    }

    /// Closes rooms that have been empty for the grace period; returns them with their closing event.
    pub fn tick(&mut self, now: Instant) -> Vec<(RoomKey, Sequenced)> {
        let grace = self.limits.empty_grace;
        let expired: Vec<RoomKey> = self
            .rooms
            .iter()
            .filter(|(_, r)| r.empty_since.is_some_and(|t| now.saturating_duration_since(t) >= grace))
            .map(|(k, _)| k.clone())
            .collect();
        let replay = self.limits.replay_events;
        let mut out = Vec::new();
        for k in expired {
            if let Some(mut r) = self.rooms.remove(&k) {
                let mut ev = Vec::new();
                r.emit(replay, RoomEvent::RoomClosed { reason: LeaveReason::Left }, &mut ev);
                out.extend(ev.into_iter().map(|e| (k.clone(), e)));
            }
        }
        out
    }

    /// The events after `since` a reconnecting socket missed; `None` when they are no longer kept (the client
    /// must reload the member list instead).
    pub fn events_since(&self, key: &RoomKey, since: u64) -> Result<Option<Vec<Sequenced>>, RoomError> {
        let room = self.rooms.get(key).ok_or_else(|| RoomError::NotFound(key.clone()))?;
        let oldest = room.log.front().map_or(room.next_seq + 1, |s| s.seq);
        if since + 1 < oldest {
            return Ok(None);
        }
        Ok(Some(room.log.iter().filter(|s| s.seq > since).cloned().collect()))
    }

    pub fn members(&self, key: &RoomKey) -> Result<&[Member], RoomError> {
        self.rooms.get(key).map(|r| &r.members[..]).ok_or_else(|| RoomError::NotFound(key.clone()))
    }

    pub fn summary(&self, key: &RoomKey) -> Result<RoomSummary, RoomError> {
        self.rooms.get(key).map(|r| r.summary(key)).ok_or_else(|| RoomError::NotFound(key.clone()))
    }

    /// Rooms of `app` in id order, `cnt` from position `index` (the RoomService list's paging), and how many
    /// there are in all.
    /// Every open room's key.
    pub fn keys(&self) -> Vec<RoomKey> {
        self.rooms.keys().cloned().collect()
    }

    pub fn list(&self, app: u32, index: usize, cnt: usize) -> (usize, Vec<RoomSummary>) {
        let mine: Vec<_> = self.rooms.iter().filter(|(k, _)| k.app == app).collect();
        let page = mine.iter().skip(index).take(cnt).map(|(k, r)| r.summary(k)).collect();
        (mine.len(), page)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> RoomLimits {
        RoomLimits { max_members: 3, max_rooms: 2, empty_grace: Duration::from_secs(30), replay_events: 4 }
    }

    fn key(id: &str) -> RoomKey {
        RoomKey { app: 1400000123, id: id.into() }
    }

    fn req(user: &str) -> EnterRequest {
        EnterRequest { user_id: user.into(), client: ClientKind::Web, presenter: false, room_name: None }
    }

    fn names(ev: &[Sequenced]) -> Vec<String> {
        ev.iter().map(|s| serde_json::to_value(s).unwrap()["event"].as_str().unwrap().to_owned()).collect()
    }

    #[test]
    fn members_join_publish_and_leave_with_numbered_events() {
        let mut r = Rooms::new(limits());
        let t = Instant::now();
        let a = r.enter(&key("1234"), req("alice"), 1000).unwrap();
        assert!(a.created && a.replaced.is_none());
        assert_eq!(names(&a.events), ["REMOTE_USER_JOIN"]);
        let b = r.enter(&key("1234"), EnterRequest { client: ClientKind::Miniprogram, ..req("bob") }, 1001).unwrap();
        assert!(!b.created);
        // Bob's push goes live with video and audio: he becomes an anchor, and the others hear of it.
        let ev = r.set_media(&key("1234"), "bob", true, true).unwrap();
        assert_eq!(names(&ev), ["ROLE_CHANGED", "REMOTE_VIDEO_ADD", "REMOTE_AUDIO_ADD"]);
        assert_eq!(ev.iter().map(|s| s.seq).collect::<Vec<_>>(), [3, 4, 5], "one sequence per room");
        // enable-mic off: the audio goes, he stays an anchor.
        assert_eq!(names(&r.set_media(&key("1234"), "bob", false, true).unwrap()), ["REMOTE_AUDIO_REMOVE"]);
        assert!(r.set_media(&key("1234"), "bob", false, true).unwrap().is_empty(), "no change, no event");
        let ev = r.leave(&key("1234"), "bob", Some(b.session), LeaveReason::Left, t).unwrap();
        assert_eq!(names(&ev), ["REMOTE_VIDEO_REMOVE", "REMOTE_USER_LEAVE"]);
        let s = r.summary(&key("1234")).unwrap();
        assert_eq!((s.creator.as_str(), s.members, s.created_at), ("alice", 1, 1000));
    }

    #[test]
    fn a_second_login_replaces_the_first_and_its_late_leave_is_ignored() {
        let mut r = Rooms::new(limits());
        let t = Instant::now();
        let first = r.enter(&key("r"), req("alice"), 0).unwrap();
        let second = r.enter(&key("r"), req("alice"), 0).unwrap();
        assert_eq!(second.replaced, Some(first.session));
        assert_eq!(
            second.events[0].event,
            RoomEvent::KickedOut {
                user_id: "alice".into(),
                session: first.session,
                reason: LeaveReason::DuplicateLogin
            }
        );
        assert_eq!(r.members(&key("r")).unwrap().len(), 1);
        assert!(r.leave(&key("r"), "alice", Some(first.session), LeaveReason::Left, t).is_err());
        assert_eq!(r.members(&key("r")).unwrap().len(), 1, "the new login stays");
    }

    #[test]
    fn limits_kick_dissolve_and_the_empty_room_grace() {
        let mut r = Rooms::new(limits());
        let t = Instant::now();
        for u in ["a", "b", "c"] {
            r.enter(&key("x"), req(u), 0).unwrap();
        }
        assert_eq!(r.enter(&key("x"), req("d"), 0), Err(RoomError::RoomFull { room: key("x"), max: 3 }));
        r.enter(&key("y"), req("a"), 0).unwrap();
        assert_eq!(r.enter(&key("z"), req("a"), 0), Err(RoomError::TooManyRooms { max: 2 }));
        let ev = r.leave(&key("x"), "c", None, LeaveReason::Kicked, t).unwrap();
        assert_eq!(names(&ev), ["KICKED_OUT", "REMOTE_USER_LEAVE"]);
        let ev = r.dissolve(&key("x")).unwrap();
        assert_eq!(names(&ev), ["KICKED_OUT", "KICKED_OUT", "ROOM_CLOSED"]);
        assert_eq!(r.summary(&key("x")), Err(RoomError::NotFound(key("x"))));
        // The last member leaves: the room closes after the grace, unless someone comes back.
        r.leave(&key("y"), "a", None, LeaveReason::Left, t).unwrap();
        assert!(r.tick(t + Duration::from_secs(29)).is_empty());
        r.enter(&key("y"), req("a"), 0).unwrap();
        assert!(r.tick(t + Duration::from_secs(60)).is_empty(), "back in time: still open");
        r.leave(&key("y"), "a", None, LeaveReason::Left, t + Duration::from_secs(61)).unwrap();
        let closed = r.tick(t + Duration::from_secs(91));
        assert_eq!(closed.len(), 1);
        assert_eq!(closed[0].1.event, RoomEvent::RoomClosed { reason: LeaveReason::Left });
    }

    #[test]
    fn a_reconnecting_socket_gets_what_it_missed_or_is_told_to_reload() {
        let mut r = Rooms::new(limits());
        r.enter(&key("r"), req("a"), 0).unwrap(); // seq 1
        r.enter(&key("r"), req("b"), 0).unwrap(); // seq 2
        let missed = r.events_since(&key("r"), 1).unwrap().unwrap();
        assert_eq!(missed.iter().map(|s| s.seq).collect::<Vec<_>>(), [2]);
        let mut last = 0;
        for _ in 0..3 {
            r.set_media(&key("r"), "b", true, false).unwrap();
            last = r.set_media(&key("r"), "b", false, false).unwrap().last().unwrap().seq;
        }
        // Four are kept: a socket that saw up to last - 4 catches up, one further behind must reload.
        assert_eq!(r.events_since(&key("r"), 1).unwrap(), None);
        assert_eq!(r.events_since(&key("r"), last - 5).unwrap(), None);
        let caught = r.events_since(&key("r"), last - 4).unwrap().unwrap();
        assert_eq!(caught.iter().map(|s| s.seq).collect::<Vec<_>>(), [last - 3, last - 2, last - 1, last]);
        assert_eq!(r.events_since(&key("r"), last).unwrap(), Some(vec![]));
    }

    #[test]
    fn the_room_list_pages_by_app() {
        let mut r = Rooms::new(RoomLimits { max_rooms: 10, ..limits() });
        for id in ["a", "b", "c"] {
            r.enter(&key(id), req("u"), 0).unwrap();
        }
        r.enter(&RoomKey { app: 7, id: "other".into() }, req("u"), 0).unwrap();
        let (total, page) = r.list(1400000123, 1, 5);
        assert_eq!(total, 3);
        assert_eq!(page.iter().map(|s| s.room_id.as_str()).collect::<Vec<_>>(), ["b", "c"]);
    }

    #[test]
    fn messages_reach_all_or_one_and_co_hosting_needs_the_presenter() {
        let mut r = Rooms::new(limits());
        let t = Instant::now();
        let host = EnterRequest { presenter: true, ..req("host") };
        r.enter(&key("live"), host, 0).unwrap();
        let carol = r.enter(&key("live"), req("carol"), 0).unwrap();
        assert_eq!(r.summary(&key("live")).unwrap().kind, RoomKind::Live);
        assert!(r.member(&key("live"), "host").unwrap().may_publish);
        assert!(!r.member(&key("live"), "carol").unwrap().may_publish, "a live room's audience does not publish");

        let to_all = RoomEvent::TextMessage { from: "carol".into(), to: None, text: "hi".into() };
        let m = r.message(&key("live"), to_all).unwrap();
        assert!(m.is_for("host", 1) && m.is_for("carol", carol.session));
        let c2c =
            RoomEvent::CustomMessage { from: "host".into(), to: Some("carol".into()), cmd: "x".into(), data: 1.into() };
        let m = r.message(&key("live"), c2c).unwrap();
        assert!(m.is_for("carol", carol.session) && !m.is_for("host", 1));
        let stranger = RoomEvent::TextMessage { from: "carol".into(), to: Some("zed".into()), text: String::new() };
        assert!(matches!(r.message(&key("live"), stranger), Err(RoomError::NotMember { .. })));

        let (id, ev) = r.request_join(&key("live"), "carol", "please", t).unwrap();
        assert_eq!(ev[0].to, Recipient::User("host".into()), "the request goes to the presenter only");
        assert!(matches!(r.request_join(&key("live"), "carol", "", t), Err(RoomError::RateLimited(_))));
        assert!(matches!(r.respond_join(&key("live"), "carol", id, true, ""), Err(RoomError::Forbidden(_))));
        let (asked, ev) = r.respond_join(&key("live"), "host", id, false, "later").unwrap();
        assert_eq!((asked.as_str(), &ev[0].to), ("carol", &Recipient::User("carol".into())));
        assert!(!r.member(&key("live"), "carol").unwrap().may_publish);
        assert_eq!(r.respond_join(&key("live"), "host", id, true, ""), Err(RoomError::NoSuchRequest(id)));
        // Five requests a minute: the sixth within it is refused, one a minute later is let in.
        for _ in 0..4 {
            let (id, _) = r.request_join(&key("live"), "carol", "", t).unwrap();
            r.respond_join(&key("live"), "host", id, false, "").unwrap();
        }
        assert!(matches!(r.request_join(&key("live"), "carol", "", t), Err(RoomError::RateLimited(_))));
        let (id, _) = r.request_join(&key("live"), "carol", "", t + Duration::from_secs(60)).unwrap();
        r.respond_join(&key("live"), "host", id, true, "").unwrap();
        assert!(r.member(&key("live"), "carol").unwrap().may_publish);
        assert!(r.may_kick(&key("live"), "host") && !r.may_kick(&key("live"), "carol"));
        assert!(r.may_dissolve(&key("live"), "host"));

        // In a call room everyone publishes, nobody asks, and the creator may kick.
        r.enter(&key("call"), req("a"), 0).unwrap();
        r.enter(&key("call"), req("b"), 0).unwrap();
        assert!(r.member(&key("call"), "b").unwrap().may_publish);
        assert!(matches!(r.request_join(&key("call"), "b", "", t), Err(RoomError::Forbidden(_))));
        assert!(r.may_kick(&key("call"), "a") && !r.may_kick(&key("call"), "b"));
    }
}
