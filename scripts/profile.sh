#!/usr/bin/env bash
# Profiles a job's fixed cost and the per-inference path with perf (the
# bench's profiling aid; `make profile`). Installs Debian's linux-perf once,
# for the bench only: `make test` and `make demo` never need it.
# Writes build/profile/<what>.txt: each symbol's share with its callees.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v perf >/dev/null; then
    echo "[profile] installing linux-perf"
    apt-get install -y -q linux-perf >/dev/null
fi
: "${CARGO_TARGET_DIR:=$HOME/.cache/mote-target}"
cargo build --release -p mote-bench --example job_loop --example inproc_load
mkdir -p build/profile
# Lets perf read this process's samples (a VM's default forbids it to users).
[ "$(id -u)" = 0 ] || echo "[profile] not root: perf may need kernel.perf_event_paranoid <= 1"
for what in empty empty-fresh mlp in-guest-mlp; do
    arg=5
    [ "$what" = in-guest-mlp ] && arg=100000
    perf record -q -F 1999 --call-graph dwarf,32768 -o build/profile/$what.data \
        "$CARGO_TARGET_DIR/release/examples/job_loop" "$what" "$arg"
    perf report -i build/profile/$what.data --no-inline --children --sort symbol --stdio -g none \
        --percent-limit 1 2>/dev/null | grep -v '^#' | grep -v '^$' > build/profile/$what.txt
    rm -f build/profile/$what.data
    echo "[profile] build/profile/$what.txt"
done
# A saturated node: 64 in-process clients of the MLP, as the endpoint
# bench's in-process row (all threads: job threads, async workers, nonce).
perf record -q -F 1999 --call-graph dwarf,32768 -o build/profile/load-64.data \
    "$CARGO_TARGET_DIR/release/examples/inproc_load" 64 5
perf report -i build/profile/load-64.data --no-inline --children --sort symbol --stdio -g none \
    --percent-limit 1 2>/dev/null | grep -v '^#' | grep -v '^$' > build/profile/load-64.txt
rm -f build/profile/load-64.data
echo "[profile] build/profile/load-64.txt"
