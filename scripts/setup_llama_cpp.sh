#!/usr/bin/env bash
# llama.cpp for the LLM benchmark's comparison row (`make bench` only; CI's
# `make bench-quick` never builds it): PyPI's llama-cpp-python compiles
# llama.cpp from source (≈ 10 min on 2 cores). Idempotent.
set -euo pipefail
DEPS="${MOTE_DEPS_DIR:-$(cd "$(dirname "$0")/.." && pwd)/deps}"
if "$DEPS/venv/bin/python" -c 'import llama_cpp' 2>/dev/null; then
  exit 0
fi
echo "setup: building llama-cpp-python (llama.cpp from source, ≈ 10 min; bench only)"
CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" "$DEPS/venv/bin/pip" install -q --disable-pip-version-check "llama-cpp-python==0.3.16"
