"""Writes the small sample corpus this example's config reads, one file per
source type, from text every Python installation carries (the docstrings of
standard-library modules and functions), so the example needs no download.

    python examples/mixed_sources/make_samples.py   # rewrites samples/
"""

from __future__ import annotations

import csv
import gzip
import html
import importlib
import inspect
import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

HERE = Path(__file__).resolve().parent
OUT = HERE / "samples"
MODULES = ["argparse", "asyncio", "collections", "csv", "datetime", "decimal", "email", "fractions",
           "functools", "heapq", "http.client", "itertools", "json", "logging", "pathlib", "pickle",
           "random", "re", "shutil", "sqlite3", "statistics", "string", "subprocess", "tarfile",
           "textwrap", "threading", "unittest", "urllib.parse", "uuid", "zipfile"]


def docstrings() -> list[tuple[str, str]]:
    """(name, text) of every module and public callable docstring with some substance."""
    out = []
    for name in MODULES:
        mod = importlib.import_module(name)
        for qual, obj in [(name, mod), *((f"{name}.{k}", v) for k, v in sorted(vars(mod).items())
                                          if not k.startswith("_") and callable(v))]:
            doc = inspect.getdoc(obj)
            if doc and len(doc) > 300 and (qual, doc) not in out:
                out.append((qual, doc))
    return out


def main() -> None:
    OUT.mkdir(exist_ok=True)
    docs = docstrings()
    quarter = len(docs) // 4
    parts = [docs[i * quarter:(i + 1) * quarter] for i in range(4)]

    with gzip.open(OUT / "manuals.jsonl.gz", "wt", encoding="utf-8") as f:
        for name, text in parts[0]:
            f.write(json.dumps({"meta": {"name": name}, "body": {"text": text}}) + "\n")

    pq.write_table(pa.table({"title": [n for n, _ in parts[1]], "content": [t for _, t in parts[1]]}),
                   OUT / "reference.parquet")

    with open(OUT / "faq.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["topic", "answer"])
        w.writerows(parts[2])

    from warcio.warcwriter import WARCWriter
    from warcio.statusandheaders import StatusAndHeaders

    with open(OUT / "site.warc.gz", "wb") as f:
        writer = WARCWriter(f, gzip=True)
        for name, text in parts[3]:
            paras = "".join(f"<p>{html.escape(p)}</p>" for p in text.split("\n\n"))
            page = (f"<html><head><title>{name}</title></head><body><nav>Home | Docs | About</nav>"
                    f"<article><h1>{name}</h1>{paras}</article><footer>Copyright</footer></body></html>")
            headers = StatusAndHeaders("200 OK", [("Content-Type", "text/html; charset=utf-8")], protocol="HTTP/1.0")
            writer.write_record(writer.create_warc_record(
                f"https://docs.example.com/{name}", "response",
                payload=io.BytesIO(page.encode("utf-8")), http_headers=headers))
    print(f"wrote {sum(len(p) for p in parts)} documents into {OUT}")


if __name__ == "__main__":
    main()
