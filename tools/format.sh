#!/usr/bin/env bash
# clang-format over the project's C++ (style: .clang-format, Google base).
#   tools/format.sh          rewrite files in place
#   tools/format.sh --check  report unformatted files and exit non-zero
set -euo pipefail
cd "$(dirname "$0")/.."
mapfile -t files < <(git ls-files --cached --others --exclude-standard '*.cc' '*.h' '*.proto')
[ ${#files[@]} -gt 0 ] || exit 0
if [ "${1:-}" = "--check" ]; then
  if ! clang-format --dry-run -Werror "${files[@]}" 2>/tmp/fleettune-format.log; then
    echo "clang-format: these files need tools/format.sh:" >&2
    grep -oE '^[^:]+\.(cc|h|proto)' /tmp/fleettune-format.log | sort -u >&2
    exit 1
  fi
  echo "clang-format: ${#files[@]} files clean" >&2
else
  clang-format -i "${files[@]}"
fi
