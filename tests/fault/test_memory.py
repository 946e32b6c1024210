"""Huge fields, a line without end, wide rows: memory stays bounded, the file loads or fails
with an instruction."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.helpers import run_with_peak
from tests.invariants import check_books
from tests.pg import Db

pytestmark = [pytest.mark.fault, pytest.mark.slow]
MB = 1 << 20


def _run(dsn: str, f: Path, *extra: str) -> tuple[subprocess.CompletedProcess[str], int]:
    """Run ingestd --once on one file; return the result and the child's peak RSS in bytes."""
    args = [
        "--once", "--files", str(f), "--dsn", dsn, "--table", "big", "--mode", "append",
        "--metrics-addr", "off", *extra,
    ]  # fmt: skip
    return run_with_peak(args, timeout=300)


def test_a_50_mb_field_loads(dsn: str, db: Db, tmp_path: Path) -> None:
    f = tmp_path / "wide.csv"
    with f.open("w") as fh:
        fh.write("id,payload\n1,small\n2,")
        fh.write("x" * (50 * MB))
        fh.write("\n3,small\n")
    result, peak = _run(dsn, f)
    assert result.returncode == 0, result.stderr[-2000:]
    assert db.fetch("SELECT id, length(payload) AS n FROM big ORDER BY id") == [
        {"id": "1", "n": 5}, {"id": "2", "n": 50 * MB}, {"id": "3", "n": 5},
    ]  # fmt: skip
    assert peak < 700 * MB
    check_books(db, None, None, None, "big", files=(f,))


def test_a_100_mb_line_without_newline_loads(dsn: str, db: Db, tmp_path: Path) -> None:
    f = tmp_path / "endless.csv"
    with f.open("w") as fh:
        fh.write("id,payload\n7,")
        fh.write("y" * (100 * MB))  # no newline at all until end of file
    result, peak = _run(dsn, f)
    assert result.returncode == 0, result.stderr[-2000:]
    assert db.val("SELECT length(payload) FROM big WHERE id = '7'") == 100 * MB
    assert peak < 1100 * MB
    check_books(db, None, None, None, "big", files=(f,))


def test_a_row_over_the_memory_limit_fails_with_an_instruction(
    dsn: str, db: Db, tmp_path: Path
) -> None:
    f = tmp_path / "huge.csv"
    with f.open("w") as fh:
        fh.write("id,payload\n1,a\n2,")
        fh.write("z" * (40 * MB))
        fh.write("\n")
    result, _ = _run(dsn, f, "--memory-limit-mb", "32")
    assert result.returncode == 1
    [m] = db.manifest()
    assert m["status"] == "failed"
    assert "larger than 16 MiB" in m["notes"] and "memory_limit_mb" in m["notes"]
    check_books(db, None, None, None, files=(f,))


def test_an_unclosed_quote_fails_instead_of_reading_forever(
    dsn: str, db: Db, tmp_path: Path
) -> None:
    f = tmp_path / "quote.csv"
    with f.open("w") as fh:
        fh.write('id,v\n1,"never closed\n')
        fh.write("".join(f"{i},row\n" for i in range(1_500_000)))  # 15 MB: past the 8 MB block
    result, _ = _run(dsn, f, "--memory-limit-mb", "16")
    assert result.returncode == 1
    [m] = db.manifest()
    assert "quoted field is never closed" in m["notes"]
    check_books(db, None, None, None, files=(f,))


def test_wide_rows_shrink_the_batch(dsn: str, db: Db, tmp_path: Path) -> None:
    f = tmp_path / "rows.csv"
    with f.open("w") as fh:
        fh.write("id,payload\n")
        for i in range(400):
            fh.write(f"{i},{'w' * 100_000}\n")  # 40 MB in all; 4 MB per batch at 16 MB
    result, _ = _run(dsn, f, "--memory-limit-mb", "16", "--chunk-size", "50000")
    assert result.returncode == 0, result.stderr[-2000:]
    [m] = db.manifest()
    assert m["rows"] == 400 and m["batches"] >= 10  # 400 rows did not go as one batch
    assert db.val("SELECT count(*) FROM big") == 400
    check_books(db, None, None, None, "big", files=(f,))
