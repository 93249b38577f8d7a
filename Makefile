# mote — the two commands a new user needs:
#   make demo   set everything up, build, and run the classifier example
#   make test   set everything up, build, and run every test
# Both are idempotent; scripts/setup.sh installs what is missing.

SHELL := /bin/bash
export CARGO_TARGET_DIR ?= $(HOME)/.cache/mote-target
GUEST_TARGET_DIR ?= $(HOME)/.cache/mote-guest-target
MOTE := $(CARGO_TARGET_DIR)/release/mote
PY := deps/venv/bin/python
MODELS := build/models/cnn.onnx
GUESTS := build/guests/passthrough.wasm build/guests/classifier.wasm build/guests/mlp-builder.wasm build/guests/misbehave.wasm

.PHONY: all setup host models guests demo test bench bench-quick clean
all: host guests

setup:
	bash scripts/setup.sh

host: setup
	cargo build --release --bins

$(MODELS): scripts/make_models.py guest-examples/classifier/labels.txt | setup
	$(PY) scripts/make_models.py build/models

models: $(MODELS)

guests: host models
	CARGO_TARGET_DIR=$(GUEST_TARGET_DIR) $(MOTE) build guest-examples --out build/guests

demo: guests
	@bash scripts/demo.sh

test: guests
	bash scripts/test.sh

bench: guests
	$(CARGO_TARGET_DIR)/release/mote-bench

bench-quick: guests
	$(CARGO_TARGET_DIR)/release/mote-bench --quick --out build/bench

clean:
	rm -rf build
