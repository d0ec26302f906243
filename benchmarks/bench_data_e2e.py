"""The data stage end to end against datatrove's own pipeline (issue 30, part 2).

Why: ``bench_data.py`` times the filter and MinHash calls inside one process;
users compare whole pipelines. Here both sides read the same web-like JSONL
files from disk, run FineWeb's filters and MinHash near-duplicate removal with
the same number of worker processes, and write their output:

- ours: ``fmforge data CONFIG`` in a fresh process, on a config this script
  writes: one ``type: jsonl`` source with the ``web`` preset (clean, length,
  gopher_quality, gopher_repetition, c4, fineweb), ``dedup: minhash`` (word
  5-grams, 14 bands x 8 rows), ``data.workers`` = ``--workers``; the settings of
  ``bench_data.web_data_config()`` (``min_chars: 1``). Its output is the stage's
  parquet shards (train and val; the kept documents are both).
- datatrove: a fresh process (``--datatrove-python``, a venv with datatrove
  installed) runs ``LocalPipelineExecutor`` four times, with ``tasks`` =
  ``workers`` = ``--workers`` where a stage is parallel:
  1. ``JsonlReader`` -> ``GopherRepetitionFilter``, ``GopherQualityFilter``,
     ``C4QualityFilter``, ``FineWebQualityFilter`` (FineWeb's order,
     ``bench_data.datatrove_steps``) -> ``JsonlWriter`` (the filtered pages, the
     input of stage 4) -> ``MinhashDedupSignature`` (one pass over the input:
     the writer hands its documents on);
  2. ``MinhashDedupBuckets`` (one task per bucket);
  3. ``MinhashDedupCluster`` (one task);
  4. ``JsonlReader`` of the filtered pages -> ``MinhashDedupFilter`` -> ``JsonlWriter``.
  MinHash: ``MinhashConfig(n_grams=5, num_buckets=14, hashes_per_bucket=8)``,
  its default 64-bit xxhash, the same parameters as ours. Its writers write
  uncompressed JSONL (``compression=None``; gzip is its default and would cost
  it CPU time); ours writes zstd parquet. Its word tokenizer: ``regex``
  (``bench_data.regex_tokenizer()``: our word split, its fastest configuration
  in ``bench_data.py``) or ``spacy`` (its default English tokenizer, 10-40x
  slower; ``--tokenizer spacy``).

Measured for each (harness): wall seconds, CPU-seconds of the whole process
tree (``RUSAGE_CHILDREN`` once it is reaped) per MB of input, and peak RSS of
the tree (``VmHWM`` of every process, ``run_tree``), both runs interleaved
(``--repeats``). Agreement: the input's ids kept by both, by ours only, by
datatrove only (its ids from the ``id`` field; ours from ``web/FILE:LINE``).

Differences that remain: ours runs ``clean`` (Unicode normalisation, mojibake
and whitespace fixes) and ``length`` before the filters, splits train/val and
shuffles; datatrove does neither. Within a near-duplicate cluster we keep the
first document in reading order; datatrove 0.10.1's ``MinhashDedupCluster``
unions by size and keeps the cluster's root, not necessarily its first
document, and its hash functions are not ours (pairs near the LSH threshold
fall differently): the ids kept after dedup can differ where both removed
about the same number of pages. Agreement is therefore given after the filters
(an untimed second run of ours with ``keep_rejected``) and after dedup.

The corpus: ``bench_data.build_corpus`` (pages built offline from this
machine's package docs and docstrings), written as JSONL files of about
``--file-mb`` MB each with ``{"id", "text"}``.

Setup (datatrove is not an fmforge dependency; a venv of its own that also sees
.venv's packages, so ``bench_data`` imports there; datatrove's JSONL reader and writer need
``orjson``, which it does not declare):

    python3.11 -m venv /tmp/dtvenv && /tmp/dtvenv/bin/pip install datatrove regex xxhash orjson spacy
    echo "$PWD/.venv/lib/python3.11/site-packages" > /tmp/dtvenv/lib/python3.11/site-packages/fmforge-venv.pth
    python benchmarks/bench_data_e2e.py --mb 50 --datatrove-python /tmp/dtvenv/bin/python --json /tmp/e2e.json
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(HERE))

from harness import interleaved, machine, measure, run_tree  # noqa: E402

# -- the datatrove side, run in its own process ---------------------------------------------


def _xxh64_str(s: str) -> int:
    """datatrove 0.10.1 hashes ``str`` with xxhash, which xxhash < 4 encoded as
    UTF-8 itself; xxhash 4 takes bytes (as in ``bench_data.datatrove_steps``)."""
    import xxhash

    return xxhash.xxh64_intdigest(s.encode("utf-8"))


def datatrove_child(inp: str, out: str, workers: int, tokenizer: str) -> None:
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup.minhash import (
        MinhashConfig,
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupFilter,
        MinhashDedupSignature,
    )
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter

    from bench_data import _xxhash_needs_bytes, datatrove_steps, regex_tokenizer

    language = regex_tokenizer() if tokenizer == "regex" else "en"
    filters, _ = datatrove_steps(language)  # FineWeb's order
    cfg = MinhashConfig(n_grams=5, num_buckets=14, hashes_per_bucket=8)
    o = Path(out)
    sig = MinhashDedupSignature(output_folder=str(o / "signatures"), config=cfg, language=language)
    if _xxhash_needs_bytes():
        sig._hash_func = _xxh64_str
    stages = [
        LocalPipelineExecutor(pipeline=[
            JsonlReader(inp, glob_pattern="*.jsonl", compression=None),
            *filters.values(),
            JsonlWriter(str(o / "filtered"), compression=None),
            sig,
        ], tasks=workers, workers=workers, logging_dir=str(o / "logs" / "1")),
        LocalPipelineExecutor(pipeline=[
            MinhashDedupBuckets(input_folder=str(o / "signatures"), output_folder=str(o / "buckets"), config=cfg),
        ], tasks=cfg.num_buckets, workers=workers, logging_dir=str(o / "logs" / "2")),
        LocalPipelineExecutor(pipeline=[
            MinhashDedupCluster(input_folder=str(o / "buckets"), output_folder=str(o / "remove_ids"), config=cfg),
        ], tasks=1, logging_dir=str(o / "logs" / "3")),
        LocalPipelineExecutor(pipeline=[
            JsonlReader(str(o / "filtered"), compression=None),
            MinhashDedupFilter(input_folder=str(o / "remove_ids")),
            JsonlWriter(str(o / "output"), compression=None),
        ], tasks=workers, workers=workers, logging_dir=str(o / "logs" / "4")),
    ]
    for s in stages:
        s.run()


# -- counting the CPU time of every process a command starts ---------------------------------


# -- our side and the corpus ----------------------------------------------------------------


def write_corpus(dest: Path, mb: float, seed: int, file_mb: float, workers: int) -> dict:
    """JSONL files of ``bench_data.build_corpus`` pages; returns sizes and where each id is."""
    from bench_data import build_corpus

    texts, kinds = build_corpus(mb, seed)
    total = sum(len(t.encode("utf-8")) for t in texts)
    n_files = max(workers, round(total / (file_mb * 1e6)))
    per = -(-len(texts) // n_files)
    dest.mkdir(parents=True, exist_ok=True)
    for k in range(n_files):
        with open(dest / f"part-{k:04d}.jsonl", "w", encoding="utf-8") as f:
            for i in range(k * per, min(len(texts), (k + 1) * per)):
                f.write(json.dumps({"id": str(i), "text": texts[i]}, ensure_ascii=False) + "\n")
    return {"pages": len(texts), "mb": total / 1e6, "files": n_files, "per_file": per,
            "kinds": {k: kinds.count(k) for k in sorted(set(kinds))}}


def our_config(corpus: Path, out: Path, workers: int) -> dict:
    from bench_data import web_data_config

    data = web_data_config().model_dump(mode="json", exclude_unset=True)
    data["sources"] = [{**data["sources"][0], "type": "jsonl", "paths": [str(corpus / "*.jsonl")]}]
    data.update(workers=workers, executor="local", work_dir=str(out / "work"))
    return {"name": "bench-data-e2e", "out_dir": str(out / "run"), "data": data}


def our_kept(out: Path, per_file: int) -> set[str]:
    """The input ids (``id`` field) of the documents in our shards: ours are
    ``web/part-K.jsonl:LINE``."""
    import pyarrow.parquet as pq

    kept = set()
    for path in glob.glob(str(out / "run" / "data" / "*.parquet")):
        for doc_id in pq.read_table(path, columns=["id"]).column("id").to_pylist():
            name, line = doc_id.rsplit(":", 1)
            k = int(Path(name).stem.split("-")[1])
            kept.add(str(k * per_file + int(line) - 1))
    return kept


FILTER_STEPS = ("clean", "length", "gopher_quality", "gopher_repetition", "c4", "fineweb")


def our_filter_drops(out: Path, per_file: int) -> tuple[set[str], dict[str, int]]:
    """From a run with ``keep_rejected``: the input ids a filter step dropped
    (not dedup), and the count of every rejection reason's step."""
    import pyarrow.parquet as pq

    dropped, reasons = set(), {}
    for path in glob.glob(str(out / "run" / "data" / "rejected" / "*.parquet")):
        t = pq.read_table(path, columns=["id", "reason"]).to_pydict()
        for doc_id, reason in zip(t["id"], t["reason"]):
            step = str(reason).split(":")[0]
            reasons[step] = reasons.get(step, 0) + 1
            if step in FILTER_STEPS:
                name, line = doc_id.rsplit(":", 1)
                dropped.add(str(int(Path(name).stem.split("-")[1]) * per_file + int(line) - 1))
    return dropped, reasons


def their_kept(out: Path, folder: str = "output") -> set[str]:
    kept = set()
    for path in glob.glob(str(out / folder / "*.jsonl")):
        with open(path, encoding="utf-8") as f:
            kept.update(json.loads(line)["id"] for line in f if line.strip())
    return kept


# -- the run --------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mb", type=float, default=1000.0, help="MB of pages (UTF-8) to build (the issue's goal: 1000)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--file-mb", type=float, default=25.0, help="about this many MB per input JSONL file")
    ap.add_argument("--repeats", type=int, default=1, help="runs of each side, interleaved")
    ap.add_argument("--tokenizer", choices=("regex", "spacy"), default="regex",
                    help="datatrove's word tokenizer (regex: its fastest configuration in bench_data.py)")
    ap.add_argument("--datatrove-python", default=sys.executable,
                    help="a Python with datatrove installed (see the module docstring)")
    ap.add_argument("--tmp", default=None, help="where to build the corpus and outputs (default: a temp dir)")
    ap.add_argument("--json", metavar="PATH", help="write every figure to PATH as JSON")
    ap.add_argument("--datatrove-child", nargs=4, metavar=("IN", "OUT", "WORKERS", "TOKENIZER"),
                    help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.datatrove_child:
        inp, out, workers, tok = args.datatrove_child
        datatrove_child(inp, out, int(workers), tok)
        return

    check = subprocess.run([args.datatrove_python, "-c", "import datatrove, xxhash, regex; print(datatrove.__version__"
                            " if hasattr(datatrove, '__version__') else '')"], capture_output=True, text=True)
    if check.returncode != 0:
        sys.exit(f"datatrove is not importable by {args.datatrove_python}: see the module docstring's setup\n"
                 + check.stderr[-500:])
    dt_version = subprocess.run([args.datatrove_python, "-c", "from importlib.metadata import version; "
                                 "print(version('datatrove'))"], capture_output=True, text=True).stdout.strip()

    report: dict = {"machine": machine(), "args": {k: v for k, v in vars(args).items() if k != "datatrove_child"},
                    "datatrove": dt_version}
    m = report["machine"]
    print(f"{m['cpu']}, {m['cpus']} CPUs, load average {' '.join(map(str, m['load_average']))}; "
          f"datatrove {dt_version}, tokenizer {args.tokenizer}", flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="bench_e2e_", dir=args.tmp))
    try:
        t = time.perf_counter()
        corpus = tmp / "corpus"
        report["corpus"] = info = write_corpus(corpus, args.mb, args.seed, args.file_mb, args.workers)
        print(f"corpus: {info['pages']} pages, {info['mb']:.1f} MB in {info['files']} JSONL files "
              f"(built in {time.perf_counter() - t:.0f} s)", flush=True)
        outs = {"ours": tmp / "ours", "datatrove": tmp / "datatrove"}
        cfg_path = tmp / "ours.yaml"
        cfg_path.write_text(json.dumps(our_config(corpus, outs["ours"], args.workers), indent=2))
        env = {**os.environ, "PYTHONPATH": ""}
        fmforge = str(Path(sys.executable).with_name("fmforge"))
        cmds = {
            "ours": [fmforge, "data", str(cfg_path), "--force"],
            "datatrove": [args.datatrove_python, str(Path(__file__).resolve()), "--datatrove-child",
                          str(corpus), str(outs["datatrove"]), str(args.workers), args.tokenizer],
        }
        peaks: dict[str, list[dict]] = {n: [] for n in cmds}

        def case(name):
            def go():
                _, peak = run_tree(cmds[name], env=env, reap_orphans=True)
                # the wrapper (the tree's root) is left out of the peaks
                wrapper_mb = peak.root_mb
                d = {**peak.as_dict(), "wrapper_mb": round(wrapper_mb, 1), "processes": len(peak.children),
                     "hwm_sum_mb": round(peak.hwm_sum_mb - wrapper_mb, 1),
                     "rss_sum_peak_mb": round(peak.rss_sum_peak_mb - wrapper_mb, 1)}
                peaks[name].append(d)
                print(f"  {name}: {peak.wall_s:.1f} s wall, peak RSS {d['hwm_sum_mb']:.0f} MB "
                      f"(sum of VmHWM over {len(peak.children)} processes, largest "
                      f"{peak.largest_child_mb:.0f}; {d['rss_sum_peak_mb']:.0f} MB at once)",
                      flush=True)
            return go

        samples = interleaved({n: case(n) for n in cmds}, args.repeats,
                              before=lambda n: shutil.rmtree(outs[n], ignore_errors=True))
        mb = info["mb"]
        res = {}
        for name, ss in samples.items():
            best = min(range(len(ss)), key=lambda i: ss[i].cpu_s)
            res[name] = {
                "wall_s": [round(s.wall_s, 2) for s in ss], "cpu_s": [round(s.cpu_s, 2) for s in ss],
                "load_at_start": [s.load_at_start for s in ss], "peaks": peaks[name],
                "best_wall_s": round(min(s.wall_s for s in ss), 2),
                "best_cpu_s_per_mb": round(ss[best].cpu_s / mb, 4),
                "mb_per_cpu_s": round(mb / ss[best].cpu_s, 3),
                "mb_per_wall_s": round(mb / min(s.wall_s for s in ss), 3),
                "peak_rss_mb": round(max(p["hwm_sum_mb"] for p in peaks[name]), 1),
                "rss_at_once_mb": round(max(p["rss_sum_peak_mb"] for p in peaks[name]), 1),
            }
        ours, theirs = our_kept(outs["ours"], info["per_file"]), their_kept(outs["datatrove"])
        res["ours"]["kept"], res["datatrove"]["kept"] = len(ours), len(theirs)
        theirs_filtered = their_kept(outs["datatrove"], "filtered")
        n = info["pages"]
        # ours again, untimed, with keep_rejected: which pages the filters dropped and which dedup did
        shutil.rmtree(outs["ours"], ignore_errors=True)
        cfg = our_config(corpus, outs["ours"], args.workers)
        cfg["data"]["keep_rejected"] = True
        cfg_path.write_text(json.dumps(cfg, indent=2))
        run_tree(cmds["ours"], env=env)
        filter_dropped, reasons = our_filter_drops(outs["ours"], info["per_file"])
        ours_filtered = {str(i) for i in range(n)} - filter_dropped
        res["ours"]["after_filters"] = len(ours_filtered)
        res["datatrove"]["after_filters"] = len(theirs_filtered)
        res["ours"]["rejected_by_step"] = reasons

        def compare(a: set[str], b: set[str]) -> dict:
            d = {"kept_by_both": len(a & b), "ours_only": len(a - b), "datatrove_only": len(b - a),
                 "dropped_by_both": n - len(a | b)}
            d["agreement"] = round((d["kept_by_both"] + d["dropped_by_both"]) / n, 4)
            return d

        agree = {"pages": n, "after_filters": compare(ours_filtered, theirs_filtered),
                 "after_dedup": compare(ours, theirs)}
        report.update(results=res, agreement=agree)
        ratios = {"cpu_per_mb": res["datatrove"]["best_cpu_s_per_mb"] / res["ours"]["best_cpu_s_per_mb"],
                  "wall": res["datatrove"]["best_wall_s"] / res["ours"]["best_wall_s"],
                  "peak_rss": res["ours"]["peak_rss_mb"] / res["datatrove"]["peak_rss_mb"],
                  "rss_at_once": res["ours"]["rss_at_once_mb"] / res["datatrove"]["rss_at_once_mb"]}
        report["ratios"] = {k: round(v, 3) for k, v in ratios.items()}
        report["load_average_end"] = [round(x, 2) for x in os.getloadavg()]

        print(f"\n{mb:.1f} MB, {args.workers} workers each (best of {args.repeats}):")
        print(f"  {'':<10} {'wall s':>8} {'CPU-s/MB':>9} {'MB/CPU-s':>9} {'peak RSS MB':>12} {'kept':>7}")
        for name in cmds:
            r = res[name]
            print(f"  {name:<10} {r['best_wall_s']:8.1f} {r['best_cpu_s_per_mb']:9.3f} {r['mb_per_cpu_s']:9.2f} "
                  f"{r['peak_rss_mb']:12.0f} {r['kept']:7d}")
        print(f"  ours vs datatrove: {ratios['cpu_per_mb']:.2f}x per core (CPU-seconds per MB), "
              f"{ratios['wall']:.2f}x wall, peak RSS {ratios['peak_rss']:.2f}x theirs "
              f"({ratios['rss_at_once']:.2f}x at once); "
              f"goal >= 3x per core: {'met' if ratios['cpu_per_mb'] >= 3 else 'NOT met'}")
        print(f"  after the filters: ours {res['ours']['after_filters']}, datatrove "
              f"{res['datatrove']['after_filters']}; our rejections by step: {reasons}")
        for when in ("after_filters", "after_dedup"):
            a = agree[when]
            print(f"  agreement {when.replace('_', ' ')} on {n} pages: kept by both {a['kept_by_both']}, "
                  f"ours only {a['ours_only']}, datatrove only {a['datatrove_only']}, dropped by both "
                  f"{a['dropped_by_both']} ({a['agreement']:.1%} agree)")
        print(f"  load average at the end: {' '.join(map(str, report['load_average_end']))}")
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=2, default=str))
            print(f"wrote {args.json}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
