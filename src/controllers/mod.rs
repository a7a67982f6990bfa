//! Controllers run by `miniku controller-manager`: the [`deployment`] controller, the
//! [`replicaset`] controller, the [`node_lifecycle`] controller and the [`namespace`]
//! controller. Each reads through informers and writes through the
//! registry with revision preconditions; none polls.

pub mod deployment;
pub mod endpoints;
pub mod namespace;
pub mod node_lifecycle;
pub mod replicaset;

pub use deployment::DeploymentController;
pub use endpoints::EndpointsController;
pub use namespace::NamespaceController;
pub use node_lifecycle::NodeLifecycleController;
pub use replicaset::ReplicaSetController;

#[cfg(test)]
mod in_process_tests;
