"""How far a proxy experiment (`fmforge datamix`) can be trusted (issue 31, "How far to trust it").

On each corpus, `fmforge datamix` ranks the variants (the mixture without each
source, and one weight changed) with proxy models at two sizes, two seeds each;
then the winner, the runner-up and the clearest loser of the larger proxies (here,
with ``big_all``, every variant: more pairs to compare) are trained again at
``--times`` (4) x that proxy's compute, a larger model on more tokens, two seeds
each, scored on the same target. Reported per corpus and proxy
size: does the proxies' order hold at 4x, the pairwise agreement (the share of
the pairs of variants trained at 4x that the proxies ordered as the 4x models
did), how many of those pairs the proxies called (a difference beyond their seed
noise's threshold) and called right, the smallest difference called right and
the largest called wrong; and the two proxy sizes' agreement on every pair of
variants.

The corpora, both from this machine's own files, nothing downloaded:

- ``demo``: ``configs/demo.yaml`` itself (the Python standard library and the
  documentation installed packages carry; its tokenizer of 8,192), with a small
  training budget (micro-batches of 4 x 256 tokens; the held-out target capped at
  ``--eval-tokens`` per source). Variants: without each source, and
  ``package-docs`` at weight 1 instead of 2.
- ``sysdocs``: four sources of another kind, a config this script writes
  (``RUN/sysdocs.yaml``) with a tokenizer of 2,048: C headers (``/usr/include``:
  the top level, ``linux/`` and Python's), man pages as troff source and Debian
  changelogs (both gzipped on disk: unpacked once into ``--corpus-dir``), and the
  packages' copyright files and licence texts (``/usr/share/doc/*/copyright``,
  ``/usr/share/common-licenses``). Each capped at ``--source-mb``. Variants: without
  each source, and ``licences`` at weight 0.5.

    python benchmarks/bench_datamix.py [--corpora demo,sysdocs] [--json OUT]

The base runs are ``runs/bench-dmx-<corpus>`` (data, tokenizer, tokens). Every
experiment is the command a user runs, one process each: the proxies
``fmforge datamix CONFIG --ablate-sources --try ... --size S --tokens-per-param R``,
the big models the same with ``--without NAME`` / ``--try`` for the chosen variants
only (the base is always one). Each experiment's ``datamix.json`` is kept as
``RUN/bench/<size>.json``; at the end the larger proxies' command runs again (all
cached), so ``RUN/datamix/datamix.json``, what the run report shows, is theirs.
Proxies are cached per size: a rerun trains nothing already trained.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import shutil
import subprocess
import sys
import time
from itertools import combinations
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(HERE))

from harness import machine, measure  # noqa: E402

FMFORGE = [sys.executable, "-m", "fmforge"]

# Proxies at two sizes, the same tokens per non-embedding parameter; the 4x model
# is --times the larger proxy's training FLOPs.
CORPORA = {
    "demo": {
        "overrides": ["train.micro_batch_size=4", "eval.batch_size=16"],
        "tries": ["data.sources.1.weight=1"],
        "sizes": ["32x1", "32x2"], "big": "64x2", "tokens_per_param": 2.0,
        "big_all": True,  # every variant at 4x too (6 pairs, not 3)
    },
    "sysdocs": {
        "overrides": ["train.micro_batch_size=4", "eval.batch_size=16"],
        "tries": ["data.sources.2.weight=0.5"],
        # both sizes on the same 66,560 tokens (a machine shared 4 ways could not afford 2x for 32x2)
        "sizes": ["32x1", "32x2"], "big": "64x2", "tokens_per_param": {"32x1": 4.0, "32x2": 2.0},
        "big_all": True,  # every variant at 4x too (15 pairs, not 3)
    },
}


# --------------------------------------------------------------------------- the second corpus

def _unpack(pattern: str, out: Path, limit: int) -> int:
    """The gzipped files of ``pattern`` (in name order) unpacked into ``out`` until
    ``limit`` bytes of text; their bytes."""
    if (out / ".done").is_file():
        return int((out / ".done").read_text())
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    total = 0
    for i, path in enumerate(sorted(Path("/").glob(pattern.lstrip("/")))):
        try:
            text = gzip.decompress(path.read_bytes())
        except (OSError, EOFError):
            continue  # not gzip after all, or damaged: not this corpus's business
        if b"\0" in text[:8192]:
            continue
        name = path.name[:-3] if path.name.endswith(".gz") else path.name
        (out / f"{i:05d}-{path.parent.name}-{name}.txt").write_bytes(text)
        total += len(text)
        if total >= limit:
            break
    (out / ".done").write_text(str(total))
    return total


def sysdocs_config(corpus_dir: Path, run_root: Path, source_mb: float) -> Path:
    """The second corpus's config, written into the run directory."""
    import yaml

    limit = int(source_mb * 1e6)
    man = corpus_dir / "man-pages"
    changelogs = corpus_dir / "changelogs"
    _unpack("/usr/share/man/man1/*.gz", man, 3 * limit)
    _unpack("/usr/share/doc/*/changelog.Debian.gz", changelogs, 6 * limit)  # many packages share one
    raw = {
        "name": run_root.name, "out_dir": str(run_root), "seed": 1337,
        "data": {"sources": [
            {"name": "c-headers", "max_bytes": limit,
             "paths": ["/usr/include/*.h", "/usr/include/linux/*.h", "/usr/include/python3*/*.h"]},
            {"name": "man-pages", "max_bytes": limit, "paths": [str(man / "*.txt")]},
            {"name": "licences", "max_bytes": limit,
             "paths": ["/usr/share/doc/*/copyright", "/usr/share/common-licenses/*"]},
            {"name": "changelogs", "max_bytes": limit, "paths": [str(changelogs / "*.txt")]},
        ], "min_chars": 64, "val_fraction": 0.1, "dedup": "exact"},
        "tokenizer": {"vocab_size": 2048},
        "model": {"d_model": 96, "n_layers": 3, "n_heads": 3, "n_kv_heads": 3, "seq_len": 256,
                  "tie_embeddings": True},
        "train": {"max_steps": 1000, "dtype": "float32", "micro_batch_size": 16, "lr": 3.0e-3,
                  "warmup_steps": 30, "min_lr_ratio": 0.1, "weight_decay": 0.1, "grad_clip": 1.0},
    }
    run_root.mkdir(parents=True, exist_ok=True)
    path = run_root.parent / f"{run_root.name}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


# --------------------------------------------------------------------------- running

def fmforge(*args: str) -> str:
    done = subprocess.run([*FMFORGE, *args], cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"fmforge {' '.join(args[:3])} ... failed ({done.returncode}):\n"
                           f"{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    return done.stdout


def non_embedding(cfg, size: str) -> int:
    from fmforge.ladder.run import non_embedding_params, parse_sizes, rung_model

    return non_embedding_params(rung_model(cfg.resolved_model(), parse_sizes(size)[0]))


def train_flops(cfg, size: str, tokens: float) -> float:
    from fmforge.ladder.run import parse_sizes, rung_model
    from fmforge.model.counting import flops_per_token

    model = rung_model(cfg.resolved_model(), parse_sizes(size)[0])
    return flops_per_token(model) * tokens


def run_corpus(name: str, spec: dict, args: argparse.Namespace) -> dict:
    from fmforge.config import load_config

    run_root = ROOT / "runs" / f"bench-dmx-{name}{args.suffix}"
    if name == "demo":
        config = Path("configs") / "demo.yaml"
        overrides = [f"name={run_root.name}", *spec["overrides"]]
    else:
        config = sysdocs_config(Path(args.corpus_dir), run_root, args.source_mb).relative_to(ROOT)
        overrides = list(spec["overrides"])
    overrides.append(f"eval.max_tokens={args.eval_tokens}")
    cfg = load_config(ROOT / config, overrides)
    out = run_root / "bench"
    out.mkdir(parents=True, exist_ok=True)
    report: dict = {"corpus": name, "config": str(config), "overrides": overrides, "machine_at_start": machine(),
                    "seconds": {}, "commands": {}}

    t = measure(lambda: [fmforge(stage, str(config), *overrides) for stage in ("data", "tokenizer", "tokenize")])
    report["seconds"]["base run"] = {"wall": round(t.wall_s, 1), "cpu": round(t.cpu_s, 1)}
    meta = json.loads((run_root / "tokens" / "meta.json").read_text())
    card = json.loads((run_root / "data" / "data_card.json").read_text())
    sources = card["sources"].values() if isinstance(card["sources"], dict) else card["sources"]
    report["sources"] = {s["name"]: {"train_bytes": s.get("train_bytes"), "val_bytes": s.get("val_bytes"),
                                     "train_documents": s.get("train_documents"),
                                     "train_tokens": meta["per_source"]["train"].get(s["name"], {}).get("tokens")}
                         for s in sources}

    def experiment(size: str, tokens_per_param: float, flags: list[str]) -> dict:
        cmd = ["datamix", str(config), *overrides, *flags, "--size", size, "--tokens-per-param",
               f"{tokens_per_param:.6g}", "--seeds", str(args.seeds)]
        t = measure(lambda: fmforge(*cmd))
        shutil.copy(run_root / "datamix" / "datamix.json", out / f"{size}.json")
        report["seconds"][size] = {"wall": round(t.wall_s, 1), "cpu": round(t.cpu_s, 1)}
        report["commands"][size] = "fmforge " + " ".join(cmd)
        return json.loads((out / f"{size}.json").read_text())

    every = ["--ablate-sources", *(a for t_ in spec["tries"] for a in ("--try", t_))]
    tpp = spec["tokens_per_param"]
    tpp = {size: (tpp[size] if isinstance(tpp, dict) else tpp) * args.scale for size in spec["sizes"]}
    proxies = {size: experiment(size, tpp[size], every) for size in spec["sizes"]}
    large = spec["sizes"][-1]
    ranked = sorted(proxies[large]["variants"], key=lambda v: v["bits_per_byte"])
    chosen = {"winner": ranked[0]["name"], "runner-up": ranked[1]["name"], "loser": ranked[-1]["name"]}
    report["chosen"] = chosen

    # the big models: the larger proxy's training FLOPs times --times
    report["flops"] = {size: train_flops(cfg, size, p["proxy"]["tokens"]) for size, p in proxies.items()}
    big_tokens = report["flops"][large] * args.times / train_flops(cfg, spec["big"], 1.0)
    picked = [v for v in proxies[large]["variants"] if v["name"] in chosen.values() and v["kind"] != "base"]
    big = experiment(spec["big"], big_tokens / non_embedding(cfg, spec["big"]),
                     every if spec.get("big_all") else variant_flags(picked))
    report["flops"][spec["big"]] = train_flops(cfg, spec["big"], big["proxy"]["tokens"])
    # the run report shows the larger proxies' whole experiment: its command again (every proxy cached)
    fmforge(*report["commands"][large].split()[1:])

    report["proxies"] = {size: summary(p) for size, p in proxies.items()}
    report["big"] = summary(big)
    report["agreement"] = {size: agreement(p, big) for size, p in proxies.items()}
    report["sizes_agree"] = agreement(proxies[spec["sizes"][0]], proxies[large])
    report["machine_at_end"] = machine()
    return report


def variant_flags(variants: list[dict]) -> list[str]:
    """The command's options that make exactly these variants (besides the base)."""
    flags = []
    for v in variants:
        if v["kind"] == "ablate":
            flags += ["--without", v["removed_source"]]
        else:
            flags += [a for o in v["overrides"] for a in ("--try", o)]
    return flags


# --------------------------------------------------------------------------- what is compared

def summary(result: dict) -> dict:
    return {"proxy": result["proxy"]["name"], "non_embedding_params": result["proxy"]["non_embedding_params"],
            "tokens": result["proxy"]["tokens"], "steps": result["proxy"]["steps"],
            "seed_sd": result["noise"]["seed_sd"], "threshold": result["noise"]["threshold"],
            "best": result["best"],
            "variants": {v["name"]: {"bits_per_byte": round(v["bits_per_byte"], 5),
                                     "per_seed": [round(r["bits_per_byte"], 5) for r in v["runs"]],
                                     "delta": None if v["delta"] is None else round(v["delta"], 5),
                                     "verdict": v["verdict"]} for v in result["variants"]},
            "sources_worth": {w["source"]: {"effect": round(w["effect"], 5), "verdict": w["verdict"],
                                            "bytes": w["bytes"], "tokens": w["tokens"]}
                              for w in result["sources_worth"]}}


def agreement(proxy: dict, big: dict) -> dict:
    """How the proxies' order of the variants both experiments trained compares with
    ``big``'s: every pair, the proxies' difference (first minus second, bits/byte),
    the big models' difference, whether they have the same sign, and whether each
    side's difference is beyond its own threshold (called)."""
    p = {v["name"]: v["bits_per_byte"] for v in proxy["variants"]}
    b = {v["name"]: v["bits_per_byte"] for v in big["variants"]}
    names = [n for n in b if n in p]
    tp, tb = proxy["noise"]["threshold"], big["noise"]["threshold"]
    pairs = []
    for x, y in combinations(names, 2):
        dp, db = p[x] - p[y], b[x] - b[y]
        pairs.append({"pair": [x, y], "proxy_delta": round(dp, 5), "big_delta": round(db, 5),
                      "same_order": (dp > 0) == (db > 0), "proxy_called": abs(dp) > tp, "big_called": abs(db) > tb})
    called = [q for q in pairs if q["proxy_called"]]
    right = [q for q in called if q["same_order"]]
    wrong = [q for q in pairs if not q["same_order"]]
    order_p, order_b = sorted(names, key=p.get), sorted(names, key=b.get)
    return {"order_proxy": order_p, "order_big": order_b, "order_holds": order_p == order_b,
            "pairs": len(pairs), "same_order": sum(q["same_order"] for q in pairs),
            "pairwise_agreement": round(sum(q["same_order"] for q in pairs) / len(pairs), 3) if pairs else None,
            "called": len(called), "called_right": len(right),
            "smallest_called_right": min((abs(q["proxy_delta"]) for q in right), default=None),
            "largest_wrong": max((abs(q["proxy_delta"]) for q in wrong), default=None),
            "proxy_threshold": round(tp, 5), "big_threshold": round(tb, 5), "pair_detail": pairs}


def print_report(r: dict) -> None:
    sizes = ", ".join(f"{k} {v['train_bytes']:,} B" for k, v in r["sources"].items())
    print(f"\n== {r['corpus']}: sources {sizes}")
    for size, s in [*r["proxies"].items(), (r["big"]["proxy"] + " (4x)", r["big"])]:
        print(f"-- {size}: {s['tokens']:,} tokens, seed sd {s['seed_sd']:.4f}, threshold {s['threshold']:.4f}, "
              f"best {s['best']}")
        for name, v in sorted(s["variants"].items(), key=lambda kv: kv[1]["bits_per_byte"]):
            print(f"   {name:28s} {v['bits_per_byte']:.4f}  {v['per_seed']}  {v['verdict']}")
    for size, a in r["agreement"].items():
        print(f"-- proxies {size} against 4x: order {'holds' if a['order_holds'] else 'does NOT hold'} "
              f"({' < '.join(a['order_proxy'])} vs {' < '.join(a['order_big'])}); pairwise {a['same_order']}/"
              f"{a['pairs']}; called {a['called']}, right {a['called_right']}; smallest called right "
              f"{a['smallest_called_right']}; largest wrong {a['largest_wrong']}")
    a = r["sizes_agree"]
    print(f"-- the two proxy sizes agree on {a['same_order']}/{a['pairs']} pairs of all variants")
    print(f"-- seconds: {r['seconds']}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpora", default="demo,sysdocs")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--scale", type=float, default=1.0, help="x each corpus's tokens per parameter (a smoke run: 0.1)")
    ap.add_argument("--suffix", default="", help="after the base runs' names (runs/bench-dmx-CORPUS...), to keep another budget's")
    ap.add_argument("--times", type=float, default=4.0, help="the big models' compute, x the larger proxy's")
    ap.add_argument("--eval-tokens", type=int, default=16384, help="eval.max_tokens: each source's target tokens")
    ap.add_argument("--source-mb", type=float, default=1.0, help="sysdocs: each source's max_bytes, MB")
    ap.add_argument("--corpus-dir", default=str(ROOT / "runs" / "bench-dmx-corpus"))
    ap.add_argument("--json", default=str(ROOT / "runs" / "bench_datamix.json"))
    args = ap.parse_args()
    reports = []
    t0 = time.perf_counter()
    for name in args.corpora.split(","):
        reports.append(run_corpus(name, CORPORA[name], args))
        print_report(reports[-1])
        Path(args.json).write_text(json.dumps({"corpora": reports, "args": vars(args)}, indent=1) + "\n")
    print(f"\ntotal {time.perf_counter() - t0:.0f} s; {args.json}")


if __name__ == "__main__":
    main()
