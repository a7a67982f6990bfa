#!/usr/bin/env bash
# Runs the store under faults and checks what clients and watchers saw (miniku-chaos):
# kill -9 of the leader and of a random member, SIGSTOP/SIGCONT, partitions (each link
# between two members goes through a proxy the harness blackholes), whole-cluster restarts;
# then a linearizability check per key, no lost writes, replicas converged, and the watch
# guarantees. Exits non-zero on any anomaly and keeps the logs.
#
# Usage: scripts/chaos.sh [--minutes N | --seconds N] [--seed S] [--clients N] [--keys N]
#                         [--watchers N] [--history FILE] [--json FILE]
#   default: 20 minutes. All flags: target/release/miniku-chaos --help
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in -h|--help) sed -n '2,12p' "$0"; exit 0 ;; esac
echo "building (release)..."
cargo build --release --quiet -p miniku -p miniku-chaos
args=("$@")
if ! printf '%s\n' "${args[@]}" | grep -qE '^--(minutes|seconds)$'; then
  args=(--minutes 20 "${args[@]}")
fi
exec target/release/miniku-chaos "${args[@]}"
