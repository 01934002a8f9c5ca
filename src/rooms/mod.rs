//! Rooms: mini programs and browsers in one call (docs/rooms.md, issue #11).
//!
//! `state` is the rooms' whole state machine, pure like str0m's `Rtc`: a request and the time go in, the result
//! and the events to deliver come out. `media` tells from a member's frames which tracks it sends. `service`
//! owns the lock, the members' logins and credentials, the event channels and the hub watchers; the HTTP
//! adapter (`http::rooms`) only translates requests and sockets.

pub mod callbacks;
pub mod media;
pub mod mix_plan;
pub mod service;
pub mod state;

pub use service::{Actor, Backlog, EnterOutcome, EnterParams, MemberView, RoomService, ServiceError, SessionView};
pub use state::{
    ClientKind, EnterRequest, Entered, LeaveReason, Member, Recipient, Role, RoomError, RoomEvent, RoomKey, RoomKind,
    RoomLimits, RoomSummary, Rooms, Sequenced,
};
