"""The native reference for the LLM test: greedy decoding of the converted
SmolLM2 with ONNX Runtime driven directly (no sandbox), the same ChatML
prompt and tokenizer. Usage: llm_reference.py MODEL_DIR QUESTION MAX_TOKENS
Prints {"prompt_tokens": n, "token_ids": [...]}."""
import json
import sys

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

d, question, max_tokens = sys.argv[1], sys.argv[2], int(sys.argv[3])
cfg = json.load(open(f"{d}/config.json"))
tok = Tokenizer.from_file(f"{d}/tokenizer.json")
system = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
prompt = f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"
ids = tok.encode(prompt, add_special_tokens=False).ids
sess = ort.InferenceSession(f"{d}/model.onnx", providers=["CPUExecutionProvider"])
names = [o.name for o in sess.get_outputs()]
L, kv, hd = cfg["layers"], cfg["kv_heads"], cfg["head_dim"]
past = {f"past_key_values.{i}.{k}": np.zeros((1, kv, 0, hd), np.float32) for i in range(L) for k in ("key", "value")}
feed, done, out = ids, 0, []
while len(out) < max_tokens:
    n = len(feed)
    r = dict(zip(names, sess.run(None, {"input_ids": np.array([feed], np.int64),
                                        "attention_mask": np.ones((1, done + n), np.int64),
                                        "position_ids": np.arange(done, done + n, dtype=np.int64)[None, :], **past})))
    past = {f"past_key_values.{i}.{k}": r[f"present.{i}.{k}"] for i in range(L) for k in ("key", "value")}
    done += n
    nxt = int(r["logits"][0, -1].argmax())
    out.append(nxt)
    feed = [nxt]
    if nxt == cfg["eos_token_id"]:
        break
print(json.dumps({"prompt_tokens": len(ids), "token_ids": out}))
