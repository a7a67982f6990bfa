#!/usr/bin/env bash
# Drives the real kubectl through the commands Miniku's Kubernetes API serves and checks what
# it prints (the columns of the server's Tables, the messages of its errors).
#   scripts/test-kubectl.sh http://127.0.0.1:8080 [NODE]
# NODE is one of the cluster's nodes (for --field-selector). Needs kubectl and curl; the
# cluster must run the Docker kubelet with miniku/busybox:latest (scripts/test-image.sh).
# Prints one line per check and a summary; exits 1 if any check failed.
set -u
API=${1:?usage: test-kubectl.sh API_URL [NODE]}
NODE=${2:-node-a}
CACHE=$(mktemp -d)
WORK=$(mktemp -d)
trap 'rm -rf "$CACHE" "$WORK"; [ -n "${WATCH_PID:-}" ] && kill "$WATCH_PID" 2>/dev/null' EXIT
K=(kubectl --server "$API" --cache-dir "$CACHE")
. "$(dirname "$0")/check-lib.sh"

manifest() { # NAME REPLICAS [EXTRA SPEC LINE]
  cat <<YAML
apiVersion: apps/v1
kind: ReplicaSet
metadata:
  name: $1
  labels:
    app: $1
spec:
  replicas: $2
${3:-}
  selector:
    matchLabels:
      app: $1
  template:
    metadata:
      labels:
        app: $1
    spec:
      containers:
      - name: httpd
        image: miniku/busybox:latest
        command: ["httpd", "-f", "-p", "8080"]
YAML
}
cat > "$WORK/two.yaml" <<YAML
apiVersion: apps/v1
kind: ReplicaSet
metadata: {name: two}
spec:
  replicas: 1
  selector: {matchLabels: {app: two}}
  template:
    metadata: {labels: {app: two}}
    spec:
      containers:
      - {name: web, image: miniku/busybox:latest, command: [httpd, -f, -p, "8080"]}
      - {name: side, image: miniku/busybox:latest, command: [sleep, "3600"]}
YAML
manifest web 2 > "$WORK/web.yaml"
manifest web 3 > "$WORK/web3.yaml"
manifest web -1 > "$WORK/negative.yaml"
manifest web 2 "  bogus: 1" > "$WORK/unknown.yaml"

expect "version reports Kubernetes 1.33" 0 'Server Version: v1\.33\.' -- "${K[@]}" version
expect "api-resources lists pods with their short name" 0 'pods +po +v1 +true +Pod' -- "${K[@]}" api-resources
expect "api-resources lists replicasets" 0 'replicasets +rs +apps/v1 +true +ReplicaSet' -- "${K[@]}" api-resources
expect "api-resources lists nodes and namespaces" 0 'namespaces +ns +v1 +false +Namespace' -- "${K[@]}" api-resources
expect "api-versions" 0 '^apps/v1$' -- "${K[@]}" api-versions
expect "explain replicaset.spec" 0 'replicas\s+<integer>' -- "${K[@]}" explain replicaset.spec
expect "the default namespace exists" 0 'default +Active' -- "${K[@]}" get ns
expect "nodes have Kubernetes' columns" 0 'NAME +STATUS +ROLES +AGE +VERSION' -- "${K[@]}" get nodes
expect "a node is Ready" 0 "$NODE +Ready" -- "${K[@]}" get no

expect "apply creates a ReplicaSet" 0 'replicaset.apps/web created' -- "${K[@]}" apply -f "$WORK/web.yaml"
expect "its two pods become ready" 0 'condition met' -- "${K[@]}" wait --for=jsonpath='{.status.readyReplicas}'=2 rs/web --timeout=90s
expect "get rs prints DESIRED CURRENT READY" 0 'web +2 +2 +2 ' -- "${K[@]}" get rs
expect "get pods prints READY STATUS RESTARTS" 0 'web-[0-9a-f]{8} +1/1 +Running +0 ' -- "${K[@]}" get pods
expect "get pods -o wide adds NODE" 0 'NAME +READY +STATUS +RESTARTS +AGE +IP +NODE +NOMINATED NODE +READINESS GATES' -- "${K[@]}" get pods -o wide
expect "pods have the engine's address (IP) and their node" 0 "web-[0-9a-f]{8} +1/1 +Running +0 +[^ ]+ +[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+ +$NODE" -- "${K[@]}" get pods -o wide
expect "nodes report their kubelet, OS and engine" 0 "$NODE +Ready .*v1\.33\.0-miniku.*docker://" -- "${K[@]}" get nodes -o wide
expect "the seed's API shows the same ReplicaSet" 0 '"desiredCount":2' -- curl -sf "$API/replicasets/web"

"${K[@]}" get pods -w --output-watch-events > "$WORK/watch.out" 2>&1 &
WATCH_PID=$!
expect "apply again changes it" 0 'replicaset.apps/web configured' -- "${K[@]}" apply -f "$WORK/web3.yaml"
expect "the third pod becomes ready" 0 'condition met' -- "${K[@]}" wait --for=jsonpath='{.status.readyReplicas}'=3 rs/web --timeout=90s
expect "generation and observedGeneration follow the change" 0 '^3 2 2$' -- "${K[@]}" get rs web -o jsonpath='{.spec.replicas} {.metadata.generation} {.status.observedGeneration}'
expect "scale goes through /scale" 0 'replicaset.apps/web scaled' -- "${K[@]}" scale rs web --replicas=1
expect "the seed's API sees the new count" 0 '"desiredCount":1' -- curl -sf "$API/replicasets/web"
expect "scaled down to one pod" 0 'condition met' -- "${K[@]}" wait --for=jsonpath='{.status.replicas}'=1 rs/web --timeout=90s
kill "$WATCH_PID" 2>/dev/null; wait "$WATCH_PID" 2>/dev/null; WATCH_PID=
expect "get -w streamed the pods' events" 0 'ADDED +web-[0-9a-f]{8}' -- cat "$WORK/watch.out"
expect "get -w streamed the scale-down's deletions" 0 'DELETED +web-[0-9a-f]{8}' -- cat "$WORK/watch.out"

expect "a pod of two containers" 0 'replicaset.apps/two created' -- "${K[@]}" apply -f "$WORK/two.yaml"
expect "runs both of them" 0 'condition met' -- "${K[@]}" wait --for=jsonpath='{.status.readyReplicas}'=1 rs/two --timeout=90s
expect "and counts both ready" 0 'two-[0-9a-f]{8} +2/2 +Running' -- "${K[@]}" get pods -l app=two
expect "delete it" 0 'replicaset.apps "two" deleted' -- "${K[@]}" delete rs two

expect "label" 0 'replicaset.apps/web labeled' -- "${K[@]}" label rs web tier=front
expect "annotate" 0 'replicaset.apps/web annotated' -- "${K[@]}" annotate rs web note=hello
expect "patch --type=merge" 0 'replicaset.apps/web patched' -- "${K[@]}" patch rs web --type=merge -p '{"metadata":{"labels":{"patched":"merge"}}}'
expect "patch --type=json" 0 'replicaset.apps/web patched' -- "${K[@]}" patch rs web --type=json -p '[{"op":"add","path":"/metadata/annotations/json","value":"yes"}]'
expect "patch (strategic, the default)" 0 'replicaset.apps/web patched' -- "${K[@]}" patch rs web -p '{"metadata":{"annotations":{"strategic":"yes"}}}'
expect "the patches landed" 0 '^merge yes yes$' -- "${K[@]}" get rs web -o jsonpath='{.metadata.labels.patched} {.metadata.annotations.json} {.metadata.annotations.strategic}'
"${K[@]}" get rs web -o json | jq '.metadata.resourceVersion = "1"' > "$WORK/stale.json"
expect "replace with a stale resourceVersion is a Conflict" 1 'Error from server \(Conflict\).*the object has been modified' -- "${K[@]}" replace -f "$WORK/stale.json"
expect "-l selects by label, --show-labels prints them" 0 'app=web,patched=merge,tier=front' -- "${K[@]}" get rs -l tier=front --show-labels
expect "-o yaml" 0 'note: hello' -- "${K[@]}" get rs web -o yaml
expect "-o json" 0 '"kind": "ReplicaSet"' -- "${K[@]}" get rs web -o json
"${K[@]}" get pods -l app=web -w --output-watch-events > "$WORK/selector.out" 2>&1 &
WATCH_PID=$!
MOVED=$("${K[@]}" get pods -l app=web -o jsonpath='{.items[0].metadata.name}')
expect "relabel a pod out of the ReplicaSet's selector" 0 "pod/$MOVED labeled" -- "${K[@]}" label pod "$MOVED" app=moved --overwrite
# Wait (bounded) for the watch to report the replacement the controller creates.
timeout 60 bash -c "until grep -Eq 'ADDED +web-[0-9a-f]{8}' '$WORK/selector.out' && [ \$(grep -Ec 'ADDED +web-' '$WORK/selector.out') -ge 2 ]; do sleep 0.2; done"
kill "$WATCH_PID" 2>/dev/null; wait "$WATCH_PID" 2>/dev/null; WATCH_PID=
expect "a watch under -l reports the pod that left the selector as DELETED" 0 "DELETED +$MOVED" -- cat "$WORK/selector.out"
expect "and the replacement as ADDED" 0 "ADDED +web-[0-9a-f]{8}" -- grep -v "$MOVED" "$WORK/selector.out"
expect "the released pod runs on without an owner" 0 "^$MOVED\$" -- "${K[@]}" get pods -l app=moved -o jsonpath='{.items[0].metadata.name}{"\n"}'
expect "delete it" 0 "pod \"$MOVED\" deleted" -- "${K[@]}" delete pod "$MOVED"
expect "--field-selector spec.nodeName" 0 'NAME|No resources found' -- "${K[@]}" get pods --field-selector "spec.nodeName=$NODE"
expect "-A shows the namespace column" 0 'NAMESPACE +NAME' -- "${K[@]}" get pods -A
expect "get all lists pods and replicasets" 0 'replicaset.apps/web' -- "${K[@]}" get all
expect "describe rs" 0 'Replicas: +1 current / 1 desired' -- "${K[@]}" describe rs web
expect "describe pod names its controller" 0 'Controlled By: +ReplicaSet/web' -- "${K[@]}" describe pods -l app=web
expect "describe node" 0 'Capacity:' -- "${K[@]}" describe node "$NODE"

cat > "$WORK/crash.yaml" <<YAML
apiVersion: apps/v1
kind: ReplicaSet
metadata: {name: crash}
spec:
  replicas: 1
  selector: {matchLabels: {app: crash}}
  template:
    metadata: {labels: {app: crash}}
    spec:
      containers:
      - {name: fails, image: miniku/busybox:latest, command: [sh, -c, "exit 3"]}
YAML
expect "a pod whose command fails" 0 'replicaset.apps/crash created' -- "${K[@]}" apply -f "$WORK/crash.yaml"
expect "is restarted with backoff" 0 'condition met' -- "${K[@]}" wait --for=jsonpath='{.status.containerStatuses[0].restartCount}'=2 pods -l app=crash --timeout=90s
expect "and shows CrashLoopBackOff with its restarts" 0 'crash-[0-9a-f]{8} +0/1 +CrashLoopBackOff +2 ' -- "${K[@]}" get pods -l app=crash
expect "describe shows the last exit code" 0 'Exit Code: +3' -- "${K[@]}" describe pods -l app=crash
expect "delete it" 0 'replicaset.apps "crash" deleted' -- "${K[@]}" delete rs crash

expect "a missing object is NotFound" 1 'Error from server \(NotFound\): replicasets.apps "nope" not found' -- "${K[@]}" get rs nope
expect "create of an existing name is AlreadyExists" 1 'Error from server \(AlreadyExists\).*replicasets.apps "web" already exists' -- "${K[@]}" create -f "$WORK/web.yaml"
expect "a negative replica count is Invalid, naming the field" 1 'spec.replicas: Invalid value: -1' -- "${K[@]}" apply -f "$WORK/negative.yaml"
expect "an unknown field is refused (strict validation)" 1 'unknown field "spec.bogus"' -- "${K[@]}" apply -f "$WORK/unknown.yaml"
expect "replace -f" 0 'replicaset.apps/web replaced' -- "${K[@]}" replace -f "$WORK/web.yaml"
expect "a namespace that does not exist is NotFound" 1 'namespaces "nowhere" not found' -- "${K[@]}" -n nowhere apply -f "$WORK/web.yaml"

expect "create namespace" 0 'namespace/team-a created' -- "${K[@]}" create namespace team-a
expect "apply into it" 0 'replicaset.apps/web created' -- "${K[@]}" -n team-a apply -f "$WORK/web.yaml"
expect "its pods run" 0 'condition met' -- "${K[@]}" -n team-a wait --for=jsonpath='{.status.readyReplicas}'=2 rs/web --timeout=90s
expect "delete namespace" 0 'namespace "team-a" deleted' -- "${K[@]}" delete namespace team-a --timeout=60s
expect "what was in it is gone" 0 'No resources found in team-a namespace' -- "${K[@]}" -n team-a get rs,pods

expect "delete --cascade=orphan leaves the pods" 0 'replicaset.apps "web" deleted' -- "${K[@]}" delete rs web --cascade=orphan
expect "the orphans run on without an owner" 0 'web-[0-9a-f]{8} +1/1 +Running' -- "${K[@]}" get pods -l app=web
expect "delete pods -l" 0 'pod "web-[0-9a-f]{8}" deleted' -- "${K[@]}" delete pods -l app=web
expect "create -f" 0 'replicaset.apps/web created' -- "${K[@]}" create -f "$WORK/web.yaml"
expect "its pods become ready" 0 'condition met' -- "${K[@]}" wait --for=jsonpath='{.status.readyReplicas}'=2 rs/web --timeout=90s
expect "delete --cascade=foreground waits for the pods" 0 'replicaset.apps "web" deleted' -- "${K[@]}" delete rs web --cascade=foreground
expect "the pods went with it" 0 'No resources found' -- "${K[@]}" get pods -l app=web

summary
