//! # miniku
//!
//! The control plane and kubelet of Miniku, a small Kubernetes. Every component is a client of
//! the replicated store ([`miniku_store`]) and reacts to watch events; none of them polls.
//!
//! ## Module map
//! - [`api`]: ReplicaSet, Pod and Node in the seed's JSON shapes, with their validation.
//! - [`registry`]: typed create/get/list/update/delete/watch over the store; the key layout.
//! - [`apiserver`]: the user-facing HTTP API (`/replicasets`, `/pods`, `/nodes`, watches).
//! - [`runtime`]: informer (list, watch, resume, relist), cache, work queue, leader election.
//! - [`controllers`]: the ReplicaSet controller and the node lifecycle controller.
//! - [`scheduler`]: binds pending pods to ready nodes.
//! - [`kubelet`]: runs a node's pods as Docker containers (or fake ones for scale tests).
//! - [`proxy`]: `miniku proxy`, forwarding NodePort Services' connections to their pods.

pub mod api;
pub mod apiserver;
pub mod controllers;
pub mod events;
pub mod kubelet;
pub mod proxy;
pub mod registry;
pub mod runtime;
pub mod scheduler;
