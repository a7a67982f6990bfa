#!/usr/bin/env python3
"""Drives Kubernetes' official Python client (the `kubernetes` package from PyPI) against
Miniku's Kubernetes API: create, list, watch with resource versions, patch of the scale
subresource, events (watched, and listed with a field selector), errors, and deletes with
propagation.

    scripts/test-python-client.py http://127.0.0.1:8080

Prints one line per check and a summary; exits 1 if any check failed. The cluster must run
a kubelet (the fake runtime is enough) so that pods get scheduled and run.
"""

import sys
import time

from kubernetes import client, watch
from kubernetes.client.rest import ApiException

API = sys.argv[1]
NAMESPACE = "python-client"
passed = failed = 0


def check(what, ok, detail=""):
    global passed, failed
    if ok:
        passed += 1
        print(f"ok   {what}")
    else:
        failed += 1
        print(f"FAIL {what}: {detail}")


def replicaset(name, replicas):
    labels = {"app": name}
    return client.V1ReplicaSet(
        api_version="apps/v1",
        kind="ReplicaSet",
        metadata=client.V1ObjectMeta(name=name, labels=labels),
        spec=client.V1ReplicaSetSpec(
            replicas=replicas,
            selector=client.V1LabelSelector(match_labels=labels),
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels=labels),
                spec=client.V1PodSpec(
                    containers=[
                        client.V1Container(
                            name="httpd",
                            image="miniku/busybox:latest",
                            command=["httpd", "-f", "-p", "8080"],
                        )
                    ]
                ),
            ),
        ),
    )


def watch_until(list_fn, what, done, timeout=60, **kwargs):
    """Streams events of `list_fn` until `done(events)` holds; returns the events."""
    events = []
    w = watch.Watch()
    deadline = time.monotonic() + timeout
    for ev in w.stream(list_fn, timeout_seconds=timeout, **kwargs):
        events.append(ev)
        if done(events) or time.monotonic() > deadline:
            w.stop()
    check(what, done(events), f"{[(e['type'], e['object'].metadata.name) for e in events]}")
    return events


def wait_gone(apps, name, what):
    """Waits (on a watch) until ReplicaSet `name` is deleted: dependents settle first."""
    listed = apps.list_namespaced_replica_set(NAMESPACE, field_selector=f"metadata.name={name}")
    if not listed.items:
        check(what, True)
        return
    # From the list's version, so a deletion right after the list is not missed.
    watch_until(
        apps.list_namespaced_replica_set,
        what,
        lambda evs: any(e["type"] == "DELETED" for e in evs),
        namespace=NAMESPACE,
        field_selector=f"metadata.name={name}",
        resource_version=listed.metadata.resource_version,
    )


def main():
    config = client.Configuration(host=API)
    api_client = client.ApiClient(config)
    core = client.CoreV1Api(api_client)
    apps = client.AppsV1Api(api_client)

    version = client.VersionApi(api_client).get_code()
    check("version is Kubernetes 1.33", version.minor == "33", version)

    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=NAMESPACE)))
    names = [n.metadata.name for n in core.list_namespace().items]
    check("create_namespace, list_namespace", NAMESPACE in names and "default" in names, names)

    pods = core.list_namespaced_pod(NAMESPACE)
    start = pods.metadata.resource_version
    check("an empty list has a resourceVersion", pods.items == [] and int(start) > 0, pods.metadata)

    created = apps.create_namespaced_replica_set(NAMESPACE, replicaset("web", 2))
    check("create_namespaced_replica_set", created.metadata.uid and created.metadata.resource_version,
          created.metadata)

    # Watch from the list's version: the two pods the controller creates arrive as ADDED.
    events = watch_until(
        core.list_namespaced_pod,
        "watch from a resourceVersion sees the new pods ADDED",
        lambda evs: len({e["object"].metadata.name for e in evs if e["type"] == "ADDED"}) >= 2,
        namespace=NAMESPACE,
        resource_version=start,
        label_selector="app=web",
    )
    last = events[-1]["object"].metadata.resource_version if events else start

    watch_until(
        core.list_namespaced_pod,
        "the pods become Running",
        lambda evs: len({e["object"].metadata.name for e in evs
                         if e["object"].status.phase == "Running"}) >= 2,
        namespace=NAMESPACE,
        label_selector="app=web",
    )

    listed = core.list_namespaced_pod(NAMESPACE, label_selector="app=web")
    owners = {p.metadata.owner_references[0].name for p in listed.items if p.metadata.owner_references}
    check("list with a label selector, owner references", len(listed.items) == 2 and owners == {"web"},
          [p.metadata.name for p in listed.items])

    # Logs, read through the (hollow) kubelet's server: its made-up line.
    first = listed.items[0].metadata.name
    log = core.read_namespaced_pod_log(first, NAMESPACE)
    check("read_namespaced_pod_log: the container's output, through its kubelet",
          f"of pod {NAMESPACE}/{first} started" in log, log)
    log = core.read_namespaced_pod_log(first, NAMESPACE, timestamps=True, tail_lines=1)
    check("read_namespaced_pod_log(timestamps=True, tail_lines=1): one line with its time",
          len(log.splitlines()) == 1 and log[:4].isdigit() and "Z " in log, log)
    try:
        core.read_namespaced_pod_log(first, NAMESPACE, container="nope")
        check("read_namespaced_pod_log of a container the pod lacks is refused", False)
    except ApiException as e:
        check("read_namespaced_pod_log of a container the pod lacks: 400 in Kubernetes' words",
              e.status == 400 and f"container nope is not valid for pod {first}" in e.body, e.body)

    # Events: the scheduler's for each pod (watched), the ReplicaSet controller's (listed
    # with a field selector, as `kubectl describe` asks for them).
    watch_until(
        core.list_namespaced_event,
        "watch events: Scheduled for each pod",
        lambda evs: len({e["object"].involved_object.name for e in evs
                         if e["object"].reason == "Scheduled"}) >= 2,
        namespace=NAMESPACE,
    )
    created_events = core.list_namespaced_event(
        NAMESPACE, field_selector="involvedObject.kind=ReplicaSet,involvedObject.name=web")
    check("list_namespaced_event with a field selector: SuccessfulCreate for each pod",
          sorted(e.message for e in created_events.items if e.reason == "SuccessfulCreate")
          == sorted(f"Created pod: {p.metadata.name}" for p in listed.items)
          and all(e.source.component == "replicaset-controller" for e in created_events.items),
          [(e.reason, e.message) for e in created_events.items])

    scale = apps.patch_namespaced_replica_set_scale("web", NAMESPACE, {"spec": {"replicas": 3}})
    check("patch the scale subresource", scale.spec.replicas == 3, scale)
    read = apps.read_namespaced_replica_set_scale("web", NAMESPACE)
    check("read the scale subresource", read.spec.replicas == 3 and read.status.selector == "app=web", read)
    watch_until(
        core.list_namespaced_pod,
        "the third pod arrives after the scale",
        lambda evs: any(e["type"] == "ADDED" for e in evs),
        namespace=NAMESPACE,
        resource_version=last,
        label_selector="app=web",
    )

    try:
        apps.read_namespaced_replica_set("nope", NAMESPACE)
        check("a missing ReplicaSet is 404 NotFound", False, "no error")
    except ApiException as e:
        check("a missing ReplicaSet is 404 NotFound", e.status == 404 and '"reason":"NotFound"' in e.body,
              e.body)
    try:
        apps.create_namespaced_replica_set(NAMESPACE, replicaset("web", 1))
        check("a second create is 409 AlreadyExists", False, "no error")
    except ApiException as e:
        check("a second create is 409 AlreadyExists", e.status == 409 and "AlreadyExists" in e.body, e.body)
    try:
        apps.create_namespaced_replica_set(NAMESPACE, replicaset("bad", -1))
        check("a negative replica count is 422 Invalid", False, "no error")
    except ApiException as e:
        check("a negative replica count is 422 Invalid", e.status == 422 and "spec.replicas" in e.body, e.body)

    rs = apps.read_namespaced_replica_set("web", NAMESPACE)
    apps.delete_namespaced_replica_set(
        "web", NAMESPACE, body=client.V1DeleteOptions(propagation_policy="Orphan"))
    wait_gone(apps, "web", "the orphaning delete completes")
    left = core.list_namespaced_pod(NAMESPACE, label_selector="app=web").items
    check("delete with propagationPolicy=Orphan leaves the pods without an owner",
          len(left) == 3 and all(not p.metadata.owner_references for p in left),
          [(p.metadata.name, p.metadata.owner_references) for p in left])
    check("the ReplicaSet was gone from the list",
          all(r.metadata.uid != rs.metadata.uid for r in apps.list_namespaced_replica_set(NAMESPACE).items))

    core.delete_collection_namespaced_pod(NAMESPACE, label_selector="app=web")
    apps.create_namespaced_replica_set(NAMESPACE, replicaset("fg", 2))
    watch_until(
        core.list_namespaced_pod,
        "a new ReplicaSet's pods arrive",
        lambda evs: len({e["object"].metadata.name for e in evs if e["type"] == "ADDED"}) >= 2,
        namespace=NAMESPACE,
        label_selector="app=fg",
    )
    apps.delete_namespaced_replica_set(
        "fg", NAMESPACE, body=client.V1DeleteOptions(propagation_policy="Foreground"))
    wait_gone(apps, "fg", "the foreground delete completes")
    check("delete with propagationPolicy=Foreground takes the pods first",
          core.list_namespaced_pod(NAMESPACE, label_selector="app=fg").items == [])

    core.delete_namespace(NAMESPACE)
    listed = core.list_namespace(field_selector=f"metadata.name={NAMESPACE}")
    phases = [n.status.phase for n in listed.items]
    check("delete_namespace marks it Terminating (or it is gone already)",
          phases in ([], ["Terminating"]), phases)
    if listed.items:
        watch_until(
            core.list_namespace,
            "the namespace controller empties and deletes it",
            lambda evs: any(e["type"] == "DELETED" for e in evs),
            field_selector=f"metadata.name={NAMESPACE}",
            resource_version=listed.metadata.resource_version,
        )

    print(f"summary: {passed} passed, {failed} failed")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
