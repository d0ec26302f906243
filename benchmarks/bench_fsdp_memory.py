"""Does FSDP really hold each process's memory down? A ~300M-parameter model
trained for 2 steps (float32, AdamW, a tiny batch of short sequences) by one
process, then by 2 FSDP processes (gloo, CPU) that build it the trainer's way:
on the meta device, sharded, then each shard materialised
(fmforge.train.distributed.build_sharded), so no process ever holds the whole model.

Reported per process: the peak resident set (``VmHWM`` of /proc/self/status,
read by the process itself), the baseline before the model is built (Python,
torch, the process group), and the growth between them, which is what the
planner's per-device estimate (fmforge.plan.memory.estimate_memory, "ddp" on one
device, "fsdp" on 2) describes. Goals (issue 19): each FSDP rank's peak below 70%
of one process's, and the planner within 20% of the measured figure. Measured with
the shared harness (``harness.py``: ``hwm_bytes``/``rss_mb`` in each process,
``run_tree`` around each run, whose tree peaks go in the JSON with the machine).

    python benchmarks/bench_fsdp_memory.py                 # ~320M, about 2 minutes on 2 cores
    python benchmarks/bench_fsdp_memory.py --layers 6      # ~110M, when memory is short
    python benchmarks/bench_fsdp_memory.py --malloc-mmap-threshold 131072   # live memory only
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from harness import Timer, hwm_bytes, machine, machine_line, rss_mb, run_tree

GB = 1e9


def worker(args: argparse.Namespace) -> None:
    import torch

    from fmforge.config import ModelConfig, TrainConfig
    from fmforge.model.transformer import Transformer
    from fmforge.train.distributed import build_sharded, setup_parallel, teardown
    from fmforge.train.optim import build_optimizer

    torch.set_num_threads(1)
    cfg = ModelConfig(**json.loads(args.model))
    tcfg = TrainConfig(device="cpu", dtype="float32")
    par = setup_parallel("fsdp" if args.mode == "fsdp" else "none", "cpu")
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, cfg.vocab_size, (args.micro_batch, args.seq_len + 1), generator=gen)
               for _ in range(args.steps)]
    # The baseline: interpreter, torch, the process group, a tiny step's one-time
    # allocations (thread pool, autograd engine), before any of the model exists.
    tiny = Transformer(ModelConfig(vocab_size=64, d_model=32, n_layers=1, n_heads=2, seq_len=8))
    tiny(torch.zeros(1, 8, dtype=torch.long), torch.zeros(1, 8, dtype=torch.long)).backward()
    del tiny
    baseline = int(rss_mb() * 2**20)

    def build() -> Transformer:
        torch.manual_seed(0)
        return Transformer(cfg)

    with Timer() as built:
        model = build_sharded(build, par, "float32") if args.mode == "fsdp" else build()
    opt = build_optimizer(model, tcfg)
    losses, phases = [], {"build": hwm_bytes()}
    with Timer() as stepped:
        for batch in batches:
            loss = model(batch[:, :-1], batch[:, 1:])
            loss.backward()
            phases.setdefault("first backward", hwm_bytes())
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            phases.setdefault("first optimizer step", hwm_bytes())
            opt.zero_grad(set_to_none=True)
            losses.append(par.mean(float(loss.detach())))
    result = {"rank": par.rank, "mode": args.mode, "baseline_bytes": baseline, "peak_bytes": hwm_bytes(),
              "peak_by_phase_bytes": phases, "build_s": round(built.wall_s, 2),
              "steps_s": round(stepped.wall_s, 2), "losses": losses,
              "params": sum(p.numel() for p in model.parameters())}
    Path(f"{args.out}.{args.mode}.{par.rank}.json").write_text(json.dumps(result))
    teardown(par)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--d-model", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=20)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--micro-batch", type=int, default=2, help="sequences per process per step")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--malloc-mmap-threshold", type=int, metavar="BYTES",
                    help="run both with glibc's MALLOC_MMAP_THRESHOLD_ fixed at BYTES (e.g. 131072): "
                         "large blocks are then mapped and unmapped, so a freed buffer leaves the "
                         "resident set instead of staying in the heap; default: glibc's dynamic threshold")
    ap.add_argument("--json", help="also write the figures here")
    ap.add_argument("--worker", choices=["single", "fsdp"], dest="mode", help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.mode:
        return worker(args)

    from fmforge.config import ModelConfig
    from fmforge.hardware import get_hardware
    from fmforge.model.counting import count_params, from_model_config
    from fmforge.plan.memory import estimate_memory

    model = dict(vocab_size=args.vocab, d_model=args.d_model, n_layers=args.layers, n_heads=args.heads,
                 seq_len=args.seq_len, tie_embeddings=False)
    arch = from_model_config(ModelConfig(**model))
    params = count_params(arch).total
    hw = get_hardware("cpu", measure_cpu=False)
    plan = {n: estimate_memory(arch, hw, args.micro_batch, n, "fsdp" if n > 1 else "ddp", "float32")
            for n in (1, 2)}
    env = {**os.environ, "OMP_NUM_THREADS": "1", "FMFORGE_NO_PROGRESS": "1"}
    if args.malloc_mmap_threshold is not None:
        env["MALLOC_MMAP_THRESHOLD_"] = str(args.malloc_mmap_threshold)
    allocator = (f"MALLOC_MMAP_THRESHOLD_={env['MALLOC_MMAP_THRESHOLD_']}" if "MALLOC_MMAP_THRESHOLD_" in env
                 else "glibc's default (dynamic) mmap threshold")
    here = Path(__file__).resolve()
    common = ["--model", json.dumps(model), "--seq-len", str(args.seq_len),
              "--micro-batch", str(args.micro_batch), "--steps", str(args.steps)]
    at_start = machine()
    print(f"model: {params / 1e6:.0f}M parameters (d_model {args.d_model}, {args.layers} layers, "
          f"vocab {args.vocab}, untied); {args.steps} steps of {args.micro_batch} x {args.seq_len} "
          f"tokens per process, float32, AdamW; allocator: {allocator}\n{machine_line(at_start)}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "r")
        runs = {"single": [sys.executable, str(here), "--worker", "single", "--out", out, *common],
                "fsdp": [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
                         "2", str(here), "--worker", "fsdp", "--out", out, *common]}
        results, trees = {}, {}
        for mode, cmd in runs.items():  # one after the other: their peaks must not add up
            try:
                _, tree = run_tree(cmd, env=env)
            except RuntimeError as exc:
                raise SystemExit(f"{mode} run failed: {exc}") from None
            results[mode] = [json.loads(Path(f"{out}.{mode}.{r}.json").read_text())
                             for r in range(1 if mode == "single" else 2)]
            trees[mode] = tree.as_dict()
            print(f"{mode}: {tree.wall_s:.0f} s", flush=True)

    one = results["single"][0]
    rows = []
    print(f"\n{'process':<14}{'peak RSS':>10}{'baseline':>10}{'growth':>10}{'planner':>10}"
          f"{'plan err':>10}{'peak/1 proc':>13}")
    for r in [one, *results["fsdp"]]:
        n = 1 if r["mode"] == "single" else 2
        growth = r["peak_bytes"] - r["baseline_bytes"]
        predicted = plan[n].total_gb * GB
        row = {"process": "one process" if n == 1 else f"fsdp rank {r['rank']}",
               "peak_gb": r["peak_bytes"] / GB, "baseline_gb": r["baseline_bytes"] / GB,
               "growth_gb": growth / GB, "planner_gb": predicted / GB,
               "planner_error_pct": 100 * (predicted - growth) / growth,
               "peak_vs_one_process": r["peak_bytes"] / one["peak_bytes"],
               "growth_vs_one_process": growth / (one["peak_bytes"] - one["baseline_bytes"]),
               "peak_by_phase_gb": {k: v / GB for k, v in r["peak_by_phase_bytes"].items()},
               "build_s": r["build_s"], "steps_s": r["steps_s"]}
        rows.append(row)
        print(f"{row['process']:<14}{row['peak_gb']:>9.2f}G{row['baseline_gb']:>9.2f}G"
              f"{row['growth_gb']:>9.2f}G{row['planner_gb']:>9.2f}G{row['planner_error_pct']:>+9.1f}%"
              f"{row['peak_vs_one_process']:>12.1%}")
    print("peak RSS by the end of: " + "; ".join(
        f"{row['process']}: " + ", ".join(f"{k} {v:.2f}G" for k, v in row["peak_by_phase_gb"].items())
        for row in rows))
    losses = {"single": one["losses"], "fsdp": results["fsdp"][0]["losses"]}
    # Every process draws the same batches, so FSDP's averaged gradient is one
    # process's: the losses agree (a check that the sharded model is the same model).
    print(f"\nlosses: one process {losses['single']}, fsdp {losses['fsdp']}")
    print("goals: each rank's peak < 70% of one process's; planner within 20% of the growth")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": at_start, "params": params, "model": model,
                                               "allocator": allocator, "rows": rows, "process_trees": trees,
                                               "plan": {n: p.to_dict() for n, p in plan.items()},
                                               "losses": losses}, indent=1))


if __name__ == "__main__":
    main()
