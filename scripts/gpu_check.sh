#!/usr/bin/env bash
# The GPU check: proves ONNX Runtime's CUDA provider and wgpu on a real GPU
# where a machine has one (CI has none). Run from a checkout whose build/
# holds guests and models (`make guests`), with ORT_DYLIB_PATH pointing at
# onnxruntime-gpu's libonnxruntime.so (docs/gpu.md):
#
#   ORT_DYLIB_PATH=.../onnxruntime/capi/libonnxruntime.so.1.31.1 scripts/gpu_check.sh [OUT]
#
# It writes to OUT (default build/gpu-check): the GPU, `mote specs`, the
# CUDA and wgpu test binaries' logs (CUDA required: MOTE_REQUIRE_CUDA=1),
# one job per backend through `mote run` with its receipt verified, and
# `mote-bench --only overhead,backends,batching` (the sandbox's overhead on
# ORT CUDA beside ORT CPU's). Every step runs under a time
# limit; the last line says how many steps failed.
#
# Binaries: MOTE_BIN_DIR (default the release target directory) holds
# mote and mote-bench; test binaries are built with cargo, or, when
# MOTE_TEST_BIN_DIR is set, run from there as prebuilt files named after
# their test (ort_cuda, wgpu_models, ...). Prebuilt test binaries find this
# checkout through MOTE_BUILD_DIR (its build/), not the path they were
# compiled in.
set -uo pipefail
cd "$(dirname "$0")/.."
root=$PWD
out=${1:-build/gpu-check}
mkdir -p "$out"
out=$(cd "$out" && pwd)
bin=${MOTE_BIN_DIR:-${CARGO_TARGET_DIR:-$HOME/.cache/mote-target}/release}
export MOTE_BUILD_DIR=${MOTE_BUILD_DIR:-$root/build}
export MOTE_REQUIRE_CUDA=${MOTE_REQUIRE_CUDA:-1}
# As in CI, a test whose dependency is missing (the onnx package for the
# conformance cases) fails instead of skipping.
export CI=${CI:-1}
export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-/tmp/mote-xdg-$(id -u)}
mkdir -p -m 700 "$XDG_RUNTIME_DIR"
failed=0
step() { # step NAME SECONDS CMD...: runs CMD under a limit, logs to OUT/NAME.log
  local name=$1 limit=$2
  shift 2
  local t0=$SECONDS
  timeout --kill-after=10 "$limit" "$@" > "$out/$name.log" 2>&1
  local rc=$?
  echo "== $name: rc $rc in $((SECONDS - t0)) s"
  grep -E '^test result|SKIPPED|panicked|^error' "$out/$name.log" | head -20
  if [ $rc -ne 0 ]; then
    failed=$((failed + 1))
    tail -15 "$out/$name.log"
  fi
}

# CUDA's user-space libraries (cuBLAS, cuDNN, cudart, cuRAND) where pip's
# nvidia-* wheels keep them, when the loader does not find them already.
if ! ldconfig -p | grep -q 'libcublasLt.so.13'; then
  dirs=$(timeout 60 find /opt /usr/local /usr/lib /root -xdev \( -name 'libcublasLt.so.1[0-9]*' -o -name 'libcudnn.so.9*' \
    -o -name 'libcudart.so.1[0-9]*' -o -name 'libcurand.so.10*' -o -name 'libnvrtc.so.1[0-9]*' \) 2>/dev/null |
    xargs -r -n1 dirname | sort -u | paste -sd:)
  export LD_LIBRARY_PATH=${dirs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
fi
# The Vulkan loader, and NVIDIA's ICD where the driver keeps it outside
# the loader's search path.
if [ -z "${VK_DRIVER_FILES:-}" ] && ! ls /usr/share/vulkan/icd.d/nvidia* /etc/vulkan/icd.d/nvidia* >/dev/null 2>&1; then
  for f in /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json /usr/local/nvidia/vulkan/icd.d/nvidia_icd.json; do
    [ -f "$f" ] && export VK_DRIVER_FILES=$f && break
  done
fi
# The conformance test reads the onnx package through deps/venv's python
# (a wrapper, not a link: a linked venv python would not find its venv).
if [ ! -x deps/venv/bin/python ] && python3 -c 'import onnx' 2>/dev/null; then
  mkdir -p deps/venv/bin && printf '#!/bin/sh\nexec %s "$@"\n' "$(command -v python3)" > deps/venv/bin/python
  chmod +x deps/venv/bin/python
fi
{
  echo "LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}"
  echo "VK_DRIVER_FILES=${VK_DRIVER_FILES:-}"
  echo "ORT_DYLIB_PATH=${ORT_DYLIB_PATH:-}"
  nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv
  ldconfig -p | grep -E 'libvulkan|libcuda\.so'
} > "$out/environment.txt" 2>&1
cat "$out/environment.txt"

step specs 120 "$bin/mote" specs
cp "$out/specs.log" "$out/specs.json"
grep -E '"(available|device|device_type|name|reason)"' "$out/specs.json" | head -20

for t in ort_cuda wgpu_models wgpu_ops wgpu_conformance; do
  if [ -n "${MOTE_TEST_BIN_DIR:-}" ]; then
    [ -x "$MOTE_TEST_BIN_DIR/$t" ] && step "test-$t" 300 "$MOTE_TEST_BIN_DIR/$t" --test-threads 4
  else
    step "test-$t" 600 cargo test --release -p mote-runtime --test "$t" -- --test-threads 4
  fi
done
grep -h -E 'largest|receipt:|batching:|conformance' "$out"/test-*.log | head -20

# One job per backend through the CLI, its receipt verified, its outputs
# against the Python onnxruntime reference.
for b in ort-cpu ort-cuda wgpu; do
  step "run-$b" 120 sh -c '"$1" run build/guests/passthrough.wasm --model model=build/models/cnn.onnx \
    --input build/models/cnn.request.json --backend "$2" --receipt "$3/receipt-$2.json" --ephemeral-key \
    > "$3/response-$2.json"' sh "$bin/mote" "$b" "$out"
  step "verify-$b" 60 "$bin/mote" verify "$out/receipt-$b.json" --guest build/guests/passthrough.wasm \
    --model build/models/cnn.onnx --input build/models/cnn.request.json
  python3 - "$out/receipt-$b.json" "$out/response-$b.json" build/models/cnn.expected.json <<'EOF' || true
import json, sys
r = json.load(open(sys.argv[1]))
got, want = (json.load(open(p))["outputs"] for p in sys.argv[2:])
diff = max(abs(a - b) for g in got for w in want if g["name"] == w["name"] for a, b in zip(g["data"], w["data"]))
print(f"  {r['backend']} on {r['device']!r}: wall {r['wall_ns'] / 1e6:.2f} ms, backend {r['backend_ns'] / 1e6:.2f} ms, "
      f"largest |output - onnxruntime reference| {diff:.1e}")
EOF
done

step bench 420 "$bin/mote-bench" --only overhead,backends,batching --rounds 1 --build build --out "$out/bench"
grep -A20 '## Sandbox overhead' "$out/bench/latest.md" 2>/dev/null | grep -v '^\*in guest'
grep -A12 '## Backends' "$out/bench/latest.md" 2>/dev/null
grep -B2 -A14 -i '## .*batch' "$out/bench/latest.md" 2>/dev/null | head -40

echo "gpu check: $failed step(s) failed; logs in $out"
[ "$failed" -eq 0 ]
