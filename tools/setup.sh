#!/usr/bin/env bash
# Installs what fleettune needs to build, test and run its demo on Debian 12.
# Idempotent: installs only missing packages, and only then refreshes apt.
set -euo pipefail

PACKAGES=(
  # Build: Debian's offline Bazel and its stand-in rule repositories.
  bazel-bootstrap bazel-bootstrap-source g++ pkg-config
  # Libraries (see third_party/pkg_config.bzl).
  libabsl-dev libgrpc++-dev libprotobuf-dev protobuf-compiler protobuf-compiler-grpc
  libssl-dev prometheus-cpp-dev libdnnl-dev libopenblas-dev zlib1g-dev libsqlite3-dev nlohmann-json3-dev
  libgtest-dev libgmock-dev
  # Tooling and data.
  clang-format dataset-fashion-mnist
  # The Python gRPC client check (tests/python).
  python3-grpcio python3-protobuf
)

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
echo "setup: installing ${missing[*]}" >&2
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
  "${missing[@]}" >&2
