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
cargo test --release --workspace --exclude mote-sdk --no-fail-fast 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
passed=$(grep -Eo '^test result: .* ([0-9]+) passed' "$log" | grep -Eo '[0-9]+ passed' | awk '{s+=$1} END {print s+0}')
failed=$(grep -Eo '^test result: .* ([0-9]+) failed' "$log" | grep -Eo '[0-9]+ failed' | awk '{s+=$1} END {print s+0}')
summary="tests: $passed passed, $failed failed"
if [ -s "$skips" ]; then
  echo "skipped checks ($skips):"
  sort "$skips" | sed 's/^/  /'
  summary="$summary, $(wc -l < "$skips") skipped (listed above)"
fi
echo "$summary" > build/test-summary.txt
echo "$summary"
exit "$status"
