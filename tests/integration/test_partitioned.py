"""Declaratively partitioned targets: every mode, a row without a partition, created partitions."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import write
from tests.daemon import wait_for
from tests.helpers import log_events
from tests.pg import Db

BY_DAY = (
    "CREATE TABLE t (id int, day date, v text, PRIMARY KEY (id, day)) PARTITION BY RANGE (day);"
    "CREATE TABLE t_jan1 PARTITION OF t FOR VALUES FROM ('2024-01-01') TO ('2024-01-02');"
    "CREATE TABLE t_jan2 PARTITION OF t FOR VALUES FROM ('2024-01-02') TO ('2024-01-03')"
)


def _failure(result: Any) -> str:
    [event] = [e for e in log_events(result.err, "file_finished") if e["status"] == "failed"]
    return str(event["error"])


def _rows(db: Db) -> list[tuple[Any, ...]]:
    return [
        (r["id"], str(r["day"]), r["v"], r["part"])
        for r in db.fetch("SELECT id, day, v, tableoid::regclass::text AS part FROM t ORDER BY id")
    ]


@pytest.mark.parametrize("mode", ["append", "upsert", "merge"])
def test_each_mode_loads_into_the_partitions(cli: Any, db: Db, tmp_path: Path, mode: str) -> None:
    db.execute(BY_DAY)
    f = write(tmp_path / "a.csv", "id,day,v\n1,2024-01-01,a\n2,2024-01-02,b\n")
    assert cli("--once", "--files", f, "--table", "t", "--pk", "id,day", "--mode", mode).code == 0
    if mode != "append":  # a second version updates by key, across partitions
        g = write(tmp_path / "b.csv", "id,day,v\n2,2024-01-02,B\n3,2024-01-01,c\n")
        assert (
            cli("--once", "--files", g, "--table", "t", "--pk", "id,day", "--mode", mode).code == 0
        )
        assert _rows(db) == [
            (1, "2024-01-01", "a", "t_jan1"),
            (2, "2024-01-02", "B", "t_jan2"),
            (3, "2024-01-01", "c", "t_jan1"),
        ]
    else:
        assert _rows(db) == [(1, "2024-01-01", "a", "t_jan1"), (2, "2024-01-02", "b", "t_jan2")]
    assert [m["status"] for m in db.manifest()] == ["success"] * len(db.manifest())


@pytest.mark.parametrize("mode", ["upsert", "merge"])
def test_a_key_without_the_partition_column_is_refused_up_front(
    cli: Any, db: Db, tmp_path: Path, mode: str
) -> None:
    db.execute(BY_DAY)
    f = write(tmp_path / "a.csv", "id,day,v\n1,2024-01-01,a\n")
    result = cli("--once", "--files", f, "--table", "t", "--pk", "id", "--mode", mode)
    assert result.code == 1
    assert _failure(result) == (
        f"table t is partitioned by (day): the key (id) of --mode {mode} must include day; "
        "add it to --pk (and to the table's primary key), or use --mode append"
    )
    assert db.val("SELECT count(*) FROM t") == 0
    assert [m["status"] for m in db.manifest()] == ["failed"]


@pytest.mark.parametrize("mode", ["append", "upsert", "merge"])
def test_a_row_without_a_partition_fails_the_file_naming_the_row(
    cli: Any, db: Db, tmp_path: Path, mode: str
) -> None:
    db.execute(BY_DAY)
    body = "id,day,v\n1,2024-01-01,a\n2,2024-01-02,b\n3,2024-01-09,c\n4,2024-01-01,d\n"
    f = write(tmp_path / "a.csv", body)
    result = cli("--once", "--files", f, "--table", "t", "--pk", "id,day", "--mode", mode)
    assert result.code == 1
    assert _failure(result) == (
        'no partition of relation "t" found for row (row 3; Partition key of the failing row '
        "contains (day) = (2024-01-09).)"
    )
    [m] = db.manifest()
    assert (m["status"], m["rows"]) == ("failed", 0)
    assert db.val("SELECT count(*) FROM t") == 0


@pytest.mark.parametrize("mode", ["append", "upsert"])
def test_rows_without_a_partition_are_set_aside_under_max_bad_rows(
    cli: Any, db: Db, tmp_path: Path, mode: str
) -> None:
    db.execute(BY_DAY)
    body = "id,day,v\n1,2024-01-01,a\n2,2024-01-09,b\n3,2024-01-02,c\n"
    f = write(tmp_path / "a.csv", body)
    result = cli(
        "--once", "--files", f, "--table", "t", "--pk", "id,day", "--mode", mode,
        "--max-bad-rows", "1",
    )  # fmt: skip
    assert result.code == 0, result.err[-2000:]
    assert [r[0] for r in _rows(db)] == [1, 3]
    [reject] = db.fetch("SELECT row_number, raw, reason FROM ingestion_rejects")
    assert (reject["row_number"], reject["raw"]) == (2, '"2","2024-01-09","b"')
    assert "no partition of relation" in reject["reason"]


@pytest.mark.parametrize("mode", ["append", "upsert", "merge"])
def test_create_partitions_by_day_makes_what_the_rows_need(
    cli: Any, db: Db, tmp_path: Path, mode: str
) -> None:
    db.execute(BY_DAY)
    rows = "".join(f"{i},2024-01-{1 + i % 5:02d},v{i}\n" for i in range(1, 101))
    f = write(tmp_path / "a.csv", "id,day,v\n" + rows)
    result = cli(
        "--once", "--files", f, "--table", "t", "--pk", "id,day", "--mode", mode,
        "--create-partitions", "day", "--chunk-size", "30",
    )  # fmt: skip
    assert result.code == 0, result.err[-2000:]
    parts = db.fetch(
        "SELECT c.relname::text AS name, pg_get_expr(c.relpartbound, c.oid) AS bound "
        "FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = 't'::regclass ORDER BY c.relname"
    )
    assert [p["name"] for p in parts] == [
        "t_jan1", "t_jan2", "t_p20240103", "t_p20240104", "t_p20240105",
    ]  # fmt: skip
    assert parts[2]["bound"] == "FOR VALUES FROM ('2024-01-03') TO ('2024-01-04')"
    assert db.val("SELECT count(DISTINCT id) FROM t") == 100
    assert db.val("SELECT count(*) FROM t_p20240105") == 20
    assert log_events(result.err, "partitions_created")


def test_create_partitions_by_month_on_timestamptz(cli: Any, db: Db, tmp_path: Path) -> None:
    db.execute(
        "CREATE TABLE t (id int, at timestamptz, PRIMARY KEY (id, at)) PARTITION BY RANGE (at)"
    )
    f = write(tmp_path / "a.csv", "id,at\n1,2024-01-31 23:00:00+00\n2,2024-03-01 00:00:00+00\n")
    result = cli(
        "--once", "--files", f, "--table", "t", "--pk", "id,at", "--mode", "upsert",
        "--create-partitions", "month",
    )  # fmt: skip
    assert result.code == 0, result.err[-2000:]
    names = db.fetch(
        "SELECT c.relname::text AS n FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = 't'::regclass ORDER BY 1"
    )
    assert [r["n"] for r in names] == ["t_p202401", "t_p202403"]
    assert db.val("SELECT count(*) FROM t") == 2


def test_create_partitions_on_a_table_it_cannot_partition_says_so(
    cli: Any, db: Db, tmp_path: Path
) -> None:
    db.execute(
        "CREATE TABLE t (id int, kind text, PRIMARY KEY (id, kind)) PARTITION BY LIST (kind)"
    )
    f = write(tmp_path / "a.csv", "id,kind\n1,a\n")
    result = cli(
        "--once", "--files", f, "--table", "t", "--pk", "id,kind", "--create-partitions", "day"
    )
    assert result.code == 1
    assert _failure(result) == (
        "create_partitions needs a table range-partitioned on one date or timestamp column, "
        "and t is partitioned by list (kind): create the table (and its partitions) yourself, "
        "or leave create_partitions unset"
    )


def test_an_existing_partition_of_another_shape_is_left_alone(
    cli: Any, db: Db, tmp_path: Path
) -> None:
    """A week partition covers the day: no day partition is made over it."""
    db.execute(
        "CREATE TABLE t (id int, day date, v text, PRIMARY KEY (id, day)) PARTITION BY RANGE (day);"
        "CREATE TABLE t_week PARTITION OF t FOR VALUES FROM ('2024-01-01') TO ('2024-01-08')"
    )
    f = write(tmp_path / "a.csv", "id,day,v\n1,2024-01-03,a\n2,2024-01-10,b\n")
    result = cli(
        "--once", "--files", f, "--table", "t", "--pk", "id,day", "--create-partitions", "day"
    )
    assert result.code == 0, result.err[-2000:]
    assert _rows(db) == [(1, "2024-01-03", "a", "t_week"), (2, "2024-01-10", "b", "t_p20240110")]


TOTAL = 40_000


def test_kill_9_while_creating_partitions_then_resume_loads_every_row_once(
    dsn: str, db: Db, tmp_path: Path
) -> None:
    db.execute(
        "CREATE TABLE t (id int, day date, v text, PRIMARY KEY (id, day)) PARTITION BY RANGE (day)"
    )
    rows = "".join(f"{i},2024-{1 + i // 4000:02d}-{1 + i % 28:02d},x\n" for i in range(TOTAL))
    f = write(tmp_path / "big.csv", "id,day,v\n" + rows)
    cmd = [
        sys.executable, "-m", "ingestd", "--once", "--files", str(f), "--dsn", dsn,
        "--table", "t", "--pk", "id,day", "--mode", "append", "--chunk-size", "1000",
        "--create-partitions", "month", "--metrics-addr", "off", "--log-level", "WARNING",
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: db.progress() >= TOTAL // 3 or proc.poll() is not None, 60, "rows")
    finally:
        proc.kill()
        proc.wait(10)
    assert db.progress() < TOTAL, "the load finished before the kill: nothing was tested"
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert db.val("SELECT count(*) FROM t") == TOTAL
    assert db.val("SELECT count(DISTINCT id) FROM t") == TOTAL
    [m] = db.manifest()
    assert (m["status"], m["rows"]) == ("success", TOTAL)
    assert db.val("SELECT count(*) FROM pg_inherits WHERE inhparent = 't'::regclass") == 10


def test_check_config_reports_each_target_and_whether_its_key_fits(
    dsn: str, db: Db, tmp_path: Path
) -> None:
    from tests.conftest import run_cli

    db.execute(BY_DAY)
    db.execute("CREATE TABLE p (id int PRIMARY KEY, v text); CREATE TABLE nokey (id int)")
    (tmp_path / "inbox").mkdir()
    config = write(
        tmp_path / "ingestd.toml",
        f'inbox = "{tmp_path / "inbox"}"\n'
        '[[contracts]]\nname = "days"\npattern = "d*"\ntable = "t"\npk = ["id", "day"]\n'
        'create_partitions = "day"\n'
        '[[contracts]]\nname = "days_bad"\npattern = "x*"\ntable = "t"\npk = ["id"]\n'
        '[[contracts]]\nname = "plain"\npattern = "p*"\ntable = "p"\npk = ["id"]\n'
        '[[contracts]]\nname = "nokey"\npattern = "n*"\ntable = "nokey"\npk = ["id"]\n'
        '[[contracts]]\nname = "new"\npattern = "w*"\ntable = "brand_new"\npk = ["id"]\n',
    )
    result = run_cli(["check-config", config, "--dsn", dsn])
    lines = result.out.splitlines()
    assert lines[lines.index("  targets:") + 1 :] == [
        "  days: table t is partitioned by range (day); key (id, day) fits",
        "  days_bad: table t is partitioned by range (day); key (id) does not fit: table t is "
        "partitioned by (day): the key (id) of --mode upsert must include day; add it to --pk "
        "(and to the table's primary key), or use --mode append",
        "  plain: table p is plain; key (id) fits",
        "  nokey: table nokey is plain; key (id) does not fit: table nokey has no primary key "
        "or unique index on (id), which upsert needs",
        "  new: table brand_new is missing (ingestd creates it, a plain table, on the first "
        "file); key (id) fits",
    ]
    assert result.code == 1
    assert db.val("SELECT to_regclass('brand_new')") is None  # nothing was touched


def test_a_row_no_partition_can_be_made_for_fails_naming_it(
    cli: Any, db: Db, tmp_path: Path
) -> None:
    """'infinity' has no day: the other rows' partitions are made, that row fails the file."""
    db.execute(BY_DAY)
    f = write(tmp_path / "a.csv", "id,day,v\n1,2024-01-01,a\n2,2024-01-07,b\n3,infinity,c\n")
    result = cli(
        "--once", "--files", f, "--table", "t", "--pk", "id,day", "--mode", "upsert",
        "--create-partitions", "day",
    )  # fmt: skip
    assert result.code == 1
    assert _failure(result) == (
        'no partition of relation "t" found for row (row 3; Partition key of the failing row '
        "contains (day) = (infinity).)"
    )
    assert db.val("SELECT count(*) FROM t") == 0
    assert db.val("SELECT to_regclass('t_p20240107')::text") == "t_p20240107"


def test_create_partitions_on_a_missing_table_is_refused_up_front(
    cli: Any, db: Db, tmp_path: Path
) -> None:
    f = write(tmp_path / "a.csv", "id,day\n1,2024-01-01\n")
    result = cli("--once", "--files", f, "--table", "t", "--pk", "id", "--create-partitions", "day")
    assert result.code == 1
    assert _failure(result).startswith(
        "create_partitions needs a table range-partitioned on one date or timestamp column, "
        "and t is missing"
    )
    assert db.val("SELECT to_regclass('t')") is None


def test_workers_needing_the_same_new_partitions_at_once_all_load(
    cli: Any, db: Db, tmp_path: Path
) -> None:
    db.execute(
        "CREATE TABLE t (id int, day date, v text, PRIMARY KEY (id, day)) PARTITION BY RANGE (day)"
    )
    inbox = tmp_path / "inbox"
    for n in range(4):
        rows = "".join(f"{n * 1000 + i},2024-02-{1 + i % 9:02d},x\n" for i in range(1000))
        write(inbox / f"f{n}.csv", "id,day,v\n" + rows)
    result = cli(
        "--once", "--inbox", inbox, "--table", "t", "--pk", "id,day", "--mode", "upsert",
        "--concurrency", "4", "--chunk-size", "200", "--create-partitions", "day",
    )  # fmt: skip
    assert result.code == 0, result.err[-2000:]
    assert db.val("SELECT count(DISTINCT id) FROM t") == 4000
    assert db.val("SELECT count(*) FROM pg_inherits WHERE inhparent = 't'::regclass") == 9


def test_create_partitions_as_a_role_that_does_not_own_the_table_says_what_to_do(
    dsn: str, db: Db, tmp_path: Path
) -> None:
    from urllib.parse import urlsplit, urlunsplit

    from tests.conftest import run_cli

    db.execute(BY_DAY)
    db.execute(
        "CREATE ROLE part_loader LOGIN; GRANT SELECT, INSERT, UPDATE ON t TO part_loader;"
        "GRANT CREATE, USAGE ON SCHEMA public TO part_loader"
    )
    try:
        parts = urlsplit(dsn)
        host = parts.netloc.rsplit("@", 1)[-1]
        as_loader = urlunsplit((parts.scheme, f"part_loader@{host}", parts.path, parts.query, ""))
        f = write(tmp_path / "a.csv", "id,day,v\n1,2024-01-01,a\n2,2024-01-05,b\n")
        result = run_cli([
            "--dsn", as_loader, "--metrics-addr", "off", "--log-format", "json", "--once",
            "--files", f, "--table", "t", "--pk", "id,day", "--create-partitions", "day",
        ])  # fmt: skip
        assert result.code == 1
        assert _failure(result) == (
            'create_partitions could not create partition "public"."t_p20240105" of t: '
            "must be owner of table t; run ingestd as the table's owner, or create the "
            "partitions yourself"
        )
        assert db.val("SELECT count(*) FROM t") == 0
    finally:
        db.execute("DROP OWNED BY part_loader; DROP ROLE part_loader")
