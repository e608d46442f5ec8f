#!/usr/bin/env bash
# One-machine set-up, idempotent: a venv at .venv with the locked stack, the project
# installed editable, and a software Vulkan driver (Mesa lavapipe) for ManiSkill's
# CPU rendering, unpacked into .vulkan/ (no system package is changed).
#
#   infra/local/setup.sh            # everything
#   PAR_SKIP_VULKAN=1 infra/local/setup.sh   # python only
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
VENV="$ROOT/.venv"
LOCK="$ROOT/requirements.lock"

log() { printf '[setup] %s\n' "$*" >&2; }

# This machine's pip config names local indexes that do not exist for every package;
# drop pip's per-package "is ignored" warnings, keep every other message.
pip_quiet() { "$@" 2> >(grep -v 'is ignored: it is neither a file nor a directory' >&2); }

find_python() {
  for candidate in "${PYTHON:-}" python3.11 python3; do
    [ -n "$candidate" ] || continue
    if command -v "$candidate" >/dev/null 2>&1 &&
      "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; then
      command -v "$candidate"
      return 0
    fi
  done
  log "Python 3.11 is required (set PYTHON=/path/to/python3.11)"
  return 1
}

install_python() {
  local stamp="$VENV/.par-lock.sha256" want
  want="$(cat "$LOCK" "$ROOT/pyproject.toml" | sha256sum | cut -d' ' -f1)"
  if [ -x "$VENV/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    log "venv up to date ($VENV)"
    return 0
  fi
  if [ ! -x "$VENV/bin/python" ]; then
    log "creating venv at $VENV"
    "$(find_python)" -m venv "$VENV"
  fi
  local pip=(pip_quiet "$VENV/bin/python" -m pip --disable-pip-version-check)
  # torch first: the CPU wheel (a dependency would otherwise pull a CUDA build).
  local torch_pin
  torch_pin="$(grep -E '^torch==' "$LOCK")"
  log "installing $torch_pin"
  "${pip[@]}" install --quiet "$torch_pin"
  log "installing the locked stack ($(grep -cE '^[A-Za-z0-9]' "$LOCK") packages)"
  "${pip[@]}" install --quiet --no-deps -r "$LOCK"
  "${pip[@]}" install --quiet --no-deps --no-build-isolation -e "$ROOT" 2>/dev/null ||
    "${pip[@]}" install --quiet --no-deps -e "$ROOT"
  "${pip[@]}" check
  echo "$want" >"$stamp"
  log "python environment ready"
}

install_vulkan() {
  local dir="$ROOT/.vulkan" icd="$ROOT/.vulkan/lvp_icd.json"
  if [ -f "$icd" ] && [ -f "$(sed -n 's/.*"library_path": "\([^"]*\)".*/\1/p' "$icd")" ]; then
    log "software Vulkan driver present ($icd)"
    return 0
  fi
  command -v apt-get >/dev/null || { log "apt-get not found: install Mesa >= 23 lavapipe yourself and set VK_ICD_FILENAMES"; return 1; }
  # Debian 12's own lavapipe (Mesa 22.3) lacks descriptorBindingPartiallyBound, which
  # SAPIEN needs; the bookworm-backports build (Mesa 25) works.
  local mirror
  mirror="$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)"
  mirror="${mirror:-http://deb.debian.org/debian}"
  local work
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' RETURN
  mkdir -p "$work/lists/partial" "$work/cache/archives/partial"
  echo "deb $mirror bookworm-backports main" >"$work/sources.list"
  local opts=(-o "Dir::Etc::SourceList=$work/sources.list" -o "Dir::Etc::SourceParts=/dev/null"
    -o "Dir::State::Lists=$work/lists" -o "Dir::Cache=$work/cache" -o "APT::Get::List-Cleanup=0"
    -o "APT::Sandbox::User=root")
  log "downloading mesa-vulkan-drivers from $mirror bookworm-backports"
  apt-get "${opts[@]}" -qq update
  (cd "$work" && apt-get "${opts[@]}" -qq download mesa-vulkan-drivers/bookworm-backports)
  rm -rf "$dir.tmp" && mkdir -p "$dir.tmp"
  dpkg-deb -x "$work"/mesa-vulkan-drivers_*.deb "$dir.tmp/root"
  local lib
  lib="$(find "$dir.tmp/root" -name libvulkan_lvp.so | head -n 1)"
  [ -n "$lib" ] || { log "libvulkan_lvp.so not found in the package"; return 1; }
  if ldd "$lib" | grep -q 'not found'; then
    log "the driver needs libraries this machine lacks:"
    ldd "$lib" | grep 'not found' >&2
    return 1
  fi
  rm -rf "$dir" && mv "$dir.tmp" "$dir"
  lib="${lib/$dir.tmp/$dir}"
  cat >"$icd.tmp" <<JSON
{"file_format_version": "1.0.1", "ICD": {"library_path": "$lib", "api_version": "1.4.305"}}
JSON
  mv "$icd.tmp" "$icd"
  log "software Vulkan driver installed: $icd"
}

install_python
if [ "${PAR_SKIP_VULKAN:-0}" != 1 ]; then
  install_vulkan
fi
# Where a folder source of the video corpus finds the user's own videos (dvc.yaml's
# videos stage depends on it, so it must exist even when empty; docs/videos.md).
mkdir -p data/user_videos
