"""schema_evolution = fail | add | ignore | rescue and column_names = normalize, end to end
against a real PostgreSQL: rows, NULLs for old rows, the rescue column's JSON, the audit table,
the log lines and the metrics."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import write
from tests.daemon import wait_for
from tests.helpers import log_events
from tests.integration.test_least_privilege import make_loader, role, run_roles_sql
from tests.pg import Db

__all__ = ["role"]  # the fixture, shared with test_least_privilege

FIRST = "id,name\n1,alpha\n2,beta\n"
# The second delivery brings two columns the table lacks.
SECOND = "id,name,city,score\n3,gamma,Recife,7\n4,delta,,9\n"


def load(cli: Any, tmp_path: Path, name: str, text: str, *args: str) -> Any:
    path = write(tmp_path / "files" / name, text)
    result = cli("--files", path, "--table", "t", *args)
    assert "Traceback" not in result.out + result.err
    return result


def changes(db: Db) -> list[dict[str, Any]]:
    return db.fetch(
        "SELECT table_name, column_name, column_type, change, filename, run_id "
        "FROM ingestion_schema_changes ORDER BY id"
    )


@pytest.mark.parametrize("mode", ["upsert", "append"])
def test_fail_is_the_default_and_names_the_way_out(cli, db: Db, tmp_path: Path, mode: str) -> None:
    pk = ("--pk", "id") if mode == "upsert" else ()
    assert load(cli, tmp_path, "a.csv", FIRST, "--mode", mode, *pk).code == 0
    result = load(cli, tmp_path, "b.csv", SECOND, "--mode", mode, *pk)
    assert result.code == 1
    [failed] = [m for m in db.manifest() if m["status"] == "failed"]
    assert "has no column(s) city, score" in failed["notes"]
    assert "--schema-evolution add|ignore|rescue" in failed["notes"]
    assert db.columns("t") == {"id": "text", "name": "text"}
    assert db.val("SELECT count(*) FROM t") == 2


@pytest.mark.parametrize("mode", ["upsert", "append", "merge"])
def test_add_adds_both_columns_in_the_batch_that_brings_them(
    cli, db: Db, tmp_path: Path, mode: str
) -> None:
    pk = ("--pk", "id") if mode != "append" else ()
    args = ("--mode", mode, *pk, "--schema-evolution", "add")
    assert load(cli, tmp_path, "a.csv", FIRST, *args).code == 0
    result = load(cli, tmp_path, "b.csv", SECOND, *args)
    assert result.code == 0, result.out
    assert db.columns("t") == {"id": "text", "name": "text", "city": "text", "score": "text"}
    assert db.fetch("SELECT id, name, city, score FROM t ORDER BY id") == [
        {"id": "1", "name": "alpha", "city": None, "score": None},  # old rows: NULL
        {"id": "2", "name": "beta", "city": None, "score": None},
        {"id": "3", "name": "gamma", "city": "Recife", "score": "7"},
        {"id": "4", "name": "delta", "city": None, "score": "9"},
    ]
    recorded = changes(db)
    assert [(c["column_name"], c["column_type"], c["change"]) for c in recorded] == [
        ("city", "text", "add_column"),
        ("score", "text", "add_column"),
    ]
    run_ids = {e["run_id"] for e in log_events(result.err, "schema_changed")}
    assert {c["run_id"] for c in recorded} == run_ids and len(run_ids) == 1
    assert all(c["filename"].endswith("b.csv") and c["table_name"] == "t" for c in recorded)
    events = log_events(result.err, "schema_changed")
    assert [(e["table"], e["column"], e["type"]) for e in events] == [
        ("t", "city", "text"),
        ("t", "score", "text"),
    ]
    assert all(e["file"].endswith("b.csv") for e in events)
    # Loaded again: nothing changes, nothing recorded twice.
    assert load(cli, tmp_path, "b.csv", SECOND, *args).code == 0
    assert len(changes(db)) == 2


def test_ignore_drops_the_new_columns_and_says_so_once(cli, db: Db, tmp_path: Path) -> None:
    args = ("--pk", "id", "--schema-evolution", "ignore", "--chunk-size", "1")
    assert load(cli, tmp_path, "a.csv", FIRST, *args).code == 0
    result = load(cli, tmp_path, "b.csv", SECOND, *args)
    assert result.code == 0, result.out
    assert db.columns("t") == {"id": "text", "name": "text"}
    assert db.fetch("SELECT id, name FROM t ORDER BY id") == [
        {"id": "1", "name": "alpha"},
        {"id": "2", "name": "beta"},
        {"id": "3", "name": "gamma"},
        {"id": "4", "name": "delta"},
    ]
    [ignored] = log_events(result.err, "columns_ignored")  # once per file, not per batch
    assert ignored["columns"] == ["city", "score"]
    assert db.val("SELECT count(*) FROM ingestion_schema_changes") == 0


@pytest.mark.parametrize("mode", ["upsert", "append"])
def test_rescue_keeps_new_columns_as_json(cli, db: Db, tmp_path: Path, mode: str) -> None:
    pk = ("--pk", "id") if mode != "append" else ()
    args = ("--mode", mode, *pk, "--schema-evolution", "rescue")
    assert load(cli, tmp_path, "a.csv", FIRST, *args).code == 0
    assert db.columns("t") == {"id": "text", "name": "text", "_rescued_data": "jsonb"}
    result = load(cli, tmp_path, "b.csv", SECOND, *args)
    assert result.code == 0, result.out
    assert db.columns("t") == {"id": "text", "name": "text", "_rescued_data": "jsonb"}
    rows = db.fetch("SELECT id, name, _rescued_data::text AS r FROM t ORDER BY id")
    assert [(r["id"], r["name"]) for r in rows] == [
        ("1", "alpha"),
        ("2", "beta"),
        ("3", "gamma"),
        ("4", "delta"),
    ]
    rescued = [None if r["r"] is None else json.loads(r["r"]) for r in rows]
    assert rescued == [None, None, {"city": "Recife", "score": "7"}, {"score": "9"}]


def test_rescue_creates_its_column_on_an_existing_table_and_records_it(
    cli, db: Db, tmp_path: Path
) -> None:
    assert load(cli, tmp_path, "a.csv", FIRST, "--pk", "id").code == 0
    result = load(cli, tmp_path, "b.csv", SECOND, "--pk", "id", "--schema-evolution", "rescue")
    assert result.code == 0, result.out
    assert db.columns("t")["_rescued_data"] == "jsonb"
    assert [(c["column_name"], c["column_type"]) for c in changes(db)] == [
        ("_rescued_data", "jsonb")
    ]
    assert db.val("SELECT count(*) FROM t WHERE _rescued_data IS NOT NULL") == 2


@pytest.mark.parametrize("mode", ["upsert", "append"])
def test_rescue_a_value_that_does_not_cast_loads_the_row_with_null(
    cli, db: Db, tmp_path: Path, mode: str
) -> None:
    db.execute(
        "CREATE TABLE t (id integer PRIMARY KEY, amount numeric(6,2), born date, "
        "code varchar(3), name text)"
    )
    text = (
        "id,amount,born,code,name,extra\n"
        "1,12.5,2020-01-02,abc,alpha,x\n"
        "2,lots,2020-02-30,abcd,beta,\n"  # three values PostgreSQL refuses
        "3,,,,gamma,\n"  # NULLs are not rescued
    )
    pk = ("--pk", "id") if mode != "append" else ()
    result = load(cli, tmp_path, "a.csv", text, "--mode", mode, *pk, "--schema-evolution", "rescue")
    assert result.code == 0, result.out
    rows = db.fetch(
        "SELECT id, amount::text AS amount, born::text AS born, code, name, "
        "_rescued_data::text AS r FROM t ORDER BY id"
    )
    got = [{**r, "r": None if r["r"] is None else json.loads(r["r"])} for r in rows]
    assert got == [
        {"id": 1, "amount": "12.50", "born": "2020-01-02", "code": "abc", "name": "alpha",
         "r": {"extra": "x"}},
        {"id": 2, "amount": None, "born": None, "code": None, "name": "beta",
         "r": {"amount": "lots", "born": "2020-02-30", "code": "abcd"}},
        {"id": 3, "amount": None, "born": None, "code": None, "name": "gamma", "r": None},
    ]  # fmt: skip


def test_add_with_parquet_types(cli, db: Db, tmp_path: Path) -> None:
    first = pa.table({"id": pa.array([1, 2], pa.int64())})
    when = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)
    second = pa.table(
        {
            "id": pa.array([3], pa.int64()),
            "big": pa.array([2**40], pa.int64()),
            "at": pa.array([when], pa.timestamp("us", tz="UTC")),
        }
    )
    (tmp_path / "files").mkdir()
    pq.write_table(first, tmp_path / "files" / "a.parquet")
    pq.write_table(second, tmp_path / "files" / "b.parquet")
    args = ("--table", "t", "--pk", "id", "--preserve-types", "--schema-evolution", "add")
    assert cli("--files", tmp_path / "files" / "a.parquet", *args).code == 0
    result = cli("--files", tmp_path / "files" / "b.parquet", *args)
    assert result.code == 0, result.out
    assert db.columns("t") == {"id": "bigint", "big": "bigint", "at": "timestamp with time zone"}
    assert db.fetch("SELECT id, big, at FROM t ORDER BY id") == [
        {"id": 1, "big": None, "at": None},
        {"id": 2, "big": None, "at": None},
        {"id": 3, "big": 2**40, "at": when},
    ]
    assert [(c["column_name"], c["column_type"]) for c in changes(db)] == [
        ("big", "bigint"),
        ("at", "timestamp with time zone"),
    ]


def test_add_never_changes_a_type_and_says_which_alter_would(cli, db: Db, tmp_path: Path) -> None:
    db.execute("CREATE TABLE t (id integer PRIMARY KEY)")
    (tmp_path / "files").mkdir()
    path = tmp_path / "files" / "a.parquet"
    pq.write_table(pa.table({"id": pa.array([2**40], pa.int64())}), path)
    result = cli(
        "--files", path, "--table", "t", "--pk", "id", "--preserve-types",
        "--schema-evolution", "add",
    )  # fmt: skip
    assert result.code == 1
    [m] = db.manifest()
    assert 'ALTER TABLE "t" ALTER COLUMN "id" TYPE bigint' in m["notes"]
    assert db.columns("t") == {"id": "integer"}


def test_eight_files_bring_the_same_new_column_at_once(cli, db: Db, tmp_path: Path) -> None:
    assert load(cli, tmp_path, "a.csv", FIRST, "--pk", "id").code == 0
    paths = [
        write(tmp_path / "many" / f"f{i}.csv", f"id,name,city\n{10 + i},n{i},c{i}\n")
        for i in range(8)
    ]
    result = cli(
        "--files", *paths, "--table", "t", "--pk", "id", "--schema-evolution", "add",
        "--concurrency", "4",
    )  # fmt: skip
    assert result.code == 0, result.out
    assert db.columns("t") == {"id": "text", "name": "text", "city": "text"}
    assert db.val("SELECT count(*) FROM t WHERE city IS NOT NULL") == 8
    assert db.val("SELECT count(DISTINCT id) FROM t") == 10
    assert [c["column_name"] for c in changes(db)] == ["city"]  # added once, recorded once
    assert len(log_events(result.err, "schema_changed")) == 1


def test_add_without_ownership_fails_the_file_saying_so(
    dsn: str, db: Db, role: str, tmp_path: Path
) -> None:
    db.execute("CREATE TABLE t (id integer PRIMARY KEY, v text)")
    run_roles_sql(dsn, role=role, tables="t")
    loader = make_loader(dsn, role, tmp_path)
    args = ("--table", "t", "--pk", "id")
    result = loader("a.csv", "id,v,city\n1,a,Recife\n", *args, "--schema-evolution", "add")
    assert result.code == 1
    [m] = db.manifest()
    assert m["status"] == "failed"
    assert "ADD COLUMN needs the table's ownership" in m["notes"]
    assert 'ALTER TABLE "t" ADD COLUMN IF NOT EXISTS "city" text' in m["notes"]
    assert db.columns("t") == {"id": "integer", "v": "text"}
    assert db.val("SELECT count(*) FROM t") == 0
    # The same role can load it when the column is dropped instead.
    kept = loader("b.csv", "id,v,city\n2,b,Natal\n", *args, "--schema-evolution", "ignore")
    assert kept.code == 0, kept.out + kept.err
    assert db.fetch("SELECT id, v FROM t") == [{"id": 2, "v": "b"}]


def test_cnpj_style_latin1_header_loads_by_normalized_names(cli, db: Db, tmp_path: Path) -> None:
    text = "Razão Social;CNPJ Básico;Nome Fantasia\nACME LTDA;12345678;Acme\nJOSÉ ME;87654321;\n"
    path = tmp_path / "files" / "empresas.csv"
    path.parent.mkdir()
    path.write_bytes(text.encode("latin-1"))
    result = cli(
        "--files", path, "--table", "empresas", "--pk", "cnpj_basico", "--delimiter", ";",
        "--encoding", "latin-1", "--column-names", "normalize",
        "--types", "cnpj_basico:bigint",
    )  # fmt: skip
    assert result.code == 0, result.out
    assert db.columns("empresas") == {
        "razao_social": "text",
        "cnpj_basico": "bigint",
        "nome_fantasia": "text",
    }
    assert db.fetch("SELECT * FROM empresas ORDER BY cnpj_basico") == [
        {"razao_social": "ACME LTDA", "cnpj_basico": 12345678, "nome_fantasia": "Acme"},
        {"razao_social": "JOSÉ ME", "cnpj_basico": 87654321, "nome_fantasia": None},
    ]


def test_dry_run_shows_the_mapping_and_the_columns_it_would_add(
    cli, db: Db, tmp_path: Path
) -> None:
    assert load(cli, tmp_path, "a.csv", FIRST, "--pk", "id").code == 0
    path = write(tmp_path / "files" / "b.csv", "Id,Name,Cidade Natal\n3,c,Recife\n")
    result = cli(
        "--dry-run", "--files", path, "--table", "t", "--pk", "id",
        "--column-names", "normalize", "--schema-evolution", "add",
    )  # fmt: skip
    assert result.code == 0, result.out + result.err
    assert "'Cidade Natal' -> cidade_natal" in result.out
    assert "would add column(s) cidade_natal text" in result.out
    assert db.columns("t") == {"id": "text", "name": "text"}  # nothing written


DAEMON = """
inbox = "inbox"
settle_s = 0.2

[[contracts]]
name = "t"
pattern = "*.csv"
table = "t"
pk = ["id"]
schema_evolution = "rescue"
"""


def test_metrics_count_changes_and_rescued_rows(daemons, db: Db, tmp_path: Path) -> None:
    db.execute("CREATE TABLE t (id text PRIMARY KEY, name text)")
    daemon = daemons(DAEMON)
    write(tmp_path / "inbox" / "b.csv", SECOND)
    wait_for(lambda: db.val("SELECT count(*) FROM t") == 2, what="b.csv loaded")
    wait_for(
        lambda: daemon.metric("ingest_rows_rescued_total", table_name="t") == 2,
        what="rows rescued counted",
    )
    assert daemon.metric("ingest_schema_changes_total", table_name="t") == 1  # _rescued_data
    [event] = daemon.events("schema_changed")
    assert (event["table"], event["column"], event["type"]) == ("t", "_rescued_data", "jsonb")
    assert event["file"] == "b.csv" and event["run_id"]


def test_rescue_as_a_least_privilege_role(dsn: str, db: Db, role: str, tmp_path: Path) -> None:
    # The cast helper lives in pg_temp: TEMPORARY on the database is all rescue needs.
    db.execute("CREATE TABLE t (id integer PRIMARY KEY, n integer, _rescued_data jsonb)")
    run_roles_sql(dsn, role=role, tables="t")
    loader = make_loader(dsn, role, tmp_path)
    result = loader(
        "a.csv", "id,n,extra\n1,5,x\n2,five,\n", "--table", "t", "--pk", "id",
        "--schema-evolution", "rescue",
    )  # fmt: skip
    assert result.code == 0, result.out + result.err
    rows = db.fetch("SELECT id, n, _rescued_data::text AS r FROM t ORDER BY id")
    assert [(r["id"], r["n"], r["r"] and json.loads(r["r"])) for r in rows] == [
        (1, 5, {"extra": "x"}),
        (2, None, {"n": "five"}),
    ]


def test_a_manifest_without_the_audit_table_gets_it_with_the_first_change(
    cli, db: Db, tmp_path: Path
) -> None:
    assert load(cli, tmp_path, "a.csv", FIRST, "--pk", "id").code == 0
    db.execute("DROP TABLE ingestion_schema_changes")  # as a manifest made before 0.2
    result = load(cli, tmp_path, "b.csv", SECOND, "--pk", "id", "--schema-evolution", "add")
    assert result.code == 0, result.out
    assert [c["column_name"] for c in changes(db)] == ["city", "score"]
