"""Every flat Arrow type pyarrow writes to Parquet, loaded with and without --preserve-types
and compared value by value with what was written, or refused with a reason naming the
column and its type; and the hostile files other writers make (INT96, unannotated strings,
corrupt checksums, encrypted footers, names that are not identifiers)."""

from __future__ import annotations

import datetime as dt
import decimal
import math
import struct
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pyarrow.parquet.encryption as pe
import pytest

from ingestd.read import pg_type_for
from tests.pg import Db

D = decimal.Decimal
UTC = dt.UTC
US_MAX = dt.datetime(9999, 12, 31, 23, 59, 59, 999999)
US_MIN = dt.datetime(1, 1, 1)


@dataclass(frozen=True)
class Case:
    id: str
    array: pa.Array
    data_type: str  # information_schema's name of the column type under --preserve-types
    expected: list[Any] | None = None  # what PostgreSQL gives back; default array.to_pylist()
    write: tuple[tuple[str, Any], ...] = ()  # pq.write_table options

    def values(self) -> list[Any]:
        return self.array.to_pylist() if self.expected is None else self.expected


def _f(t: pa.DataType, values: list[Any]) -> list[Any]:
    # The value PostgreSQL holds for a float of type t: the same binary value, widened.
    return pa.array(values, t).cast(pa.float64()).to_pylist()


F16 = [0.1, 65504.0, -0.0, 6e-08, math.inf, -math.inf, math.nan, None]
F32 = [1.1, 3.4028234663852886e38, 1e-45, -0.0, math.inf, math.nan, None]
F64 = [0.1, 1.7976931348623157e308, 5e-324, -0.0, -math.inf, math.nan, None]
UUID = uuid.UUID("12345678-1234-5678-1234-567812345678")
PARIS_1900 = dt.datetime(1900, 1, 1, tzinfo=UTC)  # Paris was +00:09:21 then

CASES = [
    Case("int8", pa.array([-128, 127, 0, None], pa.int8()), "smallint"),
    Case("int16", pa.array([-32768, 32767, None], pa.int16()), "smallint"),
    Case("int32", pa.array([-(2**31), 2**31 - 1, None], pa.int32()), "integer"),
    Case("int64", pa.array([-(2**63), 2**63 - 1, None], pa.int64()), "bigint"),
    Case("uint8", pa.array([0, 255, None], pa.uint8()), "smallint"),
    Case("uint16", pa.array([0, 65535, None], pa.uint16()), "integer"),
    Case("uint32", pa.array([0, 2**32 - 1, None], pa.uint32()), "bigint"),
    Case(
        "uint64", pa.array([0, 2**64 - 1, None], pa.uint64()), "numeric",
        [D(0), D(2**64 - 1), None],
    ),
    Case("float16", pa.array(F16, pa.float16()), "real", _f(pa.float16(), F16)),
    Case("float32", pa.array(F32, pa.float32()), "real", _f(pa.float32(), F32)),
    Case("float64", pa.array(F64, pa.float64()), "double precision"),
    Case("bool", pa.array([True, False, None]), "boolean"),
    Case("decimal128_38_0", pa.array([D("9" * 38), D("-" + "9" * 38), None],
                                     pa.decimal128(38, 0)), "numeric"),
    Case("decimal128_38_38", pa.array([D("0." + "9" * 38), D("-0." + "0" * 37 + "1"), None],
                                      pa.decimal128(38, 38)), "numeric"),
    Case("decimal128_12_2", pa.array([D("1.10"), D("-0.01"), D("0.00"), None],
                                     pa.decimal128(12, 2)), "numeric"),
    Case("decimal256_76_0", pa.array([D("9" * 76), D("-" + "1" * 76), None],
                                     pa.decimal256(76, 0)), "numeric"),
    Case("decimal256_76_38", pa.array([D("9" * 38 + "." + "9" * 38), D("-1." + "0" * 37 + "1"),
                                       None], pa.decimal256(76, 38)), "numeric"),
    Case("date32", pa.array([dt.date(1, 1, 1), dt.date(9999, 12, 31), dt.date(1970, 1, 1), None],
                            pa.date32()), "date"),
    Case("date64", pa.array([dt.date(1, 1, 1), dt.date(9999, 12, 31), None], pa.date64()), "date"),
    Case("timestamp_s", pa.array([US_MIN, dt.datetime(9999, 12, 31, 23, 59, 59), None],
                                 pa.timestamp("s")), "timestamp without time zone"),
    Case("timestamp_ms", pa.array([US_MIN, dt.datetime(9999, 12, 31, 23, 59, 59, 999000), None],
                                  pa.timestamp("ms")), "timestamp without time zone"),
    Case("timestamp_us", pa.array([US_MIN, US_MAX, dt.datetime(2024, 2, 29, 1, 2, 3, 4), None],
                                  pa.timestamp("us")), "timestamp without time zone"),
    Case(
        "timestamp_ns_whole_us",
        pa.array([dt.datetime(1677, 9, 22), dt.datetime(2262, 4, 11, 23, 47, 16, 854775), None],
                 pa.timestamp("ns")),
        "timestamp without time zone",
    ),
    Case("timestamptz_utc", pa.array([US_MIN.replace(tzinfo=UTC), US_MAX.replace(tzinfo=UTC),
                                      None], pa.timestamp("us", tz="UTC")),
         "timestamp with time zone"),
    Case("timestamptz_paris", pa.array([PARIS_1900, None], pa.timestamp("us", tz="Europe/Paris")),
         "timestamp with time zone", [PARIS_1900, None]),
    Case(
        "int96", pa.array([US_MIN, US_MAX, dt.datetime(3000, 1, 1), None], pa.timestamp("us")),
        "timestamp without time zone", write=(("use_deprecated_int96_timestamps", True),),
    ),
    Case("time32_s", pa.array([0, 86399, None], pa.time32("s")), "time without time zone"),
    Case("time32_ms", pa.array([0, 86_399_999, None], pa.time32("ms")), "time without time zone"),
    Case("time64_us", pa.array([0, 86_399_999_999, None], pa.time64("us")),
         "time without time zone"),
    Case("time64_ns_whole_us", pa.array([1000, 86_399_999_999_000, None], pa.time64("ns")),
         "time without time zone", [dt.time(0, 0, 0, 1), dt.time(23, 59, 59, 999999), None]),
    Case("duration_s", pa.array([0, 10**12, -1, None], pa.duration("s")), "interval"),
    Case("duration_ms", pa.array([1, -86_400_001, None], pa.duration("ms")), "interval"),
    Case("duration_us", pa.array([1, -1, 2**62, None], pa.duration("us")), "interval"),
    Case("duration_ns_whole_us", pa.array([1000, -5_000, None], pa.duration("ns")), "interval",
         [dt.timedelta(microseconds=1), dt.timedelta(microseconds=-5), None]),
    Case("string", pa.array(["a", "", "é\n\"'", None], pa.string()), "text"),
    Case("large_string", pa.array(["a", "", None], pa.large_string()), "text"),
    Case("string_view", pa.array(["a", "", "ü" * 40, None], pa.string_view()), "text"),
    Case("dictionary", pa.array(["x", "y", "x", None]).dictionary_encode(), "text"),
    Case("binary", pa.array([b"\x00\xff", b"", b"0", None], pa.binary()), "bytea"),
    Case("large_binary", pa.array([b"\x00\xff", b"", None], pa.large_binary()), "bytea"),
    Case("binary_view", pa.array([b"\x00\xff", b"", None], pa.binary_view()), "bytea"),
    Case("fixed_size_binary", pa.array([b"\x00\xff\x01", b"abc", None], pa.binary(3)), "bytea"),
    Case("null", pa.nulls(3), "text"),
    Case("uuid", pa.array([UUID.bytes, None], pa.uuid()), "uuid", [UUID, None]),
    Case("json", pa.array(['{"b": 1,  "a": [1.50]}', None], pa.json_()), "json",
         ['{"b": 1,  "a": [1.50]}', None]),
]  # fmt: skip


def _same(got: Any, want: Any) -> bool:
    if isinstance(want, float):
        if math.isnan(want):
            return isinstance(got, float) and math.isnan(got)
        return bool(got == want and math.copysign(1, got) == math.copysign(1, want))
    if isinstance(want, bytes):
        return bytes(got) == want
    if isinstance(want, decimal.Decimal):
        return str(got) == str(want)  # to the digit, trailing zeros included
    return bool(got == want)


def _file(tmp_path: Path, name: str, array: pa.Array, **write: Any) -> Path:
    table = pa.table({"id": pa.array(range(len(array)), pa.int64()), "v": array})
    path = tmp_path / f"{name}.parquet"
    pq.write_table(table, path, **write)
    return path


def _load(cli: Any, path: Path, table: str, *extra: str) -> Any:
    return cli("--once", "--files", path, "--table", table, "--pk", "id", "--concurrency", "1",
               "--log-level", "ERROR", *extra)  # fmt: skip


@pytest.mark.parametrize("mode", ["preserve", "text"])
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_each_type_loads_exactly(cli: Any, db: Db, tmp_path: Path, case: Case, mode: str) -> None:
    path = _file(tmp_path, case.id, case.array, **dict(case.write))
    extra = ("--preserve-types",) if mode == "preserve" else ()
    result = _load(cli, path, "t", *extra)
    assert result.code == 0, result.err + result.out
    assert db.manifest()[0]["status"] == "success"
    if mode == "preserve":
        assert db.columns("t")["v"] == case.data_type
        rows = db.fetch("SELECT id, v FROM t ORDER BY id")
    else:
        assert db.columns("t")["v"] == "text"
        # The text ingestd wrote, read as the column's type, is the value that was written.
        pg_type = pg_type_for(pq.read_schema(path).field("v").type, "v")
        rows = db.fetch(f"SELECT id::bigint AS id, v::{pg_type} AS v FROM t ORDER BY 1")
    got = [r["v"] for r in rows]
    want = case.values()
    assert len(got) == len(want)
    for index, (g, w) in enumerate(zip(got, want, strict=True)):
        assert _same(g, w), (index, g, w)


def test_text_mode_gives_the_text_postgresql_would_print(cli: Any, db: Db, tmp_path: Path) -> None:
    table = pa.table({
        "id": pa.array([1, 2], pa.int64()),
        "ts": pa.array([dt.datetime(2024, 1, 2, 3, 4, 5, 6), None], pa.timestamp("ns")),
        "dur": pa.array([90_061_000_001, None], pa.duration("us")),
        "bin": pa.array([b"0", None], pa.binary()),
        "half": pa.array([0.1, None], pa.float16()),
        # Arrow's own text for these is 1E-10 and 0E-10; PostgreSQL prints the digits.
        "dec": pa.array([D("1E-10"), D("0E-10")], pa.decimal128(38, 10)),
    })  # fmt: skip
    path = tmp_path / "t.parquet"
    pq.write_table(table, path)
    assert _load(cli, path, "t").code == 0
    assert db.fetch("SELECT ts, dur, bin, half, dec FROM t ORDER BY id::int") == [
        {"ts": "2024-01-02 03:04:05.000006", "dur": "25:01:01.000001", "bin": "\\x30",
         "half": "0.099975586", "dec": "0.0000000001"},
        {"ts": None, "dur": None, "bin": None, "half": None, "dec": "0.0000000000"},
    ]  # fmt: skip


@dataclass(frozen=True)
class Refused:
    id: str
    array: pa.Array
    fragment: str  # of the reason, after the column and type
    types: str | None = None  # --types


REFUSED = [
    Refused("timestamp_ns_not_whole_us", pa.array([0, 1001], pa.timestamp("ns")),
            "row 2, column v (timestamp[ns]): 1970-01-01 00:00:00.000001001 is not a whole "
            "microsecond"),
    Refused("timestamptz_ns_not_whole_us", pa.array([7], pa.timestamp("ns", tz="UTC")),
            "column v (timestamp[ns, tz=UTC]): 1970-01-01 00:00:00.000000007Z is not a whole"),
    Refused("time64_ns_not_whole_us", pa.array([1], pa.time64("ns")),
            "column v (time64[ns]): 00:00:00.000000001 is not a whole microsecond"),
    Refused("duration_ns_not_whole_us", pa.array([1], pa.duration("ns")),
            "column v (duration[ns]): 1 ns is not a whole microsecond"),
    Refused("timestamp_year_10000", pa.array([0, 253_402_300_800], pa.timestamp("s")),
            # Parquet has no seconds: pyarrow writes them as milliseconds.
            "row 2, column v (timestamp[ms]): 10000-01-01 00:00:00.000 is outside the years 1 "
            "to 9999"),
    Refused("timestamp_year_0", pa.array([-62_135_596_801], pa.timestamp("s")),
            "column v (timestamp[ms]): 0000-12-31 23:59:59.000 is outside the years 1 to 9999"),
    Refused("date32_year_10000", pa.array([2_932_897], pa.date32()),
            "column v (date32[day]): 10000-01-01 is outside the years 1 to 9999"),
    Refused("duration_s_overflow", pa.array([2**62], pa.duration("s")),
            "column v (duration[s]): 4611686018427387904 s is longer than a PostgreSQL interval"),
    Refused("list", pa.array([[1, 2]], pa.list_(pa.int64())),
            "column v has type list<element: int64>, a nested type, which ingestd cannot load "
            "into a column: flatten nested data before loading"),
    Refused("struct", pa.array([{"a": 1}], pa.struct([("a", pa.int64())])),
            "column v has type struct<a: int64>, a nested type"),
    Refused("map", pa.array([[("k", 1)]], pa.map_(pa.string(), pa.int64())),
            "column v has type map<string, int64 ('v')>, a nested type"),
    Refused("binary_not_utf8_as_text", pa.array([b"ok", b"\xff"], pa.binary()),
            "row 2, column v (binary): bytes that are not valid UTF-8; the column is binary "
            "in the file, and the contract gives it a text type", "v:text"),
]  # fmt: skip


@pytest.mark.parametrize("mode", ["preserve", "text"])
@pytest.mark.parametrize("case", REFUSED, ids=[c.id for c in REFUSED])
def test_each_unloadable_value_or_type_fails_the_file_naming_the_column(
    cli: Any, db: Db, tmp_path: Path, case: Refused, mode: str
) -> None:
    path = _file(tmp_path, case.id, case.array)
    extra = ["--preserve-types"] if mode == "preserve" else []
    if case.types:
        extra += ["--types", case.types]
    result = _load(cli, path, "t", *extra)
    assert result.code == 1, result.err + result.out
    [m] = db.manifest()
    assert m["status"] == "failed" and m["rows"] == 0
    assert case.fragment in m["notes"], m["notes"]
    assert "\n" not in m["notes"]
    assert db.val("SELECT to_regclass('t') IS NULL") or db.val("SELECT count(*) FROM t") == 0


def test_unannotated_strings_load_as_text_when_the_contract_says_so(
    cli: Any, db: Db, tmp_path: Path
) -> None:
    # Impala and Hive write strings as BYTE_ARRAY without the UTF-8 annotation.
    path = _file(tmp_path, "impala", pa.array([b"0", "é".encode(), b"", None], pa.binary()))
    assert pq.ParquetFile(path).schema.column(1).logical_type.type == "NONE"
    assert _load(cli, path, "t", "--types", "v:text").code == 0
    assert [r["v"] for r in db.fetch("SELECT v FROM t ORDER BY id::int")] == ["0", "é", "", None]
    # Without a type, the bytes are bytes: bytea's hex text, which casts back to them.
    assert _load(cli, path, "u").code == 0
    assert db.val("SELECT v FROM u WHERE id = '0'") == "\\x30"


def test_unannotated_strings_cast_to_the_contract_type(cli: Any, db: Db, tmp_path: Path) -> None:
    path = _file(tmp_path, "n", pa.array([b"42", None], pa.binary()))
    assert _load(cli, path, "t", "--types", "v:integer").code == 0
    assert db.fetch("SELECT v FROM t ORDER BY id") == [{"v": 42}, {"v": None}]


def test_int96_that_wraps_around_in_microseconds_is_refused(
    cli: Any, db: Db, tmp_path: Path
) -> None:
    # An INT96 about 584,000 years after 1970: pyarrow's microsecond reading wraps
    # around 2**64 to 1970-01-01 15:58:10.448384 without a word.
    path = tmp_path / "wrap.parquet"
    table = pa.table({"id": pa.array([1], pa.int64()),
                      "v": pa.array([dt.datetime(1970, 1, 1)], pa.timestamp("us"))})  # fmt: skip
    pq.write_table(table, path, use_deprecated_int96_timestamps=True, compression="none",
                   use_dictionary=False)  # fmt: skip
    epoch = struct.pack("<qi", 0, 2_440_588)  # nanoseconds of the day, Julian day
    path.write_bytes(path.read_bytes().replace(epoch, struct.pack("<qi", 0, 215_944_571)))
    wrapped = pq.read_table(path, coerce_int96_timestamp_unit="us").column("v")
    assert wrapped.cast(pa.int64()).to_pylist() == [57_490_448_384]  # what pyarrow says
    result = _load(cli, path, "t", "--preserve-types")
    assert result.code == 1
    [m] = db.manifest()
    assert m["status"] == "failed"
    assert "row 1, column v (INT96): 18446744131200 s after 1970-01-01 is outside" in m["notes"]


def _corrupt_checksum(tmp_path: Path) -> Path:
    path = tmp_path / "corrupt.parquet"
    table = pa.table({"id": pa.array(range(100), pa.int64()),
                      "v": pa.array([0x5A5A5A5A] * 100, pa.int32())})  # fmt: skip
    pq.write_table(table, path, compression="none", use_dictionary=False,
                   write_page_checksum=True)  # fmt: skip
    data = bytearray(path.read_bytes())
    at = data.index(bytes([0x5A] * 8))
    data[at] = 0x5B  # one value changes; the page checksum no longer matches
    path.write_bytes(bytes(data))
    return path


def test_corrupt_page_checksum_fails_the_file_naming_the_column(
    cli: Any, db: Db, tmp_path: Path
) -> None:
    path = _corrupt_checksum(tmp_path)
    result = _load(cli, path, "t", "--preserve-types")
    assert result.code == 1
    [m] = db.manifest()
    assert m["status"] == "failed"
    assert "a page checksum does not match (row group 0, column v)" in m["notes"]


class _Kms(pe.KmsClient):  # type: ignore[misc]
    """Wraps keys with nothing: enough to write a real encrypted file for the test."""

    def __init__(self, config: Any) -> None:
        pe.KmsClient.__init__(self)

    def wrap_key(self, key_bytes: bytes, master_key_identifier: str) -> bytes:
        return key_bytes

    def unwrap_key(self, wrapped_key: bytes, master_key_identifier: str) -> bytes:
        return wrapped_key


@pytest.mark.parametrize("plaintext_footer", [False, True])
def test_encrypted_parquet_is_reported_as_encrypted(
    cli: Any, db: Db, tmp_path: Path, plaintext_footer: bool
) -> None:
    factory = pe.CryptoFactory(lambda config: _Kms(config))
    config = pe.EncryptionConfiguration(
        footer_key="k1", column_keys={"k2": ["v"]}, plaintext_footer=plaintext_footer,
        double_wrapping=False, internal_key_material=True,
    )  # fmt: skip
    properties = factory.file_encryption_properties(pe.KmsConnectionConfig(), config)
    path = tmp_path / "secret.parquet"
    table = pa.table({"id": pa.array([1], pa.int64()), "v": ["x"]})
    with pq.ParquetWriter(path, table.schema, encryption_properties=properties) as writer:
        writer.write_table(table)
    assert path.read_bytes()[-4:] == (b"PAR1" if plaintext_footer else b"PARE")
    assert _load(cli, path, "t").code == 1
    [m] = db.manifest()
    assert m["status"] == "failed"
    assert "ingestd cannot decrypt Parquet: decrypt it before loading" in m["notes"]
    assert "encrypted" in m["notes"]


def test_parquet_column_that_is_not_an_identifier(cli: Any, db: Db, tmp_path: Path) -> None:
    table = pa.table({"id": [1], "First Name": ["Ada"], "age": [36]})
    path = tmp_path / "people.parquet"
    pq.write_table(table, path)
    assert _load(cli, path, "t").code == 1
    [m] = db.manifest()
    assert "column 'First Name' is not allowed" in m["notes"]
    assert "Rename the column where the file is written" in m["notes"]  # not the CSV advice
    # The advice works: the other columns load, or every column under a name of one's own.
    assert _load(cli, path, "u", "--headers", "id,age").code == 0
    assert db.fetch("SELECT id, age FROM u") == [{"id": "1", "age": "36"}]
    named = _load(cli, path, "w", "--no-header", "--headers", "id,first_name,age")
    assert named.code == 0, named.err
    assert db.fetch("SELECT * FROM w") == [{"id": "1", "first_name": "Ada", "age": "36"}]
    wrong = _load(cli, path, "x", "--no-header", "--headers", "id,first_name")
    assert wrong.code == 1
    assert (
        "--headers names 2 columns and the file has 3 (id, First Name, age)"
        in (db.manifest()[-1]["notes"])
    )


def test_zero_row_groups_create_the_table_with_its_types(cli: Any, db: Db, tmp_path: Path) -> None:
    path = tmp_path / "empty.parquet"
    schema = pa.schema([("id", pa.int64()), ("at", pa.timestamp("ns")), ("d", pa.duration("us"))])
    pq.ParquetWriter(path, schema).close()
    assert pq.ParquetFile(path).num_row_groups == 0
    result = _load(cli, path, "t", "--preserve-types")
    assert result.code == 0, result.err
    assert db.columns("t") == {
        "id": "bigint", "at": "timestamp without time zone", "d": "interval",
    }  # fmt: skip
    assert db.val("SELECT count(*) FROM t") == 0
    assert db.manifest()[0]["status"] == "success"
