//! Room webhooks in TRTC's shape: which room events make a callback, its JSON, and its `Sign` header. Pure: the
//! service hands the bodies to an on-disk outbox.

use base64::Engine;
use hmac::Mac;
use serde_json::{json, Value};

use super::state::{LeaveReason, Role, RoomEvent, RoomKey};

/// TRTC's event types.
pub mod event_type {
    pub const ROOM_CREATED: u32 = 101;
    pub const ROOM_CLOSED: u32 = 102;
    pub const ENTER: u32 = 103;
    pub const EXIT: u32 = 104;
    pub const ROLE_CHANGED: u32 = 105;
    pub const VIDEO_START: u32 = 201;
    pub const VIDEO_STOP: u32 = 202;
    pub const AUDIO_START: u32 = 203;
    pub const AUDIO_STOP: u32 = 204;
}

/// What a callback tells, before it is dated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Callback {
    pub event_type: u32,
    pub user: Option<String>,
    pub role: Option<Role>,
    pub reason: Option<LeaveReason>,
}

impl Callback {
    fn about(event_type: u32, user: &str) -> Self {
        Callback { event_type, user: Some(user.to_owned()), role: None, reason: None }
    }
}

/// The callback a room event makes, if any. A kick or a timeout makes its exit from the leave that follows; a
/// dissolve has no leave, so each member's put-out is its exit; a second login is no exit at all.
pub fn for_event(e: &RoomEvent) -> Option<Callback> {
    use event_type::*;
    Some(match e {
        RoomEvent::RemoteUserJoin { user_id, role, .. } => {
            Callback { role: Some(*role), ..Callback::about(ENTER, user_id) }
        }
        RoomEvent::RemoteUserLeave { user_id, reason } => {
            Callback { reason: Some(*reason), ..Callback::about(EXIT, user_id) }
        }
        RoomEvent::KickedOut { user_id, reason: LeaveReason::Dissolved, .. } => {
            Callback { reason: Some(LeaveReason::Dissolved), ..Callback::about(EXIT, user_id) }
        }
        RoomEvent::RoleChanged { user_id, role } => {
            Callback { role: Some(*role), ..Callback::about(ROLE_CHANGED, user_id) }
        }
        RoomEvent::RemoteVideoAdd { user_id } => Callback::about(VIDEO_START, user_id),
        RoomEvent::RemoteVideoRemove { user_id } => Callback::about(VIDEO_STOP, user_id),
        RoomEvent::RemoteAudioAdd { user_id } => Callback::about(AUDIO_START, user_id),
        RoomEvent::RemoteAudioRemove { user_id } => Callback::about(AUDIO_STOP, user_id),
        RoomEvent::RoomClosed { .. } => Callback { event_type: ROOM_CLOSED, user: None, role: None, reason: None },
        _ => return None,
    })
}

/// TRTC's role numbers: 20 anchor (a presenter too), 21 audience.
fn role_number(r: Role) -> u32 {
    match r {
        Role::Presenter | Role::Anchor => 20,
        Role::Audience => 21,
    }
}

/// TRTC's exit reasons: 1 left, 2 timed out, 3 kicked, 4 room dissolved; 5 (livegate's) logged in elsewhere.
fn reason_number(r: LeaveReason) -> u32 {
    match r {
        LeaveReason::Left => 1,
        LeaveReason::Timeout => 2,
        LeaveReason::Kicked => 3,
        LeaveReason::Dissolved => 4,
        LeaveReason::DuplicateLogin => 5,
    }
}

/// The JSON body: `EventGroupId` 1 for room events, 2 for media; the room id as a number when it is one.
pub fn body(key: &RoomKey, cb: &Callback, unix_ms: u64) -> Value {
    let room: Value = match key.id.parse::<u32>() {
        Ok(n) if n.to_string() == key.id => n.into(),
        _ => key.id.clone().into(),
    };
    let mut info = json!({
        "SdkAppId": key.app,
        "RoomId": room,
        "EventTs": unix_ms / 1000,
        "EventMsTs": unix_ms,
    });
    if let Some(u) = &cb.user {
        info["UserId"] = u.clone().into();
    }
    if let Some(r) = cb.role {
        info["Role"] = role_number(r).into();
    }
    if let Some(r) = cb.reason {
        info["Reason"] = reason_number(r).into();
    }
    json!({
        "EventGroupId": if cb.event_type >= 200 { 2 } else { 1 },
        "EventType": cb.event_type,
        "CallbackTs": unix_ms,
        "EventInfo": info,
    })
}

/// The `Sign` header: base64 of HMAC-SHA256 of the body's bytes under the callback key.
pub fn sign(key: &str, body: &[u8]) -> String {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key.as_bytes()).expect("any key length");
    mac.update(body);
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_events_map_to_trtc_callbacks() {
        let key = RoomKey { app: 1400000123, id: "1234".into() };
        let client = crate::rooms::ClientKind::Miniprogram;
        let join = RoomEvent::RemoteUserJoin { user_id: "bob".into(), role: Role::Audience, client };
        let b = body(&key, &for_event(&join).unwrap(), 1_700_000_000_123);
        assert_eq!(
            b,
            json!({"EventGroupId": 1, "EventType": 103, "CallbackTs": 1_700_000_000_123u64, "EventInfo": {
                "SdkAppId": 1400000123, "RoomId": 1234, "EventTs": 1_700_000_000, "EventMsTs": 1_700_000_000_123u64,
                "UserId": "bob", "Role": 21}})
        );
        let named = RoomKey { app: 1, id: "0123".into() };
        assert_eq!(body(&named, &for_event(&join).unwrap(), 0)["EventInfo"]["RoomId"], "0123", "not a number");
        let video = for_event(&RoomEvent::RemoteVideoAdd { user_id: "bob".into() }).unwrap();
        assert_eq!((body(&key, &video, 0)["EventGroupId"].as_u64(), video.event_type), (Some(2), 201));
        let dup = RoomEvent::KickedOut { user_id: "bob".into(), session: 1, reason: LeaveReason::DuplicateLogin };
        assert_eq!(for_event(&dup), None, "a second login is no exit");
        let gone = RoomEvent::KickedOut { user_id: "bob".into(), session: 1, reason: LeaveReason::Dissolved };
        assert_eq!(body(&key, &for_event(&gone).unwrap(), 0)["EventInfo"]["Reason"], 4);
        let text = RoomEvent::TextMessage { from: "a".into(), to: None, text: "secret".into() };
        assert_eq!(for_event(&text), None, "messages are no webhooks");
        // The signature, checked against a known HMAC-SHA256 (RFC 4231 test case 2).
        assert_eq!(sign("Jefe", b"what do ya want for nothing?"), "W9zBRr9gdU5qBCQmCJV1x1oAPwidJzmDnexYuWTsOEM=");
    }
}
