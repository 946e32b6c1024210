"""kill -9 of ingestd while three workers load a Parquet file's row-group segments: after a
restart (with any number of workers) every row is in exactly once, each segment resumed
after its committed batches, and the table is the one an unsplit load gives."""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.fault.test_kill import _kill_at
from tests.invariants import check_books
from tests.pg import Db

pytestmark = pytest.mark.fault

TOTAL = 60_000
GROUP = 7_000  # 9 row groups: segments end at multiples of 7,000
CHUNK = 1_000


def _file(path: Path) -> Path:
    ids = range(TOTAL)
    table = pa.table(
        {
            "id": pa.array(ids, pa.int64()),
            "v": pa.array([f"v{i}" if i % 7 else None for i in ids], pa.string()),
            "x": pa.array([i / 4 for i in ids], pa.float64()),
        }
    )
    pq.write_table(table, path, row_group_size=GROUP)
    return path


def _command(f: Path, dsn: str, table: str, workers: int, chunk: int = CHUNK) -> list[str]:
    return [
        sys.executable, "-m", "ingestd", "--once", "--files", str(f), "--dsn", dsn,
        "--table", table, "--pk", "id", "--mode", "append", "--preserve-types",
        "--chunk-size", str(chunk), "--metrics-addr", "off", "--log-level", "WARNING",
        "--concurrency", str(workers), "--split-mb", "0.1",
    ]  # fmt: skip


def _finish(cmd: list[str]) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]


def _rows(db: Db, table: str) -> list[str]:
    return [r["row"] for r in db.fetch(f"SELECT t::text AS row FROM {table} AS t ORDER BY id")]


@pytest.mark.parametrize("trial", range(4))
def test_kill_9_of_a_split_parquet_file_then_restart_loads_every_row_once(
    dsn: str, db: Db, tmp_path: Path, trial: int
) -> None:
    rng = random.Random(20261201 + trial)
    f = _file(tmp_path / "big.parquet")
    for _ in range(rng.randint(1, 3)):
        _kill_at(_command(f, dsn, "events", 3), db, rng.randrange(1, TOTAL), rng.uniform(0, 0.05))
    [m] = db.manifest()  # a row is committed: the plan is made
    assert m["segment_ends"] is not None and len(m["segment_ends"]) == 3
    # The restart may have other workers and another chunk size: segments resume by row.
    _finish(_command(f, dsn, "events", rng.choice([1, 2, 3]), rng.choice([300, CHUNK, 2_500])))
    assert db.val("SELECT count(*) FROM events") == TOTAL
    assert db.val("SELECT count(DISTINCT id) FROM events") == TOTAL
    [m] = db.manifest()
    assert (m["status"], m["rows"]) == ("success", TOTAL)
    assert m["segment_ends"] is not None and m["segment_done"] == m["segment_ends"]
    assert all(end % GROUP == 0 for end in m["segment_ends"][:-1])
    check_books(db, None, None, None, "events", files=(f,))
    # The same file unsplit, into another table: the same rows, value for value.
    db.execute("DROP TABLE ingestion_manifest, ingestion_rejects")
    _finish([*_command(f, dsn, "events_one", 1), "--split-mb", "0"])
    assert _rows(db, "events") == _rows(db, "events_one")
