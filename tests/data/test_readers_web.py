"""Source readers for web pages and saved datasets: HTML files, WARC and WET
archives written with warcio, and ``datasets.save_to_disk`` directories."""

from __future__ import annotations

import io

import pytest

from fmforge.config import SourceConfig
from fmforge.data.listing import list_source_files
from fmforge.data.problems import BadInputError, DataError


ARTICLE = ("We walked along the shore of the lake for most of the morning, watching the herons "
           "fish in the shallows while the mist lifted.")
ARTICLE2 = "In the afternoon the wind rose and the small boats came back to the harbour one after another."


def page(title: str, *paras: str, canonical: str | None = None) -> str:
    link = f'<link rel="canonical" href="{canonical}">' if canonical else ""
    body = "".join(f"<p>{p}</p>" for p in paras)
    return (f"<html><head><title>{title}</title>{link}</head><body>"
            '<nav><a href="/">Home</a> | <a href="/about">About us</a> | <a href="/shop">Shop</a></nav>'
            f"<article><h1>{title}</h1>{body}</article>"
            "<footer>Copyright 2024 Example Ltd. All rights reserved.</footer></body></html>")


# ---- html ----


def test_html_main_text_without_navigation_and_canonical_url(read, write, tmp_path):
    write("web/lake.html", page("A day at the lake", ARTICLE, ARTICLE2, canonical="https://example.org/lake"))
    write("web/empty.html", "<html><head><script>var x = 1;</script></head><body><img src='a.png'></body></html>")
    r = read("html", ["web/*.html"])
    [doc] = r.docs
    assert doc.id == "src/lake.html"
    assert ARTICLE in doc.text and ARTICLE2 in doc.text
    assert "About us" not in doc.text and "All rights reserved" not in doc.text
    assert doc.metadata == {"path": (tmp_path / "web/lake.html").as_posix(), "url": "https://example.org/lake"}
    assert r.where("no_text") == [(tmp_path / "web/empty.html").as_posix()]


def test_html_in_a_legacy_encoding_is_decoded_by_its_meta_charset(read, write, tmp_path):
    html = page("Caf\u00e9", "Le caf\u00e9 du coin ouvre \u00e0 sept heures et ferme tard le soir, m\u00eame le dimanche.")
    html = html.replace("<head>", '<head><meta charset="iso-8859-1">')
    write("web/fr.html", html.encode("latin-1"))
    [doc] = read("html", ["web/fr.html"]).docs
    assert "Le caf\u00e9 du coin ouvre \u00e0 sept heures" in doc.text


# ---- warc / wet ----


def _warc(records: list[tuple[str, str, bytes, str | None]], gz: bool) -> bytes:
    """records: (type, uri, payload, content-type) written with warcio."""
    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    buf = io.BytesIO()
    w = WARCWriter(buf, gzip=gz)
    w.write_record(w.create_warcinfo_record("test.warc", {"software": "fmforge-test"}))
    for rtype, uri, payload, ctype in records:
        if rtype == "response":
            http = StatusAndHeaders("200 OK", [("Content-Type", ctype)], protocol="HTTP/1.1")
            rec = w.create_warc_record(uri, "response", payload=io.BytesIO(payload), http_headers=http)
        else:
            headers = {"Content-Type": ctype} if ctype else None
            rec = w.create_warc_record(uri, rtype, payload=io.BytesIO(payload), warc_headers_dict=headers)
        w.write_record(rec)
    return buf.getvalue()


def _crawl(n: int = 1) -> list[tuple[str, str, bytes, str | None]]:
    out = []
    for i in range(n):
        uri = f"https://example.org/{i}"
        out.append(("request", uri, b"GET / HTTP/1.1\r\nHost: example.org\r\n\r\n", "application/http; msgtype=request"))
        out.append(("response", uri, page(f"Page {i}", f"{ARTICLE} ({i})", ARTICLE2).encode(), "text/html; charset=utf-8"))
    return out


@pytest.mark.parametrize("gz", [False, True])
def test_warc_response_html_becomes_a_document_request_skipped_and_counted(read, write, tmp_path, gz):
    records = _crawl(1) + [("response", "https://example.org/logo.png", b"\x89PNG....", "image/png"),
                           ("metadata", "https://example.org/0", b"fetchTimeMs: 12\r\n", "application/warc-fields")]
    write("crawl/a.warc.gz" if gz else "crawl/a.warc", _warc(records, gz))
    r = read("warc", ["crawl/*"])
    [doc] = r.docs
    name = "a.warc.gz" if gz else "a.warc"
    assert doc.id == f"src/{name}#2"  # record 0 is warcinfo, 1 the request
    assert doc.metadata == {"path": (tmp_path / "crawl" / name).as_posix(), "record": 2, "url": "https://example.org/0"}
    assert f"{ARTICLE} (0)" in doc.text and "About us" not in doc.text
    c = r.counters
    assert (c["records"], c["records_warcinfo"], c["records_request"], c["records_response"], c["records_metadata"]) == (5, 1, 1, 2, 1)
    assert c["skipped_not_html"] == 1 and r.problems.total == 0


def test_wet_conversion_records_are_text(read, write, tmp_path):
    text = "Plain text of a page.\nSecond line, caf\u00e9."
    write("crawl/a.warc.wet.gz", _warc([("conversion", "https://example.org/p", text.encode(), "text/plain")], gz=True))
    r = read("wet", ["crawl/*.wet.gz"])
    assert [(d.id, d.text, d.metadata["url"]) for d in r.docs] == [("src/a.warc.wet.gz#1", text, "https://example.org/p")]
    assert r.counters["records_warcinfo"] == 1 and r.problems.total == 0


@pytest.mark.parametrize("gz", [False, True])
def test_truncated_warc_keeps_the_records_before_the_cut(read, write, tmp_path, gz):
    data = _warc(_crawl(6), gz)
    write("crawl/cut.warc", data[: len(data) * 2 // 3])
    r = read("warc", ["crawl/cut.warc"])
    n = len(r.docs)
    assert 1 <= n < 6
    assert [d.metadata["url"] for d in r.docs] == [f"https://example.org/{i}" for i in range(n)]
    assert r.problems.counts == {"truncated_archive": 1}


def test_warc_cut_inside_record_headers_is_reported(read, write, tmp_path):
    data = _warc(_crawl(2), gz=False)
    last = data.rindex(b"WARC/1")
    write("crawl/cut.warc", data[: last + 40])  # the headers of the second page's response, cut
    r = read("warc", ["crawl/cut.warc"])
    assert [d.metadata["url"] for d in r.docs] == ["https://example.org/0"]
    assert r.where("truncated_archive") == [f"{(tmp_path / 'crawl/cut.warc').as_posix()}#4"]


def test_strict_mode_page_without_text_raises_naming_the_record(read, write, tmp_path):
    empty = ("response", "https://example.org/blank", b"<html><body></body></html>", "text/html")
    write("crawl/a.warc.gz", _warc([empty], gz=True))
    with pytest.raises(BadInputError, match=r"a\.warc\.gz#1.*https://example.org/blank"):
        read("warc", ["crawl/*.warc.gz"], strict=True)


# ---- hf_disk ----


def test_hf_disk_dataset_and_dataset_dict(read, tmp_path):
    import datasets

    datasets.Dataset.from_dict({"content": ["alpha", "beta", None], "n": [1, 2, 3]}).save_to_disk(tmp_path / "ds/one")
    datasets.DatasetDict({
        "train": datasets.Dataset.from_dict({"content": ["train 0", "train 1"]}),
        "test": datasets.Dataset.from_dict({"content": ["test 0"]}),
    }).save_to_disk(tmp_path / "ds/two")  # fmt: skip
    spec = SourceConfig(name="src", type="hf_disk", paths=["ds/*"], text_column="content")
    listing = list_source_files(spec, str(tmp_path))
    assert [f.rel for f in listing.files] == ["one", "two"]  # directories, not their arrow files
    assert listing.files[0].size == sum(p.stat().st_size for p in (tmp_path / "ds/one").rglob("*") if p.is_file())

    r = read("hf_disk", ["ds/*"], text_column="content")
    assert [(d.id, d.text) for d in r.docs] == [
        ("src/one#0", "alpha"), ("src/one#1", "beta"), ("src/two#0", "train 0"), ("src/two#1", "train 1"),
    ]  # fmt: skip
    assert r.docs[0].metadata == {"path": (tmp_path / "ds/one").as_posix(), "record": 0}
    assert r.where("null_text") == [f"{(tmp_path / 'ds/one').as_posix()}#2"]
    test = read("hf_disk", ["ds/two"], text_column="content", hf_split="test")
    assert [d.text for d in test.docs] == ["test 0"]


def test_hf_disk_missing_column_or_split_names_what_exists(read, tmp_path):
    import datasets

    datasets.DatasetDict({
        "a": datasets.Dataset.from_dict({"body": ["x"]}), "b": datasets.Dataset.from_dict({"body": ["y"]}),
    }).save_to_disk(tmp_path / "ds")  # fmt: skip
    with pytest.raises(DataError, match=r"no column 'text' \(it has 'body'\)"):
        read("hf_disk", ["ds"], hf_split="a")
    with pytest.raises(DataError, match=r"splits \['a', 'b'\].*hf_split"):
        read("hf_disk", ["ds"], text_column="body")
