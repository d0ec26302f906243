"""Mutation testing one module at a time, each against the tests that exercise it.

Usage: python tools/mutate.py [--jobs N] [--keep] [MODULE ...]

mutmut 3 reads one ``[tool.mutmut]`` and runs its stats pass (every selected
test, once, traced) over the whole selection before the first mutant. With
twenty-nine modules and the whole suite selected, that pass alone is most of
an hour on 2 cores, and a mutant of a planner function would be offered the
trainer's tests. So each module gets its own working copy under
``mutation/<module>/`` (ignored by git): the sources, the tests, the files
``also_copy`` names, and ``pyproject.toml`` with ``only_mutate`` narrowed to
the module and ``pytest_add_cli_args_test_selection`` to the module's entry in
``[tool.fmforge.mutate.tests]``. Everything else (process isolation, the
ignored end-to-end files, timeouts) is ``[tool.mutmut]`` as committed.

Each module's wall time goes to ``mutation/<module>/runtime.txt``; the figures
of the modules run are printed at the end (``tools/mutation_summary.py
--mutants mutation/*/mutants`` prints them again, for all modules run so far).
``--keep`` keeps a module's ``mutants/`` (mutmut then skips the mutants it has
already judged: a stopped run goes on where it stopped).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "mutation"


def selections(pyproject: Path) -> tuple[dict[str, list[str]], list[str]]:
    """(module -> its tests, the files mutmut copies besides src and tests)."""
    cfg = tomllib.loads(pyproject.read_text(encoding="utf-8"))
    tests = cfg.get("tool", {}).get("fmforge", {}).get("mutate", {}).get("tests", {})
    also_copy = cfg.get("tool", {}).get("mutmut", {}).get("also_copy", [])
    return tests, also_copy


def source_of(module: str) -> str:
    return "src/" + module.replace(".", "/") + ".py"


def _toml_list(values: list[str]) -> str:
    return "[" + ", ".join(f'"{v}"' for v in values) + "]"


def narrowed_pyproject(text: str, module: str, tests: list[str]) -> str:
    """``text`` with ``[tool.mutmut]``'s module and test lists set to this module's."""
    out, n1 = re.subn(r"(?ms)^only_mutate = \[.*?\]", f"only_mutate = {_toml_list([source_of(module)])}",
                      text, count=1)
    out, n2 = re.subn(r"(?ms)^pytest_add_cli_args_test_selection = \[.*?\]",
                      f"pytest_add_cli_args_test_selection = {_toml_list(tests)}", out, count=1)
    if n1 != 1 or n2 != 1:
        raise SystemExit("pyproject.toml: [tool.mutmut] needs only_mutate and "
                         "pytest_add_cli_args_test_selection, one line each to start")
    return out


def prepare(module: str, tests: list[str], also_copy: list[str], keep: bool) -> Path:
    """A fresh working copy for ``module`` (its ``mutants/`` kept with ``keep``)."""
    here = WORK / module
    here.mkdir(parents=True, exist_ok=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("src", "tests", *also_copy):
        source, target = ROOT / name, here / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
        if source.is_dir():
            shutil.copytree(source, target, ignore=ignore)
        elif source.exists():
            shutil.copy2(source, target)
    mutants = here / "mutants"
    if mutants.exists():
        if keep:
            # mutmut copies tests/ once; refresh it so new tests are run
            shutil.rmtree(mutants / "tests", ignore_errors=True)
            shutil.copytree(ROOT / "tests", mutants / "tests", ignore=ignore)
        else:
            shutil.rmtree(mutants)
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    (here / "pyproject.toml").write_text(narrowed_pyproject(text, module, tests), encoding="utf-8")
    return here


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("modules", nargs="*", help="modules, e.g. fmforge.plan.decide (default: all)")
    ap.add_argument("--jobs", type=int, default=2, help="mutmut's --max-children")
    ap.add_argument("--keep", action="store_true", help="go on from an earlier run's mutants/")
    args = ap.parse_args(argv)
    tests, also_copy = selections(ROOT / "pyproject.toml")
    modules = args.modules or list(tests)
    unknown = [m for m in modules if m not in tests]
    if unknown:
        print(f"not in pyproject.toml's [tool.fmforge.mutate.tests]: {', '.join(unknown)}; "
              f"add the module with the tests that exercise it", file=sys.stderr)
        return 2
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        print("warning: running as root: a mutant of code that removes directories can remove "
              "any directory on this machine; run make mutate as a user who can write only the "
              "project and /tmp, or in a throwaway container (docs/testing.md)", file=sys.stderr)
    mutmut = Path(sys.executable).with_name("mutmut")
    for module in modules:
        here = prepare(module, tests[module], also_copy, args.keep)
        print(f"== {module}: tests {' '.join(tests[module])} (in {here.relative_to(ROOT)})", flush=True)
        start = time.monotonic()
        with open(here / "run.log", "w", encoding="utf-8") as log:
            code = subprocess.call([str(mutmut), "run", "--max-children", str(args.jobs), f"{module}.*"],
                                   cwd=here, stdout=log, stderr=subprocess.STDOUT)
        minutes = (time.monotonic() - start) / 60
        (here / "runtime.txt").write_text(f"{minutes:.1f} minutes, {args.jobs} workers\n", encoding="utf-8")
        print(f"   {minutes:.1f} minutes; mutmut's log: {(here / 'run.log').relative_to(ROOT)}", flush=True)
        if code != 0:
            print(f"mutmut stopped with exit code {code} on {module}: see the log", file=sys.stderr)
            return code
    sys.path.insert(0, str(ROOT / "tools"))
    from mutation_summary import main as summary

    return summary(["--survivors", "--mutants", *(str(WORK / m / "mutants") for m in modules)])


if __name__ == "__main__":
    sys.exit(main())
