"""Killed/total per module from a `mutmut run` (mutmut 3), read from the
``mutants/**/*.py.meta`` files mutmut writes beside each mutated module.

Usage: python tools/mutation_summary.py [--mutants DIR ...] [--survivors] [--json FILE]

A mutant counts as caught when its tests failed ("killed") or ran past their
time limit ("timeout": the mutant made the code loop). Everything else counts
against the score: "survived", "no tests" (no test reaches the mutated
function), "not checked" (the run stopped before it) and "segfault" (the
worker died by a signal: mutmut reports a SIGKILL this way, and the DESIGN
asks that such a mutant's tests be rerun by hand before it is called caught;
``--survivors`` lists them with the command to do so).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

# mutmut 3.8's own mapping (mutmut/stats.py), restated so the script needs no
# import of mutmut (and runs with any Python).
STATUS = {1: "killed", 3: "killed", 0: "survived", 5: "no tests", 2: "interrupted", None: "not checked",
          33: "no tests", 34: "skipped", 35: "suspicious", 36: "timeout", 37: "type check",
          -24: "timeout", 24: "timeout", 152: "timeout", 255: "timeout", -11: "segfault", -9: "segfault"}
CAUGHT = {"killed", "timeout"}


def collect(root: Path) -> dict[str, dict[str, str]]:
    """module path -> {mutant name: status}, for every mutated module."""
    out: dict[str, dict[str, str]] = {}
    for meta in sorted((root / "src").rglob("*.py.meta")):
        codes = json.loads(meta.read_text(encoding="utf-8")).get("exit_code_by_key", {})
        if codes:
            module = str(meta.relative_to(root / "src"))[: -len(".meta")]
            out[module] = {name: STATUS.get(code, "suspicious") for name, code in codes.items()}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mutants", nargs="+", default=["mutants"],
                    help="mutmut's working directories (tools/mutate.py: mutation/*/mutants)")
    ap.add_argument("--survivors", action="store_true", help="list every mutant not caught")
    ap.add_argument("--json", help="also write the figures to this file")
    args = ap.parse_args(argv)
    data: dict[str, dict[str, str]] = {}
    runtimes: dict[str, str] = {}
    for root in map(Path, args.mutants):
        if not (root / "src").is_dir():
            print(f"{root}/src not found: run `make mutate` first", file=sys.stderr)
            return 2
        found = collect(root)
        data.update(found)
        runtime = root.parent / "runtime.txt"  # written by tools/mutate.py
        if runtime.is_file():
            runtimes.update({m: runtime.read_text(encoding="utf-8").strip() for m in found})
    modules = list(data)
    rows, total_caught, total_all = [], 0, 0
    print(f"{'module':<34} {'killed/total':>13} {'score':>7}   survived  no-tests  timeout  segfault  other")
    for m in modules:
        c = Counter(data[m].values())
        total = len(data[m])
        caught = sum(c[k] for k in CAUGHT)
        other = total - caught - c["survived"] - c["no tests"] - c["segfault"]
        total_caught += caught
        total_all += total
        score = caught / total if total else 0.0
        rows.append({"module": m, "caught": caught, "total": total, "score": round(score, 4),
                     "runtime": runtimes.get(m),
                     **{k: c[k] for k in ("killed", "timeout", "survived", "no tests", "segfault")}})
        print(f"{m:<34} {f'{caught}/{total}':>13} {score:>6.0%}   {c['survived']:>8}  {c['no tests']:>8}"
              f"  {c['timeout']:>7}  {c['segfault']:>8}  {other:>5}"
              + (f"   ({runtimes[m]})" if m in runtimes else ""))
    if total_all:
        print(f"{'all':<34} {f'{total_caught}/{total_all}':>13} {total_caught / total_all:>6.0%}")
    if args.survivors:
        for m in modules:
            names = sorted(n for n, status in data[m].items() if status not in CAUGHT)
            if names:
                print(f"\n{m}: {len(names)} not caught (see one: .venv/bin/mutmut show NAME)")
                for n in names:
                    print(f"   {data[m][n]:<12} {n}")
    if args.json:
        Path(args.json).write_text(json.dumps({"modules": rows, "caught": total_caught, "total": total_all},
                                              indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
