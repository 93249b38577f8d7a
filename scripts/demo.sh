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
"$MOTE" run build/guests/passthrough.wasm --model model=build/models/mlp.onnx --input build/models/mlp.request.json \
  > build/demo/mlp.json
head -c 300 build/demo/mlp.json
echo " ..."

bold "\$ mote run build/guests/classifier.wasm --backend wgpu --input build/models/classifier.request.json --receipt build/demo/receipt-wgpu.json"
echo "(the same job on the wgpu backend: burn on Vulkan/Metal/DX12; without a GPU the adapter is Mesa's llvmpipe)"
"$MOTE" run build/guests/classifier.wasm --backend wgpu --input build/models/classifier.request.json \
  --receipt build/demo/receipt-wgpu.json > build/demo/response-wgpu.json
python3 - build/demo/response.json build/demo/response-wgpu.json build/demo/receipt-wgpu.json <<'PY'
import json, sys
a, b, rc = (json.load(open(p)) for p in sys.argv[1:4])
la = {o["name"]: o["data"] for o in a["outputs"]}
lb = {o["name"]: o["data"] for o in b["outputs"]}
worst = max(abs(x - y) for x, y in zip(la["scores"], lb["scores"]))
print(f'  receipt: backend={rc["backend"]} device={rc["device"]!r}')
print(f'  top-5 labels {"equal" if la["labels"] == lb["labels"] else "DIFFER from"} ONNX Runtime\'s; largest score difference {worst:.1e}')
PY

bold "\$ mote serve --config mote.toml   (ports chosen by the OS for the demo)"
LOG=build/demo/serve.log
"$MOTE" serve --config mote.toml --listen 127.0.0.1:0 --quic 127.0.0.1:0 --grpc 127.0.0.1:0 > "$LOG" 2>&1 &
SERVER=$!
trap 'kill -TERM $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 1 300); do grep -q '^ready:' "$LOG" && break; kill -0 $SERVER 2>/dev/null || break; sleep 0.1; done
cat "$LOG"
grep -q '^ready:' "$LOG" || { echo "mote serve did not start"; exit 1; }
HTTPS=$(sed -n 's|^listening https://||p' "$LOG")
QUIC=$(sed -n 's|^listening quic://\([^ ]*\).*|\1|p' "$LOG")
CERT=$(sed -n 's|^certificate \(.*\) sha256 .*|\1|p' "$LOG")
PORT=${HTTPS##*:}

bold "\$ curl --cacert $CERT -H 'Authorization: Bearer demo-token-123' https://localhost:$PORT/v2/models/mlp/infer -d @build/models/mlp.request.json"
curl -sS --cacert "$CERT" -H 'Authorization: Bearer demo-token-123' \
  "https://localhost:$PORT/v2/models/mlp/infer" -d @build/models/mlp.request.json > build/demo/https.json
python3 - build/demo/https.json <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
for o in r["outputs"]:
    print(f'  {o["name"]} {o["datatype"]} {o["shape"]}: {[round(v, 4) for v in o["data"][:5]]} ...')
p = r["parameters"]
print(f'  outcome={p["mote_outcome"]} fuel={p["mote_fuel"]} backend={p["mote_backend"]} (signed receipt in parameters.mote_receipt)')
PY

bold "\$ mote infer --quic $QUIC --model mlp --input build/models/mlp.request.json --token demo-token-123 --cert $CERT --repeat 3"
"$MOTE" infer --quic "$QUIC" --model mlp --input build/models/mlp.request.json --token demo-token-123 \
  --cert "$CERT" --repeat 3 > build/demo/quic.json
python3 - build/demo/quic.json build/demo/https.json <<'PY'
import json, sys
q, h = (json.load(open(p)) for p in sys.argv[1:3])
same = all(a["data"] == b["data"] for a, b in zip(q["outputs"], h["outputs"]))
print(f'  QUIC outputs {"equal" if same else "DIFFER from"} the HTTPS outputs')
PY

bold "\$ curl -N --cacert $CERT -H 'Authorization: Bearer demo-token-123' https://localhost:$PORT/v1/chat/completions -d '{\"model\": \"smollm2\", \"stream\": true, ...}'"
echo "(SmolLM2-135M-Instruct, converted from PyPI's GGUF, in the chat guest: the KV cache stays on the host, tokens stream as server-sent events)"
curl -sS -N --cacert "$CERT" -H 'Authorization: Bearer demo-token-123' "https://localhost:$PORT/v1/chat/completions" \
  -d '{"model": "smollm2", "stream": true, "stream_options": {"include_usage": true}, "max_tokens": 48, "temperature": 0,
       "messages": [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]}' \
  | python3 -c '
import json, sys
usage = None
for line in sys.stdin:
    if not line.startswith("data: ") or line.strip() == "data: [DONE]":
        continue
    e = json.loads(line[6:])
    if "error" in e:
        sys.exit("error: " + e["error"]["message"])
    for c in e["choices"]:
        print(c["delta"].get("content", ""), end="", flush=True)
    usage = e.get("usage") or usage
print()
if usage:
    p, c = usage["prompt_tokens"], usage["completion_tokens"]
    print(f"  usage: {p} prompt + {c} completion tokens (the signed receipt says the same)")
'

bold "\$ kill -TERM mote serve"
kill -TERM $SERVER; wait $SERVER || true
trap - EXIT
tail -2 "$LOG"

bold "The job market: a NATS JetStream server, two nodes, a handful of jobs, the settlement"
DEPS=${MOTE_DEPS_DIR:-$PWD/deps}
MDIR=build/demo/market
rm -rf "$MDIR"; mkdir -p "$MDIR"
NPORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
NATS=nats://127.0.0.1:$NPORT
echo "\$ nats-server -js -a 127.0.0.1 -p $NPORT -sd $MDIR/js"
"$DEPS/nats-server" -js -a 127.0.0.1 -p "$NPORT" -sd "$MDIR/js" > "$MDIR/nats.log" 2>&1 &
NATS_PID=$!
PIDS="$NATS_PID"
trap 'kill -TERM $PIDS 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/$NPORT) 2>/dev/null && break; sleep 0.1; done
for i in 1 2; do
  echo "\$ mote node --nats $NATS --market demo --data-dir $MDIR/node$i --concurrency 1 &"
  "$MOTE" node --nats "$NATS" --market demo --data-dir "$MDIR/node$i" --concurrency 1 > "$MDIR/node$i.log" 2>&1 &
  PIDS="$PIDS $!"
done
trap 'kill -TERM $PIDS 2>/dev/null || true' EXIT
for i in 1 2; do for _ in $(seq 1 100); do grep -q 'joined market' "$MDIR/node$i.log" && break; sleep 0.1; done; cat "$MDIR/node$i.log"; done

bold "\$ mote job submit --nats $NATS --market demo build/guests/passthrough.wasm --model model=build/models/mlp.onnx --input build/models/mlp.request.json --wait"
"$MOTE" job submit --nats "$NATS" --market demo build/guests/passthrough.wasm --model model=build/models/mlp.onnx \
  --input build/models/mlp.request.json --wait > "$MDIR/first.json"
head -c 200 "$MDIR/first.json"
echo " ..."
echo "(and 7 more jobs, posted without waiting)"
IDS=""
for _ in $(seq 1 7); do
  IDS="$IDS $("$MOTE" job submit --nats "$NATS" --market demo build/guests/passthrough.wasm --model model=build/models/mlp.onnx \
    --input build/models/mlp.request.json)"
done
for id in $IDS; do
  for _ in $(seq 1 100); do "$MOTE" job status --nats "$NATS" "$id" | grep -q '"done"' && break; sleep 0.1; done
done
LAST=${IDS##* }
bold "\$ mote job result --nats $NATS $LAST"
"$MOTE" job result --nats "$NATS" "$LAST" > "$MDIR/last.json"
head -c 200 "$MDIR/last.json"
echo " ..."

bold "\$ mote market nodes --nats $NATS --market demo"
"$MOTE" market nodes --nats "$NATS" --market demo > "$MDIR/nodes.jsonl"
python3 - "$MDIR/nodes.jsonl" <<'PY'
import json, sys
for line in open(sys.argv[1]):
    n = json.loads(line)
    print(f'  {n["node_id"][:16]}... live={n["live"]} serves={n["serves"]} score={n["score"]:.0f}/s '
          f'price={n["price"]["per_backend_second"]}/s verified={n["verified"]} mismatches={n["mismatches"]}')
PY

bold "\$ mote market settle --nats $NATS --market demo"
"$MOTE" market settle --nats "$NATS" --market demo

kill -TERM $PIDS 2>/dev/null || true
wait 2>/dev/null || true
trap - EXIT
