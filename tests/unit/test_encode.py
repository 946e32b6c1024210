"""Record batch -> CSV bytes for COPY: quoting, NULL vs '', and the row ordinal column."""

from __future__ import annotations

import csv
import datetime as dt
import io

import pyarrow as pa
import pytest

from ingestd.encode import encode_batch, record_at_line


def enc(batch: pa.RecordBatch, first_row: int, **options: bool) -> bytes:
    return bytes(encode_batch(batch, first_row, **options))


def test_without_ordinal_for_append() -> None:
    batch = pa.record_batch({"a": ["x", None]})
    assert enc(batch, 1, ordinal=False) == b'"x"\n\n'


TRICKY = ["plain", 'say "hi"', "a,b", "line1\nline2", "cr\r\nlf", "  padded  ", "é ü 中", "\\N"]


def parse(payload: bytes) -> list[list[str]]:
    return list(csv.reader(io.StringIO(payload.decode("utf-8"), newline="")))


def test_strings_are_quoted_and_ordinal_appended() -> None:
    batch = pa.record_batch([pa.array(["a", "b"]), pa.array(["x", "y"])], names=["c1", "c2"])
    assert enc(batch, 1) == b'"a","x",1\n"b","y",2\n'


def test_null_is_empty_unquoted_and_empty_string_is_quoted() -> None:
    batch = pa.record_batch([pa.array([None, "", "v"], pa.string())], names=["s"])
    assert enc(batch, 7) == b',7\n"",8\n"v",9\n'


def test_ordinal_starts_at_first_row() -> None:
    batch = pa.record_batch([pa.array(["a", "b", "c"])], names=["s"])
    rows = parse(enc(batch, 50_001))
    assert [r[-1] for r in rows] == ["50001", "50002", "50003"]


def test_no_header_line() -> None:
    batch = pa.record_batch([pa.array(["only"])], names=["column_name"])
    assert b"column_name" not in enc(batch, 1)


@pytest.mark.parametrize("value", TRICKY)
def test_tricky_values_round_trip(value: str) -> None:
    batch = pa.record_batch([pa.array([value]), pa.array(["next"])], names=["a", "b"])
    assert parse(enc(batch, 3)) == [[value, "next", "3"]]


def test_many_tricky_values_round_trip() -> None:
    batch = pa.record_batch([pa.array(TRICKY), pa.array(list(reversed(TRICKY)))], names=["a", "b"])
    expected = [
        [a, b, str(i + 1)] for i, (a, b) in enumerate(zip(TRICKY, reversed(TRICKY), strict=True))
    ]
    assert parse(enc(batch, 1)) == expected


def test_embedded_quote_is_doubled() -> None:
    batch = pa.record_batch([pa.array(['x"y'])], names=["s"])
    assert enc(batch, 1) == b'"x""y",1\n'


def test_typed_columns_are_written_as_postgres_readable_text() -> None:
    batch = pa.record_batch(
        [
            pa.array([1, None], pa.int64()),
            pa.array([1.5, 2.0], pa.float64()),
            pa.array([True, False]),
            pa.array([dt.date(2024, 2, 29), None], pa.date32()),
        ],
        names=["i", "f", "b", "d"],
    )
    rows = parse(enc(batch, 1))
    assert rows[0] == ["1", "1.5", "true", "2024-02-29", "1"]
    assert rows[1][0] == "" and rows[1][3] == ""
    assert rows[1][-1] == "2"


def test_empty_batch_gives_no_bytes() -> None:
    batch = pa.record_batch([pa.array([], pa.string())], names=["s"])
    assert enc(batch, 1) == b""


def test_encoding_does_not_modify_the_batch() -> None:
    batch = pa.record_batch([pa.array(["a"])], names=["s"])
    enc(batch, 1)
    assert batch.schema.names == ["s"]


def test_record_at_line_maps_copy_line_numbers_to_rows() -> None:
    # COPY skips the first record's inner line breaks when it numbers lines: record 2
    # starts on physical line 3, which COPY calls line 2.
    payload = b'1,"a\nb"\n2,c\n3,"d\n\ne"\n4,f\n'
    lines = {1: 1, 2: 2, 3: 3, 4: 3, 5: 3, 6: 4}
    assert {line: record_at_line(payload, line) for line in lines} == lines
    assert record_at_line(b"1;'a\nb'\n2;c\n", 2, quote="'") == 2
    assert record_at_line(b"1,a\n2,'b\nc'\n3,d\n", 4, quote="'") == 3
