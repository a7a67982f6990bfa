//! A fake container runtime, after Kubernetes' hollow nodes (kubemark): containers start at
//! once and "run" in memory. For benchmarks and scale tests of the control plane only; the
//! end-to-end tests use Docker. Their logs are lines made up from what the kubelet knows
//! (one when the container started, then, with `follow`, one every
//! [`FAKE_LOG_EVERY`]); a restart keeps no previous container.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use futures::stream::BoxStream;
use futures::StreamExt;
use tokio::sync::broadcast;
use tokio_stream::wrappers::BroadcastStream;

use super::runtime::{
    Container, ContainerRuntime, ContainerState, ExecOutput, LogOptions, LogStream, RuntimeError,
    RuntimeEvent,
};
use crate::api::Pod;

/// How often a followed hollow container "writes" a line.
pub const FAKE_LOG_EVERY: Duration = Duration::from_secs(5);

/// A made-up log line at `t`, as the engine would send it.
fn fake_line(t: chrono::DateTime<Utc>, text: &str, timestamps: bool) -> bytes::Bytes {
    if timestamps {
        let ts = t.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
        bytes::Bytes::from(format!("{ts} {text}\n"))
    } else {
        bytes::Bytes::from(format!("{text}\n"))
    }
}

#[derive(Clone)]
pub struct FakeRuntime {
    containers: Arc<Mutex<HashMap<String, (String, Container)>>>,
    events: broadcast::Sender<(String, RuntimeEvent)>,
    next_id: Arc<Mutex<u64>>,
}

impl Default for FakeRuntime {
    fn default() -> Self {
        Self::new()
    }
}

impl FakeRuntime {
    pub fn new() -> Self {
        let (events, _) = broadcast::channel(4096);
        FakeRuntime {
            containers: Arc::new(Mutex::new(HashMap::new())),
            events,
            next_id: Arc::new(Mutex::new(1)),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (String, Container)>> {
        self.containers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes a pod's container exit with `code` (for tests).
    pub fn exit(&self, pod_key: &str, code: i64) {
        let mut node = None;
        for (n, c) in self.lock().values_mut() {
            if c.pod_key == pod_key {
                c.state = ContainerState::Exited {
                    exit_code: code,
                    finished_at: Some(Utc::now()),
                    oom_killed: false,
                };
                node = Some(n.clone());
            }
        }
        if let Some(n) = node {
            let _ = self.events.send((
                n,
                RuntimeEvent {
                    pod_key: pod_key.to_string(),
                    action: "die".into(),
                },
            ));
        }
    }
}

impl ContainerRuntime for FakeRuntime {
    async fn ping(&self) -> Result<(), RuntimeError> {
        Ok(())
    }

    async fn version(&self) -> Result<String, RuntimeError> {
        Ok(concat!("fake://", env!("CARGO_PKG_VERSION")).to_string())
    }

    async fn has_image(&self, _image: &str) -> Result<bool, RuntimeError> {
        Ok(true)
    }

    async fn ensure_image(&self, _image: &str) -> Result<(), RuntimeError> {
        Ok(())
    }

    async fn start(&self, pod: &Pod, node: &str) -> Result<String, RuntimeError> {
        let id = {
            let mut n = self.next_id.lock().unwrap_or_else(|p| p.into_inner());
            *n += 1;
            format!("fake{:012x}", *n)
        };
        self.lock().insert(
            id.clone(),
            (
                node.to_string(),
                Container {
                    id: id.clone(),
                    pod_key: pod.key(),
                    pod_uid: pod.uid.clone(),
                    state: ContainerState::Running {
                        started_at: Some(Utc::now()),
                    },
                    // A made-up address in a private range, one per container.
                    ip: {
                        let n = u32::from_str_radix(&id[4..], 16).unwrap_or(0);
                        format!("10.88.{}.{}", (n >> 8) & 0xff, n & 0xff)
                    },
                },
            ),
        );
        let _ = self.events.send((
            node.to_string(),
            RuntimeEvent {
                pod_key: pod.key(),
                action: "start".into(),
            },
        ));
        Ok(id)
    }

    async fn list(&self, node: &str) -> Result<Vec<Container>, RuntimeError> {
        Ok(self
            .lock()
            .values()
            .filter(|(n, _)| n == node)
            .map(|(_, c)| c.clone())
            .collect())
    }

    async fn find(&self, node: &str, pod: &str) -> Result<Vec<Container>, RuntimeError> {
        Ok(self
            .lock()
            .values()
            .filter(|(n, c)| n == node && c.pod_key == pod)
            .map(|(_, c)| c.clone())
            .collect())
    }

    async fn remove(&self, id: &str, _grace: Duration) -> Result<(), RuntimeError> {
        if let Some((node, c)) = self.lock().remove(id) {
            let _ = self.events.send((
                node,
                RuntimeEvent {
                    pod_key: c.pod_key,
                    action: "destroy".into(),
                },
            ));
        }
        Ok(())
    }

    /// Every command "succeeds": hollow containers run nothing.
    async fn exec(
        &self,
        _container: &str,
        _command: &[String],
    ) -> Result<ExecOutput, RuntimeError> {
        Ok(ExecOutput {
            exit_code: 0,
            output: String::new(),
        })
    }

    fn has_network(&self) -> bool {
        false
    }

    async fn logs(
        &self,
        node: &str,
        pod: &Pod,
        container: &str,
        options: &LogOptions,
    ) -> Result<Option<LogStream>, RuntimeError> {
        let found = self
            .lock()
            .values()
            .find(|(n, c)| n == node && c.pod_key == pod.key() && c.pod_uid == pod.uid)
            .map(|(_, c)| c.state.clone());
        let (started, running) = match found {
            Some(ContainerState::Running { started_at }) => (started_at, true),
            Some(ContainerState::Exited { finished_at, .. }) => (finished_at, false),
            None => return Ok(None),
        };
        if options.previous && running {
            return Ok(None);
        }
        let started = started.unwrap_or_else(Utc::now);
        let mut lines = vec![(
            started,
            format!(
                "hollow container {container} of pod {} started (made-up line: nothing runs on a hollow node)",
                pod.key()
            ),
        )];
        lines.retain(|(t, _)| options.since.is_none_or(|s| *t >= s));
        if let Some(n) = options.tail_lines {
            let keep = lines.len().saturating_sub(n as usize);
            lines.drain(..keep);
        }
        let timestamps = options.timestamps;
        let first = futures::stream::iter(
            lines
                .into_iter()
                .map(move |(t, text)| Ok(fake_line(t, &text, timestamps))),
        );
        if !(options.follow && running) {
            return Ok(Some(first.boxed()));
        }
        let name = container.to_string();
        let more = futures::stream::unfold(0u64, move |n| {
            let name = name.clone();
            async move {
                tokio::time::sleep(FAKE_LOG_EVERY).await;
                let text = format!("hollow container {name} is still running ({})", n + 1);
                Some((Ok(fake_line(Utc::now(), &text, timestamps)), n + 1))
            }
        });
        Ok(Some(first.chain(more).boxed()))
    }

    fn events(&self, node: &str) -> BoxStream<'static, Result<RuntimeEvent, RuntimeError>> {
        let node = node.to_string();
        BroadcastStream::new(self.events.subscribe())
            .filter_map(move |item| {
                let out = match item {
                    Ok((n, ev)) if n == node => Some(Ok(ev)),
                    Ok(_) => None,
                    Err(e) => Some(Err(RuntimeError::Engine(format!(
                        "fake event stream lagged: {e}"
                    )))),
                };
                futures::future::ready(out)
            })
            .boxed()
    }
}
