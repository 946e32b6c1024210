"""Property: random tables written as CSV or Parquet and loaded by ingestd come back as they
went in: TEXT mode and --preserve-types, quotes, delimiters, newlines, unicode, '' and NULL."""

from __future__ import annotations

import datetime as dt
import itertools
import math
import os
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import run_cli
from tests.pg import Db

_counter = itertools.count()
SETTINGS = settings(
    max_examples=int(os.environ.get("INGESTD_PROPERTY_EXAMPLES", "40")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)

names = st.lists(
    st.from_regex(r"[a-z_][a-z0-9_]{0,12}", fullmatch=True).filter(lambda n: n != "id"),
    min_size=1, max_size=4, unique=True,
)  # fmt: skip
# Any text PostgreSQL can hold (no NUL, no lone surrogates), including quotes, delimiters,
# CR/LF and empty strings; None is NULL.
texts = st.none() | st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=12
)


def _csv_field(value: str | None, delimiter: str) -> str:
    # NULL is an empty unquoted field, '' a quoted empty one (PostgreSQL's CSV rules).
    if value is None:
        return ""
    return '"' + value.replace('"', '""') + '"'


def _load(dsn: str, path: Path, table: str, *extra: str) -> None:
    result = run_cli(["--dsn", dsn, "--files", str(path), "--table", table, "--pk", "id",
                      "--concurrency", "1", "--metrics-addr", "off", "--no-resume",
                      "--log-level", "ERROR", *extra])  # fmt: skip
    assert result.code == 0, result.err + result.out


@SETTINGS
@given(columns=names, data=st.data(), delimiter=st.sampled_from([",", ";", "\t", "|"]))
def test_csv_text_round_trip(
    dsn: str, tmp_path: Path, columns: list[str], data: Any, delimiter: str
) -> None:
    rows = data.draw(st.lists(st.tuples(*[texts] * len(columns)), max_size=8))
    table = f"csv_{next(_counter)}"
    lines = [delimiter.join(["id", *columns])]
    for i, row in enumerate(rows):
        lines.append(delimiter.join([str(i), *(_csv_field(v, delimiter) for v in row)]))
    path = tmp_path / f"{table}.csv"
    path.write_bytes(("\n".join(lines) + "\n").encode())
    name = "tab" if delimiter == "\t" else delimiter
    _load(dsn, path, table, "--delimiter", name)
    got = Db(dsn).fetch(f'SELECT * FROM "{table}" ORDER BY id::int')
    assert [tuple(r[c] for c in columns) for r in got] == rows


@SETTINGS
@given(columns=names, data=st.data())
def test_parquet_text_round_trip(dsn: str, tmp_path: Path, columns: list[str], data: Any) -> None:
    rows = data.draw(st.lists(st.tuples(*[texts] * len(columns)), max_size=8))
    table = f"pqt_{next(_counter)}"
    arrays = {"id": pa.array(range(len(rows)), pa.int64())}
    for j, c in enumerate(columns):
        arrays[c] = pa.array([r[j] for r in rows], pa.string())
    path = tmp_path / f"{table}.parquet"
    pq.write_table(pa.table(arrays), path)
    _load(dsn, path, table)
    got = Db(dsn).fetch(f'SELECT * FROM "{table}" ORDER BY id::int')
    assert [tuple(r[c] for c in columns) for r in got] == rows


typed_rows = st.lists(
    st.tuples(
        st.none() | st.integers(-(2**63), 2**63 - 1),
        st.none() | st.floats(width=64),
        st.none() | st.booleans(),
        st.none() | st.dates(),
        st.none()
        | st.datetimes(min_value=dt.datetime(1, 1, 1), max_value=dt.datetime(9999, 12, 31)),
        texts,
    ),
    max_size=8,
)


def _same_float(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is b
    return (math.isnan(a) and math.isnan(b)) or a == b


@SETTINGS
@given(rows=typed_rows)
def test_parquet_preserve_types_round_trip(
    dsn: str, tmp_path: Path, rows: list[tuple[Any, ...]]
) -> None:
    table = f"pqty_{next(_counter)}"
    cols = list(zip(*rows, strict=True)) if rows else [[]] * 6
    arrow = pa.table({
        "id": pa.array(range(len(rows)), pa.int64()),
        "i": pa.array(cols[0], pa.int64()),
        "f": pa.array(cols[1], pa.float64()),
        "b": pa.array(cols[2], pa.bool_()),
        "d": pa.array(cols[3], pa.date32()),
        "ts": pa.array(cols[4], pa.timestamp("us")),
        "s": pa.array(cols[5], pa.string()),
    })  # fmt: skip
    path = tmp_path / f"{table}.parquet"
    pq.write_table(arrow, path)
    _load(dsn, path, table, "--preserve-types")
    got = Db(dsn).fetch(f'SELECT i, f, b, d, ts, s FROM "{table}" ORDER BY id')
    assert len(got) == len(rows)
    for want, have in zip(rows, got, strict=True):
        assert have["i"] == want[0]
        assert _same_float(have["f"], want[1]), (have["f"], want[1])
        assert (have["b"], have["d"], have["ts"], have["s"]) == (want[2], want[3], want[4], want[5])
