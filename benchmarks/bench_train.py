"""Training speed of fmforge's model against Hugging Face's Llama, same dims, same process.

Why: fmforge trains its own ``Transformer``; a user could as well train
``transformers.LlamaForCausalLM``. Our default (eager) training path must be
worth having: issue 7's goal is at least 1.15x Hugging Face's eager tokens/s in
float32 on a 2-core CPU. This benchmark builds both models from one
configuration (dims, heads, GQA, vocab, tied embeddings, rope theta, RMSNorm
eps, intermediate size, ``attn_implementation="sdpa"``; nothing is downloaded),
checks they have the same parameter count, and times full training steps
(forward with loss, backward, AdamW step) on the same random batches.

Rounds are interleaved in one process (ours, theirs, theirs, ours, ...) so a
noisy neighbour or a thermal change hits both; each figure is the median over
rounds of tokens/s. The achieved GFLOP/s uses fmforge's FLOPs/token
(``fmforge.model.counting.flops_per_token``, the same count for both models) and
is shown as a share of this machine's torch.mm peak, measured in the same run.
Measured with the shared harness (``harness.py``: ``interleaved``, ``per_wall``,
``paired_ratio``); the JSON records the machine and the load at each round's start.

Precision: float32 always; bf16 autocast as well when the CPU has native bf16
(AVX512-BF16 or AMX), where it is the trainer's default. ``--compile`` times
ours compiled against theirs compiled (and reports each compile time) instead
of the eager pair.

    python benchmarks/bench_train.py                 # eager, about 2 min on 2 cores
    python benchmarks/bench_train.py --compile       # compiled vs compiled
    python benchmarks/bench_train.py --rounds 9 --steps 5 --json out.json
    python benchmarks/bench_train.py --profile       # where each model's step goes, by GEMM shape
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from harness import Timer, cpu_has, interleaved, machine, machine_line, paired_ratio, per_wall  # noqa: E402

from fmforge.config import ModelConfig  # noqa: E402
from fmforge.hardware import cpu_has_native_bf16, measure_cpu_peak_flops  # noqa: E402
from fmforge.model.counting import count_parameters, flops_per_token  # noqa: E402
from fmforge.model.transformer import Transformer  # noqa: E402


def llama_config(cfg: ModelConfig):
    """The transformers LlamaConfig of the same architecture as ``cfg``."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.d_model,
        intermediate_size=cfg.ffn_dim,
        num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads,
        num_key_value_heads=cfg.kv_heads,
        head_dim=cfg.head_dim,
        max_position_embeddings=cfg.seq_len,
        rms_norm_eps=cfg.norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta},
        tie_word_embeddings=cfg.tie_embeddings,
        attention_bias=False,
        mlp_bias=False,
        use_cache=False,
        attn_implementation="sdpa",
    )


def build_pair(cfg: ModelConfig) -> tuple[nn.Module, nn.Module]:
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    ours = Transformer(cfg)
    theirs = LlamaForCausalLM(llama_config(cfg))
    n_ours = sum(p.numel() for p in ours.parameters())
    n_theirs = sum(p.numel() for p in theirs.parameters())
    if n_ours != n_theirs or n_ours != count_parameters(cfg).total:
        raise SystemExit(f"parameter counts differ: ours {n_ours:,}, Hugging Face {n_theirs:,}, "
                         f"counting.py {count_parameters(cfg).total:,}")
    return ours.train(), theirs.train()


def make_step(model: nn.Module, hf: bool, dtype: torch.dtype, compile_: bool) -> Callable:
    """One training step on (x, y): forward with the loss, backward, AdamW.

    Each model gets its own default optimizer: ours fmforge's trainer's
    (``build_optimizer``: fused AdamW, decay on matmul weights only), Hugging
    Face's what its ``Trainer`` uses by default with torch >= 2.8
    (``adamw_torch_fused``: ``torch.optim.AdamW(fused=True)``). Both see the same
    targets: Hugging Face is given ``shift_labels`` (``labels`` only switches its
    loss on) so that it scores exactly the tokens ours does instead of shifting
    (and dropping one) itself."""
    if hf:
        opt = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.1, fused=True)
    else:
        from fmforge.config import TrainConfig
        from fmforge.train.optim import build_optimizer

        opt = build_optimizer(model, TrainConfig(lr=3e-4, weight_decay=0.1))
    fwd = torch.compile(model) if compile_ else model
    autocast = (torch.autocast("cpu", dtype=torch.bfloat16) if dtype == torch.bfloat16
                else nullcontext())

    def step(x: torch.Tensor, y: torch.Tensor) -> float:
        with autocast:
            loss = fwd(input_ids=x, labels=y, shift_labels=y).loss if hf else fwd(x, y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()

    return step


def run_steps(step: Callable, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    for x, y in batches:
        step(x, y)


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = ModelConfig(vocab_size=args.vocab, d_model=args.d_model, n_layers=args.layers,
                      n_heads=args.heads, n_kv_heads=args.kv_heads, seq_len=args.seq,
                      tie_embeddings=not args.untied)
    tokens_per_step = args.batch * args.seq
    fpt = flops_per_token(cfg, args.seq)
    dtypes = {"float32": [torch.float32], "bfloat16": [torch.bfloat16],
              "auto": [torch.float32] + ([torch.bfloat16] if cpu_has_native_bf16() else [])
              }[args.dtype]

    gen = torch.Generator().manual_seed(1)
    batches = []
    for _ in range(args.steps):
        buf = torch.randint(0, cfg.vocab_size, (args.batch, args.seq + 1), generator=gen)
        batches.append((buf[:, :-1].contiguous(), buf[:, 1:].contiguous()))

    result: dict[str, Any] = {
        "machine": {**machine(), "threads": torch.get_num_threads(), "avx2": cpu_has("avx2"),
                    "native_bf16": cpu_has_native_bf16(), "torch": torch.__version__},
        "model": {**cfg.model_dump(), "params": count_parameters(cfg).total,
                  "flops_per_token": fpt, "batch": args.batch},
        "compile": args.compile, "rounds": args.rounds, "steps": args.steps, "runs": [],
    }
    print(f"model: {count_parameters(cfg).total / 1e6:.2f}M params, d {cfg.d_model}, "
          f"{cfg.n_layers} layers, heads {cfg.n_heads}/{cfg.kv_heads} (GQA), ffn {cfg.ffn_dim}, "
          f"vocab {cfg.vocab_size}, seq {args.seq} x batch {args.batch}, "
          f"{fpt / 1e6:.1f} MFLOP/token")
    print(f"machine: {machine_line(result['machine'])}; {torch.get_num_threads()} threads, "
          f"native bf16: {cpu_has_native_bf16()}, torch {torch.__version__}")

    for dtype in dtypes:
        name = "bfloat16" if dtype == torch.bfloat16 else "float32"
        peak = measure_cpu_peak_flops(refresh=True, dtype=name)
        ours, theirs = build_pair(cfg)
        steps = {"ours": make_step(ours, False, dtype, args.compile),
                 "hf": make_step(theirs, True, dtype, args.compile)}
        # Warm-up: thread pools, allocator, and under --compile the compilation,
        # timed once per model (the first step includes it).
        warm = {}
        for who, step in steps.items():
            with Timer() as first:
                step(*batches[0])
            warm[who] = first.wall_s
            run_steps(step, batches[:args.warmup])
        samples = interleaved({who: (lambda s=step: run_steps(s, batches)) for who, step in steps.items()},
                              args.rounds)
        rates = per_wall(samples, tokens_per_step * args.steps)
        # A second peak after the timed rounds: keep the better one, so a slow
        # moment during the first measurement does not flatter the shares.
        peak = max(peak, measure_cpu_peak_flops(refresh=True, dtype=name))
        med = {who: statistics.median(v) for who, v in rates.items()}
        best = {who: max(v) for who, v in rates.items()}
        # Each round's two runs sit side by side in time, so their ratio cancels
        # slow drifts in the machine's load; its median is the headline figure.
        paired = paired_ratio(rates["ours"], rates["hf"])
        row = {"dtype": name, "peak_gflops": peak / 1e9, "first_step_s": warm,
               "tokens_per_s": rates, "median_tokens_per_s": med, "best_tokens_per_s": best,
               "cpu_s": {who: [s.cpu_s for s in ss] for who, ss in samples.items()},
               "load_at_start": {who: [s.load_at_start for s in ss] for who, ss in samples.items()},
               "gflops": {w: med[w] * fpt / 1e9 for w in med},
               "share_of_peak": {w: med[w] * fpt / peak for w in med},
               "ratio": paired, "ratio_of_medians": med["ours"] / med["hf"],
               "ratio_of_best": best["ours"] / best["hf"]}
        result["runs"].append(row)
        mode = "compiled" if args.compile else "eager"
        print(f"\n{name}, {mode}: matmul peak {peak / 1e9:.1f} GFLOP/s "
              f"({args.rounds} rounds x {args.steps} steps, median tokens/s)")
        for who, label in (("hf", "Hugging Face LlamaForCausalLM"), ("ours", "fmforge Transformer")):
            spread = f"{min(rates[who]):,.0f}-{max(rates[who]):,.0f}"
            print(f"  {label:<30} {med[who]:>8,.0f} tokens/s  (range {spread:>11})  "
                  f"{row['gflops'][who]:6.1f} GFLOP/s = {row['share_of_peak'][who]:.0%} of peak  "
                  f"first step {warm[who]:.1f} s")
        print(f"  ratio ours / Hugging Face: {row['ratio']:.2f}x (median of per-round ratios; "
              f"of medians {row['ratio_of_medians']:.2f}x, of best rounds {row['ratio_of_best']:.2f}x)")
        del ours, theirs, steps
    return result


def profile_shapes(args: argparse.Namespace, steps: int = 3) -> None:
    """Each model's matrix products by shape (time per step and GFLOP/s), and the
    rest of its step by operator: where the time goes, side by side."""
    from torch.profiler import ProfilerActivity, profile

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = ModelConfig(vocab_size=args.vocab, d_model=args.d_model, n_layers=args.layers,
                      n_heads=args.heads, n_kv_heads=args.kv_heads, seq_len=args.seq,
                      tie_embeddings=not args.untied)
    gen = torch.Generator().manual_seed(1)
    buf = torch.randint(0, cfg.vocab_size, (args.batch, args.seq + 1), generator=gen)
    x, y = buf[:, :-1].contiguous(), buf[:, 1:].contiguous()
    ours, theirs = build_pair(cfg)
    for who, model, hf in (("fmforge Transformer", ours, False), ("Hugging Face LlamaForCausalLM", theirs, True)):
        step = make_step(model, hf, torch.float32, False)
        for _ in range(2):
            step(x, y)
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            for _ in range(steps):
                step(x, y)
        events = prof.key_averages(group_by_input_shape=True)
        total = sum(e.self_cpu_time_total for e in events) / 1e3 / steps
        mm = sorted((e for e in events if e.key == "aten::mm"), key=lambda e: -e.self_cpu_time_total)
        mm_ms = sum(e.self_cpu_time_total for e in mm) / 1e3 / steps
        print(f"\n{who}: {total:.0f} ms per step, of which aten::mm {mm_ms:.0f} ms ({mm_ms / total:.0%})")
        for e in mm:
            (m, k), (_, n) = e.input_shapes[0], e.input_shapes[1]
            ms = e.self_cpu_time_total / 1e3 / steps
            print(f"  mm ({m} x {k}) @ ({k} x {n})  x{e.count // steps:<3} {ms:7.1f} ms  "
                  f"{2 * m * k * n * e.count / (e.self_cpu_time_total * 1e3):6.1f} GFLOP/s")
        by_op: dict[str, float] = {}
        for e in events:
            if e.key != "aten::mm":
                by_op[e.key] = by_op.get(e.key, 0.0) + e.self_cpu_time_total / 1e3 / steps
        for name, ms in sorted(by_op.items(), key=lambda kv: -kv[1])[:8]:
            print(f"  {name[:60]:<60} {ms:7.1f} ms")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--d-model", type=int, default=384)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--heads", type=int, default=6)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--untied", action="store_true", help="separate output head")
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--rounds", type=int, default=8, help="interleaved rounds per model")
    p.add_argument("--steps", type=int, default=2, help="timed training steps per round")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps after the first")
    p.add_argument("--dtype", choices=["auto", "float32", "bfloat16"], default="auto",
                   help="auto: float32, plus bf16 autocast where the CPU has native bf16")
    p.add_argument("--compile", action="store_true", help="torch.compile both models")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    p.add_argument("--profile", action="store_true",
                   help="instead of timing: each model's step by GEMM shape and operator (float32, eager)")
    args = p.parse_args(argv)
    if args.profile:
        profile_shapes(args)
        return 0
    result = run(args)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
