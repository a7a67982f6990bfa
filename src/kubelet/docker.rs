//! The Docker runtime, through bollard. Connects to the local engine (`DOCKER_HOST` or the
//! default socket) and negotiates the API version, so older engines (20.10 speaks API 1.41)
//! work. Containers are named after their pod and carry the kubelet's labels; nothing here
//! touches a container without `miniku=1` and this node's label.
//!
//! A pod with several containers runs as several Docker containers: its first (main)
//! container, then the others (`<main>__<container>`), each labelled with the main
//! container's id. The kubelet sees
//! only main containers: a pod counts as running while all of its containers run, the others
//! are removed with the main one, and one that stops makes the pod's containers restart
//! together.
//!
//! A restart keeps the containers it replaces, renamed `<name>.previous` (one generation:
//! the next restart removes them), so that their output stays readable (`kubectl logs
//! --previous`). Nothing but [`ContainerRuntime::logs`] and the removal of their pod sees
//! them: listing skips them.

use std::collections::HashMap;
use std::time::Duration;

use bollard::container::LogOutput;
use bollard::errors::Error as DockerError;
use bollard::exec::{CreateExecOptions, ResizeExecOptions, StartExecOptions, StartExecResults};
use bollard::models::ContainerSummary;
use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{
    CreateContainerOptions, CreateImageOptions, EventsOptions, ListContainersOptions, LogsOptions,
    RemoveContainerOptions, RenameContainerOptions, StopContainerOptions,
};
use bollard::Docker;
use chrono::{DateTime, Utc};
use futures::stream::BoxStream;
use futures::StreamExt;

use k8s_openapi::api::core::v1::Container as KubeContainer;

use super::runtime::{
    container_name, labels_for, pod_key_from_labels, Container, ContainerRuntime, ContainerState,
    ExecOutput, ExecRequest, ExecSession, ExecStream, LogOptions, LogStream, RuntimeError,
    RuntimeEvent, LABEL_CONTAINER, LABEL_MAIN, LABEL_MARKER, LABEL_NODE, LABEL_POD, LABEL_POD_UID,
    PREVIOUS_SUFFIX,
};
use crate::api::Pod;

#[derive(Clone)]
pub struct DockerRuntime {
    docker: Docker,
    /// The engine network the pods' containers join (`--pod-network`); `None`: the
    /// engine's default (the `bridge` network).
    network: Option<String>,
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

/// Whether a listed container is a pod's previous one (kept by a restart for its output).
fn is_retired(s: &ContainerSummary) -> bool {
    s.names
        .iter()
        .flatten()
        .any(|n| n.ends_with(PREVIOUS_SUFFIX))
}

fn parse_time(s: Option<&str>) -> Option<DateTime<Utc>> {
    let t = DateTime::parse_from_rfc3339(s?).ok()?.with_timezone(&Utc);
    // Docker reports "0001-01-01T00:00:00Z" for never.
    (t.timestamp() > 0).then_some(t)
}

/// A container's address: on the pods' network `network` when there is one (a container
/// may be on several), else the first address it has on any network; empty when it has
/// none (not started, or `--network none`).
fn pod_ip(
    networks: Option<&HashMap<String, bollard::models::EndpointSettings>>,
    network: Option<&str>,
) -> String {
    let Some(networks) = networks else {
        return String::new();
    };
    let address =
        |e: &bollard::models::EndpointSettings| e.ip_address.clone().filter(|ip| !ip.is_empty());
    match network {
        Some(name) => networks.get(name).and_then(address),
        None => {
            // The default network first, then any, in a stable order.
            let mut all: Vec<_> = networks.iter().collect();
            all.sort_by_key(|(n, _)| (n.as_str() != "bridge", n.as_str()));
            all.into_iter().find_map(|(_, e)| address(e))
        }
    }
    .unwrap_or_default()
}

/// Whether a listed container is running.
fn running(s: &ContainerSummary) -> bool {
    matches!(
        s.state,
        Some(bollard::models::ContainerSummaryStateEnum::RUNNING)
    )
}

impl DockerRuntime {
    /// Every container (running or not) the label filters match.
    async fn list_all(
        &self,
        filters: HashMap<String, Vec<String>>,
    ) -> Result<Vec<ContainerSummary>, RuntimeError> {
        let options = ListContainersOptions {
            all: true,
            filters: Some(filters),
            ..Default::default()
        };
        self.docker
            .list_containers(Some(options))
            .await
            .map_err(engine)
    }

    /// The engine containers (current and previous) of the pod's container `container` on
    /// `node`, newest first.
    async fn containers_of(
        &self,
        node: &str,
        pod: &Pod,
        container: &str,
    ) -> Result<Vec<ContainerSummary>, RuntimeError> {
        let mut filters = Self::node_filters(node, Some(&pod.key()));
        if let Some(labels) = filters.get_mut("label") {
            labels.push(format!("{LABEL_POD_UID}={}", pod.uid));
            labels.push(format!("{LABEL_CONTAINER}={container}"));
        }
        let mut found = self.list_all(filters).await?;
        found.retain(|s| {
            s.labels
                .as_ref()
                .is_some_and(|l| pod_key_from_labels(l) == pod.key())
        });
        found.sort_by_key(|s| std::cmp::Reverse(s.created.unwrap_or(0)));
        Ok(found)
    }

    /// Connects to the local engine and agrees on an API version. The pods' containers
    /// join `network` (an engine network: [`DockerRuntime::check_network`] says whether it
    /// exists), or the engine's default one.
    pub async fn connect(network: Option<String>) -> Result<Self, RuntimeError> {
        let docker = Docker::connect_with_local_defaults().map_err(engine)?;
        let docker = docker.negotiate_version().await.map_err(engine)?;
        Ok(DockerRuntime { docker, network })
    }

    /// Fails when the pods' network is named and the engine has no such network.
    pub async fn check_network(&self) -> Result<(), RuntimeError> {
        let Some(name) = &self.network else {
            return Ok(());
        };
        let options = None::<bollard::query_parameters::InspectNetworkOptions>;
        match self.docker.inspect_network(name, options).await {
            Ok(_) => Ok(()),
            Err(e) if is_status(&e, 404) => Err(RuntimeError::Engine(format!(
                "the engine has no network `{name}` (--pod-network)"
            ))),
            Err(e) => Err(engine(e)),
        }
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

    /// The container's state and its address on the pods' network.
    async fn state_of(&self, id: &str) -> Result<(ContainerState, String), RuntimeError> {
        let info = self
            .docker
            .inspect_container(id, None)
            .await
            .map_err(engine)?;
        let ip = pod_ip(
            info.network_settings
                .as_ref()
                .and_then(|n| n.networks.as_ref()),
            self.network.as_deref(),
        );
        let st = info.state.unwrap_or_default();
        let state = if st.running.unwrap_or(false) {
            ContainerState::Running {
                started_at: parse_time(st.started_at.as_deref()),
            }
        } else {
            ContainerState::Exited {
                exit_code: st.exit_code.unwrap_or(0),
                finished_at: parse_time(st.finished_at.as_deref()),
                oom_killed: st.oom_killed.unwrap_or(false),
            }
        };
        Ok((state, ip))
    }

    /// Creates the engine container `name` for the pod's container `c` (Kubernetes'
    /// `command` is the entrypoint, `args` the command); `main` is the id of the pod's main
    /// container when `c` is a later one.
    async fn create(
        &self,
        pod: &Pod,
        node: &str,
        c: &KubeContainer,
        name: &str,
        main: Option<&str>,
    ) -> Result<String, DockerError> {
        let mut labels = labels_for(pod, node);
        labels.insert(LABEL_CONTAINER.to_string(), c.name.clone());
        if let Some(m) = main {
            labels.insert(LABEL_MAIN.to_string(), m.to_string());
        }
        let requests = c.resources.as_ref().and_then(|r| r.requests.as_ref());
        let amount = |k: &str, parse: fn(&str) -> Result<u64, _>| {
            requests
                .and_then(|r| r.get(k))
                .and_then(|q| parse(&q.0).ok())
                .filter(|v| *v > 0)
        };
        let cpu = amount("cpu", crate::api::quantity::parse_cpu_millis);
        let memory = amount("memory", crate::api::quantity::parse_bytes);
        let env: Vec<String> = c
            .env
            .iter()
            .flatten()
            .filter(|e| e.value_from.is_none())
            .map(|e| format!("{}={}", e.name, e.value.as_deref().unwrap_or_default()))
            .collect();
        let body = ContainerCreateBody {
            image: c.image.clone(),
            entrypoint: c.command.clone().filter(|v| !v.is_empty()),
            cmd: c.args.clone().filter(|v| !v.is_empty()),
            env: Some(env),
            labels: Some(labels),
            host_config: Some(HostConfig {
                // Only what the pod spec says: no privileges, mounts or host network.
                privileged: Some(false),
                network_mode: self.network.clone(),
                nano_cpus: cpu.map(|m| m as i64 * 1_000_000),
                memory: memory.map(|b| b as i64),
                ..Default::default()
            }),
            ..Default::default()
        };
        let options = CreateContainerOptions {
            name: Some(name.to_string()),
            ..Default::default()
        };
        Ok(self.docker.create_container(Some(options), body).await?.id)
    }

    /// Creates and starts one engine container; a leftover of ours holding the name is
    /// removed first.
    async fn create_and_start(
        &self,
        pod: &Pod,
        node: &str,
        c: &KubeContainer,
        name: &str,
        main: Option<&str>,
    ) -> Result<String, RuntimeError> {
        let id = match self.create(pod, node, c, name, main).await {
            Ok(id) => id,
            Err(e) if is_status(&e, 409) => {
                let stale = self
                    .docker
                    .inspect_container(name, None)
                    .await
                    .map_err(engine)?;
                let labels = stale.config.and_then(|c| c.labels).unwrap_or_default();
                // Ours: this node's, and this very pod's (a leftover of an earlier attempt).
                if labels.get(LABEL_NODE).map(String::as_str) != Some(node)
                    || pod_key_from_labels(&labels) != pod.key()
                {
                    return Err(RuntimeError::Engine(format!(
                        "a container named `{name}` exists and is not this pod's"
                    )));
                }
                self.stop_and_remove(
                    &stale.id.unwrap_or_else(|| name.to_string()),
                    Duration::from_secs(1),
                )
                .await?;
                self.create(pod, node, c, name, main)
                    .await
                    .map_err(engine)?
            }
            Err(e) => return Err(engine(e)),
        };
        if let Err(e) = self.docker.start_container(&id, None).await {
            let _ = self.stop_and_remove(&id, Duration::ZERO).await;
            return Err(engine(e));
        }
        Ok(id)
    }

    /// The ids of the containers started with main container `main`.
    async fn later_containers(&self, main: &str) -> Result<Vec<String>, RuntimeError> {
        let found = self
            .list_all(HashMap::from([(
                "label".to_string(),
                vec![format!("{LABEL_MARKER}=1"), format!("{LABEL_MAIN}={main}")],
            )]))
            .await?;
        Ok(found.into_iter().filter_map(|s| s.id).collect())
    }
}

impl ContainerRuntime for DockerRuntime {
    async fn version(&self) -> Result<String, RuntimeError> {
        let v = self.docker.version().await.map_err(engine)?;
        Ok(format!("docker://{}", v.version.unwrap_or_default()))
    }

    async fn ping(&self) -> Result<(), RuntimeError> {
        self.docker.ping().await.map(|_| ()).map_err(engine)
    }

    async fn has_image(&self, image: &str) -> Result<bool, RuntimeError> {
        match self.docker.inspect_image(image).await {
            Ok(_) => Ok(true),
            Err(e) if is_status(&e, 404) => Ok(false),
            Err(e) => Err(engine(e)),
        }
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
        let containers = crate::api::kube::pod_into_kube(pod)
            .spec
            .map(|s| s.containers)
            .unwrap_or_default();
        let Some((first, later)) = containers.split_first() else {
            return Err(RuntimeError::Engine("the pod has no containers".into()));
        };
        let name = container_name(pod);
        let main = self.create_and_start(pod, node, first, &name, None).await?;
        for c in later {
            let started = self
                .create_and_start(
                    pod,
                    node,
                    c,
                    &super::runtime::later_container_name(pod, &c.name),
                    Some(&main),
                )
                .await;
            if let Err(e) = started {
                let _ = self.remove(&main, Duration::ZERO).await;
                return Err(e);
            }
        }
        Ok(main)
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
        // All at once, so that a pod's grace period is waited once, not once per container.
        let mut all = self.later_containers(id).await?;
        all.extend(self.retired_of(id).await?);
        all.push(id.to_string());
        let stops = all.iter().map(|c| self.stop_and_remove(c, grace));
        futures::future::join_all(stops)
            .await
            .into_iter()
            .collect::<Result<Vec<()>, _>>()
            .map(|_| ())
    }

    fn events(&self, node: &str) -> BoxStream<'static, Result<RuntimeEvent, RuntimeError>> {
        self.event_stream(node)
    }

    async fn stop(&self, id: &str, grace: Duration) -> Result<(), RuntimeError> {
        let mut all = self.later_containers(id).await?;
        all.push(id.to_string());
        let stops = all.iter().map(|c| self.stop_only(c, grace));
        futures::future::join_all(stops).await;
        Ok(())
    }

    async fn retire(&self, id: &str) -> Result<(), RuntimeError> {
        let mut all = self.later_containers(id).await?;
        all.push(id.to_string());
        for c in &all {
            if let Err(e) = self.retire_one(c).await {
                tracing::warn!(container = %c, error = %e, "cannot keep the container as the previous one; removing it");
                return self.remove(id, Duration::ZERO).await;
            }
        }
        Ok(())
    }

    async fn remove_retired(&self, node: &str, pod: &str) -> Result<(), RuntimeError> {
        let found = self.list_all(Self::node_filters(node, Some(pod))).await?;
        for s in found.iter().filter(|s| is_retired(s)) {
            let ours = s
                .labels
                .as_ref()
                .is_some_and(|l| pod_key_from_labels(l) == pod);
            if let (true, Some(id)) = (ours, &s.id) {
                self.stop_and_remove(id, Duration::ZERO).await?;
            }
        }
        Ok(())
    }

    async fn logs(
        &self,
        node: &str,
        pod: &Pod,
        container: &str,
        options: &LogOptions,
    ) -> Result<Option<LogStream>, RuntimeError> {
        let found = self.containers_of(node, pod, container).await?;
        let current = found.iter().find(|s| !is_retired(s));
        let retired = found.iter().find(|s| is_retired(s));
        let chosen = match (options.previous, current) {
            (false, c) => c,
            // The current container has ended: it is the last one that ran.
            (true, Some(c)) if !running(c) => Some(c),
            (true, _) => retired,
        };
        let Some(id) = chosen.and_then(|s| s.id.clone()) else {
            return Ok(None);
        };
        let logs = LogsOptions {
            follow: options.follow,
            stdout: true,
            stderr: true,
            since: options
                .since
                .map_or(0, |t| t.timestamp().clamp(0, i64::from(i32::MAX)) as i32),
            until: 0,
            timestamps: options.timestamps,
            tail: options
                .tail_lines
                .map_or_else(|| "all".to_string(), |n| n.to_string()),
        };
        Ok(Some(
            self.docker
                .logs(&id, Some(logs))
                .map(|chunk| chunk.map(|c| c.into_bytes()).map_err(engine))
                .boxed(),
        ))
    }

    async fn exec_session(
        &self,
        node: &str,
        pod: &Pod,
        container: &str,
        request: &ExecRequest,
    ) -> Result<Option<ExecSession>, RuntimeError> {
        let found = self.containers_of(node, pod, container).await?;
        let Some(id) = found
            .iter()
            .find(|s| !is_retired(s) && running(s))
            .and_then(|s| s.id.clone())
        else {
            return Ok(None);
        };
        let config = CreateExecOptions {
            cmd: Some(request.command.clone()),
            attach_stdin: Some(request.stdin),
            attach_stdout: Some(request.stdout),
            attach_stderr: Some(request.stderr),
            tty: Some(request.tty),
            ..Default::default()
        };
        let exec = self
            .docker
            .create_exec(&id, config)
            .await
            .map_err(engine)?
            .id;
        let started = self
            .docker
            .start_exec(
                &exec,
                Some(StartExecOptions {
                    tty: request.tty,
                    ..Default::default()
                }),
            )
            .await
            .map_err(engine)?;
        let StartExecResults::Attached { output, input } = started else {
            return Err(RuntimeError::Engine(
                "the engine started the command detached".into(),
            ));
        };
        let output = output
            .filter_map(|chunk| async move {
                match chunk {
                    Ok(LogOutput::StdErr { message }) => Some(Ok((ExecStream::Stderr, message))),
                    Ok(LogOutput::StdOut { message } | LogOutput::Console { message }) => {
                        Some(Ok((ExecStream::Stdout, message)))
                    }
                    Ok(LogOutput::StdIn { .. }) => None,
                    Err(e) => Some(Err(engine(e))),
                }
            })
            .boxed();
        Ok(Some(ExecSession {
            id: exec,
            output,
            input,
        }))
    }

    async fn exec_resize(&self, id: &str, width: u16, height: u16) -> Result<(), RuntimeError> {
        let options = ResizeExecOptions { width, height };
        self.docker.resize_exec(id, options).await.map_err(engine)
    }

    async fn exec_exit_code(&self, id: &str) -> Result<Option<i64>, RuntimeError> {
        let inspect = self.docker.inspect_exec(id).await.map_err(engine)?;
        Ok(match inspect.running {
            Some(true) => None,
            _ => inspect.exit_code,
        })
    }

    async fn exec(&self, container: &str, command: &[String]) -> Result<ExecOutput, RuntimeError> {
        let config = CreateExecOptions {
            cmd: Some(command.to_vec()),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            ..Default::default()
        };
        let exec = self
            .docker
            .create_exec(container, config)
            .await
            .map_err(engine)?
            .id;
        let mut output = String::new();
        if let StartExecResults::Attached {
            output: mut out, ..
        } = self.docker.start_exec(&exec, None).await.map_err(engine)?
        {
            // Read to the end (the command's end), keeping only the start for messages.
            while let Some(chunk) = out.next().await {
                let chunk = chunk.map_err(engine)?;
                if output.len() < EXEC_OUTPUT_KEPT {
                    output.push_str(&String::from_utf8_lossy(&chunk.into_bytes()));
                }
            }
        }
        output.truncate(
            (0..=EXEC_OUTPUT_KEPT.min(output.len()))
                .rev()
                .find(|i| output.is_char_boundary(*i))
                .unwrap_or(0),
        );
        let inspect = self.docker.inspect_exec(&exec).await.map_err(engine)?;
        Ok(ExecOutput {
            // No exit code: it did not run to its end, which no probe may count as success.
            exit_code: inspect.exit_code.unwrap_or(-1),
            output: output.trim_end().to_string(),
        })
    }
}

/// How much of an exec probe's output a message keeps.
const EXEC_OUTPUT_KEPT: usize = 1024;

impl DockerRuntime {
    async fn list_filtered(
        &self,
        node: &str,
        pod: Option<&str>,
    ) -> Result<Vec<Container>, RuntimeError> {
        let mut summaries = self.list_all(Self::node_filters(node, pod)).await?;
        // A pod's previous containers are kept for their output only.
        summaries.retain(|s| !is_retired(s));
        let mut out = Vec::new();
        let mains: std::collections::HashSet<String> = summaries
            .iter()
            .filter(|s| {
                !s.labels
                    .as_ref()
                    .is_some_and(|l| l.contains_key(LABEL_MAIN))
            })
            .filter_map(|s| s.id.clone())
            .collect();
        // Later containers by their main container's id; those whose main is gone are
        // leftovers and are removed.
        let mut later: HashMap<String, Vec<String>> = HashMap::new();
        for s in &summaries {
            let (Some(id), Some(main)) = (
                s.id.as_ref(),
                s.labels.as_ref().and_then(|l| l.get(LABEL_MAIN)),
            ) else {
                continue;
            };
            if mains.contains(main) {
                later.entry(main.clone()).or_default().push(id.clone());
            } else if pod.is_none() {
                let _ = self.stop_and_remove(id, Duration::ZERO).await;
            }
        }
        for s in summaries {
            let Some(id) = s.id else { continue };
            let labels = s.labels.unwrap_or_default();
            if labels.contains_key(LABEL_MAIN) {
                continue;
            }
            let (mut state, ip) = match self.state_of(&id).await {
                Ok(st) => st,
                // Removed between the list and the inspect.
                Err(RuntimeError::Engine(_)) => continue,
                Err(e) => return Err(e),
            };
            if matches!(state, ContainerState::Running { .. }) {
                // The pod runs only while all of its containers do.
                for other in later.get(&id).into_iter().flatten() {
                    match self.state_of(other).await {
                        Ok((s @ ContainerState::Exited { .. }, _)) => {
                            state = s;
                            break;
                        }
                        Ok(_) | Err(RuntimeError::Engine(_)) => {}
                        Err(e) => return Err(e),
                    }
                }
            }
            out.push(Container {
                id,
                pod_key: pod_key_from_labels(&labels),
                pod_uid: labels.get(LABEL_POD_UID).cloned().unwrap_or_default(),
                state,
                ip,
            });
        }
        Ok(out)
    }

    /// The previous containers (see [`ContainerRuntime::retire`]) of the pod whose container
    /// `id` is: those of the same pod uid on the same node.
    async fn retired_of(&self, id: &str) -> Result<Vec<String>, RuntimeError> {
        let info = match self.docker.inspect_container(id, None).await {
            Ok(info) => info,
            Err(e) if is_status(&e, 404) => return Ok(Vec::new()),
            Err(e) => return Err(engine(e)),
        };
        let labels = info.config.and_then(|c| c.labels).unwrap_or_default();
        let (Some(uid), Some(node)) = (labels.get(LABEL_POD_UID), labels.get(LABEL_NODE)) else {
            return Ok(Vec::new());
        };
        let found = self
            .list_all(HashMap::from([(
                "label".to_string(),
                vec![
                    format!("{LABEL_MARKER}=1"),
                    format!("{LABEL_NODE}={node}"),
                    format!("{LABEL_POD_UID}={uid}"),
                ],
            )]))
            .await?;
        Ok(found
            .into_iter()
            .filter(is_retired)
            .filter_map(|s| s.id)
            .filter(|c| c != id)
            .collect())
    }

    /// Renames the exited container `id` to `<name>.previous`, removing the one that held
    /// that name (the pod's earlier previous container).
    async fn retire_one(&self, id: &str) -> Result<(), RuntimeError> {
        let info = self
            .docker
            .inspect_container(id, None)
            .await
            .map_err(engine)?;
        let name = info.name.unwrap_or_default();
        let name = name.trim_start_matches('/');
        if name.is_empty() || name.ends_with(PREVIOUS_SUFFIX) {
            return Ok(());
        }
        let labels = info.config.and_then(|c| c.labels).unwrap_or_default();
        let target = format!("{name}{PREVIOUS_SUFFIX}");
        match self.docker.inspect_container(&target, None).await {
            Ok(old) => {
                let old_labels = old.config.and_then(|c| c.labels).unwrap_or_default();
                let same_pod = pod_key_from_labels(&old_labels) == pod_key_from_labels(&labels)
                    && old_labels.get(LABEL_NODE) == labels.get(LABEL_NODE);
                if !same_pod {
                    return Err(RuntimeError::Engine(format!(
                        "a container named `{target}` exists and is not this pod's"
                    )));
                }
                self.stop_and_remove(&old.id.unwrap_or(target.clone()), Duration::ZERO)
                    .await?;
            }
            Err(e) if is_status(&e, 404) => {}
            Err(e) => return Err(engine(e)),
        }
        self.docker
            .rename_container(id, RenameContainerOptions { name: target })
            .await
            .map_err(engine)
    }

    /// Stops a container (SIGTERM, then SIGKILL after `grace`) and keeps it.
    async fn stop_only(&self, id: &str, grace: Duration) {
        let stop = StopContainerOptions {
            t: Some(grace.as_secs() as i32),
            ..Default::default()
        };
        match self.docker.stop_container(id, Some(stop)).await {
            Ok(()) => {}
            Err(e) if is_status(&e, 304) || is_status(&e, 404) => {}
            Err(e) => tracing::warn!(container = id, error = %e, "stop failed"),
        }
    }

    async fn stop_and_remove(&self, id: &str, grace: Duration) -> Result<(), RuntimeError> {
        // A stop that fails is logged; the removal below forces it.
        self.stop_only(id, grace).await;
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

#[cfg(test)]
mod tests {
    use super::*;
    use bollard::models::EndpointSettings;

    fn on(ip: &str) -> EndpointSettings {
        EndpointSettings {
            ip_address: Some(ip.to_string()),
            ..Default::default()
        }
    }

    #[test]
    fn pod_ip_is_read_from_the_pods_network() {
        let networks = HashMap::from([
            ("bridge".to_string(), on("172.17.0.5")),
            ("miniku-hosts".to_string(), on("172.30.57.130")),
        ]);
        assert_eq!(
            pod_ip(Some(&networks), Some("miniku-hosts")),
            "172.30.57.130"
        );
        // Without --pod-network: the default network's address.
        assert_eq!(pod_ip(Some(&networks), None), "172.17.0.5");
        // Not (or not yet) on the named network: no address, not another network's.
        assert_eq!(pod_ip(Some(&networks), Some("other")), "");
    }

    #[test]
    fn pod_ip_skips_empty_addresses() {
        let networks = HashMap::from([
            ("bridge".to_string(), on("")),
            ("mine".to_string(), on("10.1.2.3")),
        ]);
        assert_eq!(pod_ip(Some(&networks), None), "10.1.2.3");
        assert_eq!(pod_ip(Some(&networks), Some("bridge")), "");
        assert_eq!(pod_ip(None, None), "");
    }
}
