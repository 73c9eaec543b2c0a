#!/usr/bin/env bash
# Builds the fleettune benchmark and runs it side by side with PyTorch.
# Needs Debian's python3-torch (installed here if missing).
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh
if ! /usr/bin/python3 -c "import torch" 2>/dev/null; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-torch
fi
bazel build //bench:mlp_bench >&2
exec /usr/bin/python3 bench/compare_mlp.py "$@"
