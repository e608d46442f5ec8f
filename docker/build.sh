#!/usr/bin/env bash
# Build the component image with podman: no Docker engine, no registry, no network inside
# the build. Idempotent; prints how long each phase took.
#   1. base image localhost/debian-py:bookworm (debootstrap minbase + python3, python3-venv;
#      Debian 12's Python 3.11, like the lock), made once and reused
#   2. build context docker/context/ (docker/build-context.sh: wheels fetched on the host,
#      reused while requirements.lock is unchanged; native libraries; project source)
#   3. podman build --network none --build-arg BASE=<base> (unchanged layers are reused)
#
#   docker/build.sh                 # -> localhost/par-components:cpu
#   podman run --rm localhost/par-components:cpu components.collect --help
#
# Environment: PAR_IMAGE (tag), PAR_BASE_IMAGE (an existing base instead of debootstrap,
# e.g. python:3.11-slim where a registry is reachable), CONTAINERS_CONF (default
# docker/containers.conf: runc, cgroupfs, file events, bounded ulimits). Needs root
# (debootstrap) for the base image only.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export CONTAINERS_CONF="${CONTAINERS_CONF:-$ROOT/docker/containers.conf}"
IMAGE="${PAR_IMAGE:-localhost/par-components:cpu}"
BASE="${PAR_BASE_IMAGE:-localhost/debian-py:bookworm}"
CTX="${PAR_IMAGE_CONTEXT:-$ROOT/docker/context}"
export PAR_IMAGE_CONTEXT="$CTX"

# One build at a time per context (two test sessions may ask at once): the second waits.
mkdir -p "$CTX"
exec 9>"$CTX/.build.lock"
flock 9

log() { printf '[build] %s\n' "$*" >&2; }
timings=()
timed() { # timed NAME COMMAND...: run it and remember its wall time
  local name="$1" start end
  shift
  start="$(date +%s%N)"
  "$@"
  end="$(date +%s%N)"
  timings+=("$(awk -v n="$name" -v ns="$((end - start))" 'BEGIN { printf "%-8s %6.1f s", n, ns / 1e9 }')")
}

make_base() {
  if podman image exists "$BASE"; then
    log "base image $BASE present"
    return 0
  fi
  [ "$BASE" = localhost/debian-py:bookworm ] || {
    log "base image $BASE not found (pull it, or unset PAR_BASE_IMAGE for the debootstrap base)"
    exit 1
  }
  local mirror dir
  mirror="$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)"
  mirror="${mirror:-http://deb.debian.org/debian}"
  dir="$(mktemp -d /var/tmp/par-debian-py.XXXXXX)"
  log "debootstrap bookworm (minbase + python3, python3-venv) from $mirror"
  if ! debootstrap --variant=minbase --include=python3,python3-venv bookworm "$dir" "$mirror" >"$dir.log" 2>&1; then
    tail -n 30 "$dir.log" >&2
    rm -rf "$dir" "$dir.log"
    exit 1
  fi
  rm -rf "$dir"/var/cache/apt/archives/*.deb "$dir"/var/lib/apt/lists/*
  tar -C "$dir" -c . | podman import --quiet - "$BASE" >/dev/null
  rm -rf "$dir" "$dir.log"
  log "base image $BASE imported"
}

PREVIOUS=""
build_image() {
  PREVIOUS="$(podman image inspect --format '{{.Id}}' "$IMAGE" 2>/dev/null || true)"
  # Each line of podman's output gets the seconds since the build started: what dominates shows.
  local t0=$SECONDS line
  podman build --network none --layers --build-arg "BASE=$BASE" -t "$IMAGE" -f "$CTX/Dockerfile" "$CTX" 2>&1 |
    while IFS= read -r line; do printf '[%4ds] %s\n' "$((SECONDS - t0))" "$line"; done
}

remove_previous() { # the replaced image (a few GB) goes, unless something still uses it
  if [ -n "$PREVIOUS" ] && [ "$PREVIOUS" != "$(podman image inspect --format '{{.Id}}' "$IMAGE")" ]; then
    podman rmi "$PREVIOUS" >/dev/null 2>&1 || true
  fi
}

timed base make_base
timed context "$ROOT/docker/build-context.sh"
timed image build_image
timed cleanup remove_previous
log "image $IMAGE built ($(podman image inspect --format '{{.Size}}' "$IMAGE" | numfmt --to=iec)); timings:"
printf '[build]   %s\n' "${timings[@]}" >&2
