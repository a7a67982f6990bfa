//! The namespace controller: empties a namespace being deleted and then deletes it, as
//! Kubernetes' namespace controller does. The API server only marks the namespace
//! (`deletionTimestamp`, phase `Terminating`); this controller deletes its ReplicaSets and
//! pods, and the namespace once nothing is left in it. Driven by an informer on namespaces;
//! what is in a namespace is read from the store when it is being emptied.

use std::time::Duration;

use crate::api::kube::{
    KubeDeployment, KubeEndpointSlice, KubeEvent, KubeNamespace, KubePod, KubeReplicaSet,
    KubeService,
};
use crate::registry::{Object, Registry, RegistryError};
use crate::runtime::{Controller, Informer, Next, Shutdown};

/// How soon a namespace is looked at again when something was still being created in it
/// while it was emptied (a bounded retry, not a poll: it ends when the namespace is gone).
const RECHECK: Duration = Duration::from_secs(1);

#[derive(Clone)]
pub struct NamespaceController {
    registry: Registry,
    namespaces: Informer<KubeNamespace>,
}

impl NamespaceController {
    /// Runs until `shutdown`, or until the future is dropped.
    pub async fn run(registry: Registry, namespaces: Informer<KubeNamespace>, shutdown: Shutdown) {
        let ctl = NamespaceController {
            registry,
            namespaces: namespaces.clone(),
        };
        Controller::new("namespace")
            .reconciles(&namespaces)
            .run(1, shutdown.wait(), move |name| {
                let ctl = ctl.clone();
                async move { ctl.reconcile(&name).await }
            })
            .await;
    }

    /// Deletes everything of kind `T` in `ns`; returns how many there were.
    async fn delete_all<T: Object>(&self, ns: &str) -> Result<usize, RegistryError> {
        let (items, _) = self.registry.list_in::<T>(Some(ns)).await?;
        for item in &items {
            match self.registry.delete::<T>(&item.key(), 0).await {
                Ok(_) | Err(RegistryError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(items.len())
    }

    pub async fn reconcile(&self, name: &str) -> anyhow::Result<Next> {
        let Some(ns) = self.namespaces.get(name) else {
            return Ok(Next::Done);
        };
        if ns.metadata.deletion_timestamp.is_none() {
            return Ok(Next::Done);
        }
        // Deployments, then ReplicaSets, so that none makes new ReplicaSets or pods while
        // they go.
        let deployments = self.delete_all::<KubeDeployment>(name).await?;
        let sets = self.delete_all::<KubeReplicaSet>(name).await?;
        let pods = self.delete_all::<KubePod>(name).await?;
        // Services (their node ports are released with them) and their slices.
        self.delete_all::<KubeService>(name).await?;
        self.delete_all::<KubeEndpointSlice>(name).await?;
        // What happened in it (events still on their way are left to expire).
        self.delete_all::<KubeEvent>(name).await?;
        let (left_deployments, _) = self.registry.list_in::<KubeDeployment>(Some(name)).await?;
        let (left_sets, _) = self.registry.list_in::<KubeReplicaSet>(Some(name)).await?;
        let (left_pods, _) = self.registry.list_in::<KubePod>(Some(name)).await?;
        if !left_deployments.is_empty() || !left_sets.is_empty() || !left_pods.is_empty() {
            return Ok(Next::After(RECHECK));
        }
        match self
            .registry
            .delete::<KubeNamespace>(name, ns.resource_version())
            .await
        {
            Ok(_) | Err(RegistryError::NotFound { .. }) => {
                tracing::info!(
                    namespace = name,
                    deployments,
                    replicasets = sets,
                    pods,
                    "namespace emptied and deleted"
                );
                Ok(Next::Done)
            }
            // Changed meanwhile: its event queues it again.
            Err(RegistryError::Conflict { .. }) => Ok(Next::Done),
            Err(e) => Err(e.into()),
        }
    }
}
