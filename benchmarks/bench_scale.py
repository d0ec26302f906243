"""The data stage and the tokenize stage at 1x, 10x and 100x the demo corpus: wall
time against input, and the memory of the process tree (issue 30, part 3).

Why: a user's corpus is tens of GB; the stages must take time in proportion to
the input and hold memory that does not grow with it. The goal: wall time linear
in the input, and at 100x (about 1.1 GB) at most 600 MB resident in the whole
process tree at any moment.

The corpus: the demo config's two sources (``bench_data.demo_files``: the
interpreter's standard library ``.py`` files up to 8 MB, the installed packages'
METADATA/LICENSE/README files up to 3 MB), written ``N`` times for ``Nx``. Copies
of the same documents would be near-duplicates, and MinHash would remove 99% of a
100x corpus (the tokenize half would not grow), so every copy is distinct but
statistically alike: copy ``k`` (``k >= 1``; copy 0 is the original) has its
ASCII letters put through a permutation of its own (the same on capitals), except
in the words the filters look for by name (Gopher's stop words, C4's policy,
``javascript`` and ``lorem ipsum`` phrases), which stay as written. Word lengths,
case, punctuation, lines and repetitions are unchanged, so the filters see the
same shapes; the words MinHash hashes differ, so a copy shares almost no shingle
with another. The kept fraction per size says whether that held.

The run, per size, each command in a fresh process tree (``harness.run_tree``,
under the subreaper so the CPU time of every process is counted):

1. ``fmforge data``: the demo config's ``data`` section, its sources pointed at the
   built corpus (no ``max_bytes``: the corpus is already capped), with
   ``filters.preset: web`` on every source and ``dedup: minhash``;
2. ``fmforge tokenizer``: adopts (``tokenizer.path``) the BPE trained once, before
   the timed runs, on the 1x corpus with the demo's tokenizer settings (vocab 8192):
   a tokenizer trains on a sample, so training it per size measures the sample, not
   the corpus. Timed and listed, but not part of "together";
3. ``fmforge tokenize``: the data stage's shards into token files.

``data.workers`` is left to fmforge (both cores above 32 MB, else in process)
unless ``--workers`` is given. Recorded per stage and together (data + tokenize):
wall seconds, CPU-seconds of the whole tree, the largest sum of ``VmRSS`` over
the tree at one moment, and the sum of every process's ``VmHWM`` (an upper bound:
the peaks need not coincide); with ``--trace``, every poll's RSS per process.

    python benchmarks/bench_scale.py                       # 1x, 10x, 100x: ~10-15 minutes on 2 cores
    python benchmarks/bench_scale.py --sizes 1 10 --json /tmp/scale.json --plot /tmp/scale.png
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import string
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(HERE))

from harness import machine, measure, run_tree  # noqa: E402

RSS_GOAL_MB = 600
TOGETHER = ("data", "tokenize")  # the "data stage plus tokenize"
CORPUS_VERSION = 1  # bump when the corpus builder changes, so a kept corpus is rebuilt

# -- the corpus -----------------------------------------------------------------------------


def keep_words() -> list[str]:
    """Words the filters test by name: a copy keeps them as written."""
    from fmforge.data.c4 import _POLICY
    from fmforge.data.gopher import STOP_WORDS

    return sorted({*STOP_WORDS, *(w for p in _POLICY for w in p.split()),
                   "lorem", "ipsum", "javascript", "edit", "citation", "needed"})


class Cipher:
    """Copy ``k``'s text: a seeded permutation of a-z (the same one on A-Z; ``k = 0``
    the identity) over the UTF-8 bytes, then every whole word that became the image
    of a word in ``keep`` (in any case) put back. Bytes >= 0x80 are untouched, so
    UTF-8 stays valid."""

    def __init__(self, k: int, keep: list[str]):
        self.k = k
        letters = string.ascii_lowercase
        perm = list(letters)
        if k:
            random.Random(f"bench_scale-{k}").shuffle(perm)
        fwd, inv = bytearray(range(256)), bytearray(range(256))
        for a, b in zip(letters, perm):
            for x, y in ((a, b), (a.upper(), b.upper())):
                fwd[ord(x)], inv[ord(y)] = ord(y), ord(x)
        self.fwd, self.inv = bytes(fwd), bytes(inv)
        images = sorted({w.encode().translate(self.fwd) for w in keep}, key=len, reverse=True)
        self.restore = re.compile(rb"(?<![A-Za-z0-9_])(?:" + b"|".join(map(re.escape, images))
                                  + rb")(?![A-Za-z0-9_])", re.IGNORECASE)

    def __call__(self, data: bytes) -> bytes:
        if self.k == 0:
            return data
        inv = self.inv
        return self.restore.sub(lambda m: m.group(0).translate(inv), data.translate(self.fwd))


def write_corpus(dest: Path, files: dict[str, list[Path]], copies: int) -> dict:
    """``copies`` distinct copies of every file under ``dest/SOURCE/KKK/``; reused
    when ``dest`` already holds the same (a ``corpus.json`` written last)."""
    stamp = dest / "corpus.json"
    want = {"version": CORPUS_VERSION, "copies": copies,
            "files": {s: [str(p) for p in ps] for s, ps in files.items()}}
    if stamp.is_file():
        have = json.loads(stamp.read_text())
        if {k: have.get(k) for k in want} == want:
            return have
    shutil.rmtree(dest, ignore_errors=True)
    keep = keep_words()
    total, n = 0, 0
    t = time.perf_counter()
    originals = {s: [p.read_bytes() for p in ps] for s, ps in files.items()}
    for k in range(copies):
        cipher = Cipher(k, keep)
        for source, paths in files.items():
            out_dir = dest / source / f"{k:03d}"
            out_dir.mkdir(parents=True, exist_ok=True)
            for i, (path, data) in enumerate(zip(paths, originals[source])):
                out = cipher(data)
                (out_dir / f"{i:05d}_{path.name}").write_bytes(out)
                total += len(out)
                n += 1
    info = {**want, "bytes": total, "n_files": n, "build_s": round(time.perf_counter() - t, 1)}
    stamp.write_text(json.dumps(info))
    return info


# -- the run --------------------------------------------------------------------------------


def run_config(corpus: Path, out: Path, tokenizer_dir: Path | None, workers: int | None,
               preset: str = "web") -> dict:
    """The demo config's data and tokenizer sections on the built corpus, with the
    filter ``preset`` (the web filters by default) on every source and MinHash dedup."""
    import yaml

    raw = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())
    data = dict(raw["data"])
    sources = []
    for s in data["sources"]:
        s = {k: v for k, v in s.items() if k not in ("paths", "exclude", "max_bytes")}
        sources.append({**s, "paths": [str(corpus / s["name"] / "**" / "*")]})
    data.update(sources=sources, dedup="minhash", filters={"preset": preset})
    data.pop("workers", None)
    if workers:
        data["workers"] = workers
    tokenizer = dict(raw.get("tokenizer") or {})
    if tokenizer_dir is not None:
        tokenizer["path"] = str(tokenizer_dir)
    return {"name": "bench-scale", "seed": raw.get("seed", 0), "out_dir": str(out), "data": data,
            "tokenizer": tokenizer}


def fmforge_cmd(stage: str, cfg_path: Path) -> list[str]:
    return [str(Path(sys.executable).with_name("fmforge")), stage, str(cfg_path)]


def tree_figures(peak, trace: list | None) -> dict:
    """A stage's peaks with the subreaper (the tree's root) left out; with a trace, the
    moment the tree held the most: the stage's own process and the others."""
    wrapper = peak.root_mb
    d = {"processes": len(peak.children), "largest_child_mb": round(peak.largest_child_mb, 1),
         "hwm_sum_mb": round(peak.hwm_sum_mb - wrapper, 1),
         "rss_at_once_mb": round(peak.rss_sum_peak_mb - wrapper, 1), "wrapper_mb": round(wrapper, 1)}
    if trace:
        pids: list[int] = []
        for _, seen in trace:
            pids += [p for p in seen if p not in pids]
        at, seen = max(trace, key=lambda e: sum(e[1].values()) - e[1].get(pids[0], 0.0))
        main = pids[1] if len(pids) > 1 else None
        d["at_peak"] = {"seconds": at, "stage_process_mb": seen.get(main, 0.0),
                        "others_mb": sorted((v for p, v in seen.items() if p not in (pids[0], main)), reverse=True)}
        d["trace"] = [[t, round(sum(v for p, v in s.items() if p != pids[0]), 1)] for t, s in trace]
    return d


def run_stage(stage: str, cfg_path: Path, env: dict, trace: bool) -> dict:
    polls: list | None = [] if trace else None
    box = {}

    def go():
        _, box["peak"] = run_tree(fmforge_cmd(stage, cfg_path), env=env, reap_orphans=True, trace=polls)

    s = measure(go)
    return {"wall_s": round(s.wall_s, 2), "cpu_s": round(s.cpu_s, 2), "load_at_start": s.load_at_start,
            **tree_figures(box["peak"], polls)}


def train_tokenizer(corpus: Path, tmp: Path, env: dict, workers: int | None) -> tuple[Path, dict]:
    """The BPE every size adopts: the data stage and the tokenizer stage on the 1x corpus
    with the demo's own filters (clean and length: the web filters leave too little
    of this corpus to train a vocabulary of 8192 on)."""
    out = tmp / "tokenizer-run"
    cfg_path = tmp / "tokenizer-run.yaml"
    cfg_path.write_text(json.dumps(run_config(corpus, out, None, workers, "none"), indent=2))
    for stage in ("data", "tokenizer"):
        run_tree(fmforge_cmd(stage, cfg_path), env=env)
    keep = tmp / "tokenizer"
    shutil.rmtree(keep, ignore_errors=True)
    shutil.copytree(out / "tokenizer", keep)
    shutil.rmtree(out, ignore_errors=True)
    return keep, {"vocab_size": len(json.loads((keep / "tokenizer.json").read_text())["model"]["vocab"])}


def outcome(out: Path) -> dict:
    """What the stages kept and made: the data card's totals and the token counts."""
    card = json.loads((out / "data" / "data_card.json").read_text())
    tot = card["totals"]
    meta = json.loads((out / "tokens" / "meta.json").read_text())
    return {
        "documents_read": tot["documents_read"], "bytes_read": tot["bytes_read"],
        "dropped_by_filters": tot["dropped_total"], "duplicates": tot["duplicates"],
        "kept_documents": tot["kept_documents"], "kept_bytes": tot["kept_bytes"],
        "kept_fraction_documents": round(tot["kept_documents"] / max(1, tot["documents_read"]), 4),
        "kept_fraction_bytes": round(tot["kept_bytes"] / max(1, tot["bytes_read"]), 4),
        "dropped_by_step": {k: v for k, v in tot["dropped"].items() if v},
        "tokenized_bytes": meta["train_bytes"] + meta["val_bytes"],
        "tokens": meta["train_tokens"] + meta["val_tokens"], "encoder": meta.get("encoder"),
        "data_tasks": card["tasks"], "data_workers": card["executor"]["workers"],
        "train_shards": len(card["splits"]["train"]["shards"]),
    }


def run_size(copies: int, corpus: Path, tokenizer_dir: Path, tmp: Path, env: dict, workers: int | None,
             preset: str, trace: bool) -> dict:
    out = tmp / f"run-x{copies}"
    shutil.rmtree(out, ignore_errors=True)
    cfg_path = tmp / f"run-x{copies}.yaml"
    cfg_path.write_text(json.dumps(run_config(corpus, out, tokenizer_dir, workers, preset), indent=2))
    stages = {}
    for stage in ("data", "tokenizer", "tokenize"):
        stages[stage] = r = run_stage(stage, cfg_path, env, trace)
        print(f"    {stage:<9} {r['wall_s']:7.1f} s wall {r['cpu_s']:7.1f} CPU-s  RSS at once "
              f"{r['rss_at_once_mb']:5.0f} MB, sum of VmHWM {r['hwm_sum_mb']:5.0f} MB over {r['processes']} "
              f"processes (largest {r['largest_child_mb']:.0f})"
              + (f"; at the peak: stage process {r['at_peak']['stage_process_mb']:.0f}, others "
                 f"{[round(x) for x in r['at_peak']['others_mb']]}" if "at_peak" in r else ""), flush=True)
    res = {"stages": stages, **outcome(out)}
    res["together"] = {
        "wall_s": round(sum(stages[s]["wall_s"] for s in TOGETHER), 2),
        "cpu_s": round(sum(stages[s]["cpu_s"] for s in TOGETHER), 2),
        # the stages run one after the other: the tree's peak is the larger stage's
        "rss_at_once_mb": max(stages[s]["rss_at_once_mb"] for s in TOGETHER),
        "hwm_sum_mb": max(stages[s]["hwm_sum_mb"] for s in TOGETHER),
    }
    shutil.rmtree(out, ignore_errors=True)
    return res


# -- the picture ----------------------------------------------------------------------------


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mb = [r["input_mb"] for r in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 5.2))
    colors = {"data": "C0", "tokenize": "C1", "together": "C2"}
    for key, label, style in (("data", "data stage", "o-"), ("tokenize", "tokenize stage", "s-"),
                              ("together", "together", "D-")):
        wall = [r["stages"][key]["wall_s"] if key != "together" else r["together"]["wall_s"] for r in rows]
        a.plot(mb, wall, style, color=colors[key], label=label)
    ref = rows[-1]["together"]["wall_s"] / mb[-1]  # through the largest size: start-up weighs on the small ones
    a.plot([mb[0], mb[-1]], [ref * mb[0], ref * mb[-1]], "k--", lw=1, label=f"linear through {rows[-1]['copies']}x")
    a.set_xscale("log")
    a.set_yscale("log")
    a.set_xlabel("input MB")
    a.set_ylabel("wall seconds")
    a.set_title("Wall time")
    for key, label, style in (("data", "data stage", "o-"), ("tokenize", "tokenize stage", "s-")):
        b.plot(mb, [r["stages"][key]["rss_at_once_mb"] for r in rows], style, color=colors[key],
               label=f"{label}, RSS at once")
        b.plot(mb, [r["stages"][key]["hwm_sum_mb"] for r in rows], style.replace("-", ":"), color=colors[key],
               mfc="none", label=f"{label}, sum of VmHWM")
    b.axhline(RSS_GOAL_MB, color="r", ls="--", lw=1, label=f"goal {RSS_GOAL_MB} MB")
    b.set_xscale("log")
    b.set_ylim(0, max(RSS_GOAL_MB * 1.25, *(r["together"]["hwm_sum_mb"] * 1.1 for r in rows)))
    b.set_xlabel("input MB")
    b.set_ylabel("MB of the process tree")
    b.set_title("Peak memory")
    for ax in (a, b):
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def plot_title(preset: str, rows: list[dict], m: dict) -> str:
    return (f"fmforge data (filters: {preset}, MinHash dedup) + tokenize, demo corpus {rows[0]['copies']}x-"
            f"{rows[-1]['copies']}x; {m['cpu']}, {m['cpus']} CPUs, {m['date']}, load average at the start "
            f"{m['load_average'][0]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1, 10, 100], help="copies of the demo corpus")
    ap.add_argument("--workers", type=int, default=None, help="data.workers (default: fmforge's choice)")
    ap.add_argument("--tmp", default=None, help="where to build the corpora and runs (default: a temp dir)")
    ap.add_argument("--corpus-dir", default=None,
                    help="keep the built corpora here and reuse them on the next run (they are ~1.1 GB at 100x)")
    ap.add_argument("--preset", default="web", choices=("web", "none", "prose", "code"),
                    help="data.filters.preset on every source (web: the issue's goal; none: the demo's own, "
                         "clean and length only, so nearly the whole corpus reaches the tokenize stage)")
    ap.add_argument("--src", default="",
                    help="run the stages from this source tree (PYTHONPATH), e.g. an older checkout's src/ "
                         "exported with `git archive`, to measure before and after a change")
    ap.add_argument("--trace", action="store_true", help="record each poll's RSS of the tree in the JSON")
    ap.add_argument("--json", metavar="PATH", help="write every figure to PATH as JSON")
    ap.add_argument("--plot", metavar="PATH", help="write the two curves to PATH (PNG)")
    ap.add_argument("--replot", metavar="JSON", help="only draw --plot from an earlier run's --json")
    args = ap.parse_args()
    if args.replot:
        old = json.loads(Path(args.replot).read_text())
        plot(old["sizes"], Path(args.plot), plot_title(old["args"]["preset"], old["sizes"], old["machine"]))
        return

    from bench_data import demo_files

    report: dict = {"machine": machine(), "args": vars(args)}
    m = report["machine"]
    print(f"{m['cpu']}, {m['cpus']} CPUs, load average {' '.join(map(str, m['load_average']))}", flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="bench_scale_", dir=args.tmp))
    corpus_root = Path(args.corpus_dir) if args.corpus_dir else tmp / "corpus"
    env = {**os.environ, "PYTHONPATH": args.src}
    try:
        files = demo_files()
        sizes = sorted(set(args.sizes) | {1})
        corpora = {}
        for n in sizes:
            t = time.perf_counter()
            corpora[n] = write_corpus(corpus_root / f"x{n}", files, n)
            print(f"corpus {n}x: {corpora[n]['bytes'] / 1e6:.1f} MB in {corpora[n]['n_files']} files "
                  f"({time.perf_counter() - t:.0f} s)", flush=True)
        t = time.perf_counter()
        tok_dir, tok_info = train_tokenizer(corpus_root / "x1", tmp, env, args.workers)
        report["tokenizer"] = {**tok_info, "trained_on": "1x", "seconds": round(time.perf_counter() - t, 1)}
        print(f"tokenizer: trained once on the 1x corpus ({report['tokenizer']['seconds']} s, data stage "
              "included), adopted by every size", flush=True)
        rows = []
        for n in sorted(args.sizes):
            print(f"  {n}x ({corpora[n]['bytes'] / 1e6:.1f} MB):", flush=True)
            r = run_size(n, corpus_root / f"x{n}", tok_dir, tmp, env, args.workers, args.preset, args.trace)
            r.update(copies=n, input_mb=round(corpora[n]["bytes"] / 1e6, 2), files=corpora[n]["n_files"])
            rows.append(r)
            g = r["together"]
            print(f"    together  {g['wall_s']:7.1f} s wall {g['cpu_s']:7.1f} CPU-s  RSS at once "
                  f"{g['rss_at_once_mb']:5.0f} MB; kept {r['kept_fraction_documents']:.1%} of documents "
                  f"({r['kept_fraction_bytes']:.1%} of bytes), {r['tokens']:,} tokens", flush=True)
        report["sizes"] = rows
        report["load_average_end"] = [round(x, 2) for x in os.getloadavg()]

        print(f"\n{'size':>5} {'input MB':>9} {'wall s':>8} {'CPU-s':>8} {'MB/CPU-s':>9} {'RSS at once':>12} "
              f"{'sum VmHWM':>10} {'kept docs':>10} {'kept bytes':>11}")
        for r in rows:
            g = r["together"]
            print(f"{r['copies']:>4}x {r['input_mb']:9.1f} {g['wall_s']:8.1f} {g['cpu_s']:8.1f} "
                  f"{r['input_mb'] / g['cpu_s']:9.2f} {g['rss_at_once_mb']:12.0f} {g['hwm_sum_mb']:10.0f} "
                  f"{r['kept_fraction_documents']:10.1%} {r['kept_fraction_bytes']:11.1%}")
        big = rows[-1]
        if len(rows) > 1:
            small = rows[0]
            scale = (big["together"]["wall_s"] / small["together"]["wall_s"]) / (big["input_mb"] / small["input_mb"])
            report["wall_per_mb_largest_vs_smallest"] = round(scale, 3)
            print(f"wall per MB at {big['copies']}x / at {small['copies']}x: {scale:.2f} (1.00 = linear)")
        report["goal_rss_met"] = big["together"]["rss_at_once_mb"] < RSS_GOAL_MB
        print(f"RSS at once at {big['copies']}x: {big['together']['rss_at_once_mb']:.0f} MB, goal < {RSS_GOAL_MB}: "
              f"{'met' if report['goal_rss_met'] else 'NOT met'}; load average at the end "
              f"{' '.join(map(str, report['load_average_end']))}")
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=1, default=str))
            print(f"wrote {args.json}")
        if args.plot:
            plot(rows, Path(args.plot), plot_title(args.preset, rows, m))
            print(f"wrote {args.plot}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
