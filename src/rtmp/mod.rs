//! RTMP: pure protocol pieces (`handshake`, `chunk`, `message`) and the socket adapter (`server`).

pub mod chunk;
pub mod handshake;
pub mod message;
pub mod server;
