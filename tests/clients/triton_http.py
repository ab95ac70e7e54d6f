"""Drives `hams run --serve` with Triton's own HTTP client; prints one JSON line of what it saw.

Usage: triton_http.py HOST:PORT MODEL
"""
import json
import sys

import numpy as np
import tritonclient.http as httpclient

url, model = sys.argv[1], sys.argv[2]
c = httpclient.InferenceServerClient(url=url)
seen = {
    "live": c.is_server_live(),
    "ready": c.is_server_ready(),
    "model_ready": c.is_model_ready(model),
    "metadata": c.get_model_metadata(model),
    "outputs": [],
}
for step in range(3):
    x = np.array([[((step * 7 + k) % 13) / 13.0 for k in range(16)]], dtype=np.float32)
    inp = httpclient.InferInput("INPUT", [1, 16], "FP32")
    inp.set_data_from_numpy(x, binary_data=False)
    out = httpclient.InferRequestedOutput("OUTPUT", binary_data=False)
    kw = dict(request_id=f"triton-{step}", sequence_id=11, sequence_start=step == 0, sequence_end=step == 2)
    first = c.infer(model, [inp], outputs=[out], **kw).as_numpy("OUTPUT")
    # A retry with the same id: the same answer.
    again = c.infer(model, [inp], outputs=[out], **kw).as_numpy("OUTPUT")
    seen["outputs"].append({"input": x[0].tolist(), "output": first[0].tolist(), "retry_same": bool((first == again).all())})
# The binary tensor extension (tritonclient's default): the same answer as JSON tensors.
x = np.linspace(-1, 1, 16, dtype=np.float32).reshape(1, 16)
answers = []
for seq, binary in [(21, False), (22, True)]:
    inp = httpclient.InferInput("INPUT", [1, 16], "FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    out = httpclient.InferRequestedOutput("OUTPUT", binary_data=binary)
    answers.append(c.infer(model, [inp], outputs=[out], sequence_id=seq, sequence_start=True).as_numpy("OUTPUT"))
seen["binary_same"] = bool((answers[0] == answers[1]).all())
try:
    c.infer("no_such_model", [inp])
    seen["unknown_model"] = "accepted"
except Exception as e:  # tritonclient raises InferenceServerException with the server's message
    seen["unknown_model"] = str(e)
print(json.dumps(seen))
