#!/usr/bin/env bash
# System tools that the test suite drives for real, installed from Debian's packages
# (idempotent; skipped when every tool is already there):
#   podman, runc, debootstrap  build and run the component image with no Docker engine
#   docker-compose (v1)        validates infra/docker-compose.yaml with no engine
#   chromium                   headless browser for the Airflow UI test (Playwright)
#   postgresql, redis-server   servers the tests start on loopback (Redis: the Celery
#                              executor's broker)
# Needs root (or passwordless sudo). `make run` does not need any of these.
set -euo pipefail

log() { printf '[test-tools] %s\n' "$*" >&2; }

declare -A PROVIDES=(
  [podman]=podman [runc]=runc [debootstrap]=debootstrap [docker-compose]=docker-compose
  [chromium]=chromium [redis-server]=redis-server [uidmap]=newuidmap [slirp4netns]=slirp4netns [fuse-overlayfs]=fuse-overlayfs
)
missing=()
for pkg in "${!PROVIDES[@]}"; do
  command -v "${PROVIDES[$pkg]}" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ ! -x /usr/lib/postgresql/15/bin/initdb ] && ! command -v initdb >/dev/null 2>&1; then
  missing+=(postgresql)
fi
if [ ${#missing[@]} -eq 0 ]; then
  log "test tools present"
  exit 0
fi

SUDO=()
[ "$(id -u)" -eq 0 ] || SUDO=(sudo -n)
command -v apt-get >/dev/null || { log "apt-get not found: install ${missing[*]} yourself"; exit 1; }
log "installing ${missing[*]} from Debian's packages"
"${SUDO[@]}" apt-get -qq update
DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
log "test tools installed"
