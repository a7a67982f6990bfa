#!/usr/bin/env bash
# Builds the image miniku/miniku:<version> (and :latest) with no registry and no base image:
# a root filesystem holding the release binary (stripped) with the shared libraries `ldd`
# names, Debian's static busybox with a link per applet (sh, ip, ps, kill, wget, ...), and
# curl with its libraries; loaded with `docker import`, as scripts/test-image.sh does for
# the pods' busybox image. scripts/hosts.sh runs it.
#
# Size: the stripped binary is about 32 MB and curl's libraries about 16 MB, above the
# 40 MB target together; so the binary is kept gzip'd (/usr/lib/miniku/miniku.gz, 12 MB)
# and /bin/miniku is a small sh script that unpacks it on a container's first start (into
# /var/cache/miniku, about 0.5 s) and execs it in its own place (same pid, same arguments).
# MINIKU_IMAGE_PLAIN=1 puts the binary itself at /bin/miniku instead.
#
# Usage: scripts/image.sh
# Environment: MINIKU_BIN (default $CARGO_TARGET_DIR or target, then /release/miniku); MINIKU_NO_BUILD=1 skips
#   `cargo build --release`; MINIKU_IMAGE (default miniku/miniku) names the image.
set -euo pipefail

cd "$(dirname "$0")/.."
BIN=${MINIKU_BIN:-${CARGO_TARGET_DIR:-target}/release/miniku}
IMAGE=${MINIKU_IMAGE:-miniku/miniku}
# The workspace's version ([workspace.package] in Cargo.toml).
VERSION=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version *= *"\(.*\)"/\1/p' Cargo.toml | head -n 1)
[ -n "$VERSION" ] || { echo "no version in Cargo.toml's [workspace.package]" >&2; exit 1; }

if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
need_package() { # PACKAGE: installs it with apt-get when missing
  dpkg -s "$1" >/dev/null 2>&1 && return 0
  echo "installing $1..."
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$1" >/dev/null
}
need_package busybox-static
need_package curl
command -v strip >/dev/null || need_package binutils

if [ -z "${MINIKU_NO_BUILD:-}" ]; then
  command -v protoc >/dev/null || need_package protobuf-compiler
  echo "building (release)..."
  cargo build --release --bin miniku
fi
[ -x "$BIN" ] || { echo "no binary at $BIN (build it, or set MINIKU_BIN)" >&2; exit 1; }

ROOT=$(mktemp -d)
trap 'rm -rf "$ROOT"' EXIT
mkdir -p "$ROOT"/{bin,usr/bin,usr/lib/miniku,etc,tmp,proc,sys,dev,var/lib/miniku,var/log/miniku,var/cache/miniku,etc/miniku}
chmod 1777 "$ROOT/tmp"

# Copies an executable and every shared library ldd names for it (and the loader), each
# at its own path.
copy_with_libs() {
  local exe=$1 dest=$2 lib
  cp "$exe" "$ROOT$dest"
  for lib in $(ldd "$exe" | grep -o '/[^ ]*' | sort -u); do
    [ -e "$ROOT$lib" ] && continue
    mkdir -p "$ROOT$(dirname "$lib")"
    cp -L "$lib" "$ROOT$lib"
  done
}

copy_with_libs "$BIN" /bin/miniku
strip "$ROOT/bin/miniku"
if [ -z "${MINIKU_IMAGE_PLAIN:-}" ]; then
  gzip -9 "$ROOT/bin/miniku"
  mv "$ROOT/bin/miniku.gz" "$ROOT/usr/lib/miniku/miniku.gz"
  cat >"$ROOT/bin/miniku" <<'WRAPPER'
#!/bin/sh
# Miniku is kept gzip'd in this image (/usr/lib/miniku/miniku.gz): unpacked once per
# container, then run in this script's place (same pid, same arguments).
bin=/var/cache/miniku/miniku
if [ ! -x "$bin" ]; then
  gunzip -c /usr/lib/miniku/miniku.gz >"$bin.$$" && chmod 755 "$bin.$$" && mv -f "$bin.$$" "$bin" \
    || { echo "miniku: cannot unpack /usr/lib/miniku/miniku.gz into /var/cache/miniku" >&2; exit 1; }
fi
exec "$bin" "$@"
WRAPPER
  chmod 755 "$ROOT/bin/miniku"
fi
copy_with_libs "$(command -v curl)" /usr/bin/curl
# Debian's busybox-static: /bin/busybox, statically linked.
cp /bin/busybox "$ROOT/bin/busybox"
for applet in $("$ROOT/bin/busybox" --list); do
  [ -e "$ROOT/bin/$applet" ] || ln -s busybox "$ROOT/bin/$applet"
done
echo "root:x:0:0:root:/:/bin/sh" >"$ROOT/etc/passwd"
echo "root:x:0:" >"$ROOT/etc/group"
printf 'hosts: files dns\n' >"$ROOT/etc/nsswitch.conf"

tar -C "$ROOT" -c . | docker import \
  --change 'ENV PATH=/bin:/usr/bin' \
  --change 'ENTRYPOINT ["/bin/miniku"]' \
  --change 'CMD ["--help"]' \
  --change "LABEL org.opencontainers.image.version=$VERSION" \
  - "$IMAGE:$VERSION" >/dev/null
docker tag "$IMAGE:$VERSION" "$IMAGE:latest"
SIZE=$(docker image inspect "$IMAGE:$VERSION" --format '{{.Size}}')
echo "built $IMAGE:$VERSION and $IMAGE:latest: $((SIZE / 1000000)) MB ($SIZE bytes)"
echo "  $(docker run --rm "$IMAGE:$VERSION" --version 2>/dev/null || echo 'miniku --version did not run')"
if [ "$SIZE" -ge 40000000 ]; then
  echo "warning: above the 40 MB target" >&2
fi
