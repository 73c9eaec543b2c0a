#!/usr/bin/env bash
# Bazel wrapper: runs the Python grpcio check with Debian's interpreter.
set -euo pipefail
exec /usr/bin/python3 tests/python/grpc_client_check.py --coordinator "$1" --proto_root .
