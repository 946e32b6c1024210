"""Parquet files other projects wrote (Apache parquet-testing), each loaded by ingestd and
compared with what the corpus documents, or with pyarrow's own reading where it documents
no values; or failing cleanly with a true reason.

The files are not kept in this repository (see tests/data/parquet-testing/README.md): point
INGESTD_PARQUET_TESTING at a checkout of apache/parquet-testing; without one, these skip.
"""

from __future__ import annotations

import datetime as dt
import decimal
import math
import os
import shutil
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from tests.pg import Db

_ROOT = Path(
    os.environ.get(
        "INGESTD_PARQUET_TESTING", Path(__file__).parents[1] / "data" / "parquet-testing"
    )
)
DATA = _ROOT / "data"
pytestmark = pytest.mark.skipif(
    not (DATA / "alltypes_plain.parquet").is_file(),
    reason="no parquet-testing checkout: set INGESTD_PARQUET_TESTING (see "
    "tests/data/parquet-testing/README.md)",
)


def _norm(value: Any) -> Any:
    # One comparable form for what PostgreSQL and pyarrow each give back.
    if isinstance(value, float):
        return "nan" if math.isnan(value) else repr(value)
    if isinstance(value, decimal.Decimal) or (
        isinstance(value, int) and not isinstance(value, bool)
    ):
        return str(value)  # uint64 comes back from numeric(20,0) as a Decimal
    if isinstance(value, (bytes, memoryview)):
        return bytes(value).hex()
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    return value


def _rows(rows: list[dict[str, Any]], columns: list[str]) -> list[tuple[Any, ...]]:
    return sorted((tuple(_norm(r[c]) for c in columns) for r in rows), key=repr)


def _load(cli: Any, tmp_path: Path, name: str, *extra: str) -> tuple[Any, Path]:
    path = tmp_path / name.removesuffix(".encrypted")  # ingestd knows Parquet by its suffix
    shutil.copyfile(DATA / name, path)
    result = cli("--once", "--files", path, "--table", "t", "--mode", "append",
                 "--concurrency", "1", "--log-level", "ERROR", *extra)  # fmt: skip
    return result, path


def _pyarrow(path: Path, columns: list[str], decode: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    rows = pq.read_table(path, columns=columns, coerce_int96_timestamp_unit="us").to_pylist()
    for row in rows:
        for c in decode:
            row[c] = None if row[c] is None else row[c].decode()
    return rows


# file -> columns to load (None: all)
AS_PYARROW_READS = {
    "binary.parquet": None,
    "byte_array_decimal.parquet": None,
    "int32_decimal.parquet": None,
    "int64_decimal.parquet": None,
    "fixed_length_decimal.parquet": None,
    "fixed_length_decimal_legacy.parquet": None,
    "fixed_length_byte_array.parquet": None,
    "float16_nonzeros_and_nans.parquet": None,
    "float16_zeros_and_nans.parquet": None,
    "concatenated_gzip_members.parquet": None,
    "datapage_v1-uncompressed-checksum.parquet": None,
    "datapage_v1-snappy-compressed-checksum.parquet": None,
    "plain-dict-uncompressed-checksum.parquet": None,
    "rle-dict-snappy-checksum.parquet": None,
    "dict-page-offset-zero.parquet": None,
    "int32_with_null_pages.parquet": None,
    "delta_byte_array.parquet": None,
    "delta_length_byte_array.parquet": None,
    "nan_in_stats.parquet": None,
    "single_nan.parquet": None,
    "page_v2_empty_compressed.parquet": None,
    "datapage_v2_empty_datapage.snappy.parquet": None,
    "rle_boolean_encoding.parquet": None,
    "datapage_v2.snappy.parquet": ["a", "b", "c", "d"],  # e is a list
    "alltypes_tiny_pages.parquet": None,
}


@pytest.mark.parametrize("name", sorted(AS_PYARROW_READS))
def test_corpus_file_loads_as_pyarrow_reads_it(cli: Any, db: Db, tmp_path: Path, name: str) -> None:
    columns = AS_PYARROW_READS[name]
    extra = ["--headers", ",".join(columns)] if columns else []
    result, path = _load(cli, tmp_path, name, "--preserve-types", *extra)
    assert result.code == 0, result.err + result.out
    columns = columns or list(pq.read_schema(path).names)
    got = db.fetch("SELECT * FROM t")
    assert _rows(got, columns) == _rows(_pyarrow(path, columns), columns)
    assert db.manifest()[0]["rows"] == pq.ParquetFile(path).metadata.num_rows


@pytest.mark.parametrize("name", ["alltypes_plain.parquet", "alltypes_dictionary.parquet"])
def test_impala_strings_and_int96(cli: Any, db: Db, tmp_path: Path, name: str) -> None:
    # Impala writes strings without the UTF-8 annotation and timestamps as INT96.
    strings = ("date_string_col", "string_col")
    types = ",".join(f"{c}:text" for c in strings)
    result, path = _load(cli, tmp_path, name, "--preserve-types", "--types", types)
    assert result.code == 0, result.err + result.out
    columns = list(pq.read_schema(path).names)
    got = db.fetch("SELECT * FROM t")
    assert _rows(got, columns) == _rows(_pyarrow(path, columns, strings), columns)
    assert {r["string_col"] for r in got} <= {"0", "1"}  # not \x30
    assert db.columns("t")["timestamp_col"] == "timestamp without time zone"
    assert min(r["timestamp_col"] for r in got).year == 2009  # the corpus's 2009 rows


def test_int96_from_spark_fails_on_the_year_290000_row(cli: Any, db: Db, tmp_path: Path) -> None:
    # int96_from_spark.md: six values, the fifth NULL, the sixth in year 290000. pyarrow's
    # microsecond reading of the sixth wraps around (to -7188624036226874385); read in
    # seconds it lies far outside years 1 to 9999, and ingestd refuses the file.
    result, path = _load(cli, tmp_path, "int96_from_spark.parquet", "--preserve-types")
    assert result.code == 1
    [m] = db.manifest()
    assert m["status"] == "failed"
    assert "row 6, column a (INT96):" in m["notes"]
    assert "outside the years 1 to 9999" in m["notes"]
    documented = [1704141296123456, 1704070800000000, 253402225200000000, 1735599600000000]
    read = pq.read_table(path, coerce_int96_timestamp_unit="us").column("a").cast("int64")
    assert read.to_pylist()[:4] == documented  # what ingestd would have loaded is right


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("datapage_v1-corrupt-checksum.parquet",
         "a page checksum does not match (row group 0, column a)"),
        ("rle-dict-uncompressed-corrupt-checksum.parquet",
         "a page checksum does not match (row group 0, column long_field)"),
        ("encrypt_columns_and_footer.parquet.encrypted",
         "is an encrypted Parquet file (encrypted footer), and ingestd cannot decrypt"),
        ("uniform_encryption.parquet.encrypted", "ingestd cannot decrypt Parquet"),
        ("nulls.snappy.parquet", "column b_struct has type struct<b_c_int: int32>, a nested"),
        ("list_columns.parquet", "column int64_list has type list<item: int64>, a nested type"),
        ("incorrect_map_schema.parquet",
         "not a readable Parquet file: Map keys must be annotated as required"),
        ("unknown-logical-type.parquet", "column 'column with known type' is not allowed"),
    ],
)  # fmt: skip
def test_corpus_file_fails_cleanly(
    cli: Any, db: Db, tmp_path: Path, name: str, fragment: str
) -> None:
    result, _ = _load(cli, tmp_path, name)
    assert result.code == 1, result.out
    [m] = db.manifest()
    assert m["status"] == "failed" and m["rows"] == 0
    assert fragment in m["notes"]
    assert "\n" not in m["notes"]


def test_plaintext_footer_with_encrypted_columns(cli: Any, db: Db, tmp_path: Path) -> None:
    name = "encrypt_columns_plaintext_footer.parquet.encrypted"
    path = tmp_path / "plain_footer.parquet"
    shutil.copyfile(DATA / name, path)
    result = cli("--once", "--files", path, "--table", "t", "--mode", "append",
                 "--headers", "double_field,float_field", "--log-level", "ERROR")  # fmt: skip
    assert result.code == 1
    [m] = db.manifest()
    assert "encrypted columns" in m["notes"] and "cannot decrypt" in m["notes"]
