# Sourced by scripts/bench.sh and scripts/bench-control-plane.sh: the setup both share.
# Installs the tools that are missing, builds the release binaries (BIN, BENCH), and runs
# processes from a work directory (WORK, with RAW for the results) that is removed, and
# every process started with `start` killed, when the script exits.

# install_missing COMMAND=PACKAGE...: installs (apt-get) the package of every command that
# is not on the PATH.
install_missing() {
  local need=() pair
  for pair in "$@"; do
    command -v "${pair%%=*}" >/dev/null || need+=("${pair#*=}")
  done
  if [ ${#need[@]} -gt 0 ]; then
    local sudo=sudo
    [ "$(id -u)" = 0 ] && sudo=""
    echo "installing ${need[*]}..."
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
  fi
}

# build_release: the release `miniku` (BIN) and `miniku-bench` (BENCH).
# MINIKU_BIN_DIR=DIR: use DIR/miniku and DIR/miniku-bench as they are (a copy of an earlier
# build), without building.
build_release() {
  if [ -n "${MINIKU_BIN_DIR:-}" ]; then
    BIN=$MINIKU_BIN_DIR/miniku
    BENCH=$MINIKU_BIN_DIR/miniku-bench
    return
  fi
  echo "building (release)..."
  cargo build --release --quiet -p miniku -p miniku-bench
  BIN=${CARGO_TARGET_DIR:-target}/release/miniku
  BENCH=${CARGO_TARGET_DIR:-target}/release/miniku-bench
}

# make_workdir NAME: WORK (a new directory), RAW (an empty results file in it), PIDS (name ->
# pid of what `start` started) and the exit trap. A script's own `extra_cleanup` function,
# if it defines one, runs in the trap before WORK is removed.
make_workdir() {
  WORK=$(mktemp -d "${TMPDIR:-/tmp}/$1.XXXXXX")
  RAW="$WORK/raw.json"
  : >"$RAW"
  declare -gA PIDS=()
  trap cleanup_workdir EXIT
}

cleanup_workdir() {
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  if declare -F extra_cleanup >/dev/null; then extra_cleanup; fi
  rm -rf "$WORK"
}

# start NAME COMMAND...: runs COMMAND in the background, its output appended to
# $WORK/NAME.log, its pid in PIDS[NAME].
start() {
  local name=$1
  shift
  "$@" >>"$WORK/$name.log" 2>&1 &
  PIDS[$name]=$!
  disown "$!"
}
