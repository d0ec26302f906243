"""The data stage's filters and MinHash against datatrove's, same documents, same process.

Why: issue 9 asks the ``web`` filter stack (gopher_quality, gopher_repetition,
c4, fineweb) plus MinHash signatures to be faster per core than datatrove's
equivalent pipeline in its fastest configuration, with keep/drop agreement of
at least 97% per filter both implement; and the stage to stream, with a flat
peak RSS as the corpus grows.

Speed. Both sides see the same documents, in one process, timed in CPU seconds
(the shared harness's ``measure``: MB/s per core = input MB / CPU-seconds of the
process; wall seconds and the load average at the start are kept beside them):

- ours: ``build_steps`` of a ``web`` source (clean, length, gopher_quality,
  gopher_repetition, c4, fineweb; each document stops at its first drop), then
  ``MinHasher.band_keys_batch`` (14 bands x 8 rows, word 5-grams) over batches
  of the same input texts;
- datatrove: ``GopherRepetitionFilter``, ``GopherQualityFilter``,
  ``C4QualityFilter``, ``FineWebQualityFilter`` in FineWeb's order, each
  called directly through its ``filter(doc)`` method on ``datatrove.data.Document``
  objects (no executor, no reader, no writer: only the filter code is timed,
  which favours datatrove), then ``MinhashDedupSignature``'s ``get_shingles`` and
  ``get_signature`` (14 buckets x 8 hashes, 5-grams, its default 64-bit xxhash),
  in memory (its signature files are not written or sorted: again in its favour).
  Two word tokenizers: the default (spaCy's blank English pipeline, which loads
  offline; no model is downloaded) and a regex tokenizer written here
  (``RegexWordTokenizer``: words and runs of punctuation, sentences at . ! ?
  followed by a space), passed as ``language=`` to every step.

MinHash runs over all input texts on both sides (not only the survivors), so
both hash exactly the same bytes. Each configuration is run twice, interleaved
(ours, datatrove, datatrove-regex, then again in reverse), and the faster run of
each is reported (the machine is shared; the other run is in the JSON).

Agreement: each of the four filters alone, on the same input text, ours against
datatrove with each tokenizer: the share of documents where both keep or both
drop. A few disagreements per filter are printed with the rule each side gave.

Documents: web-like pages built offline from this machine's files: prose from
the documentation installed packages carry (METADATA, README) and from the
standard library's docstrings, reflowed into one line per paragraph as web
pages have them, wrapped in synthetic boilerplate (menus, cookie notices,
share buttons, footers) and mixed with pages the filters exist to remove
(link lists, repeated spam, lorem ipsum, code, number tables, teaser lists,
short stubs). Deterministic for a given ``--mb`` and ``--seed``.

Agreement is given twice: each filter alone on every page, and on the pages
both chains hand to that filter (not dropped by an earlier step in either
chain; datatrove's order puts gopher_repetition first).

RSS: the whole data stage (``run_data_stage``) in a fresh subprocess on a copy
of the demo's corpus (stdlib code up to 8 MB + package docs up to 3 MB, as
``configs/demo.yaml`` caps them; the demo's data settings without the caps) and
on 10 copies of it (each file given a first line naming its copy, so exact
dedup keeps it): with ``data.workers=1`` (one process) and with the default
workers, at the default ``task_bytes``/``shard_max_docs`` and at smaller ones
(``BOUNDED``) that the 1x corpus already exceeds; peak RSS is read from
``VmHWM`` of the process and of each process it starts (the shared harness's
``run_tree``; not ``ru_maxrss``, which a child inherits across fork and exec, so
every row showed the parent's peak), with the largest sum of their ``VmRSS`` at
one moment.

    python benchmarks/bench_data.py                   # about 4 minutes on 2 busy cores (--mb 2)
    python benchmarks/bench_data.py --mb 4 --skip-rss --json /tmp/bench_data.json
"""

from __future__ import annotations

import argparse
import ast
import json
import random
import re
import shutil
import sys
import sysconfig
import tempfile
import textwrap
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import Sample, hwm_mb, load, machine, machine_line, measure, report_root_hwm, run_tree

from fmforge.config import DataConfig, config_from_dict
from fmforge.data.readers.base import Document
from fmforge.data.minhash import MinHasher
from fmforge.data.steps import build_steps, run_steps

FILTERS = ("gopher_quality", "gopher_repetition", "c4", "fineweb")
MINHASH_BATCH = 64


# -- the documents -------------------------------------------------------------------------

MENU = ["Home", "About us", "Products", "Blog", "Contact", "Careers", "Support", "Pricing",
        "Docs", "Login", "Sign up", "Search", "News", "Events", "Partners", "FAQ"]
BOILER_TOP = [
    "Skip to main content",
    "This website uses cookies to improve your experience. By continuing you accept our Privacy Policy.",
    "We use cookies to personalise content and ads. Read our cookie policy.",
    "You are here: Home > Articles > Technology",
    "Please enable JavaScript in your browser to use all features of this site.",
    "Menu",
]
BOILER_BOTTOM = [
    "Share this article:", "Facebook", "Twitter", "LinkedIn", "Email",
    "Related posts", "Leave a comment", "Subscribe to our newsletter!",
    "(c) 2024 Example Media Group. All rights reserved.",
    "Terms of use | Privacy policy | Imprint",
    "Back to top",
    "Posted in Technology, Software [edit]",
    "Comments are closed.",
    "Was this page helpful? Yes No",
]
LOREM = ("Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor "
         "incididunt ut labore et dolore magna aliqua.")


_UNDERLINE_RE = re.compile(r"^\s*([=\-~^*+#])\1{2,}\s*$")


def _strip_markup(line: str) -> str:
    """A line of markdown/reStructuredText as a browser shows it: link text
    without its target, no emphasis marks (a heading's underline is dropped
    by the caller)."""
    line = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", line)  # markdown links and images
    line = re.sub(r"\s*<https?://[^>\s]*>", "", line)  # reST links: `text <url>`_
    line = re.sub(r"[`*_]{1,3}", "", line)
    return line.strip()


def paragraphs(text: str) -> list[str]:
    """Prose paragraphs of a README/METADATA/docstring, each reflowed to one line
    (as a web page's <p> becomes one line of extracted text); code blocks,
    headings' markup and tables are left out."""
    out: list[str] = []
    in_fence = False
    for block in re.split(r"\n\s*\n", text):
        lines = block.splitlines()
        if not lines:
            continue
        if any(l.lstrip().startswith(("```", "~~~")) for l in lines):
            in_fence = not in_fence if sum(l.lstrip().startswith(("```", "~~~")) for l in lines) % 2 else in_fence
            continue
        if in_fence or lines[0].startswith(("    ", "\t", ">>>", "|", "..", "=", "-" * 3)):
            continue
        para = " ".join(_strip_markup(l) for l in lines if l.strip() and not _UNDERLINE_RE.match(l))
        para = re.sub(r"\s+", " ", para).strip()
        if para.startswith("#"):
            para = para.lstrip("# ").strip()
        if len(para) >= 3:
            out.append(para)
    return out


def is_prose(para: str) -> bool:
    """A paragraph a web article could hold: a few sentences of words (not a
    signature, an option list or a table)."""
    tokens = para.split()
    return (len(tokens) >= 8 and para.endswith((".", "!", "?"))
            and sum(t.strip(".,;:!?\"'()").isalpha() for t in tokens) >= 0.85 * len(tokens))


def prose_sources(limit_bytes: int) -> list[list[str]]:
    """Articles (lists of paragraphs) from package docs and stdlib docstrings;
    an article's paragraphs that read as prose come first, the rest (code
    references, lists) after them."""
    site = Path(sysconfig.get_paths()["purelib"])
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    articles: list[list[str]] = []
    size = 0
    files = sorted(site.glob("*.dist-info/METADATA")) + sorted(site.glob("*/README*"))
    for path in files:
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        if path.name == "METADATA":  # the long description follows the headers
            text = text.partition("\n\n")[2]
        paras = _prose_first(paragraphs(text))
        if len(paras) >= 3:
            articles.append(paras)
            size += sum(map(len, paras))
    for path in sorted(stdlib.glob("*.py")) + sorted(stdlib.glob("*/*.py")):
        if size > limit_bytes:
            break
        if "test" in path.parts or "idlelib" in path.parts:
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8", errors="replace"))
        except (SyntaxError, ValueError, OSError):
            continue
        docs = [ast.get_docstring(n) for n in ast.walk(tree)
                if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef))]
        paras = _prose_first([p for d in docs if d for p in paragraphs(d)])
        if len(paras) >= 3:
            articles.append(paras)
            size += sum(map(len, paras))
    return articles


def _prose_first(paras: list[str]) -> list[str]:
    return [p for p in paras if is_prose(p)] + [p for p in paras if not is_prose(p)]


def _menu(rng: random.Random) -> list[str]:
    return rng.sample(MENU, rng.randint(4, 9))


# Kinds of page and their odds: about half good prose (web-like), the rest what
# the filters exist to remove.
PAGE_KINDS = (("article", 0.45), ("manual", 0.12), ("links", 0.08), ("spam", 0.06),
              ("lorem", 0.03), ("code", 0.05), ("table", 0.04), ("teasers", 0.04),
              ("stub", 0.05), ("bullets", 0.08))


def make_page(rng: random.Random, articles: list[list[str]]) -> tuple[str, str]:
    """(kind, text) of one page, its kind drawn from ``PAGE_KINDS``."""
    kind = rng.choices([k for k, _ in PAGE_KINDS], [w for _, w in PAGE_KINDS])[0]
    art = rng.choice(articles)
    while kind == "article" and not is_prose(art[2]):  # an article needs 3+ prose paragraphs
        art = rng.choice(articles)
    if kind == "article":  # prose paragraphs (they come first) with boilerplate around them
        prose = [p for p in art if is_prose(p)] or art
        start = rng.randrange(max(1, len(prose) - 3))
        body = prose[start:start + rng.randint(4, 30)]
        top = _menu(rng) + rng.sample(BOILER_TOP, rng.randint(0, 3))
        bottom = rng.sample(BOILER_BOTTOM, rng.randint(0, 6))
        lines = (top if rng.random() < 0.6 else []) + body + (bottom if rng.random() < 0.6 else [])
        return kind, ("\n\n" if rng.random() < 0.3 else "\n").join(lines)
    start = rng.randrange(len(art))
    body = art[start:start + rng.randint(4, 40)] or art[:8]
    if kind == "manual":  # documentation as written: wrapped lines, headings, references
        return kind, "\n\n".join(textwrap.fill(p, rng.choice((72, 79, 100))) if rng.random() < 0.8 else p
                                  for p in body)
    if kind == "links":  # a navigation page: short lines
        items = [p.split(". ")[0][: rng.randint(12, 40)].strip() for p in art]
        return kind, "\n".join(_menu(rng) + items + rng.sample(BOILER_BOTTOM, 4))
    if kind == "spam":  # the same paragraph again and again
        reps = [rng.choice(body)] * rng.randint(3, 8) + body[:2]
        rng.shuffle(reps)
        return kind, "\n\n".join(reps)
    if kind == "lorem":  # filler left in a page
        return kind, "\n".join(body[:3] + [LOREM] * rng.randint(1, 3) + body[3:])
    if kind == "code":  # a code sample in a tutorial
        code = ["def main() {", '    return {"ok": true};', "}"]
        return kind, "\n".join(body[:4] + code + body[4:])
    if kind == "table":  # a table of numbers under a caption
        rows = [" ".join(f"{rng.uniform(0, 1000):.2f}" for _ in range(rng.randint(4, 9)))
                for _ in range(rng.randint(10, 60))]
        return kind, "\n".join(body[:1] + rows)
    if kind == "teasers":  # every line cut off with an ellipsis
        return kind, "\n".join(p[: rng.randint(40, 120)].rstrip() + "..." for p in body)
    if kind == "stub":  # a page with one short sentence
        return kind, " ".join(body[0].split()[: rng.randint(5, 45)]) + "."
    return kind, "\n".join(f"- {p[: rng.randint(30, 160)]}" for p in body)  # bullets


def build_corpus(mb: float, seed: int) -> tuple[list[str], list[str]]:
    """(texts, kinds) of pages adding up to ``mb`` MB of UTF-8."""
    articles = prose_sources(int(min(mb, 3.0) * 1e6))
    rng = random.Random(seed)
    texts, kinds, size = [], [], 0
    while size < mb * 1e6:
        kind, text = make_page(rng, articles)
        texts.append(text)
        kinds.append(kind)
        size += len(text.encode("utf-8"))
    return texts, kinds


# -- our side ------------------------------------------------------------------------------

def web_data_config() -> DataConfig:
    return DataConfig.model_validate({
        "sources": [{"name": "web", "paths": ["unused"], "filters": "web"}],
        "min_chars": 1, "dedup": "minhash"})


def run_ours(texts: list[str]) -> dict:
    """Our chain over every text, then MinHash band keys of every input text."""
    data = web_data_config()
    steps = build_steps(data, data.sources[0])
    hasher = MinHasher(data.minhash)
    docs = [Document(id=str(i), text=t, source="web") for i, t in enumerate(texts)]
    reasons: list = []
    filters = measure(lambda: reasons.extend(run_steps(steps, d) for d in docs))
    minhash = measure(lambda: [hasher.band_keys_batch(texts[s:s + MINHASH_BATCH])
                               for s in range(0, len(texts), MINHASH_BATCH)])
    return timings(filters, minhash, reasons)


def timings(filters: Sample, minhash: Sample, reasons: list) -> dict:
    """Both parts' CPU seconds (the rates' basis), wall seconds and load at the start."""
    return {"filter_s": filters.cpu_s, "minhash_s": minhash.cpu_s, "filter_wall_s": filters.wall_s,
            "minhash_wall_s": minhash.wall_s, "load_at_start": filters.load_at_start,
            "kept": sum(r is None for r in reasons), "reasons": reasons}


def our_filter_decisions(texts: list[str]) -> dict[str, list[str | None]]:
    """Each of the four filters alone on every text: None (keep) or the rule."""
    data = web_data_config()
    steps = {s.name: s for s in build_steps(data, data.sources[0])}
    out = {}
    for name in FILTERS:
        step = steps[name]
        out[name] = [step(Document(id="x", text=t, source="web")) for t in texts]
    return out


# -- datatrove's side -----------------------------------------------------------------------

def datatrove_available() -> bool:
    try:
        import datatrove  # noqa: F401
    except ImportError:
        return False
    return True


def regex_tokenizer():
    """A datatrove ``WordTokenizer`` that splits with regular expressions:
    words (with inner apostrophes) and runs of other non-space characters, the
    split of ``fmforge.data.quality``; sentences end at . ! ? before a space
    or the end, as ``fmforge.data.c4`` counts them."""
    from datatrove.utils.word_tokenizers import WordTokenizer

    class RegexWordTokenizer(WordTokenizer):
        WORDS = re.compile(r"\w+(?:['\u2019]\w+)*|[^\w\s]+")
        SENTENCE_END = re.compile(r"[.!?]+(?=\s|$)")

        def word_tokenize(self, text: str) -> list[str]:
            return self.WORDS.findall(text)

        def span_tokenize(self, text: str) -> list[tuple[int, int]]:
            spans, start = [], 0
            for m in self.SENTENCE_END.finditer(text):
                spans.append((start, m.end()))
                start = m.end()
            if not spans or text[start:].strip():
                spans.append((start, len(text)))
            return spans

        def sent_tokenize(self, text: str) -> list[str]:
            return [s for a, b in self.span_tokenize(text) if (s := text[a:b].strip())]

    return RegexWordTokenizer("en")


def datatrove_steps(language):
    from datatrove.pipeline.dedup.minhash import MinhashConfig, MinhashDedupSignature
    from datatrove.pipeline.filters import (
        C4QualityFilter,
        FineWebQualityFilter,
        GopherQualityFilter,
        GopherRepetitionFilter,
    )

    filters = {  # FineWeb's order
        "gopher_repetition": GopherRepetitionFilter(language=language),
        "gopher_quality": GopherQualityFilter(language=language),
        "c4": C4QualityFilter(language=language),
        "fineweb": FineWebQualityFilter(language=language),
    }
    with tempfile.TemporaryDirectory() as tmp:
        sig = MinhashDedupSignature(output_folder=tmp, language=language,
                                    config=MinhashConfig(n_grams=5, num_buckets=14, hashes_per_bucket=8))
    if _xxhash_needs_bytes():
        # datatrove hashes str with xxhash, which xxhash < 4 encoded as UTF-8 itself
        # (datatrove's `processing` extra pins xxhash<4); xxhash 4 wants bytes.
        import xxhash

        sig._hash_func = lambda s: xxhash.xxh64_intdigest(s.encode("utf-8"))
    return filters, sig


def _xxhash_needs_bytes() -> bool:
    import xxhash

    try:
        xxhash.xxh64_intdigest("a")
    except TypeError:
        return True
    return False


def _dt_verdict(result) -> str | None:
    """datatrove's filter result as ours: None to keep, else the reason."""
    if isinstance(result, tuple):
        return None if result[0] else str(result[1])
    return None if result else "dropped"


def run_datatrove(texts: list[str], language) -> dict:
    from datatrove.data import Document as DTDocument

    filters, sig = datatrove_steps(language)
    _warm_up(filters, sig)
    docs = [DTDocument(text=t, id=str(i)) for i, t in enumerate(texts)]
    chain = list(filters.items())
    reasons: list = []

    def filter_all() -> None:
        for d in docs:
            reason = None
            for name, f in chain:
                reason = _dt_verdict(f.filter(d))
                if reason is not None:
                    reason = f"{name}:{reason}"
                    break
            reasons.append(reason)

    def sign_all() -> None:
        for t in texts:
            shingles = sig.get_shingles(t)
            if shingles.size:
                sig.get_signature(shingles)

    return timings(measure(filter_all), measure(sign_all), reasons)


def _warm_up(filters, sig) -> None:
    """Load the tokenizer (spaCy's blank pipeline) outside the timed part."""
    from datatrove.data import Document as DTDocument

    text = "Warm up the tokenizer. It loads once.\nA second line, with words."
    for f in filters.values():
        f.filter(DTDocument(text=text, id="w"))
    sig.get_signature(sig.get_shingles(text * 3))


def datatrove_filter_decisions(texts: list[str], language) -> dict[str, list[str | None]]:
    from datatrove.data import Document as DTDocument

    filters, _ = datatrove_steps(language)
    return {name: [_dt_verdict(filters[name].filter(DTDocument(text=t, id="x"))) for t in texts]
            for name in FILTERS}


class _MemoTokenizer:
    """Wraps a datatrove tokenizer and remembers each text's words, so the
    agreement pass (four filters, each splitting the same text) splits a text
    once; the decisions are the wrapped tokenizer's. Never used for timing."""

    def __new__(cls, inner):
        from datatrove.utils.word_tokenizers import WordTokenizer

        class Memo(WordTokenizer):
            def __init__(self) -> None:
                super().__init__(inner.language)
                self._words: dict[str, list[str]] = {}

            def word_tokenize(self, text: str) -> list[str]:
                if text not in self._words:
                    if len(self._words) > 64:
                        self._words.clear()
                    self._words[text] = inner.word_tokenize(text)
                return self._words[text]

            def sent_tokenize(self, text: str) -> list[str]:
                return inner.sent_tokenize(text)

            def span_tokenize(self, text: str) -> list[tuple[int, int]]:
                return inner.span_tokenize(text)

        return Memo()


# -- agreement -----------------------------------------------------------------------------

def agreement(ours: dict[str, list], theirs: dict[str, list], texts: list[str],
              kinds: list[str], examples: int) -> dict:
    """Per filter: share of documents where both keep or both drop, the
    disagreements counted by (our verdict, their verdict), and a few examples."""
    out = {}
    for name in FILTERS:
        a, b = ours[name], theirs[name]
        same = sum((x is None) == (y is None) for x, y in zip(a, b))
        pairs: dict[str, int] = {}
        shown = []
        for i, (x, y) in enumerate(zip(a, b)):
            if (x is None) != (y is None):
                key = f"ours {x or 'keep'} / datatrove {y or 'keep'}"
                pairs[key] = pairs.get(key, 0) + 1
                if len(shown) < examples:
                    shown.append({"doc": i, "kind": kinds[i], "ours": x, "datatrove": y,
                                  "text": texts[i][:300]})
        out[name] = {"agreement": same / len(a), "disagree": len(a) - same,
                     "pairs": dict(sorted(pairs.items(), key=lambda kv: -kv[1])), "examples": shown}
    return out


def chain_agreement(a: list, b: list) -> float:
    return sum((x is None) == (y is None) for x, y in zip(a, b)) / len(a)


OUR_ORDER = ("clean", "length") + FILTERS
DATATROVE_ORDER = ("gopher_repetition", "gopher_quality", "c4", "fineweb")


def reaches(chain_reasons: list, order: tuple[str, ...], name: str) -> list[bool]:
    """Whether each document gets to step ``name`` in a chain (kept, or dropped
    at ``name`` or later)."""
    at = order.index(name)
    return [r is None or order.index(r.split(":")[0]) >= at for r in chain_reasons]


def in_chain_agreement(ours: dict[str, list], theirs: dict[str, list], our_chain: list,
                       their_chain: list) -> dict[str, dict]:
    """Per filter, agreement on the documents both chains hand to it (those an
    earlier filter dropped never meet it in a pipeline)."""
    out = {}
    for name in FILTERS:
        both = [a and b for a, b in zip(reaches(our_chain, OUR_ORDER, name),
                                        reaches(their_chain, DATATROVE_ORDER, name))]
        n = sum(both)
        same = sum(m and (x is None) == (y is None) for m, x, y in zip(both, ours[name], theirs[name]))
        out[name] = {"docs": n, "agreement": same / n if n else 1.0}
    return out


# -- RSS of the whole stage -------------------------------------------------------------------

def rss_child(raw_config: str, run_dir: str) -> None:
    """In a fresh process (``--rss-child``): the data stage; its wall seconds and its
    own final ``VmHWM`` (the parent reads the whole tree's)."""
    from fmforge.data.stage import run_data_stage
    from fmforge.rundir import RunDir

    cfg = config_from_dict(json.loads(raw_config))
    stage = measure(lambda: run_data_stage(cfg, RunDir(run_dir)))
    print(json.dumps({"wall_s": stage.wall_s, "self_hwm_mb": hwm_mb()}))


def demo_files() -> dict[str, list[Path]]:
    """The files of configs/demo.yaml's two sources, each taken up to its max_bytes
    (what the demo's stage keeps), in listing order."""
    import yaml

    from fmforge.data.listing import list_source_files

    root = Path(__file__).resolve().parents[1]
    raw = yaml.safe_load((root / "configs" / "demo.yaml").read_text())
    cfg = config_from_dict(raw, config_dir=str(root / "configs"))
    out = {}
    for spec in cfg.data.sources:
        files, size = [], 0
        for f in list_source_files(spec, cfg.config_dir).files:
            if spec.max_bytes and size >= spec.max_bytes:
                break
            files.append(Path(f.path))
            size += f.size
        out[spec.name] = files
    return out


def write_corpus(dest: Path, files: dict[str, list[Path]], copies: int) -> int:
    """``copies`` copies of every file under dest/SOURCE/COPY/, copy k with a
    first line naming it (so exact dedup keeps every copy); returns bytes."""
    total = 0
    for source, paths in files.items():
        for k in range(copies):
            for i, path in enumerate(paths):
                data = path.read_bytes()
                out = dest / source / f"{k:02d}" / f"{i:05d}_{path.name}"
                out.parent.mkdir(parents=True, exist_ok=True)
                mark = f"# copy {k} of {path.name}\n" if path.suffix == ".py" else f"Copy {k} of {path.name}.\n"
                out.write_bytes(mark.encode() + data)
                total += len(data) + len(mark)
    return total


# Bounds small enough that the 1x corpus already spans several tasks and partitions
# (the defaults, 64 MB tasks and 50,000-document partitions, exceed even the 10x corpus).
BOUNDED = {"task_bytes": 8_000_000, "shard_max_docs": 2000}


def rss_run(corpus: Path, workers: int | None, run_dir: Path, extra: dict | None = None) -> dict:
    """The data stage in a fresh interpreter: the demo's data settings, no caps."""
    raw = {"name": "bench-rss", "data": {
        "sources": [
            {"name": "stdlib-code", "type": "text", "paths": [str(corpus / "stdlib-code" / "**" / "*")]},
            {"name": "package-docs", "type": "text", "paths": [str(corpus / "package-docs" / "**" / "*")],
             "weight": 2.0},
        ],
        "min_chars": 64, "val_fraction": 0.04, "dedup": "exact", "workers": workers,
        "work_dir": str(run_dir / "work"), **(extra or {})}}
    out, peak = run_tree([sys.executable, __file__, "--rss-child", json.dumps(raw), str(run_dir / "run")])
    res = json.loads(out.strip().splitlines()[-1])
    peak = report_root_hwm(out, peak)
    # each process's own peak (VmHWM): the stage's process, its largest child, all of them
    # together (an upper bound: their peaks need not coincide), and the most the tree held
    # at one moment (the sum of VmRSS, polled)
    res.update(rss_self_mb=peak.root_mb, rss_largest_child_mb=peak.largest_child_mb, processes=1 + len(peak.children),
               rss_peak_mb=peak.hwm_sum_mb, rss_tree_at_once_mb=peak.rss_sum_peak_mb)
    shutil.rmtree(run_dir, ignore_errors=True)
    return res


def measure_rss(copies_big: int = 10) -> list[dict]:
    """Default data settings: 1x and 10x with one worker, 10x with the default
    workers; then ``BOUNDED`` task and partition sizes, 1x and 10x, one worker.
    ``copies_big`` replaces 10 (``--rss-copies``, e.g. 2 for a quick check)."""
    files = demo_files()
    plan = [(1, 1, None), (copies_big, 1, None), (copies_big, None, None), (1, 1, BOUNDED),
            (copies_big, 1, BOUNDED)]
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_data_rss_") as tmp:
        tmp = Path(tmp)
        sizes = {copies: write_corpus(tmp / f"x{copies}", files, copies) for copies in (1, copies_big)}
        for copies, workers, extra in plan:
            res = rss_run(tmp / f"x{copies}", workers, tmp / "run", extra)
            settings = ("task_bytes 8 MB, shard_max_docs 2000" if extra else "defaults")
            res.update(corpus=f"{copies}x", input_mb=sizes[copies] / 1e6,
                       workers=workers if workers else "default", settings=settings)
            rows.append(res)
            print(f"  {copies:>2}x demo ({res['input_mb']:6.1f} MB), {settings}, workers={res['workers']}: "
                  f"peak RSS {res['rss_peak_mb']:.0f} MB (self {res['rss_self_mb']:.0f}, "
                  f"{res['processes'] - 1} children, largest {res['rss_largest_child_mb']:.0f}; "
                  f"tree at once {res['rss_tree_at_once_mb']:.0f}), {res['wall_s']:.1f} s", flush=True)
    return rows


# -- the run ----------------------------------------------------------------------------------

def rates(res: dict, mb: float) -> dict:
    total = res["filter_s"] + res["minhash_s"]
    return {"filter_s": res["filter_s"], "minhash_s": res["minhash_s"],
            "filter_mb_s": mb / res["filter_s"], "minhash_mb_s": mb / res["minhash_s"],
            "total_mb_s": mb / total, "kept": res["kept"],
            "wall_s": res["filter_wall_s"] + res["minhash_wall_s"], "load_at_start": res["load_at_start"]}


def speed_and_agreement(args: argparse.Namespace, report: dict) -> None:
    """The speed rounds on ``--mb`` of pages, then the keep/drop agreement, into ``report``."""
    texts, kinds = build_corpus(args.mb, args.seed)
    mb = sum(len(t.encode("utf-8")) for t in texts) / 1e6
    report["corpus"] = {"pages": len(texts), "mb": mb,
                        "kinds": {k: kinds.count(k) for k, _ in PAGE_KINDS}}
    print(f"corpus: {len(texts)} pages, {mb:.2f} MB "
          f"({', '.join(f'{k} {n}' for k, n in report['corpus']['kinds'].items())})")

    have_dt = datatrove_available()
    if not have_dt:
        print("datatrove is not installed: only our side is timed. For the comparison, install it "
              "into this venv for the benchmark only: pip install datatrove spacy regex xxhash "
              "(they are not dependencies of fmforge).")
    # Rounds interleaved; spaCy's configuration is 10-40x slower than the others
    # and is run once, so the whole benchmark stays within a few minutes.
    order = ["ours", "datatrove-regex", "datatrove-default", "datatrove-regex", "ours"]
    if not have_dt:
        order = ["ours", "ours"]
    runs: dict[str, list[dict]] = {}
    reasons: dict[str, list] = {}
    for name in order:
        if name == "ours":
            res = run_ours(texts)
        else:
            res = run_datatrove(texts, "en" if name == "datatrove-default" else regex_tokenizer())
        reasons[name] = res.pop("reasons")
        runs.setdefault(name, []).append(rates(res, mb))
        r = runs[name][-1]
        print(f"  {name:<18} filters {r['filter_mb_s']:6.2f} MB/s  minhash {r['minhash_mb_s']:6.2f} MB/s  "
              f"together {r['total_mb_s']:6.2f} MB/s per core  (kept {r['kept']})", flush=True)
    best = {name: max(rs, key=lambda r: r["total_mb_s"]) for name, rs in runs.items()}
    report["speed"] = {"best": best, "runs": runs}

    print(f"\nMB/s per core, best of each ({mb:.2f} MB, one process, CPU time):")
    print(f"  {'':<18} {'filters':>8} {'minhash':>8} {'together':>9}")
    for name, r in best.items():
        print(f"  {name:<18} {r['filter_mb_s']:8.2f} {r['minhash_mb_s']:8.2f} {r['total_mb_s']:9.2f}")
    if have_dt:
        fastest = max((n for n in best if n != "ours"), key=lambda n: best[n]["total_mb_s"])
        ratio = best["ours"]["total_mb_s"] / best[fastest]["total_mb_s"]
        report["speed"].update(fastest_datatrove=fastest, ratio=ratio,
                               ratio_filters=best["ours"]["filter_mb_s"] / best[fastest]["filter_mb_s"],
                               ratio_minhash=best["ours"]["minhash_mb_s"] / best[fastest]["minhash_mb_s"])
        print(f"  ours / {fastest}: {ratio:.2f}x together (filters "
              f"{report['speed']['ratio_filters']:.2f}x, minhash {report['speed']['ratio_minhash']:.2f}x): "
              f"goal {'met' if ratio > 1 else 'NOT met'}")

        print("\nkeep/drop agreement per filter (each filter alone on the same text):")
        ours_dec = our_filter_decisions(texts)
        report["agreement"] = {}
        for name, lang in (("datatrove-regex", regex_tokenizer()),
                           ("datatrove-default", _MemoTokenizer(load_default_tokenizer()))):
            their_dec = datatrove_filter_decisions(texts, lang)
            agr = agreement(ours_dec, their_dec, texts, kinds, args.examples)
            agr["chain"] = chain_agreement(reasons["ours"], reasons[name])
            agr["in_chain"] = in_chain_agreement(ours_dec, their_dec, reasons["ours"], reasons[name])
            report["agreement"][name] = agr
            print(f"  against {name}: " + ", ".join(
                f"{f} {agr[f]['agreement']:.1%}" for f in FILTERS) + f"; whole chain {agr['chain']:.1%}")
            print("    on the documents both chains hand to the filter: " + ", ".join(
                f"{f} {agr['in_chain'][f]['agreement']:.1%} of {agr['in_chain'][f]['docs']}" for f in FILTERS))
            for f in FILTERS:
                if agr[f]["disagree"]:
                    print(f"    {f}: {agr[f]['disagree']} differ: " + "; ".join(
                        f"{k} x{v}" for k, v in list(agr[f]["pairs"].items())[:4]))
                    for ex in agr[f]["examples"]:
                        print(f"      doc {ex['doc']} ({ex['kind']}): {ex['text'][:160]!r}")
        for n, agr in report["agreement"].items():
            alone = all(agr[f]["agreement"] >= 0.97 for f in FILTERS)
            chained = all(agr["in_chain"][f]["agreement"] >= 0.97 for f in FILTERS)
            print(f"  >= 97% on every filter against {n}: each filter alone {'yes' if alone else 'NO'}, "
                  f"on the documents it is handed {'yes' if chained else 'NO'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mb", type=float, default=2.0, help="MB of pages (UTF-8) to build and time")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--examples", type=int, default=3, help="disagreements to print per filter")
    ap.add_argument("--skip-rss", action="store_true", help="leave out the data-stage RSS runs")
    ap.add_argument("--rss-copies", type=int, default=10, help="copies of the demo corpus in the larger RSS runs")
    ap.add_argument("--skip-speed", action="store_true", help="only the data-stage RSS runs")
    ap.add_argument("--json", metavar="PATH", help="write every figure to PATH as JSON")
    ap.add_argument("--rss-child", nargs=2, metavar=("CONFIG_JSON", "RUN_DIR"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.rss_child:
        rss_child(*args.rss_child)
        return

    report: dict = {"machine": machine()}
    print(machine_line(report["machine"]))
    if not args.skip_speed:
        speed_and_agreement(args, report)
    if not args.skip_rss:
        print("\ndata stage peak RSS (fresh subprocess each, demo corpus copied 1x and "
              f"{args.rss_copies}x):", flush=True)
        report["rss"] = measure_rss(args.rss_copies)
    report["load_avg_end"] = load()
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=str))
        print(f"\nwrote {args.json}")


def load_default_tokenizer():
    from datatrove.utils.word_tokenizers import load_word_tokenizer

    return load_word_tokenizer("en")


if __name__ == "__main__":
    main()
