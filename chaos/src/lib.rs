//! The fault-injection harness's library: the recorded history of a run and the checkers
//! that judge it. The binary (`src/main.rs`) drives a real cluster and records; these
//! modules never touch the network, so they can be tested with hand-made histories.

pub mod access;
pub mod cluster;
pub mod control_plane;
pub mod drills;
pub mod history;
pub mod hosts;
pub mod hosts_control_plane;
pub mod linearizability;
pub mod nemesis;
pub mod proxy;
pub mod rollout_check;
pub mod watch_check;
pub mod workload;
