"""The raw CSV segmenter: row-aligned cuts outside quotes, and when a file may go raw."""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingestd.read.quoting import OpenQuotes, lenient_row_end, plain_quoting
from ingestd.read.raw_csv import NotRaw, count_rows, raw_csv, split_points
from ingestd.settings import CsvOptions


def _file(tmp_path: Path, data: bytes, name: str = "f.csv") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def _segments(path: Path, opts: CsvOptions, rows: int, max_bytes: int = 1 << 20) -> list[bytes]:
    raw = raw_csv(path, opts, names_match=True, compressed=False)
    assert raw is not None
    return [bytes(segment) for segment in raw.batches(rows, max_bytes)]


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


def _raw(path: Path, opts: CsvOptions | None = None):  # type: ignore[no-untyped-def]
    raw = raw_csv(path, opts or CsvOptions(), names_match=True, compressed=False)
    assert raw is not None
    return raw


def test_split_points_cut_between_rows_into_about_equal_parts(tmp_path: Path) -> None:
    # Every row holds a quoted line break, and the quotes only pair up counted from the top.
    rows = [f'{i},"one\n{"x" * (i % 50)} two"\n' for i in range(3000)]
    path = _file(tmp_path, ("id,v\n" + "".join(rows)).encode())
    raw = _raw(path)
    ends = split_points(raw, 4)
    size = path.stat().st_size
    assert len(ends) == 4 and ends[-1] == size and ends == sorted(set(ends))
    starts = [raw.start, *ends[:-1]]
    parts = [path.read_bytes()[a:b] for a, b in zip(starts, ends, strict=True)]
    for part in parts:
        assert abs(len(part) - (size - raw.start) / 4) < 200  # about equal
        assert re.match(rb'\d+,"one\n', part) and part.endswith(b' two"\n')  # whole rows
    assert [count_rows(raw, end) for end in ends][-1] == 3000
    assert sum(len(list(csv.reader(io.StringIO(p.decode())))) for p in parts) == 3000


def test_segment_pieces_stay_inside_their_byte_range(tmp_path: Path) -> None:
    path = _file(tmp_path, b"id,v\n" + b"".join(b"%d,x\n" % i for i in range(1000)))
    raw = _raw(path)
    ends = split_points(raw, 3)
    start = raw.start
    for end in ends:
        pieces = [bytes(p) for p in raw.batches(50, 1 << 20, start, end)]
        assert b"".join(pieces) == path.read_bytes()[start:end]
        assert all(p.endswith(b"\n") for p in pieces)
        start = end


def test_split_of_a_file_with_one_huge_row_gives_fewer_parts(tmp_path: Path) -> None:
    path = _file(tmp_path, b'id,v\n1,"' + b"y\n" * 5000 + b'"\n2,z\n')
    ends = split_points(_raw(path), 4)
    assert ends == [path.stat().st_size - 4, path.stat().st_size]  # the big row is whole


def test_count_rows_counts_records_not_lines(tmp_path: Path) -> None:
    path = _file(tmp_path, b'id,v\n1,"a\nb"\n2,c\n3,"d\n\ne"\n')
    raw = _raw(path)
    data = path.read_bytes()
    assert count_rows(raw, data.index(b"2,c")) == 1
    assert count_rows(raw, data.index(b"3,")) == 2
    assert count_rows(raw, len(data)) == 3


def test_count_rows_skips_blank_lines_as_the_readers_do(tmp_path: Path) -> None:
    path = _file(tmp_path, b'id,v\n1,a\n\n\r\n2,"\n\nb"\n3,c\n')
    assert count_rows(_raw(path), path.stat().st_size) == 3


# --- quotes COPY would read otherwise (issue 12) -----------------------------------------


@pytest.mark.parametrize(
    ("data", "plain"),
    [
        (b"1,a\n2,b\n", True),
        (b'1,"a ""b"", c"\n2,"x\ny"\r\n', True),
        (b'1,""\n"",2\n"",""', True),
        (b'1,5" screen\n2,7" screen\n', False),  # inch marks: a quote inside a field
        (b"1,37\xc2\xb036'37.8\"N\n", False),
        (b'1,"ab"c"\n', False),  # a quote closing before something else
        (b'1,"a" \n', False),
        (b'1,"a""\n', False),  # never closed
        (b'1,"open\n2,x\n', False),
        (b'1,a"\n', False),
        (b"1,a\r2,b\n", False),  # a lone carriage return
        (b'1,"a\rb"\n', False),  # even quoted: COPY and the readers disagree on line ends
    ],
)
def test_plain_quoting_tells_what_copy_reads_alike(data: bytes, plain: bool) -> None:
    assert plain_quoting(data, len(data), ",", '"') is plain


@pytest.mark.parametrize("delimiter", [",", ";", "|", "\t"])
def test_plain_quoting_follows_the_delimiter(delimiter: str) -> None:
    data = f'1{delimiter}"a{delimiter}b"{delimiter}"c"\n'.encode()
    assert plain_quoting(data, len(data), delimiter, '"')
    other = ";" if delimiter != ";" else ","
    odd = f'1{other}"a"{delimiter}b\n'.encode()  # the quote opens after a non-delimiter
    assert not plain_quoting(odd, len(odd), delimiter, '"')


def test_plain_quoting_looks_only_up_to_end() -> None:
    data = b'1,a\n2,5" screen\n'
    assert plain_quoting(data, 4, ",", '"') and not plain_quoting(data, len(data), ",", '"')


def _lenient(text: str, delimiter: str) -> tuple[bool, bool]:
    """Reference, character by character: (ends inside a quoted field, every quote plain)."""
    inside = after = False
    at_start, plain = True, True
    for char in text + "\x00":  # a sentinel to settle a last closing quote
        if inside and after:
            after = False
            if char == '"':
                continue
            inside = False
            plain &= char in (delimiter, "\n", "\r", "\x00")
        elif inside:
            after = char == '"'
            continue
        if char == '"' and at_start:
            inside, at_start = True, False
            continue
        plain &= char != '"'
        at_start = char in (delimiter, "\n", "\r")
    plain &= "\r" not in text.replace("\r\n", "")
    return inside, plain and not inside


@settings(max_examples=1500)
@given(
    st.sampled_from([",", ";", "|", "\t"]),
    st.lists(st.sampled_from(["a", '"', '""', "\n", "\r\n", "\r", " ", ",", ";", "|", "\t"])),
    st.lists(st.integers(1, 9), max_size=8),
)
def test_open_quotes_and_plain_quoting_agree_with_a_reference(
    delimiter: str, parts: list[str], cuts: list[int]
) -> None:
    text = "".join(parts)
    data = text.encode()
    never_closed, plain = _lenient(text, delimiter)
    assert plain_quoting(data, len(data), delimiter, '"') is plain
    quotes = OpenQuotes(delimiter, '"')
    at = 0
    for cut in cuts:  # blocks cut anywhere, even between a doubled quote
        quotes.feed(data[at : at + cut])
        at += cut
    quotes.feed(data[at:])
    assert quotes.open is never_closed


def test_inch_marks_mean_not_raw_and_split_points_refuse_them(tmp_path: Path) -> None:
    path = _file(tmp_path, b'id,v\n1,5" screen\n2,7" screen\n3,x\n')
    with pytest.raises(NotRaw, match="quote inside a field"):
        _segments(path, CsvOptions(), 10)
    with pytest.raises(NotRaw):
        split_points(_raw(path), 2)


def test_a_stray_quote_late_in_the_file_still_stops_a_split(tmp_path: Path) -> None:
    rows = b"".join(b'%d,"a, b"\n' % i for i in range(5000))
    path = _file(tmp_path, b"id,v\n" + rows + b'5000,a "b" c\n' + rows)
    with pytest.raises(NotRaw):
        split_points(_raw(path), 2, max_bytes=1 << 20)


def test_a_header_with_odd_quotes_goes_through_arrow(tmp_path: Path) -> None:
    assert raw_csv(_file(tmp_path, b'i"d,v\n1,a\n'), CsvOptions(), True, False) is None


@pytest.mark.parametrize("encoding", ["utf-8", "latin-1", "cp1252", "iso8859-2"])
def test_a_utf8_bom_is_skipped_in_any_encoding(tmp_path: Path, encoding: str) -> None:
    path = _file(tmp_path, b"\xef\xbb\xbfid,v\n1,a\n")
    raw = raw_csv(path, CsvOptions(encoding=encoding), True, False)
    assert raw is not None and raw.start == len(b"\xef\xbb\xbfid,v\n")


def _last_row_end(text: str, delimiter: str) -> int | None:
    """Reference: offset after the last line feed outside quotes (lenient), char by char."""
    inside = after = False
    at_start, last = True, None
    for at, char in enumerate(text):
        if inside and after:
            after = False
            if char == '"':
                continue
            inside = False
        elif inside:
            after = char == '"'
            continue
        if char == '"' and at_start:
            inside, at_start = True, False
            continue
        at_start = char in (delimiter, "\n", "\r")
        if char == "\n":
            last = at + 1
    return last


@settings(max_examples=1500)
@given(
    st.sampled_from([",", ";", "|", "\t"]),
    st.lists(st.sampled_from(["a", '"', '""', "\n", "\r\n", "\r", " ", ",", ";", "|", "\t"])),
)
def test_lenient_row_end_agrees_with_a_reference(delimiter: str, parts: list[str]) -> None:
    text = "".join(parts)  # ASCII: offsets in characters are offsets in bytes
    assert lenient_row_end(text.encode(), len(text), delimiter, '"') == _last_row_end(
        text, delimiter
    )


def test_pieces_of_a_file_with_stray_quotes_are_whole_rows(tmp_path: Path) -> None:
    rows = [f'{i},5" screen,"a\nb"\n' for i in range(300)]
    path = _file(tmp_path, ("id,v,w\n" + "".join(rows)).encode())
    pieces = [bytes(p) for p in _raw(path).pieces(7, 1 << 20)]
    assert len(pieces) > 10 and b"".join(pieces).decode() == "".join(rows)
    for piece in pieces:
        parsed = list(csv.reader(io.StringIO(piece.decode(), newline="")))
        assert all(len(r) == 3 and r[2] == "a\nb" for r in parsed)


def test_plain_quoting_of_a_large_buffer_checks_it_in_steps_of_whole_rows() -> None:
    rows = b"".join(b'%d,"a ""b""\nc",d\n' % i for i in range(40000))  # ~0.7 MB
    big_field = b'1,"' + b"x\n" * 300_000 + b'"\n'  # one field over a step, many lines
    for data in (rows, big_field + rows, rows + big_field):
        assert plain_quoting(data, len(data), ",", '"')
    late = rows + b'5,5" screen\n'
    assert not plain_quoting(late, len(late), ",", '"')
