"""Parquet through binary COPY against the CSV text path: the same file gives the same
table, the same refusal (row, column, message) and the same rejects, whatever the target's
types; a binary payload that meets other column types than it was encoded for never lands."""

from __future__ import annotations

import datetime as dt
import decimal
import json
from pathlib import Path
from typing import Any

import asyncpg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ingestd.db.connection import Connection
from ingestd.db.sql import Target
from ingestd.db.stage import CopyFormat, TypesMovedError, copy_into_target
from ingestd.encode import binary_arrays, encode_binary
from tests.integration.test_parquet_types import CASES
from tests.pg import Db

D = decimal.Decimal
BINARY = ("--binary-copy", "true")
TEXT = ("--binary-copy", "false")
# The types binary COPY carries (the rest go as text: interval, uuid, json, decimal256...).
CARRIED = {
    "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "float16", "float32",
    "float64", "bool", "decimal128_38_0", "decimal128_38_38", "decimal128_12_2", "date32",
    "date64", "timestamp_s", "timestamp_ms", "timestamp_us", "timestamp_ns_whole_us",
    "timestamptz_utc", "timestamptz_paris", "time32_s", "time32_ms", "time64_us",
    "time64_ns_whole_us", "string", "large_string", "string_view", "dictionary", "binary",
    "large_binary", "binary_view", "fixed_size_binary", "null",
}  # fmt: skip


def _table(ids: set[str]) -> pa.Table:
    cases = [c for c in CASES if c.id in ids and not c.write]
    rows = max(len(c.array) for c in cases)
    columns: dict[str, pa.Array] = {"id": pa.array(range(rows), pa.int64())}
    for c in cases:
        pad = rows - len(c.array)
        columns[c.id] = pa.concat_arrays([c.array, pa.nulls(pad, c.array.type)]) if pad else c.array
    return pa.table(columns)


def _load(cli: Any, path: Path, table: str, *extra: Any) -> Any:
    return cli("--once", "--files", path, "--table", table, "--pk", "id", "--concurrency", "1",
               "--keep-files", "--no-resume", *extra)  # fmt: skip


def _vias(result: Any) -> set[str]:
    lines = [json.loads(x) for x in (result.out + result.err).splitlines() if x.startswith("{")]
    return {x["via"] for x in lines if x.get("event", x.get("msg")) == "batch_committed"}


def _rows(db: Db, table: str) -> list[Any]:
    return [r["row"] for r in db.fetch(f"SELECT t::text AS row FROM {table} AS t ORDER BY id")]


@pytest.mark.parametrize("ids", [CARRIED, {c.id for c in CASES}], ids=["carried", "every"])
def test_every_type_gives_the_same_table_binary_or_text(
    cli: Any, db: Db, tmp_path: Path, ids: set[str]
) -> None:
    path = tmp_path / "types.parquet"
    pq.write_table(_table(ids), path)
    binary = _load(cli, path, "t_bin", "--preserve-types", *BINARY)
    text = _load(cli, path, "t_txt", "--preserve-types", *TEXT)
    assert binary.code == 0 and text.code == 0, binary.err + text.err
    # Only carried types go binary; one column that is not sends its batch as text.
    assert _vias(binary) == ({"binary"} if ids == CARRIED else {"arrow"})
    assert _vias(text) == {"arrow"}
    assert db.columns("t_bin") == db.columns("t_txt")
    assert _rows(db, "t_bin") == _rows(db, "t_txt")


def _typed_target(db: Db, name: str, ddl: str) -> None:
    db.execute(f"CREATE TABLE {name} (id bigint PRIMARY KEY, {ddl})")


@pytest.mark.parametrize(
    ("ddl", "array"),
    [
        ("v bigint", pa.array([1, -(2**31), None], pa.int32())),  # widened on the client
        ("v integer", pa.array([1, 2**40, None], pa.int64())),  # refused by PostgreSQL
        ("v smallint", pa.array([1, 70000, None], pa.uint32())),
        ("v integer", pa.array(["12", "x", None], pa.string())),  # PostgreSQL casts text
        ("v text", pa.array([1, 2, None], pa.int64())),
        ("v double precision", pa.array([0.1, None], pa.float32())),  # float4 text, widened
        ("v timestamptz", pa.array([dt.datetime(2024, 1, 1), None], pa.timestamp("us"))),
        (
            "v timestamp",
            pa.array([dt.datetime(2024, 1, 1, tzinfo=dt.UTC)], pa.timestamp("us", "UTC")),
        ),
        ("v numeric(5,1)", pa.array([D("1.25"), D("-0.05"), None], pa.decimal128(10, 2))),
        ("v numeric(3,1)", pa.array([D("123.45"), None], pa.decimal128(10, 2))),  # overflow
        ("v varchar(2)", pa.array(["ab", "abc", None], pa.string())),
        ("v char(3)", pa.array(["a", "", None], pa.large_string())),
        ("v text NOT NULL", pa.array(["a", None], pa.string())),
        ("v bytea", pa.array([b"\x00", None], pa.binary(1))),
        ("v text", pa.array([b"\x00", None], pa.binary())),
        ("v integer CHECK (v > 0)", pa.array([1, 0], pa.int32())),
        ("v integer, w text DEFAULT 'd'", pa.array([None, None], pa.null())),
    ],
)
def test_a_target_of_other_types_means_the_same_binary_or_text(
    cli: Any, db: Db, tmp_path: Path, ddl: str, array: pa.Array
) -> None:
    path = tmp_path / "v.parquet"
    pq.write_table(pa.table({"id": pa.array(range(len(array)), pa.int64()), "v": array}), path)
    outcomes = []
    for table, flag in (("t_bin", BINARY), ("t_txt", TEXT)):
        _typed_target(db, table, ddl)
        result = _load(cli, path, table, "--preserve-types", *flag, "--log-level", "ERROR")
        row = db.manifest()[-1]
        error = (row["notes"] or "").replace(table, "T")
        outcomes.append((result.code, row["status"], error, _rows(db, table)))
    assert outcomes[0] == outcomes[1]


def test_rejects_and_upserts_are_the_text_paths_own(cli: Any, db: Db, tmp_path: Path) -> None:
    ids = pa.array([1, 2, 3, 2, 4], pa.int64())
    values = pa.array([D("1.5"), D("-2"), D("999.9"), D("7"), None], pa.decimal128(6, 1))
    path = tmp_path / "v.parquet"
    pq.write_table(pa.table({"id": ids, "v": values}), path)
    seen = []
    for table, flag in (("t_bin", BINARY), ("t_txt", TEXT)):
        db.execute(f"CREATE TABLE {table} (id bigint PRIMARY KEY, v numeric(4,1) NOT NULL)")
        db.execute(f"INSERT INTO {table} VALUES (2, 0), (4, 4)")
        result = _load(cli, path, table, "--mode", "upsert", "--max-bad-rows", "5", *flag)
        rejects = db.fetch("SELECT row_number, reason FROM ingestion_rejects ORDER BY 1")
        db.execute("TRUNCATE ingestion_rejects")
        seen.append(
            (result.code, _rows(db, table), [str(dict(r)).replace(table, "T") for r in rejects])
        )
    assert seen[0] == seen[1]
    assert seen[0][1] == ["(1,1.5)", "(2,7.0)", "(3,999.9)", "(4,4.0)"]


def test_an_unchanged_file_upserted_again_writes_no_tuple(cli: Any, db: Db, tmp_path: Path) -> None:
    ids = pa.array([1, 2, 3, 2, None], pa.int64())
    values = pa.array([D("1.5"), D("-2"), None, D("7"), D("1")], pa.decimal128(6, 1))
    path = tmp_path / "v.parquet"
    pq.write_table(pa.table({"id": ids, "v": values}), path)
    for table, flag in (("t_bin", BINARY), ("t_txt", TEXT)):
        db.execute(f"CREATE TABLE {table} (id bigint UNIQUE, v numeric(4,1))")
        db.execute(f"INSERT INTO {table} VALUES (2, 0), (4, 4), (NULL, 1)")
        assert _load(cli, path, table, "--mode", "upsert", *flag).code == 0
        versions = f"SELECT id, xmin::text AS x, ctid::text AS c FROM {table} ORDER BY id, ctid"
        before = db.fetch(versions)
        again = _load(cli, path, table, "--mode", "upsert", *flag)
        assert again.code == 0
        # NULL never equals NULL in a unique key: the NULL-keyed row is added each time.
        after = db.fetch(versions)
        assert [r for r in after if r["id"] is not None] == [
            r for r in before if r["id"] is not None
        ]
        assert len(after) == len(before) + 1
    assert _rows(db, "t_bin") == _rows(db, "t_txt")


def test_a_binary_payload_meeting_other_types_never_lands(dsn: str) -> None:
    async def scenario() -> None:
        raw = await asyncpg.connect(dsn)
        try:
            conn = Connection(raw)
            await raw.execute("CREATE TABLE moved (v double precision)")
            target = Target(None, "moved", ("v",), ())
            batch = pa.record_batch([pa.array([1, 2], pa.int64())], names=["v"])
            arrays = binary_arrays(batch, ("bigint",))
            assert arrays is not None
            # Eight bytes a value: the COPY itself takes them, as garbage floats.
            fmt = CopyFormat(ordinal=False, binary_types=("bigint",))
            with pytest.raises(TypesMovedError):
                async with conn.atomic():
                    await copy_into_target(
                        conn, target, encode_binary(arrays, 1, ordinal=False), fmt
                    )
            assert await raw.fetchval("SELECT count(*) FROM moved") == 0
        finally:
            await raw.close()

    import asyncio

    asyncio.run(scenario())


def test_a_target_in_another_schema_goes_binary(cli: Any, db: Db, tmp_path: Path) -> None:
    db.execute("CREATE SCHEMA other")
    db.execute("CREATE TABLE other.t (id bigint PRIMARY KEY, v integer, w text)")
    table = pa.table({"id": pa.array([1, 2], pa.int64()), "v": pa.array([7, None], pa.int16())})
    path = tmp_path / "v.parquet"
    pq.write_table(table, path)
    result = _load(cli, path, "t", "--schema", "other", "--log-level", "INFO")
    assert result.code == 0, result.err
    assert _vias(result) == {"binary"}
    assert _rows(db, "other.t") == ["(1,7,)", "(2,,)"]
