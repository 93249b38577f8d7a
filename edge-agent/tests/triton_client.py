"""Calls a running `mote serve` with Triton's own Python client
(`tritonclient[http]`), unmodified: health, metadata, and inference with
binary and JSON tensors, checked against ONNX Runtime's outputs.

Usage: triton_client.py HOST:PORT CA_CERT TOKEN EXPECTED_JSON REQUEST_JSON
"""
import json
import sys

import numpy as np
import tritonclient.http as httpclient

url, ca, token, expected_path, request_path = sys.argv[1:6]
headers = {"Authorization": f"Bearer {token}"}
client = httpclient.InferenceServerClient(url=url, ssl=True, ssl_options={"ca_certs": ca})

assert client.is_server_live(), "server not live"
assert client.is_server_ready(), "server not ready"
assert client.is_model_ready("mlp", headers=headers), "mlp not ready"
meta = client.get_model_metadata("mlp", headers=headers)
assert meta["inputs"][0]["name"] == "x" and meta["inputs"][0]["datatype"] == "FP32", meta

req = json.load(open(request_path))["inputs"][0]
x = np.array(req["data"], dtype=np.float32).reshape(req["shape"])
want = {o["name"]: np.array(o["data"], dtype=np.float32).reshape(o["shape"]) for o in json.load(open(expected_path))["outputs"]}

passed = 0
for binary in (True, False):
    inp = httpclient.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    outs = [httpclient.InferRequestedOutput("probs", binary_data=binary),
            httpclient.InferRequestedOutput("logits", binary_data=binary)]
    # A fresh dict per call: tritonclient adds its Inference-Header-Content-Length to it.
    result = client.infer("mlp", [inp], outputs=outs, headers=dict(headers))
    for name in ("probs", "logits"):
        got = result.as_numpy(name)
        np.testing.assert_allclose(got, want[name], rtol=1e-5, atol=1e-6, err_msg=f"{name} binary={binary}")
    params = result.get_response().get("parameters", {})
    assert params.get("mote_outcome") == "ok", params
    passed += 1

# A bad token is refused with the server's message.
try:
    client.infer("mlp", [inp], headers={"Authorization": "Bearer wrong-token-000"})
    raise AssertionError("a wrong token was accepted")
except httpclient.InferenceServerException as e:
    assert "bearer token" in str(e), e
    passed += 1

print(f"tritonclient: {passed} passed, 0 failed")
