"""Backfill cases a breaker found: indexes in another tablespace (partial, INCLUDE,
expression), a table renamed or moved between a killed backfill and its rebuild, a rebuild
the server refuses named as such, two first backfills at once, an index attached to a
partitioned index, statistics targets, CONNECTION LIMITs, a refused non-owner."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import pytest

from tests.conftest import run_cli, write
from tests.daemon import wait_for
from tests.helpers import log_events
from tests.integration.test_backfill import (
    DROPPED,
    RECORDS,
    SCHEMA,
    Cli,
    _leave_dropped,
    data,
    error_lines,
    indexdefs,
    other_role,  # noqa: F401 - a fixture
    records,
)
from tests.pg import Db


def tablespaces(db: Db, table: str = "t") -> dict[str, str | None]:
    rows = db.fetch(
        "SELECT c.relname::text AS name, s.spcname::text AS ts FROM pg_index x "
        "JOIN pg_class c ON c.oid = x.indexrelid LEFT JOIN pg_tablespace s "
        "ON s.oid = c.reltablespace WHERE x.indrelid = $1::regclass",
        table,
    )
    return {r["name"]: r["ts"] for r in rows}


@pytest.fixture
def tablespace(db: Db) -> Iterator[str]:
    """A real tablespace (its directory owned by the server's user), dropped after."""
    if os.environ.get("INGESTD_TEST_DSN"):
        pytest.skip("an external server: its file system is not this machine's")
    try:
        data_dir = Path(db.val("SHOW data_directory"))
        uid, gid = data_dir.stat().st_uid, data_dir.stat().st_gid
        where = Path(tempfile.mkdtemp(prefix="ingestd-ts-"))
        where.chmod(0o700)
        os.chown(where, uid, gid)
    except (OSError, asyncpg.PostgresError) as exc:
        pytest.skip(f"cannot make a directory for a tablespace: {exc}")
    name = "ts_" + uuid.uuid4().hex[:8]
    try:
        db.execute(f"CREATE TABLESPACE {name} LOCATION '{where}'")
    except asyncpg.PostgresError as exc:
        shutil.rmtree(where, ignore_errors=True)
        pytest.skip(f"CREATE TABLESPACE refused: {exc}")
    try:
        yield name
    finally:
        db.execute("DROP TABLE IF EXISTS child, t CASCADE")
        db.execute(f"DROP TABLESPACE IF EXISTS {name}")
        shutil.rmtree(where, ignore_errors=True)


def test_indexes_in_another_tablespace_are_rebuilt_there(
    cli: Cli, db: Db, tablespace: str, tmp_path: Path
) -> None:
    db.execute(SCHEMA)
    ts = tablespace
    db.execute(
        f"CREATE INDEX t_ts_partial ON t (b) TABLESPACE {ts} WHERE b > 5;"
        f"CREATE INDEX t_ts_incl ON t (b) INCLUDE (a) TABLESPACE {ts};"
        f"CREATE INDEX t_ts_expr ON t (lower(c)) TABLESPACE {ts} WHERE c <> '';"
        f"CREATE INDEX t_ts_plain ON t (a, b) TABLESPACE {ts}"
    )
    before, spaces = indexdefs(db), tablespaces(db)
    assert spaces["t_ts_partial"] == tablespace and spaces["t_a_idx"] is None
    f = write(tmp_path / "in" / "t.csv", data(200))
    r = cli("--files", f, "--table", "t", "--pk", "id", "--backfill")
    assert r.code == 0, r.err
    [dropped] = log_events(r.err, "backfill_indexes_dropped")
    assert {"t_ts_partial", "t_ts_incl", "t_ts_expr", "t_ts_plain"} <= set(dropped["dropped"])
    assert indexdefs(db) == before and tablespaces(db) == spaces
    assert records(db) == []


def test_a_rebuild_the_server_refuses_is_named_with_what_to_do_not_as_a_bug(
    cli: Cli, db: Db, tmp_path: Path, dsn: str
) -> None:
    db.execute(SCHEMA)
    _leave_dropped(db, cli, tmp_path)
    db.execute(
        f"UPDATE {RECORDS} SET definition = definition || ' WHERE (' WHERE index_name = 't_a_idx'"
    )
    db.execute(f"UPDATE {RECORDS} SET tablespace = 'no_such_ts' WHERE index_name = 't_lower_c'")
    r = run_cli(["backfill", "--finish", "--dsn", dsn])
    assert r.code == 1
    assert "bug in ingestd" not in r.out + r.err
    for name in ("t_a_idx", "t_lower_c"):
        [line] = [x for x in r.out.splitlines() if f"FAILED {name}:" in x]
        assert f"index {name} on public.t cannot be rebuilt from its recorded definition" in line
        assert f'row in "{RECORDS}"' in line
    assert sorted(records(db)) == ["t_a_idx", "t_lower_c"]  # kept for the next attempt


def _kill_after_the_drop(dsn: str, db: Db, tmp_path: Path) -> None:
    """A --backfill run killed after its drop (its claims held back by a lock)."""
    first = write(tmp_path / "in" / "first.csv", data(10, start=1000))
    assert run_cli(["--dsn", dsn, "--metrics-addr", "off", "--files", str(first),
                    "--table", "t", "--pk", "id"]).code == 0  # fmt: skip
    f = write(tmp_path / "in" / "t.csv", data(100))
    cmd = [sys.executable, "-m", "ingestd", "--once", "--files", str(f), "--dsn", dsn,
           "--table", "t", "--pk", "id", "--metrics-addr", "off", "--backfill"]  # fmt: skip

    async def run() -> None:
        conn = await asyncpg.connect(dsn)
        try:
            async with conn.transaction():
                await conn.execute("LOCK TABLE ingestion_manifest IN EXCLUSIVE MODE")
                proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # noqa: ASYNC220
                try:
                    await asyncio.to_thread(
                        wait_for,
                        lambda: len(records(db)) == len(DROPPED) or proc.poll() is not None,
                        timeout_s=60, what="the drop",
                    )  # fmt: skip
                    assert proc.poll() is None
                finally:
                    proc.kill()
                    proc.wait(10)
        finally:
            await conn.close()

    asyncio.run(run())
    assert set(records(db)) == DROPPED


def test_a_table_renamed_and_moved_after_a_killed_backfill_gets_its_indexes_back(
    db: Db, tmp_path: Path, dsn: str
) -> None:
    db.execute(SCHEMA)
    before = indexdefs(db)
    _kill_after_the_drop(dsn, db, tmp_path)
    db.execute('CREATE SCHEMA "Arch ive"; ALTER TABLE t RENAME TO "T old"')
    db.execute('ALTER TABLE "T old" SET SCHEMA "Arch ive"')
    odd = run_cli(["backfill", "--finish", "--dsn", dsn])  # a name ingestd does not spell
    assert odd.code == 1 and "crashed" not in odd.err
    assert "is now Arch ive.T old, a name outside ingestd's identifier rule" in odd.out
    assert set(records(db)) == DROPPED
    db.execute('CREATE SCHEMA "Archive2"; ALTER TABLE "Arch ive"."T old" RENAME TO "T_old"')
    db.execute('ALTER TABLE "Arch ive"."T_old" SET SCHEMA "Archive2"')
    r = run_cli(["backfill", "--finish", "--dsn", dsn])
    assert r.code == 0, r.out + r.err
    assert f"rebuilt {len(DROPPED)} index(es)" in r.out
    now = indexdefs(db, '"Archive2"."T_old"')
    moved = {n.removeprefix('"Archive2".'): d for n, d in now.items()}
    spelled = ' ON "Archive2"."T_old" '
    assert moved == {n: d.replace(" ON public.t ", spelled) for n, d in before.items()}
    assert records(db) == []


def test_a_table_gone_for_good_logs_each_definition_it_clears(
    db: Db, tmp_path: Path, dsn: str
) -> None:
    db.execute(SCHEMA)
    before = indexdefs(db)
    _kill_after_the_drop(dsn, db, tmp_path)
    db.execute("DROP TABLE child, t")
    r = run_cli(["backfill", "--finish", "--dsn", dsn])
    assert r.code == 0, r.out + r.err
    for name in DROPPED:  # the record was the last place each definition was kept
        assert f"WARNING backfill_table_gone index={name} " in r.err
        assert f"definition={before[name]}\n" in r.err
    assert records(db) == []


def test_two_first_backfills_at_once_both_load(db: Db, dsn: str, tmp_path: Path) -> None:
    db.execute(SCHEMA + "CREATE TABLE u (id int PRIMARY KEY, a text); CREATE INDEX u_a ON u (a);")
    for i in range(3):  # the race is the first creation of the records table: a fresh one
        db.execute(f"DROP TABLE IF EXISTS {RECORDS}")
        procs = []
        for table, body in (("t", data(50, start=i * 100)), ("u", f"id,a\n{i},x\n")):
            f = write(tmp_path / f"in{i}{table}" / f"{table}.csv", body)
            cmd = [sys.executable, "-m", "ingestd", "--once", "--files", str(f), "--dsn", dsn,
                   "--table", table, "--pk", "id", "--metrics-addr", "off",
                   "--backfill"]  # fmt: skip
            procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
        for p in procs:
            _, err = p.communicate(timeout=120)
            assert p.returncode == 0, err.decode()[-2000:]
    assert records(db) == [] and "u_a" in indexdefs(db, "u")
    assert int(db.val("SELECT count(*) FROM u")) == 3


def test_an_index_attached_to_a_partitioned_index_is_kept(cli: Cli, db: Db, tmp_path: Path) -> None:
    db.execute(
        "CREATE TABLE p (id int PRIMARY KEY, a text) PARTITION BY RANGE (id);"
        "CREATE TABLE p1 PARTITION OF p FOR VALUES FROM (0) TO (1000);"
        "CREATE INDEX p_a ON p (a); CREATE INDEX p1_own ON p1 (lower(a));"
    )
    before = indexdefs(db, "p1")
    f = write(tmp_path / "in" / "p1.csv", "id,a\n1,x\n2,y\n")
    r = cli("--files", f, "--table", "p1", "--pk", "id", "--backfill")
    assert r.code == 0, r.err
    [dropped] = log_events(r.err, "backfill_indexes_dropped")
    assert dropped["dropped"] == ["p1_own"]
    assert "p1_a_idx: attached to a partitioned index" in dropped["kept"]
    assert indexdefs(db, "p1") == before
    assert int(db.val("SELECT count(*) FROM p")) == 2


def test_statistics_targets_of_index_columns_survive_the_rebuild(
    cli: Cli, db: Db, tmp_path: Path
) -> None:
    db.execute(SCHEMA + "ALTER INDEX t_lower_c ALTER COLUMN 1 SET STATISTICS 500")
    f = write(tmp_path / "in" / "t.csv", data(50))
    r = cli("--files", f, "--table", "t", "--pk", "id", "--backfill")
    assert r.code == 0, r.err
    target = db.val(
        "SELECT attstattarget FROM pg_attribute "
        "WHERE attrelid = 't_lower_c'::regclass AND attnum = 1"
    )
    assert target == 500


def test_the_default_concurrency_respects_a_connection_limit(
    db: Db,
    other_role: str,  # noqa: F811 - the fixture imported above
    tmp_path: Path,
) -> None:
    role = urlsplit(other_role).username
    db.execute(f"GRANT CREATE ON SCHEMA public TO {role}")
    f = write(tmp_path / "in" / "t.csv", "id,v\n1,a\n2,b\n")
    base = ["--dsn", other_role, "--metrics-addr", "off", "--log-format", "json",
            "--files", str(f), "--table", "t", "--pk", "id"]  # fmt: skip
    db.execute(f"ALTER ROLE {role} CONNECTION LIMIT 3")
    r = run_cli(base)
    assert r.code == 0, r.err
    [chosen] = log_events(r.err, "defaults_chosen")
    assert chosen["concurrency"] == 1 and chosen["pool_size"] == 3
    assert f"CONNECTION LIMIT 3 of role {role}" in chosen["reason"]
    db.execute(f"ALTER ROLE {role} CONNECTION LIMIT 2")
    refused = run_cli(base)
    assert refused.code == 2
    [line] = error_lines(refused.err)
    assert f"the CONNECTION LIMIT of role {role} is 2, and ingestd needs 3 connections" in line


def test_a_refused_non_owner_backfill_creates_no_manifest(
    db: Db,
    other_role: str,  # noqa: F811 - the fixture imported above
    tmp_path: Path,
) -> None:
    db.execute("CREATE TABLE t (id int PRIMARY KEY, a text); CREATE INDEX t_a ON t (a)")
    role = urlsplit(other_role).username
    db.execute(f"GRANT ALL ON t TO {role}; GRANT CREATE ON SCHEMA public TO {role}")
    f = write(tmp_path / "in" / "t.csv", "id,a\n1,x\n")
    r = run_cli(["--dsn", other_role, "--metrics-addr", "off", "--files", str(f),
                 "--table", "t", "--pk", "id", "--backfill"])  # fmt: skip
    assert r.code == 2
    [line] = error_lines(r.err)
    assert "only a table's owner" in line
    assert db.val("SELECT to_regclass('ingestion_manifest') IS NULL")
    assert db.val(f"SELECT to_regclass('{RECORDS}') IS NULL")
