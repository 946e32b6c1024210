"""--backfill: secondary indexes dropped before a --once load and rebuilt identically after it;
the ones correctness needs kept; a non-owner refused up front; a daemon refused on a table
in backfill; leftovers of a killed run finished by the next run or `ingestd backfill --finish`."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

from tests.conftest import CliResult, run_cli, write
from tests.helpers import log_events
from tests.pg import Db

RECORDS = "ingestion_backfill_indexes"
Cli = Callable[..., CliResult]

SCHEMA = """
CREATE TABLE t (id bigint PRIMARY KEY, a text, b int, c text, code text, parent bigint);
CREATE UNIQUE INDEX t_code_key ON t (code);
CREATE INDEX t_a_idx ON t (a);
CREATE INDEX t_b_partial ON t (b) WHERE b > 10;
CREATE INDEX t_lower_c ON t (lower(c));
CREATE INDEX t_b_incl ON t (b) INCLUDE (a);
CREATE INDEX t_c_hash ON t USING hash (c) WITH (fillfactor = 80);
COMMENT ON INDEX t_a_idx IS 'lookups by a';
CREATE TABLE child (id int PRIMARY KEY, code text REFERENCES t (code));
"""
DROPPED = {"t_a_idx", "t_b_partial", "t_lower_c", "t_b_incl", "t_c_hash"}
KEPT = {"t_pkey", "t_code_key"}


def indexdefs(db: Db, table: str = "t") -> dict[str, str]:
    rows = db.fetch(
        "SELECT indexrelid::regclass::text AS name, pg_get_indexdef(indexrelid) AS def "
        "FROM pg_index WHERE indrelid = $1::regclass",
        table,
    )
    return {r["name"]: r["def"] for r in rows}


def records(db: Db) -> list[str]:
    if not db.val("SELECT to_regclass($1) IS NOT NULL", RECORDS):
        return []
    return [r["index_name"] for r in db.fetch(f"SELECT index_name FROM {RECORDS} ORDER BY 1")]


def error_lines(err: str) -> list[str]:
    """What a person reads on stderr: the lines that are not JSON log events."""
    return [line for line in err.splitlines() if line.strip() and not line.startswith("{")]


def data(n: int, start: int = 1) -> str:
    lines = [f"{i},a{i % 97},{i % 50},C{i},k{i}," for i in range(start, start + n)]
    return "id,a,b,c,code,parent\n" + "\n".join(lines) + "\n"


@pytest.fixture
def table(db: Db) -> dict[str, str]:
    db.execute(SCHEMA)
    return indexdefs(db)


def test_backfill_drops_secondary_indexes_and_rebuilds_them_identically(
    cli: Cli, db: Db, table: dict[str, str], tmp_path: Path
) -> None:
    f = write(tmp_path / "in" / "t.csv", data(2_000))
    r = cli("--files", f, "--table", "t", "--pk", "id", "--backfill")
    assert r.code == 0, r.err
    assert int(db.val("SELECT count(DISTINCT id) FROM t")) == 2_000
    assert indexdefs(db) == table  # every index there once, each definition as before
    assert db.val("SELECT obj_description('t_a_idx'::regclass, 'pg_class')") == "lookups by a"
    assert records(db) == []
    [dropped] = [e for e in log_events(r.err) if e.get("event") == "backfill_indexes_dropped"]
    assert set(dropped["dropped"]) == DROPPED
    assert {k.split(":")[0] for k in dropped["kept"]} == KEPT
    analyzed = [e for e in log_events(r.err) if e.get("event") == "target_analyzed"]
    assert [e["table"] for e in analyzed] == ["public.t"]
    assert db.val("SELECT last_analyze IS NOT NULL FROM pg_stat_user_tables WHERE relname='t'")


def test_dry_run_lists_what_would_be_dropped_and_touches_nothing(
    cli: Cli, db: Db, table: dict[str, str], tmp_path: Path
) -> None:
    f = write(tmp_path / "in" / "t.csv", data(10))
    r = cli("--files", f, "--table", "t", "--pk", "id", "--backfill", "--dry-run")
    assert r.code == 0, r.err
    for name in DROPPED:
        assert f"drop and rebuild {name}: CREATE INDEX {name} ON public.t" in r.out
    assert "keep t_pkey: the primary key" in r.out
    assert "keep t_code_key: backs constraint child_code_fkey on child" in r.out
    assert indexdefs(db) == table
    assert int(db.val("SELECT count(*) FROM t")) == 0


def test_backfill_without_once_is_a_usage_error(cli: Cli, tmp_path: Path) -> None:
    inbox = tmp_path / "in"
    inbox.mkdir()
    r = cli("--inbox", inbox, "--table", "t", "--pk", "id", "--backfill")
    assert r.code == 2
    assert r.err.strip().count("\n") == 0 and "backfill is for --once runs" in r.err


@pytest.fixture
def other_role(db: Db, dsn: str) -> Iterator[str]:
    name = "bf_" + uuid.uuid4().hex[:8]
    db.execute(f"CREATE ROLE {name} LOGIN PASSWORD 'pw-{name}'")
    parts = urlsplit(dsn)
    netloc = f"{name}:pw-{name}@{parts.netloc.rpartition('@')[2]}"
    yield urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    db.execute(f"DROP OWNED BY {name}")
    db.execute(f"DROP ROLE {name}")


def test_a_role_that_does_not_own_the_table_is_refused_before_anything_changes(
    cli: Cli, db: Db, table: dict[str, str], tmp_path: Path, other_role: str
) -> None:
    f = write(tmp_path / "in" / "t.csv", data(10))
    assert cli("--files", f, "--table", "t", "--pk", "id").code == 0  # the manifest exists
    role = urlsplit(other_role).username
    db.execute(f"GRANT ALL ON ALL TABLES IN SCHEMA public TO {role}")
    db.execute(f"GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO {role}")
    g = write(tmp_path / "in" / "u.csv", data(10, start=100))
    args = ["--dsn", other_role, "--metrics-addr", "off", "--files", g, "--table", "t"]
    r = run_cli([*map(str, args), "--pk", "id", "--backfill"])
    assert r.code == 2
    [line] = error_lines(r.err)
    assert "only a table's owner" in line and "public.t (owner" in line
    assert indexdefs(db) == table
    assert records(db) == []
    assert int(db.val("SELECT count(*) FROM t")) == 10  # the second file did not load


def _leave_dropped(db: Db, cli: Cli, tmp_path: Path) -> None:
    """What a backfill killed after its drop leaves: the indexes gone, their records there."""
    f = write(tmp_path / "in" / "t.csv", data(10))
    assert cli("--files", f, "--table", "t", "--pk", "id").code == 0
    db.execute(f"""CREATE TABLE {RECORDS} (target_schema text NOT NULL, target_table text NOT NULL,
        index_name text NOT NULL, definition text NOT NULL, tablespace text, comment text,
        is_constraint boolean NOT NULL DEFAULT false, run_id text NOT NULL,
        owner_token text NOT NULL, dropped_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (target_schema, index_name))""")
    for name, definition in indexdefs(db).items():
        if name in DROPPED:
            db.execute(
                f"INSERT INTO {RECORDS} VALUES ('public', 't', $1, $2, NULL, NULL, false, "
                "'deadrun', 'feedfeedfeedfeed')",
                name,
                definition,
            )
            db.execute(f"DROP INDEX {name}")


def test_a_daemon_refuses_to_start_on_a_table_in_backfill(
    cli: Cli, db: Db, table: dict[str, str], tmp_path: Path
) -> None:
    _leave_dropped(db, cli, tmp_path)
    r = cli("--inbox", tmp_path / "in", "--table", "t", "--pk", "id")
    assert r.code == 2
    [line] = error_lines(r.err)
    assert "table public.t is in backfill: 5 secondary index(es) dropped" in line
    assert "ingestd backfill --finish" in line
    assert set(indexdefs(db)) == KEPT


def test_backfill_finish_rebuilds_exactly_the_recorded_indexes(
    cli: Cli, db: Db, table: dict[str, str], tmp_path: Path, dsn: str
) -> None:
    _leave_dropped(db, cli, tmp_path)
    # One rebuilt by hand already, one left invalid by a killed CREATE INDEX CONCURRENTLY.
    db.execute(table["t_a_idx"])
    db.execute("INSERT INTO t (id, b) VALUES (-1, 1), (-2, 1)")
    with pytest.raises(Exception, match="could not create unique index"):
        db.execute("CREATE UNIQUE INDEX CONCURRENTLY t_b_partial ON t (b) WHERE b > 10 OR b = 1")
    assert not db.val("SELECT indisvalid FROM pg_index WHERE indexrelid = 't_b_partial'::regclass")
    listing = run_cli(["backfill", "--dsn", dsn])
    assert listing.code == 0 and "5 index(es) dropped by a backfill" in listing.out
    r = run_cli(["backfill", "--finish", "--dsn", dsn])
    assert r.code == 0, r.err
    assert "rebuilt 4 index(es)" in r.out and "already there (records cleared): t_a_idx" in r.out
    assert indexdefs(db) == table
    assert db.val("SELECT bool_and(indisvalid) FROM pg_index WHERE indrelid = 't'::regclass")
    assert records(db) == []
    again = run_cli(["backfill", "--finish", "--dsn", dsn])
    assert again.code == 0 and "rebuilt 0 index(es)" in again.out


def test_the_next_once_run_rebuilds_what_a_killed_backfill_left(
    cli: Cli, db: Db, table: dict[str, str], tmp_path: Path
) -> None:
    _leave_dropped(db, cli, tmp_path)
    f = write(tmp_path / "in2" / "t2.csv", data(10, start=50))
    r = cli("--files", f, "--table", "t", "--pk", "id")
    assert r.code == 0, r.err
    assert indexdefs(db) == table and records(db) == []


def test_a_record_that_is_not_an_index_definition_is_not_executed(
    cli: Cli, db: Db, table: dict[str, str], tmp_path: Path, dsn: str
) -> None:
    _leave_dropped(db, cli, tmp_path)
    db.execute(
        f"UPDATE {RECORDS} SET definition = 'CREATE INDEX t_a_idx ON public.t USING btree (a); "
        "DROP TABLE child' WHERE index_name = 't_a_idx'"
    )
    db.execute(
        f"UPDATE {RECORDS} SET definition = 'DROP TABLE child' WHERE index_name = 't_lower_c'"
    )
    r = run_cli(["backfill", "--finish", "--dsn", dsn])
    assert r.code == 1
    assert "FAILED t_lower_c: the recorded definition" in r.out
    assert "FAILED t_a_idx: the recorded definition" in r.out
    assert db.val("SELECT to_regclass('child') IS NOT NULL")
    assert sorted(records(db)) == ["t_a_idx", "t_lower_c"]


def test_dead_tuples_metric_and_analyze_after_large_upserts(
    cli: Cli, db: Db, table: dict[str, str], tmp_path: Path
) -> None:
    first = write(tmp_path / "in" / "a.csv", data(300))
    assert cli("--files", first, "--table", "t", "--pk", "id").code == 0
    second = write(tmp_path / "in" / "b.csv", data(300).replace(",k", ",j"))
    r = cli("--files", second, "--table", "t", "--pk", "id", "--analyze-after-rows", "200")
    assert r.code == 0, r.err
    [analyzed] = [e for e in log_events(r.err) if e.get("event") == "target_analyzed"]
    assert analyzed["table"] == "t" and analyzed["rows_written"] == 300
    assert analyzed["dead_tuples"] >= 300  # every row updated once


def test_a_run_without_concurrency_chooses_it_from_cores_and_slots_and_says_why(
    cli: Cli, db: Db, tmp_path: Path
) -> None:
    from ingestd.defaults import client_cores

    f = write(tmp_path / "in" / "t.csv", data(10))
    r = cli("--files", f, "--table", "t", "--pk", "id")
    assert r.code == 0, r.err
    [chosen] = [e for e in log_events(r.err) if e.get("event") == "defaults_chosen"]
    slots = int(db.val("SHOW max_connections")) - int(db.val("SHOW superuser_reserved_connections"))
    slots -= int(db.val("SELECT coalesce(current_setting('reserved_connections', true), '0')"))
    assert chosen["concurrency"] == max(1, min(client_cores(), slots // 2, 8))
    assert chosen["pool_size"] == chosen["concurrency"] + 2 and chosen["reason"]
    given = cli("--files", f, "--table", "t", "--pk", "id", "--concurrency", "3")
    assert not [e for e in log_events(given.err) if e.get("event") == "defaults_chosen"]


def test_a_target_in_another_schema_keeps_its_indexes_through_a_backfill(
    cli: Cli, db: Db, tmp_path: Path
) -> None:
    db.execute("CREATE SCHEMA sales; CREATE TABLE sales.\"T2\" (id int PRIMARY KEY, a text);"
               "CREATE INDEX \"T2_a\" ON sales.\"T2\" (lower(a)) WHERE a <> ''")  # fmt: skip
    before = indexdefs(db, 'sales."T2"')
    f = write(tmp_path / "in" / "t2.csv", "id,a\n1,x\n2,y\n")
    r = cli("--files", f, "--schema", "sales", "--table", "T2", "--pk", "id", "--backfill")
    assert r.code == 0, r.err
    [dropped] = log_events(r.err, "backfill_indexes_dropped")
    assert dropped["dropped"] == ["T2_a"] and dropped["table"] == "sales.T2"
    assert indexdefs(db, 'sales."T2"') == before
    assert int(db.val('SELECT count(*) FROM sales."T2"')) == 2


def test_a_table_dropped_while_in_backfill_clears_its_records(
    cli: Cli, db: Db, table: dict[str, str], tmp_path: Path, dsn: str
) -> None:
    _leave_dropped(db, cli, tmp_path)
    db.execute("DROP TABLE child; DROP TABLE t")
    r = run_cli(["backfill", "--finish", "--dsn", dsn])
    assert r.code == 0, r.out + r.err
    assert records(db) == []


def test_a_role_that_may_not_read_the_records_still_loads(
    cli: Cli, db: Db, table: dict[str, str], tmp_path: Path, other_role: str
) -> None:
    _leave_dropped(db, cli, tmp_path)  # the records table belongs to the admin, no grant
    role = urlsplit(other_role).username
    db.execute(f"GRANT ALL ON t, ingestion_manifest, ingestion_rejects TO {role}")
    db.execute(f"GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO {role}")
    db.execute(f"REVOKE ALL ON {RECORDS} FROM {role}")
    g = write(tmp_path / "in2" / "u.csv", data(10, start=100))
    args = ["--dsn", other_role, "--metrics-addr", "off", "--files", g, "--table", "t"]
    r = run_cli([*map(str, args), "--pk", "id", "--log-format", "json"])
    assert r.code == 0, r.err
    assert log_events(r.err, "backfill_check_skipped")
    assert int(db.val("SELECT count(*) FROM t")) == 20


def test_the_dead_tuples_gauge_is_sampled_after_each_file(db: Db, dsn: str) -> None:
    import asyncio

    from ingestd.db.database import Database
    from ingestd.metrics import Metrics
    from ingestd.retry import Backoff
    from ingestd.upkeep import Upkeep

    db.execute("CREATE TABLE d (id int PRIMARY KEY, v text)")
    db.execute("INSERT INTO d SELECT g, 'a' FROM generate_series(1, 500) g")
    version = int(db.val("SHOW server_version_num"))

    async def go() -> float:
        metrics = Metrics()
        upkeep = Upkeep(10_000, metrics, version)
        pool = await Database.open(dsn, size=1, connect_timeout_s=5, statement_timeout_s=30,
                                   attempts=0, backoff=Backoff())  # fmt: skip
        try:
            async with pool.connection() as conn:
                await conn.execute("UPDATE d SET v = 'b' WHERE id <= 200")  # this session's
                await upkeep.after_file(conn, '"d"', "d", "upsert", 200)
        finally:
            await pool.close()
        value = metrics.registry.get_sample_value("ingest_dead_tuples", {"table_name": "d"})
        return -1.0 if value is None else value

    assert asyncio.run(go()) == 200


def test_a_dry_run_over_an_inbox_lists_the_backfill_plan_too(
    cli: Cli, db: Db, table: dict[str, str], tmp_path: Path
) -> None:
    write(tmp_path / "in" / "t.csv", data(10))
    r = cli("--inbox", tmp_path / "in", "--table", "t", "--pk", "id", "--backfill", "--dry-run")
    assert r.code == 0, r.err
    assert "drop and rebuild t_a_idx" in r.out
    assert indexdefs(db) == table
