#!/usr/bin/env bash
# Builds the fleettune MobileNetV2 benchmark and runs it side by side with
# PyTorch (bench/compare_vision.py; pass --profile for fleettune's per-op table).
# Needs Debian's python3-torch and python3-torchvision (installed here if missing).
set -euo pipefail
cd "$(dirname "$0")/.."
bench/setup_torch.sh torch torchvision
bazel build //bench:vision_bench >&2
exec /usr/bin/python3 bench/compare_vision.py "$@"
