//! The controllers and the scheduler against the store in this process
//! ([`Registry::in_process`]): the real reconcile code, informers and queue over the real
//! state machine and watch hub, without Raft, HTTP or other processes. Each test awaits the
//! state it expects through an informer, never a sleep.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::api::{Node, NodeLease, NodeStatus, Pod, PodPhase, PodTemplate, ReplicaSet, Resources};
use crate::controllers::{NodeLifecycleController, ReplicaSetController};
use crate::registry::Registry;
use crate::runtime::{spawn_owned, Informer, Shutdown};
use crate::scheduler::Scheduler;

const PATIENCE: Duration = Duration::from_secs(10);

fn replicaset(name: &str, desired: u32) -> ReplicaSet {
    ReplicaSet {
        namespace: "default".into(),
        name: name.into(),
        desired_count: desired,
        selector: [("app".to_string(), name.to_string())].into(),
        template: PodTemplate {
            image: "miniku/busybox:latest".into(),
            ..Default::default()
        },
        uid: crate::api::random_hex(16),
        ..Default::default()
    }
}

fn node(name: &str) -> Node {
    Node {
        name: name.into(),
        capacity: Resources {
            cpu: 4000,
            memory: 8 << 30,
        },
        max_pods: 110,
        status: NodeStatus::Ready,
        ..Default::default()
    }
}

fn pods_of(pods: &Informer<Pod>, rs: &str) -> usize {
    let mut n = 0;
    pods.for_each(|p| {
        if p.owner.as_ref().is_some_and(|o| o.name == rs) {
            n += 1;
        }
    });
    n
}

async fn within<F: std::future::Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(PATIENCE, f)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

fn start_replicaset_controller(registry: &Registry) -> crate::runtime::OwnedTask<()> {
    let (rs, pods) = (
        Informer::start(registry.clone()),
        Informer::start(registry.clone()),
    );
    spawn_owned(ReplicaSetController::run(
        registry.clone(),
        rs,
        pods,
        2,
        Shutdown::never(),
    ))
}

#[tokio::test]
async fn a_replicaset_gets_its_pods_and_its_status() {
    let (registry, _store) = Registry::in_process();
    registry.create(&replicaset("web", 3)).await.unwrap();
    let _ctl = start_replicaset_controller(&registry);
    let sets = Informer::<ReplicaSet>::start(registry.clone());
    within(
        "currentCount 3",
        sets.wait_until(|s| s.get("default/web").is_some_and(|r| r.current_count == 3)),
    )
    .await;
    let (pods, _) = registry.list::<Pod>().await.unwrap();
    assert_eq!(pods.len(), 3);
    assert!(pods.iter().all(|p| p.status == PodPhase::Pending));
}

#[tokio::test]
async fn a_lost_create_answer_never_makes_one_pod_too_many() {
    let (registry, store) = Registry::in_process();
    registry.create(&replicaset("web", 1)).await.unwrap();
    let pods = Informer::<Pod>::start(registry.clone());
    pods.wait_synced().await;
    let most = Arc::new(AtomicUsize::new(0));
    let seen = most.clone();
    let watcher = pods.clone();
    let mut changes = pods.subscribe();
    let _count = spawn_owned(async move {
        while changes.recv().await.is_some() {
            seen.fetch_max(pods_of(&watcher, "web"), Ordering::SeqCst);
        }
    });
    // The controller's first pod create lands, but it is told the outcome is unknown, and
    // its pod cache does not see the pod yet when it tries again: the chaos run's case.
    store.hold_events();
    store.lose_next_answers(1);
    let _ctl = start_replicaset_controller(&registry);
    // The ReplicaSet's own create, the lost create, and the controller's next write.
    within("the controller's retry", store.wait_for_writes(3)).await;
    store.release_events();
    let sets = Informer::<ReplicaSet>::start(registry.clone());
    within(
        "currentCount 1",
        sets.wait_until(|s| s.get("default/web").is_some_and(|r| r.current_count == 1)),
    )
    .await;
    assert_eq!(registry.list::<Pod>().await.unwrap().0.len(), 1);
    let most = most.load(Ordering::SeqCst);
    assert_eq!(most, 1, "saw {most} pods of a ReplicaSet of 1");
}

#[tokio::test]
async fn scaling_down_deletes_pods_until_the_count_is_right() {
    let (registry, _store) = Registry::in_process();
    let rs = registry.create(&replicaset("web", 4)).await.unwrap();
    let _ctl = start_replicaset_controller(&registry);
    let pods = Informer::<Pod>::start(registry.clone());
    within("4 pods", pods.wait_until(|p| pods_of(p, "web") == 4)).await;
    registry
        .modify::<ReplicaSet, _>(&rs.key(), |r| {
            r.desired_count = 1;
            true
        })
        .await
        .unwrap();
    within("1 pod", pods.wait_until(|p| pods_of(p, "web") == 1)).await;
}

#[tokio::test]
async fn the_scheduler_spreads_pods_over_ready_nodes_only() {
    let (registry, _store) = Registry::in_process();
    for name in ["a", "b"] {
        registry.create(&node(name)).await.unwrap();
    }
    let mut down = node("c");
    down.status = NodeStatus::NotReady;
    registry.create(&down).await.unwrap();
    let (pods, nodes) = (
        Informer::start(registry.clone()),
        Informer::start(registry.clone()),
    );
    let _sched = spawn_owned(Scheduler::run(
        registry.clone(),
        pods,
        nodes,
        4,
        Shutdown::never(),
    ));
    let rs = replicaset("web", 4);
    for _ in 0..4 {
        registry
            .create(&crate::controllers::replicaset::new_pod(&rs))
            .await
            .unwrap();
    }
    let pods = Informer::<Pod>::start(registry.clone());
    within(
        "4 bound pods",
        pods.wait_until(|p| p.list().iter().all(|p| !p.spec.node_name.is_empty())),
    )
    .await;
    let mut per_node: HashMap<String, usize> = HashMap::new();
    for p in pods.list() {
        *per_node.entry(p.spec.node_name).or_default() += 1;
    }
    assert_eq!(per_node, HashMap::from([("a".into(), 2), ("b".into(), 2)]));
}

#[tokio::test]
async fn a_node_whose_heartbeat_expires_turns_not_ready_and_loses_its_pods() {
    let (registry, store) = Registry::in_process();
    registry.create(&node("n1")).await.unwrap();
    let lease = registry.grant_lease(15).await.unwrap();
    let heartbeat = NodeLease {
        name: "n1".into(),
        lease_id: lease,
        ttl_seconds: 15,
        renew_seconds: 5,
        resource_version: 0,
    };
    registry.put_with_lease(&heartbeat, lease).await.unwrap();
    let mut pod = crate::controllers::replicaset::new_pod(&replicaset("web", 1));
    pod.spec.node_name = "n1".into();
    pod.status = PodPhase::Running;
    let pod = registry.create(&pod).await.unwrap();

    let lifecycle = NodeLifecycleController::new(
        registry.clone(),
        Informer::start(registry.clone()),
        Informer::start(registry.clone()),
        Informer::start(registry.clone()),
        Duration::from_millis(200),
    );
    let _ctl = spawn_owned(lifecycle.run(Shutdown::never()));
    let nodes = Informer::<Node>::start(registry.clone());
    let pods = Informer::<Pod>::start(registry.clone());
    // Alive: nothing happens to the node.
    within("the node listed", nodes.wait_synced()).await;
    assert_eq!(nodes.get("n1").map(|n| n.status), Some(NodeStatus::Ready));

    store.expire_lease(lease).await.unwrap();
    within(
        "the node NotReady",
        nodes.wait_until(|n| {
            n.get("n1")
                .is_some_and(|n| n.status == NodeStatus::NotReady)
        }),
    )
    .await;
    within(
        "the pod NodeLost",
        pods.wait_until(|p| {
            p.get(&pod.key())
                .is_some_and(|p| p.status == PodPhase::Failed && p.reason == "NodeLost")
        }),
    )
    .await;
}

/// Plays the kubelet: every pod that appears is bound and Running (ready) at once.
fn run_every_pod(registry: &Registry) -> crate::runtime::OwnedTask<()> {
    let registry = registry.clone();
    let pods = Informer::<Pod>::start(registry.clone());
    spawn_owned(async move {
        let mut changes = pods.subscribe();
        pods.wait_synced().await;
        loop {
            for p in pods.list() {
                if p.status == PodPhase::Pending {
                    let mut running = p.clone();
                    running.spec.node_name = "n1".into();
                    running.status = PodPhase::Running;
                    // A conflict means it changed: its event brings it round again.
                    let _ = registry.update(&running).await;
                }
            }
            if changes.recv().await.is_none() {
                return;
            }
        }
    })
}

#[tokio::test]
async fn a_rolling_update_stays_within_surge_and_unavailability_at_every_pod_event() {
    use crate::api::kube::KubeDeployment;
    use crate::controllers::DeploymentController;
    let (registry, _store) = Registry::in_process();
    let d: KubeDeployment = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "web", "namespace": "default", "uid": "d-1", "generation": 1},
        "spec": {
            "replicas": 4,
            "selector": {"matchLabels": {"app": "web"}},
            "strategy": {"type": "RollingUpdate",
                         "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 1}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "main", "image": "a"}]},
            },
        },
    }))
    .unwrap();
    registry.create(&d).await.unwrap();
    let (deployments, sets, pods_inf) = (
        Informer::start(registry.clone()),
        Informer::start(registry.clone()),
        Informer::start(registry.clone()),
    );
    let _rs = start_replicaset_controller(&registry);
    let _kubelet = run_every_pod(&registry);
    let _ctl = spawn_owned(DeploymentController::run(
        registry.clone(),
        deployments,
        sets,
        pods_inf,
        2,
        Shutdown::never(),
    ));
    let watched = Informer::<KubeDeployment>::start(registry.clone());
    let done = |image: &'static str| {
        move |i: &Informer<KubeDeployment>| {
            i.get("default/web").is_some_and(|d| {
                let s = d.status.clone().unwrap_or_default();
                let spec = d.spec.clone().unwrap_or_default();
                spec.template
                    .spec
                    .as_ref()
                    .and_then(|p| p.containers[0].image.as_deref())
                    == Some(image)
                    && s.observed_generation == d.metadata.generation
                    && s.updated_replicas == Some(4)
                    && s.available_replicas == Some(4)
                    && s.replicas == Some(4)
            })
        }
    };
    within("the first rollout", watched.wait_until(done("a"))).await;

    // Every pod event from here on: at most 4 + 1 pods, at least 4 - 1 running.
    let pods = Informer::<Pod>::start(registry.clone());
    pods.wait_synced().await;
    let worst = Arc::new(std::sync::Mutex::new((0usize, usize::MAX)));
    let seen = worst.clone();
    let mut changes = pods.subscribe();
    let observed = pods.clone();
    let _check = spawn_owned(async move {
        while changes.recv().await.is_some() {
            let all = observed.list();
            let running = all.iter().filter(|p| p.status == PodPhase::Running).count();
            let mut w = seen.lock().unwrap();
            w.0 = w.0.max(all.len());
            w.1 = w.1.min(running);
        }
    });
    registry
        .modify::<KubeDeployment, _>("default/web", |d| {
            if let Some(c) = d.spec.as_mut().and_then(|s| s.template.spec.as_mut()) {
                c.containers[0].image = Some("b".into());
            }
            d.metadata.generation = Some(2);
            true
        })
        .await
        .unwrap();
    within("the rolling update", watched.wait_until(done("b"))).await;
    let (most, fewest_running) = *worst.lock().unwrap();
    assert!(most <= 5, "{most} pods: more than replicas + maxSurge");
    assert!(
        fewest_running >= 3,
        "{fewest_running} running: fewer than replicas - maxUnavailable"
    );
    // Two ReplicaSets: the new one with 4, the old one with none, revisions 1 and 2.
    let sets = Informer::<ReplicaSet>::start(registry.clone());
    sets.wait_synced().await;
    let mut sizes: Vec<u32> = sets.list().iter().map(|r| r.desired_count).collect();
    sizes.sort();
    assert_eq!(sizes, vec![0, 4]);
    let d = watched.get("default/web").unwrap();
    assert_eq!(
        d.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("deployment.kubernetes.io/revision"))
            .map(String::as_str),
        Some("2")
    );
}
