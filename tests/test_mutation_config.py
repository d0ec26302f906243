"""`make mutate`'s configuration: every mutated module has the tests that run
its mutants, each module's copy gets exactly its own module and tests, and the
summary counts mutmut's exit codes as mutmut 3 documents them."""

from __future__ import annotations

import json
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))

import mutate  # noqa: E402
import mutation_summary  # noqa: E402


def _config() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]


def test_every_mutated_module_names_tests_that_exist():
    cfg = _config()
    mutated = {p.removeprefix("src/").removesuffix(".py").replace("/", ".")
               for p in cfg["mutmut"]["only_mutate"]}
    tests = cfg["fmforge"]["mutate"]["tests"]
    assert mutated == set(tests), (mutated ^ set(tests))
    for module, paths in tests.items():
        assert (ROOT / mutate.source_of(module)).is_file(), module
        assert paths, module
        # pytest options may stand among the paths (``--deselect`` of a slow test a
        # survivor is rerun against by name); every test they name must exist
        for path in paths:
            if path.startswith("--ignore="):
                path = path.removeprefix("--ignore=")
            elif path.startswith("-"):
                assert path == "--deselect", (module, path)
                continue
            assert (ROOT / path.split("::")[0]).exists(), (module, path)
    # a plain `mutmut run` selects every test any module needs
    union = cfg["mutmut"]["pytest_add_cli_args_test_selection"]
    for paths in tests.values():
        for path in paths:
            if path.startswith("-") or "::" in path:  # an option and what it deselects
                continue
            assert any(path == u or path.startswith(u.rstrip("/") + "/") for u in union), path


def test_a_module_copy_mutates_that_module_against_its_tests_and_keeps_the_rest():
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    narrowed = tomllib.loads(mutate.narrowed_pyproject(text, "fmforge.plan.decide",
                                                       ["tests/plan", "tests/ladder/test_fit.py"]))
    original = tomllib.loads(text)
    assert narrowed["tool"]["mutmut"]["only_mutate"] == ["src/fmforge/plan/decide.py"]
    assert narrowed["tool"]["mutmut"]["pytest_add_cli_args_test_selection"] == \
        ["tests/plan", "tests/ladder/test_fit.py"]
    for key, value in original["tool"]["mutmut"].items():
        if key not in ("only_mutate", "pytest_add_cli_args_test_selection"):
            assert narrowed["tool"]["mutmut"][key] == value, key
    # pytest's own settings (markers, import mode) travel with the copy
    assert narrowed["tool"]["pytest"] == original["tool"]["pytest"]


def test_the_summary_counts_mutmuts_exit_codes(tmp_path, capsys):
    # mutmut 3.8 (mutmut/__main__.py, status_by_exit_code): 1 killed, 0 survived,
    # 33 no tests, 36 and -24 timeouts, -9 a worker killed by a signal, None not run.
    codes = {"m.x_f__mutmut_1": 1, "m.x_f__mutmut_2": 0, "m.x_f__mutmut_3": 36, "m.x_f__mutmut_4": -24,
             "m.x_f__mutmut_5": 33, "m.x_f__mutmut_6": -9, "m.x_f__mutmut_7": None, "m.x_f__mutmut_8": 1}
    for name in ("a", "b"):
        meta = tmp_path / name / "mutants" / "src" / "pkg" / f"{name}.py.meta"
        meta.parent.mkdir(parents=True)
        meta.write_text(json.dumps({"exit_code_by_key": codes}))
    (tmp_path / "a" / "runtime.txt").write_text("3.5 minutes, 2 workers\n")
    out = tmp_path / "figures.json"
    assert mutation_summary.main(["--mutants", str(tmp_path / "a" / "mutants"), str(tmp_path / "b" / "mutants"),
                                  "--json", str(out)]) == 0
    figures = json.loads(out.read_text())
    # caught: two killed, two timeouts, in each of the two modules
    assert (figures["caught"], figures["total"]) == (8, 16)
    by_module = {row["module"]: row for row in figures["modules"]}
    assert by_module["pkg/a.py"]["runtime"] == "3.5 minutes, 2 workers"
    assert by_module["pkg/b.py"]["runtime"] is None
    assert by_module["pkg/a.py"]["survived"] == 1 and by_module["pkg/a.py"]["no tests"] == 1
    assert by_module["pkg/a.py"]["segfault"] == 1


def test_the_summarys_status_names_are_mutmuts_own():
    from mutmut import stats  # the dev extra pins the version make mutate uses
    for code, status in stats.status_by_exit_code.items():
        ours = mutation_summary.STATUS.get(code)
        if ours is None:
            continue
        caught = status in ("killed", "timeout")
        assert (ours in mutation_summary.CAUGHT) == caught, (code, status, ours)
