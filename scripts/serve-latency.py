# Client-observed latency of `hams run --serve` on the stock graph at concurrency 1:
# sequential requests on one connection. Usage: serve-latency.py HOST PORT COUNT
import http.client, json, sys, time, statistics
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
c = http.client.HTTPConnection(host, port)
lat = []
for i in range(n):
    s = i % 16 + 1
    body = json.dumps({"id": f"lat-{i}", "parameters": {"sequence_id": s, "sequence_start": i < 16},
                       "inputs": [{"name": "INPUT", "shape": [1, 32], "datatype": "FP32", "data": [((i * 7 + k) % 13) / 13.0 for k in range(32)]}]})
    t = time.perf_counter()
    c.request("POST", "/v2/models/stock/infer", body, {"Content-Type": "application/json"})
    r = c.getresponse(); r.read()
    lat.append((time.perf_counter() - t) * 1e3)
    assert r.status == 200, r.status
lat = lat[50:]
lat.sort()
print(json.dumps({"n": len(lat), "p50_ms": round(lat[len(lat)//2], 3), "p99_ms": round(lat[int(len(lat)*0.99)], 3), "mean_ms": round(statistics.mean(lat), 3)}))
