"""Deduplication with planted answers: near-duplicates made at known edit rates
among unrelated documents, exact copies across tasks, hand-made key chains."""

from __future__ import annotations

import math
import random
import re
from pathlib import Path

import numpy as np
import pytest

from fmforge.config import MinHashConfig
from fmforge.data.dedup import (
    BucketWriter,
    content_digest,
    dedup_keys,
    docref,
    find_duplicates,
    union_find,
)
from fmforge.data.minhash import MinHasher, detection_probability

CFG = MinHashConfig()


def _keys(texts: list[str], hasher: MinHasher | None) -> np.ndarray:
    """The keys the stage passes per document, built by the stage's own builder
    from the digests the stage computes."""
    return dedup_keys(texts, [content_digest(t.encode()) for t in texts], hasher)


def _dedup(tmp: Path | str, tasks: list[list[str]], partitions: int = 4, exact_only: bool = False, **kw):
    hasher = None if exact_only else MinHasher(CFG)
    for t, texts in enumerate(tasks):
        with BucketWriter(str(tmp), t, partitions, **kw) as w:
            for i, k in enumerate(_keys(texts, hasher)):
                w.add(i, k)
    return find_duplicates(str(tmp), len(tasks), partitions)


def _removed_refs(result) -> set[int]:
    return {docref(t, int(i)) for t, idx in result.removed.items() for i in idx}


# --- planted near-duplicates -------------------------------------------------------

VOCAB = [f"w{i}" for i in range(2000)]
RATES = (0.01, 0.02, 0.10, 0.30)
PAIRS_PER_RATE = 30


def _edit(rng: random.Random, words: list[str], rate: float) -> list[str]:
    out = list(words)
    for pos in rng.sample(range(len(out)), round(rate * len(out))):
        out[pos] = rng.choice([w for w in VOCAB[:50] if w != out[pos]])
    return out


def _jaccard(a: str, b: str) -> float:
    def grams(t: str) -> set[tuple[str, ...]]:
        ws = re.findall(r"\w+", t.lower())
        return {tuple(ws[i : i + 5]) for i in range(len(ws) - 4)}

    sa, sb = grams(a), grams(b)
    return len(sa & sb) / len(sa | sb)


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory):
    """200 unrelated documents of 300 words, plus 30 near-copies per edit rate
    (each of a different original), shuffled into 8 tasks."""
    rng = random.Random(7)
    originals = [[rng.choice(VOCAB) for _ in range(300)] for _ in range(200)]
    docs = [(" ".join(w), ("orig", i)) for i, w in enumerate(originals)]
    for r, rate in enumerate(RATES):
        for j in range(PAIRS_PER_RATE):
            src = r * PAIRS_PER_RATE + j  # originals 0..119 get one copy each
            docs.append((" ".join(_edit(rng, originals[src], rate)), ("copy", rate, src)))
    rng.shuffle(docs)  # copies often come before their original
    tasks = [docs[i : i + 45] for i in range(0, len(docs), 45)]
    where = {label: docref(t, i) for t, group in enumerate(tasks) for i, (_, label) in enumerate(group)}
    tmp = tmp_path_factory.mktemp("planted")
    result = _dedup(tmp, [[text for text, _ in group] for group in tasks])
    text_of = {label: text for text, label in docs}
    return result, where, text_of


def test_near_duplicate_recall_matches_the_s_curve(planted) -> None:
    result, where, text_of = planted
    removed = _removed_refs(result)
    lines = []
    for rate in RATES:
        found, expected = 0, []
        for src in range(RATES.index(rate) * PAIRS_PER_RATE, (RATES.index(rate) + 1) * PAIRS_PER_RATE):
            a, b = where[("orig", src)], where[("copy", rate, src)]
            if a in removed or b in removed:
                found += 1
                # the survivor is the pair's first document in reading order
                assert max(a, b) in removed and min(a, b) not in removed
            s = _jaccard(text_of[("orig", src)], text_of[("copy", rate, src)])
            expected.append(detection_probability(s, CFG.bands, CFG.rows))
        recall, theory = found / PAIRS_PER_RATE, sum(expected) / PAIRS_PER_RATE
        # binomial spread of the count around its expectation
        sd = math.sqrt(sum(p * (1 - p) for p in expected)) / PAIRS_PER_RATE
        lines.append(f"{rate:.0%} edits: recall {recall:.3f}, theory {theory:.3f} (sd {sd:.3f})")
        assert abs(recall - theory) <= 4 * sd + 1 / PAIRS_PER_RATE, lines[-1]
        if rate <= 0.02:
            assert recall >= 0.95, lines[-1]
        if rate >= 0.30:
            assert recall <= 0.1, lines[-1]  # Jaccard ~0.2: theory ~1e-5
    print("\n".join(lines))


def test_unrelated_documents_are_never_removed(planted) -> None:
    result, where, _ = planted
    removed = _removed_refs(result)
    # An original is only ever removed in favour of its own earlier copy.
    for label, ref in where.items():
        if label[0] == "orig" and ref in removed:
            src = label[1]
            copies = [where[k] for k in where if k[0] == "copy" and k[2] == src]
            assert copies and min(copies) < ref
    # and every cluster is one original with its own copy: nothing else joined
    assert result.largest == 2
    assert result.duplicates == result.clusters == len(removed)


# --- exact duplicates and short documents ------------------------------------------


@pytest.mark.parametrize("exact_only", [False, True])
def test_exact_copies_across_tasks_keep_the_first(tmp_path: Path, exact_only: bool) -> None:
    rng = random.Random(11)
    long_doc = " ".join(rng.choice(VOCAB) for _ in range(120))
    tasks = [
        ["unique one " + long_doc[:40], long_doc, "red fox"],
        ["red dog", long_doc, "red fox", "fox red", "Red fox", long_doc],
    ]
    result = _dedup(tmp_path, tasks, exact_only=exact_only)
    drop = {t: idx.tolist() for t, idx in result.removed.items()}
    if exact_only:
        # byte-identical copies only: "Red fox" differs from "red fox"
        assert drop == {1: [1, 2, 5]}
    else:
        # same casefolded words: "Red fox" is a copy too; "red dog" and
        # "fox red" share no shingle with "red fox" and stay
        assert drop == {1: [1, 2, 4, 5]}
    assert result.largest == 3  # long_doc three times
    assert result.examples[0] == [docref(0, 1), docref(1, 1), docref(1, 5)]


# --- the disk layout ------------------------------------------------------------------


def test_only_bucket_files_and_partitions_do_not_change_the_result(planted, tmp_path: Path) -> None:
    rng = random.Random(5)
    base = [[rng.choice(VOCAB) for _ in range(200)] for _ in range(30)]
    tasks = [
        [" ".join(w) for w in base[:15]],
        [" ".join(_edit(rng, w, 0.01)) for w in base[:10]] + [" ".join(w) for w in base[15:]],
        [" ".join(w) for w in base[:5]],
    ]
    results = []
    for partitions, flush in ((1, 1 << 20), (7, 1 << 20), (16, 40)):  # 40 records: many chunks
        d = tmp_path / f"p{partitions}"
        results.append(_dedup(d, tasks, partitions=partitions, flush_records=flush))
        for f in d.rglob("*"):
            rel = f.relative_to(d).as_posix()
            assert f.is_dir() or re.fullmatch(r"part-\d{5}/task-\d{6}-\d{4}\.npy|tasks/task-\d{6}\.json", rel), rel
    for r in results:
        assert {t: i.tolist() for t, i in r.removed.items()} == {1: list(range(10)), 2: list(range(5))}
        assert (r.clusters, r.largest, r.duplicates) == (10, 3, 15)


def test_fsspec_url_gives_the_same_result(tmp_path: Path) -> None:
    pytest.importorskip("fsspec")
    rng = random.Random(9)
    docs = [" ".join(rng.choice(VOCAB) for _ in range(100)) for _ in range(6)]
    tasks = [docs, [docs[4], docs[1]] + [" ".join(rng.choice(VOCAB) for _ in range(100))]]
    url = f"memory://dedup-{rng.getrandbits(64):x}"
    local, remote = _dedup(tmp_path, tasks), _dedup(url, tasks)
    assert {t: i.tolist() for t, i in remote.removed.items()} == {1: [0, 1]}
    assert {t: i.tolist() for t, i in local.removed.items()} == {1: [0, 1]}


def test_a_task_without_manifest_is_reported(tmp_path: Path) -> None:
    w = BucketWriter(str(tmp_path), 0, 2)
    w.add(0, np.array([1, 2], dtype=np.uint64))
    w.close()
    unfinished = BucketWriter(str(tmp_path), 1, 2, flush_records=1)
    unfinished.add(0, np.array([1, 2], dtype=np.uint64))  # flushed, never closed
    with pytest.raises(FileNotFoundError, match=r"tasks 1\b.*rerun"):
        find_duplicates(str(tmp_path), 2, 2)


# --- clusters -----------------------------------------------------------------------


def test_chain_joins_one_cluster_and_only_same_band_keys_count(tmp_path: Path) -> None:
    def k(*v: int) -> np.ndarray:
        return np.array(v, dtype=np.uint64)

    with BucketWriter(str(tmp_path), 0, 3) as w:
        w.add(0, k(1, 2))  # A
        w.add(1, k(5, 6))  # D
    with BucketWriter(str(tmp_path), 1, 3) as w:
        w.add(0, k(1, 3))  # B: shares band 0 with A
        w.add(1, k(4, 3))  # C: shares band 1 with B, nothing with A
        w.add(2, k(6, 5))  # E: D's values, but in the other bands
    names = {docref(0, 0): "A", docref(1, 0): "B", docref(1, 1): "C", docref(0, 1): "D", docref(1, 2): "E"}
    r = find_duplicates(str(tmp_path), 2, 3, ids=names.__getitem__)
    assert {t: i.tolist() for t, i in r.removed.items()} == {1: [0, 1]}  # B and C go, A stays
    assert (r.clusters, r.largest, r.duplicates) == (1, 3, 2)
    assert r.to_dict()["example_clusters"] == [{"size": 3, "kept": "A", "documents": ["A", "B", "C"]}]
    assert r.is_removed(1, 1) and not r.is_removed(0, 1) and not r.is_removed(1, 2)


def test_union_find_matches_breadth_first_search() -> None:
    rng = np.random.default_rng(0)
    edges = rng.integers(0, 3000, size=(2000, 2))
    edges = edges[edges[:, 0] != edges[:, 1]]
    nodes, roots = union_find(edges)
    adj: dict[int, list[int]] = {}
    for a, b in edges.tolist():
        adj.setdefault(a, []).append(b)
        adj.setdefault(b, []).append(a)
    expected: dict[int, int] = {}
    for start in sorted(adj):
        if start in expected:
            continue
        seen, todo = {start}, [start]
        while todo:
            for nxt in adj[todo.pop()]:
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        for n in seen:
            expected[n] = min(seen)
    assert dict(zip(nodes.tolist(), roots.tolist())) == expected


def test_dedup_keys_layout() -> None:
    digest = content_digest(b"some text")
    assert dedup_keys(["some text"], [digest], None).tolist() == [[int.from_bytes(digest[:8], "little")]]
    keys = dedup_keys(["some text", "other"], [digest, content_digest(b"other")], MinHasher(CFG))
    assert keys.shape == (2, CFG.bands + 1) and keys[0, -1] == int.from_bytes(digest[:8], "little")
    assert (keys[0, :-1] == MinHasher(CFG).band_keys("some text")).all()
