"""The training engine on a GPU: bf16 + torch.compile throughput and MFU, FSDP2
through the real trainer, and peak memory against the planner (issue 7).

Three checks, each in a fresh process:

1. **Throughput** of a ~125M and a ~350M fmforge model at seq_len 2048: the
   trainer's step (``Transformer``, ``build_optimizer``, the trainer's
   ``autocast`` in bf16, ``torch.compile``, gradient clipping, AdamW), a few
   warm-up steps (the compile), then timed steps with ``cuda.synchronize``.
   MFU = tokens/s × ``flops_per_token`` / ``device_peak_flops('cuda', 'bfloat16')``
   (goal from the issue: ≥ 50% on an H100; reported, not enforced).
2. **Peak memory** of those steps (``torch.cuda.max_memory_allocated`` less the
   allocations before the model existed) against the planner's estimate
   (``fmforge.plan.memory.estimate_memory`` for 1 device, bf16 autocast, as
   ``benchmarks/plan_vs_measured.py`` asks it). The planner models eager steps;
   compiled ones may keep fewer activations, so the error is reported only.
3. **FSDP2 through the real trainer**: a tiny synthetic corpus, the data stages
   without torchrun, then ``torchrun --standalone --nproc-per-node P -m fmforge
   train`` with ``train.parallel=fsdp`` for 20 steps; it must finish, log
   ``fsdp on P processes``, write a sharded (DCP) checkpoint, and consolidate.

    python benchmarks/gpu_train_check.py                    # CUDA, ~3-4 minutes on an H100
    python benchmarks/gpu_train_check.py --device cpu --smoke   # tiny dims, same code paths

Prints a table and writes ``gpu_train_check.json`` to ``--out`` (default ``$OUT``,
else /tmp). Exits 2 when CUDA is asked for and absent, 1 when a check failed
(a run crashed, or FSDP did not shard), 0 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from measure_step import train_step_worker  # benchmarks/, beside this script

ROOT = Path(__file__).resolve().parents[1]

# name: (ModelConfig kwargs, micro-batch, warm-up steps, timed steps)
PRESETS: dict[str, tuple[dict[str, Any], int, int, int]] = {
    # GPT-2-small-like, tied embeddings: 123.6M parameters
    "125m": (dict(vocab_size=50304, d_model=768, n_layers=12, n_heads=12, seq_len=2048), 8, 4, 10),
    # as plan_vs_measured.py's 350m: untied head, 369.1M parameters
    "350m": (dict(vocab_size=32000, d_model=1024, n_layers=24, n_heads=16, seq_len=2048,
                  tie_embeddings=False), 8, 4, 10),
}
SMOKE_PRESETS: dict[str, tuple[dict[str, Any], int, int, int]] = {
    "smoke-a": (dict(vocab_size=512, d_model=64, n_layers=2, n_heads=4, seq_len=64), 4, 2, 3),
    "smoke-b": (dict(vocab_size=512, d_model=96, n_layers=3, n_heads=4, n_kv_heads=2, seq_len=64,
                     tie_embeddings=False), 4, 2, 3),
}
MFU_GOAL = 0.50
FSDP_STEPS = 20


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("FMFORGE_NO_PROGRESS", "1")
    return env


# ------------------------------------------------------------- 1+2: throughput


def planner_memory_gb(model_kwargs: dict[str, Any], micro_batch: int, device: str) -> tuple[float, str]:
    """The planner's peak-memory estimate for one device, bf16 autocast (as plan_vs_measured.py)."""
    from fmforge.config import ModelConfig
    from fmforge.hardware import detect_gpu, get_hardware
    from fmforge.model.counting import from_model_config
    from fmforge.plan.memory import estimate_memory

    key = "cpu" if device == "cpu" else (detect_gpu() or "h100-sxm")
    hw = get_hardware(key, cpu_dtype="bfloat16")
    mem = estimate_memory(from_model_config(ModelConfig(**model_kwargs)), hw, micro_batch, 1, "ddp",
                          "autocast", False)
    return mem.total_gb, key


def run_throughput(name: str, preset, args) -> dict[str, Any]:
    from fmforge.config import ModelConfig
    from fmforge.hardware import device_peak_flops
    from fmforge.model.counting import count_parameters, flops_per_token

    model_kwargs, b, warmup, steps = preset
    spec = {"device": args.device, "train_dtype": "bfloat16", "peak_after_warmup": True,
            "compile": not args.no_compile,
            "model": model_kwargs, "micro_batch": b, "warmup": warmup, "steps": steps}
    cfg = ModelConfig(**model_kwargs)
    res: dict[str, Any] = {"model": name, "params": count_parameters(cfg).total, "micro_batch": b,
                           "seq_len": cfg.seq_len, "dtype": "bfloat16", "compile": spec["compile"],
                           "warmup_steps": warmup, "timed_steps": steps, "ok": False}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, "--worker-spec", json.dumps(spec)], env=_env(),
                          stdout=subprocess.PIPE, text=True, timeout=args.timeout)
    res["process_s"] = round(time.perf_counter() - t0, 1)
    if proc.returncode != 0:
        res["error"] = f"the measuring process failed (exit {proc.returncode}); its error is printed above"
        return res
    m = json.loads(proc.stdout.strip().splitlines()[-1])
    step_s = sorted(m["step_times_s"])[len(m["step_times_s"]) // 2]
    tokens = b * cfg.seq_len
    fpt = flops_per_token(cfg)
    peak = device_peak_flops(args.device, "bfloat16")
    predicted_gb, hw_key = planner_memory_gb(model_kwargs, b, args.device)
    measured_gb = m["peak_bytes"] / 1e9
    res.update({
        "ok": True, "step_time_median_s": step_s, "tokens_per_s": tokens / step_s,
        "flops_per_token": fpt, "peak_flops": peak, "hardware_key": hw_key,
        "mfu": tokens / step_s * fpt / peak if peak else None,
        "warmup_s": m["warmup_s"], "loss_last": m["loss_last"],
        "peak_memory_gb": measured_gb, "planned_memory_gb": predicted_gb,
        "memory_error_pct": 100.0 * (predicted_gb - measured_gb) / measured_gb if measured_gb > 0 else None,
        "memory_method": m["memory_method"], "step_times_s": m["step_times_s"],
    })
    if args.device == "cuda" and res["mfu"] is not None:
        res["mfu_goal"] = MFU_GOAL
        res["mfu_goal_met"] = res["mfu"] >= MFU_GOAL
    return res


# ---------------------------------------------------------- 3: FSDP2 via torchrun


WORDS = ("alpha beta gamma delta value total count index result item name data "
         "left right start stop").split()


def write_corpus(root: Path, n_docs: int) -> None:
    rng = random.Random(0)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n_docs):
        lines = []
        for _ in range(rng.randint(6, 12)):
            fn, a, b = rng.choice(WORDS), rng.choice(WORDS), rng.choice(WORDS)
            lines.append(f"def {fn}_{i % 7}({a}, {b}):\n    return {a} + {b} * {rng.randint(0, 9)}\n")
        (root / f"doc{i:04d}.py").write_text("\n".join(lines))


def run_fsdp_trainer(args, work: Path) -> dict[str, Any]:
    import yaml

    smoke = args.smoke
    procs = args.fsdp_procs
    write_corpus(work / "corpus", 60 if smoke else 400)
    model = (dict(d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, seq_len=32) if smoke
             else dict(d_model=256, n_layers=4, n_heads=4, seq_len=256))
    micro = 2 if smoke else 8
    cfg = {
        "name": "fsdp-check", "out_dir": str(work / "run"), "seed": 7,
        "data": {"sources": [{"name": "code", "paths": [str(work / "corpus" / "*.py")]}],
                 "min_chars": 16, "val_fraction": 0.1},
        "tokenizer": {"vocab_size": 300 if smoke else 512, "min_frequency": 1},
        "model": model,
        "train": {"max_steps": FSDP_STEPS, "micro_batch_size": micro, "warmup_steps": 2,
                  "global_batch_tokens": micro * model["seq_len"] * procs * 2,
                  "log_every": 1, "eval_every": 10, "eval_batches": 2, "checkpoint_every": 10,
                  "device": args.device, "parallel": "fsdp", "tensorboard": False,
                  "dtype": "bfloat16" if args.device == "cuda" else "float32",
                  **({"num_threads": 1} if args.device == "cpu" else {})},
    }
    path = work / "fsdp.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = _env()
    if args.device == "cpu":
        env["OMP_NUM_THREADS"] = "1"
    res: dict[str, Any] = {"processes": procs, "steps": FSDP_STEPS, "ok": False,
                           "dtype": cfg["train"]["dtype"], "model": model}

    def call(cmd: list[str], what: str, timeout: float) -> subprocess.CompletedProcess | None:
        try:
            p = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            res["error"] = f"{what} timed out after {timeout:.0f} s"
            return None
        if p.returncode != 0:
            res["error"] = f"{what} failed (exit {p.returncode}): {p.stdout[-2000:]}"
            return None
        return p

    t0 = time.perf_counter()
    for stage in ("data", "tokenizer", "tokenize"):
        if call([sys.executable, "-m", "fmforge", stage, str(path)], f"fmforge {stage}", 300) is None:
            return res
    res["data_stages_s"] = round(time.perf_counter() - t0, 1)
    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(procs),
           "-m", "fmforge", "train", str(path)]
    res["command"] = " ".join(["torchrun", *cmd[3:]])
    p = call(cmd, "torchrun ... fmforge train", args.timeout)
    res["train_s"] = round(time.perf_counter() - t0, 1)
    if p is None:
        return res
    log = p.stdout
    run = work / "run"
    from fmforge.rundir import read_metrics

    steps = [r["step"] for r in read_metrics(run / "metrics.jsonl") if "loss" in r]
    last = run / "checkpoints" / f"step-{FSDP_STEPS:06d}"
    res.update({
        "last_logged_step": max(steps) if steps else None,
        "fsdp_in_log": f"fsdp on {procs} process(es)" in log,  # the trainer's startup line
        "sharded_checkpoint": (last / "dcp" / ".metadata").is_file(),
        "checkpoint_files": sorted(str(f.relative_to(last)) for f in last.rglob("*") if f.is_file())
        if last.is_dir() else [],
        "final_loss": next((r["loss"] for r in reversed(read_metrics(run / "metrics.jsonl")) if "loss" in r), None),
        "log_tail": log[-1500:],
    })
    problems = []
    if res["last_logged_step"] != FSDP_STEPS:
        problems.append(f"metrics end at step {res['last_logged_step']}, not {FSDP_STEPS}")
    if not res["fsdp_in_log"] or not res["sharded_checkpoint"]:
        problems.append(
            f"train.parallel=fsdp did not shard: the log {'has' if res['fsdp_in_log'] else 'lacks'} "
            f"'fsdp on {procs} process(es)' and {last.name} holds {res['checkpoint_files'] or 'nothing'}"
            + ("" if res["sharded_checkpoint"] else ", no dcp/.metadata"))
    else:
        c = call([sys.executable, "-m", "fmforge", "checkpoint", "consolidate", str(run)],
                 "fmforge checkpoint consolidate", 300)
        res["consolidated"] = c is not None and (last / "model.safetensors").is_file()
        if not res["consolidated"]:
            problems.append("fmforge checkpoint consolidate did not write model.safetensors")
    if problems:
        res["error"] = "; ".join(problems)
    else:
        res["ok"] = True
    return res


# ------------------------------------------------------------------- reporting


def print_table(result: dict[str, Any]) -> None:
    print(f"\n{result['device_name']} | torch {result['torch']} | bf16 autocast"
          f"{' + torch.compile' if result['compile'] else ''}")
    if not result["throughput"]:
        head = None
    else:
        head = f"{'model':8}{'params':>9}{'batch':>11}{'tokens/s':>12}{'MFU':>7}{'step s':>9}{'warm-up s':>11}" \
           f"{'peak GB':>9}{'plan GB':>9}{'plan err':>10}"
    if head:
        print(head)
    for r in result["throughput"]:
        if not r["ok"]:
            print(f"{r['model']:8}{r['params'] / 1e6:>8.1f}M  FAILED: {r.get('error')}")
            continue
        mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "n/a"
        err = f"{r['memory_error_pct']:+.1f}%" if r["memory_error_pct"] is not None else "n/a"
        print(f"{r['model']:8}{r['params'] / 1e6:>8.1f}M{r['micro_batch']:>5} x {r['seq_len']:<4}"
              f"{r['tokens_per_s']:>12,.0f}{mfu:>7}{r['step_time_median_s']:>9.4f}{r['warmup_s']:>11.1f}"
              f"{r['peak_memory_gb']:>9.2f}{r['planned_memory_gb']:>9.2f}{err:>10}")
    if result["device"] == "cpu" and result["throughput"]:
        print("(on CPU the MFU and the memory comparison mean little: the peak is a measured bf16 "
              "torch.mm rate, the memory a process's RSS growth; --smoke checks that the code runs)")
    for r in result["throughput"]:
        if r.get("mfu_goal") is not None:
            print(f"{r['model']}: MFU {r['mfu']:.1%} vs goal {r['mfu_goal']:.0%}: "
                  f"{'met' if r['mfu_goal_met'] else 'missed'}")
    f = result.get("fsdp")
    if f:
        status = "OK" if f["ok"] else f"FAILED: {f.get('error')}"
        print(f"\nFSDP2 through the trainer ({f['processes']} process(es), {f['steps']} steps, {f['dtype']}): "
              f"{status}")
        if f.get("train_s") is not None:
            print(f"  train {f['train_s']} s (data stages {f.get('data_stages_s')} s); "
                  f"sharded checkpoint: {f.get('sharded_checkpoint')}; consolidated: {f.get('consolidated')}; "
                  f"final loss {f.get('final_loss')}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    ap.add_argument("--smoke", action="store_true", help="tiny dims: exercise the code paths in seconds")
    ap.add_argument("--models", default=None, help="comma-separated presets (default: all of the mode)")
    ap.add_argument("--no-compile", action="store_true", help="eager steps instead of torch.compile")
    ap.add_argument("--fsdp-procs", type=int, default=1, help="processes for the FSDP trainer run")
    ap.add_argument("--skip-fsdp", action="store_true")
    ap.add_argument("--skip-throughput", action="store_true")
    ap.add_argument("--timeout", type=float, default=300, help="seconds per measuring process")
    ap.add_argument("--out", default=os.environ.get("OUT") or "/tmp", help="folder for gpu_train_check.json")
    ap.add_argument("--worker-spec", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker_spec:
        print(json.dumps(train_step_worker(json.loads(args.worker_spec))))
        return 0

    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print(f"gpu_train_check: --device cuda but torch sees no CUDA device (torch {torch.__version__}, "
              f"built for CUDA {torch.version.cuda}); run it on a GPU machine, or use --device cpu --smoke",
              file=sys.stderr)
        return 2
    presets = SMOKE_PRESETS if args.smoke else PRESETS
    names = args.models.split(",") if args.models else list(presets)
    unknown = [n for n in names if n not in presets]
    if unknown:
        ap.error(f"unknown --models {unknown}; choose from {sorted(presets)}")
    if args.fsdp_procs < 1:
        ap.error("--fsdp-procs must be at least 1")
    if args.device == "cuda" and args.fsdp_procs > torch.cuda.device_count():
        ap.error(f"--fsdp-procs {args.fsdp_procs} > {torch.cuda.device_count()} visible GPUs")

    result: dict[str, Any] = {
        "benchmark": "gpu_train_check", "device": args.device, "smoke": args.smoke,
        "device_name": torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu",
        "torch": torch.__version__, "compile": not args.no_compile, "throughput": [], "fsdp": None,
    }
    t_start = time.perf_counter()
    if not args.skip_throughput:
        for name in names:
            print(f"== throughput {name} ({args.device}, bf16{', compile' if not args.no_compile else ''})",
                  flush=True)
            try:
                result["throughput"].append(run_throughput(name, presets[name], args))
            except subprocess.TimeoutExpired:
                result["throughput"].append({"model": name, "ok": False, "params": 0,
                                             "error": f"timed out after {args.timeout:.0f} s"})
    if not args.skip_fsdp:
        print(f"== FSDP2 through the trainer ({args.fsdp_procs} process(es), {FSDP_STEPS} steps)", flush=True)
        work = Path(tempfile.mkdtemp(prefix="fmforge-fsdp-check-"))
        try:
            result["fsdp"] = run_fsdp_trainer(args, work)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    result["total_s"] = round(time.perf_counter() - t_start, 1)

    print_table(result)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_train_check.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"\nwrote {out / 'gpu_train_check.json'} ({result['total_s']} s in all)")
    failed = [r["model"] for r in result["throughput"] if not r["ok"]]
    if result["fsdp"] is not None and not result["fsdp"]["ok"]:
        failed.append("fsdp")
    if failed:
        print(f"gpu_train_check: FAILED: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
