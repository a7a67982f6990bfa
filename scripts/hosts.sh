#!/usr/bin/env bash
# Runs Miniku across five "hosts": containers of the image miniku/miniku (scripts/image.sh)
# on a private Docker network, each with its own address, every listener serving on that
# address with tokens, and TLS from certificates made here for those addresses.
#
#   miniku-h-store1   .11  store member 1 (client :2379, peer :2380) + the API server (:6443)
#   miniku-h-store2   .12  store member 2 + the controller manager
#   miniku-h-store3   .13  store member 3 + the scheduler
#   miniku-h-worker1  .21  kubelet (node worker1, :10250) + miniku proxy (node ports)
#   miniku-h-worker2  .22  kubelet (node worker2, :10250) + miniku proxy
#
# The kubelets drive this machine's engine through its socket, mounted in: their pods are
# containers on the same network (kubelet --pod-network), so the workers reach them.
#
# Usage: scripts/hosts.sh up|status|down|kill HOST|start HOST|pause HOST|unpause HOST|isolate HOST|heal
#                        |upgrade HOST IMAGE|join store4
#   up            make certificates and tokens (once), start the hosts, wait for a store
#                 leader and the API server; a process that exits at start is reported
#   status        each host's state and processes, and each member's /v1/cluster
#   down          stop and remove the hosts, the pods' containers and the network (the
#                 data directory stays: `up` carries on)
#   kill HOST     docker kill (SIGKILL, every process of the host at once)
#   start HOST    start a killed or stopped host again
#   pause HOST    freeze every process of the host (cgroup freezer); unpause HOST thaws it
#   isolate HOST  disconnect the host from the network: its packets are dropped
#   heal          reconnect every host at its address and unpause every paused one
#   upgrade HOST IMAGE  stop the host gracefully and start it again from IMAGE, with the
#                 same address and data (a rolling upgrade, one host at a time)
#   join store4   start a fourth store host (.14) empty (--join) and add it to the cluster
#                 as a learner; promote it with POST /v1/cluster/members/4/promote
#   remove HOST   remove a store member from the cluster (through another member) and stop
#                 its store process; the host's other processes go on, and the host never
#                 runs that member again
#   HOST is store1..store4, worker1, worker2 (or the container's name).
#
# Environment: MINIKU_HOSTS_DATA (default ./data-hosts) holds the compose file, certificates,
#   tokens, each host's data and logs (logs/HOST/PROCESS.log); MINIKU_HOSTS_SUBNET (default
#   172.30.57.0/24: a /24, hosts at .11-.13 and .21-.22, pods from .128 up); MINIKU_IMAGE
#   (default miniku/miniku:latest); MINIKU_HOSTS_NETWORK (default miniku-hosts);
#   MINIKU_HOSTS_PROJECT (default miniku-h: the containers' names' prefix, so that two
#   clusters with their own network, subnet and data can run side by side);
#   MINIKU_HOSTS_STORE_FLAGS, MINIKU_HOSTS_CONTROLLER_FLAGS, MINIKU_HOSTS_KUBELET_FLAGS: more
#   flags for those processes (the chaos harness shortens timeouts with them), kept in
#   $DATA/flags.env by `up` so that later starts use the same.
set -euo pipefail

cd "$(dirname "$0")/.."
DATA=${MINIKU_HOSTS_DATA:-./data-hosts}
IMAGE=${MINIKU_IMAGE:-miniku/miniku:latest}
NETWORK=${MINIKU_HOSTS_NETWORK:-miniku-hosts}
SUBNET=${MINIKU_HOSTS_SUBNET:-172.30.57.0/24}
PROJECT=${MINIKU_HOSTS_PROJECT:-miniku-h}
PREFIX=${SUBNET%.*}   # 172.30.57
case "$SUBNET" in
  *.0/24) ;;
  *) echo "MINIKU_HOSTS_SUBNET must be a /24 ending in .0/24 (got $SUBNET)" >&2; exit 2 ;;
esac
mkdir -p "$DATA"
DATA=$(cd "$DATA" && pwd)
COMPOSE_FILE=$DATA/docker-compose.yml

# store4 exists only once `join store4` has run (the marker $DATA/joined/store4).
ALL_HOSTS="store1 store2 store3 store4 worker1 worker2"
HOSTS="store1 store2 store3 worker1 worker2"
STORES="store1 store2 store3"
WORKERS="worker1 worker2"
if [ -e "$DATA/joined/store4" ]; then
  HOSTS="store1 store2 store3 store4 worker1 worker2"
  STORES="store1 store2 store3 store4"
fi
declare -A IP=([store1]=$PREFIX.11 [store2]=$PREFIX.12 [store3]=$PREFIX.13 [store4]=$PREFIX.14 [worker1]=$PREFIX.21 [worker2]=$PREFIX.22)
declare -A PROCS=([store1]="store apiserver" [store2]="store controller-manager" [store3]="store scheduler" [store4]="store" [worker1]="kubelet proxy" [worker2]="kubelet proxy")
# More flags per process, fixed at the first `up` (the hosts' entry scripts are rewritten
# on every command that starts a host, and must not lose them).
if [ -s "$DATA/flags.env" ] && [ "${1:-}" != up ]; then
  # shellcheck disable=SC1091
  . "$DATA/flags.env"
fi
STORE_FLAGS=${MINIKU_HOSTS_STORE_FLAGS:-}
CONTROLLER_FLAGS=${MINIKU_HOSTS_CONTROLLER_FLAGS:-}
KUBELET_FLAGS=${MINIKU_HOSTS_KUBELET_FLAGS:-}
API_PORT=6443
STORE_URLS="https://${IP[store1]}:2379,https://${IP[store2]}:2379,https://${IP[store3]}:2379"
INITIAL="1=${IP[store1]}:2380,2=${IP[store2]}:2380,3=${IP[store3]}:2380"

die() { echo "$*" >&2; exit 1; }
container() { echo "$PROJECT-$1"; }
host_of() { # NAME or miniku-h-NAME -> NAME, or fails
  local h=${1#"$PROJECT"-}
  for x in $HOSTS; do [ "$x" = "$h" ] && { echo "$h"; return 0; }; done
  die "unknown host '$1' (one of: $HOSTS)"
}
# The processes a host runs: its PROCS, less the store of a removed member.
procs_of() {
  local p
  for p in ${PROCS[$1]}; do
    [ "$p" = store ] && [ -e "$DATA/removed/$1" ] && continue
    echo "$p"
  done
}
# The image a host runs: $IMAGE, or the one `upgrade` gave it ($DATA/images/HOST).
image_of() { if [ -s "$DATA/images/$1" ]; then cat "$DATA/images/$1"; else echo "$IMAGE"; fi; }
compose() { docker-compose -p "$PROJECT" -f "$COMPOSE_FILE" "$@"; }

# --- certificates and tokens -------------------------------------------------------------

# A CA, and per host a key and a certificate naming its address (serverAuth and clientAuth:
# store members present theirs to each other, mutual TLS). Made once; kept in $DATA/pki.
make_pki() {
  local pki=$DATA/pki h
  mkdir -p "$pki"
  if [ ! -s "$pki/ca.crt" ]; then
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
      -subj "/CN=miniku hosts CA" -keyout "$pki/ca.key" -out "$pki/ca.crt" 2>/dev/null
  fi
  for h in $ALL_HOSTS; do
    [ -s "$pki/$h.crt" ] && continue
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$h" \
      -keyout "$pki/$h.key" -out "$pki/$h.csr" 2>/dev/null
    printf 'subjectAltName = IP:%s, DNS:%s, DNS:%s\nextendedKeyUsage = serverAuth, clientAuth\n' \
      "${IP[$h]}" "$h" "$(container "$h")" >"$pki/$h.ext"
    openssl x509 -req -in "$pki/$h.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" \
      -CAcreateserial -days 825 -extfile "$pki/$h.ext" -out "$pki/$h.crt" 2>/dev/null
    rm -f "$pki/$h.csr" "$pki/$h.ext"
  done
  # client.token: the store's clients; peer.token: between members; api.token: the API
  # server's clients; kubelet.token: what the API server sends the kubelets.
  for t in client peer api kubelet; do
    [ -s "$pki/$t.token" ] || (umask 077 && openssl rand -hex 32 | tr -d '\n' >"$pki/$t.token")
  done
  chmod 600 "$pki"/*.key
}

# What each host gets, in $DATA/etc/HOST (mounted at /etc/miniku): exactly the files that
# host needs, as one would copy them to a real machine, and its entry script.
host_files() {
  case "$1" in
    store1) echo "ca.crt store1.crt store1.key client.token peer.token api.token kubelet.token" ;;
    store2 | store3 | store4) echo "ca.crt $1.crt $1.key client.token peer.token" ;;
    worker*) echo "ca.crt client.token kubelet.token" ;;
  esac
}

# The flags of one process, with the files where the host has them (/etc/miniku).
flags_of() { # HOST PROCESS
  local h=$1 ip=${IP[$1]} e=/etc/miniku
  local store_client="--store $STORE_URLS --store-token-file $e/client.token --store-ca-file $e/ca.crt"
  case "$2" in
    store)
      local founding="--initial-cluster $INITIAL"
      [ "$h" = store4 ] && founding="--join"
      echo "store --id ${h#store} --data-dir /var/lib/miniku/store --client-addr $ip:2379 --peer-addr $ip:2380" \
        "$founding --token-file $e/client.token --peer-token-file $e/peer.token $STORE_FLAGS" \
        "--cert-file $e/$h.crt --key-file $e/$h.key" \
        "--peer-cert-file $e/$h.crt --peer-key-file $e/$h.key --peer-trusted-ca-file $e/ca.crt" ;;
    apiserver)
      echo "apiserver --listen $ip:$API_PORT --token-file $e/api.token --kubelet-token-file $e/kubelet.token" \
        "--cert-file $e/$h.crt --key-file $e/$h.key $store_client" ;;
    controller-manager) echo "controller-manager --identity $h $store_client $CONTROLLER_FLAGS" ;;
    scheduler) echo "scheduler --identity $h $store_client" ;;
    kubelet)
      echo "kubelet --node-name $h --runtime docker --pod-network $NETWORK --listen $ip:10250" \
        "--token-file $e/kubelet.token $store_client $KUBELET_FLAGS" ;;
    proxy) echo "proxy --listen-address $ip $store_client" ;;
  esac
}

write_host() { # HOST: its files and entry script
  local h=$1 dir=$DATA/etc/$1 f p
  mkdir -p "$dir" "$DATA/data/$h" "$DATA/logs/$h"
  for f in $(host_files "$h"); do cp "$DATA/pki/$f" "$dir/$f"; done
  chmod 600 "$dir"/*.key "$dir"/*.token 2>/dev/null || true
  {
    echo '#!/bin/sh'
    echo "# $h ($(container "$h"), ${IP[$h]}): ${PROCS[$h]}. Each process logs to /var/log/miniku/NAME.log."
    echo 'pids=""'
    echo 'run() { # NAME ARGS...: `miniku ARGS` in the background; its pid in /tmp/NAME.pid'
    echo '  name=$1; shift'
    echo '  echo "--- $(date -u +%Y-%m-%dT%H:%M:%SZ) miniku $*" >>/var/log/miniku/$name.log'
    echo '  /bin/miniku "$@" >>/var/log/miniku/$name.log 2>&1 &'
    echo '  echo $! >/tmp/$name.pid; pids="$pids $!"'
    echo '}'
    echo '# docker stop: a graceful stop of every process (SIGTERM), then the container ends.'
    echo 'trap '\''kill -TERM $pids 2>/dev/null; wait; exit 0'\'' TERM INT'
    [ -e "$DATA/removed/$h" ] && echo "# store: removed from the cluster (scripts/hosts.sh remove $h)"
    for p in $(procs_of "$h"); do
      echo "run $p $(flags_of "$h" "$p")"
    done
    echo 'wait'
  } >"$dir/run.sh"
  chmod 755 "$dir/run.sh"
}

write_compose() {
  local h
  {
    echo "# Made by scripts/hosts.sh up; edits are overwritten."
    echo 'version: "2.4"'
    echo "networks:"
    echo "  hosts:"
    echo "    name: $NETWORK"
    echo "    driver: bridge"
    echo "    ipam:"
    echo "      config:"
    echo "        - subnet: $SUBNET"
    echo "          ip_range: $PREFIX.128/25"
    echo "          gateway: $PREFIX.1"
    echo "services:"
    for h in $HOSTS; do
      echo "  $h:"
      echo "    image: $(image_of "$h")"
      echo "    container_name: $(container "$h")"
      echo "    hostname: $h"
      echo "    entrypoint: [\"/bin/sh\", \"/etc/miniku/run.sh\"]"
      echo "    command: []"
      echo "    stop_grace_period: 15s"
      echo "    environment: {NO_COLOR: \"1\"}   # plain log files"
      echo "    labels: {miniku.hosts: \"$h\"}"
      echo "    networks:"
      echo "      hosts: {ipv4_address: ${IP[$h]}}"
      echo "    volumes:"
      echo "      - $DATA/etc/$h:/etc/miniku:ro"
      echo "      - $DATA/data/$h:/var/lib/miniku"
      echo "      - $DATA/logs/$h:/var/log/miniku"
      case "$h" in
        worker*) echo "      - /var/run/docker.sock:/var/run/docker.sock" ;;
      esac
    done
  } >"$COMPOSE_FILE"
}

# --- looking at the hosts ------------------------------------------------------------------

state_of() { # HOST: running, paused, exited, ... or absent (docker inspect prints an empty line then)
  local st
  st=$(docker inspect -f '{{.State.Status}}' "$(container "$1")" 2>/dev/null) || st=absent
  echo "${st:-absent}"
}
connected() { docker inspect -f "{{if index .NetworkSettings.Networks \"$NETWORK\"}}yes{{end}}" "$(container "$1")" 2>/dev/null | grep -q yes; }

# curl inside HOST (its own view), with the CA and a token from $DATA/pki: hcurl HOST TOKEN ARGS...
hcurl() {
  local h=$1 token=$2; shift 2
  docker exec "$(container "$h")" curl -sS --max-time 3 --cacert /etc/miniku/ca.crt \
    -H "Authorization: Bearer $(cat "$DATA/pki/$token.token")" "$@"
}

cluster_of() { hcurl "$1" client "https://${IP[$1]}:2379/v1/cluster" 2>/dev/null; }

proc_alive() { # HOST PROCESS
  docker exec "$(container "$1")" sh -c "kill -0 \$(cat /tmp/$2.pid 2>/dev/null) 2>/dev/null" 2>/dev/null
}

last_error() { # HOST PROCESS: the line where the process said why it stopped
  local log=$DATA/logs/$1/$2.log run why
  # Only its last run (the entry script starts each with `--- TIME miniku ARGS`).
  run=$(awk '/^--- /{n=0} {line[n++]=$0} END{for(i=0;i<n;i++) print line[i]}' "$log" 2>/dev/null || true)
  why=$(grep -E '^miniku [a-z-]+: ' <<<"$run" | tail -n 1 || true)            # an error
  [ -n "$why" ] || why=$(grep -E '^error: ' <<<"$run" | head -n 1 || true)      # a bad flag
  [ -n "$why" ] || why=$(grep -A1 'panicked at' <<<"$run" | tail -n 1 || true)  # a panic
  [ -n "$why" ] || why=$(grep -v -e '^[[:space:]]*$' -e '^note: ' <<<"$run" | tail -n 1 || true)
  echo "${why:-(no output in $log)}"
}

# Fails, naming each process of "$@" (hosts) that is not running, with its last error line.
report_exits() {
  local failed=0 h p st
  for h in "$@"; do
    st=$(state_of "$h")
    if [ "$st" != running ]; then
      echo "$h is $st: $(docker inspect -f 'exit code {{.State.ExitCode}} {{.State.Error}}' "$(container "$h")" 2>/dev/null)" >&2
      for p in $(procs_of "$h"); do echo "  $p: $(last_error "$h" "$p")" >&2; done
      failed=1
      continue
    fi
    for p in $(procs_of "$h"); do
      if ! proc_alive "$h" "$p"; then
        echo "$h: $p exited at start: $(last_error "$h" "$p")" >&2
        failed=1
      fi
    done
  done
  return $failed
}

wait_for_leader() {
  local h leader
  for _ in $(seq 1 150); do
    for h in $STORES; do
      leader=$(cluster_of "$h" | jq -r '.leader_id // empty' 2>/dev/null || true)
      if [ -n "$leader" ] && [ "$leader" != null ]; then
        echo "store leader: member $leader (store$leader, ${IP[store$leader]})"
        return 0
      fi
    done
    # Sets the processes time to fail (a port taken, a bad flag) before checking.
    report_exits $STORES || return 1
    sleep 0.2
  done
  echo "no store leader after 30 s; see $DATA/logs/store*/store.log" >&2
  return 1
}

wait_for_api() {
  for _ in $(seq 1 150); do
    if hcurl store1 api -f -o /dev/null "https://${IP[store1]}:$API_PORT/replicasets" 2>/dev/null; then
      return 0
    fi
    report_exits store1 || return 1
    sleep 0.2
  done
  echo "the API server did not answer at https://${IP[store1]}:$API_PORT after 30 s; see $DATA/logs/store1/apiserver.log" >&2
  return 1
}

# A kubeconfig for kubectl on this machine: the API server's address, the CA and the token.
write_kubeconfig() {
  cat >"$DATA/kubeconfig" <<KUBECONFIG
apiVersion: v1
kind: Config
clusters:
- name: miniku-hosts
  cluster:
    server: https://${IP[store1]}:$API_PORT
    certificate-authority: $DATA/pki/ca.crt
users:
- name: miniku-hosts
  user:
    tokenFile: $DATA/pki/api.token
contexts:
- name: miniku-hosts
  context: {cluster: miniku-hosts, user: miniku-hosts, namespace: default}
current-context: miniku-hosts
KUBECONFIG
}

# The subnet must not be another network's (ours is re-used).
check_subnet() {
  local n s
  if docker network inspect "$NETWORK" >/dev/null 2>&1; then
    s=$(docker network inspect -f '{{range .IPAM.Config}}{{.Subnet}}{{end}}' "$NETWORK")
    [ "$s" = "$SUBNET" ] || die "network $NETWORK exists with subnet $s, not $SUBNET (scripts/hosts.sh down first, or set MINIKU_HOSTS_SUBNET=$s)"
    return 0
  fi
  for n in $(docker network ls -q); do
    s=$(docker network inspect -f '{{.Name}} {{range .IPAM.Config}}{{.Subnet}} {{end}}' "$n")
    case " ${s#* } " in
      *" $SUBNET "*) die "subnet $SUBNET is taken by network ${s%% *}: set MINIKU_HOSTS_SUBNET to another /24" ;;
    esac
  done
}

# The pods' containers our kubelets made (label miniku.node=worker1/worker2, on our network).
pod_containers() {
  local w
  for w in $WORKERS; do
    docker ps -aq --filter label=miniku=1 --filter "label=miniku.node=$w" --filter "network=$NETWORK"
  done
}

case "${1:-}" in
  up)
    docker image inspect "$IMAGE" >/dev/null 2>&1 || die "no image $IMAGE: run scripts/image.sh first"
    command -v docker-compose >/dev/null || die "docker-compose is needed (Debian: apt-get install docker-compose)"
    command -v jq >/dev/null || die "jq is needed"
    command -v openssl >/dev/null || die "openssl is needed (Debian: apt-get install openssl)"
    check_subnet
    make_pki
    {
      printf 'MINIKU_HOSTS_STORE_FLAGS=%q\n' "$STORE_FLAGS"
      printf 'MINIKU_HOSTS_CONTROLLER_FLAGS=%q\n' "$CONTROLLER_FLAGS"
      printf 'MINIKU_HOSTS_KUBELET_FLAGS=%q\n' "$KUBELET_FLAGS"
    } >"$DATA/flags.env"
    for h in $HOSTS; do write_host "$h"; done
    write_compose
    compose up -d --remove-orphans 2>&1 | grep -v '^$' | sed 's/^/  /'
    sleep 1
    wait_for_leader
    wait_for_api
    sleep 1
    report_exits $HOSTS
    write_kubeconfig
    echo "API server: https://${IP[store1]}:$API_PORT (CA $DATA/pki/ca.crt, token $DATA/pki/api.token)"
    echo "store:      $STORE_URLS (token $DATA/pki/client.token)"
    echo "nodes:      worker1 ${IP[worker1]}, worker2 ${IP[worker2]} (kubelets :10250, node ports on these addresses)"
    echo "kubectl:    export KUBECONFIG=$DATA/kubeconfig"
    echo "logs:       $DATA/logs/HOST/PROCESS.log"
    ;;
  status)
    for h in $HOSTS; do
      st=$(state_of "$h")
      net=isolated
      connected "$h" && net="on $NETWORK"
      procs=""
      if [ "$st" = running ]; then
        for p in $(procs_of "$h"); do
          if proc_alive "$h" "$p"; then procs="$procs $p"; else procs="$procs $p(exited)"; fi
        done
      fi
      printf '%-8s %-15s %-8s %-18s%s\n' "$h" "${IP[$h]}" "$st" "$net" "$procs"
    done
    for h in $STORES; do
      printf '%s sees: ' "$h"
      if [ "$(state_of "$h")" = running ] && c=$(cluster_of "$h") && [ -n "$c" ]; then
        echo "$c" | jq -c '{member: .member_id, leader: .leader_id, term, applied_index, revision: .header.revision, members: [.members[] | "\(.id)=\(.peer_addr)\(if .voter then "" else " (learner)" end)"]}' 2>/dev/null \
          || echo "$c"
      else
        echo "no answer"
      fi
    done
    ;;
  down)
    # The workers first (their kubelets leave the pods' containers running), then the pods'
    # containers, then the store hosts and the network.
    for h in $WORKERS; do
      [ "$(state_of "$h")" = absent ] || { docker stop -t 15 "$(container "$h")" >/dev/null; echo "  stopped $h"; }
    done
    pods=$(pod_containers)
    if [ -n "$pods" ]; then
      # shellcheck disable=SC2086
      docker rm -f $pods >/dev/null
      echo "  removed $(echo "$pods" | wc -l) pod container(s) of worker1, worker2"
    fi
    if [ -f "$COMPOSE_FILE" ]; then
      compose down -t 15 --remove-orphans 2>&1 | sed 's/^/  /'
    fi
    # Without the compose file (or what it did not know of): our containers by name.
    for h in $HOSTS; do
      [ "$(state_of "$h")" = absent ] && continue
      docker stop -t 15 "$(container "$h")" >/dev/null 2>&1 || true
      docker rm -f "$(container "$h")" >/dev/null 2>&1 && echo "  removed $h"
    done
    if docker network inspect "$NETWORK" >/dev/null 2>&1; then
      docker network rm "$NETWORK" >/dev/null && echo "  removed network $NETWORK"
    fi
    true
    ;;
  kill | start | pause | unpause)
    [ -n "${2:-}" ] || die "usage: $0 $1 HOST"
    h=$(host_of "$2")
    docker "$1" "$(container "$h")" >/dev/null
    echo "$1: $h ($(state_of "$h"))"
    ;;
  isolate)
    [ -n "${2:-}" ] || die "usage: $0 isolate HOST"
    h=$(host_of "$2")
    docker network disconnect "$NETWORK" "$(container "$h")"
    echo "isolated $h (${IP[$h]}): disconnected from $NETWORK"
    ;;
  heal)
    for h in $HOSTS; do
      st=$(state_of "$h")
      [ "$st" = absent ] && continue
      if ! connected "$h"; then
        docker network connect --ip "${IP[$h]}" "$NETWORK" "$(container "$h")"
        echo "reconnected $h at ${IP[$h]}"
      fi
      if [ "$st" = paused ]; then
        docker unpause "$(container "$h")" >/dev/null
        echo "unpaused $h"
      fi
    done
    ;;
  upgrade)
    [ -n "${2:-}" ] && [ -n "${3:-}" ] || die "usage: $0 upgrade HOST IMAGE"
    h=$(host_of "$2")
    docker image inspect "$3" >/dev/null 2>&1 || die "no image $3"
    mkdir -p "$DATA/images"
    echo "$3" >"$DATA/images/$h"
    write_host "$h"
    write_compose
    # A graceful stop (SIGTERM: the member finishes what it holds), then the same host,
    # address and data from the new image.
    [ "$(state_of "$h")" = absent ] || docker stop -t 15 "$(container "$h")" >/dev/null
    compose up -d --no-deps "$h" 2>&1 | grep -v '^$' | sed 's/^/  /'
    sleep 0.5
    report_exits "$h"
    echo "upgraded $h to $3"
    ;;
  join)
    [ "${2:-}" = store4 ] || die "usage: $0 join store4"
    if [ ! -e "$DATA/joined/store4" ]; then
      mkdir -p "$DATA/joined"
      touch "$DATA/joined/store4"
      HOSTS="$HOSTS store4" STORES="$STORES store4"
    fi
    write_host store4
    write_compose
    compose up -d --no-deps store4 2>&1 | grep -v '^$' | sed 's/^/  /'
    sleep 0.5
    report_exits store4
    # Added as a learner through any member that answers (a follower forwards to the
    # leader); it votes only once promoted.
    for s in store1 store2 store3; do
      [ "$(state_of "$s")" = running ] || continue
      if out=$(hcurl "$s" client -f -X POST -H 'content-type: application/json' \
          -d "{\"id\":4,\"peer_addr\":\"${IP[store4]}:2380\",\"learner\":true}" \
          "https://${IP[$s]}:2379/v1/cluster/members" 2>&1); then
        echo "added store4 (${IP[store4]}) as a learner, through $s"
        exit 0
      fi
    done
    die "no member took store4: $out"
    ;;
  remove)
    [ -n "${2:-}" ] || die "usage: $0 remove HOST"
    h=$(host_of "$2")
    case "$h" in store*) ;; *) die "$h is not a store host" ;; esac
    id=${h#store}
    removed=""
    for s in $STORES; do
      [ "$s" = "$h" ] && continue
      [ "$(state_of "$s")" = running ] || continue
      if out=$(hcurl "$s" client -f -X DELETE "https://${IP[$s]}:2379/v1/cluster/members/$id" 2>&1); then
        removed=$s
        break
      fi
    done
    [ -n "$removed" ] || die "no member removed member $id: $out"
    mkdir -p "$DATA/removed"
    touch "$DATA/removed/$h"
    write_host "$h"
    docker exec "$(container "$h")" sh -c 'kill -TERM $(cat /tmp/store.pid)' 2>/dev/null || true
    echo "removed member $id ($h) through $removed; its store process is stopped"
    ;;
  *)
    sed -n '2,41p' "$0"
    exit 2
    ;;
esac
