"""``type: hf_disk``: a dataset written by ``datasets``' ``save_to_disk``.

The listing names each saved directory as one ``SourceFile``. The Arrow files
are memory-mapped by ``datasets``; rows are pulled in batches of the text column
only, so a dataset larger than memory reads. A missing split or column is a
config mistake, not bad data, so it is an error naming what the dataset has.
"""

from __future__ import annotations

from typing import Iterator

from fmforge.data.listing import SourceFile
from fmforge.data.problems import DataError
from fmforge.data.readers.base import Document, ReaderBase, require

BATCH_ROWS = 1024


class HfDiskReader(ReaderBase):
    COUNTERS = ReaderBase.COUNTERS + ("rows",)

    def read_file(self, file: SourceFile) -> Iterator[Document]:
        self.start_file(file)
        dataset = self._dataset(file)
        column = self.spec.text_column
        if column not in dataset.column_names:
            raise DataError(
                f"source {self.name!r}: dataset {file.path} has no column {column!r} (it has "
                f"{', '.join(map(repr, dataset.column_names))}); set the source's text_column"
            )
        dtype = getattr(dataset.features[column], "dtype", None)
        if dtype not in ("string", "large_string"):
            raise DataError(f"source {self.name!r}: column {column!r} of dataset {file.path} holds "
                            f"{dataset.features[column]}, not strings; set text_column to a text column")
        batches = (batch[column] for batch in dataset.select_columns([column]).iter(batch_size=BATCH_ROWS))
        yield from self.column_documents(file, column, batches)

    def _dataset(self, file: SourceFile):
        datasets = require("datasets", "hf_disk")
        loaded = datasets.load_from_disk(file.path)
        if not isinstance(loaded, datasets.DatasetDict):
            return loaded
        splits = list(loaded)
        split = self.spec.hf_split
        if split is None:
            split = splits[0] if len(splits) == 1 else "train" if "train" in splits else None
            if split is None:
                raise DataError(f"source {self.name!r}: dataset {file.path} has splits {splits}; "
                                "choose one with the source's hf_split")
        elif split not in loaded:
            raise DataError(f"source {self.name!r}: dataset {file.path} has no split {split!r} "
                            f"(it has {splits}); fix the source's hf_split")
        return loaded[split]
