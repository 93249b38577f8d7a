#!/usr/bin/env bash
# The demo: classify a picture inside the sandbox, show the signed receipt,
# verify it.
set -euo pipefail
cd "$(dirname "$0")/.."
MOTE=${CARGO_TARGET_DIR:-$HOME/.cache/mote-target}/release/mote
mkdir -p build/demo
bold() { printf '\n\033[1m%s\033[0m\n' "$*"; }

bold "\$ mote run build/guests/classifier.wasm --input build/models/classifier.request.json --receipt build/demo/receipt.json"
echo "(a 180x240 RGB picture; the guest resizes and normalises it, then runs a ResNet-style CNN through wasi-nn on ONNX Runtime)"
"$MOTE" run build/guests/classifier.wasm --input build/models/classifier.request.json \
  --receipt build/demo/receipt.json > build/demo/response.json
python3 - build/demo/response.json <<'PY'
import json, sys
r = {o["name"]: o["data"] for o in json.load(open(sys.argv[1]))["outputs"]}
print("top-5 (response in build/demo/response.json):")
for label, score in zip(r["labels"], r["scores"]):
    print(f"  {score:7.4f}  {label}")
PY

bold "\$ cat build/demo/receipt.json"
cat build/demo/receipt.json

bold "\$ mote verify build/demo/receipt.json --guest build/guests/classifier.wasm --input build/models/classifier.request.json"
"$MOTE" verify build/demo/receipt.json --guest build/guests/classifier.wasm --input build/models/classifier.request.json

bold "\$ mote run build/guests/passthrough.wasm --model model=build/models/mlp.onnx --input build/models/mlp.request.json"
"$MOTE" run build/guests/passthrough.wasm --model model=build/models/mlp.onnx --input build/models/mlp.request.json | head -c 300
echo " ..."
