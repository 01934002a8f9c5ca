//! The room protocol over HTTP (docs/rooms.md): enter with a userSig, member calls with the member token, the
//! member's event socket (WebSocket), and the control API's room list, kick and dissolve. The room service
//! decides; this translates requests, answers and events, and builds each member's URLs for the address the
//! member reached this server at.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use http::{header, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role as WsRole, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tracing::Instrument;

use super::{error, json, Body, HttpState};
use crate::cluster::directory::RoomRef;
use crate::cluster::service::RoomHome;
use crate::rooms::service::MAX_MESSAGE_BYTES;
use crate::rooms::{
    Actor, Backlog, ClientKind, EnterParams, MemberView, RoomError, RoomEvent, RoomKey, RoomService, Sequenced,
    ServiceError, SessionView,
};

/// Whether the connection a request came on is TLS (set by the HTTPS listener): member URLs then use
/// `https://`, `wss://` (and RTMPS when it is on).
#[derive(Debug, Clone, Copy)]
pub struct Secure;

const BODY_LIMIT: usize = 16 * 1024;
const PING_EVERY: Duration = Duration::from_secs(15);
const SILENT_LIMIT: Duration = Duration::from_secs(45);
/// Sockets one login may hold at once (a page reloading its socket, not a flood).
const SOCKETS_PER_MEMBER: usize = 4;
/// WebSocket close code for a member put out of the room (kicked, dissolved, logged in elsewhere, left).
const CLOSE_OUT: u16 = 4000;

pub async fn handle(state: &Arc<HttpState>, addr: SocketAddr, req: Request<Incoming>) -> Response<Body> {
    let rooms = state.rooms.clone();
    if !rooms.enabled() {
        return error(
            StatusCode::NOT_FOUND,
            "rooms_disabled",
            "no room app is configured: add [[rooms.apps]] with sdk_app_id and secret_key",
        );
    }
    let path = req.uri().path().trim_end_matches('/').to_owned();
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').skip(3).collect();
    let method = req.method().clone();
    let urls = Urls::of(state, &req);
    match (method, parts.as_slice()) {
        (Method::POST, ["enter"]) => enter(state, &rooms, None, req, &urls).await,
        (Method::POST, ["list"]) => list_for_member(state, &rooms, req).await,
        (Method::POST, [room, "enter"]) => {
            let room = (*room).to_owned();
            enter(state, &rooms, Some(room), req, &urls).await
        }
        (Method::GET, []) => match admin(state, addr, &req) {
            Ok(()) => list(&rooms, &req),
            Err(r) => *r,
        },
        (Method::GET, [room, "events"]) => {
            let room = (*room).to_owned();
            socket(&rooms, &room, req, urls)
        }
        (Method::POST, [room, "leave"]) => {
            member_call(&rooms, &req, room, |s| rooms.leave(s.id, Instant::now()).map(|()| json!({"left": true})))
        }
        (Method::POST, [room, "messages"]) => {
            let room = (*room).to_owned();
            message(state, &rooms, &room, req).await
        }
        (Method::POST, [room, "join-requests"]) => {
            let room = (*room).to_owned();
            request_join(state, &rooms, &room, req).await
        }
        (Method::POST, [room, "join-requests", id]) => {
            let (room, id) = ((*room).to_owned(), (*id).to_owned());
            respond_join(state, &rooms, &room, &id, req).await
        }
        (Method::GET, [room]) => match caller(state, &rooms, addr, &req, room) {
            Ok((key, who)) => match rooms.room(&key) {
                Ok((summary, members, seq)) => {
                    let viewer = match who {
                        Actor::Member(_) => bearer(&req).and_then(|t| rooms.session(t).ok()),
                        Actor::Admin => None,
                    };
                    let members: Vec<Value> =
                        members.iter().map(|m| member_json(&rooms, &urls, m, viewer.as_ref())).collect();
                    json(StatusCode::OK, &json!({"room": summary, "members": members, "seq": seq}))
                }
                Err(e) => service_error(&e),
            },
            Err(r) => *r,
        },
        (Method::DELETE, [room]) => match caller(state, &rooms, addr, &req, room) {
            Ok((key, who)) => match rooms.dissolve(who, &key) {
                Ok(()) => json(StatusCode::OK, &json!({"room_id": key.id, "dissolved": true})),
                Err(e) => service_error(&e),
            },
            Err(r) => *r,
        },
        (Method::DELETE, [room, "members", user]) => match caller(state, &rooms, addr, &req, room) {
            Ok((key, who)) => match rooms.kick(who, &key, user, Instant::now()) {
                Ok(()) => json(StatusCode::OK, &json!({"room_id": key.id, "user_id": user, "kicked": true})),
                Err(e) => service_error(&e),
            },
            Err(r) => *r,
        },
        (m, _) => error(StatusCode::NOT_FOUND, "not_found", &format!("no room route {m} {path}")),
    }
}

/// The addresses a member reaches this server at, from the request it made (its `Host`).
struct Urls {
    http: String,
    ws: String,
    rtmp: String,
}

impl Urls {
    fn of(state: &HttpState, req: &Request<Incoming>) -> Urls {
        let secure = req.extensions().get::<Secure>().is_some();
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .or(req.uri().authority().map(|a| a.as_str()))
            .filter(|h| h.bytes().all(|b| b.is_ascii_graphic()))
            .unwrap_or("localhost")
            .to_owned();
        // The host without its port: "[::1]:8080" → "[::1]", "example.com:8080" → "example.com".
        let name = match host.rfind(':') {
            Some(i) if !host[i..].contains(']') => host[..i].to_owned(),
            _ => host.clone(),
        };
        let rtmp = match (secure, state.rtmps_port) {
            (true, Some(p)) => format!("rtmps://{name}:{p}"),
            _ => format!("rtmp://{name}:{}", state.rtmp_port),
        };
        let (http, ws) = if secure { ("https", "wss") } else { ("http", "ws") };
        Urls { http: format!("{http}://{host}"), ws: format!("{ws}://{host}"), rtmp }
    }

    fn push(&self, rooms: &RoomService, s: &SessionView) -> Value {
        let (app, stream) = (rooms.stream_app(), &s.stream);
        let q = rooms.push_query(stream, s.url_expiry);
        json!({
            "stream": stream,
            "rtmp": format!("{}/{app}/{stream}?{q}", self.rtmp),
            "whip": format!("{}/whip/{app}/{stream}?{q}", self.http),
        })
    }

    /// Play URLs of `stream` for the login `viewer` (bound to it by its memberKey unless `open`: the room's mix).
    fn play(&self, rooms: &RoomService, stream: &str, viewer: &SessionView, open: bool) -> Value {
        let app = rooms.stream_app();
        let key = (!open).then_some(viewer.member_key.as_str());
        let q = rooms.play_query(stream, key, viewer.url_expiry);
        json!({
            "rtmp": format!("{}/{app}/{stream}?{q}", self.rtmp),
            "flv": format!("{}/{app}/{stream}.flv?{q}", self.http),
            "hls": format!("{}/{app}/{stream}.m3u8?{q}", self.http),
            "whep": format!("{}/whep/{app}/{stream}?{q}", self.http),
        })
    }
}

/// A member as another member (or the control API, without play URLs) sees it.
fn member_json(rooms: &RoomService, urls: &Urls, m: &MemberView, viewer: Option<&SessionView>) -> Value {
    let mut v = json!({
        "user_id": m.member.user_id,
        "role": m.member.role,
        "client": m.member.client,
        "audio": m.member.audio,
        "video": m.member.video,
        "joined_at": m.member.joined_at,
        "stream": m.stream,
    });
    if let Some(s) = viewer {
        v["play"] = urls.play(rooms, &m.stream, s, false);
    }
    v
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct EnterBody {
    sdk_app_id: u32,
    user_id: String,
    user_sig: String,
    #[serde(default)]
    private_map_key: Option<String>,
    #[serde(default)]
    client: Option<ClientKind>,
    #[serde(default)]
    role: Option<RoleAsked>,
    #[serde(default)]
    room_name: Option<String>,
    #[serde(default)]
    stream_id: Option<String>,
    /// For `POST /api/v1/rooms/enter`: a numeric or a string room id (the string wins); neither: a new room.
    #[serde(default)]
    room_id: Option<u32>,
    #[serde(default)]
    str_room_id: Option<String>,
    /// For the enter that creates the room: keep a mix of its anchors (and record it, with `recordId` in the
    /// recording's callbacks).
    #[serde(default)]
    mix: Option<crate::rooms::mix_plan::MixOptions>,
    #[serde(default)]
    record: Vec<crate::config::RecordFormat>,
    #[serde(default)]
    record_id: Option<String>,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum RoleAsked {
    Presenter,
    Audience,
    Anchor,
}

async fn read_json<T: serde::de::DeserializeOwned>(
    state: &HttpState,
    req: Request<Incoming>,
) -> Result<T, Box<Response<Body>>> {
    let body = super::read_body(state, req.into_body(), BODY_LIMIT).await?;
    serde_json::from_slice(&body).map_err(|e| Box::new(error(StatusCode::BAD_REQUEST, "bad_json", &e.to_string())))
}

async fn enter(
    state: &HttpState,
    rooms: &RoomService,
    room: Option<String>,
    req: Request<Incoming>,
    urls: &Urls,
) -> Response<Body> {
    let path_and_query = req.uri().path_and_query().map_or_else(String::new, |p| p.as_str().to_owned());
    let via = super::flv::via(req.headers());
    let raw = match super::read_body(state, req.into_body(), BODY_LIMIT).await {
        Ok(b) => b,
        Err(r) => return *r,
    };
    let b: EnterBody = match serde_json::from_slice(&raw) {
        Ok(b) => b,
        Err(e) => return error(StatusCode::BAD_REQUEST, "bad_json", &e.to_string()),
    };
    let room = room.or(b.str_room_id.clone().filter(|s| !s.is_empty())).or(b.room_id.map(|n| n.to_string()));
    // In a cluster a room lives on one node: an enter for a room elsewhere is answered by that node (its URLs).
    // The userSig is checked here first, so that nobody unauthenticated makes this node look rooms up.
    if let Some(cluster) = &state.cluster {
        if let Err(e) = rooms.check_user_sig(b.sdk_app_id, &b.user_id, &b.user_sig, crate::auth::unix_now()) {
            return service_error(&e);
        }
        if let Some(r) = to_room_home(cluster, b.sdk_app_id, room.as_deref(), &via, &path_and_query, raw).await {
            return r;
        }
    }
    if !b.record.is_empty() && b.mix.is_none() {
        return error(StatusCode::BAD_REQUEST, "invalid_field", "record: a room records its mix: ask for a mix too");
    }
    if let Some(id) = &b.record_id {
        if let Err(e) = crate::names::validate("recordId", id) {
            return error(StatusCode::BAD_REQUEST, "invalid_field", &format!("recordId: {e}"));
        }
    }
    let params = EnterParams {
        sdk_app_id: b.sdk_app_id,
        user_id: b.user_id,
        user_sig: b.user_sig,
        private_map_key: b.private_map_key.filter(|k| !k.is_empty()),
        client: b.client.unwrap_or(ClientKind::Web),
        presenter: b.role == Some(RoleAsked::Presenter),
        room_name: b.room_name,
        stream_id: b.stream_id,
        mix: b.mix,
        record: b.record,
        record_id: b.record_id,
    };
    let out = match rooms.enter(room.as_deref(), params, crate::auth::unix_now()) {
        Ok(o) => o,
        Err(e) => return service_error(&e),
    };
    let s = &out.session;
    if let (Some(cluster), true) = (&state.cluster, out.created) {
        cluster.room_opened(&RoomRef { app: s.room.app, id: s.room.id.clone() }).await;
    }
    let members: Vec<Value> = out.members.iter().map(|m| member_json(rooms, urls, m, Some(s))).collect();
    let events_url = format!("{}/api/v1/rooms/{}/events?sdkAppId={}&token={}", urls.ws, s.room.id, s.room.app, s.token);
    let push = if out.may_publish { urls.push(rooms, s) } else { Value::Null };
    // The room's mix: what a live room's audience (and a CDN) plays; its signature alone opens it.
    let mix = match &out.mix_stream {
        Some(stream) => {
            json!({"stream": stream, "play": urls.play(rooms, stream, s, true)})
        }
        None => Value::Null,
    };
    json(
        StatusCode::OK,
        &json!({
            "room": out.room,
            "created": out.created,
            // The node the room lives on: the member's further calls go here.
            "server": urls.http,
            "user_id": s.user,
            "role": out.role,
            "token": s.token,
            "seq": out.seq,
            "events_url": events_url,
            "push": push,
            "mix": mix,
            "members": members,
        }),
    )
}

/// Sends an enter to the node its room lives on, when that is not this one: `None` to enter here, or the
/// answer (that node's, or why it could not be had).
async fn to_room_home(
    cluster: &crate::cluster::Cluster,
    app: u32,
    room: Option<&str>,
    via: &[String],
    path_and_query: &str,
    body: bytes::Bytes,
) -> Option<Response<Body>> {
    let home = match room {
        Some(id) => cluster.room_home(&RoomRef { app, id: id.to_owned() }).await,
        None if cluster.hosts_rooms() => Ok(RoomHome::Here),
        None => cluster.least_loaded_origin().await.map(RoomHome::Elsewhere),
    };
    let node = match home {
        Ok(RoomHome::Here) => return None,
        Ok(RoomHome::Elsewhere(node)) => node,
        Err(e) => return Some(error(StatusCode::SERVICE_UNAVAILABLE, "directory_unavailable", &e.to_string())),
    };
    if !via.is_empty() {
        // Sent here by another node, which the directory named a moment ago: do not bounce it on.
        let detail = format!("the room moved to node {} while this enter was on its way: enter again", node.id);
        return Some(error(StatusCode::CONFLICT, "room_moved", &detail));
    }
    tracing::info!(app, room = ?room, node = %node.id, "room enter sent to the room's node");
    Some(match cluster.forward(&node, path_and_query, body).await {
        Ok((status, body)) => {
            let mut r = Response::new(super::full(body));
            *r.status_mut() = status;
            r.headers_mut().insert(header::CONTENT_TYPE, "application/json".parse().expect("static"));
            r
        }
        Err(e) => error(StatusCode::BAD_GATEWAY, "room_node_unreachable", &e.to_string()),
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ListBody {
    sdk_app_id: u32,
    user_id: String,
    user_sig: String,
    #[serde(default)]
    index: usize,
    #[serde(default)]
    cnt: Option<usize>,
}

async fn list_for_member(state: &HttpState, rooms: &RoomService, req: Request<Incoming>) -> Response<Body> {
    let b: ListBody = match read_json(state, req).await {
        Ok(b) => b,
        Err(r) => return *r,
    };
    if let Err(e) = rooms.check_user_sig(b.sdk_app_id, &b.user_id, &b.user_sig, crate::auth::unix_now()) {
        return service_error(&e);
    }
    let (total, page) = rooms.list(b.sdk_app_id, b.index, b.cnt.unwrap_or(20).min(100));
    json(StatusCode::OK, &json!({"total": total, "rooms": page}))
}

fn list(rooms: &RoomService, req: &Request<Incoming>) -> Response<Body> {
    let q = crate::names::parse_query(req.uri().query().unwrap_or(""));
    let app = match app_of(rooms, &q) {
        Ok(a) => a,
        Err(r) => return *r,
    };
    let num = |k: &str| crate::names::query_get(&q, k).and_then(|v| v.parse::<usize>().ok());
    let (total, page) = rooms.list(app, num("index").unwrap_or(0), num("cnt").unwrap_or(20).min(1000));
    json(StatusCode::OK, &json!({"total": total, "rooms": page}))
}

/// The sdkAppId a control call is about: `?sdkAppId=`, or the only one configured.
fn app_of(rooms: &RoomService, q: &[(String, String)]) -> Result<u32, Refusal> {
    match crate::names::query_get(q, "sdkAppId") {
        Some(v) => {
            v.parse().map_err(|_| Box::new(error(StatusCode::BAD_REQUEST, "invalid_field", "sdkAppId is not a number")))
        }
        None => rooms.default_app().ok_or_else(|| {
            Box::new(error(
                StatusCode::BAD_REQUEST,
                "invalid_field",
                "several room apps are configured: pass ?sdkAppId=",
            ))
        }),
    }
}

fn bearer(req: &Request<Incoming>) -> Option<&str> {
    req.headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
}

/// The control API's check (API token, or loopback without one; never cross-site).
fn admin(state: &HttpState, addr: SocketAddr, req: &Request<Incoming>) -> Result<(), Refusal> {
    super::api::authorize(state, addr, req).map_err(Box::new)
}

/// The answer instead of a call's result.
type Refusal = Box<Response<Body>>;

/// Who makes a call that a member or the control API may make: a member token names the member; any other
/// bearer must be the API token (a stale member token is 401, never mistaken for a loopback admin).
fn caller(
    state: &HttpState,
    rooms: &RoomService,
    addr: SocketAddr,
    req: &Request<Incoming>,
    room: &str,
) -> Result<(RoomKey, Actor), Refusal> {
    if let Some(token) = bearer(req) {
        if let Ok(s) = rooms.session(token) {
            if s.room.id != room {
                return Err(Box::new(error(
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    &format!("{} is not in room {room}", s.user),
                )));
            }
            return Ok((s.room, Actor::Member(s.id)));
        }
        if state.config.http.api_token.is_empty() {
            return Err(Box::new(service_error(&ServiceError::BadToken)));
        }
    }
    admin(state, addr, req)?;
    let q = crate::names::parse_query(req.uri().query().unwrap_or(""));
    let app = app_of(rooms, &q)?;
    Ok((RoomKey { app, id: room.to_owned() }, Actor::Admin))
}

/// The login a member call is made with, checked against the room in its path.
fn member(rooms: &RoomService, req: &Request<Incoming>, room: &str) -> Result<SessionView, Refusal> {
    let token = bearer(req).ok_or_else(|| {
        Box::new(error(
            StatusCode::UNAUTHORIZED,
            "bad_token",
            "member calls need Authorization: Bearer <the token enter returned>",
        ))
    })?;
    let s = rooms.session(token).map_err(|e| Box::new(service_error(&e)))?;
    if s.room.id != room {
        return Err(Box::new(error(StatusCode::FORBIDDEN, "forbidden", &format!("{} is not in room {room}", s.user))));
    }
    Ok(s)
}

fn member_call(
    rooms: &RoomService,
    req: &Request<Incoming>,
    room: &str,
    f: impl FnOnce(&SessionView) -> Result<Value, ServiceError>,
) -> Response<Body> {
    match member(rooms, req, room) {
        Ok(s) => match f(&s) {
            Ok(v) => json(StatusCode::OK, &v),
            Err(e) => service_error(&e),
        },
        Err(r) => *r,
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MessageBody {
    #[serde(default)]
    to: Option<String>,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    cmd: Option<String>,
    #[serde(default)]
    data: Option<Value>,
}

async fn message(state: &HttpState, rooms: &RoomService, room: &str, req: Request<Incoming>) -> Response<Body> {
    let s = match member(rooms, &req, room) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let b: MessageBody = match read_json(state, req).await {
        Ok(b) => b,
        Err(r) => return *r,
    };
    let size = b.text.as_ref().map_or(0, String::len)
        + b.cmd.as_ref().map_or(0, String::len)
        + b.data.as_ref().map_or(0, |d| d.to_string().len());
    if size > MAX_MESSAGE_BYTES {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "message_too_large",
            &format!("the message takes {size} bytes; at most {MAX_MESSAGE_BYTES}"),
        );
    }
    let to = b.to.filter(|t| !t.is_empty());
    let make: Box<dyn FnOnce(String) -> RoomEvent> = match (b.text, b.cmd) {
        (Some(text), None) => Box::new(move |from| RoomEvent::TextMessage { from, to, text }),
        (None, Some(cmd)) if !cmd.is_empty() => {
            let data = b.data.unwrap_or(Value::Null);
            Box::new(move |from| RoomEvent::CustomMessage { from, to, cmd, data })
        }
        _ => return error(StatusCode::BAD_REQUEST, "invalid_field", "a message has either text, or cmd (and data)"),
    };
    match rooms.message(s.id, make) {
        Ok(seq) => json(StatusCode::OK, &json!({"seq": seq})),
        Err(e) => service_error(&e),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JoinRequestBody {
    #[serde(default)]
    reason: String,
}

async fn request_join(state: &HttpState, rooms: &RoomService, room: &str, req: Request<Incoming>) -> Response<Body> {
    let s = match member(rooms, &req, room) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let b: JoinRequestBody = match read_json(state, req).await {
        Ok(b) => b,
        Err(r) => return *r,
    };
    if b.reason.len() > 256 {
        return error(StatusCode::BAD_REQUEST, "invalid_field", "reason is over 256 bytes");
    }
    match rooms.request_join(s.id, &b.reason, Instant::now()) {
        Ok(id) => json(StatusCode::CREATED, &json!({"request_id": id.to_string()})),
        Err(e) => service_error(&e),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JoinAnswerBody {
    accept: bool,
    #[serde(default)]
    reason: String,
}

async fn respond_join(
    state: &HttpState,
    rooms: &RoomService,
    room: &str,
    id: &str,
    req: Request<Incoming>,
) -> Response<Body> {
    let s = match member(rooms, &req, room) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let Ok(id) = id.parse::<u64>() else {
        return error(StatusCode::NOT_FOUND, "request_not_found", &format!("no join request {id}"));
    };
    let b: JoinAnswerBody = match read_json(state, req).await {
        Ok(b) => b,
        Err(r) => return *r,
    };
    if b.reason.len() > 256 {
        return error(StatusCode::BAD_REQUEST, "invalid_field", "reason is over 256 bytes");
    }
    match rooms.respond_join(s.id, id, b.accept, &b.reason) {
        Ok(()) => json(StatusCode::OK, &json!({"request_id": id.to_string(), "accept": b.accept})),
        Err(e) => service_error(&e),
    }
}

fn service_error(e: &ServiceError) -> Response<Body> {
    let (status, code) = match e {
        ServiceError::UnknownApp(_) => (StatusCode::NOT_FOUND, "unknown_app"),
        ServiceError::Invalid { .. } => (StatusCode::BAD_REQUEST, "invalid_field"),
        ServiceError::BadUserSig(_) => (StatusCode::FORBIDDEN, "bad_user_sig"),
        ServiceError::BadPrivateMapKey(_) => (StatusCode::FORBIDDEN, "bad_private_map_key"),
        ServiceError::StreamInUse(_) => (StatusCode::CONFLICT, "stream_in_use"),
        ServiceError::BadToken => (StatusCode::UNAUTHORIZED, "bad_token"),
        ServiceError::Room(r) => match r {
            RoomError::RoomFull { .. } => (StatusCode::CONFLICT, "room_full"),
            RoomError::TooManyRooms { .. } => (StatusCode::CONFLICT, "too_many_rooms"),
            RoomError::NotFound(_) => (StatusCode::NOT_FOUND, "room_not_found"),
            RoomError::NotMember { .. } => (StatusCode::NOT_FOUND, "member_not_found"),
            RoomError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            RoomError::NoSuchRequest(_) => (StatusCode::NOT_FOUND, "request_not_found"),
            RoomError::RateLimited(_) => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
        },
    };
    error(status, code, &e.to_string())
}

/// `GET /api/v1/rooms/{room}/events`: the member's event socket.
fn socket(rooms: &Arc<RoomService>, room: &str, req: Request<Incoming>, urls: Urls) -> Response<Body> {
    let q = crate::names::parse_query(req.uri().query().unwrap_or(""));
    let token = bearer(&req).map(str::to_owned).or_else(|| crate::names::query_get(&q, "token").map(str::to_owned));
    let Some(token) = token else {
        return error(
            StatusCode::UNAUTHORIZED,
            "bad_token",
            "the event socket needs ?token= (the token enter returned)",
        );
    };
    let session = match rooms.session(&token) {
        Ok(s) if s.room.id == room => s,
        Ok(s) => return error(StatusCode::FORBIDDEN, "forbidden", &format!("{} is not in room {room}", s.user)),
        Err(e) => return service_error(&e),
    };
    let since = match crate::names::query_get(&q, "since").filter(|v| !v.is_empty()) {
        Some(v) => match v.parse::<u64>() {
            Ok(n) => Some(n),
            Err(_) => return error(StatusCode::BAD_REQUEST, "invalid_field", "since is not a sequence number"),
        },
        None => None,
    };
    let h = req.headers();
    let upgrade =
        h.get(header::UPGRADE).and_then(|v| v.to_str().ok()).is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let key = h.get(header::SEC_WEBSOCKET_KEY).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let (true, Some(key)) = (upgrade, key) else {
        return error(
            StatusCode::UPGRADE_REQUIRED,
            "websocket_required",
            "the event socket is a WebSocket (Upgrade: websocket)",
        );
    };
    if h.get(header::SEC_WEBSOCKET_VERSION).and_then(|v| v.to_str().ok()) != Some("13") {
        return error(StatusCode::BAD_REQUEST, "websocket_version", "Sec-WebSocket-Version must be 13");
    }
    if rooms.socket_count(session.id) >= SOCKETS_PER_MEMBER {
        return error(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_sockets",
            &format!("{} has {SOCKETS_PER_MEMBER} event sockets open", session.user),
        );
    }
    let sub = match rooms.subscribe(session.id, since) {
        Ok(s) => s,
        Err(e) => return service_error(&e),
    };
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    // The socket keeps its connection's place in the connection limits after the upgrade hands it over.
    let permit = req.extensions().get::<super::HeldPermit>().cloned();
    let upgrade = hyper::upgrade::on(req);
    let rooms = rooms.clone();
    let span = tracing::info_span!("room_socket", room = %session.room, user = %session.user);
    tokio::spawn(
        async move {
            match upgrade.await {
                Ok(io) => {
                    let cfg = WebSocketConfig::default()
                        .max_message_size(Some(MAX_MESSAGE_BYTES))
                        .max_frame_size(Some(MAX_MESSAGE_BYTES));
                    let ws = WebSocketStream::from_raw_socket(TokioIo::new(io), WsRole::Server, Some(cfg)).await;
                    run_socket(ws, &rooms, &session, sub, &urls).await;
                }
                Err(e) => tracing::debug!(error = %e, "event socket upgrade failed"),
            }
            rooms.socket_closed(session.id);
            drop(permit);
        }
        .instrument(span),
    );
    let mut r = Response::new(super::empty());
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(header::UPGRADE, "websocket".parse().expect("static"));
    h.insert(header::CONNECTION, "Upgrade".parse().expect("static"));
    if let Ok(v) = accept.parse() {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    r
}

/// How a socket ends, if the event ends the member's stay.
fn ends_stay(e: &Sequenced, s: &SessionView) -> Option<String> {
    match &e.event {
        RoomEvent::KickedOut { reason, .. } => Some(json!(reason).as_str().unwrap_or("kicked").to_owned()),
        RoomEvent::RemoteUserLeave { user_id, reason } if *user_id == s.user => {
            Some(json!(reason).as_str().unwrap_or("left").to_owned())
        }
        RoomEvent::RoomClosed { .. } => Some("room closed".into()),
        _ => None,
    }
}

/// An event as the member `s` receives it: media and join events carry the URLs it needs.
fn event_json(rooms: &RoomService, urls: &Urls, s: &SessionView, e: &Sequenced) -> Value {
    let mut v = serde_json::to_value(e).unwrap_or(Value::Null);
    match &e.event {
        RoomEvent::RemoteVideoAdd { user_id } | RoomEvent::RemoteAudioAdd { user_id } => {
            if let Some(stream) = rooms.stream_of(&s.room, user_id) {
                v["play"] = urls.play(rooms, &stream, s, false);
                v["stream"] = stream.into();
            }
        }
        RoomEvent::JoinResponse { accept: true, request_id, .. } => {
            v["push"] = urls.push(rooms, s);
            v["request_id"] = request_id.to_string().into();
        }
        // Request ids are strings on the wire, as the join-request calls answer them.
        RoomEvent::JoinRequest { request_id, .. } | RoomEvent::JoinResponse { request_id, .. } => {
            v["request_id"] = request_id.to_string().into()
        }
        _ => {}
    }
    v
}

fn text(v: &Value) -> Message {
    Message::text(v.to_string())
}

async fn run_socket<S>(
    mut ws: WebSocketStream<S>,
    rooms: &RoomService,
    s: &SessionView,
    mut sub: crate::rooms::service::Subscription,
    urls: &Urls,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut last_seq = 0u64;
    let backlog = std::mem::replace(&mut sub.backlog, Backlog::Replay(Vec::new()));
    let mut out: Vec<Message> = Vec::new();
    let mut end: Option<(u16, String)> = None;
    let queue_backlog =
        |b: Backlog, last_seq: &mut u64, out: &mut Vec<Message>, end: &mut Option<(u16, String)>| match b {
            Backlog::Replay(ev) => {
                for e in ev {
                    *last_seq = (*last_seq).max(e.seq);
                    out.push(text(&event_json(rooms, urls, s, &e)));
                    if let Some(r) = ends_stay(&e, s) {
                        *end = Some((CLOSE_OUT, r));
                    }
                }
            }
            Backlog::Snapshot { seq, members } => {
                *last_seq = seq;
                let members: Vec<Value> = members
                    .iter()
                    .filter(|m| m.member.user_id != s.user)
                    .map(|m| member_json(rooms, urls, m, Some(s)))
                    .collect();
                out.push(text(&json!({"event": "SNAPSHOT", "seq": seq, "members": members})));
            }
        };
    queue_backlog(backlog, &mut last_seq, &mut out, &mut end);
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + PING_EVERY, PING_EVERY);
    let mut heard = Instant::now();
    loop {
        for m in out.drain(..) {
            if ws.feed(m).await.is_err() {
                return;
            }
        }
        if ws.flush().await.is_err() {
            return;
        }
        if let Some((code, reason)) = end.take() {
            let frame = CloseFrame { code: CloseCode::from(code), reason: reason.into() };
            let _ = ws.close(Some(frame)).await;
            return;
        }
        tokio::select! {
            r = sub.rx.recv() => match r {
                Ok(e) => {
                    if e.seq <= last_seq {
                        continue;
                    }
                    last_seq = e.seq;
                    if e.is_for(&s.user, s.id) {
                        out.push(text(&event_json(rooms, urls, s, &e)));
                        if let Some(r) = ends_stay(&e, s) {
                            end = Some((CLOSE_OUT, r));
                        }
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => match rooms.catch_up(s.id, last_seq) {
                    Ok(b) => queue_backlog(b, &mut last_seq, &mut out, &mut end),
                    Err(_) => end = Some((CLOSE_OUT, "left".into())),
                },
                Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                    if !rooms.is_live(s.id) {
                        end = Some((CLOSE_OUT, "room closed".into()));
                    } else {
                        return;
                    }
                }
            },
            m = ws.next() => {
                heard = Instant::now();
                match m {
                    Some(Ok(Message::Text(t))) => {
                        let ping = serde_json::from_str::<Value>(t.as_str()).ok().is_some_and(|v| v == json!({"event": "PING"}));
                        if ping {
                            out.push(text(&json!({"event": "PONG"})));
                        } else {
                            let shown: String = t.as_str().chars().take(64).collect();
                            end = Some((1008, format!("unexpected message {shown:?}: the only message is {{\"event\":\"PING\"}}")));
                        }
                    }
                    Some(Ok(Message::Binary(_))) => end = Some((1003, "binary messages are not accepted".into())),
                    Some(Ok(Message::Close(_))) | None => return,
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        tracing::debug!(error = %e, "event socket read failed");
                        let reason = match e {
                            tokio_tungstenite::tungstenite::Error::Capacity(_) => {
                                format!("a message over {MAX_MESSAGE_BYTES} bytes")
                            }
                            _ => return,
                        };
                        end = Some((1009, reason));
                    }
                }
            }
            _ = ping.tick() => {
                if heard.elapsed() >= SILENT_LIMIT {
                    end = Some((1001, format!("nothing heard for {} s", SILENT_LIMIT.as_secs())));
                } else {
                    out.push(Message::Ping(Default::default()));
                }
            }
        }
    }
}
