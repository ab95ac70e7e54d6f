#!/usr/bin/env python3
"""Turns bench-results.jsonl (scripts/benchmarks) into the Markdown tables of BENCHMARKS.md."""
import json, sys

rows = [json.loads(l) for l in open(sys.argv[1] if len(sys.argv) > 1 else "bench-results.jsonl") if l.strip()]

def f(x, fmt="{:.0f}"):
    return "-" if x is None else fmt.format(x)

def rows_of(bench, scale):
    return [r for r in rows if r.get("bench") == bench and r["scale"] == scale]

def modes(r):
    """(mode name, its results) of one bench, in report order."""
    for mode in ["none", "hams", "stop-and-buffer", "checkpoint"]:
        if mode in r["modes"]:
            yield mode, r["modes"][mode]

def latency(scale):
    print(f"\n#### Latency, open loop at 1000 req/s ({scale} models; median of 5 interleaved rounds)\n")
    print("| graph | mode | mean µs | p50 µs (range over rounds) | p99 µs | mean ratio | p50 ratio | p99 ratio | consistent |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---|")
    for r in rows_of("latency", scale):
        for mode, m in modes(r):
            lo, hi = m.get("p50_us_range", [None, None])
            spread = f" ({f(lo)}–{f(hi)})" if lo is not None else ""
            print(f"| {r['graph']} | {mode} | {f(m.get('mean_us'))} | {f(m['p50_us'])}{spread} | {f(m['p99_us'])} | {f(m.get('mean_ratio'), '{:.3f}')} | {f(m.get('p50_ratio'), '{:.3f}')} | {f(m.get('p99_ratio'), '{:.3f}')} | {m['consistent']} |")

def recovery(scale):
    print(f"\n#### Recovery and throughput, closed loop, one stateful primary killed mid-run ({scale} models; 3 rounds)\n")
    print("| graph | mode | recovery ms (median) | throughput req/s | vs raw | consistent | lost | dup | errors | peak RSS MiB |")
    print("|---|---|---:|---:|---:|---|---:|---:|---:|---:|")
    for r in rows_of("recovery", scale):
        for mode, m in modes(r):
            rec = m["recovery_ms_median"] if m["recovery_ms"] else None
            vs = m.get("throughput_vs_raw")
            print(f"| {r['graph']} | {mode} | {f(rec, '{:.1f}')} | {f(m['throughput_rps'])} | {f(vs*100 if vs is not None else None, '{:.0f}%')} | {m['consistent']} | {m['lost']} | {m['duplicated']} | {m.get('errors', '-')} | {f(m['peak_rss_mb'])} |")
        ratios = r.get("recovery_ratios", {})
        if ratios:
            print(f"| {r['graph']} | recovery ratios | " + ", ".join(f"{k} {v:.1f}x" for k, v in ratios.items()) + f" | raw {f(r.get('raw_rps'))} req/s | | | | | | |")

for scale in ["small", "realistic"]:
    if rows_of("latency", scale):
        latency(scale)
    if rows_of("recovery", scale):
        recovery(scale)

mem = [r for r in rows if r.get("bench") == "memory"]
if mem:
    print("\n#### Peak memory as the request count grows tenfold (stock, realistic, hams, 3000 req/s)\n")
    print("| requests | peak RSS MiB (worker + executors) |")
    print("|---:|---:|")
    for r in mem:
        print(f"| {r['requests']} | {f(r['modes']['hams']['peak_rss_mb'], '{:.1f}')} |")

back = [r for r in rows if r.get("bench") == "backend"]
if back:
    print("\n#### candle vs tch on CPU (same weights; mode none, closed loop, 3 rounds)\n")
    print("| graph | scale | backend | raw inference req/s | full system req/s | system vs raw | p50 µs | peak RSS MiB |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for r in back:
        m = r["modes"]["none"]
        print(f"| {r['graph']} | {r['scale']} | {r['backend']} | {f(r.get('raw_rps'))} | {f(m['throughput_rps'])} | {f(100 * m['throughput_vs_raw'], '{:.0f}%')} | {f(m['p50_us'])} | {f(m['peak_rss_mb'])} |")
