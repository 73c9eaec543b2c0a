#!/usr/bin/env bash
# Runs every test: the Bazel test targets and the clang-format check.
# Ends with one line "N passed, N failed" (test targets) and exits non-zero on
# any failure, including a build failure.
set -uo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh || { echo "0 passed, 1 failed"; exit 1; }

log=$(mktemp)
trap 'rm -f "$log"' EXIT
bazel test //... --keep_going --test_summary=short --nocache_test_results 2>&1 | tee "$log"
bazel_rc=${PIPESTATUS[0]}

passed=$(grep -cE '^//[^ ]+ +(\(cached\) )?PASSED' "$log")
failed=$(grep -cE '^//[^ ]+ +(\(cached\) )?(FAILED|TIMEOUT|NO STATUS|FAILED TO BUILD|INCOMPLETE|FLAKY)' "$log")

if tools/format.sh --check; then
  passed=$((passed + 1))
else
  failed=$((failed + 1))
fi

# A build or analysis error may leave no per-target line: still a failure.
if [ "$bazel_rc" -ne 0 ] && [ "$failed" -eq 0 ]; then failed=1; fi
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
