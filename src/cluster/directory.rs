//! The cluster's directory on Redis: which origin holds each live stream, and which nodes there are with
//! their addresses and load. Every entry has a TTL a heartbeat keeps renewing, so a node that dies (kill -9,
//! power, partition) leaves the directory on its own after `cluster.ttl_secs`, without anyone cleaning up.
//!
//! Keys (`P` = `cluster.key_prefix`):
//! - `P:stream:{app}/{name}` = the id of the node holding the stream's publisher. Claimed atomically (a Lua
//!   script: set when absent or ours, or when taking over), renewed and released only by its holder.
//! - `P:node:{id}` = the node's [`NodeRecord`] as JSON.
//! - `P:room:{sdkAppId}:{roomId}` = the id of the node a room lives on (members of one room meet on one node),
//!   claimed, renewed and released like a stream.
//!
//! One round trip per heartbeat whatever the number of streams (one script renews them all); lookups are two
//! GETs. Everything here is I/O; what to claim and when is the cluster service's business.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use serde::{Deserialize, Serialize};

use crate::config::{ClusterConfig, NodeRole};
use crate::hub::StreamKey;

/// The longest one directory call may take (Redis down, a network partition): callers answer 503 after it.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, thiserror::Error)]
pub enum DirectoryError {
    #[error("the cluster directory at {url} is unreachable: {detail}")]
    Unreachable { url: String, detail: String },
    #[error("directory entry {key} is not a livegate record: {detail}")]
    Malformed { key: String, detail: String },
}

/// A node as the directory lists it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NodeRecord {
    pub id: String,
    pub role: NodeRole,
    /// `http://host:port`, where edges pull from and rooms send members.
    pub http: String,
    /// `rtmp://host:port` (empty: not advertised).
    pub rtmp: String,
    pub load: NodeLoad,
    /// Unix milliseconds of this heartbeat.
    pub heartbeat_ms: u64,
    /// Unix milliseconds the node started.
    pub started_ms: u64,
    pub version: String,
}

/// What a node carries, as of its last heartbeat.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct NodeLoad {
    /// Streams live here (published or pulled).
    pub streams: u64,
    /// Players (RTMP, HTTP-FLV, WHEP; HLS clients are not connections).
    pub readers: u64,
    /// Bytes sent to readers per second, times 8, over the last heartbeat period.
    pub egress_bps: u64,
    /// CPU time used per wall second over the last heartbeat period, in percent of one core.
    pub cpu_percent: f64,
}

/// Where the directory says a room lives.
#[derive(Debug, Clone, PartialEq)]
pub enum RoomEntry {
    /// No node holds it.
    Nowhere,
    /// On this live node.
    Alive(NodeRecord),
    /// Held by a node whose record expired (it died): the room may be taken over.
    Gone { node_id: String },
}

/// What claiming a stream found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The stream is this node's now (or was already).
    Claimed,
    /// It was live on another node, which loses it (take-over allowed).
    TakenOver { from: String },
    /// It is live on another node.
    Held { by: String },
}

/// A room as the directory knows it: its app and id (the rooms service's key, without depending on it).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RoomRef {
    pub app: u32,
    pub id: String,
}

/// A stream's directory entry.
#[derive(Debug, Clone, Serialize)]
pub struct StreamEntry {
    pub stream: String,
    pub node: String,
}

/// Set when absent or ours, or (ARGV[3] = 1) whoever holds it. Answers {1, ""} claimed, {2, previous holder}
/// taken over, {0, holder} held by another node.
const CLAIM: &str = r"
local cur = redis.call('GET', KEYS[1])
if (not cur) or cur == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return {1, ''}
end
if ARGV[3] == '1' then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return {2, cur}
end
return {0, cur}
";

/// Renews every key in KEYS that is this node's (or is gone: after a Redis restart the holder writes it
/// again); answers, per key, "" when renewed or the node that holds it now.
const RENEW: &str = r"
local out = {}
for i, k in ipairs(KEYS) do
  local cur = redis.call('GET', k)
  if (not cur) or cur == ARGV[1] then
    redis.call('SET', k, ARGV[1], 'PX', ARGV[2])
    out[i] = ''
  else
    out[i] = cur
  end
end
return out
";

/// Deletes KEYS[1] if it is this node's.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";

pub struct Directory {
    conn: ConnectionManager,
    /// The URL without its password, for errors and logs.
    url: String,
    prefix: String,
    ttl_ms: u64,
    node_id: String,
    claim: redis::Script,
    renew: redis::Script,
    release: redis::Script,
}

impl Directory {
    /// Connects (once, within [`CALL_TIMEOUT`]): an unreachable Redis is an error naming its URL. Later outages
    /// are survived: the connection comes back by itself and every call until then fails fast.
    pub async fn connect(cfg: &ClusterConfig) -> Result<Self, DirectoryError> {
        let url = crate::names::redact_url(&cfg.redis_url);
        let unreachable = |detail: String| DirectoryError::Unreachable { url: url.clone(), detail };
        let client = redis::Client::open(cfg.redis_url.as_str()).map_err(|e| unreachable(e.to_string()))?;
        let mcfg = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(Duration::from_secs(1)))
            .set_number_of_retries(1);
        let conn = tokio::time::timeout(CALL_TIMEOUT, ConnectionManager::new_with_config(client, mcfg))
            .await
            .map_err(|_| unreachable(format!("no connection within {CALL_TIMEOUT:?}")))?
            .map_err(|e| unreachable(e.to_string()))?;
        let dir = Self {
            conn,
            url: url.clone(),
            prefix: cfg.key_prefix.clone(),
            ttl_ms: (cfg.ttl_secs * 1000.0) as u64,
            node_id: cfg.node_id.clone(),
            claim: redis::Script::new(CLAIM),
            renew: redis::Script::new(RENEW),
            release: redis::Script::new(RELEASE),
        };
        let _: String = dir.run(redis::cmd("PING")).await?;
        Ok(dir)
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    fn stream_key(&self, key: &StreamKey) -> String {
        format!("{}:stream:{}/{}", self.prefix, key.app, key.name)
    }

    fn room_key(&self, room: &RoomRef) -> String {
        format!("{}:room:{}:{}", self.prefix, room.app, room.id)
    }

    fn node_key(&self, id: &str) -> String {
        format!("{}:node:{id}", self.prefix)
    }

    fn unreachable(&self, detail: impl ToString) -> DirectoryError {
        DirectoryError::Unreachable { url: self.url.clone(), detail: detail.to_string() }
    }

    async fn bounded<T>(
        &self,
        f: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, DirectoryError> {
        match tokio::time::timeout(CALL_TIMEOUT, f).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(self.unreachable(e)),
            Err(_) => Err(self.unreachable(format!("no answer within {CALL_TIMEOUT:?}"))),
        }
    }

    async fn run<T: redis::FromRedisValue>(&self, cmd: redis::Cmd) -> Result<T, DirectoryError> {
        let mut conn = self.conn.clone();
        self.bounded(async move { cmd.query_async(&mut conn).await }).await
    }

    /// Claims `key` for this node; with `takeover`, from whichever node holds it.
    pub async fn claim(&self, key: &StreamKey, takeover: bool) -> Result<Claim, DirectoryError> {
        self.claim_key(self.stream_key(key), takeover).await
    }

    /// Claims a room for this node (it lives here) unless a live node has it; with `takeover`, whoever has it.
    pub async fn claim_room(&self, room: &RoomRef, takeover: bool) -> Result<Claim, DirectoryError> {
        self.claim_key(self.room_key(room), takeover).await
    }

    /// The node a room lives on, as the directory says.
    pub async fn room_node(&self, room: &RoomRef) -> Result<RoomEntry, DirectoryError> {
        let mut cmd = redis::cmd("GET");
        cmd.arg(self.room_key(room));
        let Some(id): Option<String> = self.run(cmd).await? else { return Ok(RoomEntry::Nowhere) };
        Ok(match self.node(&id).await? {
            Some(node) => RoomEntry::Alive(node),
            None => RoomEntry::Gone { node_id: id },
        })
    }

    /// Renews this node's rooms (as [`renew`](Self::renew) does its streams); answers those another node has.
    pub async fn renew_rooms(&self, rooms: &[RoomRef]) -> Result<Vec<(RoomRef, String)>, DirectoryError> {
        let keys: Vec<String> = rooms.iter().map(|r| self.room_key(r)).collect();
        let owners = self.renew_keys(keys).await?;
        Ok(rooms.iter().zip(owners).filter(|(_, o)| !o.is_empty()).map(|(k, o)| (k.clone(), o)).collect())
    }

    async fn claim_key(&self, key: String, takeover: bool) -> Result<Claim, DirectoryError> {
        let mut conn = self.conn.clone();
        let mut inv = self.claim.key(key);
        inv.arg(&self.node_id).arg(self.ttl_ms).arg(if takeover { "1" } else { "0" });
        let (code, who): (i64, String) = self.bounded(async move { inv.invoke_async(&mut conn).await }).await?;
        Ok(match code {
            1 => Claim::Claimed,
            2 => Claim::TakenOver { from: who },
            _ => Claim::Held { by: who },
        })
    }

    /// Renews this node's claims on `keys`; answers those another node holds now, with that node.
    pub async fn renew(&self, keys: &[StreamKey]) -> Result<Vec<(StreamKey, String)>, DirectoryError> {
        let owners = self.renew_keys(keys.iter().map(|k| self.stream_key(k)).collect()).await?;
        Ok(keys.iter().zip(owners).filter(|(_, o)| !o.is_empty()).map(|(k, o)| (k.clone(), o)).collect())
    }

    /// Per key, "" when renewed for this node, else the node holding it.
    async fn renew_keys(&self, keys: Vec<String>) -> Result<Vec<String>, DirectoryError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.conn.clone();
        let mut inv = self.renew.prepare_invoke();
        for k in keys {
            inv.key(k);
        }
        inv.arg(&self.node_id).arg(self.ttl_ms);
        self.bounded(async move { inv.invoke_async(&mut conn).await }).await
    }

    /// Removes this node's claim on `key` (the publisher left).
    pub async fn release(&self, key: &StreamKey) -> Result<(), DirectoryError> {
        let mut conn = self.conn.clone();
        let mut inv = self.release.key(self.stream_key(key));
        inv.arg(&self.node_id);
        let _: i64 = self.bounded(async move { inv.invoke_async(&mut conn).await }).await?;
        Ok(())
    }

    /// Writes this node's record (its heartbeat).
    pub async fn heartbeat(&self, rec: &NodeRecord) -> Result<(), DirectoryError> {
        let json = serde_json::to_string(rec).expect("a node record serializes");
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.node_key(&rec.id)).arg(json).arg("PX").arg(self.ttl_ms);
        let _: String = self.run(cmd).await?;
        Ok(())
    }

    /// Removes this node and the streams it holds from the directory (a clean shutdown).
    pub async fn leave(&self, streams: &[StreamKey]) -> Result<(), DirectoryError> {
        for k in streams {
            self.release(k).await?;
        }
        let mut cmd = redis::cmd("DEL");
        cmd.arg(self.node_key(&self.node_id));
        let _: i64 = self.run(cmd).await?;
        Ok(())
    }

    /// The node holding `key`'s publisher, if one does and is alive.
    pub async fn owner(&self, key: &StreamKey) -> Result<Option<NodeRecord>, DirectoryError> {
        let mut cmd = redis::cmd("GET");
        cmd.arg(self.stream_key(key));
        let Some(id): Option<String> = self.run(cmd).await? else { return Ok(None) };
        self.node(&id).await
    }

    /// One node's record, if it is alive.
    pub async fn node(&self, id: &str) -> Result<Option<NodeRecord>, DirectoryError> {
        let node_key = self.node_key(id);
        let mut cmd = redis::cmd("GET");
        cmd.arg(&node_key);
        let Some(json): Option<String> = self.run(cmd).await? else { return Ok(None) };
        serde_json::from_str(&json)
            .map(Some)
            .map_err(|e| DirectoryError::Malformed { key: node_key, detail: e.to_string() })
    }

    /// Every key matching `pattern` with its value (SCAN, so Redis is never blocked by a long KEYS).
    async fn scan(&self, pattern: &str) -> Result<Vec<(String, String)>, DirectoryError> {
        let mut cursor: u64 = 0;
        let mut keys: Vec<String> = Vec::new();
        loop {
            let mut cmd = redis::cmd("SCAN");
            cmd.arg(cursor).arg("MATCH").arg(pattern).arg("COUNT").arg(500);
            let (next, batch): (u64, Vec<String>) = self.run(cmd).await?;
            keys.extend(batch);
            if next == 0 {
                break;
            }
            cursor = next;
        }
        keys.sort();
        keys.dedup();
        let mut out = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(500) {
            let mut cmd = redis::cmd("MGET");
            cmd.arg(chunk);
            let values: Vec<Option<String>> = self.run(cmd).await?;
            out.extend(chunk.iter().cloned().zip(values).filter_map(|(k, v)| Some((k, v?))));
        }
        Ok(out)
    }

    /// Every live node.
    pub async fn nodes(&self) -> Result<Vec<NodeRecord>, DirectoryError> {
        let entries = self.scan(&format!("{}:node:*", self.prefix)).await?;
        entries
            .into_iter()
            .map(|(k, v)| {
                serde_json::from_str(&v).map_err(|e| DirectoryError::Malformed { key: k, detail: e.to_string() })
            })
            .collect()
    }

    /// Every stream the directory has, with its node.
    pub async fn streams(&self) -> Result<Vec<StreamEntry>, DirectoryError> {
        let head = format!("{}:stream:", self.prefix);
        let entries = self.scan(&format!("{head}*")).await?;
        Ok(entries
            .into_iter()
            .map(|(k, node)| StreamEntry { stream: k.strip_prefix(&head).unwrap_or(&k).to_owned(), node })
            .collect())
    }
}
