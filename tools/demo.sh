#!/usr/bin/env bash
# The main job: train an MLP on Fashion-MNIST with the embedded engine.
# Extra arguments go to fleettune-train (e.g. --scheme=freeze:fc1 --epochs=3).
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh
bazel build //engine/tools:fleettune-train >&2
exec bazel-bin/engine/tools/fleettune-train --epochs=5 --hidden=256,128 "$@"
