//! Rooms: mini programs and browsers in one call (docs/rooms.md, issue #11).
//!
//! `state` is the rooms' whole state machine, pure like str0m's `Rtc`: a request and the time go in, the result
//! and the events to deliver come out. The adapters that come next (the room API, the member WebSocket, media
//! events from the hub) own the sockets and clocks and only translate.

pub mod state;

pub use state::{
    ClientKind, EnterRequest, Entered, LeaveReason, Member, Role, RoomError, RoomEvent, RoomKey, RoomLimits,
    RoomSummary, Rooms, Sequenced,
};
