#!/usr/bin/env bash
# Run an exported artifact on ARM64 (onnxruntime / ExecuTorch aarch64 builds under qemu-user) and print the
# per-precision difference from the x86 run. Usage: examples/arm64/run.sh ARTIFACT_DIR [--bits 3,8] [--no-tasks]
# Needs: qemu-user, g++-aarch64-linux-gnu (Debian packages) and the project installed (the x86 side).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
python="${PYTHON:-}"
if [ -z "$python" ]; then
  if [ -n "${VIRTUAL_ENV:-}" ]; then
    python=python
  elif [ -x "$repo/.venv/bin/python" ]; then
    python="$repo/.venv/bin/python"
  else
    python=python3
  fi
fi
exec "$python" "$here/arm64_check.py" "$@"
