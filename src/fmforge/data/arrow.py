"""Arrow arrays from Python values, parquet reads and numpy views that keep
pandas out of the process.

pyarrow imports pandas, when it is installed, the first time it converts a
Python list or a numpy array (``pa.array``), reads a file through
``pq.read_table`` (the dataset API) or turns an array into numpy
(``Array.to_numpy``): each asks whether its argument is a pandas object. The
import adds about 50 MB to a process's resident memory (pyarrow 26, pandas 3),
in the stage's driver and in every worker, for nothing the stage uses. So the
data stage and the tokenize stage build their arrays from buffers, read parquet
through ``pq.ParquetFile`` and view numeric columns through their buffers;
none of these asks about pandas.
"""

from __future__ import annotations

from typing import Any, BinaryIO, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

_OFFSET_LIMIT = 2**31 - 1  # pa.string()'s int32 offsets


def strings(values: Sequence[str]) -> pa.Array:
    """``values`` as a ``pa.string()`` array (a chunked one past 2 GiB of text),
    as ``pa.array(values, pa.string())`` would make it."""
    encoded = [v.encode("utf-8") for v in values]
    lengths = np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded))
    ends = np.cumsum(lengths)
    if len(ends) and ends[-1] > _OFFSET_LIMIT:  # split where a chunk would pass the int32 offsets
        cut = max(1, int(np.searchsorted(ends, _OFFSET_LIMIT, side="right")))
        first, rest = strings(values[:cut]), strings(values[cut:])
        return pa.chunked_array([*_chunks(first), *_chunks(rest)], pa.string())
    offsets = np.zeros(len(encoded) + 1, dtype=np.int32)
    offsets[1:] = ends
    return pa.Array.from_buffers(pa.string(), len(encoded), [None, pa.py_buffer(offsets),
                                                             pa.py_buffer(b"".join(encoded))])


def _chunks(a: pa.Array | pa.ChunkedArray) -> list[pa.Array]:
    return a.chunks if isinstance(a, pa.ChunkedArray) else [a]


def fixed_binary(values: Sequence[bytes], width: int) -> pa.Array:
    """``values`` (each ``width`` bytes) as a ``pa.binary(width)`` array."""
    if any(len(v) != width for v in values):
        raise ValueError(f"every value must be {width} bytes")
    return pa.Array.from_buffers(pa.binary(width), len(values), [None, pa.py_buffer(b"".join(values))])


def numbers(values: Sequence[int] | np.ndarray, type: pa.DataType) -> pa.Array:
    """Integers as an array of ``type`` (no nulls)."""
    a = np.ascontiguousarray(values, dtype=type.to_pandas_dtype())
    return pa.Array.from_buffers(type, len(a), [None, pa.py_buffer(a)])


def column(values: Sequence[Any], type: pa.DataType) -> pa.Array:
    """One column of ``type`` (a string, a fixed-size binary or an integer type)."""
    if pa.types.is_string(type):
        return strings(values)
    if pa.types.is_fixed_size_binary(type):
        return fixed_binary(values, type.byte_width)
    if pa.types.is_integer(type):
        return numbers(values, type)
    raise TypeError(f"no buffer builder for {type}")


def table(rows_by_column: Sequence[Sequence[Any]], schema: pa.Schema) -> pa.Table:
    """A table of ``schema`` from its columns' values."""
    return pa.Table.from_arrays([column(v, f.type) for v, f in zip(rows_by_column, schema)], schema=schema)


def record_batch(rows_by_column: Sequence[Sequence[Any]], schema: pa.Schema) -> pa.RecordBatch:
    arrays = [column(v, f.type) for v, f in zip(rows_by_column, schema)]
    return pa.RecordBatch.from_arrays([pa.concat_arrays(_chunks(a)) if isinstance(a, pa.ChunkedArray) else a
                                       for a in arrays], schema=schema)


def read_parquet(source: str | BinaryIO, columns: list[str] | None = None, use_threads: bool = True) -> pa.Table:
    """A whole parquet file, as ``pq.read_table`` reads it. ``use_threads=False``: one
    thread, and less memory kept by the allocator's per-thread caches."""
    return pq.ParquetFile(source).read(columns=columns, use_threads=use_threads)


def to_numpy(values: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A numeric column without nulls as a numpy array (a copy)."""
    parts = []
    for chunk in _chunks(values):
        if chunk.null_count:
            raise ValueError("to_numpy: the column has nulls")
        dtype = np.dtype(chunk.type.to_pandas_dtype())
        buf = chunk.buffers()[1]
        parts.append(np.frombuffer(buf, dtype=dtype, count=chunk.offset + len(chunk))[chunk.offset:])
    if not parts:
        return np.zeros(0, dtype=np.dtype(values.type.to_pandas_dtype()))
    return np.concatenate(parts)
