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
batching buys. Beside them: the server's CPU-seconds for each concurrency (read from
procfs before and after, so tokens per server CPU-second is steadier than wall on a
shared machine), the clients' own CPU-seconds, the machine and the load average.
Measured with the shared harness (``harness.py``: ``concurrently``, ``Timer``,
``percentile``, ``process_cpu_s``).

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

from harness import Timer, concurrently, load, machine, machine_line, percentile, process_cpu_s

MIN_REQUESTS = 32
NEVER = "\x00never\x00"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def one_request(client: httpx.AsyncClient, url: str, body: dict) -> dict:
    clock = Timer().start()
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
                first = clock.elapsed()
            finish = choice.get("finish_reason") or finish
    return {"ttft_s": first if first is not None else float("nan"),
            "latency_s": clock.elapsed(), "finish_reason": finish}


async def run_load(base: str, model: str, requests: int, concurrency: int, max_tokens: int,
                   server_pid: int | None = None) -> dict:
    url = base + "/v1/completions"
    prompts = [f"def function_{i}(value):\n    " for i in range(requests)]
    limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=concurrency + 4)
    server_cpu = process_cpu_s(server_pid) if server_pid else None
    async with httpx.AsyncClient(limits=limits) as client:
        results, sample = await concurrently(lambda p: one_request(client, url, {
            "model": model, "prompt": p, "max_tokens": max_tokens, "temperature": 0,
            "stream": True, "stop": [NEVER]}), prompts, concurrency)
    if server_cpu is not None:
        server_cpu = process_cpu_s(server_pid) - server_cpu
    full = [r for r in results if r["finish_reason"] == "length"]
    ttft = [r["ttft_s"] for r in results]
    lat = [r["latency_s"] for r in results]
    wall = sample.wall_s
    tokens = len(full) * max_tokens
    return {"concurrency": concurrency, "requests": requests, "ended_early": requests - len(full),
            "wall_s": wall, "requests_per_s": requests / wall, "tokens_per_s": tokens / wall,
            "server_cpu_s": server_cpu, "tokens_per_server_cpu_s": tokens / server_cpu if server_cpu else None,
            "client_cpu_s": sample.cpu_s, "load_at_start": sample.load_at_start,
            "ttft_p50_s": statistics.median(ttft), "ttft_p99_s": percentile(ttft, 0.99),
            "latency_p50_s": statistics.median(lat), "latency_p99_s": percentile(lat, 0.99)}


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
        at_start = machine()
        load_before = at_start["load_average"][0]
        rows = [asyncio.run(run_load(base, "bench", max(MIN_REQUESTS, 4 * c), c, args.max_tokens, proc.pid))
                for c in args.concurrency]
        load_after = load()[0]
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)

    print(f"{args.max_tokens} new tokens per request, greedy, streaming, loopback; server "
          f"--max-batch {args.max_batch} --max-queue {args.max_queue}; {machine_line(at_start)}")
    print(f"{'streams':>8}{'requests':>9}{'tokens/s':>10}{'x 1 stream':>11}{'TTFT p50':>10}{'TTFT p99':>10}"
          f"{'lat p50':>9}{'lat p99':>9}{'wall':>7}{'srv cpu s':>10}{'tok/srv cpu s':>14}")
    single = rows[0]["tokens_per_s"] if rows[0]["concurrency"] == 1 else float("nan")
    for r in rows:
        cpu = "n/a" if r["server_cpu_s"] is None else f"{r['server_cpu_s']:.1f}"
        per_cpu = "n/a" if r["tokens_per_server_cpu_s"] is None else f"{r['tokens_per_server_cpu_s']:.1f}"
        print(f"{r['concurrency']:>8}{r['requests']:>9}{r['tokens_per_s']:10.1f}"
              f"{r['tokens_per_s'] / single:10.2f}x{r['ttft_p50_s']:10.3f}{r['ttft_p99_s']:10.3f}"
              f"{r['latency_p50_s']:9.2f}{r['latency_p99_s']:9.2f}{r['wall_s']:7.1f}{cpu:>10}{per_cpu:>14}")
    print(f"load average (1 min) before/after: {load_before:.1f}/{load_after:.1f} on {os.cpu_count()} "
          "CPUs: other programs' share of the CPUs is not the server's")
    early = sum(r["ended_early"] for r in rows)
    if early:
        print(f"{early} requests ended at end-of-text before max_tokens (left out of tokens/s)")
    if args.json:
        args.json.write_text(json.dumps({"machine": at_start, "max_tokens": args.max_tokens, "max_batch": args.max_batch,
                                         "max_queue": args.max_queue, "load_before": load_before,
                                         "load_after": load_after, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
