//! The RTMP session after the handshake, sans-IO (the model is str0m's `Rtc`): bytes in, bytes out and events.
//!
//! The session owns the protocol: chunk reassembly, the peer's chunk size and acknowledgement window, pings,
//! the command sequence (`connect`, `createStream`, `releaseStream`/`FCPublish`, `publish`, `play`,
//! `FCUnpublish`, `deleteStream`, `getStreamLength`) and every reply and status message. It knows nothing of
//! sockets, clocks, the hub or access rules: a request that needs a decision (`connect`, `publish`, `play`)
//! becomes an [`Event`], and the session decodes nothing more until the adapter answers it (an `on_publish`
//! webhook may take seconds; media that arrives meanwhile waits in the input buffer, in order). Timeouts are
//! the adapter's, since only it has a clock.
//!
//! Use: [`feed`](Session::feed) what the socket read, then alternate [`process`](Session::process) and
//! [`poll_event`](Session::poll_event) (answering each request) until no event comes; send
//! [`take_output`](Session::take_output).

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};

use super::chunk::{ChunkDecoder, ChunkError, Message};
use super::message::{self as msg, Command, CommandError};
use crate::hub::packet::RTMP_MEDIA_STREAM_ID;
use crate::media::amf0::Amf0Value;
use crate::names;

/// A publish or play request: the stream name and the query merged from `tcUrl`, the app and the name (the
/// name's parameters win).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamRequest {
    pub app: String,
    pub name: String,
    pub query: Vec<(String, String)>,
    /// The same query as a string, signature parameters and all (the adapter redacts what it shows).
    pub query_str: String,
}

/// What the adapter must act on.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// `connect` to `app`: answer with [`Session::accept_connect`] or [`Session::reject_connect`].
    Connect { app: String },
    /// Answer with [`Session::publish_started`] or [`Session::refuse_publish`].
    Publish(StreamRequest),
    /// Answer with [`Session::play_started`] or [`Session::refuse_play`].
    Play(StreamRequest),
    /// An audio (8) or video (9) message of the stream being published, with its raw 32-bit timestamp.
    Media { type_id: u8, timestamp: u32, payload: Bytes },
    /// `@setDataFrame`/`onMetaData` of the stream being published: the AMF0 body players get.
    Metadata { timestamp: u32, body: Bytes },
    /// The client ended its publish (`FCUnpublish`, `deleteStream`, `closeStream`); the connection stays.
    Unpublished,
    /// The client stopped playing (`deleteStream`, `closeStream`): the connection is done.
    PlayClosed,
}

/// Why the session cannot go on. A refusal's `onStatus`/`_error` is in the output: send it before closing.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("chunk stream: {0}")]
    Chunk(#[from] ChunkError),
    #[error("bad command: {0}")]
    Command(#[from] CommandError),
    #[error("malformed {0} message")]
    Malformed(&'static str),
    #[error("{0}")]
    Refused(String),
}

/// Where the session is in the command sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Handshake done, waiting for `connect`.
    New,
    /// `connect` asked; the adapter has not answered.
    Connecting,
    Connected,
    /// `publish` or `play` asked; the adapter has not answered.
    Requesting,
    Publishing,
    Playing,
}

/// One RTMP connection's protocol state.
pub struct Session {
    decoder: ChunkDecoder,
    input: BytesMut,
    out: Vec<u8>,
    events: VecDeque<Event>,
    phase: Phase,
    /// The transaction of the `connect`, `publish` or `play` awaiting an answer.
    pending_txn: f64,
    app: String,
    app_query: String,
    received: u64,
    last_ack: u64,
    peer_window: u32,
    /// Unfinished-message bytes a publisher may hold (`rtmp.max_message_bytes`); before that, commands only.
    publish_pending_limit: usize,
}

/// What a connection that is not publishing may hold in unfinished messages: commands are small (the largest
/// real `connect` is a few hundred bytes), so a client cannot pin memory before it is let in.
pub const COMMAND_PENDING_LIMIT: usize = 64 * 1024;

impl Default for Session {
    fn default() -> Self {
        Self::new()
    }
}

impl Session {
    /// A session right after the handshake; its first output is the chunk size every later message uses.
    pub fn new() -> Self {
        Self::with_max_message_bytes(crate::rtmp::chunk::DEFAULT_MAX_PENDING)
    }

    /// A session whose publisher may hold up to `bytes` of unfinished messages once its publish is accepted.
    pub fn with_max_message_bytes(bytes: usize) -> Self {
        let mut out = Vec::with_capacity(4096);
        msg::set_chunk_size(&mut out);
        let mut decoder = ChunkDecoder::new();
        decoder.set_max_pending(COMMAND_PENDING_LIMIT);
        Self {
            publish_pending_limit: bytes,
            decoder,
            input: BytesMut::with_capacity(64 * 1024),
            out,
            events: VecDeque::new(),
            phase: Phase::New,
            pending_txn: 0.0,
            app: String::new(),
            app_query: String::new(),
            received: 0,
            last_ack: 0,
            peer_window: 0,
        }
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// The app `connect` named (empty before).
    pub fn app(&self) -> &str {
        &self.app
    }

    /// Takes bytes the peer sent; nothing is decoded until [`process`](Self::process).
    pub fn feed(&mut self, data: &[u8]) {
        self.received += data.len() as u64;
        self.input.extend_from_slice(data);
    }

    /// The input buffer to read into directly (saves a copy); report what was read with [`fed`](Self::fed).
    pub fn input_buf(&mut self) -> &mut BytesMut {
        if self.input.capacity() - self.input.len() < 4096 {
            self.input.reserve(64 * 1024);
        }
        &mut self.input
    }

    /// Counts `n` bytes read into [`input_buf`](Self::input_buf).
    pub fn fed(&mut self, n: usize) {
        self.received += n as u64;
    }

    /// Announced bytes of the messages being reassembled (for the adapter's metrics).
    pub fn pending_bytes(&self) -> usize {
        self.decoder.pending()
    }

    /// Decodes buffered messages until the input is used up or a request awaits the adapter's answer.
    pub fn process(&mut self) -> Result<(), SessionError> {
        while !self.awaiting_answer() {
            let m = match self.decoder.decode(&mut self.input) {
                Ok(Some(m)) => m,
                Ok(None) => break,
                Err(e) => {
                    if self.phase == Phase::Publishing {
                        // The publisher's tools show this: say why the connection closes.
                        msg::on_status(&mut self.out, "error", "NetStream.Failed", &e.to_string());
                    }
                    return Err(e.into());
                }
            };
            self.on_message(m)?;
        }
        if self.peer_window > 0 && self.received - self.last_ack >= self.peer_window as u64 {
            msg::ack(&mut self.out, self.received as u32);
            self.last_ack = self.received;
        }
        Ok(())
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Whether the session waits for an answer to `connect`, `publish` or `play`.
    pub fn awaiting_answer(&self) -> bool {
        matches!(self.phase, Phase::Connecting | Phase::Requesting)
    }

    /// Bytes to send (replies, acks, statuses), in order.
    pub fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.out)
    }

    pub fn has_output(&self) -> bool {
        !self.out.is_empty()
    }

    pub fn accept_connect(&mut self) {
        msg::connect_preamble(&mut self.out);
        msg::connect_result(&mut self.out, self.pending_txn);
        self.phase = Phase::Connected;
    }

    /// Refuses `connect` with `reason` (an `_error` the client shows) and ends the session.
    pub fn reject_connect(&mut self, reason: &str) -> SessionError {
        msg::error(&mut self.out, self.pending_txn, "NetConnection.Connect.Rejected", reason);
        SessionError::Refused(reason.to_owned())
    }

    /// The publish is on: `stream` names it in the status.
    pub fn publish_started(&mut self, stream: &str) {
        msg::user_control(&mut self.out, 0, &RTMP_MEDIA_STREAM_ID.to_be_bytes());
        msg::on_status(&mut self.out, "status", "NetStream.Publish.Start", &format!("{stream} is now published"));
        self.phase = Phase::Publishing;
        self.decoder.set_max_pending(self.publish_pending_limit);
    }

    /// Refuses a publish with an `onStatus` error (`code`, `description`); the adapter closes the connection.
    pub fn refuse_publish(&mut self, code: &str, description: &str) -> SessionError {
        msg::on_status(&mut self.out, "error", code, description);
        SessionError::Refused(format!("publish refused: {description}"))
    }

    /// The play is on: the statuses players wait for before media.
    pub fn play_started(&mut self, stream: &str) {
        msg::user_control(&mut self.out, 0, &RTMP_MEDIA_STREAM_ID.to_be_bytes());
        msg::on_status(&mut self.out, "status", "NetStream.Play.Reset", &format!("playing and resetting {stream}"));
        msg::on_status(&mut self.out, "status", "NetStream.Play.Start", &format!("started playing {stream}"));
        msg::data(
            &mut self.out,
            RTMP_MEDIA_STREAM_ID,
            &[Amf0Value::String("|RtmpSampleAccess".into()), Amf0Value::Boolean(true), Amf0Value::Boolean(true)],
        );
        self.phase = Phase::Playing;
    }

    pub fn refuse_play(&mut self, code: &str, description: &str) -> SessionError {
        msg::on_status(&mut self.out, "error", code, description);
        SessionError::Refused(format!("play refused: {description}"))
    }

    /// Tells a player its stream ended for good, as Flash Media Server does, before the connection closes.
    pub fn play_unpublished(&mut self) {
        msg::on_status(&mut self.out, "status", "NetStream.Play.UnpublishNotify", "stream was unpublished");
        msg::on_status(&mut self.out, "status", "NetStream.Play.Stop", "stopped playing");
        msg::user_control(&mut self.out, 1, &RTMP_MEDIA_STREAM_ID.to_be_bytes());
    }

    fn on_message(&mut self, m: Message) -> Result<(), SessionError> {
        match m.type_id {
            msg::SET_CHUNK_SIZE => {
                let v = be_u32(&m.payload).ok_or(SessionError::Malformed("set chunk size"))?;
                self.decoder.set_chunk_size(v & 0x7FFF_FFFF)?;
            }
            msg::WINDOW_ACK_SIZE => {
                self.peer_window = be_u32(&m.payload).ok_or(SessionError::Malformed("window ack size"))?;
            }
            // Ping request (6) wants a ping response (7) echoing its timestamp.
            msg::USER_CONTROL if m.payload.len() >= 6 && u16::from_be_bytes([m.payload[0], m.payload[1]]) == 6 => {
                msg::user_control(&mut self.out, 7, &m.payload[2..6]);
            }
            msg::AUDIO | msg::VIDEO if self.phase == Phase::Publishing => {
                self.events.push_back(Event::Media { type_id: m.type_id, timestamp: m.timestamp, payload: m.payload });
            }
            msg::DATA_AMF0 | msg::DATA_AMF3 if self.phase == Phase::Publishing => {
                // Undecodable data is not worth ending a publish over; players just miss it.
                if let Some(body) = msg::parse_data(m.type_id, &m.payload).ok().and_then(|v| msg::metadata_body(&v)) {
                    self.events.push_back(Event::Metadata { timestamp: m.timestamp, body });
                }
            }
            msg::COMMAND_AMF0 | msg::COMMAND_AMF3 => {
                let cmd = Command::parse(m.type_id, &m.payload)?;
                self.on_command(cmd)?;
            }
            _ => {}
        }
        Ok(())
    }

    fn on_command(&mut self, cmd: Command) -> Result<(), SessionError> {
        match cmd.name.as_str() {
            "connect" => {
                if self.phase != Phase::New {
                    let e = "connect on a connection that is already connected";
                    msg::error(&mut self.out, cmd.transaction, "NetConnection.Connect.Rejected", e);
                    return Err(SessionError::Refused(e.into()));
                }
                let Some(app_raw) = cmd.object.get("app").and_then(|v| v.as_str()) else {
                    let e = "connect carries no command object with a string \"app\"";
                    msg::error(&mut self.out, cmd.transaction, "NetConnection.Connect.Rejected", e);
                    return Err(SessionError::Refused(e.into()));
                };
                let app_raw = app_raw.trim_end_matches('/');
                let tc_url = cmd.object.get("tcUrl").and_then(|v| v.as_str()).unwrap_or("");
                let (app, q) = names::split_query(app_raw);
                self.app = app.to_owned();
                let (_, tc_q) = names::split_query(tc_url);
                self.app_query = join_queries(&[tc_q, q]);
                self.pending_txn = cmd.transaction;
                self.phase = Phase::Connecting;
                self.events.push_back(Event::Connect { app: self.app.clone() });
            }
            "createStream" => {
                msg::result(
                    &mut self.out,
                    cmd.transaction,
                    Amf0Value::Null,
                    Amf0Value::Number(RTMP_MEDIA_STREAM_ID as f64),
                );
            }
            // A live stream has no length; libavformat clients (ffmpeg, mpv) want a number here.
            "getStreamLength" if cmd.transaction != 0.0 => {
                msg::result(&mut self.out, cmd.transaction, Amf0Value::Null, Amf0Value::Number(0.0));
            }
            "releaseStream" | "FCPublish" | "FCUnpublish" | "FCSubscribe" => {
                if cmd.transaction != 0.0 {
                    msg::result(&mut self.out, cmd.transaction, Amf0Value::Null, Amf0Value::Undefined);
                }
                if cmd.name == "FCUnpublish" {
                    self.stop_publishing();
                }
            }
            "publish" => self.request(&cmd, Request::Publish)?,
            "play" => self.request(&cmd, Request::Play)?,
            "deleteStream" | "closeStream" => match self.phase {
                Phase::Publishing => self.stop_publishing(),
                Phase::Playing => {
                    self.phase = Phase::Connected;
                    self.events.push_back(Event::PlayClosed);
                }
                _ => {}
            },
            _ => {}
        }
        Ok(())
    }

    fn stop_publishing(&mut self) {
        if self.phase == Phase::Publishing {
            self.phase = Phase::Connected;
            msg::on_status(&mut self.out, "status", "NetStream.Unpublish.Success", "stream is now unpublished");
            self.events.push_back(Event::Unpublished);
        }
    }

    /// A `publish` or `play`: checked for order and name here, decided by the adapter.
    fn request(&mut self, cmd: &Command, kind: Request) -> Result<(), SessionError> {
        let (op, bad_name, busy_code) = match kind {
            Request::Publish => ("publish", "NetStream.Publish.BadName", "NetStream.Publish.BadName"),
            Request::Play => ("play", "NetStream.Play.BadName", "NetStream.Play.Failed"),
        };
        let refuse = |s: &mut Self, code: &str, why: String| match kind {
            Request::Publish => Err(s.refuse_publish(code, &why)),
            Request::Play => Err(s.refuse_play(code, &why)),
        };
        match self.phase {
            Phase::Connected => {}
            Phase::New => return refuse(self, bad_name, format!("{op} before connect")),
            _ => return refuse(self, busy_code, "this connection is already publishing or playing".into()),
        }
        let Some(raw) = cmd.arg_str(0) else { return refuse(self, bad_name, format!("{op} has no stream name")) };
        let (name, q) = names::split_query(raw);
        // Some clients put the app in front of the name ("live/test"); accept it when it matches.
        let name = name.strip_prefix(&format!("{}/", self.app)).unwrap_or(name);
        let valid = match kind {
            Request::Publish => names::validate("stream", name),
            Request::Play => names::validate_play(name),
        };
        if let Err(e) = valid {
            return refuse(self, bad_name, e.to_string());
        }
        let query_str = join_queries(&[&self.app_query, q]);
        let req = StreamRequest {
            app: self.app.clone(),
            name: name.to_owned(),
            query: names::parse_query(&query_str),
            query_str,
        };
        self.pending_txn = cmd.transaction;
        self.phase = Phase::Requesting;
        self.events.push_back(match kind {
            Request::Publish => Event::Publish(req),
            Request::Play => Event::Play(req),
        });
        Ok(())
    }

    /// After a refused or failed request the connection ends; this puts the phase back for completeness.
    pub fn request_done(&mut self) {
        if self.phase == Phase::Requesting {
            self.phase = Phase::Connected;
        }
    }
}

#[derive(Clone, Copy)]
enum Request {
    Publish,
    Play,
}

/// Joins query strings, each once: clients that put the query on the app name often repeat it in `tcUrl`.
fn join_queries(parts: &[&str]) -> String {
    let mut seen: Vec<&str> = Vec::new();
    for p in parts.iter().filter(|s| !s.is_empty()) {
        if !seen.contains(p) {
            seen.push(p);
        }
    }
    seen.join("&")
}

fn be_u32(b: &[u8]) -> Option<u32> {
    b.get(..4).map(|x| u32::from_be_bytes([x[0], x[1], x[2], x[3]]))
}

/// Feeds arbitrary bytes through a session, answering every request, accepting each one the first time
/// and refusing the next: it must never panic, loop or grow without bound (`fuzz` and the property tests).
pub fn fuzz_input(data: &[u8]) {
    let mut s = Session::new();
    let mut accepted = false;
    // Split the input as a socket might deliver it.
    for piece in data.chunks(97) {
        s.feed(piece);
        loop {
            if s.process().is_err() {
                return;
            }
            let mut any = false;
            while let Some(ev) = s.poll_event() {
                any = true;
                match ev {
                    Event::Connect { .. } => s.accept_connect(),
                    Event::Publish(r) | Event::Play(r) if !accepted => {
                        accepted = true;
                        if r.name.len() % 2 == 0 {
                            s.publish_started(&r.name)
                        } else {
                            s.play_started(&r.name)
                        }
                    }
                    Event::Publish(r) => {
                        let _ = s.refuse_publish("NetStream.Publish.BadName", &r.name);
                        return;
                    }
                    Event::Play(r) => {
                        let _ = s.refuse_play("NetStream.Play.Failed", &r.name);
                        return;
                    }
                    Event::PlayClosed => return,
                    Event::Media { .. } | Event::Metadata { .. } | Event::Unpublished => {}
                }
            }
            let _ = s.take_output();
            if !any {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::amf0;
    use crate::rtmp::chunk;
    use proptest::prelude::*;

    /// A client's bytes: messages chunked at the default 128 bytes, as clients send before any set-chunk-size.
    #[derive(Default)]
    struct Client {
        wire: Vec<u8>,
        txn: f64,
    }

    impl Client {
        fn cmd(&mut self, stream_id: u32, name: &str, object: Amf0Value, args: &[Amf0Value]) -> &mut Self {
            self.txn += 1.0;
            let mut vals = vec![Amf0Value::String(name.into()), Amf0Value::Number(self.txn), object];
            vals.extend_from_slice(args);
            let body = amf0::encode_all(&vals);
            chunk::encode_message(&mut self.wire, 128, 3, 0, msg::COMMAND_AMF0, stream_id, &[&body]);
            self
        }
        fn connect(&mut self, app: &str) -> &mut Self {
            let tc = format!("rtmp://127.0.0.1/{app}");
            let obj = Amf0Value::object(&[("app", Amf0Value::String(app.into())), ("tcUrl", Amf0Value::String(tc))]);
            self.cmd(0, "connect", obj, &[])
        }
        fn raw(&mut self, type_id: u8, ts: u32, body: &[u8]) -> &mut Self {
            chunk::encode_message(&mut self.wire, 128, 6, ts, type_id, 1, &[body]);
            self
        }
        fn take(&mut self) -> Vec<u8> {
            std::mem::take(&mut self.wire)
        }
    }

    /// What the server said: its messages, decoded with the chunk size it announced (or, for output taken
    /// after that announcement, the size it announced).
    fn replies(out: &[u8]) -> Vec<Message> {
        let mut d = ChunkDecoder::new();
        let announces_size = out.len() > 7 && out[0] == 0x02 && out[7] == msg::SET_CHUNK_SIZE;
        if !announces_size {
            d.set_chunk_size(crate::hub::packet::RTMP_OUT_CHUNK_SIZE).unwrap();
        }
        let mut buf = BytesMut::from(out);
        let mut v = Vec::new();
        while let Some(m) = d.decode(&mut buf).unwrap() {
            if m.type_id == msg::SET_CHUNK_SIZE {
                d.set_chunk_size(be_u32(&m.payload).unwrap()).unwrap();
            }
            v.push(m);
        }
        assert!(buf.is_empty(), "trailing bytes in the output");
        v
    }

    fn commands(out: &[u8]) -> Vec<Command> {
        replies(out)
            .into_iter()
            .filter(|m| m.type_id == msg::COMMAND_AMF0)
            .map(|m| Command::parse(m.type_id, &m.payload).unwrap())
            .collect()
    }

    /// `onStatus` codes in the output.
    fn statuses(out: &[u8]) -> Vec<String> {
        commands(out)
            .into_iter()
            .filter(|c| c.name == "onStatus")
            .filter_map(|c| c.args.first().and_then(|o| o.get("code")).and_then(|v| v.as_str()).map(str::to_owned))
            .collect()
    }

    /// Feeds bytes and collects events, answering nothing.
    fn run(s: &mut Session, bytes: &[u8]) -> Vec<Event> {
        s.feed(bytes);
        s.process().unwrap();
        std::iter::from_fn(|| s.poll_event()).collect()
    }

    fn connected(app: &str) -> (Session, Client) {
        let mut s = Session::new();
        let mut c = Client::default();
        let bare = app.split('?').next().unwrap();
        assert_eq!(run(&mut s, &c.connect(app).take()), [Event::Connect { app: bare.into() }]);
        s.accept_connect();
        (s, c)
    }

    #[test]
    fn the_first_output_is_the_chunk_size_then_connect_succeeds() {
        let (mut s, _) = connected("live");
        let out = s.take_output();
        let r = replies(&out);
        assert_eq!(r[0].type_id, msg::SET_CHUNK_SIZE);
        let result = commands(&out).into_iter().find(|c| c.name == "_result").expect("_result");
        assert_eq!(result.transaction, 1.0);
        assert_eq!(result.args[0].get("code").and_then(|v| v.as_str()), Some("NetConnection.Connect.Success"));
        assert_eq!(s.phase(), Phase::Connected);
    }

    /// ffmpeg, OBS and GStreamer's rtmp2sink all publish this way (OBS and rtmp2sink add FCPublish's
    /// onFCPublish expectations, which a `_result` satisfies).
    #[test]
    fn obs_and_ffmpeg_publish_order_then_media_then_unpublish() {
        let (mut s, mut c) = connected("live?app_token=1");
        c.cmd(0, "releaseStream", Amf0Value::Null, &["cam?txSecret=s&txTime=t".into()])
            .cmd(0, "FCPublish", Amf0Value::Null, &["cam?txSecret=s&txTime=t".into()])
            .cmd(0, "createStream", Amf0Value::Null, &[])
            .cmd(1, "publish", Amf0Value::Null, &["cam?txSecret=s&txTime=t".into(), "live".into()]);
        let ev = run(&mut s, &c.take());
        let Event::Publish(req) = &ev[0] else { panic!("{ev:?}") };
        assert_eq!((req.app.as_str(), req.name.as_str()), ("live", "cam"));
        assert_eq!(req.query_str, "app_token=1&txSecret=s&txTime=t");
        assert_eq!(crate::names::query_get(&req.query, "txSecret"), Some("s"));
        // Media sent before the answer waits, in order, until the adapter decides.
        let meta = amf0::encode_all(&["@setDataFrame".into(), "onMetaData".into(), Amf0Value::object(&[])]);
        c.raw(msg::DATA_AMF0, 0, &meta).raw(msg::VIDEO, 0, &[0x17, 0, 0, 0, 0, 1, 2]).raw(msg::AUDIO, 21, &[0xaf, 1]);
        assert!(run(&mut s, &c.take()).is_empty(), "nothing decoded while the publish awaits its answer");
        s.publish_started("live/cam");
        s.process().unwrap();
        let ev: Vec<Event> = std::iter::from_fn(|| s.poll_event()).collect();
        assert!(matches!(ev[0], Event::Metadata { timestamp: 0, .. }), "{ev:?}");
        assert!(matches!(ev[1], Event::Media { type_id: msg::VIDEO, timestamp: 0, .. }), "{ev:?}");
        assert!(matches!(ev[2], Event::Media { type_id: msg::AUDIO, timestamp: 21, .. }), "{ev:?}");
        let out = s.take_output();
        let results: Vec<_> = commands(&out).into_iter().filter(|c| c.name == "_result").collect();
        // connect, releaseStream, FCPublish, createStream (stream id 1).
        assert_eq!(results.len(), 4, "{results:?}");
        assert_eq!(results[3].args[0].as_f64(), Some(1.0));
        assert_eq!(statuses(&out), ["NetStream.Publish.Start"]);
        // FCUnpublish then deleteStream: one unpublish.
        c.cmd(0, "FCUnpublish", Amf0Value::Null, &["cam".into()]).cmd(
            0,
            "deleteStream",
            Amf0Value::Null,
            &[1.0.into()],
        );
        assert_eq!(run(&mut s, &c.take()), [Event::Unpublished]);
        assert_eq!(statuses(&s.take_output()), ["NetStream.Unpublish.Success"]);
        assert_eq!(s.phase(), Phase::Connected);
    }

    /// ffmpeg and mpv (libavformat) play: createStream, getStreamLength, play; librtmp (rtmpdump) plays
    /// with start -2000 and no getStreamLength.
    #[test]
    fn libavformat_and_librtmp_play_orders() {
        for with_length in [true, false] {
            let (mut s, mut c) = connected("live");
            let _ = s.take_output();
            c.cmd(0, "createStream", Amf0Value::Null, &[]);
            if with_length {
                c.cmd(1, "getStreamLength", Amf0Value::Null, &["cam".into()]);
            }
            c.cmd(1, "play", Amf0Value::Null, &["cam?mode=rtc".into(), (-2000.0).into()]);
            let ev = run(&mut s, &c.take());
            let Event::Play(req) = &ev[0] else { panic!("{ev:?}") };
            assert_eq!((req.name.as_str(), req.query_str.as_str()), ("cam", "mode=rtc"));
            s.play_started("live/cam");
            let out = s.take_output();
            let cmds = commands(&out);
            if with_length {
                // A number, as libavformat expects (it warns "Unexpected reply on getStreamLength()" otherwise).
                let len = cmds.iter().find(|c| c.transaction == 3.0).expect("getStreamLength answered");
                assert_eq!(len.args[0].as_f64(), Some(0.0), "{len:?}");
            }
            assert_eq!(statuses(&out), ["NetStream.Play.Reset", "NetStream.Play.Start"]);
            c.cmd(1, "deleteStream", Amf0Value::Null, &[1.0.into()]);
            assert_eq!(run(&mut s, &c.take()), [Event::PlayClosed]);
        }
    }

    #[test]
    fn out_of_order_and_bad_requests_are_refused_with_a_reason() {
        // publish before connect.
        let mut s = Session::new();
        s.feed(&Client::default().cmd(1, "publish", Amf0Value::Null, &["x".into()]).take());
        let e = s.process().unwrap_err().to_string();
        assert!(e.contains("publish before connect"), "{e}");
        assert_eq!(statuses(&s.take_output()), ["NetStream.Publish.BadName"]);
        // A second connect.
        let (mut s, mut c) = connected("live");
        s.feed(&c.connect("live").take());
        assert!(s.process().unwrap_err().to_string().contains("already connected"));
        // No name, a bad name, an empty name.
        for (args, why) in [
            (vec![], "publish has no stream name"),
            (vec![Amf0Value::String("a/../b".into())], "stream name contains '/'"),
            (vec![Amf0Value::String(String::new())], "stream name is empty"),
        ] {
            let (mut s, mut c) = connected("live");
            let _ = s.take_output();
            s.feed(&c.cmd(1, "publish", Amf0Value::Null, &args).take());
            let e = s.process().unwrap_err().to_string();
            assert!(e.contains(why), "{e} / {why}");
            assert_eq!(statuses(&s.take_output()), ["NetStream.Publish.BadName"]);
        }
        // play while publishing.
        let (mut s, mut c) = connected("live");
        run(&mut s, &c.cmd(1, "publish", Amf0Value::Null, &["a".into()]).take());
        s.publish_started("live/a");
        let _ = s.take_output();
        s.feed(&c.cmd(1, "play", Amf0Value::Null, &["b".into()]).take());
        assert!(s.process().unwrap_err().to_string().contains("already publishing or playing"));
        assert_eq!(statuses(&s.take_output()), ["NetStream.Play.Failed"]);
        // connect with no app.
        let mut s = Session::new();
        s.feed(&Client::default().cmd(0, "connect", Amf0Value::Number(3.0), &[]).take());
        assert!(s.process().unwrap_err().to_string().contains("no command object"));
        let errors: Vec<_> = commands(&s.take_output()).into_iter().filter(|c| c.name == "_error").collect();
        assert_eq!(errors.len(), 1);
    }

    #[test]
    fn media_before_publish_is_ignored_and_unknown_commands_too() {
        let (mut s, mut c) = connected("live");
        c.raw(msg::VIDEO, 0, &[0x17, 0]).cmd(0, "_checkbw", Amf0Value::Null, &[]).cmd(
            0,
            "FCSubscribe",
            Amf0Value::Null,
            &[],
        );
        assert!(run(&mut s, &c.take()).is_empty());
    }

    #[test]
    fn acks_follow_the_peer_window_and_pings_are_answered() {
        let (mut s, mut c) = connected("live");
        let _ = s.take_output();
        c.raw(msg::WINDOW_ACK_SIZE, 0, &1000u32.to_be_bytes());
        run(&mut s, &c.take());
        assert!(!replies(&s.take_output()).iter().any(|m| m.type_id == msg::ACK));
        c.raw(msg::USER_CONTROL, 0, &[0, 6, 0, 0, 0x30, 0x39]).raw(msg::DATA_AMF0, 0, &[0u8; 1200]);
        run(&mut s, &c.take());
        let r = replies(&s.take_output());
        let ack = r.iter().find(|m| m.type_id == msg::ACK).expect("an ack after the window");
        assert!(be_u32(&ack.payload).unwrap() >= 1000);
        let pong = r.iter().find(|m| m.type_id == msg::USER_CONTROL).expect("a ping response");
        assert_eq!(&pong.payload[..], &[0, 7, 0, 0, 0x30, 0x39]);
    }

    #[test]
    fn malformed_control_messages_end_the_session() {
        let (mut s, mut c) = connected("live");
        s.feed(&c.raw(msg::SET_CHUNK_SIZE, 0, &[0, 1]).take());
        assert!(s.process().unwrap_err().to_string().contains("malformed set chunk size"));
        let (mut s, mut c) = connected("live");
        s.feed(&c.raw(msg::SET_CHUNK_SIZE, 0, &0u32.to_be_bytes()).take());
        assert!(matches!(s.process(), Err(SessionError::Chunk(_))));
    }

    /// A whole valid publish, as bytes, for mutation.
    fn valid_publish() -> Vec<u8> {
        let mut c = Client::default();
        c.connect("live")
            .cmd(0, "releaseStream", Amf0Value::Null, &["cam".into()])
            .cmd(0, "createStream", Amf0Value::Null, &[])
            .cmd(1, "publish", Amf0Value::Null, &["cam".into(), "live".into()])
            .raw(msg::VIDEO, 0, &[0x17, 0, 0, 0, 0, 1, 0x64, 0, 0x1f])
            .raw(msg::AUDIO, 10, &[0xaf, 0, 0x12, 0x10])
            .cmd(0, "deleteStream", Amf0Value::Null, &[1.0.into()]);
        c.take()
    }

    /// Runs captured client bytes through a session that accepts everything; returns the events.
    fn replay(bytes: &[u8]) -> (Vec<Event>, Vec<u8>) {
        let mut s = Session::new();
        let mut events = Vec::new();
        let mut out = Vec::new();
        // In the pieces a socket might deliver.
        for piece in bytes.chunks(1000) {
            s.feed(piece);
            loop {
                s.process().unwrap();
                let mut any = false;
                while let Some(ev) = s.poll_event() {
                    any = true;
                    match &ev {
                        Event::Connect { .. } => s.accept_connect(),
                        Event::Publish(r) => s.publish_started(&r.name),
                        Event::Play(r) => s.play_started(&r.name),
                        _ => {}
                    }
                    events.push(ev);
                }
                if !any {
                    break;
                }
            }
            out.extend(s.take_output());
        }
        (events, out)
    }

    /// What ffmpeg 5.1 sent publishing `rtmp://…/live/seed?txTime=0&room=1` (fuzz/corpus, fuzz/make_corpus.py).
    #[test]
    fn a_captured_ffmpeg_publish() {
        let (ev, out) = replay(include_bytes!("../../fuzz/corpus/rtmp_session/ffmpeg-publish"));
        assert_eq!(ev[0], Event::Connect { app: "live".into() });
        let Event::Publish(r) = &ev[1] else { panic!("{:?}", &ev[..3]) };
        assert_eq!(r.name, "seed");
        assert_eq!(crate::names::query_get(&r.query, "room"), Some("1"));
        assert!(matches!(ev[2], Event::Metadata { .. }), "{:?}", &ev[2]);
        let media = ev.iter().filter(|e| matches!(e, Event::Media { .. })).count();
        assert!(media > 10, "{media} media messages");
        // connect, releaseStream, FCPublish, createStream answered; the publish started.
        assert!(commands(&out).iter().filter(|c| c.name == "_result").count() >= 4);
        assert_eq!(statuses(&out), ["NetStream.Publish.Start"]);
    }

    /// What ffmpeg 5.1 sent playing `rtmp://…/live/held?mode=rtc`.
    #[test]
    fn a_captured_ffmpeg_play() {
        let (ev, out) = replay(include_bytes!("../../fuzz/corpus/rtmp_session/ffmpeg-play"));
        assert_eq!(ev[0], Event::Connect { app: "live".into() });
        let Event::Play(r) = &ev[1] else { panic!("{ev:?}") };
        assert_eq!((r.name.as_str(), r.query_str.as_str()), ("held", "mode=rtc"));
        let length = commands(&out)
            .into_iter()
            .find(|c| c.name == "_result" && c.args.first().and_then(|a| a.as_f64()) == Some(0.0));
        assert!(length.is_some(), "getStreamLength answered with a number: {:?}", commands(&out));
        assert_eq!(statuses(&out), ["NetStream.Play.Reset", "NetStream.Play.Start"]);
    }

    /// What GStreamer 1.22's rtmp2sink sent publishing `rtmp://…/live/gst?txTime=0` (its own RTMP client, not
    /// libavformat's).
    /// What GStreamer 1.22's rtmp2sink sent publishing `rtmp://…/live/gst?txTime=0`: its own RTMP client, with
    /// releaseStream/FCPublish on transaction 0 (no answer due), its chunk size set only after `publish`, and
    /// `@setDataFrame` twice.
    #[test]
    fn a_captured_gstreamer_publish() {
        let (ev, out) = replay(include_bytes!("../../fuzz/corpus/rtmp_session/gstreamer-publish"));
        assert_eq!(ev[0], Event::Connect { app: "live".into() });
        let Event::Publish(r) = &ev[1] else { panic!("{:?}", &ev[..3]) };
        assert_eq!((r.name.as_str(), r.query_str.as_str()), ("gst", "txTime=0"));
        assert!(matches!(ev[2], Event::Metadata { .. }), "{:?}", &ev[2]);
        let Some(Event::Media { type_id: msg::VIDEO, payload, .. }) =
            ev.iter().find(|e| matches!(e, Event::Media { .. }))
        else {
            panic!("no media: {ev:?}")
        };
        assert_eq!(&payload[..2], [0x17, 0], "the AVC sequence header comes first");
        let media = ev.iter().filter(|e| matches!(e, Event::Media { .. })).count();
        assert!(media > 10, "{media} media messages");
        // Only connect and createStream asked for an answer.
        assert_eq!(commands(&out).iter().filter(|c| c.name == "_result").count(), 2);
        assert_eq!(statuses(&out), ["NetStream.Publish.Start"]);
    }

    /// GStreamer's rtmp2src: `play` with start -2 (live, or recorded if there is none) and no FCSubscribe.
    #[test]
    fn a_captured_gstreamer_play() {
        let (ev, out) = replay(include_bytes!("../../fuzz/corpus/rtmp_session/gstreamer-play"));
        assert_eq!(ev[0], Event::Connect { app: "live".into() });
        let Event::Play(r) = &ev[1] else { panic!("{ev:?}") };
        assert_eq!((r.name.as_str(), r.query_str.as_str()), ("held", ""));
        assert_eq!(ev.len(), 2, "{ev:?}");
        assert_eq!(statuses(&out), ["NetStream.Play.Reset", "NetStream.Play.Start"]);
    }

    /// librtmp (rtmpdump -v): FCSubscribe on its own transaction, then `play` with start -1000 (live only).
    #[test]
    fn a_captured_librtmp_play() {
        let (ev, out) = replay(include_bytes!("../../fuzz/corpus/rtmp_session/librtmp-play"));
        assert_eq!(ev[0], Event::Connect { app: "live".into() });
        let Event::Play(r) = &ev[1] else { panic!("{ev:?}") };
        assert_eq!(r.name, "held");
        // connect, createStream and FCSubscribe answered; then the play statuses.
        assert_eq!(commands(&out).iter().filter(|c| c.name == "_result").count(), 3);
        assert_eq!(statuses(&out), ["NetStream.Play.Reset", "NetStream.Play.Start"]);
    }

    #[test]
    fn the_valid_publish_fixture_goes_through() {
        let (ev, _) = replay(&valid_publish());
        assert_eq!(ev.len(), 5, "connect, publish, video, audio, unpublished: {ev:?}");
        assert_eq!(ev[4], Event::Unpublished);
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..4096)) {
            fuzz_input(&data);
        }

        #[test]
        fn mutated_publishes_never_panic(flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..16), cut in any::<usize>()) {
            let mut data = valid_publish();
            for (at, v) in flips {
                let i = at % data.len();
                data[i] = v;
            }
            data.truncate(cut % (data.len() + 1));
            fuzz_input(&data);
        }
    }
}
