//! livegate: a self-hosted media gateway for WeChat mini programs and browsers.
//!
//! The crate is cut the way `ARCHITECTURE.md` describes: pure protocol code in `media` and `rtmp::{chunk,
//! handshake, message}`, the stream registry and fan-out in `hub`, and thin socket adapters (`rtmp::server`,
//! `http`) around them.

pub mod access;
pub mod auth;
pub mod cluster;
pub mod config;
pub mod conn;
pub mod events;
pub mod fuzz;
pub mod health;
pub mod hls;
pub mod http;
pub mod hub;
pub mod media;
pub mod metrics;
pub mod mix;
pub mod names;
pub mod netio;
pub mod placeholder;
pub mod record;
pub mod rooms;
pub mod rtmp;
pub mod server;
pub mod timefmt;
pub mod tls;
pub mod transcode;
pub mod usersig;
pub mod webhooks;
pub mod webrtc;
