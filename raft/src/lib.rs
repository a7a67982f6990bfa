//! # miniku-store
//!
//! Miniku's replicated key-value store: an etcd-style MVCC store (revisions, leases,
//! transactions, watches) replicated with openraft and persisted in sled, served over a
//! curl-friendly HTTP/JSON API.
//!
//! ## Module map (dependencies point down the list)
//! - [`types`]: the Raft type configuration, commands, results, records and events.
//! - [`api`]: the JSON shapes of the HTTP API, shared by server and client.
//! - [`config`]: every tunable of a store node.
//! - [`mvcc`]: revisions, per-key history, ranges, leases table, compaction; applies a batch of
//!   commands in one atomic sled write. No Raft, no HTTP.
//! - [`watch`]: the watch hub: subscribe from a revision, history catch-up, then live events.
//! - [`storage`]: openraft's log store and state machine over sled, snapshots.
//! - [`network`]: peer RPCs between store nodes (bincode over HTTP), inbound and outbound.
//! - [`proposer`]: batches concurrent client writes into Raft entries, forwards from followers.
//! - [`lease`]: the leader's lease clock; expiry is carried out through the log.
//! - [`membership`]: when a learner may become a voter, and when a leader has no quorum
//!   (etcd's rules and error texts).
//! - [`node`]: starts a store node from a [`config::StoreConfig`] and hands out a
//!   [`node::StoreHandle`].
//! - [`grpc`]: etcd's v3 gRPC API (KV, Watch, Lease, Cluster, Maintenance, Auth) on the
//!   same port as [`http`], chosen by content type.
//! - [`http`]: the client-facing KV API, watch streams (SSE), cluster, health and metrics.
//! - [`metrics`]: counters and histograms rendered in Prometheus text format.
//! - [`client`]: [`client::StoreClient`], the Rust client the control plane uses.
//! - [`auth`], [`tls`], [`serve`]: bearer tokens, TLS configuration (rustls), and the
//!   listening loop shared by every server (TLS handshakes, connection limit, shutdown);
//!   [`h2_authority`] repairs the scheme-bearing `:authority` etcd's clients send.

pub mod api;
pub mod auth;
pub mod client;
pub mod config;
pub mod disk;
pub mod error;
pub mod grpc;
pub mod h2_authority;
pub mod http;
pub mod lease;
pub mod membership;
pub mod metrics;
pub mod mvcc;
pub mod network;
pub mod node;
pub mod proposer;
pub mod serve;
pub mod sse;
pub mod storage;
pub mod tls;
pub mod types;
pub mod watch;
