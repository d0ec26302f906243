"""Parquet shards of curated text: how the data stage writes them and how the
next stages (tokenizer training, token encoding) read them back.

Layout under ``runs/NAME/data/``: ``train-00000.parquet``, ``train-00001.parquet``,
..., ``val-00000.parquet``, each with at most ``shard_max_docs`` rows and the
string columns ``id``, ``text``, ``source``. A split with no documents has no
shard files. Shards are written in small row groups and read back in batches,
so a reader never holds more than a batch of text in memory.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from fmforge.data import arrow
from fmforge.data.problems import DataError
from fmforge.rundir import ArtifactMissingError, read_json_artifact

SPLITS: tuple[str, ...] = ("train", "val")
SCHEMA = pa.schema([("id", pa.string()), ("text", pa.string()), ("source", pa.string())])
ROW_GROUP_ROWS = 1024
DATA_CARD = "data_card.json"


def shard_name(split: str, index: int) -> str:
    return f"{split}-{index:05d}.parquet"


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


def write_shards(
    out_dir: Path, split: str, rows: Iterable[tuple[str, str, str]], shard_max_docs: int
) -> list[str]:
    """Write ``(id, text, source)`` rows as shards of ``split``; return the file names."""
    _check_split(split)
    names: list[str] = []
    buf: list[tuple[str, str, str]] = []

    def flush() -> None:
        name = shard_name(split, len(names))
        ids, texts, sources = zip(*buf)
        table = arrow.table([ids, texts, sources], SCHEMA)
        pq.write_table(table, Path(out_dir) / name, row_group_size=ROW_GROUP_ROWS, compression="zstd")
        names.append(name)
        buf.clear()

    for row in rows:
        buf.append(row)
        if len(buf) >= shard_max_docs:
            flush()
    if buf:
        flush()
    return names


def list_shards(path: str | Path, split: str) -> list[Path]:
    """The shard files of ``split`` in a data directory, in order.

    Raises ``FileNotFoundError`` if ``path`` is not a completed data directory.
    """
    _check_split(split)
    path = Path(path)
    if not (path / DATA_CARD).is_file():
        raise ArtifactMissingError(
            f"{path} is not a completed data directory (no {DATA_CARD}); "
            "run the data stage first (`fmforge data CONFIG` or `fmforge run CONFIG`)"
        )
    return sorted(path.glob(f"{split}-[0-9][0-9][0-9][0-9][0-9].parquet"))


class DamagedShardError(DataError):
    """A shard of a completed data directory that cannot be read."""


@contextmanager
def reading_shard(shard: str | Path) -> Iterator[None]:
    """Turn a read error of a data-stage shard into a message naming the shard and
    the way out. A shard is rebuilt, not skipped: skipping would change the
    corpus behind the user's back, and the data stage makes the same shard again."""
    try:
        yield
    except (pa.ArrowException, OSError) as e:
        raise DamagedShardError(
            f"{shard} is damaged or missing ({e}); it is the data stage's output, so rebuild it "
            "with `fmforge data CONFIG --force` (the later stages then rerun on the new shards)"
        ) from e


def iter_split_records(
    path: str | Path, split: str, columns: tuple[str, ...] = ("id", "text", "source"), batch_size: int = 1024
) -> Iterator[dict[str, Any]]:
    """Rows of ``split`` as dicts, read shard by shard in batches."""
    for shard in list_shards(path, split):
        with reading_shard(shard):
            pf = pq.ParquetFile(shard)
            for batch in pf.iter_batches(batch_size=batch_size, columns=list(columns)):
                yield from batch.to_pylist()


def iter_split_texts(path: str | Path, split: str, batch_size: int = 1024) -> Iterator[str]:
    """The ``text`` column of ``split``, in shard order, read in batches."""
    for shard in list_shards(path, split):
        with reading_shard(shard):
            pf = pq.ParquetFile(shard)
            for batch in pf.iter_batches(batch_size=batch_size, columns=["text"]):
                yield from batch.column(0).to_pylist()


def read_data_card(path: str | Path) -> dict[str, Any]:
    """The ``data_card.json`` of a data directory."""
    return read_json_artifact(Path(path) / DATA_CARD, "data")
