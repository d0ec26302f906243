"""The data stage: raw files -> curated parquet shards + a data card.

Public entry points are re-exported lazily so ``import fmforge.data`` stays
cheap (pyarrow is imported only when shards are touched).
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "run_data_stage": "fmforge.data.stage",
    "data_inputs_fingerprint": "fmforge.data.stage",
    "list_all_sources": "fmforge.data.stage",
    "iter_split_texts": "fmforge.data.shards",
    "iter_split_records": "fmforge.data.shards",
    "list_shards": "fmforge.data.shards",
    "read_data_card": "fmforge.data.shards",
    "Document": "fmforge.data.readers.base",
    "DataError": "fmforge.data.problems",
    "EmptyCorpusError": "fmforge.data.problems",
    "NoFilesMatchedError": "fmforge.data.problems",
    "UnknownPlaceholderError": "fmforge.data.problems",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'fmforge.data' has no attribute {name!r}")
