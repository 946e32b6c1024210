"""Readers: yield Arrow record batches of at most chunk-size rows from CSV, NDJSON, Parquet."""

from __future__ import annotations

import contextlib
import os

import pyarrow as pa

from ingestd.exceptions import FileError
from ingestd.read.batches import (
    CSV_BLOCK_BYTES,
    DEFAULT_MEMORY_LIMIT_BYTES,
    FILE_READ_ERRORS,
    BatchReader,
    FileLayout,
    Limits,
    arrow_file_error,
    rebatch,
    skip_rows,
)
from ingestd.read.compression import COMPRESSIONS, MAGIC_BYTES, check_compression
from ingestd.read.csv_reader import open_csv
from ingestd.read.ndjson_reader import open_ndjson
from ingestd.read.parquet_reader import open_parquet, pg_type_for
from ingestd.settings import Contract
from ingestd.storage import Openable, open_bytes

__all__ = [
    "CSV_BLOCK_BYTES",
    "CSV_SUFFIXES",
    "DEFAULT_MEMORY_LIMIT_BYTES",
    "NDJSON_SUFFIXES",
    "PARQUET_SUFFIXES",
    "BatchReader",
    "FileLayout",
    "Limits",
    "arrow_file_error",
    "detect_type",
    "guess_file_type",
    "open_reader",
    "pg_type_for",
    "rebatch",
    "release_memory_promptly",
    "skip_rows",
]

PARQUET_SUFFIXES = (".parquet", ".pq", ".parq")
# Text formats, plain or compressed (.csv.zst, .jsonl.gz: see read.compression).
CSV_SUFFIXES = tuple(f"{b}{c}" for b in (".csv", ".tsv", ".txt") for c in ("", *COMPRESSIONS))
NDJSON_SUFFIXES = tuple(f"{b}{c}" for b in (".jsonl", ".ndjson") for c in ("", *COMPRESSIONS))


def release_memory_promptly() -> None:
    """Have Arrow's allocator give freed memory back to the OS at once.

    By default jemalloc keeps freed pages for a while, so a steady stream of batches
    shows as twice the memory it needs; with decay 0 peak RSS follows what is in use.
    pyarrow's default became mimalloc, which held ~20 MB more per Parquet load (bench):
    jemalloc is chosen where the wheel has it, unless ARROW_DEFAULT_MEMORY_POOL says.
    """
    if "ARROW_DEFAULT_MEMORY_POOL" not in os.environ:
        with contextlib.suppress(NotImplementedError):  # a build without jemalloc
            pa.set_memory_pool(pa.jemalloc_memory_pool())
    if pa.default_memory_pool().backend_name == "jemalloc":
        pa.jemalloc_set_decay_ms(0)


def guess_file_type(name: str) -> str:
    """csv, ndjson, parquet or unknown, from a file name alone (for metrics labels and routing)."""
    lower = name.lower()
    if lower.endswith(PARQUET_SUFFIXES):
        return "parquet"
    if lower.endswith(NDJSON_SUFFIXES):
        return "ndjson"
    return "csv" if lower.endswith(CSV_SUFFIXES) else "unknown"


def detect_type(path: Openable, contract: Contract) -> str:
    """csv, ndjson or parquet, from the contract or the file name (and the magic bytes of
    Parquet and of each compression)."""
    file_type: str = contract.file_type
    if file_type == "auto":
        file_type = guess_file_type(path.name)
        if file_type == "unknown":
            raise FileError(
                f"cannot tell whether {path.name} is CSV, NDJSON or Parquet from its name: "
                "use a .csv/.csv.zst/.jsonl/.parquet suffix or set file_type in the contract"
            )
    with open_bytes(path) as fh:
        head = fh.read(MAGIC_BYTES)
    magic = head[:4]
    if file_type in ("csv", "ndjson"):
        check_compression(path.name, head)
    if file_type == "parquet" and magic == b"PARE":
        # An encrypted footer: only the key holder can read even the schema.
        raise FileError(
            f"{path.name} is an encrypted Parquet file (encrypted footer), and ingestd "
            "cannot decrypt Parquet: decrypt it before loading"
        )
    if file_type == "parquet" and magic != b"PAR1":
        raise FileError(f"{path.name} is not a Parquet file (no PAR1 magic bytes)")
    if file_type == "csv" and magic in (b"PAR1", b"PARE"):
        raise FileError(
            f"{path.name} is a Parquet file with a CSV name: rename it to .parquet "
            "or set file_type = parquet in its contract"
        )
    return file_type


def open_reader(
    path: Openable,
    contract: Contract,
    chunk_size: int,
    memory_limit_bytes: int = DEFAULT_MEMORY_LIMIT_BYTES,
) -> BatchReader:
    """Open `path` under `contract`; raises FileError when the file cannot be loaded."""
    file_type = detect_type(path, contract)
    limits = Limits(chunk_size, memory_limit_bytes)
    try:
        if file_type == "parquet":
            return open_parquet(path, contract, limits)
        if file_type == "ndjson":
            return open_ndjson(path, contract, limits)
        return open_csv(path, contract, limits)
    except FILE_READ_ERRORS as exc:
        header_rows = 1 if file_type == "csv" and contract.csv.header else 0
        error = arrow_file_error(exc, header_rows)
        if (
            file_type == "parquet"
            and "Parquet" not in str(error)
            and "cannot read" not in str(error)
        ):
            # pyarrow's schema errors ("Map keys must be annotated as required") say nothing
            # of where they come from.
            error = FileError(f"not a readable Parquet file: {error}")
        raise error from None
