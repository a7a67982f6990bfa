#!/usr/bin/env bash
# Drives the real kubectl through pods with probes and checks what it prints: a readiness
# probe that fails keeps a pod 0/1 and its ReplicaSet's readyReplicas at 0; one that succeeds
# makes it 1/1; readiness that goes away is seen; availableReplicas waits for
# minReadySeconds; a liveness probe that fails gets the container restarted, and so does a
# hung server whose HTTP liveness probe times out.
#   scripts/test-probes.sh http://127.0.0.1:8080
# The cluster must run the Docker kubelet with miniku/busybox:latest (scripts/test-image.sh).
# Prints one line per check and a summary; exits 1 if any check failed.
set -u
API=${1:?usage: test-probes.sh API_URL}
CACHE=$(mktemp -d)
WORK=$(mktemp -d)
trap 'rm -rf "$CACHE" "$WORK"; [ -n "${WATCH_PID:-}" ] && kill "$WATCH_PID" 2>/dev/null' EXIT
K=(kubectl --server "$API" --cache-dir "$CACHE")
. "$(dirname "$0")/check-lib.sh"

# replicaset NAME MIN_READY_SECONDS COMMAND PROBES: a ReplicaSet of one busybox pod.
replicaset() {
  cat <<YAML
apiVersion: apps/v1
kind: ReplicaSet
metadata: {name: $1}
spec:
  replicas: 1
  minReadySeconds: $2
  selector: {matchLabels: {app: $1}}
  template:
    metadata: {labels: {app: $1}}
    spec:
      containers:
      - name: main
        image: miniku/busybox:latest
        command: $3
        ports: [{name: http, containerPort: 8080}]
$4
YAML
}

replicaset unready 0 '[httpd, -f, -p, "8080"]' '        readinessProbe: {exec: {command: ["false"]}, periodSeconds: 1}' > "$WORK/unready.yaml"
replicaset ready 20 '[sh, -c, "echo ok > /tmp/index.html; exec httpd -f -p 8080 -h /tmp"]' '        readinessProbe: {httpGet: {port: http, path: /}, periodSeconds: 1}' > "$WORK/ready.yaml"
replicaset flip 0 '[sh, -c, "touch /tmp/ready; sleep 20; rm /tmp/ready; exec sleep 3600"]' \
  '        readinessProbe: {exec: {command: [cat, /tmp/ready]}, periodSeconds: 1, failureThreshold: 1}' > "$WORK/flip.yaml"
replicaset live 0 '[sh, -c, "touch /tmp/healthy; sleep 4; rm /tmp/healthy; exec sleep 3600"]' \
  '        livenessProbe: {exec: {command: [cat, /tmp/healthy]}, initialDelaySeconds: 1, periodSeconds: 1, failureThreshold: 2}' > "$WORK/live.yaml"
# A hung server: httpd is frozen (SIGSTOP) after 4 s, so it still accepts connections but
# never answers; the HTTP liveness probe times out and the container is restarted.
replicaset hung 0 '[sh, -c, "echo ok > /tmp/index.html; httpd -f -p 8080 -h /tmp & sleep 4; kill -STOP $!; exec sleep 3600"]' \
  '        livenessProbe: {httpGet: {port: http, path: /}, initialDelaySeconds: 1, periodSeconds: 1, timeoutSeconds: 1, failureThreshold: 2}' > "$WORK/hung.yaml"

"${K[@]}" get pods -l 'app in (live,hung)' -w -o json > "$WORK/live.watch" 2>&1 &
WATCH_PID=$!
for rs in unready ready flip live hung; do
  expect "apply $rs" 0 "replicaset.apps/$rs created" -- "${K[@]}" apply -f "$WORK/$rs.yaml"
done

# Ready, then not: the file the probe reads goes away after 20 s.
expect "the flipping pod becomes ready" 0 'condition met' -- "${K[@]}" wait rs/flip --for=jsonpath='{.status.readyReplicas}'=1 --timeout=60s
SINCE=$("${K[@]}" get pods -l app=flip -o jsonpath='{.items[0].status.conditions[?(@.type=="Ready")].lastTransitionTime}')

# A pod whose readiness probe fails runs but never becomes ready.
expect "the unready pod runs" 0 'condition met' -- "${K[@]}" wait pod -l app=unready --for=jsonpath='{.status.phase}'=Running --timeout=90s
# Watch it for 4 probe periods (each one second) past the failure threshold of 3.
for i in 1 2 3 4; do
  sleep 1
  expect "it stays 0/1 READY ($i)" 0 'unready-[0-9a-f]{8} +0/1 +Running +0 ' -- "${K[@]}" get pods -l app=unready
done
expect "its ReplicaSet has readyReplicas 0" 0 '^1 0 0$' -- "${K[@]}" get rs unready -o jsonpath='{.status.replicas} {.status.readyReplicas} {.status.availableReplicas}'
expect "get rs prints READY 0" 0 'unready +1 +1 +0 ' -- "${K[@]}" get rs unready
expect "its Ready condition is False, as Kubernetes words it" 0 '^False ContainersNotReady containers with unready status: \[main\]$' -- \
  "${K[@]}" get pods -l app=unready -o jsonpath='{.items[0].status.conditions[?(@.type=="Ready")].status} {.items[0].status.conditions[?(@.type=="Ready")].reason} {.items[0].status.conditions[?(@.type=="Ready")].message}'

# httpGet to a named port that answers: ready; available only after minReadySeconds (20).
expect "the httpd pod becomes ready" 0 'condition met' -- "${K[@]}" wait rs/ready --for=jsonpath='{.status.readyReplicas}'=1 --timeout=90s
expect "but is not available yet (minReadySeconds 20)" 0 '^1 0$' -- "${K[@]}" get rs ready -o jsonpath='{.status.readyReplicas} {.status.availableReplicas}'
expect "it is 1/1 READY" 0 'ready-[0-9a-f]{8} +1/1 +Running +0 ' -- "${K[@]}" get pods -l app=ready
expect "its container status and both conditions say ready" 0 '^true True True$' -- \
  "${K[@]}" get pods -l app=ready -o jsonpath='{.items[0].status.containerStatuses[0].ready} {.items[0].status.conditions[?(@.type=="Ready")].status} {.items[0].status.conditions[?(@.type=="ContainersReady")].status}'
expect "it becomes available after minReadySeconds" 0 'condition met' -- "${K[@]}" wait rs/ready --for=jsonpath='{.status.availableReplicas}'=1 --timeout=60s

expect "the flipping pod is not ready when its probe starts failing" 0 'condition met' -- "${K[@]}" wait rs/flip --for=jsonpath='{.status.readyReplicas}'=0 --timeout=60s
expect "it shows 0/1 without a restart" 0 'flip-[0-9a-f]{8} +0/1 +Running +0 ' -- "${K[@]}" get pods -l app=flip
# Prints `moved` if the flip pod's Ready condition changed its lastTransitionTime since SINCE.
ready_moved() {
  local now
  now=$("${K[@]}" get pods -l app=flip -o jsonpath='{.items[0].status.conditions[?(@.type=="Ready")].lastTransitionTime}')
  echo "Ready since $SINCE, now since $now"
  [ -n "$now" ] && [ "$now" != "$SINCE" ] && echo moved
}
expect "the Ready condition's lastTransitionTime moved with it" 0 '^moved$' -- ready_moved

# Liveness: the file goes away after 4 s; two failed probes restart the container.
# await_restart APP prints `restarted N` once the app's pod's container restarted, waiting
# at most 90 s.
await_restart() {
  local deadline=$((SECONDS + 90)) n
  while [ "$SECONDS" -lt "$deadline" ]; do
    n=$("${K[@]}" get pods -l "app=$1" -o jsonpath='{.items[0].status.containerStatuses[0].restartCount}' 2>/dev/null)
    if [ "${n:-0}" -ge 1 ] 2>/dev/null; then echo "restarted $n"; return 0; fi
    sleep 0.5
  done
  echo "no restart within 90 s"; return 1
}
expect "a failing liveness probe restarts the container" 0 '^restarted [1-9]' -- await_restart live
expect "RESTARTS counts it" 0 'live-[0-9a-f]{8} +[01]/1 +[A-Za-z]+ +[1-9][0-9]*( \([^)]*\))? +[0-9]' -- "${K[@]}" get pods -l app=live
expect "it runs again" 0 'condition met' -- "${K[@]}" wait pod -l app=live --for=jsonpath='{.status.phase}'=Running --timeout=60s
expect "a hung server's HTTP liveness probe times out and restarts it" 0 '^restarted [1-9]' -- await_restart hung
expect "the hung pod runs again" 0 'condition met' -- "${K[@]}" wait pod -l app=hung --for=jsonpath='{.status.phase}'=Running --timeout=60s
kill "$WATCH_PID" 2>/dev/null; wait "$WATCH_PID" 2>/dev/null; WATCH_PID=
expect "the pod said why, as Kubernetes does" 0 'Liveness probe failed: cat: can.t open .?/tmp/healthy.?: No such file or directory' -- cat "$WORK/live.watch"
expect "the hung pod's probe timed out, in Kubernetes' words" 0 'Liveness probe failed: Get .*context deadline exceeded \(Client.Timeout exceeded while awaiting headers\)' -- cat "$WORK/live.watch"

for rs in unready ready flip live hung; do
  "${K[@]}" delete rs "$rs" --wait=false >/dev/null 2>&1
done
summary
