#!/usr/bin/env bash
# Runs Miniku's whole test suite: unit tests, storage suite, real-process store tests,
# control-plane tests, the Docker end-to-end tests, the quick benchmark against etcd (so
# it never rots), the checks across hosts on a private Docker network, and a short chaos
# run across those hosts. Installs what they need first (Debian packages and the local
# busybox image), so it works on a fresh machine.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v curl >/dev/null || need_apt+=(curl)
command -v jq >/dev/null || need_apt+=(jq)
[ -x /bin/busybox ] || dpkg -s busybox-static >/dev/null 2>&1 || need_apt+=(busybox-static)
# The benchmark's etcd client is generated from etcd's .proto files at build time.
command -v protoc >/dev/null || need_apt+=(protobuf-compiler)
command -v etcd >/dev/null || need_apt+=(etcd-server)
command -v etcdctl >/dev/null || need_apt+=(etcd-client)
# The Kubernetes API tests drive the real kubectl.
command -v kubectl >/dev/null || need_apt+=(kubernetes-client)
# The checks across hosts (scripts/test-hosts.sh): certificates, compose, the image's parts.
command -v openssl >/dev/null || need_apt+=(openssl)
command -v strip >/dev/null || need_apt+=(binutils)
if docker info >/dev/null 2>&1; then
  command -v docker-compose >/dev/null || need_apt+=(docker-compose)
fi
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}"
  else
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}"
  fi
fi

# The Docker end-to-end tests need the local image (no registry here).
if docker info >/dev/null 2>&1; then
  scripts/test-image.sh
elif [ "${CI:-}" = "true" ]; then
  echo "CI=true but the Docker engine is not reachable: the end-to-end tests cannot run" >&2
  exit 1
else
  echo "warning: Docker engine not reachable; the Docker tests will say so and be skipped" >&2
fi

# Kubernetes' official Python client, for tests/kubectl.rs, in a virtualenv of our own.
if [ ! -x target/pyenv/bin/python ] || ! target/pyenv/bin/python -c 'import kubernetes' 2>/dev/null; then
  command -v python3 >/dev/null || need_python=1
  if [ -n "${need_python:-}" ] || ! python3 -m venv --help >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi
    $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq python3 python3-venv
  fi
  mkdir -p target
  python3 -m venv target/pyenv
  target/pyenv/bin/pip install -q 'kubernetes==37.0.2'
fi

cargo build --workspace --all-targets
cargo test --workspace -- --test-threads=2

# Benchmarks are not tests: this only checks that the benchmark still runs end to end.
scripts/bench.sh --quick --json target/bench-quick.json
scripts/bench-control-plane.sh --quick --json target/bench-control-plane-quick.json

# Miniku across five hosts on a private Docker network (TLS, tokens, kill, pause, isolate):
# the image from the release binary the benchmarks built, then 24 checks in about a minute.
if docker info >/dev/null 2>&1; then
  MINIKU_NO_BUILD=1 scripts/image.sh
  scripts/test-hosts.sh
  # The store across those hosts under faults (docker kill, pause, network disconnects),
  # then a rolling upgrade and a membership change, judged by the chaos checkers.
  scripts/chaos.sh --hosts --seconds 60 --json target/chaos-hosts.json
  # A worker host isolated past the pod eviction timeout, then healed: one cycle.
  scripts/chaos.sh --hosts --control-plane --seconds 30 --json target/chaos-hosts-cp.json
fi
