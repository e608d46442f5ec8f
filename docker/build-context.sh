#!/usr/bin/env bash
# Prepare docker/context/ for an offline image build (`--network none`):
#   wheels/            every locked package as a wheel (built or fetched on the host)
#   vulkan/            lavapipe, the libraries it needs, and an ICD json for /opt/vulkan
#   project/           the project's source (par, components, pyproject.toml)
#   requirements.lock
# TORCH_INDEX_URL=https://download.pytorch.org/whl/cu124 for the CUDA target's torch.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CTX="$ROOT/docker/context"
PY="$ROOT/.venv/bin/python"
[ -x "$PY" ] || "$ROOT/infra/local/setup.sh"
rm -rf "$CTX" && mkdir -p "$CTX/wheels" "$CTX/vulkan/lib" "$CTX/project"

cp "$ROOT/requirements.lock" "$CTX/"
torch_pin="$(grep -E '^torch==' "$ROOT/requirements.lock")"
extra=()
[ -n "${TORCH_INDEX_URL:-}" ] && extra=(--extra-index-url "$TORCH_INDEX_URL")
"$PY" -m pip wheel --quiet --no-deps -w "$CTX/wheels" "${extra[@]}" "$torch_pin"
"$PY" -m pip wheel --quiet --no-deps -w "$CTX/wheels" -r "$ROOT/requirements.lock" \
  2> >(grep -v 'is ignored: it is neither a file nor a directory' >&2)

lib="$(find "$ROOT/.vulkan" -name libvulkan_lvp.so | head -n 1)"
[ -n "$lib" ] || { echo "no lavapipe in .vulkan/: run make setup" >&2; exit 1; }
cp "$lib" "$CTX/vulkan/lib/"
# The system libraries lavapipe links against (absent from slim/minbase images).
ldd "$lib" | awk '/=> \// {print $3}' | while read -r dep; do
  case "$(basename "$dep")" in
    libc.so*|libm.so*|libdl.so*|libpthread.so*|librt.so*|ld-linux*) ;;
    *) cp -L "$dep" "$CTX/vulkan/lib/" ;;
  esac
done
cat >"$CTX/vulkan/lvp_icd.json" <<JSON
{"file_format_version": "1.0.1", "ICD": {"library_path": "/opt/vulkan/lib/libvulkan_lvp.so", "api_version": "1.4.305"}}
JSON

(cd "$ROOT" && git ls-files par components pyproject.toml README.md | tar -cf - -T -) | tar -C "$CTX/project" -xf -
cp "$ROOT/docker/Dockerfile" "$CTX/Dockerfile"
echo "build context ready: $CTX ($(du -sh "$CTX" | cut -f1))"
