"""Keys follow PostgreSQL's rules, types without equality load, the stage follows the target,
and every database error is one true line (issue 12)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from pathlib import Path

import asyncpg
import pytest

from tests.conftest import write
from tests.daemon import Daemon, wait_for
from tests.helpers import csv_rows, drop, log_events
from tests.pg import Db

CHUNK_SIZES = (1, 2, 7, 50_000)

# NULL keys between duplicates of non-NULL keys, so every chunk size cuts them differently.
NULL_KEYS = "k,v\n" + "".join(
    f"{k},v{i}\n"
    for i, k in enumerate(["", "a", "", "b", "a", "", "", "b", "c", "", "a", "", "", "c", ""])
)
NULL_ROWS = NULL_KEYS.count("\n,")
FILE_ROWS = NULL_KEYS.count("\n") - 1


def _expected_null_keys_kept() -> list[tuple[str | None, str]]:
    """Every NULL-key row, and the last row of each other key (file order)."""
    last: dict[str, str] = {}
    nulls = []
    for line in NULL_KEYS.splitlines()[1:]:
        k, v = line.split(",")
        if k:
            last[k] = v
        else:
            nulls.append((None, v))
    return sorted([*nulls, *last.items()], key=lambda r: (r[0] or "", r[1]))


def _table(db: Db, table: str) -> list[tuple[str | None, str]]:
    rows = db.fetch(f"SELECT k, v FROM {table}")
    return sorted(((r["k"], r["v"]) for r in rows), key=lambda r: (r[0] or "", r[1]))


def _server_version(db: Db) -> int:
    return int(db.val("SELECT current_setting('server_version_num')::int"))


@pytest.mark.parametrize("mode", ["upsert", "merge"])
def test_null_keys_are_never_folded_at_any_chunk_size(
    cli, db: Db, tmp_path: Path, mode: str
) -> None:
    f = write(tmp_path / "nulls.csv", NULL_KEYS)
    db.execute("CREATE TABLE nk (k text UNIQUE, v text)")
    for chunk in CHUNK_SIZES:
        db.execute("TRUNCATE nk")
        result = cli(
            "--once", "--no-resume", "--files", f, "--table", "nk", "--pk", "k",
            "--mode", mode, "--chunk-size", chunk,
        )  # fmt: skip
        assert result.code == 0, result.err
        assert _table(db, "nk") == _expected_null_keys_kept(), f"chunk size {chunk}"
        assert db.val("SELECT count(*) FROM nk WHERE k IS NULL") == NULL_ROWS
        assert f"{FILE_ROWS} rows" in result.out
        [m] = db.manifest()
        assert (m["status"], m["rows"]) == ("success", FILE_ROWS)


def test_null_keys_of_a_composite_key_are_kept(cli, db: Db, tmp_path: Path) -> None:
    f = write(tmp_path / "c.csv", "a,b,v\n1,,x\n1,,y\n1,2,p\n1,2,q\n,,z\n,,w\n")
    db.execute("CREATE TABLE ck (a int NOT NULL, b int, v text, UNIQUE (a, b))")
    db.execute("ALTER TABLE ck ALTER a DROP NOT NULL")
    for chunk in (1, 4, 50_000):
        db.execute("TRUNCATE ck")
        result = cli("--once", "--no-resume", "--files", f, "--table", "ck", "--pk", "a,b",
                     "--chunk-size", chunk)  # fmt: skip
        assert result.code == 0, result.err
        rows = db.fetch("SELECT a, b, v FROM ck ORDER BY v")
        assert [r["v"] for r in rows] == ["q", "w", "x", "y", "z"], f"chunk size {chunk}"


@pytest.mark.parametrize("mode", ["upsert", "merge"])
def test_nulls_not_distinct_index_makes_null_keys_equal(
    cli, db: Db, tmp_path: Path, mode: str
) -> None:
    if _server_version(db) < 150000:
        pytest.skip("NULLS NOT DISTINCT needs PostgreSQL 15")
    f = write(tmp_path / "nulls.csv", NULL_KEYS)
    db.execute("CREATE TABLE nnd (k text, v text)")
    db.execute("CREATE UNIQUE INDEX nnd_k ON nnd (k) NULLS NOT DISTINCT")
    last: dict[str | None, str] = {}
    for line in NULL_KEYS.splitlines()[1:]:
        k, v = line.split(",")
        last[k or None] = v
    expected = sorted(last.items(), key=lambda r: (r[0] or "", r[1]))
    for chunk in CHUNK_SIZES:
        db.execute("TRUNCATE nnd")
        result = cli(
            "--once", "--no-resume", "--files", f, "--table", "nnd", "--pk", "k",
            "--mode", mode, "--chunk-size", chunk,
        )  # fmt: skip
        assert result.code == 0, result.err
        assert _table(db, "nnd") == expected, f"chunk size {chunk}"
        [m] = db.manifest()
        assert (m["status"], m["rows"]) == ("success", FILE_ROWS)
    # The NULL key is one row, and a later file updates it.
    g = write(tmp_path / "again.csv", "k,v\n,new\n")
    assert cli("--once", "--files", g, "--table", "nnd", "--pk", "k", "--mode", mode).code == 0
    assert db.fetch("SELECT v FROM nnd WHERE k IS NULL") == [{"v": "new"}]


def _has_xml(db: Db) -> bool:
    try:
        db.val("SELECT '<a/>'::xml::text")
    except Exception:  # a server built without libxml (the embedded one)
        return False
    return True


# Row 1 changes doc, 2 changes b, p and x, 3 stays exactly as it was; 4 is new, all NULL.
DOCS_1 = {
    "doc": ['"{""a"": 1}"', "[1]", '"{ ""same"" : true }"'],
    "b": ['"{""k"": 1}"', "[]", "{}"],
    "p": ['"(1,2)"', '"(3,4)"', '"(0,0)"'],
    "x": ["<a/>", "<b>t</b>", "<c/>"],
}
DOCS_2 = {
    "doc": ['"{""a"": 2}"', "[1]", '"{ ""same"" : true }"', ""],
    "b": ['"{""k"": 1}"', "[1]", "{}", ""],
    "p": ['"(1,2)"', '"(3,5)"', '"(0,0)"', ""],
    "x": ["<a/>", "<b>u</b>", "<c/>", ""],
}


def _csv(columns: list[str], values: dict[str, list[str]]) -> str:
    n = len(values["doc"])
    lines = [",".join(["id", *columns])]
    lines += [",".join([str(i + 1), *(values[c][i] for c in columns)]) for i in range(n)]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("mode", ["upsert", "merge"])
@pytest.mark.parametrize("made_by", ["ingestd", "test"])
def test_types_without_equality_load_and_update(
    cli, db: Db, tmp_path: Path, mode: str, made_by: str
) -> None:
    if made_by == "test":  # --types offers json and jsonb, not point or xml
        columns = ["doc", "b", "p", *(["x"] if _has_xml(db) else [])]
        types = {"doc": "json", "b": "jsonb", "p": "point", "x": "xml"}
        defs = ", ".join(f"{c} {types[c]}" for c in columns)
        db.execute(f"CREATE TABLE docs (id int PRIMARY KEY, {defs})")
        extra: tuple[str, ...] = ()
    else:
        columns = ["doc", "b"]
        extra = ("--types", "id:integer,doc:json,b:jsonb")
    a = write(tmp_path / "docs.csv", _csv(columns, DOCS_1))
    args = ("--once", "--files", a, "--table", "docs", "--pk", "id", "--mode", mode, *extra)
    result = cli(*args)
    assert result.code == 0, result.out + result.err
    before = {r["id"]: r["xm"] for r in db.fetch("SELECT id, xmin::text AS xm FROM docs")}
    write(a, _csv(columns, DOCS_2))
    result = cli(*args)
    assert result.code == 0, result.out + result.err
    texts = ", ".join(f"{c}::text AS {c}" for c in columns)
    rows = {r["id"]: r for r in db.fetch(f"SELECT id, {texts}, xmin::text AS xm FROM docs")}
    assert rows[1]["doc"] == '{"a": 2}' and rows[2]["b"] == "[1]"
    assert rows[3]["doc"] == '{ "same" : true }'  # json keeps its text as written
    assert all(rows[4][c] is None for c in columns)
    if "p" in columns:
        assert (rows[1]["p"], rows[2]["p"]) == ("(1,2)", "(3,5)")
    if "x" in columns:
        assert rows[2]["x"] == "<b>u</b>"
    # Changed rows were rewritten; the unchanged one was not.
    assert rows[1]["xm"] != before[1] and rows[2]["xm"] != before[2]
    assert rows[3]["xm"] == before[3]


def test_arrays_domains_and_box_compare_exactly(cli, db: Db, tmp_path: Path) -> None:
    db.execute("CREATE DOMAIN doc AS json")
    db.execute("CREATE TABLE arr (id int PRIMARY KEY, tags json[], d doc, boxes box)")
    f = write(tmp_path / "a.csv", 'id,tags,d,boxes\n1,"{""[1]""}","{}","(1,1),(0,0)"\n')
    args = ("--once", "--files", f, "--table", "arr", "--pk", "id")
    assert cli(*args).code == 0
    # box's = compares areas: a moved box of the same area is still a change.
    write(f, 'id,tags,d,boxes\n1,"{""[2]""}","{""a"":1}","(2,2),(1,1)"\n')
    result = cli(*args)
    assert result.code == 0, result.out
    [row] = db.fetch("SELECT tags::text AS t, d::text AS d, boxes::text AS b FROM arr")
    assert row == {"t": "{[2]}", "d": '{"a":1}', "b": "(2,2),(1,1)"}


# --- the stage follows the target -----------------------------------------------------------

DAEMON = """
inbox = "inbox"
settle_s = 0.1
concurrency = 2
shutdown_grace_s = 20
[[contracts]]
name = "main"
pattern = "*.csv"
table = "t"
pk = ["id"]
mode = "upsert"
"""


@pytest.fixture
def daemon(daemons: Callable[..., Daemon]) -> Daemon:
    return daemons(DAEMON)


def _load_until_every_worker_loaded(
    daemon: Daemon, db: Db, inbox: Path, make: Callable[[int], str], first: int
) -> int:
    """Drop files in fours until both workers have committed a batch since `first`."""
    seen: set[str] = set()
    n = 0
    since = len(daemon.events("batch_committed"))
    for _ in range(25):
        for _ in range(4):
            drop(inbox, f"f{first + n}.csv", make(first + n))
            n += 1
        rows = first + n  # the files so far, and the row the table began with
        wait_for(lambda rows=rows: db.val("SELECT count(*) FROM t") == rows, what="files loaded")
        seen = {e["worker_id"] for e in daemon.events("batch_committed")[since:]}
        if len(seen) == 2:
            return n
    raise AssertionError(f"only workers {seen} took files")


def test_a_type_change_under_the_daemon_is_followed_by_every_worker(
    daemon: Daemon, db: Db, tmp_path: Path
) -> None:
    inbox = tmp_path / "inbox"
    db.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
    db.execute("INSERT INTO t VALUES (0, '0')")
    before = _load_until_every_worker_loaded(daemon, db, inbox, lambda i: f"id,v\n{i},{i}\n", 1)
    db.execute("ALTER TABLE t ALTER v TYPE integer USING v::integer")
    after = _load_until_every_worker_loaded(
        daemon, db, inbox, lambda i: f"id,v\n{i},{i * 10}\n", before + 1
    )
    total = before + after
    assert db.val("SELECT count(*) FROM t WHERE id > $1 AND v = id * 10", before) == after
    statuses = [m["status"] for m in db.manifest()]
    assert statuses == ["success"] * total
    assert not daemon.events("file_retry")
    assert daemon.stop() == 0
    assert f"{total} loaded, 0 skipped, 0 failed" in daemon.out_path.read_text()


WAITING_ON_GATE = "SELECT EXISTS (SELECT FROM pg_locks WHERE locktype = 'advisory' AND NOT granted)"
ALTER_QUEUED = (
    "SELECT EXISTS (SELECT FROM pg_locks WHERE relation = 't2'::regclass "
    "AND mode = 'AccessExclusiveLock' AND NOT granted)"
)


@pytest.mark.parametrize("concurrency", [1, 2])
def test_a_type_change_between_two_batches_of_one_file_is_followed(
    cli, db: Db, dsn: str, tmp_path: Path, concurrency: int
) -> None:
    """The ALTER lands after the first batch commits and before the second starts: a
    trigger holds the first batch on an advisory lock until the ALTER is queued. With a
    second connection (relay.Relay) the batch it has staged meanwhile may go first."""
    db.execute("CREATE TABLE t2 (id int PRIMARY KEY, v text)")
    db.execute(
        "CREATE FUNCTION gate() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        "PERFORM pg_advisory_xact_lock_shared(4242); RETURN NULL; END $$"
    )
    db.execute("CREATE TRIGGER gate AFTER INSERT ON t2 FOR EACH STATEMENT EXECUTE FUNCTION gate()")
    f = write(tmp_path / "t2.csv", csv_rows(10, value="{}"))
    gate_closed = threading.Event()
    seen: dict[str, int] = {}

    async def alter_between_batches() -> None:
        a, b = await asyncpg.connect(dsn), await asyncpg.connect(dsn)
        try:
            await a.execute("SELECT pg_advisory_lock(4242)")
            gate_closed.set()
            await _until(a, WAITING_ON_GATE)
            alter = asyncio.ensure_future(
                b.execute("ALTER TABLE t2 ALTER v TYPE integer USING v::integer")
            )
            await _until(a, ALTER_QUEUED)
            await a.execute("SELECT pg_advisory_unlock(4242)")
            await alter
            seen["rows_at_alter"] = await a.fetchval("SELECT count(*) FROM t2")
        finally:
            await a.close()
            await b.close()

    errors: list[BaseException] = []

    def run() -> None:
        try:
            asyncio.run(asyncio.wait_for(alter_between_batches(), 60))
        except BaseException as exc:
            errors.append(exc)
            gate_closed.set()

    thread = threading.Thread(target=run)
    thread.start()
    assert gate_closed.wait(30)
    result = cli("--once", "--files", f, "--table", "t2", "--pk", "id", "--chunk-size", 2,
                 "--concurrency", concurrency)  # fmt: skip
    thread.join(60)
    assert not errors, errors
    assert result.code == 0, result.out
    # The first batch (and with a relay the one staged beside it) came before the ALTER.
    assert seen["rows_at_alter"] in ((2,) if concurrency == 1 else (2, 4))
    assert db.columns("t2")["v"] == "integer"
    assert db.val("SELECT count(*) FROM t2 WHERE v = id") == 10
    [m] = db.manifest()
    assert (m["status"], m["rows"]) == ("success", 10)


async def _until(conn: asyncpg.Connection, query: str) -> None:
    for _ in range(1500):
        if await conn.fetchval(query):
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for: {query}")


# --- every error is one true line -----------------------------------------------------------


@pytest.mark.parametrize("mode", ["append", "upsert"])
def test_a_trigger_with_a_multi_line_detail_gives_one_line(
    cli, db: Db, tmp_path: Path, mode: str
) -> None:
    db.execute("CREATE TABLE tr (id int PRIMARY KEY, v text)")
    db.execute(
        "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        "RAISE EXCEPTION E'refused\\nby policy' USING DETAIL = E'first line\\nsecond line\\r\\n"
        "\\tthird'; END $$"
    )
    db.execute(
        "CREATE TRIGGER tr_refuse BEFORE INSERT ON tr FOR EACH ROW EXECUTE FUNCTION refuse()"
    )
    f = write(tmp_path / "tr.csv", "id,v\n1,a\n")
    result = cli("--once", "--files", f, "--table", "tr", "--pk", "id", "--mode", mode)
    assert result.code == 1
    [line] = [x for x in result.out.splitlines() if "FAILED" in x]
    assert "refused / by policy" in line and "first line / second line / third" in line
    [m] = db.manifest()
    assert m["status"] == "failed"
    assert "\n" not in m["notes"] and "\r" not in m["notes"] and "\t" not in m["notes"]
    assert "first line / second line / third" in m["notes"]
    [finished] = log_events(result.err, "file_finished")
    assert "\n" not in finished["error"]


@pytest.mark.parametrize("mode", ["append", "upsert", "merge"])
def test_a_generated_column_in_the_file_says_so(cli, db: Db, tmp_path: Path, mode: str) -> None:
    db.execute(
        "CREATE TABLE gen (id int PRIMARY KEY, v text, "
        "g text GENERATED ALWAYS AS (v || '!') STORED)"
    )
    f = write(tmp_path / "g.csv", "id,v,g\n1,a,b\n")
    result = cli("--once", "--files", f, "--table", "gen", "--pk", "id", "--mode", mode)
    assert result.code == 1
    assert "g, a generated column of table gen" in result.out
    assert "primary key" not in result.out and "--mode merge" not in result.out
    # Left out with --headers, the file loads and PostgreSQL computes the column.
    again = cli("--once", "--no-resume", "--files", f, "--table", "gen", "--pk", "id",
                "--mode", mode, "--headers", "id,v")  # fmt: skip
    assert again.code == 0, again.out
    assert db.fetch("SELECT id, v, g FROM gen") == [{"id": 1, "v": "a", "g": "a!"}]


@pytest.mark.parametrize("mode", ["append", "upsert", "merge"])
def test_an_identity_always_key_takes_the_files_values_in_every_mode(
    cli, db: Db, tmp_path: Path, mode: str
) -> None:
    db.execute("CREATE TABLE ident (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, v text)")
    f = write(tmp_path / "i.csv", "id,v\n5,a\n9,b\n")
    result = cli("--once", "--files", f, "--table", "ident", "--pk", "id", "--mode", mode)
    assert result.code == 0, result.out
    assert db.fetch("SELECT id, v FROM ident ORDER BY id") == [
        {"id": 5, "v": "a"}, {"id": 9, "v": "b"},
    ]  # fmt: skip


@pytest.mark.parametrize("mode", ["append", "upsert", "merge"])
def test_a_column_named_like_the_old_ordinal_loads(cli, db: Db, tmp_path: Path, mode: str) -> None:
    f = write(tmp_path / "o.csv", "id,_ingestd_row\n1,a\n2,b\n3,c\n")
    result = cli("--once", "--files", f, "--table", "o", "--pk", "id", "--mode", mode)
    assert result.code == 0, result.out + result.err
    rows = db.fetch('SELECT id, "_ingestd_row" AS r FROM o ORDER BY id')
    assert rows == [{"id": "1", "r": "a"}, {"id": "2", "r": "b"}, {"id": "3", "r": "c"}]


@pytest.mark.parametrize("mode", ["upsert", "merge"])
def test_an_equal_key_written_otherwise_keeps_the_last_spelling_at_any_chunk_size(
    cli, db: Db, tmp_path: Path, mode: str
) -> None:
    # numeric 1.0 = 1 = 01 = 1.00: one key; the last occurrence wins, key included.
    f = write(tmp_path / "k.csv", "id,v\n1.0,a\n1,b\n01,c\n1.00,d\n")
    for chunk in (1, 2, 50_000):
        db.execute("DROP TABLE IF EXISTS numk, ingestion_manifest, ingestion_rejects")
        db.execute("CREATE TABLE numk (id numeric PRIMARY KEY, v text)")
        result = cli("--files", f, "--table", "numk", "--mode", mode, "--pk", "id",
                     "--chunk-size", chunk)  # fmt: skip
        assert result.code == 0, (chunk, result.err)
        rows = db.fetch("SELECT id::text AS id, v FROM numk")
        assert rows == [{"id": "1.00", "v": "d"}], (mode, chunk)
