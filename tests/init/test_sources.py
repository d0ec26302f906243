"""The sources `fmforge init` writes read like a person wrote them and partition
the folder: every file in at most one source, a few patterns each, and the data
stage reading exactly the files init counted (issue 33, part 3; issue 32, part 2).

The folder below is built so that names collide across kinds, as on a system's
documentation folder: a file named ``list`` that is prose in one package and a
shell script in another, ``index`` a page in one folder and prose in another, the
extension ``.data`` JSON lines in one place and prose in another, folders linked
to other folders (Debian links package docs to one another), and a long tail of
names without an extension (README, NEWS.Debian, copyright, THANKS ...)."""

from __future__ import annotations

import gzip
import json
import os
import random
import re
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from fmforge.cli import app
from fmforge.config import SourceConfig, load_config
from fmforge.data.listing import list_source_files
from fmforge.init.write import Budget, init_config

runner = CliRunner()

# names without a known extension that a documentation folder holds
DOC_NAMES = ["README", "NEWS.Debian", "copyright", "AUTHORS", "TODO", "THANKS", "INSTALL", "BUGS", "FAQ",
             "NOTICE", "CONTRIBUTING", "ChangeLog", "README.source", "sources.list", "fstab", "profile"]


WORDS = ["the", "of", "and", "to", "in", "that", "with", "river", "stone", "house", "garden", "morning",
         "light", "water", "letter", "friend", "winter", "travel", "people", "history", "village", "bridge"]


def prose(rng: random.Random, words: int = 120) -> str:
    sentences, n = [], 0
    while n < words:
        k = rng.randint(6, 14)
        sentences.append(" ".join(rng.choice(WORDS) for _ in range(k)).capitalize() + ".")
        n += k
    return " ".join(sentences)


def script(rng: random.Random, shell: str = "sh") -> str:
    body = "".join(f"echo step {i}\nfor f in *; do test -f \"$f\" && wc -l \"$f\"; done\n" for i in range(8))
    return f"#!/bin/{shell}\nset -e\n" + body


@pytest.fixture
def doc_folder(tmp_path: Path) -> tuple[Path, int]:
    """The folder, and how many distinct files in it can be read as training text."""
    rng = random.Random(7)
    root = tmp_path / "doc"
    usable = 0

    def put(rel: str, content: str | bytes) -> None:
        nonlocal usable
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            p.write_bytes(content)
        else:
            p.write_text(content)
            usable += 1

    for pkg in ("alpha", "beta", "gamma"):
        for name in DOC_NAMES:
            put(f"{pkg}/{name}", prose(rng, 60))
        put(f"{pkg}/guide.txt", prose(rng))
        put(f"{pkg}/intro.md", "# Intro\n\n" + prose(rng))
        put(f"{pkg}/changelog.Debian.gz", gzip.compress(prose(rng).encode()))  # compressed: not read
    put("alpha/list", "\n".join(f"package-{i}" for i in range(40)) + "\n")  # prose named `list`
    put("alpha/notes.data", prose(rng))  # prose with the extension of the JSON lines below
    put("alpha/logo.png", b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR" + bytes(64))  # binary
    put("alpha/api.json", b'{"paths": [1,\n 2]}')  # one JSON document: not read
    put("beta/index", prose(rng))  # prose named like the page below
    put("site/index", f"<!DOCTYPE html><html><body><p>{prose(rng)}</p></body></html>")
    put("site/about.html", f"<!DOCTYPE html><html><body><p>{prose(rng)}</p></body></html>")
    put("tools/bin/list", script(rng))  # a script named `list`
    put("tools/bin/helper", script(rng, "bash"))
    put("tools/bin/run", script(rng))
    for i in range(14):  # examples without an extension, each its own name
        put(f"tools/examples/demo-{chr(97 + i)}", script(rng))
    put("tools/rows.data", "".join(json.dumps({"id": i, "text": prose(rng, 40)}) + "\n" for i in range(5)))
    put("tools/src/main.c", "int main(void) {\n  return 0;\n}\n" * 5)
    put("tools/src/util.h", "#define N 3\nint add(int a, int b);\n" * 5)
    put("tools/build.sh", script(rng))
    put("tools/gen.py", "def f(x):\n    return x + 1\n\n" * 10)
    for name in DOC_NAMES:  # the tools' own documentation, among its code
        put(f"tools/{name}", prose(rng, 60))
    (root / "delta").symlink_to("beta")  # a package folder linked to another
    (root / "vendor").symlink_to("tools")  # a folder of code linked in under another name
    return root, usable


def _sources(cfg) -> dict[str, SourceConfig]:
    return {s.name: s for s in cfg.data.sources}


def _listed(cfg) -> dict[str, set[str]]:
    return {s.name: {f.path for f in list_source_files(s, cfg.config_dir).files} for s in cfg.data.sources}


def _counted(text: str) -> dict[str, int]:
    """init's comment count per source: the comment line above each `- name:`."""
    return {m.group(2): int(m.group(1).replace(",", ""))
            for m in re.finditer(r"^ {4}# ([\d,]+) files?\b.*\n {4}- name: (\S+)$", text, re.M)}


def test_every_file_is_in_at_most_one_source(doc_folder, tmp_path):
    root, usable = doc_folder
    out = tmp_path / "doc.yaml"
    init_config([root], out, Budget(minutes=1), measure=False)
    listed = _listed(load_config(out))
    names = sorted(listed)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not listed[a] & listed[b], f"{a} and {b} both read {sorted(listed[a] & listed[b])[:5]}"
            real_a = {os.path.realpath(p) for p in listed[a]}
            real_b = {os.path.realpath(p) for p in listed[b]}
            assert not real_a & real_b, f"{a} and {b} read the same files under two names"
    # and every readable file is read: nothing left out but the png, the .gz and the JSON document
    every = {os.path.realpath(p) for paths in listed.values() for p in paths}
    assert len(every) == usable
    assert not any(p.endswith((".png", ".gz", "api.json")) for p in every)


def test_no_source_has_more_than_a_dozen_patterns(doc_folder, tmp_path):
    root, _ = doc_folder
    out = tmp_path / "doc.yaml"
    init_config([root], out, Budget(minutes=1), measure=False)
    for s in load_config(out).data.sources:
        assert len(s.paths) <= 12, f"{s.name}: {len(s.paths)} patterns: {s.paths}"
        assert len(s.exclude) <= 12, f"{s.name}: {len(s.exclude)} exclude patterns: {s.exclude}"


def test_the_data_stage_reads_the_files_init_counted(doc_folder, tmp_path, monkeypatch):
    root, usable = doc_folder
    out = tmp_path / "doc.yaml"
    init_config([root], out, Budget(minutes=1), name="doc-init", measure=False)
    counted = _counted(out.read_text())
    assert set(counted) == {s.name for s in load_config(out).data.sources}
    assert sum(counted.values()) == usable
    monkeypatch.chdir(tmp_path)
    res = runner.invoke(app, ["data", str(out), "data.workers=1", "data.val_fraction=0.2"])
    assert res.exit_code == 0, res.output
    card = json.loads((tmp_path / "runs/doc-init/data/data_card.json").read_text())
    assert {name: s["files_read"] for name, s in card["sources"].items()} == counted


def test_the_yaml_says_what_each_pattern_lists_and_loads(doc_folder, tmp_path):
    root, _ = doc_folder
    out = tmp_path / "doc.yaml"
    init_config([root], out, Budget(minutes=1), measure=False)
    text = out.read_text()
    cfg = load_config(out)  # the loader takes it as written
    raw = yaml.safe_load(text)
    assert [s["name"] for s in raw["data"]["sources"]] == [s.name for s in cfg.data.sources]
    for s in cfg.data.sources:
        for pattern in s.paths:
            # the comment beside a pattern: how many of the source's files it lists
            line = next(ln for ln in text.splitlines() if ln.strip().startswith(f"- {json.dumps(pattern)}"))
            said = re.search(r"#\s*([\d,]+) files?\b", line)
            assert said, f"no count beside {pattern}: {line!r}"
            alone = SourceConfig(name=s.name, type=s.type, paths=[pattern], exclude=s.exclude)
            n = len(list_source_files(alone, cfg.config_dir, strict=False).files)
            assert int(said.group(1).replace(",", "")) == n, line


def test_odd_folders_read_as_counted_with_few_excludes(tmp_path):
    """A folder of programs with one name each (as /etc/alternatives) is left out
    whole, the one readable file among them named in a warning; empty files are read
    (as nothing) by the source that lists them; a link back up is not followed."""
    rng = random.Random(3)
    root = tmp_path / "odd"
    (root / "bin").mkdir(parents=True)
    (root / "pkg").mkdir()
    for name in DOC_NAMES:  # more names than a dozen patterns: the text source lists the folder
        (root / name).write_text(prose(rng, 50))
    for i in range(10):
        (root / "bin" / f"prog{chr(97 + i)}").write_bytes(b"\x7fELF\x02\x01\x01\0" + bytes(200))
    (root / "bin" / "README").write_text(prose(rng, 50))
    for i in range(3):
        (root / "pkg" / f"m{i}.py").write_text(f"def f():\n    return {i}\n" * 5)
    (root / "pkg" / "__init__.py").write_text("")
    (root / "pkg" / "again").symlink_to("..")  # ** would go round and round
    out = tmp_path / "odd.yaml"
    r = init_config([root], out, Budget(minutes=1), measure=False)
    warnings = "\n".join(r.warnings)
    assert "1 readable file left out" in warnings and "bin/README" in warnings
    assert "again links back to a folder above it" in warnings
    cfg = load_config(out)
    text = _sources(cfg)["text"]
    assert text.paths == [str(root) + "/**"]
    assert str(root / "bin") + "/**" in text.exclude and len(text.exclude) <= 4, text.exclude
    listed = _listed(cfg)
    assert {Path(p).name for p in listed["code"]} == {"m0.py", "m1.py", "m2.py", "__init__.py"}
    assert {n: len(p) for n, p in listed.items()} == _counted(out.read_text()) == {"text": 16, "code": 4}
