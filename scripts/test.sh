#!/usr/bin/env bash
# Runs every test of the workspace and ends with one summary line
# ("tests: N passed, M failed") counted over all test binaries.
set -uo pipefail
cd "$(dirname "$0")/.."
mkdir -p build
log=build/test.log
# Tests that cannot run here (no CUDA, say) add a line each (tests/common).
skips=build/test-skips.log
: > "$skips"
# The binaries (`make host`) and the tests must resolve one feature set, or
# a cold run builds wasmtime and burn twice; counted as one test.
deps/venv/bin/python scripts/check_feature_sets.py 2>&1 | tee "$log"
feature_check=${PIPESTATUS[0]}
cargo test --release --workspace --exclude mote-sdk --no-fail-fast 2>&1 | tee -a "$log"
status=${PIPESTATUS[0]}
passed=$(grep -Eo '^test result: .* ([0-9]+) passed' "$log" | grep -Eo '[0-9]+ passed' | awk '{s+=$1} END {print s+0}')
failed=$(grep -Eo '^test result: .* ([0-9]+) failed' "$log" | grep -Eo '[0-9]+ failed' | awk '{s+=$1} END {print s+0}')
if [ "$feature_check" -eq 0 ]; then
  passed=$((passed + 1))
else
  failed=$((failed + 1))
  [ "$status" -ne 0 ] || status=$feature_check
fi
summary="tests: $passed passed, $failed failed"
if [ -s "$skips" ]; then
  echo "skipped checks ($skips):"
  sort "$skips" | sed 's/^/  /'
  summary="$summary, $(wc -l < "$skips") skipped (listed above)"
fi
echo "$summary" > build/test-summary.txt
echo "$summary"
exit "$status"
