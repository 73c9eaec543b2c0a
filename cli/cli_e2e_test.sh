#!/usr/bin/env bash
# The operator CLI against a real coordinator process on loopback.
set -uo pipefail
CLI="$1"
COORDINATOR="$2"
work="${TEST_TMPDIR:-$(mktemp -d)}/cli_e2e"
mkdir -p "$work"
echo "operator-token-for-the-cli-test" > "$work/op.tokens"
echo "enroll-token-for-the-cli-test" > "$work/enroll.tokens"
"$COORDINATOR" --listen=127.0.0.1:0 --metrics_listen= --db="$work/c.db" \
  --operator_tokens="$work/op.tokens" --enrollment_tokens="$work/enroll.tokens" \
  2> "$work/coordinator.log" &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null' EXIT
port=""
for _ in $(seq 100); do
  port=$(grep -oE 'serving on port [0-9]+' "$work/coordinator.log" | grep -oE '[0-9]+$')
  [ -n "$port" ] && break
  sleep 0.1
done
[ -n "$port" ] || { echo "coordinator did not start"; cat "$work/coordinator.log"; exit 1; }

fail=0
ft() { "$CLI" --server="127.0.0.1:$port" --token=operator-token-for-the-cli-test "$@"; }
expect() {  # expect <want-exit> <substring> cmd...
  local want_rc="$1" want="$2"; shift 2
  local out rc
  out=$("$@" 2>&1); rc=$?
  if [ "$rc" != "$want_rc" ] || ! grep -qF -- "$want" <<<"$out"; then
    echo "FAIL: '$*' -> rc $rc (want $want_rc), output lacks '$want':"; echo "$out"; fail=1
  fi
}

expect 0 "x86-avx2" ft classes
expect 0 "rpi4" ft classes
submit=$(ft --json submit --name=e2e --layers=64,32,10 --dataset=digits --epochs=1 \
  --batch=16 --classes=x86-avx2:1,rpi4:1) || { echo "FAIL: submit: $submit"; fail=1; }
job_id=$(grep -oE '"jobId": *"job-[0-9a-f]+"' <<<"$submit" | grep -oE 'job-[0-9a-f]+')
[ -n "$job_id" ] || { echo "FAIL: no job id in: $submit"; fail=1; }
expect 0 "$job_id" ft list
expect 0 "pending" ft list
expect 0 "x86-avx2" ft get "$job_id"
expect 0 "$job_id" ft --json list --state=pending
expect 0 "cancelled" ft cancel "$job_id"
expect 1 "FAILED_PRECONDITION" ft cancel "$job_id"
expect 1 "NOT_FOUND" ft get job-000000000000
expect 1 "NOT_FOUND" ft submit --name=e2e --layers=64,10 --dataset=d --classes=vax:1
expect 1 "FAILED_PRECONDITION" ft submit --name=big --layers=784,1024,1024,10 --dataset=d \
  --scheme=full --classes=rpi4:1
expect 1 "UNAUTHENTICATED" "$CLI" --server="127.0.0.1:$port" --token=wrong-token-wrong list
expect 2 "--lr" ft submit --name=x --layers=4,2 --dataset=d --classes=rpi4:1 --lr=-1
expect 0 "" ft devices
exit $fail
