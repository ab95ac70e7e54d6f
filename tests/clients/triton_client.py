"""Drives `hams run --serve` with Triton's own client, over HTTP or gRPC;
prints one JSON line of what it saw.

Usage: triton_client.py http|grpc HOST:PORT MODEL
"""
import json
import sys

import numpy as np

protocol, url, model = sys.argv[1], sys.argv[2], sys.argv[3]
if protocol == "http":
    import tritonclient.http as client
else:
    import tritonclient.grpc as client
from tritonclient.utils import InferenceServerException

c = client.InferenceServerClient(url=url)


def infer_input(x, binary):
    inp = client.InferInput("INPUT", list(x.shape), "FP32")
    if protocol == "http":
        inp.set_data_from_numpy(x, binary_data=binary)
    else:
        inp.set_data_from_numpy(x)
    return inp


def requested(binary):
    if protocol == "http":
        return client.InferRequestedOutput("OUTPUT", binary_data=binary)
    return client.InferRequestedOutput("OUTPUT")


def refused(call):
    """The server's message for a call it refuses (or "accepted")."""
    try:
        call()
        return "accepted"
    except InferenceServerException as e:
        return f"{e.status()} {e.message()}"


metadata = c.get_model_metadata(model, as_json=True) if protocol == "grpc" else c.get_model_metadata(model)
for t in metadata["inputs"] + metadata["outputs"]:
    t["shape"] = [int(d) for d in t["shape"]]  # protobuf's JSON writes int64 as strings
seen = {
    "live": c.is_server_live(),
    "ready": c.is_server_ready(),
    "model_ready": c.is_model_ready(model),
    "metadata": metadata,
    "outputs": [],
}
for step in range(3):
    x = np.array([[((step * 7 + k) % 13) / 13.0 for k in range(16)]], dtype=np.float32)
    kw = dict(request_id=f"triton-{protocol}-{step}", sequence_id=11, sequence_start=step == 0, sequence_end=step == 2)
    first = c.infer(model, [infer_input(x, False)], outputs=[requested(False)], **kw).as_numpy("OUTPUT")
    # A retry with the same id: the same answer.
    again = c.infer(model, [infer_input(x, False)], outputs=[requested(False)], **kw).as_numpy("OUTPUT")
    seen["outputs"].append({"input": x[0].tolist(), "output": first[0].tolist(), "retry_same": bool((first == again).all())})
# Binary tensors (HTTP's extension; gRPC's raw contents): the same answer as JSON ones.
x = np.linspace(-1, 1, 16, dtype=np.float32).reshape(1, 16)
answers = []
for seq, binary in [(21, False), (22, True)]:
    answers.append(
        c.infer(model, [infer_input(x, binary)], outputs=[requested(binary)], sequence_id=seq, sequence_start=True).as_numpy("OUTPUT")
    )
seen["binary_same"] = bool((answers[0] == answers[1]).all())
seen["unknown_model"] = refused(lambda: c.infer("no_such_model", [infer_input(x, False)]))
seen["wrong_shape"] = refused(lambda: c.infer(model, [infer_input(np.zeros((1, 15), dtype=np.float32), False)]))
seen["never_started"] = refused(lambda: c.infer(model, [infer_input(x, False)], sequence_id=99))
if protocol == "grpc":
    # Garbage where a ModelInferRequest belongs: refused with a message, and serving goes on.
    import grpc

    with grpc.insecure_channel(url) as ch:
        raw = ch.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        try:
            raw(b"\x0a\xff\xff\xff\xff\x0f\x12garbage", timeout=10)
            seen["garbage"] = "accepted"
        except grpc.RpcError as e:
            seen["garbage"] = f"{e.code().name} {e.details()}"
    after = c.infer(model, [infer_input(x, False)], sequence_id=23, sequence_start=True).as_numpy("OUTPUT")
    seen["serves_after_garbage"] = bool(after.shape == (1, answers[0].shape[1]))
print(json.dumps(seen))
