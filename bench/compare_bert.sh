#!/usr/bin/env bash
# Builds the fleettune BERT-mini benchmark and runs it side by side with
# PyTorch (bench/compare_bert.py; pass --profile for fleettune's per-op table).
# Needs Debian's python3-torch (installed here if missing); HF transformers is
# not needed (bench/pytorch_bert.py writes the model with torch.nn).
set -euo pipefail
cd "$(dirname "$0")/.."
bench/setup_torch.sh torch
bazel build //bench:bert_bench >&2
exec /usr/bin/python3 bench/compare_bert.py "$@"
