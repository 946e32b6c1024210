"""A large CSV append is cut into row-aligned segments that several workers load at once;
every segment is checkpointed by bytes in the manifest, so every row lands exactly once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.conftest import write
from tests.helpers import log_events
from tests.pg import Db

ROWS = 6_000


def _quoted_rows(n: int) -> str:
    # Quoted fields holding the delimiter, quotes and line breaks: only counting quotes from
    # the top tells a row's end from a line break inside a field.
    return "id,v,n\n" + "".join(f'{i},"line one, ""{i}""\nline two",{i * 7}\n' for i in range(n))


def _split(cli, f: Path, *extra: object) -> Any:
    # 0.05 MB segments: the ~300 kB file is cut into as many segments as there are workers.
    return cli(
        "--files", f, "--table", "t", "--pk", "id", "--mode", "append",
        "--chunk-size", "200", "--split-mb", "0.05", *extra,
    )  # fmt: skip


def test_a_large_append_is_split_across_workers_and_loads_every_row_once(
    cli, db: Db, tmp_path: Path
) -> None:
    f = write(tmp_path / "big.csv", _quoted_rows(ROWS))
    result = _split(cli, f, "--concurrency", "3")
    assert result.code == 0, result.err
    [split] = log_events(result.err, "file_split")
    assert split["segments"] == 3
    batches = log_events(result.err, "batch_committed")
    assert {b["segment"] for b in batches} == {1, 2, 3}
    assert len({b["worker_id"] for b in batches}) >= 2  # idle workers helped
    assert sum(b["rows"] for b in batches) == ROWS
    assert db.val("SELECT count(*) FROM t") == ROWS
    assert db.val("SELECT count(DISTINCT id) FROM t") == ROWS
    assert db.val("SELECT v FROM t WHERE id = '4321'") == 'line one, "4321"\nline two'
    assert db.val("SELECT sum(n::int) FROM t") == 7 * ROWS * (ROWS - 1) // 2
    [m] = db.manifest()
    assert (m["status"], m["rows"], m["batches"]) == ("success", ROWS, len(batches))
    assert m["segment_done"] == m["segment_ends"] and m["segment_ends"][-1] == f.stat().st_size
    assert "big.csv -> t (6,000 rows)" in result.out


def test_files_that_are_not_split(cli, db: Db, tmp_path: Path) -> None:
    """Upserts keep file order, small files and one worker gain nothing, bad-row budgets need
    row numbers: all of these load in one pass."""
    f = write(tmp_path / "big.csv", _quoted_rows(ROWS))
    cases = [
        ("--mode", "upsert", "--concurrency", "3"),
        ("--concurrency", "1"),
        ("--concurrency", "3", "--split-mb", "0"),
        ("--concurrency", "3", "--max-bad-rows", "5"),
    ]
    for n, extra in enumerate(cases):
        result = _split(cli, f, *extra, "--table", f"t{n}", "--no-resume")
        assert result.code == 0, result.err
        assert log_events(result.err, "file_split") == [], extra
        assert db.val(f"SELECT count(*) FROM t{n}") == ROWS
        assert db.manifest()[0]["segment_ends"] is None


def test_a_bad_row_in_a_later_segment_fails_the_file_with_its_row_number(
    cli, db: Db, tmp_path: Path
) -> None:
    text = _quoted_rows(ROWS).replace("\n5000,", "\n5000,extra,", 1)
    f = write(tmp_path / "bad.csv", text)
    result = _split(cli, f, "--concurrency", "3")
    assert result.code == 1
    [m] = db.manifest()
    assert m["status"] == "failed"
    assert "row 5001 has 4 fields where 3 were expected" in m["notes"], m["notes"]
    assert (tmp_path.parent / "failed").exists() is False  # --files leaves files in place
    assert f.exists()


def test_a_segment_with_a_blank_line_goes_through_arrow_and_loads_the_same_rows(
    cli, db: Db, tmp_path: Path
) -> None:
    text = _quoted_rows(ROWS).replace("\n5000,", "\n\n5000,", 1)
    f = write(tmp_path / "blank.csv", text)
    result = _split(cli, f, "--concurrency", "3")
    assert result.code == 0, result.err
    fallback = log_events(result.err, "raw_csv_fallback")
    assert [e["reason"] for e in fallback] == ["blank line"]
    assert db.val("SELECT count(DISTINCT id) FROM t") == ROWS
    assert db.val("SELECT count(*) FROM t") == ROWS


def test_after_a_blank_line_a_bad_row_is_still_named_by_its_row_in_the_file(
    cli, db: Db, tmp_path: Path
) -> None:
    text = _quoted_rows(ROWS).replace("\n4600,", "\n\n4600,", 1)
    text = text.replace("\n5500,", "\n5500,extra,", 1)
    f = write(tmp_path / "both.csv", text)
    for extra in [("--concurrency", "3"), ("--split-mb", "0")]:
        result = _split(cli, f, *extra, "--no-resume")
        assert result.code == 1
        [m] = db.manifest()
        assert "row 5501 has 4 fields where 3 were expected" in m["notes"], (extra, m["notes"])


def test_a_type_error_names_the_row_of_the_whole_file_split_or_not(
    cli, db: Db, tmp_path: Path
) -> None:
    """COPY numbers lines, and each row here spans two: the message still names row 4501."""
    db.execute("CREATE TABLE t (id int PRIMARY KEY, v text, n int)")
    text = _quoted_rows(ROWS).replace(f",{4500 * 7}\n", ",oops\n", 1)
    f = write(tmp_path / "typed.csv", text)
    for extra in [("--concurrency", "3"), ("--split-mb", "0")]:
        result = _split(cli, f, *extra, "--no-resume")
        assert result.code == 1
        [m] = db.manifest()
        assert 'integer: "oops" (row 4501, column n)' in m["notes"], (extra, m["notes"])
        assert db.val("SELECT count(*) FROM t") < ROWS
        db.execute("TRUNCATE t")


def test_a_manifest_from_before_splits_gains_the_segment_columns(
    cli, db: Db, tmp_path: Path
) -> None:
    db.execute(
        """CREATE TABLE ingestion_manifest (
            id bigserial PRIMARY KEY, filename text NOT NULL, checksum bytea NOT NULL,
            filesize bigint NOT NULL, table_name text NOT NULL, status text NOT NULL,
            rows bigint NOT NULL DEFAULT 0, batches bigint NOT NULL DEFAULT 0,
            attempts integer NOT NULL DEFAULT 0, run_id text NOT NULL,
            started_at timestamptz NOT NULL DEFAULT now(), processed_at timestamptz,
            notes text, UNIQUE (filename, checksum));
        INSERT INTO ingestion_manifest (filename, checksum, filesize, table_name, status,
            rows, run_id) VALUES ('old.csv', '\\x00', 1, 'old', 'success', 1, 'r0')"""
    )
    f = write(tmp_path / "big.csv", _quoted_rows(ROWS))
    result = _split(cli, f, "--concurrency", "2")
    assert result.code == 0, result.err
    old, new = db.manifest()
    assert (old["filename"], old["segment_ends"], old["rows_rejected"]) == ("old.csv", None, 0)
    assert new["rows"] == ROWS and len(new["segment_ends"]) == 2
    assert db.val("SELECT count(*) FROM t") == ROWS
