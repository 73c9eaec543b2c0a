#!/usr/bin/env bash
# The main job: a fleet on this machine. A coordinator and three agents playing
# a Raspberry Pi 4, a Jetson Orin Nano and an x86 box fine-tune an MNIST model
# to each device's own handwriting (private shards of the OpenCV digits), and
# the operator watches. Ends with a table per device class; leaves no process.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh
bazel build //server:fleettune-coordinator //agent:fleettune-agent //cli:fleettune \
  //engine/tools:fleettune-train >&2
exec /usr/bin/python3 tests/e2e/fleet.py demo \
  --coordinator bazel-bin/server/fleettune-coordinator --agent bazel-bin/agent/fleettune-agent \
  --cli bazel-bin/cli/fleettune --train bazel-bin/engine/tools/fleettune-train \
  --data_dir third_party/data "$@"
