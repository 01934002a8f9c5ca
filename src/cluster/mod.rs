//! Distribution beyond one node (issue #12): pulls of other servers' streams, and the origin/edge cluster on a
//! Redis directory (docs/cluster.md). Relays (pushes to other servers) are the RTMP adapter's.

pub mod directory;
pub mod hls_source;
pub mod pull;
pub mod service;

pub use pull::{PullError, PullState, Pulls};
pub use service::{Cluster, ClusterError, VIA_HEADER};
