"""Calls a running `mote serve` over KServe v2 gRPC with Triton's own
Python client (`tritonclient[grpc]`), unmodified.

Usage:
  triton_grpc_client.py infer GRPC_HOST:PORT HTTPS_HOST:PORT CA_CERT TOKEN EXPECTED_JSON REQUEST_JSON
      health, metadata, inference with raw and typed tensor contents,
      checked against ONNX Runtime's outputs and equal to the REST answer
  triton_grpc_client.py stream GRPC_HOST:PORT CA_CERT TOKEN MODEL REQUEST_BODY_JSON
      ModelStreamInfer on a streaming guest; prints the chunks and the
      final response as JSON
"""
import json
import queue
import sys

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.grpc import service_pb2


def client(url, ca):
    return grpcclient.InferenceServerClient(url=url, ssl=True, root_certificates=ca)


def infer(grpc_url, http_url, ca, token, expected_path, request_path):
    headers = {"authorization": f"Bearer {token}"}
    g = client(grpc_url, ca)
    h = httpclient.InferenceServerClient(url=http_url, ssl=True, ssl_options={"ca_certs": ca})
    passed = 0
    assert g.is_server_live() and g.is_server_ready(), "server not live/ready"
    assert g.is_model_ready("mlp", headers=headers), "mlp not ready"
    meta = g.get_model_metadata("mlp", headers=headers)
    assert meta.inputs[0].name == "x" and meta.inputs[0].datatype == "FP32", meta
    passed += 1

    req = json.load(open(request_path))["inputs"][0]
    x = np.array(req["data"], dtype=np.float32).reshape(req["shape"])
    want = {o["name"]: np.array(o["data"], dtype=np.float32).reshape(o["shape"])
            for o in json.load(open(expected_path))["outputs"]}
    inp = grpcclient.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)  # raw_input_contents
    outs = [grpcclient.InferRequestedOutput("probs"), grpcclient.InferRequestedOutput("logits")]
    result = g.infer("mlp", [inp], outputs=outs, headers=headers)
    hin = httpclient.InferInput("x", list(x.shape), "FP32")
    hin.set_data_from_numpy(x, binary_data=True)
    rest = h.infer("mlp", [hin], headers={"Authorization": f"Bearer {token}"})
    for name in ("probs", "logits"):
        got = result.as_numpy(name)
        np.testing.assert_allclose(got, want[name], rtol=1e-5, atol=1e-6, err_msg=name)
        assert np.array_equal(got, rest.as_numpy(name)), f"gRPC and REST {name} differ"
    params = result.get_response().parameters
    assert params["mote_outcome"].string_param == "ok", params
    assert json.loads(params["mote_receipt"].string_param)["outcome"] == "ok"
    passed += 1

    # Typed contents (fp32_contents) instead of raw bytes, through the
    # generated stub, as other clients send them.
    typed = service_pb2.ModelInferRequest(model_name="mlp", id="typed-1")
    t = typed.inputs.add(name="x", datatype="FP32", shape=list(x.shape))
    t.contents.fp32_contents.extend(x.flatten().tolist())
    resp = g._client_stub.ModelInfer(typed, metadata=tuple(headers.items()))
    assert resp.id == "typed-1", resp.id
    names = [o.name for o in resp.outputs]
    probs = np.frombuffer(resp.raw_output_contents[names.index("probs")], dtype=np.float32).reshape(want["probs"].shape)
    assert np.array_equal(probs, result.as_numpy("probs")), "typed and raw contents differ"
    passed += 1

    # A bad token and an unknown model are refused with the server's message.
    for hdrs, model, words in (({"authorization": "Bearer wrong-token-000"}, "mlp", "bearer token"),
                               (headers, "nope", "no deployment")):
        try:
            g.infer(model, [inp], headers=hdrs)
            raise AssertionError(f"{model} with {hdrs} was accepted")
        except grpcclient.InferenceServerException as e:
            assert words in str(e), e
            passed += 1
    print(f"tritonclient-grpc: {passed} passed, 0 failed")


def stream(url, ca, token, model, body):
    g = client(url, ca)
    got = queue.Queue()
    g.start_stream(callback=lambda result, error: got.put((result, error)),
                   headers={"authorization": f"Bearer {token}"})
    inp = grpcclient.InferInput("request", [1], "BYTES")
    inp.set_data_from_numpy(np.array([body.encode()], dtype=np.object_))
    g.async_stream_infer(model, [inp], request_id="s-1", enable_empty_final_response=False)
    chunks, final = [], None
    while final is None:
        result, error = got.get(timeout=120)
        assert error is None, error
        r = result.get_response()
        if r.parameters["triton_final_response"].bool_param:
            final = result
        else:
            assert r.parameters["mote_chunk"].bool_param, r.parameters
            chunks.append(result.as_numpy("chunk")[0].decode())
    g.stop_stream()
    params = final.get_response().parameters
    print(json.dumps({"chunks": chunks, "text": final.as_numpy("text")[0].decode(),
                      "token_ids": final.as_numpy("token_ids").tolist(),
                      "receipt": params["mote_receipt"].string_param}))


if __name__ == "__main__":
    if sys.argv[1] == "infer":
        infer(*sys.argv[2:8])
    else:
        stream(*sys.argv[2:7])
