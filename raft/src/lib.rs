//! # miniku-store
//!
//! Miniku's replicated key-value store: an etcd-style MVCC store (revisions, leases,
//! transactions, watches) replicated with openraft and persisted in sled, served over a
//! curl-friendly HTTP/JSON API.
//!
//! ## Module map (dependencies point down the list)
//! - [`types`]: the Raft type configuration, commands, results, records and events.
//! - [`codec`]: the one binary encoding (bincode) of disk records and peer messages.
//! - [`api`]: the JSON shapes of the HTTP API, shared by server and client.
//! - [`config`]: every tunable of a store node.
//! - [`mvcc`]: revisions, per-key history, ranges, leases table, compaction; applies a batch of
//!   commands in one atomic sled write. No Raft, no HTTP.
//! - [`watch`]: the watch hub: subscribe from a revision, history catch-up, then live events.
//! - [`storage`]: openraft's log store and state machine over sled, snapshots.
//! - [`network`]: peer RPCs between store nodes (bincode over HTTP), inbound and outbound.
//! - [`leader_route`]: the one way to the leader: here when leading, else over the peer
//!   network; which failures are retried and what a lost answer means.
//! - [`proposer`]: batches concurrent client writes into Raft entries, forwards from followers.
//! - [`read_index`]: batches read-index confirmations for linearizable reads.
//! - [`lease`]: the leader's lease clock; expiry is carried out through the log.
//! - [`membership`]: when a learner may become a voter, and when a leader has no quorum
//!   (etcd's rules and error texts).
//! - [`peer_service`]: what the leader does for its peers' requests (forwarded writes, read
//!   index, leases, membership changes, the quorum check), behind the network's
//!   `PeerService` trait.
//! - [`node`]: a running store node and its [`node::StoreHandle`], which the servers use.
//! - [`grpc`]: etcd's v3 gRPC API (KV, Watch, Lease, Cluster, Maintenance, Auth) on the
//!   same port as [`http`], chosen by content type.
//! - [`http`]: the client-facing KV API, watch streams (SSE), cluster, health and metrics.
//! - [`start`]: [`node::StoreNode::start`], from a [`config::StoreConfig`]: opens the
//!   storage, starts Raft, the node's parts and its servers.
//! - [`metrics`]: counters and histograms rendered in Prometheus text format.
//! - [`client`]: [`client::StoreClient`], the Rust client the control plane uses; [`sse`]
//!   decodes the Server-Sent Events its watches (and every other watch reader) receive.
//! - `local` (feature `local`): the state machine and watch hub in one process, without
//!   Raft or HTTP, answering like the client: for other crates' unit tests.
//! - [`auth`], [`tls`], [`serve`]: bearer tokens, TLS configuration (rustls), and the
//!   listening loop shared by every server (TLS handshakes, connection limit, shutdown);
//!   [`h2_authority`] repairs the scheme-bearing `:authority` etcd's clients send.

pub mod api;
pub mod auth;
pub mod client;
pub mod codec;
pub mod config;
pub(crate) mod crash_watch;
pub mod disk;
pub mod error;
pub mod grpc;
pub mod h2_authority;
pub mod http;
pub(crate) mod leader_route;
pub mod lease;
#[cfg(feature = "local")]
pub mod local;
pub mod membership;
pub mod metrics;
pub mod mvcc;
pub mod network;
pub mod node;
pub(crate) mod peer_service;
pub mod proposer;
pub mod read_index;
pub mod serve;
pub mod sse;
pub(crate) mod start;
pub mod storage;
pub mod tls;
pub mod types;
pub mod watch;
