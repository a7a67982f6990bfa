//! The fault-injection harness's library. The recorded history of a run and the checkers
//! that judge it (`history`, `linearizability`, `watch_check`, `rollout_check`) never touch
//! the network, so they can be tested with hand-made histories. The clusters under test and
//! their faults (`cluster` and `proxy` on loopback, `hosts` across hosts), the `nemesis`,
//! the clients (`access`, `workload`), the `drills` and the control-plane runs
//! (`control_plane`, `hosts_control_plane`) drive real processes; the binary
//! (`src/main.rs`) puts them together.

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
