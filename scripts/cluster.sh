#!/usr/bin/env bash
# Starts, stops and inspects a whole Miniku system on this machine:
#   three store members (client ports 2379 22379 32379, peer ports 12380 22380 32380),
#   the API server (:8080), the controller manager, the scheduler, two kubelets
#   (node-a, node-b) running pods as Docker containers, and beside each kubelet a proxy
#   (proxy-a, proxy-b) serving NodePort Services: node-a's on 127.0.0.1, node-b's on
#   127.0.0.2 (both loopback; two proxies on one host cannot share an address and port).
#   Each kubelet serves its pods' logs on port 10250 of its node's address (node-a
#   127.0.0.1, node-b 127.0.0.2) and answers only the API server, which sends the credential
#   in $MINIKU_DATA/kubelet.token (made at the first `up`).
#
# Usage: scripts/cluster.sh up|down|status|kill NAME|start NAME|logs NAME|names
#   up            build (release) and start everything not already running; waits for a
#                 store leader and for the API server
#   down          stop everything this script started (SIGTERM, then SIGKILL), by PID file
#   status        members, leader, term, applied index, and which components run
#   kill NAME     SIGKILL one component (for drills); NAME from `names`
#   start NAME    start one component again
#
# Environment: MINIKU_DATA (default ./data) holds data, PID files and logs;
#   MINIKU_BIN (default target/release/miniku); MINIKU_NO_BUILD=1 skips the build;
#   MINIKU_STORE_ONLY=1 starts only the three store members;
#   MINIKU_RUNTIME=docker|fake for the kubelets (default docker).
set -euo pipefail

cd "$(dirname "$0")/.."
DATA=${MINIKU_DATA:-./data}
BIN=${MINIKU_BIN:-target/release/miniku}
RUNTIME=${MINIKU_RUNTIME:-docker}
mkdir -p "$DATA/pids" "$DATA/logs"
DATA=$(cd "$DATA" && pwd)

STORES="store1 store2 store3"
CONTROL="apiserver controller-manager scheduler kubelet-a kubelet-b proxy-a proxy-b"
INITIAL="1=127.0.0.1:12380,2=127.0.0.1:22380,3=127.0.0.1:32380"
STORE_ENDPOINTS="127.0.0.1:2379,127.0.0.1:22379,127.0.0.1:32379"
CLIENT_PORTS=(0 2379 22379 32379)
PEER_PORTS=(0 12380 22380 32380)

all_names() {
  if [ -n "${MINIKU_STORE_ONLY:-}" ]; then echo "$STORES"; else echo "$STORES $CONTROL"; fi
}

# A kubeconfig naming the API server, for kubectl and the Kubernetes client libraries.
write_kubeconfig() {
  cat > "$DATA/kubeconfig" <<KUBECONFIG
apiVersion: v1
kind: Config
clusters:
- name: miniku
  cluster:
    server: http://127.0.0.1:8080
users:
- name: miniku
  user: {}
contexts:
- name: miniku
  context:
    cluster: miniku
    user: miniku
    namespace: default
current-context: miniku
KUBECONFIG
}

command_for() {
  case "$1" in
    store[123])
      local i=${1#store}
      echo "$BIN store --id $i --data-dir $DATA/$1 --client-addr 127.0.0.1:${CLIENT_PORTS[$i]} --peer-addr 127.0.0.1:${PEER_PORTS[$i]} --initial-cluster $INITIAL" ;;
    apiserver) echo "$BIN apiserver --listen 127.0.0.1:8080 --kubelet-token-file $DATA/kubelet.token --store $STORE_ENDPOINTS" ;;
    controller-manager) echo "$BIN controller-manager --store $STORE_ENDPOINTS" ;;
    scheduler) echo "$BIN scheduler --store $STORE_ENDPOINTS" ;;
    kubelet-a) echo "$BIN kubelet --node-name node-a --runtime $RUNTIME --listen 127.0.0.1:10250 --token-file $DATA/kubelet.token --store $STORE_ENDPOINTS" ;;
    kubelet-b) echo "$BIN kubelet --node-name node-b --runtime $RUNTIME --listen 127.0.0.2:10250 --token-file $DATA/kubelet.token --store $STORE_ENDPOINTS" ;;
    proxy-a) echo "$BIN proxy --listen-address 127.0.0.1 --store $STORE_ENDPOINTS" ;;
    proxy-b) echo "$BIN proxy --listen-address 127.0.0.2 --store $STORE_ENDPOINTS" ;;
    *) echo "unknown component '$1' (one of: $(all_names))" >&2; return 1 ;;
  esac
}

# The credential the API server sends the kubelets' servers (pods' logs); they refuse
# anyone without it.
ensure_kubelet_token() {
  local f="$DATA/kubelet.token"
  [ -s "$f" ] && return 0
  (umask 077 && head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$f")
}

pid_of() {
  local f="$DATA/pids/$1.pid"
  [ -f "$f" ] || return 1
  local pid
  pid=$(cat "$f")
  # The PID must still be ours: alive and running our binary.
  if kill -0 "$pid" 2>/dev/null && grep -q miniku "/proc/$pid/cmdline" 2>/dev/null; then
    echo "$pid"
  else
    rm -f "$f"
    return 1
  fi
}

start_one() {
  local name=$1 cmd
  cmd=$(command_for "$name") || return 1
  if pid=$(pid_of "$name"); then
    echo "  $name already running (pid $pid)"
    return 0
  fi
  # shellcheck disable=SC2086
  nohup $cmd >>"$DATA/logs/$name.log" 2>&1 &
  echo $! >"$DATA/pids/$name.pid"
  echo "  started $name (pid $!, log $DATA/logs/$name.log)"
}

stop_one() {
  local name=$1 signal=${2:-TERM} pid
  if ! pid=$(pid_of "$name"); then
    return 0
  fi
  kill -s "$signal" "$pid" 2>/dev/null || true
  for _ in $(seq 1 50); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    kill -s KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$DATA/pids/$name.pid"
  echo "  stopped $name (pid $pid, SIG$signal)"
}

# Fails, naming each of "$@" that this run started and that has exited since, with the last
# line of its log (`miniku store: cannot listen on 127.0.0.1:2379: Address already in use`).
report_exits() {
  local failed=0 name
  for name in "$@"; do
    [ -f "$DATA/pids/$name.pid" ] || continue
    if ! pid_of "$name" >/dev/null; then
      local log="$DATA/logs/$name.log" why
      why=$(grep '^miniku ' "$log" | tail -n 1)
      [ -n "$why" ] || why=$(grep -v '^[[:space:]]*$' "$log" | tail -n 1)
      echo "$name exited at start: $why" >&2
      failed=1
    fi
  done
  return $failed
}

wait_for_leader() {
  for _ in $(seq 1 150); do
    report_exits $STORES || return 1
    for port in 2379 22379 32379; do
      leader=$(curl -sf "http://127.0.0.1:$port/v1/cluster" 2>/dev/null | jq -r '.leader_id // empty' 2>/dev/null || true)
      if [ -n "$leader" ] && [ "$leader" != "null" ]; then
        # A member that could not start (its port taken) is gone by now: say so.
        sleep 0.5
        report_exits $STORES || return 1
        echo "store leader: member $leader"
        return 0
      fi
    done
    sleep 0.2
  done
  echo "no store leader after 30 s; see $DATA/logs/store*.log" >&2
  return 1
}

wait_for_http() {
  local url=$1 what=$2
  for _ in $(seq 1 150); do
    report_exits $CONTROL || return 1
    curl -sf "$url" >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  echo "$what did not answer at $url after 30 s; see $DATA/logs" >&2
  return 1
}

case "${1:-}" in
  up)
    if [ -z "${MINIKU_NO_BUILD:-}" ]; then
      # etcd's protos (the store's gRPC front) are compiled at build time.
      if ! command -v protoc >/dev/null; then
        echo "installing protobuf-compiler (protoc, needed to build)..."
        if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
        $SUDO apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq protobuf-compiler >/dev/null
      fi
      echo "building (release)..."
      cargo build --release
    fi
    for n in $STORES; do start_one "$n"; done
    wait_for_leader
    echo "store client API: http://127.0.0.1:2379  http://127.0.0.1:22379  http://127.0.0.1:32379"
    if [ -z "${MINIKU_STORE_ONLY:-}" ]; then
      ensure_kubelet_token
      for n in $CONTROL; do start_one "$n"; done
      wait_for_http http://127.0.0.1:8080/replicasets "the API server"
      sleep 0.5
      report_exits $CONTROL
      echo "API server: http://127.0.0.1:8080  (kubelets: node-a, node-b, runtime $RUNTIME)"
      echo "NodePort Services: 127.0.0.1:<nodePort> (proxy-a) and 127.0.0.2:<nodePort> (proxy-b)"
      write_kubeconfig
      echo "kubectl:    export KUBECONFIG=$DATA/kubeconfig"
    fi
    ;;
  down)
    for n in $CONTROL; do stop_one "$n"; done
    for n in $STORES; do stop_one "$n"; done
    ;;
  status)
    for port in 2379 22379 32379; do
      printf '127.0.0.1:%s ' "$port"
      curl -sf "http://127.0.0.1:$port/v1/cluster" 2>/dev/null \
        | jq -c '{member: .member_id, leader: .leader_id, term, applied_index, revision: .header.revision, members: [.members[] | "\(.id)=\(.peer_addr)\(if .voter then "" else " (learner)" end)"]}' \
        || echo "down"
    done
    for n in $(all_names); do
      if pid=$(pid_of "$n"); then echo "  $n: running (pid $pid)"; else echo "  $n: stopped"; fi
    done
    ;;
  kill)
    [ -n "${2:-}" ] || { echo "usage: $0 kill NAME" >&2; exit 2; }
    command_for "$2" >/dev/null
    stop_one "$2" KILL
    ;;
  start)
    [ -n "${2:-}" ] || { echo "usage: $0 start NAME" >&2; exit 2; }
    ensure_kubelet_token
    start_one "$2"
    ;;
  logs)
    [ -n "${2:-}" ] || { echo "usage: $0 logs NAME" >&2; exit 2; }
    tail -n 50 "$DATA/logs/$2.log"
    ;;
  names)
    echo "$(all_names)"
    ;;
  *)
    sed -n '2,20p' "$0"
    exit 2
    ;;
esac
