//! Running real miniku processes on loopback, shared by the integration tests (`tests/common`)
//! and the fault-injection harness (`chaos/`):
//! - [`ports`]: loopback ports that no other process or earlier call takes;
//! - [`process`]: a started process with its output in a log file, killed when dropped;
//! - [`wait`]: waiting for a condition (an endpoint answers) with a deadline, never a
//!   fixed sleep;
//! - [`docker`]: removing the containers a kubelet left behind for a node.

pub mod docker;
pub mod ports;
pub mod process;
pub mod wait;

pub use ports::{free_addr, free_port};
pub use process::{Process, SpawnError};
pub use wait::{poll_until, wait_for_success, wait_until, TimedOut};
