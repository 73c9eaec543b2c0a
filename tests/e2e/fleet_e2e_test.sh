#!/usr/bin/env bash
# Bazel wrapper for the fleet end-to-end test: a coordinator and agents on
# loopback, faults injected, privacy checked (see fleet.py).
set -euo pipefail
# The data sets are git-ignored downloads (tools/setup.sh), so they are found
# through the checkout: the runfiles' fleet.py is a symlink into it.
root="$(cd "$(dirname "$(readlink -f tests/e2e/fleet.py)")/../.." && pwd)"
data="${FLEETTUNE_DATA_DIR:-$root/third_party/data}"
if [ ! -f "$data/opencv/digits.png" ]; then
  echo "missing $data/opencv/digits.png: run tools/setup.sh"; exit 1
fi
exec /usr/bin/python3 tests/e2e/fleet.py test --coordinator "$1" --agent "$2" --cli "$3" \
  --train "$4" --data_dir "$data"
