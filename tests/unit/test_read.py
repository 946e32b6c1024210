"""CSV and Parquet readers: record batches of at most chunk_size rows, in contract order."""

from __future__ import annotations

import datetime as dt
import decimal
import gzip
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ingestd.encode import encode_batch
from ingestd.exceptions import FileError
from ingestd.read import BatchReader, open_reader, rebatch, skip_rows
from ingestd.settings import Contract, CsvOptions


def contract(**kw: Any) -> Contract:
    return Contract(name="c", pattern="*", table="t", **kw)


def write_bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def rows_of(reader: BatchReader) -> list[dict[str, Any]]:
    return [row for batch in reader for row in batch.to_pylist()]


def read_rows(
    path: Path, c: Contract | None = None, chunk_size: int = 1000
) -> list[dict[str, Any]]:
    return rows_of(open_reader(path, c or contract(), chunk_size))


def copied_text(path: Path, c: Contract | None = None) -> list[bytes]:
    """The CSV lines COPY receives on the text path (encode writes decimals and bytes as
    PostgreSQL prints them; the reader keeps them typed for the binary path)."""
    lines: list[bytes] = []
    for batch in open_reader(path, c or contract(), 1000):
        lines.extend(bytes(encode_batch(batch, 1, ordinal=False)).splitlines())
    return lines


# --- CSV dialects -------------------------------------------------------------------------


@pytest.mark.parametrize("delimiter", [",", ";", "\t", "|"])
def test_csv_delimiters(tmp_path: Path, delimiter: str) -> None:
    text = delimiter.join(["id", "name"]) + "\n" + delimiter.join(["1", "Ann"]) + "\n"
    path = write_bytes(tmp_path / "d.csv", text.encode())
    c = contract(csv=CsvOptions(delimiter=delimiter))
    reader = open_reader(path, c, 10)
    assert reader.layout.columns == ("id", "name")
    assert reader.layout.pg_types == ("text", "text")
    assert reader.layout.file_type == "csv"
    assert rows_of(reader) == [{"id": "1", "name": "Ann"}]


def test_csv_quoted_fields(tmp_path: Path) -> None:
    data = b'id,note\n1,"a,b"\n2,"say ""hi"""\n3,"line1\nline2"\n4,"x\r\ny"\n'
    rows = read_rows(write_bytes(tmp_path / "q.csv", data))
    assert rows == [
        {"id": "1", "note": "a,b"},
        {"id": "2", "note": 'say "hi"'},
        {"id": "3", "note": "line1\nline2"},
        {"id": "4", "note": "x\r\ny"},
    ]


def test_csv_other_quote_char(tmp_path: Path) -> None:
    data = b"id;note\n1;'a;b'\n"
    c = contract(csv=CsvOptions(delimiter=";", quote="'"))
    assert read_rows(write_bytes(tmp_path / "q.csv", data), c) == [{"id": "1", "note": "a;b"}]


def test_csv_latin1(tmp_path: Path) -> None:
    path = write_bytes(tmp_path / "l.csv", "id,city\n1,São Paulo\n2,Zürich\n".encode("latin-1"))
    c = contract(csv=CsvOptions(encoding="latin-1"))
    assert read_rows(path, c) == [{"id": "1", "city": "São Paulo"}, {"id": "2", "city": "Zürich"}]


def test_csv_latin1_bytes_read_as_utf8_fail_cleanly(tmp_path: Path) -> None:
    path = write_bytes(tmp_path / "l.csv", "id,city\n1,São Paulo\n".encode("latin-1"))
    with pytest.raises(FileError, match="row 1, column city: bytes that are not valid UTF-8"):
        read_rows(path)


def test_csv_utf8_bom_is_not_part_of_the_first_name(tmp_path: Path) -> None:
    path = write_bytes(tmp_path / "b.csv", b"\xef\xbb\xbfid,name\n1,\xc3\xa9\n")
    reader = open_reader(path, contract(pk=("id",)), 10)
    assert reader.layout.columns == ("id", "name")
    assert rows_of(reader) == [{"id": "1", "name": "é"}]


def test_csv_gz(tmp_path: Path) -> None:
    path = write_bytes(tmp_path / "z.csv.gz", gzip.compress(b"id,v\n1,a\n2,b\n"))
    assert read_rows(path) == [{"id": "1", "v": "a"}, {"id": "2", "v": "b"}]


def test_csv_truncated_gz(tmp_path: Path) -> None:
    body = gzip.compress(b"id,v\n" + b"".join(b"%d,abcdefgh\n" % i for i in range(20000)))
    path = write_bytes(tmp_path / "z.csv.gz", body[: len(body) // 2])
    with pytest.raises(FileError):
        read_rows(path)


# --- headers ------------------------------------------------------------------------------


def test_no_header_uses_contract_headers(tmp_path: Path) -> None:
    path = write_bytes(tmp_path / "n.csv", b"1,Ann\n2,Bob\n")
    c = contract(headers=("id", "name"), csv=CsvOptions(header=False))
    reader = open_reader(path, c, 10)
    assert reader.layout.columns == ("id", "name")
    # The first line is data, not a header.
    assert rows_of(reader) == [{"id": "1", "name": "Ann"}, {"id": "2", "name": "Bob"}]


def test_header_in_another_order_lands_in_contract_order(tmp_path: Path) -> None:
    path = write_bytes(tmp_path / "o.csv", b"name,amount,id\nAnn,10,1\nBob,20,2\n")
    c = contract(headers=("id", "name", "amount"), types=(("amount", "integer"),))
    reader = open_reader(path, c, 10)
    assert reader.layout.columns == ("id", "name", "amount")
    assert reader.layout.pg_types == ("text", "text", "integer")
    batches = list(reader)
    assert batches[0].schema.names == ["id", "name", "amount"]
    assert rows_of_batches(batches) == [
        {"id": "1", "name": "Ann", "amount": "10"},
        {"id": "2", "name": "Bob", "amount": "20"},
    ]


def rows_of_batches(batches: list[pa.RecordBatch]) -> list[dict[str, Any]]:
    return [row for batch in batches for row in batch.to_pylist()]


def test_extra_file_columns_are_ignored(tmp_path: Path) -> None:
    path = write_bytes(tmp_path / "x.csv", b"id,junk,name,more\n1,j,Ann,m\n")
    c = contract(headers=("id", "name"))
    reader = open_reader(path, c, 10)
    assert reader.layout.columns == ("id", "name")
    assert rows_of(reader) == [{"id": "1", "name": "Ann"}]


def test_without_contract_headers_the_file_header_is_the_layout(tmp_path: Path) -> None:
    path = write_bytes(tmp_path / "x.csv", b"b,a,c\n1,2,3\n")
    reader = open_reader(path, contract(), 10)
    assert reader.layout.columns == ("b", "a", "c")
    assert rows_of(reader) == [{"b": "1", "a": "2", "c": "3"}]


def test_missing_contract_column_is_a_file_error(tmp_path: Path) -> None:
    path = write_bytes(tmp_path / "m.csv", b"id,name\n1,Ann\n")
    c = contract(pk=("id",), headers=("id", "name", "age"))
    with pytest.raises(FileError, match=r"lacks column\(s\) age.*--tolerant"):
        open_reader(path, c, 10)


@pytest.mark.parametrize(("mode", "fill"), [("null", None), ("empty", "")])
def test_tolerant_fills_missing_columns(tmp_path: Path, mode: str, fill: str | None) -> None:
    path = write_bytes(tmp_path / "m.csv", b"id,name\n1,Ann\n2,Bob\n")
    c = contract(
        pk=("id",),
        headers=("id", "age", "name"),
        tolerant=True,
        tolerant_mode=mode,  # type: ignore[arg-type]
    )
    reader = open_reader(path, c, 10)
    assert reader.layout.columns == ("id", "age", "name")
    assert rows_of(reader) == [
        {"id": "1", "age": fill, "name": "Ann"},
        {"id": "2", "age": fill, "name": "Bob"},
    ]


def test_tolerant_never_fills_a_missing_primary_key(tmp_path: Path) -> None:
    path = write_bytes(tmp_path / "m.csv", b"name\nAnn\n")
    c = contract(pk=("id",), headers=("id", "name"), tolerant=True)
    with pytest.raises(FileError, match=r"lacks column\(s\) id"):
        open_reader(path, c, 10)


def test_primary_key_absent_from_the_file_layout(tmp_path: Path) -> None:
    path = write_bytes(tmp_path / "m.csv", b"name\nAnn\n")
    with pytest.raises(FileError, match="no primary key column id"):
        open_reader(path, contract(pk=("id",)), 10)


@pytest.mark.parametrize("header", [b"id,first name", b"id,id;drop", b'id,"a""b"', b"id,1st"])
def test_invalid_header_names(tmp_path: Path, header: bytes) -> None:
    path = write_bytes(tmp_path / "h.csv", header + b"\n1,2\n")
    with pytest.raises(FileError, match="--headers") as info:
        open_reader(path, contract(), 10)
    assert info.value.row == 1


def test_duplicate_header(tmp_path: Path) -> None:
    path = write_bytes(tmp_path / "h.csv", b"id,name,id\n1,2,3\n")
    with pytest.raises(FileError, match="header names column 'id' twice"):
        open_reader(path, contract(), 10)


def test_empty_file(tmp_path: Path) -> None:
    path = write_bytes(tmp_path / "e.csv", b"")
    with pytest.raises(FileError, match="the file is empty"):
        open_reader(path, contract(), 10)


def test_header_only_file_has_no_batches(tmp_path: Path) -> None:
    path = write_bytes(tmp_path / "e.csv", b"id,name\n")
    assert list(open_reader(path, contract(), 10)) == []


# --- values -------------------------------------------------------------------------------


def test_empty_unquoted_is_null_and_quoted_empty_is_empty_string(tmp_path: Path) -> None:
    path = write_bytes(tmp_path / "v.csv", b'id,a,b\n1,,""\n2,"",\n')
    assert read_rows(path) == [
        {"id": "1", "a": None, "b": ""},
        {"id": "2", "a": "", "b": None},
    ]


def test_values_stay_text(tmp_path: Path) -> None:
    path = write_bytes(tmp_path / "v.csv", b"id,n,f,b\n007,1e3,1.50,true\n")
    reader = open_reader(path, contract(), 10)
    assert all(pa.types.is_string(t) for t in next(iter(reader)).schema.types)
    assert read_rows(path) == [{"id": "007", "n": "1e3", "f": "1.50", "b": "true"}]


# --- batching -----------------------------------------------------------------------------


@pytest.mark.parametrize("chunk_size", [1, 2, 3, 1000])
def test_csv_batches_are_bounded_and_in_order(tmp_path: Path, chunk_size: int) -> None:
    n = 10
    path = write_bytes(tmp_path / "b.csv", b"id\n" + b"".join(b"%d\n" % i for i in range(n)))
    batches = list(open_reader(path, contract(), chunk_size))
    sizes = [b.num_rows for b in batches]
    assert all(0 < s <= chunk_size for s in sizes)
    assert all(s == chunk_size for s in sizes[:-1])  # only the last may be short
    assert sum(sizes) == n
    assert [r["id"] for r in rows_of_batches(batches)] == [str(i) for i in range(n)]


def test_csv_batches_across_parser_blocks(tmp_path: Path) -> None:
    n = 120_000  # several MiB: more than one pyarrow parse block
    body = b"".join(b"%d,%s\n" % (i, b"x" * 40) for i in range(n))
    path = write_bytes(tmp_path / "big.csv", b"id,pad\n" + body)
    batches = list(open_reader(path, contract(), 50_000))
    assert [b.num_rows for b in batches] == [50_000, 50_000, 20_000]
    ids = [int(v) for b in batches for v in b.column("id").to_pylist()]
    assert ids == list(range(n))


# --- malformed CSV ------------------------------------------------------------------------


def test_ragged_row_reports_its_data_row(tmp_path: Path) -> None:
    path = write_bytes(tmp_path / "r.csv", b"id,name\n1,a\n2,b\n3\n4,d\n")
    with pytest.raises(FileError, match="row 3 has 1 fields where 2 were expected") as info:
        read_rows(path)
    assert info.value.row == 3


def test_ragged_row_with_too_many_fields(tmp_path: Path) -> None:
    path = write_bytes(tmp_path / "r.csv", b"id,name\n1,a\n2,b,c\n")
    with pytest.raises(FileError, match="row 2 has 3 fields where 2 were expected") as info:
        read_rows(path)
    assert info.value.row == 2


def test_ragged_row_counts_records_not_lines(tmp_path: Path) -> None:
    # Row numbers count records, as COPY errors do: a three-line quoted value is one row.
    path = write_bytes(tmp_path / "r.csv", b'id,name\n1,"a\nb\nc"\n2,b\n3\n')
    with pytest.raises(FileError, match="row 3 has 1 fields") as info:
        read_rows(path)
    assert info.value.row == 3


def test_ragged_row_without_header_counts_from_the_first_line(tmp_path: Path) -> None:
    path = write_bytes(tmp_path / "r.csv", b"1,a\n2\n")
    contract = Contract(name="t", pattern="*", table="t", headers=("id", "name"),
                        csv=CsvOptions(header=False), mode="append")  # fmt: skip
    with pytest.raises(FileError, match="row 2 has 1 fields") as info:
        list(open_reader(path, contract, 100))
    assert info.value.row == 2


# --- Parquet ------------------------------------------------------------------------------


def typed_table() -> pa.Table:
    return pa.table(
        {
            "i64": pa.array([1, 2, None], pa.int64()),
            "i32": pa.array([1, 2, 3], pa.int32()),
            "f64": pa.array([1.5, None, 3.0], pa.float64()),
            "flag": pa.array([True, False, None], pa.bool_()),
            "amount": pa.array(
                [decimal.Decimal("1.10"), decimal.Decimal("2.00"), None], pa.decimal128(12, 2)
            ),
            "day": pa.array([dt.date(2024, 1, 2), None, dt.date(2024, 3, 4)], pa.date32()),
            "ts": pa.array([dt.datetime(2024, 1, 2, 3, 4, 5), None, None], pa.timestamp("us")),
            "tstz": pa.array(
                [dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.UTC), None, None],
                pa.timestamp("us", tz="UTC"),
            ),
            "name": pa.array(["a", None, ""], pa.string()),
            "blob": pa.array([b"\x00\xff", None, b""], pa.binary()),
        }
    )


PG_TYPES = {
    "i64": "bigint",
    "i32": "integer",
    "f64": "double precision",
    "flag": "boolean",
    "amount": "numeric(12,2)",
    "day": "date",
    "ts": "timestamp",
    "tstz": "timestamptz",
    "name": "text",
    "blob": "bytea",
}


def write_parquet(path: Path, table: pa.Table, **kw: Any) -> Path:
    pq.write_table(table, str(path), **kw)
    return path


def test_parquet_preserve_types_maps_arrow_to_pg(tmp_path: Path) -> None:
    path = write_parquet(tmp_path / "t.parquet", typed_table())
    reader = open_reader(path, contract(preserve_types=True), 10)
    assert reader.layout.file_type == "parquet"
    assert dict(zip(reader.layout.columns, reader.layout.pg_types, strict=True)) == PG_TYPES


def test_parquet_without_preserve_types_is_all_text(tmp_path: Path) -> None:
    path = write_parquet(tmp_path / "t.parquet", typed_table())
    reader = open_reader(path, contract(), 10)
    assert reader.layout.columns == tuple(PG_TYPES)
    assert set(reader.layout.pg_types) == {"text"}


def test_parquet_contract_types_win_over_the_schema(tmp_path: Path) -> None:
    path = write_parquet(tmp_path / "t.parquet", typed_table())
    c = contract(preserve_types=True, types=(("i32", "bigint"),))
    layout = open_reader(path, c, 10).layout
    assert dict(zip(layout.columns, layout.pg_types, strict=True))["i32"] == "bigint"


def test_parquet_values(tmp_path: Path) -> None:
    path = write_parquet(tmp_path / "t.parquet", typed_table())
    rows = read_rows(path, contract(preserve_types=True))
    assert len(rows) == 3
    first = rows[0]
    assert first["i64"] == 1
    assert first["amount"] == decimal.Decimal("1.10")  # typed until encode writes it
    assert first["day"] == dt.date(2024, 1, 2)
    assert first["name"] == "a"
    assert [r["blob"] for r in rows] == [b"\x00\xff", None, b""]
    # On the text path: numeric as PostgreSQL prints numeric(12,2), never 1.1E+0, and
    # binary as PostgreSQL hex bytea text.
    text = copied_text(path, contract(preserve_types=True))
    assert b'"1.10"' in text[0] and b'"\\x00ff"' in text[0]
    assert b'"\\x"' in text[2]
    assert rows[2]["i64"] is None
    assert rows[2]["name"] == ""


@pytest.mark.parametrize("chunk_size", [1, 2, 3, 1000])
def test_parquet_batches_are_bounded_and_in_order(tmp_path: Path, chunk_size: int) -> None:
    n = 10
    table = pa.table({"id": pa.array(range(n), pa.int64())})
    path = write_parquet(tmp_path / "b.parquet", table, row_group_size=4)
    batches = list(open_reader(path, contract(), chunk_size))
    assert all(0 < b.num_rows <= chunk_size for b in batches)
    assert [r["id"] for r in rows_of_batches(batches)] == list(range(n))


def test_parquet_columns_in_contract_order_and_tolerant_fill(tmp_path: Path) -> None:
    table = pa.table({"b": ["x"], "a": ["y"], "extra": ["z"]})
    path = write_parquet(tmp_path / "o.parquet", table)
    c = contract(headers=("a", "missing", "b"), tolerant=True, preserve_types=True)
    reader = open_reader(path, c, 10)
    assert reader.layout.columns == ("a", "missing", "b")
    assert reader.layout.pg_types == ("text", "text", "text")
    assert rows_of(reader) == [{"a": "y", "missing": None, "b": "x"}]


def test_parquet_nested_column_is_refused(tmp_path: Path) -> None:
    table = pa.table({"id": [1], "tags": pa.array([["a", "b"]], pa.list_(pa.string()))})
    path = write_parquet(tmp_path / "n.parquet", table)
    with pytest.raises(FileError, match=r"column tags has type list.*flatten"):
        open_reader(path, contract(), 10)


def test_parquet_nested_column_outside_the_contract_is_ignored(tmp_path: Path) -> None:
    table = pa.table({"id": [1], "tags": pa.array([["a"]], pa.list_(pa.string()))})
    path = write_parquet(tmp_path / "n.parquet", table)
    assert read_rows(path, contract(headers=("id",))) == [{"id": 1}]


def test_parquet_invalid_column_name(tmp_path: Path) -> None:
    path = write_parquet(tmp_path / "n.parquet", pa.table({"first name": ["x"]}))
    with pytest.raises(FileError, match="--headers"):
        open_reader(path, contract(), 10)


def test_csv_named_parquet(tmp_path: Path) -> None:
    path = write_bytes(tmp_path / "fake.parquet", b"id,name\n1,a\n")
    with pytest.raises(FileError, match="not a Parquet file"):
        open_reader(path, contract(), 10)


def test_truncated_parquet(tmp_path: Path) -> None:
    path = write_parquet(tmp_path / "t.parquet", typed_table())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(FileError) as info:
        list(open_reader(path, contract(), 10))
    assert str(info.value)


def test_parquet_file_type_forced_on_a_csv_suffix(tmp_path: Path) -> None:
    path = write_bytes(tmp_path / "x.csv", b"id\n1\n")
    with pytest.raises(FileError, match="not a Parquet file"):
        open_reader(path, contract(file_type="parquet"), 10)


def test_csv_file_type_forced_on_an_unknown_suffix(tmp_path: Path) -> None:
    path = write_bytes(tmp_path / "x.dat", b"id\n1\n")
    assert read_rows(path, contract(file_type="csv")) == [{"id": "1"}]


@pytest.mark.parametrize("name", ["data.xlsx", "data", "data.json"])
def test_unknown_extension_with_auto(tmp_path: Path, name: str) -> None:
    path = write_bytes(tmp_path / name, b"id\n1\n")
    with pytest.raises(FileError, match="cannot tell whether"):
        open_reader(path, contract(), 10)


@pytest.mark.parametrize("name", ["UPPER.CSV", "x.tsv", "x.txt"])
def test_csv_suffixes_are_recognised(tmp_path: Path, name: str) -> None:
    assert (
        open_reader(write_bytes(tmp_path / name, b"id\n1\n"), contract(), 10).layout.file_type
        == "csv"
    )


# --- rebatch and skip_rows ----------------------------------------------------------------


def batches(*sizes: int) -> Iterator[pa.RecordBatch]:
    start = 0
    for size in sizes:
        yield pa.record_batch([pa.array(range(start, start + size), pa.int64())], names=["n"])
        start += size


def flat(items: list[pa.RecordBatch]) -> list[int]:
    return [v for b in items for v in b.column("n").to_pylist()]


@pytest.mark.parametrize(
    ("sizes", "chunk", "expected"),
    [
        ((3, 4, 5), 5, [5, 5, 2]),
        ((1, 1, 1, 1), 3, [3, 1]),
        ((10,), 3, [3, 3, 3, 1]),
        ((0, 2, 0, 2), 2, [2, 2]),
        ((), 4, []),
        ((2, 2), 100, [4]),
    ],
)
def test_rebatch(sizes: tuple[int, ...], chunk: int, expected: list[int]) -> None:
    out = list(rebatch(batches(*sizes), chunk))
    assert [b.num_rows for b in out] == expected
    assert flat(out) == list(range(sum(sizes)))
    assert all(isinstance(b, pa.RecordBatch) for b in out)


@pytest.mark.parametrize(
    ("sizes", "skip", "expected"),
    [
        ((3, 3), 0, list(range(6))),
        ((3, 3), 2, [2, 3, 4, 5]),
        ((3, 3), 3, [3, 4, 5]),
        ((3, 3), 4, [4, 5]),
        ((3, 3), 6, []),
        ((3, 3), 99, []),
    ],
)
def test_skip_rows(sizes: tuple[int, ...], skip: int, expected: list[int]) -> None:
    assert flat(list(skip_rows(batches(*sizes), skip))) == expected


def test_no_stream_handed_to_pyarrow_is_closed_under_its_readahead(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pyarrow reads ahead on an IO thread after open_csv() returns or raises, and a read in
    flight takes bytes from whatever file next gets the closed descriptor's number (seen as
    a rare 'Empty CSV file or block' on a retry with a bigger block). So ingestd never closes
    a stream it gave to pyarrow: the reader's last reference closes it."""
    from ingestd.read import csv_reader

    opened: list[pa.NativeFile] = []
    original = csv_reader._csv_stream

    def tracked(path: Path) -> pa.NativeFile:
        opened.append(original(path))
        return opened[-1]

    monkeypatch.setattr(csv_reader, "_csv_stream", tracked)
    f = tmp_path / "long_row.csv"
    f.write_bytes(b"id,payload\n1," + b"y" * (3 << 20) + b"\n2,z\n")  # retries: 1, 2, 4 MiB
    reader = open_reader(f, Contract(name="c", pattern="*", table="t"), 10)
    assert [len(v) for b in reader for v in b.column("payload").to_pylist()] == [3 << 20, 1]
    assert len(opened) >= 4  # header and data, each retried with a bigger block
    assert not any(stream.closed for stream in opened)


# --- Parquet types and values (issue 12) ----------------------------------------------------


@pytest.mark.parametrize(
    ("arrow_type", "pg_type"),
    [
        (pa.null(), "text"),
        (pa.uint64(), "numeric(20,0)"),
        (pa.float16(), "real"),
        (pa.decimal256(76, 38), "numeric(76,38)"),
        (pa.duration("ns"), "interval"),
        (pa.binary(16), "bytea"),
        (pa.binary_view(), "bytea"),
        (pa.string_view(), "text"),
        (pa.large_binary(), "bytea"),
        (pa.time32("s"), "time"),
        (pa.date64(), "date"),
        (pa.timestamp("ns", tz="Europe/Paris"), "timestamptz"),
        (pa.dictionary(pa.int8(), pa.binary()), "bytea"),
        (pa.uuid(), "uuid"),
        (pa.json_(), "json"),
    ],
)
def test_pg_type_for_every_flat_type(arrow_type: pa.DataType, pg_type: str) -> None:
    from ingestd.read import pg_type_for

    assert pg_type_for(arrow_type, "v") == pg_type


@pytest.mark.parametrize(
    ("arrow_type", "fragment"),
    [
        (pa.list_(pa.int64()), "a nested type, which ingestd cannot load into a column: flatten"),
        (pa.struct([("a", pa.int8())]), "a nested type"),
        (pa.month_day_nano_interval(), "which ingestd has no PostgreSQL type for"),
        (pa.run_end_encoded(pa.int32(), pa.int64()), "which ingestd has no PostgreSQL type for"),
    ],
)
def test_pg_type_for_refuses_with_a_true_reason(arrow_type: pa.DataType, fragment: str) -> None:
    from ingestd.read import pg_type_for

    with pytest.raises(FileError, match=f"^column v has type .*{fragment}"):
        pg_type_for(arrow_type, "v")
    if "nested" not in fragment:
        with pytest.raises(FileError) as info:
            pg_type_for(arrow_type, "v")
        assert "flatten" not in str(info.value)


def test_a_value_deep_in_the_file_is_refused_before_any_batch(tmp_path: Path) -> None:
    values = [dt.datetime(2024, 1, 1)] * 9 + [None]
    table = pa.table({"ts": pa.array(values, pa.timestamp("ns"))})
    table = pa.concat_tables([table, pa.table({"ts": pa.array([5], pa.timestamp("ns"))})])
    path = write_parquet(tmp_path / "late.parquet", table, row_group_size=4)
    with pytest.raises(FileError, match=r"^row 11, column ts \(timestamp\[ns\]\): .* whole micro"):
        open_reader(path, contract(), 2)  # at open, not while batches are committed


def test_int96_past_2262_reads_as_written(tmp_path: Path) -> None:
    values = [dt.datetime(1, 1, 1), dt.datetime(3000, 1, 1), dt.datetime(9999, 12, 31, 3)]
    path = write_parquet(tmp_path / "i96.parquet", pa.table({"ts": pa.array(values)}),
                         use_deprecated_int96_timestamps=True)  # fmt: skip
    assert [r["ts"] for r in read_rows(path, contract(preserve_types=True))] == values


def test_aware_timestamps_go_out_as_utc(tmp_path: Path) -> None:
    at = dt.datetime(1900, 1, 1, tzinfo=dt.UTC)  # Paris: +00:09:21, not a whole minute
    table = pa.table({"ts": pa.array([at], pa.timestamp("us", tz="Europe/Paris"))})
    [batch] = list(open_reader(write_parquet(tmp_path / "p.parquet", table), contract(), 10))
    assert batch.column("ts").type == pa.timestamp("us", tz="UTC")
    assert batch.column("ts").to_pylist() == [at]


def test_encrypted_footer_is_named_as_such(tmp_path: Path) -> None:
    path = write_bytes(tmp_path / "secret.parquet", b"PARE" + b"\x00" * 32 + b"PARE")
    with pytest.raises(FileError, match=r"is an encrypted Parquet file .* cannot decrypt"):
        open_reader(path, contract(), 10)
    named_csv = write_bytes(tmp_path / "secret.csv", path.read_bytes())
    with pytest.raises(FileError, match="is a Parquet file with a CSV name"):
        open_reader(named_csv, contract(), 10)


def test_parquet_name_outside_the_contract_columns_is_not_checked(tmp_path: Path) -> None:
    path = write_parquet(tmp_path / "n.parquet", pa.table({"id": [1], "First Name": ["x"]}))
    with pytest.raises(FileError, match="Rename the column where the file is written") as info:
        open_reader(path, contract(), 10)
    assert "remove the header line" not in str(info.value)  # the CSV advice
    assert info.value.row is None  # a Parquet file has no header row
    assert read_rows(path, contract(headers=("id",))) == [{"id": 1}]


def test_binary_typed_as_text_by_the_contract_is_decoded(tmp_path: Path) -> None:
    path = write_parquet(tmp_path / "b.parquet", pa.table({"s": pa.array([b"0", None])}))
    assert read_rows(path) == [{"s": b"0"}, {"s": None}]
    assert copied_text(path) == [b'"\\x30"', b""]
    assert read_rows(path, contract(types=(("s", "text"),))) == [{"s": "0"}, {"s": None}]
    assert read_rows(path, contract(types=(("s", "bytea"),))) == [{"s": b"0"}, {"s": None}]
    assert copied_text(path, contract(types=(("s", "bytea"),))) == [b'"\\x30"', b""]


def test_parquet_columns_named_in_file_order_without_a_header(tmp_path: Path) -> None:
    table = pa.table({"First Name": ["Ada"], "n": [1]})
    path = write_parquet(tmp_path / "n.parquet", table)
    c = contract(headers=("first_name", "n"), csv=CsvOptions(header=False))
    assert read_rows(path, c) == [{"first_name": "Ada", "n": 1}]
    with pytest.raises(FileError, match="names 1 columns and the file has 2"):
        open_reader(path, contract(headers=("a",), csv=CsvOptions(header=False)), 10)


def test_binary_typed_as_text_that_is_not_utf8_fails_at_open(tmp_path: Path) -> None:
    path = write_parquet(tmp_path / "b.parquet", pa.table({"s": pa.array([b"ok", b"\xff"])}))
    with pytest.raises(FileError, match=r"^row 2, column s \(binary\): bytes that are not valid"):
        open_reader(path, contract(types=(("s", "text"),)), 10)


def test_parquet_with_two_columns_of_one_name(tmp_path: Path) -> None:
    table = pa.Table.from_arrays([pa.array([1]), pa.array([2])], names=["a", "a"])
    path = write_parquet(tmp_path / "dup.parquet", table)
    named = contract(headers=("x", "y"), csv=CsvOptions(header=False))
    for c in (contract(), named):
        with pytest.raises(FileError, match="the file has two columns named 'a'"):
            open_reader(path, c, 10)
