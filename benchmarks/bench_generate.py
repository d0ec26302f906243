"""Generation speed of fmforge's engine against Hugging Face ``generate``, same weights, same process.

Why: issue 8 asks the KV-cache engine to beat ``transformers``' ``generate`` on
the same model: at least 1.5x its tokens/s at batch 1 on CPU, where a small
model is bound by per-token overhead rather than by matmuls.

Both sides decode greedily exactly ``--new-tokens`` tokens (no end-of-text
stop) from the same prompts (all ``--prompt-tokens`` long, so Hugging Face
needs no padding): ours is ``Engine.generate`` (prefill, KV-cache decode steps,
incremental detokenisation of every sequence: work Hugging Face does not do);
theirs ``LlamaForCausalLM.generate`` with its default dynamic cache, built from
the identical ``LlamaConfig`` with our weights copied in (fused ``qkv_proj``
rows are [q; k; v], ``gate_up_proj`` rows [gate; up]). The first tokens of both
are compared, so a speed-up that changed the output would show.

The model: the demo's shape (d_model 256, 4 layers, 4 heads / 2 kv heads,
seq_len 256, vocab 8192, tied embeddings) with random weights and a byte-level
BPE tokenizer of 8192 trained here on Python's standard library; or ``--run``
for a trained run's latest checkpoint and tokenizer. Rounds are interleaved
(ours, theirs, theirs, ours, ...) in one process; each figure is the median
over rounds of tokens/s (batch × new tokens / wall time, prefill included).

    python benchmarks/bench_generate.py                  # about 1 min on 2 cores
    python benchmarks/bench_generate.py --run runs/demo --rounds 7 --json out.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import sysconfig
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from fmforge.config import ModelConfig
from fmforge.inference.engine import Engine, GenerationRequest
from fmforge.inference.loading import TrainedModel
from fmforge.export.mapping import to_transformers as llama_twin
from fmforge.model.transformer import Transformer

DEMO = dict(d_model=256, n_layers=4, n_heads=4, n_kv_heads=2, seq_len=256, vocab_size=8192,
            tie_embeddings=True)


def stdlib_tokenizer(vocab_size: int):
    """A byte-level BPE tokenizer trained on (part of) Python's standard library."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    texts, size = [], 0
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        texts.append(path.read_text(encoding="utf-8", errors="replace"))
        size += len(texts[-1])
        if size > 4_000_000:
            break
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<|endoftext|>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return tok


def load_models(run: str | None) -> TrainedModel:
    if run:
        from fmforge.inference.loading import load_trained
        from fmforge.rundir import resolve_run

        return load_trained(resolve_run(run), device="cpu")
    tok = stdlib_tokenizer(DEMO["vocab_size"])
    torch.manual_seed(0)
    model = Transformer(ModelConfig(**{**DEMO, "vocab_size": tok.get_vocab_size()})).eval()
    return TrainedModel(model=model, tokenizer=tok, device=torch.device("cpu"), step=0,
                        eos_id=tok.token_to_id("<|endoftext|>"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", help="a trained run directory (default: random demo-shaped weights)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--new-tokens", type=int, default=200)
    ap.add_argument("--prompt-tokens", type=int, default=32)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--json", type=Path, help="write the figures here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    trained = load_models(args.run)
    cfg = trained.model.cfg
    if args.prompt_tokens + args.new_tokens > cfg.seq_len:
        raise SystemExit(f"--prompt-tokens + --new-tokens must fit seq_len={cfg.seq_len}")
    hf = llama_twin(trained.model)
    engine = Engine(trained, max_batch=max(args.batches))
    gen = torch.Generator().manual_seed(1)
    prompts = torch.randint(0, cfg.vocab_size, (max(args.batches), args.prompt_tokens), generator=gen)
    n = args.new_tokens

    def ours(b: int) -> list[list[int]]:
        requests = [GenerationRequest(prompt_ids=prompts[i].tolist(), max_new_tokens=n,
                                      temperature=0, stop_token_ids=[]) for i in range(b)]
        results = engine.generate(requests)
        assert all(len(r.token_ids) == n for r in results)
        return [r.token_ids for r in results]

    def theirs(b: int) -> list[list[int]]:
        x = prompts[:b]
        with torch.inference_mode():
            out = hf.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=n,
                              min_new_tokens=n, do_sample=False, eos_token_id=None, pad_token_id=0)
        assert out.shape == (b, args.prompt_tokens + n)
        return out[:, args.prompt_tokens:].tolist()

    def timed(fn, b: int) -> tuple[float, list[list[int]]]:
        t0 = time.perf_counter()
        ids = fn(b)
        return b * n / (time.perf_counter() - t0), ids

    print(f"model: {trained.model.num_parameters():,} parameters, vocab {cfg.vocab_size}, "
          f"{'run ' + args.run if args.run else 'random demo-shaped weights'}; torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}")
    figures = {}
    for b in args.batches:
        _, ours_ids = timed(ours, b)  # warm-up, and the outputs to compare
        _, hf_ids = timed(theirs, b)
        agree = [next((i for i, (x, y) in enumerate(zip(o, h)) if x != y), n)
                 for o, h in zip(ours_ids, hf_ids)]
        rates = {"hf": [], "ours": []}
        for r in range(args.rounds):
            order = (("ours", ours), ("hf", theirs)) if r % 2 == 0 else (("hf", theirs), ("ours", ours))
            for name, fn in order:
                rates[name].append(timed(fn, b)[0])
        hf_med, ours_med = statistics.median(rates["hf"]), statistics.median(rates["ours"])
        ratios = [o / h for o, h in zip(rates["ours"], rates["hf"])]
        figures[f"batch_{b}"] = {"hf_tokens_per_s": hf_med, "ours_tokens_per_s": ours_med,
                                 "ratio": ours_med / hf_med, "paired_ratio_median": statistics.median(ratios),
                                 "hf_rounds": rates["hf"], "ours_rounds": rates["ours"],
                                 "identical_leading_tokens": agree}
        print(f"batch {b}: HF {hf_med:,.0f} tokens/s ({min(rates['hf']):,.0f}-{max(rates['hf']):,.0f}), "
              f"ours {ours_med:,.0f} tokens/s ({min(rates['ours']):,.0f}-{max(rates['ours']):,.0f}), "
              f"ours/HF {ours_med / hf_med:.2f}x (paired median {statistics.median(ratios):.2f}x); "
              f"greedy tokens identical for the first {min(agree)} of {n} (per sequence: {agree})")
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                         "figures": figures}, indent=2))


if __name__ == "__main__":
    main()
