#!/usr/bin/env python3
"""Generates mote's test and demo models with the `onnx` package, plus for
each a request with seeded random inputs and the outputs that ONNX Runtime
itself computes for it (the reference the tests compare mote against).

Real architectures, random (seeded) weights: no model hub is needed.

Usage: make_models.py OUT_DIR
"""
import json
import os
import sys

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
rng = np.random.default_rng(20261125)


def init(name, arr):
    return numpy_helper.from_array(np.asarray(arr), name)


def he(shape, fan_in):
    return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)


def model(nodes, inputs, outputs, inits, name):
    g = helper.make_graph(nodes, name, inputs, outputs, inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="mote-tests")
    m.ir_version = 8
    onnx.checker.check_model(m, full_check=True)
    return m


def mlp():
    w1, b1 = he((16, 32), 16), np.zeros(32, np.float32) + 0.01
    w2, b2 = he((32, 10), 32), np.zeros(10, np.float32)
    nodes = [
        helper.make_node("Gemm", ["x", "w1", "b1"], ["h"]),
        helper.make_node("Relu", ["h"], ["hr"]),
        helper.make_node("Gemm", ["hr", "w2", "b2"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=-1),
    ]
    return model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", 10]),
         helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        [init("w1", w1), init("b1", b1), init("w2", w2), init("b2", b2)],
        "mlp",
    )


class Net:
    """A tiny ONNX graph writer for the CNN and the transformer."""

    def __init__(self):
        self.nodes, self.inits, self.n = [], [], 0

    def name(self, base):
        self.n += 1
        return f"{base}_{self.n}"

    def const(self, arr, base="c"):
        n = self.name(base)
        self.inits.append(init(n, arr))
        return n

    def op(self, op_type, inputs, **attrs):
        out = self.name(op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [out], **attrs))
        return out

    def conv_bn(self, x, cin, cout, k, stride, relu=True):
        w = self.const(he((cout, cin, k, k), cin * k * k), "w")
        y = self.op("Conv", [x, w], kernel_shape=[k, k], strides=[stride, stride], pads=[k // 2] * 4)
        scale = self.const((1.0 + 0.1 * rng.standard_normal(cout)).astype(np.float32), "gamma")
        bias = self.const((0.1 * rng.standard_normal(cout)).astype(np.float32), "beta")
        mean = self.const((0.1 * rng.standard_normal(cout)).astype(np.float32), "mean")
        var = self.const((1.0 + 0.1 * rng.random(cout)).astype(np.float32), "var")
        y = self.op("BatchNormalization", [y, scale, bias, mean, var], epsilon=1e-5)
        return self.op("Relu", [y]) if relu else y

    def block(self, x, cin, cout, stride):
        y = self.conv_bn(x, cin, cout, 3, stride)
        y = self.conv_bn(y, cout, cout, 3, 1, relu=False)
        short = x if (cin == cout and stride == 1) else self.conv_bn(x, cin, cout, 1, stride, relu=False)
        return self.op("Relu", [self.op("Add", [y, short])])


def cnn(classes=16):
    """ResNet-style: stem conv/bn/relu/maxpool, three residual stages,
    global average pool, gemm, softmax. Input 1x3x224x224 (dynamic batch)."""
    n = Net()
    x = n.conv_bn("image", 3, 16, 3, 2)
    x = n.op("MaxPool", [x], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    x = n.block(x, 16, 16, 1)
    x = n.block(x, 16, 32, 2)
    x = n.block(x, 32, 64, 2)
    x = n.op("GlobalAveragePool", [x])
    x = n.op("Flatten", [x], axis=1)
    w = n.const(he((classes, 64), 64), "fc_w")
    b = n.const(np.zeros(classes, np.float32), "fc_b")
    logits = n.op("Gemm", [x, w, b], transB=1)
    n.nodes.append(helper.make_node("Softmax", [logits], ["probs"], axis=-1))
    return model(
        n.nodes,
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, 224, 224])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", classes])],
        n.inits,
        "cnn",
    )


def transformer(d=64, heads=4, ff=128):
    """One pre-norm transformer encoder block: layer-norm, multi-head
    self-attention (matmul/softmax), residual, layer-norm, GELU MLP."""
    n = Net()
    hd = d // heads

    def ln(x):
        g = n.const((1.0 + 0.1 * rng.standard_normal(d)).astype(np.float32), "ln_g")
        b = n.const((0.1 * rng.standard_normal(d)).astype(np.float32), "ln_b")
        return n.op("LayerNormalization", [x, g, b], axis=-1, epsilon=1e-5)

    def linear(x, din, dout):
        w = n.const(he((din, dout), din) * 0.5, "w")
        b = n.const((0.02 * rng.standard_normal(dout)).astype(np.float32), "b")
        return n.op("Add", [n.op("MatMul", [x, w]), b])

    def split_heads(x):
        shape = n.const(np.array([0, -1, heads, hd], np.int64), "shape")
        return n.op("Transpose", [n.op("Reshape", [x, shape])], perm=[0, 2, 1, 3])

    h = ln("tokens")
    q, k, v = (split_heads(linear(h, d, d)) for _ in range(3))
    scores = n.op("MatMul", [q, n.op("Transpose", [k], perm=[0, 1, 3, 2])])
    scores = n.op("Div", [scores, n.const(np.array(np.sqrt(hd), np.float32), "scale")])
    attn = n.op("Softmax", [scores], axis=-1)
    ctx = n.op("Transpose", [n.op("MatMul", [attn, v])], perm=[0, 2, 1, 3])
    ctx = n.op("Reshape", [ctx, n.const(np.array([0, -1, d], np.int64), "shape")])
    x = n.op("Add", ["tokens", linear(ctx, d, d)])
    h = linear(ln(x), d, ff)
    # GELU (exact): x * 0.5 * (1 + erf(x / sqrt(2)))
    e = n.op("Erf", [n.op("Div", [h, n.const(np.array(np.sqrt(2.0), np.float32), "sqrt2")])])
    g = n.op("Mul", [n.op("Mul", [h, n.const(np.array(0.5, np.float32), "half")]),
                     n.op("Add", [e, n.const(np.array(1.0, np.float32), "one")])])
    out = n.op("Add", [x, linear(g, ff, d)])
    n.nodes.append(helper.make_node("Identity", [out], ["encoded"]))
    return model(
        n.nodes,
        [helper.make_tensor_value_info("tokens", TensorProto.FLOAT, ["batch", "seq", d])],
        [helper.make_tensor_value_info("encoded", TensorProto.FLOAT, ["batch", "seq", d])],
        n.inits,
        "transformer",
    )


TYPES = {
    # KServe datatype: (ONNX type, numpy dtype)
    "FP16": (TensorProto.FLOAT16, np.float16),
    "FP32": (TensorProto.FLOAT, np.float32),
    "FP64": (TensorProto.DOUBLE, np.float64),
    "BF16": (TensorProto.BFLOAT16, None),
    "UINT8": (TensorProto.UINT8, np.uint8),
    "INT32": (TensorProto.INT32, np.int32),
    "INT64": (TensorProto.INT64, np.int64),
    "BOOL": (TensorProto.BOOL, np.bool_),
}


def types_model():
    """Every wasi-nn element type in and out: Identity per type, plus real
    arithmetic where ONNX Runtime's CPU kernels have it."""
    nodes, inputs, outputs = [], [], []
    for dt, (onnx_t, _) in TYPES.items():
        name = dt.lower()
        inputs.append(helper.make_tensor_value_info(f"in_{name}", onnx_t, [2, 3]))
        outputs.append(helper.make_tensor_value_info(f"out_{name}", onnx_t, [2, 3]))
        op = {"FP16": "Neg", "FP32": "Neg", "FP64": "Neg", "INT32": "Neg", "INT64": "Neg", "BOOL": "Not"}.get(dt, "Identity")
        nodes.append(helper.make_node(op, [f"in_{name}"], [f"out_{name}"]))
    return model(nodes, inputs, outputs, [], "types")


def bf16_bytes_to_floats(raw):
    return (np.frombuffer(raw, np.uint16).astype(np.uint32) << 16).view(np.float32)


def request_for(m, shapes):
    """Seeded random inputs for m, as a KServe request and as numpy feeds."""
    req, feeds = {"inputs": []}, {}
    for inp in m.graph.input:
        shape = shapes[inp.name]
        t = inp.type.tensor_type.elem_type
        dt = next(k for k, v in TYPES.items() if v[0] == t)
        if dt == "BF16":
            vals = rng.standard_normal(shape).astype(np.float32)
            raw = (vals.view(np.uint32) >> 16).astype(np.uint16)
            vals = bf16_bytes_to_floats(raw.tobytes()).reshape(shape)
            feeds[inp.name] = None  # ORT's Python API has no bfloat16 feed
            data = vals.ravel().tolist()
        elif dt == "BOOL":
            arr = rng.random(shape) > 0.5
            feeds[inp.name], data = arr, arr.ravel().tolist()
        elif dt in ("UINT8",):
            arr = rng.integers(0, 255, shape).astype(np.uint8)
            feeds[inp.name], data = arr, arr.ravel().tolist()
        elif dt in ("INT32", "INT64"):
            arr = rng.integers(-1000, 1000, shape).astype(TYPES[dt][1])
            feeds[inp.name], data = arr, arr.ravel().tolist()
        else:
            arr = rng.standard_normal(shape).astype(TYPES[dt][1])
            feeds[inp.name], data = arr, [float(v) for v in arr.ravel()]
        req["inputs"].append({"name": inp.name, "shape": list(shape), "datatype": dt, "data": data})
    return req, feeds


def expected(path, m, req, feeds):
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    runnable = {k: v for k, v in feeds.items() if v is not None}
    names = [o.name for o in m.graph.output]
    # Outputs that depend on a bfloat16 input are computed by hand below.
    ort_names = [n for n in names if n != "out_bf16"]
    if len(runnable) != len(feeds):
        # Build a copy of the model without the bf16 path for ORT's Python API.
        mm = onnx.ModelProto()
        mm.CopyFrom(m)
        keep = [nd for nd in mm.graph.node if nd.output[0] != "out_bf16"]
        del mm.graph.node[:]
        mm.graph.node.extend(keep)
        for coll in (mm.graph.input, mm.graph.output):
            keep = [v for v in coll if v.name not in ("in_bf16", "out_bf16")]
            del coll[:]
            coll.extend(keep)
        sess = ort.InferenceSession(mm.SerializeToString(), providers=["CPUExecutionProvider"])
    results = dict(zip(ort_names, sess.run(ort_names, runnable)))
    outs = []
    for o in m.graph.output:
        if o.name == "out_bf16":
            src = next(i for i in req["inputs"] if i["name"] == "in_bf16")
            outs.append({"name": o.name, "datatype": "BF16", "shape": src["shape"], "data": src["data"]})
            continue
        arr = results[o.name]
        dt = next(k for k, v in TYPES.items() if v[0] == o.type.tensor_type.elem_type)
        data = arr.ravel().tolist() if arr.dtype.kind in "biu" else [float(v) for v in arr.ravel()]
        if dt == "BOOL":
            dt, data = "UINT8", [int(v) for v in data]  # wasi-nn carries bool as u8
        outs.append({"name": o.name, "datatype": dt, "shape": list(arr.shape), "data": data})
    return {"outputs": outs}


def splitmix(seed):
    """The guest-examples/mlp-builder weight stream, bit for bit."""
    mask = (1 << 64) - 1
    state = seed
    while True:
        state = (state + 0x9E3779B97F4A7C15) & mask
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        z ^= z >> 31
        yield np.float32(z >> 40) / np.float32(16777216.0) * np.float32(2.0) - np.float32(1.0)


def mlp_builder_reference(out, seed=7):
    """The network mlp-builder declares, built here with onnx.helper and
    run by ONNX Runtime on the same input."""
    rng_w = splitmix(seed)

    def take(shape, scale):
        n = int(np.prod(shape))
        return (np.array([next(rng_w) for _ in range(n)], np.float32) * np.float32(scale)).reshape(shape)

    sc = lambda fan_in: np.float32(1.0) / np.sqrt(np.float32(fan_in))
    w1, b1 = take((16, 32), sc(16)), take((32,), 0.1)
    w2, b2 = take((32, 32), sc(32)), take((32,), 0.1)
    w3, b3 = take((32, 10), sc(32)), take((10,), 0.1)
    n = Net()
    h = n.op("Relu", [n.op("Gemm", ["x", n.const(w1), n.const(b1)])])
    h = n.op("Add", [n.op("MatMul", [h, n.const(w2)]), n.const(b2)])
    e = n.op("Erf", [n.op("Mul", [h, n.const(np.array(np.float32(1.0) / np.sqrt(np.float32(2.0)), np.float32))])])
    h = n.op("Mul", [n.op("Mul", [h, n.const(np.array(0.5, np.float32))]), n.op("Add", [e, n.const(np.array(1.0, np.float32))])])
    h = n.op("LayerNormalization", [h, n.const(np.ones(32, np.float32)), n.const(np.zeros(32, np.float32))], axis=-1, epsilon=1e-5)
    n.nodes.append(helper.make_node("Gemm", [h, n.const(w3), n.const(b3)], ["logits"]))
    n.nodes.append(helper.make_node("Softmax", ["logits"], ["probs"], axis=-1))
    m = model(n.nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])],
              [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", 10]),
               helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])], n.inits, "mlp_builder")
    path = os.path.join(out, "mlp_builder.reference.onnx")
    onnx.save(m, path)
    req, feeds = request_for(m, {"x": [3, 16]})
    req["parameters"] = {"seed": str(seed)}
    with open(os.path.join(out, "mlp_builder.request.json"), "w") as f:
        json.dump(req, f)
    with open(os.path.join(out, "mlp_builder.expected.json"), "w") as f:
        json.dump(expected(path, m, req, feeds), f)


def demo_image(h=180, w=240):
    """A synthetic RGB picture: gradients and a disc."""
    yy, xx = np.mgrid[0:h, 0:w]
    r = (255 * xx / (w - 1)).astype(np.float32)
    g = (255 * yy / (h - 1)).astype(np.float32)
    b = np.where((yy - h / 2) ** 2 + (xx - w / 3) ** 2 < (h / 4) ** 2, 230.0, 40.0).astype(np.float32)
    return np.stack([r, g, b], axis=-1).round().astype(np.uint8)


def classifier_reference(out, labels_path):
    """The classifier guest's whole computation in numpy + ONNX Runtime."""
    img = demo_image()
    h, w, _ = img.shape
    size = 224
    mean = np.array([0.485, 0.456, 0.406], np.float32)
    std = np.array([0.229, 0.224, 0.225], np.float32)

    def coords(n_in):
        f = np.maximum((np.arange(size, dtype=np.float32) + np.float32(0.5)) * np.float32(n_in / size) - np.float32(0.5), 0)
        i0 = np.minimum(f.astype(np.int64), n_in - 1)
        return i0, np.minimum(i0 + 1, n_in - 1), (f - i0).astype(np.float32)

    y0, y1, dy = coords(h)
    x0, x1, dx = coords(w)
    p = img.astype(np.float32)
    top = p[y0][:, x0] * (1 - dx)[None, :, None] + p[y0][:, x1] * dx[None, :, None]
    bot = p[y1][:, x0] * (1 - dx)[None, :, None] + p[y1][:, x1] * dx[None, :, None]
    v = top * (1 - dy)[:, None, None] + bot * dy[:, None, None]
    x = ((v / 255.0 - mean) / std).transpose(2, 0, 1)[None].astype(np.float32)
    sess = ort.InferenceSession(os.path.join(out, "cnn.onnx"), providers=["CPUExecutionProvider"])
    probs = sess.run(["probs"], {"image": x})[0][0]
    order = sorted(range(len(probs)), key=lambda i: (-probs[i], i))[:5]
    labels = open(labels_path).read().splitlines()
    req = {"inputs": [{"name": "image", "shape": [h, w, 3], "datatype": "UINT8", "data": img.ravel().tolist()}],
           "parameters": {"top_k": "5"}}
    exp = {"outputs": [
        {"name": "labels", "datatype": "BYTES", "shape": [5], "data": [labels[i] for i in order]},
        {"name": "scores", "datatype": "FP32", "shape": [5], "data": [float(probs[i]) for i in order]},
        {"name": "indices", "datatype": "INT64", "shape": [5], "data": order},
    ]}
    with open(os.path.join(out, "classifier.request.json"), "w") as f:
        json.dump(req, f)
    with open(os.path.join(out, "classifier.expected.json"), "w") as f:
        json.dump(exp, f)


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "build/models"
    os.makedirs(out, exist_ok=True)
    specs = {
        "mlp": (mlp(), {"x": [4, 16]}),
        "cnn": (cnn(), {"image": [1, 3, 224, 224]}),
        "transformer": (transformer(), {"tokens": [2, 12, 64]}),
        "types": (types_model(), {f"in_{dt.lower()}": [2, 3] for dt in TYPES}),
    }
    for name, (m, shapes) in specs.items():
        path = os.path.join(out, f"{name}.onnx")
        onnx.save(m, path)
        req, feeds = request_for(m, shapes)
        with open(os.path.join(out, f"{name}.request.json"), "w") as f:
            json.dump(req, f)
        with open(os.path.join(out, f"{name}.expected.json"), "w") as f:
            json.dump(expected(path, m, req, feeds), f)
        print(f"{path}: {os.path.getsize(path)} bytes", file=sys.stderr)
    mlp_builder_reference(out)
    here = os.path.dirname(os.path.abspath(__file__))
    classifier_reference(out, os.path.join(here, "..", "guest-examples", "classifier", "labels.txt"))


if __name__ == "__main__":
    main()
