#!/usr/bin/env bash
# Builds the fleettune benchmark and runs it side by side with PyTorch.
# Needs Debian's python3-torch (installed here if missing).
set -euo pipefail
cd "$(dirname "$0")/.."
bench/setup_torch.sh torch
bazel build //bench:mlp_bench >&2
exec /usr/bin/python3 bench/compare_mlp.py "$@"
