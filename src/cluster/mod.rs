//! Distribution beyond one node (issue #12): pulls of other servers' streams now; the origin/edge directory on
//! Redis, relays and edge pulls build on them.

pub mod pull;

pub use pull::{PullError, PullState, Pulls};
