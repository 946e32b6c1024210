"""kill -9 of ingestd at random points while it appends a large file: every row exactly once."""

from __future__ import annotations

import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import write
from tests.daemon import wait_for
from tests.helpers import csv_rows
from tests.invariants import check_books
from tests.pg import Db

pytestmark = pytest.mark.fault

TOTAL = 60_000
CHUNK = 1_000


def _command(f: Path, dsn: str, *, split: bool = False) -> list[str]:
    # split: three workers load three segments of the file at once (about 150 kB each).
    cmd = [
        sys.executable, "-m", "ingestd", "--once", "--files", str(f), "--dsn", dsn,
        "--table", "events", "--mode", "append", "--chunk-size", str(CHUNK),
        "--metrics-addr", "off", "--log-level", "WARNING",
    ]  # fmt: skip
    return [*cmd, "--concurrency", "3", "--split-mb", "0.1"] if split else cmd


def _kill_at(cmd: list[str], db: Db, rows_before_kill: int, extra_delay_s: float) -> None:
    """Start ingestd, SIGKILL it once `rows_before_kill` rows are committed plus a delay."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: db.progress() >= rows_before_kill or proc.poll() is not None,
                 timeout_s=60, what=f"{rows_before_kill} rows")  # fmt: skip
        time.sleep(extra_delay_s)
    finally:
        proc.kill()
        proc.wait(10)


def _finish(cmd: list[str]) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]


def _trial(
    db: Db, tmp_path: Path, dsn: str, rng: random.Random, name: str, *, split: bool
) -> tuple[int, int]:
    """One file, killed 1-3 times at random points, then finished: (rows lost, rows duplicated)."""
    f = write(tmp_path / f"{name}.csv", csv_rows(TOTAL, start=0, value="x"))
    db.execute("DROP TABLE IF EXISTS events")
    db.execute("DROP TABLE IF EXISTS ingestion_manifest")
    db.execute("DROP TABLE IF EXISTS ingestion_rejects")  # a fresh start on purpose
    cmd = _command(f, dsn, split=split)
    for _ in range(rng.randint(1, 3)):
        _kill_at(cmd, db, rng.randrange(0, TOTAL), rng.uniform(0, 0.05))
    _finish(cmd)
    count = int(db.val("SELECT count(*) FROM events"))
    distinct = int(db.val("SELECT count(DISTINCT id) FROM events"))
    [m] = db.manifest()
    assert m["status"] == "success" and m["rows"] == TOTAL
    return TOTAL - distinct, count - distinct


@pytest.mark.parametrize("kill_after_rows", [0, 1, CHUNK * 7, TOTAL // 2 + 123])
def test_kill_9_then_restart_loads_every_row_once(
    dsn: str, db: Db, tmp_path: Path, kill_after_rows: int
) -> None:
    f = write(tmp_path / "big.csv", csv_rows(TOTAL, start=0, value="x"))
    cmd = _command(f, dsn)
    _kill_at(cmd, db, kill_after_rows, 0.01)
    _finish(cmd)
    assert db.val("SELECT count(*) FROM events") == TOTAL
    assert db.val("SELECT count(DISTINCT id) FROM events") == TOTAL
    [m] = db.manifest()
    assert (m["status"], m["rows"]) == ("success", TOTAL)
    check_books(db, None, None, None, "events", files=(f,))


@pytest.mark.parametrize("kill_after_rows", [1, CHUNK * 7, TOTAL // 2 + 123])
def test_kill_9_of_a_split_file_then_restart_with_one_worker(
    dsn: str, db: Db, tmp_path: Path, kill_after_rows: int
) -> None:
    """Segments loaded by three workers, killed; one worker finishes every segment's rest."""
    f = write(tmp_path / "big.csv", csv_rows(TOTAL, start=0, value="x"))
    _kill_at(_command(f, dsn, split=True), db, kill_after_rows, 0.01)
    [m] = db.manifest()
    assert m["segment_ends"] is not None and len(m["segment_ends"]) == 3
    _finish([*_command(f, dsn), "--concurrency", "1"])
    assert db.val("SELECT count(*) FROM events") == TOTAL
    assert db.val("SELECT count(DISTINCT id) FROM events") == TOTAL
    [m] = db.manifest()
    assert (m["status"], m["rows"]) == ("success", TOTAL)
    assert m["segment_done"] == m["segment_ends"]
    check_books(db, None, None, None, "events", files=(f,))


@pytest.mark.slow
def test_kill_9_loop_25_random_trials(dsn: str, db: Db, tmp_path: Path) -> None:
    """The figure for the closing note: 25 trials (every other one a file split across three
    workers), random kill points, 0 lost, 0 duplicated."""
    rng = random.Random(20261128)
    lost = duplicated = 0
    for trial in range(25):
        trial_lost, trial_dup = _trial(db, tmp_path, dsn, rng, f"t{trial}", split=trial % 2 == 1)
        lost += trial_lost
        duplicated += trial_dup
    print(
        f"\nkill -9 loop: 25 trials (12 split across 3 workers), {TOTAL} rows each, "
        f"lost {lost}, duplicated {duplicated}"
    )
    assert (lost, duplicated) == (0, 0)
