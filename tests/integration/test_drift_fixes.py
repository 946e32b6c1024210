"""Breakers' drift findings, end to end against a real PostgreSQL: the rescue column must be
a nullable jsonb, rescued values survive an upsert that rescues nothing for them, NDJSON
numbers keep every digit, and normalized names meet system columns and --pk."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import write
from tests.pg import Db


def load(cli: Any, tmp_path: Path, name: str, text: str, *args: str) -> Any:
    path = write(tmp_path / "files" / name, text)
    result = cli("--files", path, "--table", "t", *args)
    assert "Traceback" not in result.out + result.err
    return result


RESCUE = ("--mode", "upsert", "--pk", "id", "--schema-evolution", "rescue", "--tolerant")


@pytest.mark.parametrize("declared", ["text", "integer", "json"])
def test_a_rescue_column_that_is_not_jsonb_fails_the_file_before_any_write(
    cli, db: Db, tmp_path: Path, declared: str
) -> None:
    db.execute(f"CREATE TABLE t (id integer PRIMARY KEY, v text, note {declared})")
    db.execute("INSERT INTO t VALUES (1, 'a', NULL)")
    if declared != "integer":
        db.execute("UPDATE t SET note = '\"precious\"'")
    result = load(
        cli, tmp_path, "a.csv", "id,v,e\n1,b,x\n2,c,y\n", *RESCUE, "--rescue-column", "note"
    )
    assert result.code == 1
    [failed] = db.manifest()
    assert failed["status"] == "failed"
    assert f"the rescue column note of table t is {declared}, not jsonb" in failed["notes"]
    assert "--rescue-column" in failed["notes"]
    assert "\n" not in failed["notes"]
    rows = db.fetch("SELECT id, v, note::text AS note FROM t ORDER BY id")
    assert [(r["id"], r["v"]) for r in rows] == [(1, "a")]  # nothing written


def test_a_not_null_rescue_column_fails_the_file_naming_the_fix(
    cli, db: Db, tmp_path: Path
) -> None:
    db.execute(
        "CREATE TABLE t (id integer PRIMARY KEY, v text, _rescued_data jsonb NOT NULL DEFAULT '{}')"
    )
    db.execute("INSERT INTO t (id, v) VALUES (1, 'a')")
    result = load(cli, tmp_path, "a.csv", "id,v,e\n1,b,x\n", *RESCUE)
    assert result.code == 1
    [failed] = db.manifest()
    assert "is NOT NULL" in failed["notes"]
    assert 'ALTER COLUMN "_rescued_data" DROP NOT NULL' in failed["notes"]
    assert db.fetch("SELECT v FROM t") == [{"v": "a"}]
    db.execute("ALTER TABLE t ALTER COLUMN _rescued_data DROP NOT NULL")
    result = load(cli, tmp_path, "b.csv", "id,v,e\n1,b,x\n", *RESCUE)
    assert result.code == 0, result.out
    assert json.loads(db.val("SELECT _rescued_data::text FROM t")) == {"e": "x"}


def test_a_generated_rescue_column_fails_the_file_naming_it(cli, db: Db, tmp_path: Path) -> None:
    # breaker3 #6: nullable jsonb, so the type and NOT NULL rules let it through.
    db.execute(
        "CREATE TABLE t (id integer PRIMARY KEY, v text, r jsonb GENERATED ALWAYS AS ('{}') STORED)"
    )
    db.execute("INSERT INTO t (id, v) VALUES (1, 'a')")
    result = load(cli, tmp_path, "a.csv", "id,v,extra\n1,b,x\n", *RESCUE, "--rescue-column", "r")
    assert result.code == 1
    [failed] = db.manifest()
    assert "the rescue column r of table t is a GENERATED column" in failed["notes"]
    assert "brings a value" not in failed["notes"] and "\n" not in failed["notes"]
    assert db.fetch("SELECT v FROM t") == [{"v": "a"}]  # nothing written


@pytest.mark.parametrize(
    ("values", "column_type", "back"),
    [
        # breaker1 #4: an integer beyond 2^53 beside a decimal was rounded by a double.
        (["1", "1.0", "12345678901234567"], "numeric", ["1", "1.0", "12345678901234567"]),
        (["0.1", "12345678901234567"], "numeric", ["0.1", "12345678901234567"]),
        (["0.12345678901234567", "2"], "numeric", ["0.12345678901234567", "2"]),
        (["9007199254740993"], "bigint", ["9007199254740993"]),
        # A double reads every one of these back as written: it stays double precision.
        (["1", "0.1", "-0.25"], "double precision", ["1", "0.1", "-0.25"]),
    ],
)
def test_ndjson_preserve_types_never_changes_a_number(
    cli, db: Db, tmp_path: Path, values: list[str], column_type: str, back: list[str]
) -> None:
    text = "".join(f'{{"id": {i}, "b": {v}}}\n' for i, v in enumerate(values))
    result = load(cli, tmp_path, "a.jsonl", text, "--mode", "append", "--preserve-types")
    assert result.code == 0, result.out + result.err
    assert db.columns("t")["b"] == column_type
    got = db.fetch("SELECT b::numeric::text AS b FROM t ORDER BY id")
    assert [Decimal(r["b"]) for r in got] == [Decimal(v) for v in back]


def test_normalize_renames_system_column_names_with_a_suffix(cli, db: Db, tmp_path: Path) -> None:
    text = "id;XMIN;ctid;Table OID;cmax;v\n1;a;b;c;d;e\n"
    args = ("--mode", "append", "--delimiter", ";", "--column-names", "normalize")
    result = load(cli, tmp_path, "a.csv", text, *args)
    assert result.code == 0, result.out + result.err
    assert list(db.columns("t")) == ["id", "xmin_", "ctid_", "table_oid", "cmax_", "v"]
    assert db.fetch("SELECT xmin_, ctid_, cmax_ FROM t") == [
        {"xmin_": "a", "ctid_": "b", "cmax_": "d"}
    ]


def test_pk_under_normalize_is_refused_naming_the_normalized_column(
    cli, db: Db, tmp_path: Path
) -> None:
    text = "CNPJ Básico;Razão Social\n1;a\n"
    args = ("--mode", "upsert", "--delimiter", ";", "--column-names", "normalize")
    result = load(cli, tmp_path, "a.csv", text, *args, "--pk", "CNPJ Básico")
    assert result.code == 2
    assert "name the columns as they load: cnpj_basico (for 'CNPJ Básico')" in result.err
    assert len(result.err.strip().splitlines()) == 1
    result = load(cli, tmp_path, "b.csv", text, *args, "--pk", "cnpj_basico")
    assert result.code == 0, result.out + result.err
    assert db.fetch("SELECT cnpj_basico, razao_social FROM t") == [
        {"cnpj_basico": "1", "razao_social": "a"}
    ]


@pytest.mark.parametrize("mode", ["upsert", "merge"])
def test_upsert_under_rescue_keeps_keys_the_new_file_does_not_bring(
    cli, db: Db, tmp_path: Path, mode: str
) -> None:
    args = ("--mode", mode, "--pk", "id", "--schema-evolution", "rescue", "--tolerant")
    db.execute("CREATE TABLE t (id integer PRIMARY KEY, v text, n integer)")
    assert load(cli, tmp_path, "a.csv", "id,v,n,e,f\n1,a,x,1,2\n2,b,3,,\n", *args).code == 0
    # b brings f again (replaced) and n, which now casts (its old rescued text goes), not e.
    result = load(cli, tmp_path, "b.csv", "id,v,n,f,g\n1,c,4,9,\n2,d,5,,\n3,e,6,,\n", *args)
    assert result.code == 0, result.out + result.err
    rows = db.fetch("SELECT id, v, n, _rescued_data::text AS r FROM t ORDER BY id")
    got = [(r["id"], r["v"], r["n"], r["r"] and json.loads(r["r"])) for r in rows]
    assert got == [(1, "c", 4, {"e": "1", "f": "9"}), (2, "d", 5, None), (3, "e", 6, None)]
    # A file that brings every rescued key with nothing in it empties the column.
    assert load(cli, tmp_path, "c.csv", "id,e,f\n1,,\n", *args).code == 0
    assert db.val("SELECT _rescued_data FROM t WHERE id = 1") is None


def _nested_parquet(tmp_path: Path) -> Path:
    table = pa.table(
        {
            "id": pa.array([1, 2], pa.int64()),
            "v": ["a", "b"],
            "tags": pa.array([["x", "y"], None], pa.list_(pa.string())),
            "s": pa.array([{"k": 1, "d": "q"}, {"k": None, "d": "é"}]),
        }
    )
    path = tmp_path / "files" / "n.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return path


@pytest.mark.parametrize("typed", [(), ("--preserve-types",)])
def test_a_nested_parquet_column_the_table_lacks_is_dropped_under_ignore(
    cli, db: Db, tmp_path: Path, typed: tuple[str, ...]
) -> None:
    db.execute("CREATE TABLE t (id bigint PRIMARY KEY, v text)")
    path = _nested_parquet(tmp_path)
    result = cli(
        "--files", path, "--table", "t", "--pk", "id", "--schema-evolution", "ignore", *typed
    )
    assert result.code == 0, result.out + result.err
    assert db.fetch("SELECT id, v FROM t ORDER BY id") == [{"id": 1, "v": "a"}, {"id": 2, "v": "b"}]
    assert db.columns("t") == {"id": "bigint", "v": "text"}


def test_a_nested_parquet_column_the_table_lacks_is_rescued_as_json_text(
    cli, db: Db, tmp_path: Path
) -> None:
    db.execute("CREATE TABLE t (id bigint PRIMARY KEY, v text)")
    path = _nested_parquet(tmp_path)
    result = cli("--files", path, "--table", "t", "--pk", "id", "--schema-evolution", "rescue")
    assert result.code == 0, result.out + result.err
    rows = db.fetch("SELECT id, _rescued_data::text AS r FROM t ORDER BY id")
    got = [{k: json.loads(v) for k, v in json.loads(r["r"]).items()} for r in rows]
    assert got == [
        {"tags": ["x", "y"], "s": {"k": 1, "d": "q"}},
        {"s": {"k": None, "d": "é"}},
    ]
