#!/usr/bin/env bash
# Set-up shared by the side-by-side benchmarks: the project's own
# (tools/setup.sh), then Debian's packages for the PyTorch modules named as
# arguments (torch, torchvision), installed only when one is missing.
#
#   bench/setup_torch.sh torch torchvision
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh
modules=$(IFS=,; echo "$*")
if ! /usr/bin/python3 -c "import $modules" 2>/dev/null; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  # shellcheck disable=SC2046  # one package per module
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    $(printf 'python3-%s ' "$@")
fi
