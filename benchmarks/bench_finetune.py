"""LoRA against full fine-tuning of the same base: step time, peak memory, trainable share.

Why: issue 10 asks what LoRA saves over full fine-tuning on the same model, as
a user would run it: ``fmforge.finetune``'s own loop (``run_loop``: the same
loss, AdamW, schedule, checkpointing) on the same base and the same batches.

The base: a Llama of the demo's class, larger (d_model 512, 8 layers, 8 heads /
4 kv heads, vocab 8192, untied head: about 33M parameters) with random weights,
saved with ``save_pretrained``; the batches: random token sequences of
``--seq-len`` tokens, every token a target. Each method runs in its own
subprocess so that its peak resident memory (``VmHWM``, the whole process:
Python, torch, the model, gradients, optimizer state, activations) is its own;
the figure beside it is the growth of that peak over the process's peak right
after loading (what training adds). On CPU a third figure is the peak held by
torch's allocator over one step (the profiler's memory timeline): RSS also
counts memory the C allocator kept after torch freed it. Step time is the median over the steps
after the first. On CUDA the peaks are ``torch.cuda.max_memory_allocated``. Measured with
the shared harness (``harness.py``: ``DevicePeak``, ``torch_allocator_peak``, ``run_json``);
the JSON records the machine and its load.

    python benchmarks/bench_finetune.py                 # about 2 min on 2 cores
    python benchmarks/bench_finetune.py --steps 10 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from harness import DevicePeak, Timer, machine, machine_line, run_json, torch_allocator_peak  # noqa: E402


def make_base(path: Path, d: int, layers: int, vocab: int) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=vocab, hidden_size=d, intermediate_size=int(8 * d / 3) // 64 * 64 + 64,
                                 num_hidden_layers=layers, num_attention_heads=8, num_key_value_heads=4,
                                 max_position_embeddings=1024, tie_word_embeddings=False)).save_pretrained(str(path))


class RandomBatches:
    def __init__(self, vocab: int, batch: int, seq_len: int, seed: int = 0):
        self.vocab, self.batch_size, self.seq_len, self.seed = vocab, batch, seq_len, seed

    def batch(self, step: int, micro: int):
        import torch

        g = torch.Generator().manual_seed(self.seed * 100_000 + step * 10 + micro)
        ids = torch.randint(0, self.vocab, (self.batch_size, self.seq_len + 1), generator=g)
        return {"input_ids": ids[:, :-1], "targets": ids[:, 1:]}

    def epoch_at(self, step: int) -> float:
        return 0.0


def one_step(model, batches: RandomBatches) -> None:
    """Forward, backward and a fresh AdamW's first step on the first batch."""
    import torch

    b = batches.batch(0, 0)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    logits = model(input_ids=b["input_ids"]).logits
    torch.nn.functional.cross_entropy(logits.flatten(0, 1), b["targets"].flatten()).backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def worker(args) -> dict:
    import torch

    from fmforge.config import FinetuneConfig
    from fmforge.finetune.lora import add_adapters, count_trainable, load_base
    from fmforge.finetune.trainer import LoopSettings, run_loop
    from fmforge.rundir import RunDir

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    fc = FinetuneConfig(base=args.base, method=args.method, data=["unused"], lr=1e-4,
                        lora={"r": args.rank, "alpha": 2 * args.rank, "dropout": 0.0},
                        micro_batch_size=args.batch, seq_len=args.seq_len, dtype="float32",
                        tensorboard=False, log_every=10_000, checkpoint_every=10_000, device=device.type)
    model = load_base(Path(args.base), args.method, device, torch.float32)
    if args.method == "full":
        model.requires_grad_(True)
    else:
        model = add_adapters(model, fc)
    counts = count_trainable(model)
    loaded = DevicePeak(device)  # what the process holds after loading: run_loop's own measure (VmHWM or CUDA)
    loaded.mark()
    batches = RandomBatches(model.config.vocab_size, args.batch, args.seq_len)
    with tempfile.TemporaryDirectory() as tmp, Timer() as wall:
        out = run_loop(model, batches, fc.train_view(args.steps),
                       RunDir(tmp), LoopSettings(args.steps, 1, 0, "bench", device, "float32"))
    allocated = torch_allocator_peak(lambda: one_step(model, batches)) if device.type == "cpu" else None
    return {"allocator_peak_bytes": allocated, "method": args.method, "trainable": counts.trainable, "total": counts.total,
            "share": counts.share, "step_s": out["step_s"], "peak_bytes": out["peak_memory_bytes"],
            "peak_kind": out["peak_memory_kind"], "loaded_bytes": loaded.base,
            "training_bytes": out["peak_memory_bytes"] - loaded.base, "wall_s": wall.wall_s,
            "tokens_per_s": args.batch * args.seq_len / out["step_s"], "first_loss": out["first_loss"],
            "final_loss": out["final_loss"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--d-model", type=int, default=512)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--worker", choices=["lora", "full"], default=None, help=argparse.SUPPRESS)
    ap.add_argument("--base", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        args.method = args.worker
        print(json.dumps(worker(args)))
        return

    os.environ["FMFORGE_NO_PROGRESS"] = "1"
    results = {}
    at_start = machine()
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "base"
        make_base(base, args.d_model, args.layers, args.vocab)
        for method in ("lora", "full"):
            cmd = [sys.executable, __file__, "--worker", method, "--base", str(base)] + [
                f"--{k.replace('_', '-')}={getattr(args, k)}" for k in
                ("seq_len", "batch", "rank", "steps", "threads")]
            try:
                results[method] = run_json(cmd, env=os.environ)
            except RuntimeError as exc:
                sys.exit(f"{method} worker failed: {exc}")
    lora, full = results["lora"], results["full"]
    mib = 1 / 2**20
    print(f"base: d_model {args.d_model}, {args.layers} layers, vocab {args.vocab}, {full['total']:,} parameters; "
          f"batch {args.batch} x {args.seq_len} tokens; LoRA r={args.rank} on every projection; "
          f"{lora['peak_kind']}")
    print(machine_line(at_start))
    print(f"{'':8}{'trainable':>14}{'share':>9}{'step s':>9}{'tokens/s':>10}{'peak MiB':>10}{'training MiB':>14}"
          f"{'allocator MiB':>15}")
    for m in (full, lora):
        alloc = "n/a" if m["allocator_peak_bytes"] is None else f"{m['allocator_peak_bytes'] * mib:,.0f}"
        print(f"{m['method']:8}{m['trainable']:>14,}{m['share']:>9.2%}{m['step_s']:>9.3f}{m['tokens_per_s']:>10,.0f}"
              f"{m['peak_bytes'] * mib:>10,.0f}{m['training_bytes'] * mib:>14,.0f}{alloc:>15}")
    print(f"LoRA / full: step time {lora['step_s'] / full['step_s']:.2f}x, peak memory "
          f"{lora['peak_bytes'] / full['peak_bytes']:.2f}x, memory training adds "
          f"{lora['training_bytes'] / max(full['training_bytes'], 1):.2f}x, trainable "
          f"{lora['trainable'] / full['trainable']:.4f}x")
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "machine": at_start,
                                         **results}, indent=2))


if __name__ == "__main__":
    main()
