//! What the kubelet needs from a container engine: the [`ContainerRuntime`] trait, the
//! container states it reports and its errors. Implemented by `docker` (the real engine,
//! through bollard) and `fake` (hollow nodes for scale tests). Every container a runtime
//! creates carries the labels below; a runtime only ever lists or touches containers that
//! carry `miniku=1` and its node's name.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::stream::BoxStream;

use crate::api::{namespace_or_default, Pod};

/// The key (`namespace/name`) of the pod a container with these labels belongs to.
pub fn pod_key_from_labels(labels: &HashMap<String, String>) -> String {
    let ns = labels.get(LABEL_NAMESPACE).map_or("", String::as_str);
    let name = labels.get(LABEL_POD).map_or("", String::as_str);
    if name.is_empty() {
        return String::new();
    }
    format!("{}/{name}", namespace_or_default(ns))
}

/// The engine's name for a pod's main container: the pod's name in `default` (as the seed's
/// `docker ps` shows), `<namespace>_<name>` elsewhere. A later container appends
/// `__<its name>`: names and namespaces have no `_`, so no two pods' names can meet.
pub fn container_name(pod: &Pod) -> String {
    match namespace_or_default(&pod.namespace) {
        crate::api::DEFAULT_NAMESPACE => pod.spec.name.clone(),
        ns => format!("{ns}_{}", pod.spec.name),
    }
}

/// The engine's name for the pod's container `container` when it is not the first one.
pub fn later_container_name(pod: &Pod, container: &str) -> String {
    format!("{}__{container}", container_name(pod))
}

pub const LABEL_MARKER: &str = "miniku";
pub const LABEL_POD: &str = "miniku.pod";
pub const LABEL_POD_UID: &str = "miniku.pod-uid";
pub const LABEL_NODE: &str = "miniku.node";
/// The pod's namespace; containers without it (made before namespaces) are `default`'s.
pub const LABEL_NAMESPACE: &str = "miniku.namespace";
/// The name of the pod's container (Kubernetes' `spec.containers[].name`) a container runs.
pub const LABEL_CONTAINER: &str = "miniku.container";
/// On a pod's second and later containers: the id of its first (main) container. They are
/// started after it, removed with it, and a failure of one counts as the pod's failure.
pub const LABEL_MAIN: &str = "miniku.main";

/// The labels of a pod's container.
pub fn labels_for(pod: &Pod, node: &str) -> HashMap<String, String> {
    HashMap::from([
        (LABEL_MARKER.to_string(), "1".to_string()),
        (LABEL_POD.to_string(), pod.spec.name.clone()),
        (
            LABEL_NAMESPACE.to_string(),
            namespace_or_default(&pod.namespace).to_string(),
        ),
        (LABEL_POD_UID.to_string(), pod.uid.clone()),
        (LABEL_NODE.to_string(), node.to_string()),
    ])
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContainerState {
    Running {
        started_at: Option<DateTime<Utc>>,
    },
    /// Created but never started, or exited.
    Exited {
        exit_code: i64,
        finished_at: Option<DateTime<Utc>>,
        oom_killed: bool,
    },
}

/// One of our containers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Container {
    pub id: String,
    /// `namespace/name` of the pod.
    pub pod_key: String,
    pub pod_uid: String,
    pub state: ContainerState,
    /// The container's address on the engine's network (empty when it has none).
    pub ip: String,
}

/// Something happened to one of our containers (start, die, destroy, oom...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeEvent {
    pub pod_key: String,
    pub action: String,
}

/// How a command run in a container ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    pub exit_code: i64,
    /// The start of what it wrote (stdout and stderr), for messages.
    pub output: String,
}

pub use crate::api::logs::LogOptions;

/// A container's output as it is read from the engine.
pub type LogStream = BoxStream<'static, Result<bytes::Bytes, RuntimeError>>;

/// The suffix of the engine name a pod's container keeps once it has been replaced by a
/// restart: its output stays readable (`kubectl logs --previous`) until the next restart
/// replaces it, or the pod goes.
pub const PREVIOUS_SUFFIX: &str = ".previous";

/// What `kubectl exec` asks to run in a container, and which of its streams to attach.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ExecRequest {
    pub command: Vec<String>,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    /// A terminal: output comes as one stream (stdout) and the size can change.
    pub tty: bool,
}

/// Which of the command's streams a chunk of output came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExecStream {
    Stdout,
    Stderr,
}

/// An interactive command running in a container: its output as it comes (ending when the
/// command ends), its input, and the engine's id of it (for resizes and the exit code).
pub struct ExecSession {
    pub id: String,
    pub output: BoxStream<'static, Result<(ExecStream, bytes::Bytes), RuntimeError>>,
    pub input: std::pin::Pin<Box<dyn tokio::io::AsyncWrite + Send>>,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum RuntimeError {
    #[error("the container engine is not reachable: {0}")]
    EngineUnreachable(String),
    #[error("cannot pull image `{image}`: {message}")]
    ImagePull { image: String, message: String },
    #[error("container engine: {0}")]
    Engine(String),
    /// The runtime cannot do this at all (the fake one runs no processes).
    #[error("{0}")]
    Unsupported(String),
}

/// A container engine, as the kubelet uses it.
pub trait ContainerRuntime: Clone + Send + Sync + 'static {
    /// Checks the engine answers.
    fn ping(&self) -> impl Future<Output = Result<(), RuntimeError>> + Send;
    /// The engine and its version as Kubernetes reports it (`docker://28.2.2`).
    fn version(&self) -> impl Future<Output = Result<String, RuntimeError>> + Send;
    /// Whether `image` is there locally (no pull needed).
    fn has_image(&self, image: &str) -> impl Future<Output = Result<bool, RuntimeError>> + Send;
    /// Makes `image` available locally, pulling it if it is missing.
    fn ensure_image(&self, image: &str) -> impl Future<Output = Result<(), RuntimeError>> + Send;
    /// Creates and starts the pod's containers, its main (first) container first, named
    /// after the pod; returns the main container's id.
    fn start(
        &self,
        pod: &Pod,
        node: &str,
    ) -> impl Future<Output = Result<String, RuntimeError>> + Send;
    /// The main container of every pod on this node (running or not). A main container
    /// whose pod's later containers are not all running is reported as exited.
    fn list(&self, node: &str)
        -> impl Future<Output = Result<Vec<Container>, RuntimeError>> + Send;
    /// The main containers of one pod on this node (normally none or one).
    fn find(
        &self,
        node: &str,
        pod: &str,
    ) -> impl Future<Output = Result<Vec<Container>, RuntimeError>> + Send;
    /// Stops (SIGTERM, then SIGKILL after `grace`) and removes a pod's main container and
    /// the containers started with it.
    fn remove(
        &self,
        id: &str,
        grace: Duration,
    ) -> impl Future<Output = Result<(), RuntimeError>> + Send;
    /// Changes to this node's containers, as they happen.
    fn events(&self, node: &str) -> BoxStream<'static, Result<RuntimeEvent, RuntimeError>>;
    /// Runs `command` in the running engine container `container` (an id or an engine
    /// name) through the engine's exec API, and waits for it to end (the caller bounds the
    /// wait).
    fn exec(
        &self,
        container: &str,
        command: &[String],
    ) -> impl Future<Output = Result<ExecOutput, RuntimeError>> + Send;
    /// The output of the pod's container `container` (a name in the pod's spec): of the
    /// current one, or with `options.previous` of the last one that ended (the current one
    /// if it has exited, else the one a restart replaced). None when there is no such
    /// container (yet).
    fn logs(
        &self,
        node: &str,
        pod: &Pod,
        container: &str,
        options: &LogOptions,
    ) -> impl Future<Output = Result<Option<LogStream>, RuntimeError>> + Send;
    /// Starts `request.command` in the running container `container` (a name in the pod's
    /// spec) of `pod`, attached as asked. None when that container is not running.
    fn exec_session(
        &self,
        node: &str,
        pod: &Pod,
        container: &str,
        request: &ExecRequest,
    ) -> impl Future<Output = Result<Option<ExecSession>, RuntimeError>> + Send {
        let _ = (node, pod, container, request);
        async {
            Err(RuntimeError::Unsupported(
                "this node's runtime runs no processes: exec needs --runtime docker".into(),
            ))
        }
    }
    /// Resizes the terminal of the exec session `id`.
    fn exec_resize(
        &self,
        id: &str,
        width: u16,
        height: u16,
    ) -> impl Future<Output = Result<(), RuntimeError>> + Send {
        let _ = (id, width, height);
        async { Ok(()) }
    }
    /// The exit code of the exec session `id`, once its command has ended (None before).
    fn exec_exit_code(
        &self,
        id: &str,
    ) -> impl Future<Output = Result<Option<i64>, RuntimeError>> + Send {
        let _ = id;
        async { Ok(None) }
    }
    /// Replaces the pod's previous containers with the exited main container `id` and those
    /// started with it, before a restart starts new ones: what they wrote stays readable.
    /// By default they are removed.
    fn retire(&self, id: &str) -> impl Future<Output = Result<(), RuntimeError>> + Send {
        self.remove(id, Duration::ZERO)
    }
    /// Stops (SIGTERM, then SIGKILL after `grace`) a pod's main container and the containers
    /// started with it, and keeps them for [`ContainerRuntime::retire`] (a restart). By
    /// default they are removed.
    fn stop(
        &self,
        id: &str,
        grace: Duration,
    ) -> impl Future<Output = Result<(), RuntimeError>> + Send {
        self.remove(id, grace)
    }
    /// Removes the previous containers [`ContainerRuntime::retire`] kept for pod `pod` (a
    /// key) on this node, once the pod is gone or done.
    fn remove_retired(
        &self,
        _node: &str,
        _pod: &str,
    ) -> impl Future<Output = Result<(), RuntimeError>> + Send {
        async { Ok(()) }
    }
    /// Whether containers have real addresses that HTTP and TCP probes can reach. The fake
    /// runtime's do not: its probes all succeed.
    fn has_network(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_names_of_different_pods_never_meet() {
        let pod = |ns: &str, name: &str| {
            let mut p = Pod {
                namespace: ns.into(),
                ..Default::default()
            };
            p.spec.name = name.into();
            p
        };
        // Pod `a` of `default` with a second container `b`, and pod `b` of namespace `a`.
        let second_container = format!("{}__b", container_name(&pod("default", "a")));
        let other_pod = container_name(&pod("a", "b"));
        assert_eq!(other_pod, "a_b");
        assert_ne!(second_container, other_pod);
        assert_eq!(container_name(&pod("default", "web-1")), "web-1");
    }
}
