"""The raw CSV segmenter: row-aligned cuts outside quotes, and when a file may go raw."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest

from ingestd.read.raw_csv import NotRaw, raw_csv
from ingestd.settings import CsvOptions


def _file(tmp_path: Path, data: bytes, name: str = "f.csv") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def _segments(path: Path, opts: CsvOptions, rows: int, max_bytes: int = 1 << 20) -> list[bytes]:
    raw = raw_csv(path, opts, names_match=True, compressed=False)
    assert raw is not None
    return [bytes(segment) for segment in raw.segments(rows, max_bytes)]


def test_segments_cut_only_between_rows_and_cover_the_file(tmp_path: Path) -> None:
    rows = [f'{i},"a ""quoted"" value\nover two lines, with a comma"\n' for i in range(500)]
    path = _file(tmp_path, ("id,v\n" + "".join(rows)).encode())
    segments = _segments(path, CsvOptions(), 40)
    assert len(segments) > 5
    assert b"".join(segments).decode() == "".join(rows)  # header skipped, nothing lost
    for segment in segments:
        parsed = list(csv.reader(io.StringIO(segment.decode())))
        assert all(len(r) == 2 for r in parsed)  # every segment holds whole rows


def test_header_and_utf8_bom_are_skipped(tmp_path: Path) -> None:
    path = _file(tmp_path, b"\xef\xbb\xbfid,v\n1,a\n2,b\n")
    assert _segments(path, CsvOptions(), 10) == [b"1,a\n2,b\n"]


def test_no_header_keeps_the_first_line(tmp_path: Path) -> None:
    path = _file(tmp_path, b"1;a\n2;b")
    assert b"".join(_segments(path, CsvOptions(delimiter=";", header=False), 10)) == b"1;a\n2;b"


def test_a_blank_line_means_not_raw(tmp_path: Path) -> None:
    path = _file(tmp_path, b"id,v\n1,a\n\n2,b\n")
    with pytest.raises(NotRaw):
        _segments(path, CsvOptions(), 10)


def test_an_end_of_data_marker_line_means_not_raw(tmp_path: Path) -> None:
    path = _file(tmp_path, b"v\na\n\\.\nb\n")
    with pytest.raises(NotRaw):
        _segments(path, CsvOptions(), 10)


def test_a_row_bigger_than_a_batch_means_not_raw(tmp_path: Path) -> None:
    path = _file(tmp_path, b"id,v\n1,a\n2," + b"x" * 5000 + b"\n3,c\n")
    with pytest.raises(NotRaw):
        _segments(path, CsvOptions(), 1, max_bytes=1000)


@pytest.mark.parametrize(
    ("data", "opts", "compressed", "names_match"),
    [
        (b"id,v\n1,a\n", CsvOptions(), True, True),  # gzip: Arrow decompresses
        (b"id,v\n1,a\n", CsvOptions(), False, False),  # columns selected or reordered
        (b"id,v\r1,a\r", CsvOptions(), False, True),  # old Mac line ends
        (b'"id\nx",v\n1,a\n', CsvOptions(), False, True),  # a header spanning lines
        (b"id,v\n1,a\n", CsvOptions(encoding="shift_jis"), False, True),  # no COPY ENCODING
    ],
)
def test_files_that_go_through_arrow(
    tmp_path: Path, data: bytes, opts: CsvOptions, compressed: bool, names_match: bool
) -> None:
    assert raw_csv(_file(tmp_path, data), opts, names_match, compressed) is None


@pytest.mark.parametrize(
    ("encoding", "pg"), [("utf-8", "UTF8"), ("latin-1", "LATIN1"), ("cp1252", "WIN1252")]
)
def test_copy_is_told_the_encoding(tmp_path: Path, encoding: str, pg: str) -> None:
    raw = raw_csv(_file(tmp_path, b"id\n1\n"), CsvOptions(encoding=encoding), True, False)
    assert raw is not None and raw.pg_encoding == pg
