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
