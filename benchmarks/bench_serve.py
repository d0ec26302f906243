"""The server under concurrent load: 16 streaming clients at once against the same
16 requests one after another, on loopback, in one run.

Starts ``fmforge serve RUN`` in a subprocess, then sends REQUESTS completion
requests with ``stream: true`` (greedy, a fixed number of new tokens, a stop
string that never appears so every request generates the same count): first
sequentially (one client), then with CONCURRENCY clients in flight. Prints
requests/s, time to first token and request latency (p50/p99), and aggregate
generated tokens/s for both, and the ratio: step-level batching must make the
concurrent aggregate far higher than the sequential one.

    python benchmarks/bench_serve.py runs/demo [--requests 16] [--concurrency 16] [--max-tokens 64]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def one_request(client: httpx.AsyncClient, url: str, body: dict) -> dict:
    t0 = time.perf_counter()
    first, pieces = None, 0
    async with client.stream("POST", url, json=body, timeout=600) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            text = json.loads(line[6:])["choices"][0].get("text", "")
            if text and first is None:
                first = time.perf_counter() - t0
            pieces += bool(text)
    return {"ttft_s": first if first is not None else float("nan"),
            "latency_s": time.perf_counter() - t0}


async def run_load(base: str, model: str, requests: int, concurrency: int, max_tokens: int) -> dict:
    url = base + "/v1/completions"
    prompts = [f"def function_{i}(value):\n    " for i in range(requests)]
    sem = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency + 4)
    async with httpx.AsyncClient(limits=limits) as client:
        async def bounded(p):
            async with sem:
                return await one_request(client, url, {
                    "model": model, "prompt": p, "max_tokens": max_tokens, "temperature": 0,
                    "stream": True, "stop": ["\x00never\x00"]})

        t0 = time.perf_counter()
        results = await asyncio.gather(*(bounded(p) for p in prompts))
        wall = time.perf_counter() - t0
    lat = sorted(r["latency_s"] for r in results)
    ttft = sorted(r["ttft_s"] for r in results)

    def pct(xs, q):
        return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]

    return {"concurrency": concurrency, "requests": requests, "wall_s": wall,
            "requests_per_s": requests / wall, "tokens_per_s": requests * max_tokens / wall,
            "ttft_p50_s": statistics.median(ttft), "ttft_p99_s": pct(ttft, 0.99),
            "latency_p50_s": statistics.median(lat), "latency_p99_s": pct(lat, 0.99)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", help="a run directory (or exported HF directory) to serve")
    ap.add_argument("--requests", type=int, default=16)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    fmforge = Path(sys.executable).with_name("fmforge")
    proc = subprocess.Popen([str(fmforge), "serve", args.run, "--port", str(port), "--model-name",
                             "bench", "--max-batch", str(args.concurrency)],
                            env={**os.environ, "FMFORGE_NO_PROGRESS": "1"})
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                if httpx.get(base + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        else:
            sys.exit("the server did not start within 120 s")
        asyncio.run(run_load(base, "bench", 2, 1, 4))  # warm-up
        sequential = asyncio.run(run_load(base, "bench", args.requests, 1, args.max_tokens))
        concurrent = asyncio.run(run_load(base, "bench", args.requests, args.concurrency, args.max_tokens))
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)

    print(f"{args.requests} requests × {args.max_tokens} new tokens, greedy, streaming, loopback")
    print(f"{'':>22}{'req/s':>8}{'tokens/s':>10}{'TTFT p50':>10}{'TTFT p99':>10}{'lat p50':>9}{'lat p99':>9}{'wall':>8}")
    for name, r in (("1 client (sequential)", sequential), (f"{args.concurrency} clients", concurrent)):
        print(f"{name:>22}{r['requests_per_s']:8.2f}{r['tokens_per_s']:10.1f}{r['ttft_p50_s']:10.3f}"
              f"{r['ttft_p99_s']:10.3f}{r['latency_p50_s']:9.2f}{r['latency_p99_s']:9.2f}{r['wall_s']:8.1f}")
    ratio = concurrent["tokens_per_s"] / sequential["tokens_per_s"]
    print(f"aggregate tokens/s, {args.concurrency} concurrent / sequential: {ratio:.2f}x "
          f"(the same work took {concurrent['wall_s']:.1f} s instead of {sequential['wall_s']:.1f} s)")
    if args.json:
        args.json.write_text(json.dumps({"sequential": sequential, "concurrent": concurrent,
                                         "ratio": ratio}, indent=2) + "\n")


if __name__ == "__main__":
    main()
