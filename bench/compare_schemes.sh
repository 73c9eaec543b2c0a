#!/usr/bin/env bash
# Builds the fleettune update-scheme benchmark (issue #6) and runs it side by side with
# PyTorch (bench/compare_schemes.py; pass --profile for fleettune's per-op table).
# Needs Debian's python3-torch and python3-torchvision (installed here if missing).
set -euo pipefail
cd "$(dirname "$0")/.."
bench/setup_torch.sh torch torchvision
bazel build //bench:scheme_bench >&2
exec /usr/bin/python3 bench/compare_schemes.py "$@"
