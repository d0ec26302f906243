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
Measured with the shared harness (``harness.py``: ``interleaved``, ``per_wall``,
``paired_ratio``); the JSON records the machine and the load at each round's start.

llama.cpp, the CPU anchor (issue 17): where ``llama-cpp-python`` is installed
(``make llama-cpp``), the same weights are exported with ``fmforge export gguf``'s
code and run through llama.cpp at batch 1 (its Python binding decodes one
sequence) with the same number of threads as torch: as float32 with a float32 KV
cache, the precision ours computes in, and with ``--llama-cpp-dtypes f32 f16
q8_0`` also in the smaller formats it is deployed with (its default float16 KV
cache). Its greedy tokens are compared with ours too. Prompt processing
(``--prefill-tokens``, one forward over a prompt, logits of its last position
only) is timed for all of them.

``--size 100m``: d_model 768, 12 layers, 12 query / 4 kv heads, ffn 2048, 32,768
embedding rows (tied; the 8192-token tokenizer's ids, the rest unused rows as a
real 32k vocabulary would cost), seq_len 512: 100.7M parameters.

    python benchmarks/bench_generate.py                  # about 1 min on 2 cores
    python benchmarks/bench_generate.py --size 100m --batches 1 --rounds 3
    python benchmarks/bench_generate.py --run runs/demo --rounds 7 --json out.json
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import json
import statistics
import sys
import sysconfig
import tempfile
from functools import partial
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from harness import interleaved, machine, machine_line, paired_ratio, per_wall  # noqa: E402

from fmforge.config import ModelConfig
from fmforge.inference.engine import Engine, GenerationRequest
from fmforge.inference.loading import TrainedModel
from fmforge.export.mapping import to_transformers as llama_twin
from fmforge.model.transformer import Transformer

DEMO = dict(d_model=256, n_layers=4, n_heads=4, n_kv_heads=2, seq_len=256, vocab_size=8192,
            tie_embeddings=True)
SIZES = {"demo": DEMO,
         "100m": dict(d_model=768, n_layers=12, n_heads=12, n_kv_heads=4, seq_len=512,
                      vocab_size=32768, tie_embeddings=True)}
TOKENIZER_VOCAB = 8192


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


def load_models(run: str | None, size: str = "demo") -> TrainedModel:
    if run:
        from fmforge.inference.loading import load_trained
        from fmforge.rundir import resolve_run

        return load_trained(resolve_run(run), device="cpu")
    tok = stdlib_tokenizer(TOKENIZER_VOCAB)
    shape = SIZES[size]
    torch.manual_seed(0)
    model = Transformer(ModelConfig(**{**shape, "vocab_size": max(shape["vocab_size"],
                                                                  tok.get_vocab_size())})).eval()
    return TrainedModel(model=model, tokenizer=tok, device=torch.device("cpu"), step=0,
                        eos_id=tok.token_to_id("<|endoftext|>"))


def llama_cpp_model(trained: TrainedModel, workdir: Path, threads: int, dtype: str):
    """The weights as ``fmforge export gguf --dtype DTYPE`` writes them, loaded by
    llama.cpp (through llama-cpp-python): for f32 with a float32 KV cache, as ours
    is; for f16 and q8_0 with llama.cpp's default (float16) cache, as it is deployed."""
    import llama_cpp

    from fmforge.export.gguf import export_gguf
    from fmforge.rundir import RunDir

    run = RunDir(workdir / "bench")
    if not run.tokenizer.is_dir():
        run.tokenizer.mkdir(parents=True)
        trained.tokenizer.save(str(run.tokenizer / "tokenizer.json"))
        eos = trained.tokenizer.id_to_token(trained.eos_id)
        (run.tokenizer / "tokenizer_config.json").write_text(json.dumps({"eos_token": eos}))
    path = export_gguf(run, workdir / f"bench-{dtype}.gguf", dtype, trained=trained)
    n_ctx = trained.model.cfg.seq_len
    cache = llama_cpp.GGML_TYPE_F32 if dtype == "f32" else llama_cpp.GGML_TYPE_F16
    return llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx,
                           n_threads=threads, n_threads_batch=threads, type_k=cache, type_v=cache,
                           logits_all=False, verbose=False)


def first_difference(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", help="a trained run directory (default: random weights of --size)")
    ap.add_argument("--size", choices=sorted(SIZES), default="demo",
                    help="the shape of the random-weight model (default: the demo's)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--new-tokens", type=int, default=200)
    ap.add_argument("--prompt-tokens", type=int, default=32)
    ap.add_argument("--prefill-tokens", type=int, default=128,
                    help="prompt length for the prompt-processing figures (0: skip them)")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--llama-cpp", choices=("auto", "yes", "no"), default="auto",
                    help="run llama.cpp too (auto: when llama-cpp-python is installed)")
    ap.add_argument("--llama-cpp-dtypes", nargs="+", choices=("f32", "f16", "q8_0"), default=["f32"],
                    help="GGUF exports to run through llama.cpp (f32: the same precision as ours)")
    ap.add_argument("--json", type=Path, help="write the figures here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    with_llama = args.llama_cpp == "yes" or (
        args.llama_cpp == "auto" and importlib.util.find_spec("llama_cpp") is not None)

    trained = load_models(args.run, args.size)
    cfg = trained.model.cfg
    if args.prompt_tokens + args.new_tokens > cfg.seq_len:
        raise SystemExit(f"--prompt-tokens + --new-tokens must fit seq_len={cfg.seq_len}")
    if args.prefill_tokens >= cfg.seq_len:
        raise SystemExit(f"--prefill-tokens must be below seq_len={cfg.seq_len}")
    hf = llama_twin(trained.model)
    engine = Engine(trained, max_batch=max(args.batches))
    workdir = tempfile.TemporaryDirectory(prefix="bench-generate-")
    llms = {f"llama_cpp_{d}": llama_cpp_model(trained, Path(workdir.name), threads, d)
            for d in args.llama_cpp_dtypes} if with_llama else {}
    gen = torch.Generator().manual_seed(1)
    prompts = torch.randint(0, cfg.vocab_size, (max(args.batches), args.prompt_tokens), generator=gen)
    long_prompt = torch.randint(0, cfg.vocab_size, (1, max(args.prefill_tokens, 1)), generator=gen)
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

    def llama(llm):
        def decode(b: int) -> list[list[int]]:
            assert b == 1, "llama-cpp-python decodes one sequence"
            llm.reset()  # no prompt reuse from the previous round: the prefill is timed too
            return [list(itertools.islice(llm.generate(prompts[0].tolist(), top_k=1, temp=0.0,
                                                       repeat_penalty=1.0), n))]
        return decode

    at_start = machine()
    print(f"model: {trained.model.num_parameters():,} parameters, vocab {cfg.vocab_size}, "
          f"{'run ' + args.run if args.run else f'random {args.size}-shaped weights'}; torch "
          f"{torch.__version__}, {threads} threads; {machine_line(at_start)}"
          + (f"; llama-cpp-python {__import__('llama_cpp').__version__}, {threads} threads, "
             f"GGUF {', '.join(args.llama_cpp_dtypes)} (KV cache f32 with f32 weights, else f16)"
             if llms else "; llama.cpp: not run"))
    figures = {}
    for b in args.batches:
        sides = {"ours": ours, "hf": theirs}
        if b == 1:
            sides.update({name: llama(llm) for name, llm in llms.items()})
        first = {name: fn(b) for name, fn in sides.items()}  # warm-up, and outputs
        agree = {name: [first_difference(o, t) for o, t in zip(first["ours"], ids)]
                 for name, ids in first.items() if name != "ours"}
        samples = interleaved({name: partial(fn, b) for name, fn in sides.items()}, args.rounds)
        rates = per_wall(samples, b * n)
        med = {name: statistics.median(v) for name, v in rates.items()}
        fig = {"hf_tokens_per_s": med["hf"], "ours_tokens_per_s": med["ours"],
               "ratio": med["ours"] / med["hf"],
               "paired_ratio_median": paired_ratio(rates["ours"], rates["hf"]),
               "hf_rounds": rates["hf"], "ours_rounds": rates["ours"],
               "identical_leading_tokens": agree["hf"],
               "load_at_start": {name: [s.load_at_start for s in ss] for name, ss in samples.items()}}
        line = (f"batch {b}: HF {med['hf']:,.0f} tokens/s ({min(rates['hf']):,.0f}-{max(rates['hf']):,.0f}), "
                f"ours {med['ours']:,.0f} tokens/s ({min(rates['ours']):,.0f}-{max(rates['ours']):,.0f}), "
                f"ours/HF {fig['ratio']:.2f}x (paired median {fig['paired_ratio_median']:.2f}x); "
                f"greedy tokens identical for the first {min(agree['hf'])} of {n} (per sequence: {agree['hf']})")
        for name in sides:
            if name.startswith("llama_cpp"):
                fig.update({f"{name}_tokens_per_s": med[name], f"{name}_rounds": rates[name],
                            f"ours_over_{name}": med["ours"] / med[name],
                            f"{name}_identical_leading_tokens": agree[name]})
                line += (f"\n         llama.cpp {name.removeprefix('llama_cpp_')} {med[name]:,.0f} tokens/s "
                         f"({min(rates[name]):,.0f}-{max(rates[name]):,.0f}), "
                         f"ours/llama.cpp {med['ours'] / med[name]:.2f}x; greedy tokens identical "
                         f"for the first {agree[name][0]} of {n}")
        figures[f"batch_{b}"] = fig
        print(line)

    if args.prefill_tokens:
        p = args.prefill_tokens
        ids = long_prompt[0].tolist()

        def ours_prefill() -> None:
            engine.generate([GenerationRequest(prompt_ids=ids, max_new_tokens=1, temperature=0,
                                               stop_token_ids=[])])

        def hf_prefill() -> None:
            with torch.inference_mode():
                hf(input_ids=long_prompt, logits_to_keep=1)

        def llama_prefill(llm):
            def prefill() -> None:
                llm.reset()
                llm.eval(ids)
            return prefill

        sides = {"ours": ours_prefill, "hf": hf_prefill}
        sides.update({name: llama_prefill(llm) for name, llm in llms.items()})
        for fn in sides.values():
            fn()  # warm-up
        rates = per_wall(interleaved(sides, args.rounds), p)
        med = {name: statistics.median(v) for name, v in rates.items()}
        figures["prefill"] = {"prompt_tokens": p, **{f"{k}_tokens_per_s": v for k, v in med.items()},
                              **{f"{k}_rounds": v for k, v in rates.items()}}
        print(f"prompt processing, {p} tokens: " + ", ".join(
            f"{name.replace('llama_cpp_', 'llama.cpp ').replace('hf', 'HF')} {med[name]:,.0f} tokens/s "
            f"({min(rates[name]):,.0f}-{max(rates[name]):,.0f})" for name in sides))
    for llm in llms.values():
        llm.close()
    workdir.cleanup()
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                         "machine": at_start, "figures": figures}, indent=2))


if __name__ == "__main__":
    main()
