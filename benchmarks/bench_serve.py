"""The server under concurrent streaming load: tokens/s, time to first token and
latency (p50/p99) at 1, 8, 32 and 64 concurrent streams, on loopback, in one run.

Starts ``fmforge serve RUN`` in a subprocess (``--max-batch``, ``--max-queue``
as given), then, for each concurrency C, keeps C clients busy until
max(MIN_REQUESTS, 4*C) completion requests have been answered, all with
``stream: true``, greedy, MAX_TOKENS new tokens and a stop string that never
appears (so a request ends at max_tokens unless the model emits end-of-text;
requests that ended early are counted and their tokens left out of tokens/s).
Time to first token is taken at the first byte of text; latency at ``[DONE]``.
The aggregate tokens/s at C streams over that at 1 shows what step-level
batching buys.

    python benchmarks/bench_serve.py runs/demo [--concurrency 1 8 32 64] [--max-tokens 64]
                                               [--max-batch 16] [--max-queue 64] [--json PATH]
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

MIN_REQUESTS = 32
NEVER = "\x00never\x00"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def one_request(client: httpx.AsyncClient, url: str, body: dict) -> dict:
    t0 = time.perf_counter()
    first, finish = None, None
    async with client.stream("POST", url, json=body, timeout=600) as r:
        if r.status_code != 200:
            raise SystemExit(f"the server answered {r.status_code}: {(await r.aread()).decode()}")
        async for line in r.aiter_lines():
            if not line.startswith("data: {"):
                continue  # blank lines, keep-alive comments, [DONE]
            event = json.loads(line[6:])
            if "error" in event:
                raise SystemExit(f"a stream failed: {event['error']['message']}")
            choice = event["choices"][0]
            if choice.get("text") and first is None:
                first = time.perf_counter() - t0
            finish = choice.get("finish_reason") or finish
    return {"ttft_s": first if first is not None else float("nan"),
            "latency_s": time.perf_counter() - t0, "finish_reason": finish}


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


async def run_load(base: str, model: str, requests: int, concurrency: int, max_tokens: int) -> dict:
    url = base + "/v1/completions"
    prompts = [f"def function_{i}(value):\n    " for i in range(requests)]
    queue: asyncio.Queue = asyncio.Queue()
    for p in prompts:
        queue.put_nowait(p)
    results: list[dict] = []
    limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=concurrency + 4)
    async with httpx.AsyncClient(limits=limits) as client:
        async def worker():
            while not queue.empty():
                p = queue.get_nowait()
                results.append(await one_request(client, url, {
                    "model": model, "prompt": p, "max_tokens": max_tokens, "temperature": 0,
                    "stream": True, "stop": [NEVER]}))

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    full = [r for r in results if r["finish_reason"] == "length"]
    ttft = [r["ttft_s"] for r in results]
    lat = [r["latency_s"] for r in results]
    return {"concurrency": concurrency, "requests": requests, "ended_early": requests - len(full),
            "wall_s": wall, "requests_per_s": requests / wall,
            "tokens_per_s": len(full) * max_tokens / wall,
            "ttft_p50_s": statistics.median(ttft), "ttft_p99_s": _pct(ttft, 0.99),
            "latency_p50_s": statistics.median(lat), "latency_p99_s": _pct(lat, 0.99)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", help="a run directory (or exported HF directory) to serve")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 64])
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--max-batch", type=int, default=16, help="the server's (its default: 16)")
    ap.add_argument("--max-queue", type=int, default=64, help="the server's (its default: 64)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    if max(args.concurrency) > args.max_batch + args.max_queue:
        sys.exit(f"--concurrency {max(args.concurrency)} is more than the server takes at once "
                 f"(--max-batch + --max-queue = {args.max_batch + args.max_queue}): raise --max-queue")

    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    fmforge = Path(sys.executable).with_name("fmforge")
    proc = subprocess.Popen([str(fmforge), "serve", args.run, "--port", str(port), "--model-name",
                             "bench", "--max-batch", str(args.max_batch), "--max-queue",
                             str(args.max_queue)],
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
        load_before = os.getloadavg()[0]
        rows = [asyncio.run(run_load(base, "bench", max(MIN_REQUESTS, 4 * c), c, args.max_tokens))
                for c in args.concurrency]
        load_after = os.getloadavg()[0]
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)

    print(f"{args.max_tokens} new tokens per request, greedy, streaming, loopback; server "
          f"--max-batch {args.max_batch} --max-queue {args.max_queue}")
    print(f"{'streams':>8}{'requests':>9}{'tokens/s':>10}{'x 1 stream':>11}{'TTFT p50':>10}{'TTFT p99':>10}"
          f"{'lat p50':>9}{'lat p99':>9}{'wall':>7}")
    single = rows[0]["tokens_per_s"] if rows[0]["concurrency"] == 1 else float("nan")
    for r in rows:
        print(f"{r['concurrency']:>8}{r['requests']:>9}{r['tokens_per_s']:10.1f}"
              f"{r['tokens_per_s'] / single:10.2f}x{r['ttft_p50_s']:10.3f}{r['ttft_p99_s']:10.3f}"
              f"{r['latency_p50_s']:9.2f}{r['latency_p99_s']:9.2f}{r['wall_s']:7.1f}")
    print(f"load average (1 min) before/after: {load_before:.1f}/{load_after:.1f} on {os.cpu_count()} "
          "CPUs: other programs' share of the CPUs is not the server's")
    early = sum(r["ended_early"] for r in rows)
    if early:
        print(f"{early} requests ended at end-of-text before max_tokens (left out of tokens/s)")
    if args.json:
        args.json.write_text(json.dumps({"max_tokens": args.max_tokens, "max_batch": args.max_batch,
                                         "max_queue": args.max_queue, "load_before": load_before,
                                         "load_after": load_after, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
