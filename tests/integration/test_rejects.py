"""--max-bad-rows: bad rows go to ingestion_rejects with the batch's good rows; over budget
the file fails and what its earlier batches committed stays."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import run_cli, write
from tests.pg import Db


def _rejects(db: Db) -> list[dict[str, object]]:
    return db.fetch(
        "SELECT row_number, raw, reason, sqlstate, run_id, filename FROM ingestion_rejects "
        "ORDER BY row_number"
    )


def test_rows_that_do_not_cast_are_set_aside(cli, db: Db, tmp_path: Path) -> None:
    body = '1,30\n2,x\n3,40\n4,50\n5,"fifty, six"\n6,60\n7,70\n8,y\n9,90\n10,100\n'
    f = write(tmp_path / "ages.csv", "id,age\n" + body)
    result = cli("--files", f, "--table", "ages", "--pk", "id", "--types", "id:integer,age:integer",
                 "--chunk-size", "4", "--max-bad-rows", "5")  # fmt: skip
    assert result.code == 0, result.err
    assert [r["id"] for r in db.fetch("SELECT id FROM ages ORDER BY id")] == [1, 3, 4, 6, 7, 9, 10]
    rejects = _rejects(db)
    assert [r["row_number"] for r in rejects] == [2, 5, 8]
    assert rejects[1]["raw"] == '"5","fifty, six"'
    assert all(r["sqlstate"] == "22P02" for r in rejects)
    assert 'invalid input syntax for type integer: "x"' in str(rejects[0]["reason"])
    assert "column age" in str(rejects[0]["reason"])
    assert rejects[0]["filename"] == str(f.resolve()) and rejects[0]["run_id"]
    [m] = db.manifest()
    assert (m["status"], m["rows"], m["rows_rejected"]) == ("success", 10, 3)
    assert '"event": "rows_rejected"' in result.err


def test_constraint_violations_in_the_merge_are_found_by_bisection(
    cli, db: Db, tmp_path: Path
) -> None:
    db.execute("CREATE TABLE acc (id text PRIMARY KEY, amount numeric CHECK (amount >= 0))")
    rows = "".join(f"{i},{-1 if i in (7, 13) else i}\n" for i in range(1, 21))
    f = write(tmp_path / "acc.csv", "id,amount\n" + rows)
    result = cli("--files", f, "--table", "acc", "--pk", "id", "--chunk-size", "20",
                 "--max-bad-rows", "2")  # fmt: skip
    assert result.code == 0, result.err
    assert db.val("SELECT count(*) FROM acc") == 18
    rejects = _rejects(db)
    assert [r["row_number"] for r in rejects] == [7, 13]
    assert all(r["sqlstate"] == "23514" for r in rejects)
    assert "check constraint" in str(rejects[0]["reason"])


def test_last_occurrence_still_wins_around_rejected_rows(cli, db: Db, tmp_path: Path) -> None:
    f = write(tmp_path / "d.csv", "id,n\n1,1\n1,2\n2,bad\n1,3\n2,4\n")
    result = cli("--files", f, "--table", "d", "--pk", "id", "--types", "id:integer,n:integer",
                 "--max-bad-rows", "1")  # fmt: skip
    assert result.code == 0, result.err
    assert db.fetch("SELECT id, n FROM d ORDER BY id") == [{"id": 1, "n": 3}, {"id": 2, "n": 4}]


def test_over_budget_fails_and_keeps_earlier_batches_and_their_rejects(
    cli, db: Db, tmp_path: Path
) -> None:
    f = write(tmp_path / "b.csv", "id,n\n1,1\n2,x\n3,3\n4,4\n5,y\n6,z\n7,7\n")
    result = cli("--files", f, "--table", "b", "--types", "id:integer,n:integer", "--pk", "id",
                 "--chunk-size", "3", "--max-bad-rows", "2")  # fmt: skip
    assert result.code == 1
    [m] = db.manifest()
    assert m["status"] == "failed" and "more bad rows than --max-bad-rows 2 allows" in m["notes"]
    # Batch 1 (rows 1-3, one reject) committed; batch 2 (rows 4-6, two more) did not.
    assert (m["rows"], m["rows_rejected"]) == (3, 1)
    assert [r["id"] for r in db.fetch("SELECT id FROM b ORDER BY id")] == [1, 3]
    assert [r["row_number"] for r in _rejects(db)] == [2]


def test_ratio_budget(cli, db: Db, tmp_path: Path) -> None:
    body = "".join(f"{i},{'x' if i % 10 == 0 else i}\n" for i in range(1, 101))  # 10% bad
    f = write(tmp_path / "r.csv", "id,n\n" + body)
    args = ["--files", f, "--table", "r", "--pk", "id", "--types", "id:integer,n:integer",
            "--chunk-size", "50"]  # fmt: skip
    assert cli(*args, "--max-bad-rows", "5%").code == 1
    assert cli(*args, "--max-bad-rows", "10%", "--no-resume").code == 0
    assert db.val("SELECT count(*) FROM r") == 90


def test_status_shows_rejected_rows(cli, dsn: str, db: Db, tmp_path: Path) -> None:
    f = write(tmp_path / "s.csv", "id,n\n1,1\n2,x\n")
    assert cli("--files", f, "--table", "s", "--pk", "id", "--types", "id:integer,n:integer",
               "--max-bad-rows", "1").code == 0  # fmt: skip
    out = run_cli(["status", "--dsn", dsn]).out
    assert out.splitlines()[1].split() == ["success", "1", "2", "1"]


def test_a_quoted_line_break_in_a_batch_first_row_does_not_shift_the_bad_row(
    cli, db: Db, tmp_path: Path
) -> None:
    # COPY does not count the line breaks of the first record it reads: mapping its line
    # numbers as physical lines set aside the good row 2 and blamed it for row 3's value.
    db.execute("CREATE TABLE rj (id int, v text, n int)")
    for mode, extra in [("raw", ()), ("arrow", ("--types", "id:integer"))]:
        db.execute("TRUNCATE rj")
        db.execute("DROP TABLE IF EXISTS ingestion_rejects, ingestion_manifest")
        f = write(tmp_path / mode / "rj.csv", 'id,v,n\n1,"a\nb",1\n2,"c\nd",2\n3,e,x\n4,f,4\n')
        result = cli("--files", f, "--table", "rj", "--mode", "append", "--max-bad-rows", "1",
                     *extra)  # fmt: skip
        assert result.code == 0, (mode, result.out, result.err)
        assert [r["id"] for r in db.fetch("SELECT id FROM rj ORDER BY id")] == [1, 2, 4], mode
        rejects = _rejects(db)
        assert [r["row_number"] for r in rejects] == [3], mode
        assert '"x"' in str(rejects[0]["reason"]) and "row 3" in str(rejects[0]["reason"])
