"""Ready for the first GPU (issues 7 and 19): the presets' throughput and memory,
the planner, FSDP2 and HSDP through the real trainer, and the 1B preset built on
the meta device, in one run and one JSON.

The parts, each in fresh processes, in this order (budget = the part's timeout
on a GPU; estimate = what it should take on one H100, not yet measured there):

  part                   budget  estimate  what
  plan_eager               45 s   20-30 s  plan_vs_measured.py --config configs/gpt2-350m.yaml:
                                           the planner's step time and peak memory against an
                                           eager bf16-autocast step (3 warm-up + 10 timed), the
                                           15% goal
  throughput_gpt2_350m    125 s   60-110 s the 350M preset's model, seq_len and micro-batch
                                           (8 x 1024), bf16 + torch.compile, 5 warm-up (the
                                           compile: 40-90 s) + 25 timed steps: tokens/s, MFU
                                           (goal >= 50%), peak memory against the planner
  throughput_gpt2_124m     70 s   35-60 s  the same for the 124M preset (8 x 1024)
  trainer_data             30 s   10-20 s  a tiny synthetic corpus through fmforge data,
                                           tokenizer, tokenize (once, for both trainer runs)
  fsdp                     55 s   25-40 s  torchrun --nproc-per-node <all GPUs> -m fmforge train,
                                           train.parallel=fsdp, 20 steps; its mode line, a DCP
                                           checkpoint, fmforge checkpoint consolidate
  hsdp                     45 s   25-40 s  the same with train.parallel=hsdp on all GPUs, R x S
                                           (R = 2 when the count is even); skipped on 1 GPU:
                                           NCCL cannot put two ranks on one device
  meta_build_1b            80 s   35-60 s  torchrun --nproc-per-node <all GPUs>: llama-1b's
                                           model through build_sharded (meta device, fully_shard,
                                           each rank's shard materialised): build seconds, memory
                                           after the build against the shard, the exact parameter
                                           count, 2 steps at micro-batch 1 x 4096 with a finite
                                           loss. The build is CPU-bound: every process draws all
                                           1.24B initial values on the CPU (29 s for 2 processes
                                           sharing 2 cores of the development machine)

On one H100 the budgets add up to 405 s (HSDP skipped), with 2 or more GPUs to
450 s, and the run stops parts at 450 s in all: the whole check, with
benchmarks/gpu_check.sh's few seconds before it, stays under 8 minutes.
Expected on one H100: about 4-6 minutes (not yet run on a GPU).

    python benchmarks/gpu_train_check.py --device cuda             # what gpu_check.sh runs
    python benchmarks/gpu_train_check.py --device cpu --smoke      # every part, tiny dims, ~1-2 min

``--smoke`` shrinks each preset by dotted overrides (as tests/test_presets.py
does: d_model 64, 2 layers, vocabulary 320, seq 32), compiles with the
``aot_eager`` backend (dynamo and AOTAutograd trace the same graph; inductor's
C++ code generation would take minutes on a small CPU), and runs the trainer
parts (6 steps) and the meta build on 2 gloo processes, so HSDP runs as 2 x 1.

Writes ``gpu_check.json`` to ``--out`` (default ``$OUT``, else /tmp), after
every part (``complete`` is false until the end): ``parts`` holds each part with
``ok`` (true: it ran and passed its checks; false: it failed, ``error`` says why;
null with ``skipped``: it could not run here), ``goals`` the issue's goals with
the measured value and ``met`` (null off a GPU), and ``ok`` / ``goals_met`` the
verdicts. Exits 2 when CUDA is asked for and absent, 1 when a part failed or a
goal was missed on a GPU, 0 otherwise.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

from harness import DevicePeak, Timer, device_sync, machine, timed_steps  # benchmarks/, beside this script
from measure_step import train_step_worker

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"

# Each part's timeout on a GPU, in seconds (the header's table), and the whole run's.
BUDGETS = {"plan_eager": 45, "throughput_gpt2_350m": 125, "throughput_gpt2_124m": 70,
           "trainer_data": 30, "fsdp": 55, "hsdp": 45, "meta_build_1b": 80}
TOTAL_BUDGET_S = 450
# On a shared CPU in --smoke mode: generous, the point there is that the code runs.
SMOKE_BUDGET_S, SMOKE_TOTAL_BUDGET_S = 240, 900

WARMUP, TIMED = 5, 25
SMOKE_WARMUP, SMOKE_TIMED = 2, 3
MFU_GOAL = 0.50  # at 350M on a GPU (issue 19)
PLAN_TOLERANCE_PCT = 15.0  # step time and peak memory, eager (issue 3)
TRAINER_STEPS, SMOKE_TRAINER_STEPS = 20, 6
META_PRESET, META_STEPS = "llama-1b", 2
# tests/test_presets.py: Llama 3.2 1B as published (the preset is built exactly as it).
PUBLISHED_PARAMS = {"llama-1b": 1_235_814_400}


class PartFailed(Exception):
    """A part could not finish: the message says what and why."""


class Terminated(BaseException):
    """SIGTERM (gpu_check.sh's overall timeout): stop, kill the running part, write the JSON."""


def _on_sigterm(signum, frame):  # noqa: ARG001
    raise Terminated()


def _env(device: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("FMFORGE_NO_PROGRESS", "1")
    env["COLUMNS"] = "400"  # rich wraps log lines at 80 columns without a terminal
    if device == "cpu":
        env["OMP_NUM_THREADS"] = "1"
    return env


def call(cmd: list[str], env: dict[str, str], deadline: float, what: str) -> tuple[int, str]:
    """Run ``cmd`` until ``deadline`` (time.monotonic()), in a session of its own so
    that a timeout (or SIGTERM) kills it with every process it started (torchrun's
    workers hold GPUs). Returns (exit status, stdout and stderr together)."""
    timeout = deadline - time.monotonic()
    if timeout <= 1:
        raise PartFailed(f"no time left for {what}")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace",
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except BaseException as exc:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.communicate()
        if isinstance(exc, subprocess.TimeoutExpired):
            raise PartFailed(f"{what} timed out after {timeout:.0f} s (the part's budget)") from None
        raise
    return proc.returncode, out


def smoke_overrides(preset: str) -> list[str]:
    """A preset shrunk to CPU size, keeping its structure (attention grouping,
    tying, RoPE base): tests/test_presets.py's shrink."""
    from fmforge.config import load_config

    m = load_config(CONFIGS / f"{preset}.yaml").model
    return ["model.d_model=64", "model.n_layers=2", "model.n_heads=4",
            f"model.n_kv_heads={4 * m.kv_heads // m.n_heads}", "model.d_ff=128", "model.seq_len=32",
            "model.vocab_size=320", "tokenizer.vocab_size=300", "train.micro_batch_size=4"]


def preset_config(preset: str, smoke: bool):
    from fmforge.config import load_config

    return load_config(CONFIGS / f"{preset}.yaml", smoke_overrides(preset) if smoke else None)


def hardware_for(device: str):
    from fmforge.hardware import detect_gpu, get_hardware

    key = "cpu" if device == "cpu" else (detect_gpu() or "h100-sxm")
    return get_hardware(key, cpu_dtype="bfloat16"), key


# ------------------------------------------------------------- plan_eager


def part_plan_eager(args, deadline: float, res: dict[str, Any]) -> None:
    """plan_vs_measured.py on the 350M preset's shape, eager: what the planner models."""
    out = Path(args.work) / "plan_eager.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "plan_vs_measured.py"),
           "--config", str(CONFIGS / "gpt2-350m.yaml"), "--device", args.device, "--json", str(out)]
    if args.smoke:
        cmd += [x for o in smoke_overrides("gpt2-350m") for x in ("--set", o)] + ["--warmup", "1", "--steps", "2"]
    else:
        cmd += ["--dtype", "bfloat16"]
    res.update({"command": " ".join(["python", *cmd[1:]])})
    rc, log = call(cmd, _env(args.device), deadline, "plan_vs_measured.py")
    res["log_tail"] = log[-1500:]
    if rc != 0 or not out.is_file():
        raise PartFailed(f"plan_vs_measured.py failed (exit {rc}): {log[-1500:]}")
    r = json.loads(out.read_text())
    res.update(r)
    res["ok"] = True


# ------------------------------------------------------------- throughput


def part_throughput(preset: str, args, deadline: float, res: dict[str, Any]) -> None:
    from fmforge.hardware import device_peak_flops
    from fmforge.model.counting import count_parameters, flops_per_token, from_model_config
    from fmforge.plan.estimate import make_plan
    from fmforge.plan.memory import estimate_memory

    cfg = preset_config(preset, args.smoke)
    model = cfg.resolved_model()
    arch = from_model_config(model)
    hw, hw_key = hardware_for(args.device)
    # The preset's micro-batch, unless the planner says it does not fit one device.
    b = preset_b = cfg.train.micro_batch_size
    while b > 1 and not estimate_memory(arch, hw, b, 1, "ddp", "autocast", False).fits:
        b //= 2
    mem = estimate_memory(arch, hw, b, 1, "ddp", "autocast", False)
    warmup, steps = (SMOKE_WARMUP, SMOKE_TIMED) if args.smoke else (WARMUP, TIMED)
    backend = "aot_eager" if args.smoke else "inductor"
    spec = {"device": args.device, "train_dtype": "bfloat16", "peak_after_warmup": True,
            "compile": True, "compile_backend": backend, "model": model.model_dump(mode="json"),
            "micro_batch": b, "warmup": warmup, "steps": steps}
    res.update({
        "preset": preset, "config": str((CONFIGS / f"{preset}.yaml").relative_to(ROOT)),
        "params": count_parameters(model).total, "seq_len": model.seq_len, "micro_batch": b,
        "micro_batch_source": "the preset's" if b == preset_b else
        f"the preset's {preset_b} halved to {b}: the planner puts {preset_b} over one device's memory",
        "dtype": "bfloat16 autocast", "compile": f"torch.compile (backend {backend})",
        "warmup_steps": warmup, "timed_steps": steps,
    })
    out = Path(args.work) / f"throughput-{preset}.json"
    rc, log = call([sys.executable, __file__, "--worker-spec", json.dumps(spec), "--worker-out", str(out)],
                   _env(args.device), deadline, f"the {preset} throughput process")
    res["log_tail"] = log[-1500:]
    if rc != 0 or not out.is_file():
        raise PartFailed(f"the measuring process failed (exit {rc}): {log[-2000:]}")
    m = json.loads(out.read_text())
    step_s = sorted(m["step_times_s"])[len(m["step_times_s"]) // 2]
    tokens = b * model.seq_len
    fpt = flops_per_token(model)
    peak = device_peak_flops(args.device, "bfloat16")
    plan = make_plan(hw, tokens=tokens * steps, arch=arch, num_gpus=1, micro_batch=b, dtype="autocast",
                     strategy="ddp")
    measured_gb = m["peak_bytes"] / 1e9
    res.update({
        "step_time_median_s": step_s, "tokens_per_s": tokens / step_s, "flops_per_token": fpt,
        "peak_flops": peak, "hardware_key": hw_key,
        "mfu": tokens / step_s * fpt / peak if peak else None,
        "planned_step_time_s": tokens / plan["tokens_per_s"], "planned_mfu": plan["mfu"],
        "warmup_s": m["warmup_s"], "loss_last": m["loss_last"],
        "peak_memory_gb": measured_gb, "planned_memory_gb": mem.total_gb,
        "memory_error_pct": 100.0 * (mem.total_gb - measured_gb) / measured_gb if measured_gb > 0 else None,
        "memory_method": m["memory_method"], "step_times_s": m["step_times_s"],
        "note": "the planner models eager steps; a compiled step may keep fewer activations and run "
                "at another MFU, so these errors are for information (the 15% goal is plan_eager's)",
    })
    if not math.isfinite(m["loss_last"]):
        raise PartFailed(f"the loss is not finite ({m['loss_last']})")
    res["ok"] = True


# ----------------------------------------------------- fsdp / hsdp trainer


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


def trainer_steps(smoke: bool) -> int:
    return SMOKE_TRAINER_STEPS if smoke else TRAINER_STEPS


def trainer_shape(smoke: bool) -> tuple[dict[str, int], int]:
    """The trainer parts' model and micro-batch: small, the point is the machinery."""
    if smoke:
        return dict(d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, seq_len=32), 2
    return dict(d_model=256, n_layers=4, n_heads=4, seq_len=256), 8


def trainer_config(args) -> Path:
    """A tiny run config for the trainer parts, its data prepared by the data stages."""
    import yaml

    work = Path(args.work)
    smoke = args.smoke
    model, micro = trainer_shape(smoke)
    steps = trainer_steps(smoke)
    cfg = {
        "name": "trainer-check", "out_dir": str(work / "prepared"), "seed": 7,
        "data": {"sources": [{"name": "code", "paths": [str(work / "corpus" / "*.py")]}],
                 "min_chars": 16, "val_fraction": 0.1},
        "tokenizer": {"vocab_size": 300 if smoke else 512, "min_frequency": 1},
        "model": model,
        "train": {"max_steps": steps, "micro_batch_size": micro, "warmup_steps": 2,
                  "log_every": 1, "eval_every": steps // 2, "eval_batches": 2,
                  "checkpoint_every": steps // 2, "device": args.device, "tensorboard": False,
                  "dtype": "bfloat16" if args.device == "cuda" else "float32",
                  **({"num_threads": 1} if args.device == "cpu" else {})},
    }
    path = work / "trainer.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def part_trainer_data(args, deadline: float, res: dict[str, Any]) -> None:
    work = Path(args.work)
    write_corpus(work / "corpus", 60 if args.smoke else 400)
    path = trainer_config(args)
    res.update({"config": str(path), "stages": {}})
    for stage in ("data", "tokenizer", "tokenize"):
        with Timer() as t:
            rc, log = call([sys.executable, "-m", "fmforge", stage, str(path)], _env(args.device), deadline,
                           f"fmforge {stage}")
        res["stages"][stage] = round(t.wall_s, 1)
        if rc != 0:
            raise PartFailed(f"fmforge {stage} failed (exit {rc}): {log[-1500:]}")
    res["ok"] = True


def hsdp_layout(procs: int) -> tuple[int, int] | None:
    """(replicas, shards) for HSDP on ``procs`` processes: 2 replicas when the count
    is even (2 x 4 on 8), else its smallest divisor (3 x 1 on 3); None below 2."""
    if procs < 2:
        return None
    replicas = next(d for d in range(2, procs + 1) if procs % d == 0)
    return replicas, procs // replicas


def part_trainer(mode: str, args, deadline: float, res: dict[str, Any]) -> None:
    """The real trainer under torchrun with train.parallel=MODE on every process,
    on a copy of the prepared run directory; then consolidate its DCP checkpoint."""
    from fmforge.rundir import read_metrics

    work = Path(args.work)
    procs = args.procs
    if not (work / "prepared" / "tokens").is_dir():
        raise PartFailed("the trainer's data was not prepared (see trainer_data)")
    run = work / f"run-{mode}"
    shutil.copytree(work / "prepared", run)
    model, micro = trainer_shape(args.smoke)
    # Two micro-batches accumulated on every process.
    overrides = [f"out_dir={run}", f"train.parallel={mode}",
                 f"train.global_batch_tokens={micro * model['seq_len'] * procs * 2}"]
    expect = f"{mode} on {procs} process(es)"
    steps = trainer_steps(args.smoke)
    res.update({"processes": procs, "steps": steps})
    if mode == "hsdp":
        replicas, shards = hsdp_layout(procs)
        overrides.append(f"train.replicate_degree={replicas}")
        expect += f" ({replicas} replicas × {shards} shards)"
        res.update(replicas=replicas, shards=shards)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(procs),
           "-m", "fmforge", "train", str(work / "trainer.yaml"), *overrides]
    res["command"] = " ".join(["torchrun", *cmd[3:]])
    res["expected_log_line"] = expect
    with Timer() as t:
        rc, log = call(cmd, _env(args.device), deadline, f"torchrun ... fmforge train ({mode})")
    res["train_s"] = round(t.wall_s, 1)
    res["log_tail"] = log[-1500:]
    if rc != 0:
        raise PartFailed(f"torchrun ... fmforge train failed (exit {rc}): {log[-2000:]}")
    records = read_metrics(run / "metrics.jsonl")
    losses = [r for r in records if "loss" in r]
    last = run / "checkpoints" / f"step-{steps:06d}"
    res.update({
        "last_logged_step": losses[-1]["step"] if losses else None,
        "final_loss": losses[-1]["loss"] if losses else None,
        "mode_line_in_log": expect in " ".join(log.split()),  # rich may wrap; compare words
        "dcp_checkpoint": (last / "dcp" / ".metadata").is_file(),
    })
    problems = []
    if res["last_logged_step"] != steps:
        problems.append(f"metrics end at step {res['last_logged_step']}, not {steps}")
    if res["final_loss"] is None or not math.isfinite(res["final_loss"]):
        problems.append(f"final loss {res['final_loss']}")
    if not res["mode_line_in_log"]:
        problems.append(f"the log lacks {expect!r}")
    if not res["dcp_checkpoint"]:
        found = sorted(str(f.relative_to(last)) for f in last.rglob("*")) if last.is_dir() else "nothing"
        problems.append(f"{last.name} has no dcp/.metadata (it holds {found})")
    else:
        rc, clog = call([sys.executable, "-m", "fmforge", "checkpoint", "consolidate", str(run)],
                        _env(args.device), deadline, "fmforge checkpoint consolidate")
        res["consolidated"] = rc == 0 and (last / "model.safetensors").is_file()
        if not res["consolidated"]:
            problems.append(f"fmforge checkpoint consolidate wrote no model.safetensors (exit {rc}): "
                            f"{clog[-1000:]}")
    if problems:
        raise PartFailed("; ".join(problems))
    res["ok"] = True


# ------------------------------------------------------------ meta_build_1b


def meta_build_worker(spec: dict[str, Any]) -> None:
    """Under torchrun: the preset's model built as the FSDP trainer builds it
    (``build_sharded``), measured, then trained for a few steps. One JSON per rank."""
    import torch

    from fmforge.config import ModelConfig, TrainConfig
    from fmforge.model.transformer import Transformer
    from fmforge.train.distributed import build_sharded, setup_parallel, teardown
    from fmforge.train.optim import build_optimizer

    if spec["device"] == "cpu":
        torch.set_num_threads(1)
    par = setup_parallel("fsdp", spec["device"])
    cuda = par.device.type == "cuda"
    cfg = ModelConfig(**spec["model"])
    dtype = "bfloat16" if cuda else "float32"
    sync = device_sync(par.device)
    memory = DevicePeak(par.device)

    def build() -> Transformer:
        torch.manual_seed(spec["seed"])
        return Transformer(cfg)

    par.barrier()
    memory.mark()
    with Timer(sync) as built:
        model = build_sharded(build, par, dtype)
    params = list(model.parameters())  # tied embedding and head: one parameter
    out: dict[str, Any] = {
        "rank": par.rank, "world_size": par.world_size, "build_s": built.wall_s,
        "memory_after_build_bytes": memory.peak_bytes(),
        # What stays allocated (the peak less what the build freed again).
        "resident_after_build_bytes": memory.held_bytes(),
        "buffer_bytes": sum(b.numel() * b.element_size() for b in model.buffers()),
        "memory_method": f"{memory.method} growth from before the build",
        "params": sum(p.numel() for p in params),
        "local_numel": sum(p.to_local().numel() for p in params),
        # torch.chunk's split along dim 0: no process holds more than ceil(rows / processes) rows.
        "local_numel_bound": sum(-(-p.shape[0] // par.world_size) * (p.numel() // p.shape[0]) for p in params),
        "largest_param_numel": max(p.numel() for p in params),
        "meta_left": [n for n, p in model.named_parameters() if p.to_local().is_meta],
        "tied": model.lm_head.weight is model.embed.weight,
    }
    tcfg = TrainConfig(device=spec["device"], dtype=dtype)
    opt = build_optimizer(model, tcfg)
    gen = torch.Generator().manual_seed(1000 + par.rank)
    batches = iter([torch.randint(0, cfg.vocab_size, (spec["micro_batch"], cfg.seq_len + 1), generator=gen)
                    .to(par.device) for _ in range(spec["steps"])])
    norms = []

    def step() -> float:
        batch = next(batches)
        # FSDP's mixed-precision policy computes in bf16 (the trainer adds no autocast).
        loss = model(batch[:, :-1], batch[:, 1:])
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), tcfg.grad_clip)
        norms.append(float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm))
        opt.step()
        opt.zero_grad(set_to_none=True)
        return par.mean(float(loss.detach()))

    steps_memory = DevicePeak(par.device)  # no mark: the whole peak, weights and optimizer state included
    steps_memory.restart()
    times, losses = timed_steps(step, spec["steps"], sync)
    out.update({"losses": losses, "grad_norm_last": norms[-1] if norms else None, "step_times_s": times,
                "step_peak_memory_bytes": steps_memory.peak_bytes() if cuda else None})
    with open(f"{spec['out']}.{par.rank}.json", "w", encoding="utf-8") as f:
        json.dump(out, f)
    teardown(par)


def part_meta_build(args, deadline: float, res: dict[str, Any]) -> None:
    from fmforge.model.counting import count_parameters, from_model_config
    from fmforge.plan.memory import estimate_memory

    cfg = preset_config(META_PRESET, args.smoke)
    model = cfg.resolved_model()
    procs = args.procs
    out = Path(args.work) / "meta_build"
    spec = {"device": args.device, "model": model.model_dump(mode="json"), "seed": cfg.seed,
            "micro_batch": 1, "steps": META_STEPS, "out": str(out)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(procs),
           __file__, "--meta-worker", json.dumps(spec)]
    expected_params = count_parameters(model).total
    res.update({
        "preset": META_PRESET, "processes": procs, "seq_len": model.seq_len, "micro_batch": 1,
        "steps": META_STEPS, "command": " ".join(["torchrun", *cmd[3:6], "gpu_train_check.py --meta-worker ..."]),
        "expected_params": expected_params, "published_params": None if args.smoke else PUBLISHED_PARAMS[META_PRESET],
    })
    with Timer() as t:
        rc, log = call(cmd, _env(args.device), deadline, "torchrun ... --meta-worker")
    res["process_s"] = round(t.wall_s, 1)
    ranks = [json.loads(p.read_text()) for p in sorted(out.parent.glob(out.name + ".*.json"))]
    if rc != 0 or len(ranks) != procs:
        raise PartFailed(f"the meta-build processes failed (exit {rc}, {len(ranks)} of {procs} reported): "
                         f"{log[-2000:]}")
    r0 = ranks[0]
    # Each process keeps its shard of the fp32 weights (and the rotary tables). Its
    # peak may add one whole parameter at a time: materialize computes each one
    # whole (on the CPU, so on a GPU only the tied head's own shard shows, which
    # to_empty allocates before tie_weights drops it). 64 MiB for the allocator's
    # rounding and small tensors.
    shard = r0["params"] * 4 / procs
    slack = r0["buffer_bytes"] + 64 * 2**20
    bound = shard + r0["largest_param_numel"] * 4 + slack
    built = max(r["memory_after_build_bytes"] for r in ranks)
    resident = [r["resident_after_build_bytes"] for r in ranks if r["resident_after_build_bytes"] is not None]
    arch = from_model_config(model)
    hw, _ = hardware_for(args.device)
    plan = estimate_memory(arch, hw, 1, procs, "fsdp", "autocast" if args.device == "cuda" else "float32", False)
    losses = r0["losses"]
    step_peak = [r["step_peak_memory_bytes"] for r in ranks if r["step_peak_memory_bytes"] is not None]
    res.update({
        "build_s": max(r["build_s"] for r in ranks),
        "params": r0["params"], "tied": r0["tied"],
        "memory_after_build_gb": built / 1e9, "memory_method": r0["memory_method"],
        "resident_after_build_gb": max(resident) / 1e9 if resident else None,
        "expected_shard_gb": shard / 1e9, "expected_bound_gb": bound / 1e9,
        "memory_vs_shard": built / shard,
        "local_numel_per_rank": [r["local_numel"] for r in ranks],
        "losses": losses, "ln_vocab": math.log(model.vocab_size),
        "step_times_s": r0["step_times_s"],
        "step_peak_memory_gb": max(step_peak) / 1e9 if step_peak else None,
        "planned_step_memory_gb": plan.total_gb,
    })
    problems = []
    if r0["params"] != expected_params:
        problems.append(f"{r0['params']:,} parameters built, the counter says {expected_params:,}")
    if res["published_params"] is not None and r0["params"] != res["published_params"]:
        problems.append(f"{r0['params']:,} parameters, not the published {res['published_params']:,}")
    if any(r["meta_left"] for r in ranks):
        problems.append(f"parameters left on the meta device: {ranks[0]['meta_left'][:5]}")
    if (sum(res["local_numel_per_rank"]) != r0["params"]
            or max(res["local_numel_per_rank"]) > r0["local_numel_bound"]):
        problems.append(f"the shards {res['local_numel_per_rank']} do not split {r0['params']:,} parameters "
                        f"{procs} ways")
    # Untrained, the loss is about ln(vocabulary): finite, and the weights are sane.
    if not all(math.isfinite(v) for v in losses) or abs(losses[0] - res["ln_vocab"]) > 1.0:
        problems.append(f"losses {losses}, expected finite and about ln({model.vocab_size}) = {res['ln_vocab']:.2f}")
    if args.device == "cuda":
        held = max(resident)
        res["memory_within_bound"] = 0.99 * shard <= held <= shard + slack and built <= bound
        if not res["memory_within_bound"]:
            problems.append(f"after the build {held / 1e9:.3f} GB stays allocated (expected the shard, "
                            f"{shard / 1e9:.3f} GB) and the peak was {built / 1e9:.3f} GB (expected at most "
                            f"{bound / 1e9:.3f} GB, the shard plus one whole parameter)")
    else:
        res["memory_within_bound"] = None  # RSS of a tiny model is the allocator's noise; judged on a GPU
    if problems:
        raise PartFailed("; ".join(problems))
    res["ok"] = True


# ----------------------------------------------------------------- verdicts


def judge_goals(result: dict[str, Any]) -> list[dict[str, Any]]:
    parts, on_gpu = result["parts"], result["device"] == "cuda"
    why_not = None if on_gpu else "judged on a GPU only"

    def goal(name: str, part: str, what: str, measured: float | None, met: bool) -> dict[str, Any]:
        g = {"goal": name, "part": part, "what": what, "measured": measured, "met": met if on_gpu else None}
        if part not in parts:
            g["met"], g["note"] = None, f"not judged: {part} was not run (--parts)"
        elif measured is None and on_gpu:
            g["met"], g["note"] = False, f"not measured: {part} failed"
        elif why_not:
            g["note"] = why_not
        return g

    tp = parts.get("throughput_gpt2_350m", {})
    mfu = tp.get("mfu") if tp.get("ok") else None
    pe = parts.get("plan_eager", {})
    errors = pe.get("error_pct", {}) if pe.get("ok") else {}
    st, mem = errors.get("step_time_s"), errors.get("peak_memory_gb")
    return [
        goal("mfu_350m", "throughput_gpt2_350m", f"MFU of the 350M preset, bf16 + compile, >= {MFU_GOAL:.0%}", mfu,
             mfu is not None and mfu >= MFU_GOAL),
        goal("plan_step_time", "plan_eager", f"planner's step time within {PLAN_TOLERANCE_PCT:g}% of an eager step "
             "(error %, 350M preset)", st, st is not None and abs(st) <= PLAN_TOLERANCE_PCT),
        goal("plan_memory", "plan_eager", f"planner's peak memory within {PLAN_TOLERANCE_PCT:g}% of an eager step "
             "(error %, 350M preset)", mem, mem is not None and abs(mem) <= PLAN_TOLERANCE_PCT),
    ]


def finish(result: dict[str, Any], t_start: float) -> None:
    result["total_s"] = round(time.monotonic() - t_start, 1)
    result["goals"] = judge_goals(result)
    parts = result["parts"].values()
    result["ok"] = all(p.get("ok") is not False for p in parts)
    met = [g["met"] for g in result["goals"]]
    judged = [m for m in met if m is not None]
    result["goals_met"] = None if result["device"] != "cuda" or not judged else all(judged)
    failed = [name for name, p in result["parts"].items() if p.get("ok") is False]
    missed = [g["goal"] for g in result["goals"] if g["met"] is False]
    result["verdict"] = (("parts failed: " + ", ".join(failed) if failed else "every part ran and passed")
                         + ("; goals missed: " + ", ".join(missed) if missed else
                            "; goals met" if result["goals_met"] else
                            "; goals not judged" + (" (no GPU)" if result["device"] != "cuda" else "")))


def write(result: dict[str, Any], out: Path) -> None:
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    tmp.replace(out)


# ------------------------------------------------------------------- table


def _f(v: float | None, fmt: str) -> str:
    return "n/a" if v is None else format(v, fmt)


def print_table(result: dict[str, Any]) -> None:
    print(f"\n{result['device_name']} x {result['processes']} | torch {result['torch']} | "
          f"{'smoke (tiny dims)' if result['smoke'] else 'full size'} | {result['total_s']} s in all")
    print(f"{'part':22}{'status':>8}{'wall s':>8}  result")
    for name, p in result["parts"].items():
        status = "skipped" if p.get("skipped") else "ok" if p.get("ok") else "FAILED"
        if p.get("skipped"):
            detail = p["skipped"]
        elif not p.get("ok"):
            detail = " ".join(str(p.get("error", "")).split())[:300]
        elif name == "plan_eager":
            e = p["error_pct"]
            detail = (f"{p['params'] / 1e6:.1f}M {p['micro_batch']}x{p['seq_len']}: step "
                      f"{p['predicted']['step_time_s']:.4f} planned / {p['measured']['step_time_s']:.4f} s "
                      f"({_f(e['step_time_s'], '+.1f')}%), memory {p['predicted']['peak_memory_gb']:.2f} / "
                      f"{p['measured']['peak_memory_gb']:.2f} GB ({_f(e['peak_memory_gb'], '+.1f')}%)")
        elif name.startswith("throughput"):
            detail = (f"{p['params'] / 1e6:.1f}M {p['micro_batch']}x{p['seq_len']}: {p['tokens_per_s']:,.0f} "
                      f"tokens/s, MFU {_f(p['mfu'], '.1%')}, warm-up {p['warmup_s']:.1f} s, peak "
                      f"{p['peak_memory_gb']:.2f} GB / plan {p['planned_memory_gb']:.2f} GB "
                      f"({_f(p['memory_error_pct'], '+.1f')}%)")
        elif name == "trainer_data":
            detail = ", ".join(f"{k} {v} s" for k, v in p["stages"].items())
        elif name in ("fsdp", "hsdp"):
            detail = (f"'{p['expected_log_line']}': {p['last_logged_step']} steps, loss "
                      f"{p['final_loss']:.3f}, DCP checkpoint consolidated")
        elif name == "meta_build_1b":
            detail = (f"{p['params']:,} params ({'= published' if p['published_params'] else 'shrunk'}), "
                      f"built in {p['build_s']:.1f} s, peak {p['memory_after_build_gb']:.3f} GB after the build "
                      f"(shard {p['expected_shard_gb']:.3f}, bound {p['expected_bound_gb']:.3f}), losses "
                      + ", ".join(f"{v:.3f}" for v in p["losses"]))
        else:
            detail = ""
        print(f"{name:22}{status:>8}{_f(p.get('wall_s'), '.1f'):>8}  {detail}")
    print()
    for g in result["goals"]:
        verdict = {True: "met", False: "MISSED", None: "not judged"}[g["met"]]
        measured = g["measured"]
        shown = "n/a" if measured is None else f"{measured:.1%}" if g["goal"] == "mfu_350m" else f"{measured:+.1f}%"
        print(f"goal {g['goal']:16}{shown:>9}  {verdict}{' (' + g['note'] + ')' if g.get('note') else ''}")
    print(f"verdict: {result['verdict']}")


# -------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    ap.add_argument("--smoke", action="store_true", help="tiny dims: every part's code path in a minute or two")
    ap.add_argument("--procs", type=int, default=None,
                    help="processes for fsdp, hsdp and the meta build (default: every visible GPU; 2 on CPU)")
    ap.add_argument("--parts", default=None, help=f"comma-separated subset of {','.join(BUDGETS)}")
    ap.add_argument("--out", default=os.environ.get("OUT") or "/tmp", help="folder for gpu_check.json")
    ap.add_argument("--part-timeout", type=float, default=None,
                    help="seconds for every part instead of its budget (a slower machine, or a test)")
    ap.add_argument("--worker-spec", help=argparse.SUPPRESS)
    ap.add_argument("--worker-out", help=argparse.SUPPRESS)
    ap.add_argument("--meta-worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker_spec:
        Path(args.worker_out).write_text(json.dumps(train_step_worker(json.loads(args.worker_spec))))
        return 0
    if args.meta_worker:
        meta_build_worker(json.loads(args.meta_worker))
        return 0

    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print(f"gpu_train_check: --device cuda but torch sees no CUDA device (torch {torch.__version__}, "
              f"built for CUDA {torch.version.cuda}); run it on a GPU machine, or use --device cpu --smoke",
              file=sys.stderr)
        return 2
    gpus = torch.cuda.device_count() if args.device == "cuda" else 0
    if args.procs is None:
        args.procs = gpus if args.device == "cuda" else 2
    if args.procs < 1 or (args.device == "cuda" and args.procs > gpus):
        ap.error(f"--procs must be between 1 and the {gpus} visible GPUs")
    names = args.parts.split(",") if args.parts else list(BUDGETS)
    unknown = [n for n in names if n not in BUDGETS]
    if unknown:
        ap.error(f"unknown --parts {unknown}; choose from {list(BUDGETS)}")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / "gpu_check.json"
    json_path.unlink(missing_ok=True)  # an earlier check's result must not pass for this one's
    total_budget = SMOKE_TOTAL_BUDGET_S if args.smoke else TOTAL_BUDGET_S
    result: dict[str, Any] = {
        "benchmark": "gpu_check", "machine": machine(), "device": args.device, "smoke": args.smoke, "complete": False,
        "device_name": torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu",
        "gpus": gpus, "processes": args.procs, "torch": torch.__version__,
        "cuda": torch.version.cuda, "budget_s": total_budget, "parts": {},
    }
    signal.signal(signal.SIGTERM, _on_sigterm)
    t_start = time.monotonic()
    end = t_start + total_budget
    layout = hsdp_layout(args.procs)
    runners = {
        "plan_eager": lambda d, r: part_plan_eager(args, d, r),
        "throughput_gpt2_350m": lambda d, r: part_throughput("gpt2-350m", args, d, r),
        "throughput_gpt2_124m": lambda d, r: part_throughput("gpt2-124m", args, d, r),
        "trainer_data": lambda d, r: part_trainer_data(args, d, r),
        "fsdp": lambda d, r: part_trainer("fsdp", args, d, r),
        "hsdp": lambda d, r: part_trainer("hsdp", args, d, r),
        "meta_build_1b": lambda d, r: part_meta_build(args, d, r),
    }
    status = 0
    with tempfile.TemporaryDirectory(prefix="fmforge-gpu-check-") as work:
        args.work = work
        try:
            for name in names:
                budget = args.part_timeout or (SMOKE_BUDGET_S if args.smoke else BUDGETS[name])
                part: dict[str, Any] = {"budget_s": budget}
                result["parts"][name] = part
                now = time.monotonic()
                if name == "hsdp" and layout is None:
                    part.update(ok=None, skipped=f"{args.procs} process: HSDP needs at least 2, and NCCL "
                                "cannot put two ranks on one GPU (run it with 2 or more GPUs)")
                elif name in ("fsdp", "hsdp") and result["parts"].get("trainer_data", {}).get("ok") is False:
                    part.update(ok=False, error="its data could not be prepared (see trainer_data)")
                elif end - now < 10:
                    part.update(ok=False, error=f"not started: the check's {total_budget} s were spent")
                else:
                    print(f"== {name} (up to {min(budget, end - now):.0f} s)", flush=True)
                    try:
                        runners[name](min(now + budget, end), part)
                    except Exception as exc:  # noqa: BLE001 - recorded as the part's failure; the rest go on
                        error = str(exc) if isinstance(exc, PartFailed) else \
                            f"{type(exc).__name__}: {exc}\n{traceback.format_exc()[-2000:]}"
                        part.update(ok=False, error=error)
                        print(f"   FAILED: {error[-2000:]}", file=sys.stderr, flush=True)
                    part["wall_s"] = round(time.monotonic() - now, 1)
                finish(result, t_start)
                write(result, json_path)
        except (Terminated, KeyboardInterrupt):
            for name in names:
                p = result["parts"].setdefault(name, {"error": "not started: the check was interrupted"})
                if "ok" not in p:
                    p.setdefault("error", "interrupted (SIGTERM or Ctrl-C) while it ran")
                    p["ok"] = False
            status = 2
        finally:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
    result["complete"] = status == 0
    finish(result, t_start)
    write(result, json_path)
    print_table(result)
    print(f"\nwrote {json_path}")
    if status:
        return status
    return 0 if result["ok"] and result["goals_met"] is not False else 1


if __name__ == "__main__":
    sys.exit(main())
