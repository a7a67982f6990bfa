#!/usr/bin/env bash
# Builds the local test image miniku/busybox:latest from Debian's static busybox: a root
# filesystem holding /bin/busybox and a link per applet (sh, sleep, httpd, nc, ...), loaded
# with `docker import`. For machines without a registry; elsewhere pods can use any image.
#
# Usage: scripts/test-image.sh [--force]   (skips the build when the image exists)
set -euo pipefail

IMAGE=${MINIKU_TEST_IMAGE:-miniku/busybox:latest}

if [ "${1:-}" != "--force" ] && docker image inspect "$IMAGE" >/dev/null 2>&1; then
  echo "$IMAGE is present"
  exit 0
fi

# Debian's busybox-static puts a statically linked busybox at /bin/busybox.
BUSYBOX=/bin/busybox
if ! dpkg -s busybox-static >/dev/null 2>&1; then
  echo "installing busybox-static..."
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq busybox-static >/dev/null
fi

ROOT=$(mktemp -d)
trap 'rm -rf "$ROOT"' EXIT
mkdir -p "$ROOT/bin" "$ROOT/tmp" "$ROOT/etc" "$ROOT/www" "$ROOT/proc" "$ROOT/sys" "$ROOT/dev"
cp "$BUSYBOX" "$ROOT/bin/busybox"
for applet in $("$ROOT/bin/busybox" --list); do
  [ "$applet" = busybox ] || ln -sf busybox "$ROOT/bin/$applet"
done
echo "root:x:0:0:root:/:/bin/sh" >"$ROOT/etc/passwd"
echo "hello from miniku" >"$ROOT/www/index.html"
chmod 1777 "$ROOT/tmp"

tar -C "$ROOT" -c . | docker import \
  --change 'ENV PATH=/bin' \
  --change 'CMD ["/bin/sleep","3600"]' \
  - "$IMAGE" >/dev/null
echo "built $IMAGE ($(docker image inspect "$IMAGE" --format '{{.Size}}') bytes)"
