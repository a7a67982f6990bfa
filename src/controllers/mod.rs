//! Controllers run by `miniku controller-manager`: the [`replicaset`] controller and the
//! [`node_lifecycle`] controller. Each reads through informers and writes through the
//! registry with revision preconditions; none polls.

pub mod node_lifecycle;
pub mod replicaset;

pub use node_lifecycle::NodeLifecycleController;
pub use replicaset::ReplicaSetController;
