"""The raw path's cheap checks answer as the plain definitions they replace: line_marks as
three bytes.find calls (blank line, CRLF blank line, a line starting with \\.), on small
data (Python regex) and large (RE2), with the marks anywhere, at the edges and past `end`."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingestd.read import quoting
from ingestd.read.quoting import line_marks
from ingestd.read.raw_csv import NotRaw, raw_csv
from ingestd.settings import CsvOptions

_NEEDLES = (b"\n\n", b"\n\r\n", b"\n\\.")


def _reference(data: bytes, end: int) -> bool:
    return any(data.find(needle, 0, end) >= 0 for needle in _NEEDLES)


_PIECES = [b"a", b";", b'"', b"\n", b"\r", b"\r\n", b"\\", b".", b"\\.", b"\xe9", b"\x00"]


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(_PIECES), max_size=40), st.integers(0, 45), st.booleans())
def test_line_marks_answers_as_find(pieces: list[bytes], cut: int, large: bool) -> None:
    body = b"".join(pieces)
    # Large: the marks (or none) after a clean prefix long enough for the RE2 path.
    prefix = b"x;y\n" * (quoting._RE2_FROM // 4 + 1) if large else b""
    data = prefix + body
    end = min(len(data), len(prefix) + cut)
    assert line_marks(data, end) is _reference(data, end), (data[-60:], end)


@pytest.mark.parametrize("size", [100, quoting._RE2_FROM * 4])
@pytest.mark.parametrize("mark", [b"\n\n", b"\n\r\n", b"\n\\.", b""])
@pytest.mark.parametrize("where", ["start", "middle", "end", "past_end"])
def test_line_marks_finds_a_mark_anywhere_up_to_end(size: int, mark: bytes, where: str) -> None:
    row = b'"1";"a"\n'
    rows = row * (size // len(row))
    if where == "start":
        data, end = mark[1:] + rows, None
    elif where == "middle":
        half = (len(rows) // 2 // len(row)) * len(row)
        data, end = rows[:half] + mark[1:] + rows[half:], None
    elif where == "end":
        data, end = rows + mark[1:], None
    else:  # the mark lies after `end`: not looked at
        data, end = rows + mark[1:] + rows, len(rows) - 1
    stop = len(data) if end is None else end
    assert line_marks(data, stop) is _reference(data, stop)


def _batches(tmp_path: Path, text: bytes) -> None:
    path = tmp_path / "f.csv"
    path.write_bytes(text)
    raw = raw_csv(path, CsvOptions(header=False), names_match=True, compressed=False)
    assert raw is not None
    for _ in raw.batches(chunk_rows=10**6, max_bytes=64 << 20):
        pass


@pytest.mark.parametrize("rows", [10, 20_000])
def test_the_reasons_stay_those_of_each_mark(tmp_path: Path, rows: int) -> None:
    body = b'"1","a"\n' * rows
    with pytest.raises(NotRaw, match="blank line"):
        _batches(tmp_path, body + b"\n" + body)
    with pytest.raises(NotRaw, match="blank line"):
        _batches(tmp_path, body + b"\r\n" + body)
    with pytest.raises(NotRaw, match=r"a line starting with \\\."):
        _batches(tmp_path, body + b"\\.\n" + body)
    with pytest.raises(NotRaw, match=r"a line starting with \\\."):
        _batches(tmp_path, b"\\.\n" + body)
    _batches(tmp_path, body + b'"\\.",".\\"\n' + body)  # \. inside a field: plain
