#!/usr/bin/env bash
# Builds the fleettune BERT-mini benchmark and runs it side by side with
# PyTorch (bench/compare_bert.py; pass --profile for fleettune's per-op table).
# Needs Debian's python3-torch (installed here if missing); HF transformers is
# not needed (bench/pytorch_bert.py writes the model with torch.nn).
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh
if ! /usr/bin/python3 -c "import torch" 2>/dev/null; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    python3-torch
fi
bazel build //bench:bert_bench >&2
exec /usr/bin/python3 bench/compare_bert.py "$@"
