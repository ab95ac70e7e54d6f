"""Client-observed latency and throughput of `hams run --serve`, measured
with Triton's own client (tritonclient) over HTTP and gRPC.

Each of C client threads has its own connection and sends sequences of 20
steps (a session each), one request at a time, with an id. Prints one JSON
line per (protocol, concurrency): p50/p99/mean ms and requests/s.

Usage: serve-bench.py HOST:PORT MODEL [--seconds S] [--concurrency 1,8] [--protocols http,grpc]
(Run it with the tritonclient venv: scripts/tritonclient.sh sets HAMS_TRITON_PYTHON.)
"""
import argparse
import json
import statistics
import threading
import time

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

ap = argparse.ArgumentParser()
ap.add_argument("url")
ap.add_argument("model")
ap.add_argument("--seconds", type=float, default=10)
ap.add_argument("--warmup", type=float, default=1)
ap.add_argument("--concurrency", default="1,8")
ap.add_argument("--protocols", default="http,grpc")
args = ap.parse_args()

meta = httpclient.InferenceServerClient(url=args.url).get_model_metadata(args.model)
shape = [1] + [int(d) for d in meta["inputs"][0]["shape"][1:]]
base = {"http": 1_000_000, "grpc": 2_000_000}


def client_loop(protocol, worker, stop_at, warm_until, lat):
    lib = httpclient if protocol == "http" else grpcclient
    c = lib.InferenceServerClient(url=args.url)
    rng = np.random.default_rng(worker)
    i = 0
    while True:
        now = time.perf_counter()
        if now >= stop_at:
            return
        session = base[protocol] + worker * 10_000 + i // 20 + 1
        x = rng.standard_normal(shape).astype(np.float32)
        inp = lib.InferInput("INPUT", shape, "FP32")
        inp.set_data_from_numpy(x)
        t = time.perf_counter()
        c.infer(args.model, [inp], request_id=f"bench-{protocol}-{worker}-{i}-{t}",
                sequence_id=session, sequence_start=i % 20 == 0, sequence_end=i % 20 == 19)
        done = time.perf_counter()
        if t >= warm_until:
            lat.append((done - t) * 1e3)
        i += 1


for protocol in args.protocols.split(","):
    for conc in [int(c) for c in args.concurrency.split(",")]:
        base[protocol] += 100_000
        lat = []
        start = time.perf_counter()
        warm_until = start + args.warmup
        stop_at = warm_until + args.seconds
        threads = [threading.Thread(target=client_loop, args=(protocol, w, stop_at, warm_until, lat)) for w in range(conc)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        lat.sort()
        print(json.dumps({
            "protocol": protocol, "concurrency": conc, "n": len(lat),
            "p50_ms": round(lat[len(lat) // 2], 3), "p99_ms": round(lat[int(len(lat) * 0.99)], 3),
            "mean_ms": round(statistics.mean(lat), 3), "throughput_rps": round(len(lat) / args.seconds, 1),
        }), flush=True)
