"""ingestd --once end to end against a real PostgreSQL: rows, types, manifest, exit codes."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import write
from tests.helpers import log_events
from tests.pg import Db

COMPANIES = "cnpj_basico,nome,cpf\n001,Alpha,111\n002,Beta,222\n003,Gamma,333\n"


def test_issue_command_loads_then_skips_on_rerun(cli, db: Db, tmp_path: Path) -> None:
    a = write(tmp_path / "data" / "a.csv", COMPANIES)
    b = write(tmp_path / "data" / "b.csv", "cnpj_basico,nome,cpf\n004,Delta,444\n001,Alpha2,111\n")
    args = [
        "--once", "--files", a, b, "--table", "companies", "--pk", "cnpj_basico",
        "--headers", "cnpj_basico,nome,cpf", "--chunk-size", "50000", "--concurrency", "4",
        "--mode", "upsert",
    ]  # fmt: skip
    first = cli(*args)
    assert first.code == 0, first.err
    rows = db.fetch("SELECT cnpj_basico, nome, cpf FROM companies ORDER BY 1")
    assert len(rows) == 4
    snapshot = db.fetch("SELECT *, xmin::text AS x FROM companies ORDER BY 1")
    manifest = db.manifest()
    assert [m["status"] for m in manifest] == ["success", "success"]
    assert sorted(m["rows"] for m in manifest) == [2, 3]
    assert all(len(m["checksum"]) == 32 and m["run_id"] for m in manifest)

    second = cli(*args)
    assert second.code == 0, second.err
    assert "0 loaded, 2 skipped, 0 failed" in second.out
    assert db.fetch("SELECT *, xmin::text AS x FROM companies ORDER BY 1") == snapshot
    assert len(db.manifest()) == 2
    assert a.exists() and b.exists()  # --files never moves the user's files


def test_one_csv_rows_values_and_manifest(cli, db: Db, tmp_path: Path) -> None:
    f = write(tmp_path / "c.csv", 'id,name,note\n1,"Smith, J","say ""hi"""\n2,,""\n')
    result = cli("--files", f, "--table", "people", "--pk", "id")
    assert result.code == 0, result.err
    rows = db.fetch("SELECT id, name, note FROM people ORDER BY id")
    assert rows == [
        {"id": "1", "name": "Smith, J", "note": 'say "hi"'},
        {"id": "2", "name": None, "note": ""},  # unquoted empty is NULL, "" is ''
    ]
    assert db.columns("people") == {"id": "text", "name": "text", "note": "text"}
    [m] = db.manifest()
    assert (m["filename"], m["status"], m["rows"], m["table_name"]) == (
        str(f.resolve()), "success", 2, "people",
    )  # fmt: skip
    assert m["filesize"] == f.stat().st_size and m["processed_at"] is not None
    assert "1 loaded, 0 skipped, 0 failed; 2 rows" in result.out
    events = log_events(result.err)
    batch = next(e for e in events if e["event"] == "batch_committed")
    assert {"run_id", "file", "batch_idx", "rows", "latency_ms", "status"} <= batch.keys()
    finished = next(e for e in events if e["event"] == "file_finished")
    assert finished["status"] == "success" and finished["rows"] == 2


def test_changed_file_same_name_loads_again_and_keeps_both_versions(
    cli, db: Db, tmp_path: Path
) -> None:
    f = write(tmp_path / "c.csv", "id,v\n1,old\n2,old\n")
    assert cli("--files", f, "--table", "t", "--pk", "id").code == 0
    write(f, "id,v\n1,new\n3,new\n")
    assert cli("--files", f, "--table", "t", "--pk", "id").code == 0
    assert db.fetch("SELECT id, v FROM t ORDER BY id") == [
        {"id": "1", "v": "new"}, {"id": "2", "v": "old"}, {"id": "3", "v": "new"},
    ]  # fmt: skip
    versions = db.manifest()
    assert len(versions) == 2
    assert {v["filename"] for v in versions} == {str(f.resolve())}
    assert versions[0]["checksum"] != versions[1]["checksum"]
    assert all(v["status"] == "success" for v in versions)


def _orders(path: Path) -> Path:
    import datetime as dt
    import decimal

    table = pa.table(
        {
            "id": pa.array([1, 2, 3], pa.int64()),
            "qty": pa.array([5, None, 7], pa.int32()),
            "price": pa.array([1.5, 2.25, None], pa.float64()),
            "paid": [True, False, None],
            "amount": pa.array(
                [decimal.Decimal("10.50"), None, decimal.Decimal("-0.01")], pa.decimal128(12, 2)
            ),
            "day": [dt.date(2026, 1, 2), None, dt.date(2026, 12, 31)],
            "at": pa.array(
                [dt.datetime(2026, 1, 2, 3, 4, 5, 123456), None, dt.datetime(2026, 1, 1)],
                pa.timestamp("us"),
            ),
            "at_tz": pa.array(
                [dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC), None, None],
                pa.timestamp("us", tz="UTC"),
            ),
            "name": ["a", "", None],
            "blob": pa.array([b"\x00\x01\xff", None, b""], pa.binary()),
        }
    )
    pq.write_table(table, path)
    return path


def test_parquet_preserve_types_maps_schema(cli, db: Db, tmp_path: Path) -> None:
    f = _orders(tmp_path / "orders.parquet")
    result = cli("--files", f, "--table", "orders", "--pk", "id", "--preserve-types")
    assert result.code == 0, result.err
    assert db.columns("orders") == {
        "id": "bigint", "qty": "integer", "price": "double precision", "paid": "boolean",
        "amount": "numeric", "day": "date", "at": "timestamp without time zone",
        "at_tz": "timestamp with time zone", "name": "text", "blob": "bytea",
    }  # fmt: skip
    rows = db.fetch("SELECT * FROM orders ORDER BY id")
    import datetime as dt
    import decimal

    assert rows[0]["qty"] == 5 and rows[0]["price"] == 1.5 and rows[0]["paid"] is True
    assert rows[0]["amount"] == decimal.Decimal("10.50")
    assert rows[0]["day"] == dt.date(2026, 1, 2)
    assert rows[0]["at"] == dt.datetime(2026, 1, 2, 3, 4, 5, 123456)
    assert rows[0]["at_tz"] == dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    assert rows[0]["blob"] == b"\x00\x01\xff" and rows[2]["blob"] == b""
    assert rows[1]["qty"] is None and rows[1]["paid"] is False and rows[1]["blob"] is None
    assert rows[1]["name"] == "" and rows[2]["name"] is None
    assert rows[2]["amount"] == decimal.Decimal("-0.01")
    assert db.val("SELECT numeric_precision FROM information_schema.columns "
                  "WHERE table_name='orders' AND column_name='amount'") == 12  # fmt: skip


def test_parquet_without_preserve_types_is_text(cli, db: Db, tmp_path: Path) -> None:
    f = _orders(tmp_path / "orders.parquet")
    assert cli("--files", f, "--table", "orders_text", "--pk", "id").code == 0
    assert set(db.columns("orders_text").values()) == {"text"}
    row = db.fetch("SELECT qty, paid, amount, day FROM orders_text WHERE id = '1'")[0]
    assert row == {"qty": "5", "paid": "true", "amount": "10.50", "day": "2026-01-02"}


def test_twenty_files_concurrency_four_one_table(cli, db: Db, tmp_path: Path) -> None:
    files = []
    for i in range(20):
        body = "".join(f"{i * 1000 + j},{i},{j}\n" for j in range(250))
        files.append(write(tmp_path / f"f{i:02}.csv", "id,file,row\n" + body))
    result = cli("--files", *files, "--table", "many", "--pk", "id", "--concurrency", "4",
                 "--chunk-size", "100")  # fmt: skip
    assert result.code == 0, result.err
    assert db.val("SELECT count(*) FROM many") == 20 * 250
    assert db.val("SELECT count(DISTINCT id) FROM many") == 20 * 250
    assert db.val("SELECT count(*) FROM ingestion_manifest WHERE status = 'success'") == 20
    assert db.val("SELECT sum(batches) FROM ingestion_manifest") == 20 * 3
    workers = {e.get("worker_id") for e in log_events(result.err, "file_finished")}
    assert len(workers) > 1


def test_duplicate_keys_last_occurrence_wins_inside_and_across_batches(
    cli, db: Db, tmp_path: Path
) -> None:
    # chunk size 2: key 1 repeats inside batch 1, key 2 across batches 1-2-3.
    f = write(tmp_path / "d.csv", "id,v\n1,a\n1,b\n2,c\n3,d\n2,e\n4,f\n2,g\n")
    result = cli("--files", f, "--table", "dups", "--pk", "id", "--chunk-size", "2")
    assert result.code == 0, result.err
    assert db.fetch("SELECT id, v FROM dups ORDER BY id") == [
        {"id": "1", "v": "b"}, {"id": "2", "v": "g"}, {"id": "3", "v": "d"}, {"id": "4", "v": "f"},
    ]  # fmt: skip
    assert db.manifest()[0]["batches"] == 4
    batches = log_events(result.err, "batch_committed")
    assert [e["batch_idx"] for e in batches] == [0, 1, 2, 3]
    assert [e["rows_committed"] for e in batches] == [2, 4, 6, 7]


def test_append_mode_keeps_every_row(cli, db: Db, tmp_path: Path) -> None:
    f = write(tmp_path / "log.csv", "id,v\n1,a\n1,b\n2,c\n")
    assert cli("--files", f, "--table", "events", "--mode", "append").code == 0
    assert db.fetch("SELECT id, v FROM events ORDER BY v") == [
        {"id": "1", "v": "a"}, {"id": "1", "v": "b"}, {"id": "2", "v": "c"},
    ]  # fmt: skip


def test_merge_mode_works_without_unique_index(cli, db: Db, tmp_path: Path) -> None:
    db.execute("CREATE TABLE m (id text, v text)")
    db.execute("INSERT INTO m VALUES ('1', 'old'), ('2', 'keep')")
    f = write(tmp_path / "m.csv", "id,v\n1,new\n3,added\n1,newer\n")
    result = cli("--files", f, "--table", "m", "--pk", "id", "--mode", "merge")
    assert result.code == 0, result.err
    assert db.fetch("SELECT id, v FROM m ORDER BY id") == [
        {"id": "1", "v": "newer"}, {"id": "2", "v": "keep"}, {"id": "3", "v": "added"},
    ]  # fmt: skip


def test_upsert_into_table_without_key_fails_with_hint(cli, db: Db, tmp_path: Path) -> None:
    db.execute("CREATE TABLE nokey (id text, v text)")
    f = write(tmp_path / "n.csv", "id,v\n1,a\n")
    result = cli("--files", f, "--table", "nokey", "--pk", "id")
    assert result.code == 1
    [m] = db.manifest()
    assert m["status"] == "failed" and "--mode merge" in m["notes"]
    assert db.val("SELECT count(*) FROM nokey") == 0


def test_unchanged_rows_are_not_rewritten(cli, db: Db, tmp_path: Path) -> None:
    f = write(tmp_path / "u.csv", "id,v\n1,a\n2,b\n3,c\n")
    assert cli("--files", f, "--table", "u", "--pk", "id").code == 0
    before = db.fetch("SELECT id, xmin::text AS x FROM u ORDER BY id")
    g = write(tmp_path / "u2.csv", "id,v\n1,a\n2,CHANGED\n3,c\n")
    assert cli("--files", g, "--table", "u", "--pk", "id").code == 0
    after = db.fetch("SELECT id, xmin::text AS x FROM u ORDER BY id")
    assert before[0] == after[0] and before[2] == after[2]  # same tuple: not rewritten
    assert before[1] != after[1]


def test_typed_csv_bad_value_names_column_and_row(cli, db: Db, tmp_path: Path) -> None:
    good = write(tmp_path / "good.csv", "id,age\n1,30\n2,40\n")
    bad = write(tmp_path / "bad.csv", "id,age\n1,30\n2,40\n3,forty\n4,50\n")
    result = cli("--files", good, bad, "--table", "ages", "--pk", "id",
                 "--types", "id:integer,age:integer", "--chunk-size", "2")  # fmt: skip
    assert result.code == 1
    assert db.columns("ages") == {"id": "integer", "age": "integer"}
    by_name = {Path(m["filename"]).name: m for m in db.manifest()}
    assert by_name["good.csv"]["status"] == "success"
    failed = by_name["bad.csv"]
    assert failed["status"] == "failed" and failed["attempts"] == 1
    assert "row 3" in failed["notes"] and "column age" in failed["notes"]
    assert "forty" in failed["notes"]
    # Batch 1 (rows 1-2) committed before the bad batch; nothing of batch 2 did.
    assert failed["rows"] == 2
    assert db.val("SELECT count(*) FROM ages") == 2
    assert f"FAILED   {bad.resolve()} -> ages: " in result.out


def test_data_error_in_merge_fails_file_not_others(cli, db: Db, tmp_path: Path) -> None:
    db.execute("CREATE TABLE acc (id text PRIMARY KEY, amount numeric CHECK (amount >= 0))")
    ok = write(tmp_path / "ok.csv", "id,amount\n1,5\n")
    bad = write(tmp_path / "neg.csv", "id,amount\n2,-1\n")
    result = cli("--files", ok, bad, "--table", "acc", "--pk", "id", "--max-retries", "3")
    assert result.code == 1
    by_name = {Path(m["filename"]).name: m for m in db.manifest()}
    assert by_name["ok.csv"]["status"] == "success"
    assert by_name["neg.csv"]["status"] == "failed"
    assert "check constraint" in by_name["neg.csv"]["notes"]
    assert by_name["neg.csv"]["attempts"] == 1  # a data error is not retried
    assert db.fetch("SELECT id FROM acc") == [{"id": "1"}]


def test_bad_header_fails_alone(cli, db: Db, tmp_path: Path) -> None:
    ok = write(tmp_path / "ok.csv", "id,v\n1,a\n")
    bad = write(tmp_path / "bad.csv", 'id,"v; DROP TABLE x"\n1,a\n')
    result = cli("--files", ok, bad, "--table", "h", "--pk", "id")
    assert result.code == 1
    notes = {Path(m["filename"]).name: m["notes"] for m in db.manifest()}
    assert notes["ok.csv"] is None
    assert "not allowed" in notes["bad.csv"] and "--headers" in notes["bad.csv"]
    assert db.val("SELECT count(*) FROM h") == 1


def test_csv_gz_latin1_semicolon_no_header(cli, db: Db, tmp_path: Path) -> None:
    f = tmp_path / "k.csv.gz"
    f.write_bytes(gzip.compress('"1";"São Paulo"\n"2";"Ação; ""x"""\n'.encode("latin-1")))
    result = cli("--files", f, "--table", "cities", "--pk", "id", "--headers", "id,name",
                 "--no-header", "--delimiter", ";", "--encoding", "latin-1")  # fmt: skip
    assert result.code == 0, result.err
    assert db.fetch("SELECT id, name FROM cities ORDER BY id") == [
        {"id": "1", "name": "São Paulo"}, {"id": "2", "name": 'Ação; "x"'},
    ]  # fmt: skip


def test_contract_headers_select_and_reorder_columns(cli, db: Db, tmp_path: Path) -> None:
    f = write(tmp_path / "r.csv", "extra,name,id\nx,Ann,1\ny,Bob,2\n")
    result = cli("--files", f, "--table", "r", "--pk", "id", "--headers", "id,name")
    assert result.code == 0, result.err
    assert list(db.columns("r")) == ["id", "name"]
    assert db.fetch("SELECT id, name FROM r ORDER BY id") == [
        {"id": "1", "name": "Ann"}, {"id": "2", "name": "Bob"},
    ]  # fmt: skip


def test_dry_run_touches_nothing(cli, db: Db, tmp_path: Path) -> None:
    f = write(tmp_path / "x.csv", "id,v\n1,a\n2,b\n")
    result = cli("--files", f, "--table", "x", "--pk", "id", "--dry-run")
    assert result.code == 0, result.err
    assert "2 rows" in result.out and 'CREATE TABLE IF NOT EXISTS "x"' in result.out
    assert db.val("SELECT to_regclass('x') IS NULL AND to_regclass('ingestion_manifest') IS NULL")


def test_inbox_once_moves_files_and_writes_sidecar(cli, db: Db, tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    write(inbox / "good.csv", "id,v\n1,a\n")
    write(inbox / "sub" / "more.csv", "id,v\n2,b\n")
    write(inbox / "bad.csv", "id,v\n1,a,extra\n")
    write(inbox / ".hidden.csv", "id,v\n9,z\n")
    write(inbox / "partial.csv.part", "id,v\n9,z\n")
    result = cli("--once", "--inbox", inbox, "--table", "ib", "--pk", "id")
    assert result.code == 1
    assert db.fetch("SELECT id FROM ib ORDER BY id") == [{"id": "1"}, {"id": "2"}]
    done = list((tmp_path / "done").rglob("*.csv"))
    assert sorted(p.name for p in done) == ["good.csv", "more.csv"]
    assert any(p.parent.name == "sub" for p in done)
    sidecar = json.loads((tmp_path / "failed" / "bad.csv.error.json").read_text())
    assert (tmp_path / "failed" / "bad.csv").exists()
    assert "row 1 has 3 fields" in sidecar["reason"] and sidecar["row"] == 1
    assert sidecar["run_id"] and sidecar["attempts"] == 1
    assert sorted(p.name for p in inbox.rglob("*") if p.is_file()) == [
        ".hidden.csv", "partial.csv.part",
    ]  # fmt: skip


def test_unreachable_database_exits_2_with_masked_password(tmp_path: Path) -> None:
    from tests.conftest import run_cli

    f = write(tmp_path / "x.csv", "id\n1\n")
    result = run_cli(["--dsn", "postgresql://u:hunter2secret@127.0.0.1:1/db", "--files", f,
                      "--table", "x", "--pk", "id", "--metrics-addr", "off",
                      "--max-retries", "0"])  # fmt: skip
    assert result.code == 2
    assert "cannot connect to postgresql://u:***@127.0.0.1:1/db" in result.err
    assert "hunter2secret" not in result.err + result.out
    assert "Traceback" not in result.err


def test_append_new_version_refused_by_default_appended_when_asked(
    cli, db: Db, tmp_path: Path, monkeypatch
) -> None:
    # A new delivery under the name of one loaded in full is a new version: it loads.
    f = write(tmp_path / "daily.csv", "id,v\n1,a\n2,a\n")
    args = ["--files", f, "--table", "t", "--mode", "append"]
    assert cli(*args).code == 0
    write(f, "id,v\n3,b\n")
    assert cli(*args).code == 0
    assert db.val("SELECT count(*) FROM t") == 3
    # A version left half-loaded (2 rows committed, then it failed): the next version
    # of that file would land on top of part of it, so it is refused by default.
    write(f, "id,v\n4,c\n5,c\n6,c\n")
    db.execute(
        "INSERT INTO ingestion_manifest (filename, checksum, filesize, rows, status, "
        "table_name, run_id, notes) SELECT filename, sha256(checksum), filesize, 2, "
        "'failed', table_name, 'test', 'half-loaded' FROM ingestion_manifest "
        "ORDER BY id DESC LIMIT 1"
    )
    refused = cli(*args)
    assert refused.code == 1
    assert "an earlier version of" in refused.out and "committed 2 rows to t" in refused.out
    assert db.val("SELECT count(*) FROM t") == 3
    monkeypatch.setenv("INGESTD_ON_NEW_VERSION", "append")
    assert cli(*args).code == 0
    assert db.val("SELECT count(*) FROM t") == 6


def test_lock_timeout_and_policies_resolve_flag_env_config(tmp_path: Path, monkeypatch) -> None:
    from ingestd.config import resolve
    from ingestd.exceptions import UsageError

    base = {"files": [str(write(tmp_path / "x.csv", "a\n1\n"))], "table": "t", "mode": "append"}
    s = resolve(base, env={})
    assert (s.lock_timeout_s, s.on_new_version, s.on_duplicate_content) == (30.0, "refuse", "skip")
    env = {"INGESTD_LOCK_TIMEOUT_S": "2.5", "INGESTD_ON_DUPLICATE_CONTENT": "load"}
    s = resolve(base, env=env, config={"lock_timeout_s": 9, "on_new_version": "append"})
    assert (s.lock_timeout_s, s.on_new_version, s.on_duplicate_content) == (2.5, "append", "load")
    assert resolve({**base, "lock_timeout_s": 1.0}, env=env).lock_timeout_s == 1.0
    try:
        resolve({**base, "on_new_version": "replace"}, env={})
    except UsageError as exc:
        assert "--on-new-version" in str(exc) and "refuse, append" in str(exc)
    else:
        raise AssertionError("an unknown on_new_version was accepted")


def test_a_crash_is_one_json_line(cli, tmp_path: Path, monkeypatch) -> None:
    from ingestd.service import Service

    async def broken(self: object) -> None:
        raise RuntimeError("a bug in ingestd")

    monkeypatch.setattr(Service, "run", broken)
    f = write(tmp_path / "x.csv", "a\n1\n")
    result = cli("--files", f, "--table", "t", "--mode", "append")
    assert result.code == 1
    [crashed] = log_events(result.err, "crashed")
    assert (crashed["error_type"], crashed["error"]) == ("RuntimeError", "a bug in ingestd")
    assert crashed["level"] == "CRITICAL" and "traceback" not in crashed
    assert "Traceback" not in result.err


def test_a_crash_in_the_run_names_the_run_and_instance(cli, tmp_path: Path, monkeypatch) -> None:
    from ingestd.service import Service

    async def broken(self: Service) -> None:
        raise RuntimeError("a bug in ingestd")

    monkeypatch.setattr(Service, "run", broken)
    f = write(tmp_path / "x.csv", "a\n1\n")
    result = cli("--files", f, "--table", "t", "--mode", "append", "--instance-id", "box-7")
    assert result.code == 1
    [crashed] = log_events(result.err, "crashed")
    assert crashed["instance_id"] == "box-7" and len(str(crashed["run_id"])) >= 8


def _ingestd(dsn: str, f: Path, redirect: str) -> subprocess.CompletedProcess[str]:
    """`ingestd --once` through a shell, its stdout redirected as `redirect` says."""
    command = [
        sys.executable, "-m", "ingestd", "--once", "--files", str(f), "--dsn", dsn,
        "--table", "t", "--mode", "append", "--metrics-addr", "off", "--log-format", "json",
    ]  # fmt: skip
    script = f'exec "$@" {redirect}'
    return subprocess.run(
        ["sh", "-c", script, "sh", *command], stderr=subprocess.PIPE, text=True, timeout=120
    )


def test_a_summary_that_cannot_be_written_is_one_line_not_a_crash(
    dsn: str, db: Db, tmp_path: Path
) -> None:
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full here")
    f = write(tmp_path / "x.csv", "a\n1\n2\n")
    result = _ingestd(dsn, f, ">/dev/full")
    assert result.returncode == 1, result.stderr
    assert (
        "ingestd: error: cannot write the summary to standard output: No space left on device"
        in (result.stderr.splitlines())
    )
    assert "crashed" not in result.stderr and "internal error" not in result.stderr
    assert "Traceback" not in result.stderr and "Exception ignored" not in result.stderr
    assert db.val("SELECT count(*) FROM t") == 2  # the run itself went well
    assert [m["status"] for m in db.manifest()] == ["success"]


def test_a_closed_stdout_or_stderr_at_start_is_no_abort(dsn: str, db: Db, tmp_path: Path) -> None:
    for n, redirect in enumerate([">&-", "2>&-", "<&- >&-"]):
        f = write(tmp_path / f"x{n}.csv", f"a\n{n}\n{n + 10}\n")
        result = _ingestd(dsn, f, redirect)
        assert result.returncode == 0, (redirect, result.returncode, result.stderr[-2000:])
    assert db.val("SELECT count(*) FROM t") == 6
    assert [m["status"] for m in db.manifest()] == ["success"] * 3
