"""create_partitions: UTC buckets in any zone, overlaps named, NULL keys, kept partitions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.conftest import write
from tests.helpers import log_events
from tests.pg import Db

BY_TS = (
    "CREATE TABLE p (id int, ts timestamptz, v text, PRIMARY KEY (id, ts)) PARTITION BY RANGE (ts)"
)


def _failure(result: Any) -> str:
    [event] = [e for e in log_events(result.err, "file_finished") if e["status"] == "failed"]
    return str(event["error"])


def _zone(db: Db, zone: str) -> None:
    """The TimeZone of every later session on the test database (ingestd's among them)."""
    db.execute(f"DO $$BEGIN EXECUTE format('ALTER DATABASE %I SET timezone = %L', "
               f"current_database(), '{zone}'); END$$")  # fmt: skip


def _bounds(db: Db) -> dict[str, str]:
    rows = db.fetch(
        "SELECT c.relname::text AS name, "
        "replace(pg_get_expr(c.relpartbound, c.oid), '+00', 'Z') AS bound "
        "FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = 'p'::regclass ORDER BY 1"
    )
    return {r["name"]: r["bound"] for r in rows}


def _load(cli: Any, f: Path, unit: str) -> Any:
    return cli(
        "--once", "--files", f, "--table", "p", "--pk", "id,ts", "--mode", "upsert",
        "--create-partitions", unit,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("unit", "first", "second", "names"),
    [
        (
            "month",
            "2024-02-29 23:59:59+00",
            "2024-03-15 00:00:00+00",
            {"p_p202402": ("2024-02-01", "2024-03-01"), "p_p202403": ("2024-03-01", "2024-04-01")},
        ),
        (
            "day",
            "2024-03-14 23:30:00+00",
            "2024-03-15 01:00:00+00",
            {
                "p_p20240314": ("2024-03-14", "2024-03-15"),
                "p_p20240315": ("2024-03-15", "2024-03-16"),
            },
        ),
    ],
)
def test_buckets_are_utc_whatever_the_session_zone(
    cli: Any, db: Db, tmp_path: Path, unit: str, first: str, second: str, names: dict[str, Any]
) -> None:
    """A session in UTC and one in +14 (then -03) make adjoining UTC buckets, never overlapping."""
    db.execute(BY_TS)
    _zone(db, "UTC")
    assert _load(cli, write(tmp_path / "a.csv", f"id,ts,v\n1,{first},a\n"), unit).code == 0
    _zone(db, "Pacific/Kiritimati")
    result = _load(cli, write(tmp_path / "b.csv", f"id,ts,v\n2,{second},b\n"), unit)
    assert result.code == 0, result.err[-2000:]
    _zone(db, "America/Sao_Paulo")
    result = _load(cli, write(tmp_path / "c.csv", f"id,ts,v\n3,{second},c\n"), unit)
    assert result.code == 0, result.err[-2000:]
    _zone(db, "UTC")
    assert _bounds(db) == {
        n: f"FOR VALUES FROM ('{lo} 00:00:00Z') TO ('{hi} 00:00:00Z')"
        for n, (lo, hi) in names.items()
    }
    assert db.val("SELECT count(DISTINCT id) FROM p") == 3
    assert [m["status"] for m in db.manifest()] == ["success"] * 3


def test_a_bucket_overlapping_a_partition_made_otherwise_fails_naming_its_bounds(
    cli: Any, db: Db, tmp_path: Path
) -> None:
    """A March made in +14 by someone else: the UTC March overlaps it and leaves the row out."""
    db.execute(BY_TS)
    _zone(db, "UTC")
    db.execute(
        "CREATE TABLE p_march14 PARTITION OF p "
        "FOR VALUES FROM ('2024-02-29 10:00+00') TO ('2024-03-10 00:00+00')"
    )
    result = _load(cli, write(tmp_path / "a.csv", "id,ts,v\n1,2024-03-15 00:00:00+00,a\n"), "month")
    assert result.code == 1
    assert _failure(result) == (
        'create_partitions could not create partition "public"."p_p202403" of p FOR VALUES '
        "FROM ('2024-03-01 00:00:00+00') TO ('2024-04-01 00:00:00+00') for the row with "
        "ts = 2024-03-15 00:00:00+00: it would overlap p_march14 FOR VALUES FROM "
        "('2024-02-29 10:00:00+00') TO ('2024-03-10 00:00:00+00'), made with other bounds, "
        "and no partition holds that row; create a partition for it beside the existing ones "
        "(or change their bounds), then ingestd retry FILE"
    )
    assert db.val("SELECT count(*) FROM p") == 0
    assert db.val("SELECT to_regclass('p_p202403')") is None


@pytest.mark.parametrize("create", [False, True])
def test_a_null_partition_key_names_its_row_with_or_without_create_partitions(
    cli: Any, db: Db, tmp_path: Path, create: bool
) -> None:
    db.execute(
        "CREATE TABLE t (id int, ts timestamp, v text) PARTITION BY RANGE (ts);"
        "CREATE TABLE t_jan1 PARTITION OF t FOR VALUES FROM ('2024-01-01') TO ('2024-01-02')"
    )
    f = write(tmp_path / "a.csv", "id,ts,v\n1,2024-01-01 10:00,a\n2,,b\n")
    extra = ["--create-partitions", "day"] if create else []
    result = cli("--once", "--files", f, "--table", "t", "--mode", "append", *extra)
    assert result.code == 1
    assert _failure(result) == (
        'no partition of relation "t" found for row (row 2; Partition key of the failing row '
        "contains (ts) = (null).)"
    )
    assert db.val("SELECT count(*) FROM pg_inherits WHERE inhparent = 't'::regclass") == 1


def test_a_value_the_column_refuses_names_its_row_under_create_partitions(
    cli: Any, db: Db, tmp_path: Path
) -> None:
    """The bucket cast meets 15/03/2024: the refused row's partition is made, the bad row named."""
    db.execute("CREATE TABLE t (id int, ts timestamp, v text) PARTITION BY RANGE (ts)")
    f = write(tmp_path / "a.csv", "id,ts,v\n1,2024-03-15 10:00,a\n2,15/03/2024,b\n")
    result = cli(
        "--once", "--files", f, "--table", "t", "--mode", "append", "--create-partitions", "day"
    )
    assert result.code == 1
    assert _failure(result) == 'date/time field value out of range: "15/03/2024" (row 2, column ts)'
    assert db.val("SELECT to_regclass('t_p20240315')::text") == "t_p20240315"


def test_partitions_made_for_a_file_that_fails_are_kept_and_logged(
    cli: Any, db: Db, tmp_path: Path
) -> None:
    db.execute(
        "CREATE TABLE t (id int, day date, v text, PRIMARY KEY (id, day)) PARTITION BY RANGE (day)"
    )
    f = write(tmp_path / "a.csv", "id,day,v\n1,2024-01-01,a\n2,2024-01-07,b\n3,infinity,c\n")
    result = cli(
        "--once", "--files", f, "--table", "t", "--pk", "id,day", "--mode", "upsert",
        "--create-partitions", "day",
    )  # fmt: skip
    assert result.code == 1
    assert "(row 3;" in _failure(result)
    [kept] = log_events(result.err, "partitions_kept")
    assert kept["partitions"] == ['"public"."t_p20240101"', '"public"."t_p20240107"']
    assert kept["level"].lower() == "warning"
    [made] = log_events(result.err, "partitions_created")
    assert made["names"] == kept["partitions"]
    assert db.val("SELECT count(*) FROM t") == 0
    assert db.val("SELECT count(*) FROM pg_inherits WHERE inhparent = 't'::regclass") == 2


def test_an_overlap_with_a_partition_that_holds_the_row_goes_on(dsn: str) -> None:
    """The race: someone made a week partition after the batch was refused. Its row is
    held now (go again, nothing made); a row it does not hold fails naming its bounds."""
    import asyncio

    import asyncpg

    from ingestd.db.connection import Connection
    from ingestd.db.partitions import create_partitions
    from ingestd.db.sql import Target
    from ingestd.exceptions import FileError

    def refused(day: str) -> FileError:
        return FileError(
            'no partition of relation "w" found for row (Partition key of the failing row '
            f"contains (day) = ({day}).)",
            sqlstate="23514",
        )

    async def scenario() -> None:
        raw = await asyncpg.connect(dsn)
        try:
            conn = Connection(raw)
            await raw.execute(
                "CREATE TABLE w (id int, day date) PARTITION BY RANGE (day);"
                "CREATE TABLE w_week PARTITION OF w "
                "FOR VALUES FROM ('2024-03-11') TO ('2024-03-18')"
            )
            target = Target(None, "w", ("id", "day"), ())
            made = await create_partitions(conn, target, "month", refused("2024-03-15"), None)
            assert (made.again, made.names) == (True, ())
            with pytest.raises(FileError) as caught:
                await create_partitions(conn, target, "month", refused("2024-03-20"), None)
            assert "it would overlap w_week FOR VALUES FROM ('2024-03-11') TO ('2024-03-18')" in (
                str(caught.value)
            )
            assert await raw.fetchval("SELECT count(*) FROM pg_inherits") == 1
        finally:
            await raw.close()

    asyncio.run(scenario())
