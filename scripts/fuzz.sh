#!/usr/bin/env bash
# Runs the cargo-fuzz targets in fuzz/ (see fuzz/README.md).
#   scripts/fuzz.sh TARGET|all [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
target=${1:?usage: scripts/fuzz.sh TARGET|all [SECONDS]}
secs=${2:-600}
# libFuzzer's instrumentation needs nightly features: the stable toolchain
# grants them with RUSTC_BOOTSTRAP.
export RUSTC_BOOTSTRAP=1
export CARGO_TARGET_DIR=${FUZZ_TARGET_DIR:-$HOME/.cache/mote-fuzz-target}
command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
targets=$target
[ "$target" = all ] && targets=$(cargo fuzz list --fuzz-dir fuzz)
for t in $targets; do
  mkdir -p "fuzz/corpus/$t"
  echo "== $t: ${secs}s" >&2
  cargo fuzz run --fuzz-dir fuzz --sanitizer none "$t" "fuzz/corpus/$t" -- \
    -max_total_time="$secs" -max_len=65536 -rss_limit_mb=4096 -timeout=10 -print_final_stats=1
  # Keep the corpus small: only inputs that add coverage.
  cargo fuzz cmin --fuzz-dir fuzz --sanitizer none "$t" "fuzz/corpus/$t" >/dev/null 2>&1 || true
done
