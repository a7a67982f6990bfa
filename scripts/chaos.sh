#!/usr/bin/env bash
# Runs the store under faults and checks what clients and watchers saw (miniku-chaos):
# kill -9 of the leader and of a random member, SIGSTOP/SIGCONT, partitions (each link
# between two members goes through a proxy the harness blackholes), whole-cluster restarts;
# then a linearizability check per key, no lost writes, replicas converged, and the watch
# guarantees. Exits non-zero on any anomaly and keeps the logs.
#
# With --hosts the members are hosts on a private Docker network (scripts/hosts.sh, TLS and
# tokens), faulted with docker kill, the cgroup freezer and network disconnects; a rolling
# upgrade to a second image and a membership change (a learner joined, promoted, an old
# member removed) follow the faults. The images are built first (scripts/image.sh).
#
# With --hosts --control-plane: a ReplicaSet of 6 pods (miniku/busybox:latest, built by
# scripts/test-image.sh if missing) on the two worker hosts, one worker isolated for longer
# than the pod eviction timeout and healed, cycle after cycle for --seconds (at least one):
# never two containers for one pod, never more pods than desiredCount, the pods replaced on
# the other worker, and the isolated kubelet's stale containers removed after healing.
#
# Usage: scripts/chaos.sh [--hosts [--control-plane]] [--minutes N | --seconds N] [--seed S]
#                         [--clients N] [--keys N] [--watchers N] [--history FILE] [--json FILE]
#   default: 20 minutes. All flags: target/release/miniku-chaos --help
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in -h|--help) sed -n '2,21p' "$0"; exit 0 ;; esac
echo "building (release)..."
cargo build --release --quiet -p miniku -p miniku-chaos
args=("$@")
if ! printf '%s\n' "${args[@]}" | grep -qE '^--(minutes|seconds)$'; then
  args=(--minutes 20 "${args[@]}")
fi
if printf '%s\n' "${args[@]}" | grep -qx -- '--hosts'; then
  # The hosts' image, and the rolling upgrade's: the same binary, imported again.
  MINIKU_NO_BUILD=1 scripts/image.sh
  if printf '%s\n' "${args[@]}" | grep -qx -- '--control-plane'; then
    scripts/test-image.sh   # the pods' image
  else
    MINIKU_NO_BUILD=1 MINIKU_IMAGE=miniku/miniku-next scripts/image.sh
  fi
fi
exec target/release/miniku-chaos "${args[@]}"
