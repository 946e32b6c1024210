"""read.text: the NUL byte PostgreSQL cannot store is named by its row, the same on every path."""

from __future__ import annotations

import pyarrow as pa
import pytest

from ingestd.exceptions import FileError
from ingestd.read.text import refuse_nul


def test_the_earliest_row_is_named_whichever_column_holds_the_nul() -> None:
    # A later column's NUL comes first in the file: one row per batch would name row 2,
    # so a batch of many rows must name it too (not column a's NUL at row 3).
    batch = pa.record_batch({"a": ["x", "y", "z\x00"], "b": ["x", "y\x00", "z"]})
    with pytest.raises(FileError, match=r"\(row 11, column b\)") as caught:
        refuse_nul(batch, 10)
    assert caught.value.row == 11


def test_two_nuls_in_one_row_name_its_first_column() -> None:
    batch = pa.record_batch({"a": ["x", "\x00"], "b": ["x", "\x00"]})
    with pytest.raises(FileError, match=r"\(row 2, column a\)"):
        refuse_nul(batch, 1)


def test_text_without_nul_passes() -> None:
    refuse_nul(pa.record_batch({"a": ["x", None], "n": pa.array([1, 2])}), 1)
