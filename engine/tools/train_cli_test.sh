#!/usr/bin/env bash
# End-to-end checks of fleettune-train: clear errors and non-zero exits on bad
# input, and a short real training run when Fashion-MNIST is installed.
set -uo pipefail
BIN="$1"
fail=0
expect_error() {  # expect_error "substring" args...
  local want="$1"; shift
  local out
  if out=$("$BIN" "$@" 2>&1); then
    echo "FAIL: '$*' exited 0"; fail=1; return
  fi
  if ! grep -qF -- "$want" <<<"$out"; then
    echo "FAIL: '$*' did not say '$want':"; echo "$out"; fail=1
  fi
}
expect_error "no such file" --data_dir=/nonexistent
expect_error "unknown scheme 'sparse'" --scheme=sparse
expect_error "no layer 'fc7'" --scheme=freeze:fc7
expect_error "unknown optimizer 'rmsprop'" --optimizer=rmsprop
expect_error "bad layer size 'x'" --hidden=128,x
expect_error "must be positive" --epochs=0

# Corrupt IDX: a directory whose image file has the wrong magic.
dir="${TEST_TMPDIR:-/tmp}/corrupt_idx"
mkdir -p "$dir"
printf '\x00\x00\x08\x01\x00\x00\x00\x00' | gzip > "$dir/train-images-idx3-ubyte.gz"
for f in train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte; do
  cp "$dir/train-images-idx3-ubyte.gz" "$dir/$f.gz"
done
expect_error "magic" --data_dir="$dir"

if [ -d /usr/share/datasets/fashion-mnist ]; then
  out=$("$BIN" --epochs=1 --train_limit=6000 --hidden=64 2>&1) || { echo "FAIL: run: $out"; fail=1; }
  acc=$(grep -oE 'test accuracy: [0-9.]+' <<<"$out" | grep -oE '[0-9.]+$')
  if [ -z "$acc" ] || awk "BEGIN{exit !($acc < 65)}"; then
    echo "FAIL: accuracy '$acc' after one epoch on 6000 samples"; echo "$out"; fail=1
  fi
  grep -q "peak arena bytes:" <<<"$out" || { echo "FAIL: no arena report"; fail=1; }
fi
exit $fail
