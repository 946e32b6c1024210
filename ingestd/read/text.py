"""Text PostgreSQL can hold: a NUL byte in a value is refused here, naming its row.

PostgreSQL stores no NUL in text and says so while COPY decodes its input, ahead of
parsing it, so the line it names depends on how the batch was cut. Found here, the
row is the same whichever way the file went.
"""

from __future__ import annotations

import re

import pyarrow as pa

from ingestd.exceptions import FileError
from ingestd.lazy import pyarrow_compute as pc  # imported at first use (lazy.py)

_NUL = re.compile(b"\x00")


def refuse_nul(batch: pa.RecordBatch, first_row: int) -> None:
    """Raise a FileError naming the first row (numbered from first_row) of `batch` whose
    text holds a NUL byte, and the first such column of that row."""
    found: tuple[int, int] | None = None  # (row in batch, column index)
    for index, column in enumerate(batch.columns):
        if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
            continue
        data = column.buffers()[2]
        # Searched in place; a slice's buffer may hold other rows, so only a hit is checked.
        if data is None or _NUL.search(memoryview(data)) is None:
            continue
        hits = pc.match_substring(column, "\x00")
        at = pc.index(hits, True).as_py()
        # The earliest row wins, whichever column it is in: every path (one row per batch
        # or many) must name the same row.
        if at >= 0 and (found is None or at < found[0]):
            found = (at, index)
    if found is None:
        return
    name, row = batch.schema.names[found[1]], first_row + found[0]
    raise FileError(
        f'invalid byte sequence for encoding "UTF8": 0x00 (row {row}, column {name}): '
        "PostgreSQL cannot store a NUL byte in text; remove it from the file",
        row=row,
    )
