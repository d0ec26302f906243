"""The tokenize stage against raw ``tokenizers``, same text, same tokenizer.

Why: issue 11 asked the encode stage (parquet shards to token files on disk) to
run at least 0.9x the speed of ``tokenizers.Tokenizer.encode_batch`` on the same
strings already in memory, with a peak RSS that stays flat as the corpus grows;
issue 30 asks it to encode with tiktoken on the same merges (ids identical) at
>= 4x the stage as it was and >= 3x raw ``encode_batch_fast``, per CPU-second and
wall; and the compression of the GPT-4 split against the GPT-2 split.

Corpus: demo-like, built offline from this machine as ``configs/demo.yaml`` builds
it (the interpreter's standard library ``.py`` files up to 8 MB, the installed
packages' METADATA/LICENSE/README files up to 3 MB), written directly as the data
stage's shards (96% train, 4% val, seeded), so only the tokenizer stages are timed.

Measured with the shared harness (``harness.py``: interleaved repeats, wall and
CPU-seconds, ``VmHWM`` of a fresh process tree, machine and load with each figure).

- **speed**: a BPE at vocab 8192 (GPT-4 split) is trained once; then, interleaved
  and twice each: ``run_tokenize_stage`` on the run (reads the parquet shards,
  encodes, writes ``tokens/``) with its default encoder (tiktoken on the run's
  merges) and with ``encoder="tokenizers"`` (the stage as it was before issue 30);
  raw ``Tokenizer.encode_batch`` and ``encode_batch_fast`` (no offsets) on the same
  texts held in a Python list; and raw tiktoken on them (``TextEncoder``, one thread
  per core). All use every core. MB/s = UTF-8 MB of text / wall seconds; MB per
  CPU-second (the process's threads and its children), steadier on a shared machine.
- **RSS**: ``run_tokenize_stage`` in a fresh subprocess on the 1x corpus and on a
  10x corpus (each document repeated 10 times, each copy with its own first line
  and a per-copy word swap): peak RSS (``VmHWM``) of the process and of each pool
  worker, in the inline path (1x) and with the process pool (1x forced, 10x
  by default).
- **compression**: held-out bytes per token (``fmforge.tokenizer.evaluate``) of a
  GPT-4-split and a GPT-2-split BPE at vocab 8192, both trained on the same train split.

    python benchmarks/bench_tokenize.py            # about 4-6 minutes on 2 busy cores
    python benchmarks/bench_tokenize.py --skip-rss --json /tmp/bench_tokenize.json
    python benchmarks/bench_tokenize.py --quick    # 1.5 MB, vocab 1024: that it runs, not figures
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import sysconfig
import tempfile
from pathlib import Path

from harness import best_rates, hwm_mb, interleaved, load, machine, measure, report_root_hwm, run_tree

STDLIB_MB, DOCS_MB = 8.0, 3.0


def demo_like_texts(seed: int = 0, stdlib_mb: float = STDLIB_MB, docs_mb: float = DOCS_MB) -> list[tuple[str, str]]:
    """(source, text) pairs from the same places the demo config reads."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    site = Path(sysconfig.get_paths()["purelib"])
    skip = ("site-packages", "/test/", "/tests/", "idlelib", "lib2to3", "__pycache__")
    code = sorted(p for p in stdlib.rglob("*.py") if not any(s in str(p) for s in skip))
    docs = sorted({*site.glob("*.dist-info/METADATA"), *site.glob("*.dist-info/LICENSE*"),
                   *site.glob("*.dist-info/licenses/**/*"), *site.glob("*/README*")})
    docs = [p for p in docs if p.is_file() and "fmforge" not in p.name and "__editable__" not in str(p)]
    out = []
    for source, files, cap in (("stdlib-code", code, stdlib_mb), ("package-docs", docs, docs_mb)):
        total = 0
        for p in files:
            try:
                text = p.read_text(encoding="utf-8")
            except (UnicodeDecodeError, OSError):
                continue
            if len(text) < 64:
                continue
            n = len(text.encode())
            if total + n > cap * 1e6:
                break
            total += n
            out.append((source, text))
    random.Random(seed).shuffle(out)
    return out


def perturbed(texts: list[tuple[str, str]], copies: int) -> list[tuple[str, str]]:
    """Each document ``copies`` times, each copy distinct (first line, a swapped word)."""
    out = []
    for k in range(copies):
        for i, (source, text) in enumerate(texts):
            body = text if k == 0 else text.replace(" the ", f" the{k} ", 3)
            out.append((source, f"# copy {k} of document {i}\n{body}"))
    return out


def write_run(root: Path, texts: list[tuple[str, str]], vocab: int, split: str = "gpt4"):
    """A run directory whose data stage is done: shards of ``texts`` and a data card."""
    from fmforge.config import config_from_dict
    from fmforge.data.shards import write_shards
    from fmforge.rundir import RunDir

    raw = {"name": root.name, "out_dir": str(root), "seed": 7,
           "data": {"sources": [{"name": "stdlib-code", "paths": ["unused"]},
                                {"name": "package-docs", "paths": ["unused"]}]},
           "tokenizer": {"vocab_size": vocab, "split": split},
           "model": {"d_model": 64, "n_layers": 1, "n_heads": 2, "seq_len": 256}}
    cfg = config_from_dict(raw)
    run = RunDir(root)
    run.data.mkdir(parents=True, exist_ok=True)
    rng = random.Random(1)
    rows = {"train": [], "val": []}
    for i, (source, text) in enumerate(texts):
        rows["val" if rng.random() < 0.04 else "train"].append((f"d{i}", text, source))
    for s, r in rows.items():
        write_shards(run.data, s, r, 50_000)
    card = {"sources": {"stdlib-code": {}, "package-docs": {}},
            "splits": {s: {"documents": len(r), "bytes": sum(len(t.encode()) for _, t, _ in r)}
                       for s, r in rows.items()}}
    (run.data / "data_card.json").write_text(json.dumps(card))
    (run.root / "config.yaml").write_text(cfg.to_yaml())
    return cfg, run


def train(cfg, run) -> float:
    from fmforge.tokenizer.train import run_tokenizer_stage

    return measure(lambda: run_tokenizer_stage(cfg, run)).wall_s


def bench_speed(cfg, run, repeats: int = 2) -> dict:
    import shutil

    from fmforge.data.shards import iter_split_texts
    from fmforge.tokenizer.encode import run_tokenize_stage
    from fmforge.tokenizer.fast_encode import TextEncoder, available_cores
    from fmforge.tokenizer.load import load_tokenizer

    texts = [t for s in ("train", "val") for t in iter_split_texts(run.data, s)]
    mb = sum(len(t.encode()) for t in texts) / 1e6
    tok = load_tokenizer(run, raw_text=True)
    fast = TextEncoder(tok, threads=available_cores())
    assert fast.name == "tiktoken", fast.why
    cases = {
        "stage": lambda: run_tokenize_stage(cfg, run),
        "stage_tokenizers": lambda: run_tokenize_stage(cfg, run, encoder="tokenizers"),
        "encode_batch": lambda: tok.encode_batch(texts, add_special_tokens=False),
        "encode_batch_fast": lambda: tok.encode_batch_fast(texts, add_special_tokens=False),
        "tiktoken_raw": lambda: fast.encode_arrays(texts),
    }
    samples = interleaved(cases, repeats, before=lambda name: shutil.rmtree(run.tokens, ignore_errors=True))
    rates = best_rates(samples, mb)
    meta = json.loads((run.tokens / "meta.json").read_text())  # the last run's
    out = {"mb": round(mb, 2), "threads": available_cores(), "rates": rates}

    def ratio(a: str, b: str, key: str) -> float:
        return round(rates[a][key] / rates[b][key], 2)

    for key, label in (("best_per_cpu_s", "per_cpu_s"), ("best_per_s", "wall")):
        out[f"stage_vs_stage_tokenizers_{label}"] = ratio("stage", "stage_tokenizers", key)
        out[f"stage_vs_encode_batch_fast_{label}"] = ratio("stage", "encode_batch_fast", key)
        out[f"stage_vs_encode_batch_{label}"] = ratio("stage", "encode_batch", key)
        out[f"tiktoken_raw_vs_encode_batch_fast_{label}"] = ratio("tiktoken_raw", "encode_batch_fast", key)
    out["last_stage_encoder"] = meta["encoder"]
    return out


def one_core_child(run_root: str) -> None:
    """The speed cases again in a process pinned to one core (so tokenizers' Rust
    pool and the stage's tiktoken threads are one thread each): per-core rates."""
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    from fmforge.config import load_config
    from fmforge.rundir import RunDir

    run = RunDir(run_root)
    print(json.dumps(bench_speed(load_config(run.config), run, int(os.environ.get("BENCH_REPEATS", "2")))))


def stage_child(run_root: str, encoder: str) -> None:
    """In a fresh process: the tokenize stage with ``encoder``, as `fmforge tokenize` runs it."""
    from fmforge.config import load_config
    from fmforge.rundir import RunDir
    from fmforge.tokenizer.encode import run_tokenize_stage

    run = RunDir(run_root)
    run_tokenize_stage(load_config(run.config), run, encoder=encoder)


def bench_stage_at_scale(run, repeats: int) -> dict:
    """The stage on the 10x corpus (above the inline size: the process pool, one
    thread per worker), tiktoken against tokenizers, each run a fresh process tree
    whose workers' CPU time is counted (the harness's subreaper)."""
    import shutil

    card = run.read_data_card()["splits"]
    mb = (card["train"]["bytes"] + card["val"]["bytes"]) / 1e6
    env = {**os.environ, "FMFORGE_NO_PROGRESS": "1"}
    cases = {enc: (lambda enc=enc: run_tree([sys.executable, __file__, "--stage-child", str(run.root), enc],
                                            env=env, reap_orphans=True))
             for enc in ("tiktoken", "tokenizers")}
    samples = interleaved(cases, repeats, before=lambda name: shutil.rmtree(run.tokens, ignore_errors=True))
    rates = best_rates(samples, mb)
    out = {"mb": round(mb, 1), "rates": rates}
    for key, label in (("best_per_cpu_s", "per_cpu_s"), ("best_per_s", "wall")):
        out[f"stage_vs_stage_tokenizers_{label}"] = round(rates["tiktoken"][key] / rates["tokenizers"][key], 2)
    return out


def rss_child(run_root: str, pool: bool) -> None:
    """In a fresh process: the tokenize stage (the parent reads the tree's peaks)."""
    from fmforge.config import load_config
    from fmforge.rundir import RunDir
    from fmforge.tokenizer import encode

    if pool:
        encode.INLINE_BELOW_BYTES = 0
    run = RunDir(run_root)
    cfg = load_config(run.config)
    encode.run_tokenize_stage(cfg, run)
    print(json.dumps({"self_hwm_mb": hwm_mb()}))


def measure_rss(run, pool: bool) -> dict:
    import shutil

    shutil.rmtree(run.tokens, ignore_errors=True)
    out, peak = run_tree([sys.executable, __file__, "--rss-child", str(run.root)] + (["--pool"] if pool else []),
                         env={**os.environ, "FMFORGE_NO_PROGRESS": "1"})
    peak = report_root_hwm(out, peak)
    return {"self_mb": round(peak.root_mb, 1), "workers": len(peak.children),
            "largest_worker_mb": round(peak.largest_child_mb, 1), "self_plus_workers_mb": round(peak.hwm_sum_mb, 1),
            "rss_sum_peak_mb": round(peak.rss_sum_peak_mb, 1), "seconds": round(peak.wall_s, 1), "load": load()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--skip-rss", action="store_true")
    ap.add_argument("--skip-split", action="store_true")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--skip-one-core", action="store_true")
    ap.add_argument("--repeats", type=int, default=2, help="interleaved rounds of each case (best is kept)")
    ap.add_argument("--quick", action="store_true",
                    help="a 1.5 MB corpus and vocab 1024: checks the script end to end; the figures mean little")
    ap.add_argument("--rss-child")
    ap.add_argument("--pool", action="store_true")
    ap.add_argument("--one-core-child")
    ap.add_argument("--stage-child", nargs=2, metavar=("RUN", "ENCODER"))
    ap.add_argument("--scale-speed", action="store_true",
                    help="also time the stage on the 10x corpus (process pool), tiktoken against tokenizers")
    args = ap.parse_args()
    if args.rss_child:
        rss_child(args.rss_child, args.pool)
        return
    if args.stage_child:
        stage_child(*args.stage_child)
        return
    if args.one_core_child:
        one_core_child(args.one_core_child)
        return
    os.environ.setdefault("FMFORGE_NO_PROGRESS", "1")
    result: dict = {"machine": machine()}
    if args.quick:
        args.vocab = min(args.vocab, 1024)
    texts = demo_like_texts(stdlib_mb=1.0, docs_mb=0.5) if args.quick else demo_like_texts()
    with tempfile.TemporaryDirectory(prefix="bench_tokenize-") as tmp:
        cfg, run = write_run(Path(tmp) / "gpt4", texts, args.vocab, "gpt4")
        result["train_seconds_gpt4"] = round(train(cfg, run), 1)
        result["speed"] = bench_speed(cfg, run, args.repeats)
        print("speed:", json.dumps(result["speed"]), flush=True)
        if not args.skip_one_core and hasattr(os, "sched_setaffinity"):
            out, _ = run_tree([sys.executable, __file__, "--one-core-child", str(run.root)],
                              env={**os.environ, "FMFORGE_NO_PROGRESS": "1", "BENCH_REPEATS": str(args.repeats)})
            result["speed_one_core"] = json.loads(out.strip().splitlines()[-1])
            print("speed on one core:", json.dumps(result["speed_one_core"]), flush=True)
        if not args.skip_split:
            from fmforge.tokenizer.evaluate import evaluate_tokenizers

            cfg2, run2 = write_run(Path(tmp) / "gpt2", texts, args.vocab, "gpt2")
            result["train_seconds_gpt2"] = round(train(cfg2, run2), 1)
            ev = evaluate_tokenizers(run, compare=run2.root, write=False)
            result["compression"] = {
                split: {"bytes_per_token": t["bytes_per_token"],
                        "per_source": {s: v["bytes_per_token"] for s, v in t["per_source"].items()},
                        "round_trip_exact": t["round_trip_exact"], "vocab_usage": t["vocab_usage"]}
                for split, t in zip(("gpt4", "gpt2"), ev["tokenizers"])}
            result["compression"]["gpt4_over_gpt2"] = round(
                ev["tokenizers"][0]["bytes_per_token"] / ev["tokenizers"][1]["bytes_per_token"], 4)
            print("compression:", json.dumps(result["compression"]), flush=True)
        big = None
        if args.scale_speed or not args.skip_rss:
            import shutil

            big_cfg, big = write_run(Path(tmp) / "x10", perturbed(texts, 10), args.vocab, "gpt4")
            shutil.copytree(run.tokenizer, big.tokenizer)
        if args.scale_speed:
            result["speed_10x"] = bench_stage_at_scale(big, args.repeats)
            print("speed 10x:", json.dumps(result["speed_10x"]), flush=True)
        if not args.skip_rss:
            result["rss"] = {}
            for name, r, pool in (("1x", run, False), ("1x", run, True), ("10x", big, True)):
                key = f"{name} {'pool' if pool else 'inline'}"
                card = r.read_data_card()["splits"]
                result["rss"][key] = {**measure_rss(r, pool),
                                      "text_mb": round((card["train"]["bytes"] + card["val"]["bytes"]) / 1e6, 1)}
                print("rss", key, json.dumps(result["rss"][key]), flush=True)
    result["load_average_at_end"] = load()
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
