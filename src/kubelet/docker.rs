//! The Docker runtime, through bollard. Connects to the local engine (`DOCKER_HOST` or the
//! default socket) and negotiates the API version, so older engines (20.10 speaks API 1.41)
//! work. Containers are named after their pod and carry the kubelet's labels; nothing here
//! touches a container without `miniku=1` and this node's label.

use std::collections::HashMap;
use std::time::Duration;

use bollard::errors::Error as DockerError;
use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{
    CreateContainerOptions, CreateImageOptions, EventsOptions, ListContainersOptions,
    RemoveContainerOptions, StopContainerOptions,
};
use bollard::Docker;
use chrono::{DateTime, Utc};
use futures::stream::BoxStream;
use futures::StreamExt;

use super::runtime::{
    container_name, labels_for, pod_key_from_labels, Container, ContainerRuntime, ContainerState,
    RuntimeError, RuntimeEvent, LABEL_MARKER, LABEL_NODE, LABEL_POD, LABEL_POD_UID,
};
use crate::api::Pod;

#[derive(Clone)]
pub struct DockerRuntime {
    docker: Docker,
}

fn engine(e: DockerError) -> RuntimeError {
    match e {
        DockerError::HyperResponseError { .. } | DockerError::IOError { .. } => {
            RuntimeError::EngineUnreachable(e.to_string())
        }
        other => RuntimeError::Engine(other.to_string()),
    }
}

fn is_status(e: &DockerError, code: u16) -> bool {
    matches!(e, DockerError::DockerResponseServerError { status_code, .. } if *status_code == code)
}

fn parse_time(s: Option<&str>) -> Option<DateTime<Utc>> {
    let t = DateTime::parse_from_rfc3339(s?).ok()?.with_timezone(&Utc);
    // Docker reports "0001-01-01T00:00:00Z" for never.
    (t.timestamp() > 0).then_some(t)
}

impl DockerRuntime {
    /// Connects to the local engine and agrees on an API version.
    pub async fn connect() -> Result<Self, RuntimeError> {
        let docker = Docker::connect_with_local_defaults().map_err(engine)?;
        let docker = docker.negotiate_version().await.map_err(engine)?;
        Ok(DockerRuntime { docker })
    }

    /// Filters for our containers on `node`, and of pod `pod` (a key: the name is matched
    /// here, the namespace after listing).
    fn node_filters(node: &str, pod: Option<&str>) -> HashMap<String, Vec<String>> {
        let mut labels = vec![format!("{LABEL_MARKER}=1"), format!("{LABEL_NODE}={node}")];
        if let Some(p) = pod {
            labels.push(format!("{LABEL_POD}={}", crate::registry::name_of_key(p)));
        }
        HashMap::from([("label".to_string(), labels)])
    }

    async fn state_of(&self, id: &str) -> Result<ContainerState, RuntimeError> {
        let info = self
            .docker
            .inspect_container(id, None)
            .await
            .map_err(engine)?;
        let st = info.state.unwrap_or_default();
        Ok(if st.running.unwrap_or(false) {
            ContainerState::Running {
                started_at: parse_time(st.started_at.as_deref()),
            }
        } else {
            ContainerState::Exited {
                exit_code: st.exit_code.unwrap_or(0),
                finished_at: parse_time(st.finished_at.as_deref()),
                oom_killed: st.oom_killed.unwrap_or(false),
            }
        })
    }

    async fn create(&self, pod: &Pod, node: &str) -> Result<String, DockerError> {
        let spec = &pod.spec;
        let body = ContainerCreateBody {
            image: Some(spec.image.clone()),
            cmd: (!spec.command.is_empty()).then(|| spec.command.clone()),
            env: Some(spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
            labels: Some(labels_for(pod, node)),
            host_config: Some(HostConfig {
                // Only what the pod spec says: no privileges, mounts or host network.
                privileged: Some(false),
                nano_cpus: (spec.resources.cpu > 0).then(|| spec.resources.cpu as i64 * 1_000_000),
                memory: (spec.resources.memory > 0).then_some(spec.resources.memory as i64),
                ..Default::default()
            }),
            ..Default::default()
        };
        let options = CreateContainerOptions {
            name: Some(container_name(pod)),
            ..Default::default()
        };
        Ok(self.docker.create_container(Some(options), body).await?.id)
    }
}

impl ContainerRuntime for DockerRuntime {
    async fn ping(&self) -> Result<(), RuntimeError> {
        self.docker.ping().await.map(|_| ()).map_err(engine)
    }

    async fn ensure_image(&self, image: &str) -> Result<(), RuntimeError> {
        match self.docker.inspect_image(image).await {
            Ok(_) => return Ok(()),
            Err(e) if is_status(&e, 404) => {}
            Err(e) => return Err(engine(e)),
        }
        tracing::info!(image, "pulling image");
        let options = CreateImageOptions {
            from_image: Some(image.to_string()),
            ..Default::default()
        };
        let mut pull = self.docker.create_image(Some(options), None, None);
        while let Some(step) = pull.next().await {
            match step {
                Ok(info) => {
                    if let Some(err) = info.error_detail.and_then(|d| d.message) {
                        return Err(RuntimeError::ImagePull {
                            image: image.to_string(),
                            message: err,
                        });
                    }
                }
                Err(e) => {
                    return Err(RuntimeError::ImagePull {
                        image: image.to_string(),
                        message: e.to_string(),
                    })
                }
            }
        }
        // A pull that "succeeded" must have left the image.
        self.docker
            .inspect_image(image)
            .await
            .map(|_| ())
            .map_err(|e| RuntimeError::ImagePull {
                image: image.to_string(),
                message: e.to_string(),
            })
    }

    async fn start(&self, pod: &Pod, node: &str) -> Result<String, RuntimeError> {
        let id = match self.create(pod, node).await {
            Ok(id) => id,
            Err(e) if is_status(&e, 409) => {
                // A leftover container holds the name: remove it if it is ours, then retry.
                let name = pod.spec.name.as_str();
                let stale = self
                    .docker
                    .inspect_container(name, None)
                    .await
                    .map_err(engine)?;
                let labels = stale.config.and_then(|c| c.labels).unwrap_or_default();
                if labels.get(LABEL_NODE).map(String::as_str) != Some(node) {
                    return Err(RuntimeError::Engine(format!(
                        "a container named `{name}` exists and is not this kubelet's"
                    )));
                }
                self.remove(
                    &stale.id.unwrap_or_else(|| name.to_string()),
                    Duration::from_secs(1),
                )
                .await?;
                self.create(pod, node).await.map_err(engine)?
            }
            Err(e) => return Err(engine(e)),
        };
        if let Err(e) = self.docker.start_container(&id, None).await {
            let _ = self.remove(&id, Duration::ZERO).await;
            return Err(engine(e));
        }
        Ok(id)
    }

    async fn list(&self, node: &str) -> Result<Vec<Container>, RuntimeError> {
        self.list_filtered(node, None).await
    }

    async fn find(&self, node: &str, pod: &str) -> Result<Vec<Container>, RuntimeError> {
        let mut found = self.list_filtered(node, Some(pod)).await?;
        found.retain(|c| c.pod_key == pod);
        Ok(found)
    }

    async fn remove(&self, id: &str, grace: Duration) -> Result<(), RuntimeError> {
        self.stop_and_remove(id, grace).await
    }

    fn events(&self, node: &str) -> BoxStream<'static, Result<RuntimeEvent, RuntimeError>> {
        self.event_stream(node)
    }
}

impl DockerRuntime {
    async fn list_filtered(
        &self,
        node: &str,
        pod: Option<&str>,
    ) -> Result<Vec<Container>, RuntimeError> {
        let options = ListContainersOptions {
            all: true,
            filters: Some(Self::node_filters(node, pod)),
            ..Default::default()
        };
        let summaries = self
            .docker
            .list_containers(Some(options))
            .await
            .map_err(engine)?;
        let mut out = Vec::new();
        for s in summaries {
            let Some(id) = s.id else { continue };
            let labels = s.labels.unwrap_or_default();
            let state = match self.state_of(&id).await {
                Ok(st) => st,
                // Removed between the list and the inspect.
                Err(RuntimeError::Engine(_)) => continue,
                Err(e) => return Err(e),
            };
            out.push(Container {
                id,
                pod_key: pod_key_from_labels(&labels),
                pod_uid: labels.get(LABEL_POD_UID).cloned().unwrap_or_default(),
                state,
            });
        }
        Ok(out)
    }

    async fn stop_and_remove(&self, id: &str, grace: Duration) -> Result<(), RuntimeError> {
        let stop = StopContainerOptions {
            t: Some(grace.as_secs() as i32),
            ..Default::default()
        };
        match self.docker.stop_container(id, Some(stop)).await {
            Ok(()) => {}
            Err(e) if is_status(&e, 304) || is_status(&e, 404) => {}
            Err(e) => tracing::warn!(container = id, error = %e, "stop failed; removing by force"),
        }
        let rm = RemoveContainerOptions {
            force: true,
            ..Default::default()
        };
        match self.docker.remove_container(id, Some(rm)).await {
            Ok(()) => Ok(()),
            Err(e) if is_status(&e, 404) => Ok(()),
            // Already being removed.
            Err(e) if is_status(&e, 409) => Ok(()),
            Err(e) => Err(engine(e)),
        }
    }

    fn event_stream(&self, node: &str) -> BoxStream<'static, Result<RuntimeEvent, RuntimeError>> {
        let mut filters = Self::node_filters(node, None);
        filters.insert("type".into(), vec!["container".into()]);
        filters.insert(
            "event".into(),
            ["start", "die", "destroy", "oom", "stop", "kill"]
                .map(String::from)
                .to_vec(),
        );
        let options = EventsOptions {
            filters: Some(filters),
            ..Default::default()
        };
        self.docker
            .events(Some(options))
            .map(|item| match item {
                Ok(msg) => {
                    let attrs = msg.actor.and_then(|a| a.attributes).unwrap_or_default();
                    Ok(RuntimeEvent {
                        pod_key: pod_key_from_labels(&attrs),
                        action: msg.action.unwrap_or_default(),
                    })
                }
                Err(e) => Err(engine(e)),
            })
            .boxed()
    }
}
