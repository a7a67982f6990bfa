#!/usr/bin/env bash
# A bounded check (a few minutes) of Miniku across hosts: scripts/hosts.sh up on a private
# Docker network, then on that network only:
#   - the seed's curl flow against the API server over HTTPS with its token; the pods run as
#     containers on the hosts' network and answer the worker hosts;
#   - a client without the token (or with a wrong one) gets 401 from the store, the API
#     server and a kubelet; the peer port gives a client without a member's certificate
#     nothing; a client trusting another CA fails TLS, and one presenting another CA's
#     certificate is refused by the peer port;
#   - a member started with a wrong --initial-cluster is refused and says why;
#   - docker kill of the store leader's host: writes go on through the survivors, and the
#     host started again catches up;
#   - a follower's host paused (cgroup freezer): writes go on, and unpaused it catches up;
#   - the leader's host isolated (network disconnect): its packets are dropped, writes go
#     on, and after heal it catches up;
# then brings everything down. One `ok` or `FAIL` line per check; exits 1 on any FAIL.
#
# Environment: MINIKU_HOSTS_DATA (default: a new temporary directory, removed at the end),
#   MINIKU_HOSTS_SUBNET (as scripts/hosts.sh), MINIKU_NO_BUILD=1 / MINIKU_BIN (as
#   scripts/image.sh, run when the image is missing), MINIKU_KEEP=1 leaves the cluster up.
set -euo pipefail

cd "$(dirname "$0")/.."
SUBNET=${MINIKU_HOSTS_SUBNET:-172.30.57.0/24}
PREFIX=${SUBNET%.*}
NETWORK=${MINIKU_HOSTS_NETWORK:-miniku-hosts}
IMAGE=${MINIKU_IMAGE:-miniku/miniku:latest}
POD_IMAGE=miniku/busybox:latest
if [ -z "${MINIKU_HOSTS_DATA:-}" ]; then
  MINIKU_HOSTS_DATA=$(mktemp -d /tmp/miniku-hosts-test.XXXXXX)
  REMOVE_DATA=1
fi
export MINIKU_HOSTS_DATA MINIKU_HOSTS_SUBNET=$SUBNET MINIKU_HOSTS_NETWORK=$NETWORK MINIKU_IMAGE=$IMAGE
DATA=$MINIKU_HOSTS_DATA
PKI=$DATA/pki
HOSTS=scripts/hosts.sh
STRANGER=miniku-h-stranger
STRANGER_IP=$PREFIX.30
API=https://$PREFIX.11:6443
RS=hosts-web   # the ReplicaSet of the seed's flow (its pods' containers: hosts-web-<hex>)
declare -A IP=([store1]=$PREFIX.11 [store2]=$PREFIX.12 [store3]=$PREFIX.13 [worker1]=$PREFIX.21 [worker2]=$PREFIX.22)

FAILED=0
ok() { echo "ok   $*"; }
fail() { echo "FAIL $*"; FAILED=1; }
note() { echo "     $*"; }

if docker ps -a --format '{{.Names}}' | grep -q '^miniku-h-'; then
  echo "containers named miniku-h-* exist already (scripts/hosts.sh down first):" >&2
  docker ps -a --format '  {{.Names}} {{.Status}}' --filter name=miniku-h- >&2
  exit 2
fi

cleanup() {
  if [ -n "${MINIKU_KEEP:-}" ]; then
    echo "MINIKU_KEEP: the cluster stays up (data $DATA); scripts/hosts.sh down to stop it"
    return
  fi
  docker rm -f "$STRANGER" >/dev/null 2>&1 || true
  "$HOSTS" down >/dev/null 2>&1 || true
  if [ -n "${REMOVE_DATA:-}" ]; then rm -rf "$DATA"; fi
}
trap cleanup EXIT

docker image inspect "$IMAGE" >/dev/null 2>&1 || scripts/image.sh
scripts/test-image.sh >/dev/null

# --- up ------------------------------------------------------------------------------------
START=$(date +%s)
if "$HOSTS" up >"$DATA/up.out" 2>&1; then
  ok "hosts.sh up: five hosts, a store leader and the API server ($(($(date +%s) - START)) s)"
else
  fail "hosts.sh up:"; sed 's/^/     /' "$DATA/up.out"
  exit 1
fi

API_TOKEN=$(cat "$PKI/api.token")
STORE_TOKEN=$(cat "$PKI/client.token")
# curl inside a host, trusting the cluster's CA: in HOST ARGS...
on_host() { local h=$1; shift; docker exec "miniku-h-$h" curl -sS --max-time 5 --cacert /etc/miniku/ca.crt "$@"; }
api() { on_host store1 -H "Authorization: Bearer $API_TOKEN" "$@"; }
store() { local h=$1; shift; on_host "$h" -H "Authorization: Bearer $STORE_TOKEN" "$@"; }
cluster() { store "$1" "https://${IP[$1]}:2379/v1/cluster" 2>/dev/null; }
leader() { # the leader's host, as the first store host answering sees it
  local h l
  for h in "$@"; do
    l=$(cluster "$h" | jq -r '.leader_id // empty' 2>/dev/null || true)
    if [ -n "$l" ] && [ "$l" != null ]; then echo "store$l"; return 0; fi
  done
  return 1
}
# PUT KEY=VALUE through any of the hosts given, retrying for up to SECONDS: put SECONDS KEY VALUE HOST...
put() {
  local secs=$1 key=$2 value=$3 h; shift 3
  for _ in $(seq 1 $((secs * 2))); do
    for h in "$@"; do
      if store "$h" -f -X PUT "https://${IP[$h]}:2379/v1/kv/$key" -d "$value" >/dev/null 2>&1; then
        echo "$h"; return 0
      fi
    done
    sleep 0.5
  done
  return 1
}
# Waits until HOST's own state (a serializable read) has KEY=VALUE: caught_up SECONDS HOST KEY VALUE
caught_up() {
  local secs=$1 h=$2 key=$3 value=$4
  for _ in $(seq 1 $((secs * 2))); do
    [ "$(store "$h" "https://${IP[$h]}:2379/v1/kv/$key?serializable=true" 2>/dev/null | jq -r '.kvs[0].value // empty' 2>/dev/null)" = "$value" ] && return 0
    sleep 0.5
  done
  return 1
}

# --- the seed's flow over HTTPS ------------------------------------------------------------
BODY='{"name":"'$RS'","desiredCount":3,"selector":{"app":"'$RS'"},"template":{"image":"'$POD_IMAGE'","command":["httpd","-f","-p","8080","-h","/www"]}}'
answer=$(api -w '\n%{http_code}' -X POST "$API/replicasets" -d "$BODY" 2>&1 || true)
code=$(tail -n 1 <<<"$answer")
if [ "$code" = 201 ] || [ "$code" = 200 ]; then
  ok "POST /replicasets over https with the token: $code"
else
  fail "POST /replicasets over https: $answer"
fi
running=0
for _ in $(seq 1 60); do
  running=$(api "$API/pods" 2>/dev/null | jq --arg rs "$RS" '[.[] | select(.owner == $rs or (.spec.name | startswith($rs + "-"))) | select(.status == "Running")] | length' 2>/dev/null || echo 0)
  [ "$running" = 3 ] && break
  sleep 1
done
containers=$(docker ps --filter label=miniku=1 --filter "label=miniku.pod" --format '{{.Names}} {{.Label "miniku.node"}}' | grep "^$RS-" || true)
if [ "$running" = 3 ] && [ "$(echo "$containers" | grep -c -E ' worker[12]$')" = 3 ]; then
  ok "GET /pods: 3 pods Running, 3 containers on this engine: $(echo "$containers" | awk '{print $2}' | sort | uniq -c | awk '{printf "%s on %s ", $1, $2}')"
else
  fail "pods: $running of 3 Running; containers: ${containers:-none}"
  api "$API/pods" 2>/dev/null | jq -c '.[] | {name: .spec.name, status, node: .spec.node_name, reason, message}' | sed 's/^/     /' || true
fi
# The pods' addresses as the kubelets report them (status.podIP, read from the pods' network).
ips=$(api "$API/api/v1/namespaces/default/pods?labelSelector=app%3D$RS" 2>/dev/null | jq -r '.items[].status.podIP // empty' 2>/dev/null || true)
answered=0 total=0
for ip in $ips; do
  total=$((total + 1))
  case "$ip" in "$PREFIX".*) ;; *) note "pod address $ip is not on $SUBNET"; continue ;; esac
  # (curl: Debian's static busybox wget crashes, 1.35.0-4+deb12u1)
  if [ "$(docker exec miniku-h-worker2 curl -s --max-time 3 "http://$ip:8080/index.html" 2>/dev/null)" = "hello from miniku" ]; then
    answered=$((answered + 1))
  fi
done
if [ "$total" -gt 0 ] && [ "$answered" = "$total" ]; then
  ok "every pod's status.podIP is on $NETWORK ($(echo $ips)) and answers http from worker2"
else
  fail "pods answering from worker2: $answered of $total ($ips)"
fi

# A NodePort Service over them: each worker's miniku proxy forwards its node port to them.
SVC='{"apiVersion":"v1","kind":"Service","metadata":{"name":"'$RS'"},"spec":{"type":"NodePort","selector":{"app":"'$RS'"},"ports":[{"port":80,"targetPort":8080}]}}'
port=$(api -X POST -H 'Content-Type: application/json' "$API/api/v1/namespaces/default/services" -d "$SVC" 2>/dev/null | jq -r '.spec.ports[0].nodePort // empty' 2>/dev/null || true)
through=""
for w in worker1 worker2; do
  for _ in $(seq 1 20); do
    if [ -n "$port" ] && [ "$(docker exec miniku-h-store3 curl -s --max-time 2 "http://${IP[$w]}:$port/index.html" 2>/dev/null)" = "hello from miniku" ]; then
      through="$through $w"; break
    fi
    sleep 0.5
  done
done
if [ "$through" = " worker1 worker2" ]; then
  ok "NodePort Service $RS: node port $port answers from store3 through both workers' proxies"
else
  fail "NodePort Service $RS (node port ${port:-none}): answered through:${through:- none}"
fi
api -o /dev/null -X DELETE "$API/api/v1/namespaces/default/services/$RS" 2>/dev/null || true

# --- strangers -----------------------------------------------------------------------------
# A host on the network with the image, the cluster's CA certificate (public) and its own
# CA, but no token and no certificate of the cluster's CA.
mkdir -p "$DATA/stranger"
cp "$PKI/ca.crt" "$DATA/stranger/ca.crt"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
  -subj "/CN=another CA" -keyout "$DATA/stranger/other-ca.key" -out "$DATA/stranger/other-ca.crt" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=impostor" \
  -keyout "$DATA/stranger/other.key" -out "$DATA/stranger/other.csr" 2>/dev/null
printf 'subjectAltName = IP:%s\nextendedKeyUsage = serverAuth, clientAuth\n' "$STRANGER_IP" >"$DATA/stranger/other.ext"
openssl x509 -req -in "$DATA/stranger/other.csr" -CA "$DATA/stranger/other-ca.crt" -CAkey "$DATA/stranger/other-ca.key" \
  -CAcreateserial -days 30 -extfile "$DATA/stranger/other.ext" -out "$DATA/stranger/other.crt" 2>/dev/null
docker run -d --name "$STRANGER" --network "$NETWORK" --ip "$STRANGER_IP" \
  -v "$DATA/stranger:/etc/stranger:ro" --entrypoint /bin/sleep "$IMAGE" 900 >/dev/null
s() { docker exec "$STRANGER" curl -sS --max-time 5 "$@"; }

code_of() { s -o /dev/null -w '%{http_code}' "$@" 2>/dev/null || true; }
for target in "store1 https://${IP[store1]}:2379/v1/kv/x the store (store1)" \
              "store3 https://${IP[store3]}:2379/v1/cluster the store (store3)" \
              "api $API/replicasets the API server" \
              "kubelet http://${IP[worker1]}:10250/containerLogs/default/x/x worker1's kubelet"; do
  read -r _ url what <<<"$target"
  none=$(code_of --cacert /etc/stranger/ca.crt "$url")
  wrong=$(code_of --cacert /etc/stranger/ca.crt -H "Authorization: Bearer not-the-token-0123456789abcdef" "$url")
  if [ "$none" = 401 ] && [ "$wrong" = 401 ]; then
    ok "$what without the token: 401, with a wrong one: 401"
  else
    fail "$what without the token: $none, with a wrong one: $wrong (want 401)"
  fi
done
out=$(s --cacert /etc/stranger/ca.crt "https://${IP[store2]}:2380/" 2>&1 || true)
if ! echo "$out" | grep -q '^HTTP\|{'; then
  ok "store2's peer port without a member certificate: no answer ($(echo "$out" | head -n 1))"
else
  fail "store2's peer port answered a client without a certificate: $out"
fi
out=$(s --cacert /etc/stranger/other-ca.crt -H "Authorization: Bearer $STORE_TOKEN" "https://${IP[store1]}:2379/health" 2>&1; echo "exit $?")
if echo "$out" | grep -q 'exit 60'; then
  ok "a client trusting another CA: TLS fails ($(echo "$out" | head -n 1))"
else
  fail "a client trusting another CA: $out"
fi
out=$(s --cacert /etc/stranger/ca.crt --cert /etc/stranger/other.crt --key /etc/stranger/other.key "https://${IP[store1]}:2380/" 2>&1; echo "exit $?")
if ! echo "$out" | grep -q '^HTTP\|{'; then
  ok "a certificate from another CA at store1's peer port: refused ($(echo "$out" | head -n 1))"
else
  fail "a certificate from another CA at store1's peer port: $out"
fi

# --- a member with a wrong --initial-cluster -----------------------------------------------
# It has the cluster's secrets and a certificate of its CA for its address: only its
# --initial-cluster is wrong.
mkdir -p "$DATA/member4"
cp "$PKI/ca.crt" "$PKI/client.token" "$PKI/peer.token" "$DATA/member4/"
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=store4" \
  -keyout "$DATA/member4/store4.key" -out "$DATA/member4/store4.csr" 2>/dev/null
printf 'subjectAltName = IP:%s\nextendedKeyUsage = serverAuth, clientAuth\n' "$STRANGER_IP" >"$DATA/member4/store4.ext"
openssl x509 -req -in "$DATA/member4/store4.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -CAcreateserial \
  -days 30 -extfile "$DATA/member4/store4.ext" -out "$DATA/member4/store4.crt" 2>/dev/null
docker cp "$DATA/member4" "$STRANGER:/tmp/member4" >/dev/null
M=/tmp/member4
MEMBER4="miniku store --id 4 --data-dir /tmp/store4 --client-addr $STRANGER_IP:2379 --peer-addr $STRANGER_IP:2380 \
  --token-file $M/client.token --peer-token-file $M/peer.token --cert-file $M/store4.crt --key-file $M/store4.key \
  --peer-cert-file $M/store4.crt --peer-key-file $M/store4.key --peer-trusted-ca-file $M/ca.crt"
before=$(cluster store1 | jq -c '{leader: .leader_id, term}' 2>/dev/null || true)
# 1. An initial cluster that does not name the member.
out=$(docker exec "$STRANGER" timeout 10 $MEMBER4 --initial-cluster "1=${IP[store1]}:2380,2=${IP[store2]}:2380,3=${IP[store3]}:2380" 2>&1; echo "exit $?")
if echo "$out" | grep -q '^miniku store: .*initial-cluster'; then
  ok "a member not named by its --initial-cluster is refused: $(echo "$out" | grep '^miniku store:')"
else
  fail "a member not named by its --initial-cluster: $(echo "$out" | tail -n 3 | tr '\n' ' ')"
fi
# 2. An initial cluster naming two of the running members and itself: it must not found a
#    cluster with them, nor disturb theirs.
out=$(docker exec "$STRANGER" timeout 15 $MEMBER4 --initial-cluster "1=${IP[store1]}:2380,2=${IP[store2]}:2380,4=$STRANGER_IP:2380" 2>&1; echo "exit $?")
after=$(cluster store1 | jq -c '{leader: .leader_id, term}' 2>/dev/null || true)
echo "$out" >"$DATA/member4.log"
if echo "$out" | grep -q '^miniku store: '; then
  ok "a member whose --initial-cluster names another cluster is refused: $(echo "$out" | grep '^miniku store:' | tail -n 1)"
else
  fail "a member whose --initial-cluster names members of another cluster was not refused: still running after 15 s (cluster before $before, after $after; log $DATA/member4.log)"
  grep -E 'WARN|ERROR|initialised|leader' "$DATA/member4.log" | tail -n 3 | cut -c1-240 | sed 's/^/     /' || true
fi
if [ -n "$before" ] && [ "$before" = "$after" ]; then
  ok "the running cluster was not disturbed by it: $after"
else
  note "the running cluster: before $before, after $after"
fi

# --- kill -9 of the store leader's host ----------------------------------------------------
if L=$(leader store1 store2 store3); then
  SURVIVORS=$(echo store1 store2 store3 | tr ' ' '\n' | grep -vx "$L" | tr '\n' ' ')
  put 10 hosts-test/before-kill v1 store1 store2 store3 >/dev/null || true
  "$HOSTS" kill "$L" >/dev/null
  T0=$(date +%s%N)
  # shellcheck disable=SC2086
  if via=$(put 20 hosts-test/after-kill v2 $SURVIVORS); then
    ok "kill $L (the leader): a write went through $via after $((($(date +%s%N) - T0) / 1000000)) ms; new leader $(leader $SURVIVORS || echo '?')"
  else
    fail "kill $L (the leader): no write through $SURVIVORS within 20 s"
  fi
  "$HOSTS" start "$L" >/dev/null
  T0=$(date +%s%N)
  if caught_up 30 "$L" hosts-test/after-kill v2; then
    ok "start $L: it caught up (serves the write made while it was down) after $((($(date +%s%N) - T0) / 1000000)) ms"
  else
    fail "start $L: it did not catch up within 30 s: $(cluster "$L" | jq -c '{leader: .leader_id, applied_index}' 2>/dev/null)"
  fi
else
  fail "no store leader to kill"
fi

# --- pausing a follower's host (cgroup freezer) ---------------------------------------------
if L=$(leader store1 store2 store3); then
  F=$(echo store1 store2 store3 | tr ' ' '\n' | grep -vx "$L" | head -n 1)
  "$HOSTS" pause "$F" >/dev/null
  # shellcheck disable=SC2086
  if via=$(put 10 hosts-test/after-pause v4 $L); then
    ok "pause $F (a follower): a write went through $via"
  else
    fail "pause $F (a follower): no write through the leader $L within 10 s"
  fi
  "$HOSTS" unpause "$F" >/dev/null
  T0=$(date +%s%N)
  if caught_up 20 "$F" hosts-test/after-pause v4; then
    ok "unpause $F: it caught up after $((($(date +%s%N) - T0) / 1000000)) ms"
  else
    fail "unpause $F: it did not catch up within 20 s"
  fi
else
  fail "no store leader for the pause drill"
fi

# --- isolating the leader's host -------------------------------------------------------------
if L=$(leader store1 store2 store3); then
  SURVIVORS=$(echo store1 store2 store3 | tr ' ' '\n' | grep -vx "$L" | tr '\n' ' ')
  "$HOSTS" isolate "$L" >/dev/null
  T0=$(date +%s%N)
  # shellcheck disable=SC2086
  if via=$(put 20 hosts-test/after-isolate v3 $SURVIVORS); then
    ok "isolate $L (the leader): a write went through $via after $((($(date +%s%N) - T0) / 1000000)) ms; new leader $(leader $SURVIVORS || echo '?')"
  else
    fail "isolate $L (the leader): no write through $SURVIVORS within 20 s"
  fi
  O=$(echo $SURVIVORS | cut -d' ' -f1)
  if docker exec "miniku-h-$L" ping -c 1 -W 1 "${IP[$O]}" >/dev/null 2>&1; then
    fail "isolate $L: it still reaches $O (ping)"
  else
    ok "isolate $L: its packets are dropped (no ping answer from $O)"
  fi
  "$HOSTS" heal >/dev/null
  T0=$(date +%s%N)
  if caught_up 30 "$L" hosts-test/after-isolate v3; then
    ok "heal: $L caught up after $((($(date +%s%N) - T0) / 1000000)) ms; leader $(leader store1 store2 store3 || echo '?')"
  else
    fail "heal: $L did not catch up within 30 s: $(cluster "$L" | jq -c '{leader: .leader_id, applied_index}' 2>/dev/null)"
  fi
else
  fail "no store leader to isolate"
fi

# --- the API server after the drills, then down ----------------------------------------------
for _ in $(seq 1 30); do
  api -f -o /dev/null "$API/replicasets" 2>/dev/null && break
  sleep 1
done
code=$(api -o /dev/null -w '%{http_code}' -X DELETE "$API/replicasets/$RS" 2>/dev/null || true)
gone=""
for _ in $(seq 1 30); do
  if [ -z "$(docker ps -a --filter label=miniku=1 --filter "label=miniku.pod" --format '{{.Names}}' | grep "^$RS-" || true)" ]; then gone=1; break; fi
  sleep 1
done
if [ "$code" = 200 ] && [ -n "$gone" ]; then
  ok "DELETE /replicasets/$RS after the drills: 200, its containers are gone"
else
  fail "DELETE /replicasets/$RS: $code, containers gone: ${gone:-no}"
fi

if [ -z "${MINIKU_KEEP:-}" ]; then
  docker rm -f "$STRANGER" >/dev/null 2>&1 || true
  "$HOSTS" down >"$DATA/down.out" 2>&1 || true
  left=$(docker ps -aq --filter name=miniku-h-)
  if [ -z "$left" ] && ! docker network inspect "$NETWORK" >/dev/null 2>&1; then
    ok "hosts.sh down: no host container and no network left"
  else
    fail "hosts.sh down left: $(docker ps -a --filter name=miniku-h- --format '{{.Names}}') $(docker network ls -q --filter name="$NETWORK")"
  fi
fi

if [ "$FAILED" = 0 ]; then echo "all checks passed"; else echo "some checks FAILED"; fi
exit "$FAILED"
