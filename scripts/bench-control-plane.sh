#!/usr/bin/env bash
# Benchmarks the control plane: a three-member store, the API server, the controller
# manager, the scheduler and 100 hollow nodes (one `miniku kubelet --runtime fake
# --hollow-nodes 100` process, like kubemark), on ports of their own. Creates a ReplicaSet
# of 1,000 and then of 5,000 pods and follows them through a watch: time until every pod
# is bound and Running, pods per second, and p50/p99 pod startup (creation to Running as
# seen through the watch, Kubernetes' SLO definition). Then, with the real Docker engine
# and the local test image (scripts/test-image.sh), a ReplicaSet of 20 on two Docker
# kubelets: p50/p99 from POST to Running. Also a Deployment of 1,000 hollow pods (100 with
# --quick) through the Kubernetes API: time until all are available, and the time a rolling
# update (25% surge) takes to replace every pod.
#
# Usage: scripts/bench-control-plane.sh [--quick] [--json FILE] [--no-docker] [--no-events]
#   --quick      100 and 500 hollow pods, 5 Docker pods (CI runs it)
#   --json FILE  where the raw results go (default bench-control-plane.json)
#   --no-docker  skip the Docker part
#   --no-events  the components record no events (to compare what events cost)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/bench-lib.sh

QUICK=0
NO_EVENTS=()
DOCKER=1
OUT=bench-control-plane.json
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1 ;;
    --no-docker) DOCKER=0 ;;
    --no-events) NO_EVENTS=(--no-events) ;;
    --json) OUT=$2; shift ;;
    *) sed -n '2,17p' "$0"; exit 2 ;;
  esac
  shift
done

install_missing protoc=protobuf-compiler jq=jq curl=curl
if [ "$DOCKER" = 1 ] && ! docker info >/dev/null 2>&1; then
  echo "the Docker engine is not reachable; skipping the Docker part"
  DOCKER=0
fi
[ "$DOCKER" = 1 ] && scripts/test-image.sh

build_release
make_workdir miniku-bench-cp
RUN=$(date +%s)
extra_cleanup() {
  if [ "$DOCKER" = 1 ]; then
    for n in "bench$RUN-docker-a" "bench$RUN-docker-b"; do
      docker ps -aq --filter "label=miniku.node=$n" | xargs -r docker rm -f >/dev/null 2>&1 || true
    done
  fi
}

CLIENT=(0 2679 22679 32679); PEER=(0 12680 22680 32680)
EP="127.0.0.1:2679,127.0.0.1:22679,127.0.0.1:32679"
API=http://127.0.0.1:18080
for i in 1 2 3; do
  start "store$i" "$BIN" store --id "$i" --data-dir "$WORK/store$i" \
    --client-addr "127.0.0.1:${CLIENT[$i]}" --peer-addr "127.0.0.1:${PEER[$i]}" \
    --initial-cluster "1=127.0.0.1:12680,2=127.0.0.1:22680,3=127.0.0.1:32680"
done
start apiserver "$BIN" apiserver --listen 127.0.0.1:18080 --store "$EP"
start controller-manager "$BIN" controller-manager --store "$EP" "${NO_EVENTS[@]}"
start scheduler "$BIN" scheduler --store "$EP" "${NO_EVENTS[@]}"
HOLLOW=100
start hollow "$BIN" kubelet --runtime fake --hollow-nodes "$HOLLOW" --node-name "bench$RUN-hollow" \
  --labels runtime=fake --store "$EP" "${NO_EVENTS[@]}"
if [ "$DOCKER" = 1 ]; then
  for n in a b; do
    start "docker-$n" "$BIN" kubelet --runtime docker --node-name "bench$RUN-docker-$n" \
      --labels runtime=docker --stop-grace-secs 1 --store "$EP" "${NO_EVENTS[@]}"
  done
fi

want=$HOLLOW
[ "$DOCKER" = 1 ] && want=$((HOLLOW + 2))
echo "waiting for $want Ready nodes..."
for t in $(seq 1 300); do
  ready=$(curl -sf "$API/nodes" 2>/dev/null | jq '[.[] | select(.status == "Ready")] | length' 2>/dev/null || echo 0)
  [ "${ready:-0}" -ge "$want" ] && break
  if [ "$t" = 300 ]; then echo "only ${ready:-0} nodes Ready; logs in $WORK" >&2; tail -5 "$WORK"/*.log >&2; exit 1; fi
  sleep 0.2
done
echo "$ready nodes Ready"

if [ "$QUICK" = 1 ]; then SIZES="100 500"; DOCKER_PODS=5; else SIZES="1000 5000"; DOCKER_PODS=20; fi
for n in $SIZES; do
  echo "hollow ReplicaSet of $n..."
  "$BENCH" --json "$RAW" control-plane --api "$API" --name "hollow-$n" --replicas "$n" \
    --node-selector runtime=fake --image hollow:latest --timeout-secs 900 >/dev/null
done
ROLLOUT_PODS=1000
[ "$QUICK" = 1 ] && ROLLOUT_PODS=100
echo "hollow Deployment of $ROLLOUT_PODS, then a rolling update of all of them..."
ROLLOUT_RAW="$WORK/rollout.json"
"$BENCH" --json "$ROLLOUT_RAW" rollout --api "$API" --name "rollout-$ROLLOUT_PODS" \
  --replicas "$ROLLOUT_PODS" --node-selector runtime=fake --image hollow:latest \
  --timeout-secs 900 >/dev/null
if [ "$DOCKER" = 1 ]; then
  echo "Docker ReplicaSet of $DOCKER_PODS..."
  "$BENCH" --json "$RAW" control-plane --api "$API" --name "docker-$DOCKER_PODS" \
    --replicas "$DOCKER_PODS" --node-selector runtime=docker --timeout-secs 300 >/dev/null
fi

echo
echo "Control plane, $(nproc) cores, $(date -u +%F): $HOLLOW hollow nodes$([ "$DOCKER" = 1 ] && echo ', 2 Docker kubelets on one engine')"
jq -r '[.params.image, .params.replicas, (.all_bound_s|.*100|round/100), (.all_running_s|.*100|round/100),
        (.pods_bound_per_s|round), (.pods_running_per_s|round),
        (.p50_ms|round), (.p99_ms|round), (.max_ms|round), (.cleanup_s|.*100|round/100)] | @tsv' "$RAW" \
  | { printf 'image\tpods\tall bound s\tall Running s\tbound/s\tRunning/s\tstartup p50 ms\tp99 ms\tmax ms\tdelete s\n'; cat; } \
  | { command -v column >/dev/null && column -t -s $'\t' || cat; }
echo
jq -r '[.params.replicas, (.created_s|.*100|round/100), (.rolled_s|.*100|round/100), (.pods_replaced_per_s|round)] | @tsv' "$ROLLOUT_RAW" \
  | { printf 'Deployment pods\tall available s\trolling update s\tpods replaced/s\n'; cat; } \
  | { command -v column >/dev/null && column -t -s $'\t' || cat; }
echo
# Events the run left (the benchmark deletes its pods, not what was said about them).
read -r objects occurrences < <(curl -sf "$API/api/v1/events" \
  | jq -r '[(.items|length), ([.items[].count // 1]|add // 0)] | @tsv') || true
echo "events recorded over the run: ${objects:-?} objects, ${occurrences:-?} occurrences, in ${SECONDS}s$([ ${#NO_EVENTS[@]} -gt 0 ] && echo ' (--no-events)')"
echo
echo "CPU seconds per process over the whole run (user+system):"
tick=$(getconf CLK_TCK)
for name in $(printf '%s\n' "${!PIDS[@]}" | sort); do
  stat=$(cat "/proc/${PIDS[$name]}/stat" 2>/dev/null) || continue
  # Fields after the command name's closing parenthesis: utime is the 12th, stime the 13th.
  read -r -a f <<<"${stat##*) }"
  awk -v n="$name" -v u="${f[11]}" -v s="${f[12]}" -v t="$tick" 'BEGIN { printf "  %-20s %6.1f\n", n, (u + s) / t }'
done
cat "$RAW" "$ROLLOUT_RAW" > "$OUT"
echo "raw results: $OUT"
