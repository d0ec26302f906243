"""Imports run one way, lowest first (``../shared/DESIGN.md``):

errors (the user-error base every package subclasses) → config, hardware (and the
run-directory / progress helpers) → model → data →
tokenizer → train → inference → eval, export, finetune, serve → ladder → pipeline → cli;
plan uses only config, hardware and model.

Every ``import`` in ``src/fmforge``, at module level or inside a function, is
checked, so a lazy import cannot hide an upward dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "fmforge"

BASE = {"config", "hardware", "rundir", "progress", "launch"}
LEVELS = {
    # UserError, which every package's named errors subclass: imports no fmforge module
    "errors": -1,
    **{name: 0 for name in BASE},
    "model": 1,
    "data": 2,
    "tokenizer": 3,
    "train": 4,
    "inference": 5,
    "eval": 6, "export": 6, "finetune": 6, "serve": 6, "plan": 6,
    # trains and evaluates rungs with the train and eval stages as they are
    "ladder": 6.5,
    "pipeline": 7,
    # fmforge init: scans folders, sizes with the planner, validates with the config loader
    "init": 7,
    "cli": 8, "__main__": 9,
}
# The planner prices runs before any stage exists, so it may read only these.
PLAN_MAY_IMPORT = BASE | {"errors", "model", "plan"}


def unit_of(path: Path, root: Path) -> str:
    """The top-level unit (package or module) a source file belongs to."""
    rel = path.relative_to(root)
    return rel.parts[0].removesuffix(".py")


def imported_units(path: Path) -> list[tuple[int, str]]:
    """(line, unit) for every fmforge import in ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "fmforge":
                names = [a.name for a in node.names]  # from fmforge import hardware
            elif node.module.startswith("fmforge."):
                names = [node.module.split(".")[1]]
        elif isinstance(node, ast.Import):
            names = [a.name.split(".")[1] for a in node.names
                     if a.name.startswith("fmforge.")]
        found += [(node.lineno, n) for n in names]
    return found


def violations(root: Path) -> list[str]:
    bad = []
    for path in sorted(root.rglob("*.py")):
        src_unit = unit_of(path, root)
        if src_unit == "__init__":
            continue
        for line, dst in imported_units(path):
            where = f"{path.relative_to(root.parent)}:{line}"
            if dst not in LEVELS or src_unit not in LEVELS:
                bad.append(f"{where}: {src_unit} -> {dst}: add the unit to LEVELS in this test")
            elif dst == src_unit:
                continue
            elif src_unit == "plan" and dst not in PLAN_MAY_IMPORT:
                bad.append(f"{where}: plan imports {dst}; the planner may use only "
                           f"{sorted(PLAN_MAY_IMPORT - {'plan'})}")
            elif LEVELS[dst] > LEVELS[src_unit]:
                bad.append(f"{where}: {src_unit} imports {dst}, which sits above it")
            elif LEVELS[dst] == LEVELS[src_unit] and LEVELS[dst] > 0:
                bad.append(f"{where}: {src_unit} imports its sibling {dst}: move the shared "
                           "piece down")
    return bad


def test_no_module_imports_a_package_above_it():
    assert len(list(SRC.rglob("*.py"))) > 20
    assert violations(SRC) == []


def test_the_check_catches_an_upward_and_a_lazy_import(tmp_path):
    fake = tmp_path / "fmforge"
    (fake / "train").mkdir(parents=True)
    (fake / "plan").mkdir()
    (fake / "train" / "loop.py").write_text(
        "from fmforge.model.transformer import Transformer\n"
        "def f():\n    from fmforge.eval.stage import run_eval_stage\n")
    (fake / "plan" / "estimate.py").write_text("import fmforge.train.device\n")
    found = violations(fake)
    assert len(found) == 2
    assert any("train imports eval" in v for v in found)
    assert any("plan imports train" in v for v in found)
