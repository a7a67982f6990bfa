#!/usr/bin/env bash
# Benchmarks the Miniku store side by side with etcd 3.4 on this machine: both as
# three-member clusters on loopback, data on the same disk, driven by the same load
# generator, runs interleaved and repeated. The headline table drives both through the same
# gRPC client (etcd-client; Miniku serves etcd's API); a second table gives Miniku over its
# own HTTP API. The full run also prints `etcdctl check perf` verdicts for both. Memory and
# disk come last, on fresh clusters (10,000 keys quick; 100,000 and 1,000,000 full). Every
# run is written as JSON lines.
#
# Usage: scripts/bench.sh [--quick] [--json FILE]
#   --quick      small sizes, one repetition, 15 s of steady load (a few minutes; CI runs it)
#   --json FILE  where the raw results go (default bench-results.json)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/bench-lib.sh

QUICK=0
OUT=bench-results.json
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1 ;;
    --json) OUT=$2; shift ;;
    *) sed -n '2,12p' "$0"; exit 2 ;;
  esac
  shift
done

install_missing etcd=etcd-server etcdctl=etcd-client protoc=protobuf-compiler jq=jq curl=curl \
  ps=procps
build_release
make_workdir miniku-bench

M_CLIENT=(0 2579 22579 32579); M_PEER=(0 12580 22580 32580)
E_CLIENT=(0 2479 22479 32479); E_PEER=(0 12480 22480 32480)
M_EP="127.0.0.1:2579,127.0.0.1:22579,127.0.0.1:32579"
E_EP="127.0.0.1:2479,127.0.0.1:22479,127.0.0.1:32479"

start_miniku() {
  local i=$1
  start "miniku$i" "$BIN" store --id "$i" --data-dir "$WORK/miniku$i" \
    --client-addr "127.0.0.1:${M_CLIENT[$i]}" --peer-addr "127.0.0.1:${M_PEER[$i]}" \
    --initial-cluster "1=127.0.0.1:12580,2=127.0.0.1:22580,3=127.0.0.1:32580"
}

start_etcd() {
  local i=$1
  start "etcd$i" etcd --name "e$i" --data-dir "$WORK/etcd$i" \
    --listen-client-urls "http://127.0.0.1:${E_CLIENT[$i]}" \
    --advertise-client-urls "http://127.0.0.1:${E_CLIENT[$i]}" \
    --listen-peer-urls "http://127.0.0.1:${E_PEER[$i]}" \
    --initial-advertise-peer-urls "http://127.0.0.1:${E_PEER[$i]}" \
    --initial-cluster "e1=http://127.0.0.1:12480,e2=http://127.0.0.1:22480,e3=http://127.0.0.1:32480" \
    --initial-cluster-state new --initial-cluster-token miniku-bench
}

# Prints the member number (1-3) of the current leader.
leader_of() {
  if [ "$1" = miniku ]; then
    for port in 2579 22579 32579; do
      l=$(curl -sf "http://127.0.0.1:$port/v1/cluster" 2>/dev/null | jq -r '.leader_id // empty' || true)
      if [ -n "$l" ]; then echo "$l"; return 0; fi
    done
  else
    etcdctl --endpoints="$E_EP" --command-timeout=2s endpoint status -w json 2>/dev/null \
      | jq -r '.[] | select(.Status.header.member_id == .Status.leader) | .Endpoint' \
      | sed -E 's/.*:([0-9]+)$/\1/' | while read -r port; do
          for i in 1 2 3; do [ "${E_CLIENT[$i]}" = "$port" ] && echo "$i"; done
        done | head -1
  fi
}

# Prints the cluster's Raft term: the highest any member reports (a candidate's term counts).
term_of() {
  if [ "$1" = miniku ]; then
    for port in 2579 22579 32579; do
      curl -sf "http://127.0.0.1:$port/v1/cluster" 2>/dev/null | jq -r '.term // empty' || true
    done | sort -n | tail -1
  else
    etcdctl --endpoints="$E_EP" --command-timeout=2s endpoint status -w json 2>/dev/null \
      | jq -r '.[].Status | (.raftTerm // .header.raft_term // empty)' | sort -n | tail -1
  fi
}

wait_ready() {
  for _ in $(seq 1 150); do
    if [ -n "$(leader_of "$1")" ]; then return 0; fi
    sleep 0.2
  done
  echo "$1 has no leader; logs in $WORK" >&2
  exit 1
}

# Starts all six members (over whatever their data directories hold) and waits for leaders.
start_clusters() {
  local i
  for i in 1 2 3; do start_miniku "$i"; start_etcd "$i"; done
  wait_ready miniku
  wait_ready etcd
}

start_clusters
echo "Miniku on $M_EP, etcd $(etcd --version | awk 'NR == 1 {print $3}') on $E_EP; data in $WORK"

run() { # system, then miniku-bench arguments
  local sys=$1; shift
  local ep=$M_EP
  [ "$sys" = etcd ] && ep=$E_EP
  "$BENCH" --system "$sys" --endpoints "$ep" --json "$RAW" "$@" >/dev/null
}

if [ "$QUICK" = 1 ]; then
  REPS=1; FAILOVERS=3; LOAD_KEYS=10000; STEADY_SECS=15
  WORKLOADS=(
    "put --clients 1 --requests 1000"
    "put --clients 64 --requests 5000"
    "get --clients 64 --requests 5000"
    "get --clients 64 --requests 5000 --serializable"
    "cas --clients 16 --requests 1000"
    "watch --watchers 100 --events 50"
  )
else
  REPS=3; FAILOVERS=5; LOAD_KEYS=100000; STEADY_SECS=300
  WORKLOADS=(
    "put --clients 1 --requests 3000"
    "put --clients 16 --requests 20000"
    "put --clients 64 --requests 30000"
    "put --clients 256 --requests 30000"
    "get --clients 16 --requests 20000"
    "get --clients 64 --requests 30000"
    "get --clients 16 --requests 20000 --serializable"
    "get --clients 64 --requests 30000 --serializable"
    "cas --clients 16 --requests 5000"
    "watch --watchers 100 --events 200"
    "watch --watchers 1000 --events 100"
  )
fi

for rep in $(seq 1 "$REPS"); do
  for w in "${WORKLOADS[@]}"; do
    # Alternate which system goes first, so drift on a noisy machine shows as spread.
    if [ $((rep % 2)) = 1 ]; then order="miniku-grpc etcd miniku"; else order="etcd miniku-grpc miniku"; fi
    for sys in $order; do
      echo "  [$rep/$REPS] $sys $w"
      # shellcheck disable=SC2086
      run "$sys" $w
    done
  done
done

# Spurious elections: term changes during STEADY_SECS of puts at 64 clients, no faults. The
# puts' own figures go to a file of their own (they are not a throughput row).
for sys in miniku-grpc etcd; do
  cluster=${sys%-grpc}
  ep=$M_EP; [ "$sys" = etcd ] && ep=$E_EP
  echo "  $sys: ${STEADY_SECS} s of steady puts, counting term changes"
  steady="$WORK/steady-$cluster.json"
  : >"$steady"
  before=$(term_of "$cluster")
  end=$((SECONDS + STEADY_SECS))
  while [ "$SECONDS" -lt "$end" ]; do
    "$BENCH" --system "$sys" --endpoints "$ep" --json "$steady" put --clients 64 --requests 10000 >/dev/null
  done
  after=$(term_of "$cluster")
  jq -sc --arg sys "$cluster" --argjson secs "$STEADY_SECS" --argjson before "${before:-0}" --argjson after "${after:-0}" \
    '{system: $sys, workload: "elections", params: {clients: 64, seconds: $secs}, term_before: $before, term_after: $after,
      term_changes: ($after - $before), writes: (map(.ops) | add), errors: (map(.errors) | add), max_ms: (map(.max_ms) | max)}' \
    "$steady" >>"$RAW"
done

# Failover: steady writes, kill -9 the leader, time until writes flow again.
for n in $(seq 1 "$FAILOVERS"); do
  for sys in miniku-grpc etcd; do
    echo "  failover $n/$FAILOVERS: $sys"
    ep=$M_EP; [ "$sys" = etcd ] && ep=$E_EP
    cluster=${sys%-grpc}
    fo="$WORK/failover.json"
    : >"$fo"
    "$BENCH" --system "$sys" --endpoints "$ep" --json "$fo" failover --seconds 6 >/dev/null &
    bench_pid=$!
    sleep 2
    l=""
    for _ in $(seq 1 50); do
      l=$(leader_of "$cluster" || true)
      [ -n "$l" ] && break
      sleep 0.1
    done
    if [ -z "$l" ]; then
      echo "  no $sys leader found; this failover run is skipped" >&2
      wait "$bench_pid" || true
      continue
    fi
    killed_ms=$(date +%s%3N)
    kill -9 "${PIDS[$cluster$l]}"
    wait "$bench_pid" || echo "  the failover load generator failed" >&2
    # From the kill to the first write after the longest gap: writes flowing again.
    jq -c --argjson k "$killed_ms" '. + {killed_unix_ms: $k, kill_to_write_ms: (.gap_to_unix_ms - $k)}' \
      "$fo" >>"$RAW"
    "start_$cluster" "$l"
    wait_ready "$cluster"
    sleep 1
  done
done

# etcdctl's own verdict on each system (60 s of puts per load), full runs only.
if [ "$QUICK" = 0 ]; then
  for load in s m; do
    for sys in miniku etcd; do
      ep=$M_EP; [ "$sys" = etcd ] && ep=$E_EP
      echo "  etcdctl check perf --load=$load: $sys"
      verdict=$(ETCDCTL_API=3 etcdctl --endpoints="$ep" check perf --load="$load" 2>&1 | tr -d '\r' | tail -n 8 || true)
      jq -nc --arg sys "$sys" --arg load "$load" --arg out "$verdict" \
        '{system: $sys, workload: "check-perf", params: {load: $load}, verdict: (if ($out | test("FAIL")) then "FAIL" elif ($out | test("PASS")) then "PASS" else "ERROR" end), output: $out}' >>"$RAW"
    done
  done
fi

# Memory and disk on fresh clusters (the rows above leave a million or more keys behind):
# both systems restarted with empty data directories, then LOAD_KEYS keys ("l0000000"
# onwards, 256-byte values) loaded; in full runs then 1,000,000 (the first 100,000
# rewritten, 900,000 more). Each row: the largest member's RSS, the first member's data
# directory.
fresh_clusters() {
  local name i
  for name in miniku1 miniku2 miniku3 etcd1 etcd2 etcd3; do kill -9 "${PIDS[$name]}" 2>/dev/null || true; done
  for name in miniku1 miniku2 miniku3 etcd1 etcd2 etcd3; do
    while kill -0 "${PIDS[$name]}" 2>/dev/null; do sleep 0.1; done
  done
  for i in 1 2 3; do rm -rf "$WORK/miniku$i" "$WORK/etcd$i"; done
  start_clusters
  # A few puts first, so that connections and the first leader's entry are not the load's
  # maximum latency.
  "$BENCH" --system miniku-grpc --endpoints "$M_EP" put --clients 4 --requests 200 >/dev/null
  "$BENCH" --system etcd --endpoints "$E_EP" put --clients 4 --requests 200 >/dev/null
}
memory_row() { # system (miniku-grpc or etcd), keys
  local sys=$1 keys=$2 cluster=${1%-grpc} rss=0 r i disk
  echo "  $sys: loading $keys keys"
  run "$sys" load --keys "$keys" --clients 64
  for i in 1 2 3; do
    r=$(ps -o rss= -p "${PIDS[$cluster$i]}" | tr -d ' ')
    [ "$r" -gt "$rss" ] && rss=$r
  done
  disk=$(du -sb "$WORK/${cluster}1" | cut -f1)
  echo "{\"system\":\"$cluster\",\"workload\":\"memory\",\"params\":{\"keys\":$keys},\"max_rss_mb\":$((rss / 1024)),\"disk_mb_per_node\":$((disk / 1048576))}" >>"$RAW"
}
fresh_clusters
for sys in miniku-grpc etcd; do
  memory_row "$sys" "$LOAD_KEYS"
  if [ "$QUICK" = 0 ]; then memory_row "$sys" 1000000; fi
done

mkdir -p "$(dirname "$OUT")"
cp "$RAW" "$OUT"

# One table: Miniku driven as $1 (miniku-grpc or miniku) beside etcd. Every figure is the
# median over the run's repetitions, with (min..max) after it when there were several.
table() {
  jq -rs --arg sys "$1" '
  def med: sort | if length == 0 then null else .[(length / 2 | floor)] end;
  def fmt: if . == null then "-" else (. * 100 | round / 100 | tostring) end;
  def spread: if length == 0 then "-" elif length == 1 then (.[0] | fmt)
    else "\(med | fmt) (\(min | fmt)..\(max | fmt))" end;
  def key: .workload + " " + ((.params // {}) | to_entries | map("\(.key)=\(.value)") | join(" "));
  # From the kill to the first write after it, when the longest gap is the one the kill is in
  # (a later stall may be longer; the last write before the kill may land just after the
  # recorded time).
  def kill_to_write: select(.killed_unix_ms != null and .gap_from_unix_ms <= .killed_unix_ms + 100
    and .killed_unix_ms <= .gap_to_unix_ms) | .kill_to_write_ms;
  def cluster_wide: .workload == "memory" or .workload == "check-perf" or .workload == "elections";
  group_by(key) | map({
      name: (.[0] | key),
      m: [.[] | select(.system == $sys or (cluster_wide and .system == "miniku"))],
      e: [.[] | select(.system == "etcd")]
    }) | .[] | select((.m | length) > 0) |
  if (.name | startswith("memory")) then
    "\(.name)\t max RSS MB: miniku \(.m | map(.max_rss_mb) | spread)  etcd \(.e | map(.max_rss_mb) | spread)   disk MB/node: miniku \(.m | map(.disk_mb_per_node) | spread)  etcd \(.e | map(.disk_mb_per_node) | spread)"
  elif (.name | startswith("check-perf")) then
    "\(.name)\t etcdctl check perf: miniku \(.m | map(.verdict) | join(","))  etcd \(.e | map(.verdict) | join(","))"
  elif (.name | startswith("elections")) then
    "\(.name)\t spurious elections (term changes, no faults): miniku \(.m | map(.term_changes) | add)  etcd \(.e | map(.term_changes) | add) | puts miniku \(.m | map(.writes) | add) etcd \(.e | map(.writes) | add) | max ms \(.m | map(.max_ms) | spread) vs \(.e | map(.max_ms) | spread)"
  elif (.name | startswith("failover")) then
    "\(.name)\t writes stalled ms, median (min..max) of \(.m | length) vs \(.e | length): miniku \(.m | map(.longest_gap_ms) | spread)  etcd \(.e | map(.longest_gap_ms) | spread)   ratio \(((.m | map(.longest_gap_ms) | med) / (.e | map(.longest_gap_ms) | med)) | fmt) | kill to next write ms: miniku \(.m | map(kill_to_write) | spread)  etcd \(.e | map(kill_to_write) | spread)"
  else
    (.m | map(.throughput) | med) as $mt | (.e | map(.throughput) | med) as $et |
    "\(.name)\t ops/s miniku \(.m | map(.throughput) | spread) etcd \(.e | map(.throughput) | spread) ratio \(($mt / $et) | fmt) | p50 ms \(.m | map(.p50_ms) | spread) vs \(.e | map(.p50_ms) | spread) | p99 ms \(.m | map(.p99_ms) | spread) vs \(.e | map(.p99_ms) | spread) | max ms \(.m | map(.max_ms) | spread) vs \(.e | map(.max_ms) | spread)" +
    (if (.m[0].missing // null) != null then " | missing events \(.m | map(.missing) | add) vs \(.e | map(.missing) | add)" else "" end) +
    (if (.m[0].succeeded // null) != null then " | cas won \(.m | map(.succeeded) | med) vs \(.e | map(.succeeded) | med)" else "" end)
  end' "$OUT" | if command -v column >/dev/null; then column -t -s $'\t'; else tr '\t' ' '; fi
}

ETCD_VERSION=$(etcd --version | awk 'NR == 1 {print $3}')
echo
echo "Miniku store vs etcd $ETCD_VERSION, both through etcd's gRPC API and the same client — $(date -u +%Y-%m-%d), $(nproc) cores, $REPS run(s) each, $FAILOVERS failover(s): median (min..max)"
table miniku-grpc
echo
echo "Miniku over its HTTP API vs etcd $ETCD_VERSION over gRPC"
table miniku
echo
echo "raw results: $OUT"
