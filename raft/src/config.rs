//! Every tunable of a store node, with defaults. Parsed from the command line by the
//! `miniku store` subcommand; tests build it directly.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::Duration;

use crate::auth::Token;
use crate::disk::SpaceLimits;
use crate::tls::{CertKey, PeerTls};
use crate::types::NodeId;

/// Limits enforced at the API edge (documented in docs/store.md).
#[derive(Clone, Debug)]
pub struct Limits {
    /// Largest accepted request body (etcd: 1.5 MiB).
    pub max_request_bytes: usize,
    /// Largest key.
    pub max_key_bytes: usize,
    /// Largest value.
    pub max_value_bytes: usize,
    /// Most ops in one transaction's `success` or `failure` branch, and most compares.
    pub max_txn_ops: usize,
    /// Most watch streams one node serves at once.
    pub max_watchers: usize,
    /// Most connections each listener (client API, peer API) serves at once; more are
    /// answered 429 and closed. Above `max_watchers`: over HTTP/1.1 every watch stream
    /// holds a connection of its own.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_request_bytes: 3 * 512 * 1024,
            max_key_bytes: 4 * 1024,
            max_value_bytes: 3 * 512 * 1024,
            max_txn_ops: 128,
            max_watchers: 20_000,
            max_connections: 25_000,
        }
    }
}

#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// This member's Raft id (>= 1).
    pub id: NodeId,
    /// Directory holding the sled database and snapshots.
    pub data_dir: PathBuf,
    /// Where the client HTTP API listens.
    pub client_addr: String,
    /// Where peer (Raft) RPCs listen.
    pub peer_addr: String,
    /// The founding members: id -> peer address. Used only on the first start of an empty
    /// data directory; afterwards membership comes from the log.
    pub initial_cluster: BTreeMap<NodeId, String>,
    pub heartbeat_interval: Duration,
    pub election_timeout_min: Duration,
    pub election_timeout_max: Duration,
    /// Build a snapshot (and purge the log behind it) after this many log entries.
    pub snapshot_logs_since_last: u64,
    /// Keep this many log entries behind a snapshot for slow followers.
    pub max_in_snapshot_log_to_keep: u64,
    /// Most client commands in one Raft entry.
    pub max_batch_commands: usize,
    /// How often a watcher that asked for progress notifications gets one when idle.
    pub progress_notify_interval: Duration,
    /// Timeout for forwarding a request to the leader and for one proposal.
    pub request_timeout: Duration,
    pub limits: Limits,
    /// Peer address -> the address actually dialled for it. Empty normally; a
    /// fault-injection harness routes each pair of members through its own proxy so it can
    /// cut single links.
    pub peer_routes: HashMap<String, String>,
    /// Carry AppendEntries and calls to the leader over long-lived framed streams (the
    /// default); false sends each as an HTTP request, as members did before streams.
    pub peer_streams: bool,
    /// TESTING ONLY, UNSAFE: serve "linearizable" reads from local state without a read
    /// index, so a lagging or partitioned member answers stale data. Exists so the
    /// fault-injection harness can prove its checker catches stale reads.
    pub unsafe_stale_reads: bool,
    /// Bearer token clients must send (every route but `/health`). Without one the client
    /// API may only listen on loopback.
    pub client_token: Option<Token>,
    /// The cluster's shared secret for peer RPCs (sent and required). Without one the peer
    /// API may only listen on loopback.
    pub peer_token: Option<Token>,
    /// When this member raises its NOSPACE alarm.
    pub space: SpaceLimits,
    /// TLS on the client API (certificate and key); `None` serves plain HTTP.
    pub client_tls: Option<CertKey>,
    /// TLS on the peer API, and for dialling peers; with a trusted CA, mutual TLS.
    pub peer_tls: Option<PeerTls>,
}

impl StoreConfig {
    /// A config with every tunable at its default.
    pub fn new(
        id: NodeId,
        data_dir: PathBuf,
        client_addr: String,
        peer_addr: String,
        initial_cluster: BTreeMap<NodeId, String>,
    ) -> Self {
        StoreConfig {
            id,
            data_dir,
            client_addr,
            peer_addr,
            initial_cluster,
            // openraft 0.9 elects after the leader lease (the maximum) plus a random timeout
            // in the range, so a follower waits 450-600 ms of silence before it runs, and
            // a crashed leader is replaced about 0.33 s after its last message (the crash
            // watch, bounded by the voters' lease). 0 term changes in 180 s of puts at 64
            // clients on 2 cores when no snapshot stalls the members.
            heartbeat_interval: Duration::from_millis(50),
            election_timeout_min: Duration::from_millis(150),
            election_timeout_max: Duration::from_millis(300),
            snapshot_logs_since_last: 5000,
            max_in_snapshot_log_to_keep: 1000,
            max_batch_commands: 512,
            progress_notify_interval: Duration::from_secs(5),
            request_timeout: Duration::from_secs(5),
            limits: Limits::default(),
            peer_routes: HashMap::new(),
            peer_streams: true,
            unsafe_stale_reads: false,
            client_token: None,
            peer_token: None,
            space: SpaceLimits::default(),
            client_tls: None,
            peer_tls: None,
        }
    }
}

/// Parses `1=127.0.0.1:12380,2=127.0.0.1:22380` into id -> peer address.
pub fn parse_initial_cluster(s: &str) -> Result<BTreeMap<NodeId, String>, String> {
    let mut out = BTreeMap::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (id, addr) = part
            .split_once('=')
            .ok_or_else(|| format!("`{part}`: expected ID=HOST:PORT"))?;
        let id: NodeId = id
            .trim()
            .parse()
            .map_err(|_| format!("`{part}`: member id must be a positive integer"))?;
        if id == 0 {
            return Err(format!("`{part}`: member id must be >= 1"));
        }
        let addr = addr.trim();
        if addr.is_empty() || !addr.contains(':') {
            return Err(format!("`{part}`: expected ID=HOST:PORT"));
        }
        if out.insert(id, addr.to_string()).is_some() {
            return Err(format!("member id {id} appears twice"));
        }
    }
    if out.is_empty() {
        return Err("the initial cluster names no member".into());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_initial_cluster() {
        let m = parse_initial_cluster("1=127.0.0.1:12380, 2=127.0.0.1:22380").unwrap_or_default();
        assert_eq!(m.len(), 2);
        assert_eq!(m.get(&2).map(String::as_str), Some("127.0.0.1:22380"));
        assert!(parse_initial_cluster("1=a:1,1=b:2").is_err());
        assert!(parse_initial_cluster("0=a:1").is_err());
        assert!(parse_initial_cluster("x").is_err());
        assert!(parse_initial_cluster("").is_err());
    }
}
