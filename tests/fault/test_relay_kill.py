"""kill -9 of ingestd while two connections take an upsert file's batches in turns
(relay.Relay), then a resume: every key holds its last occurrence in the file, the manifest
counts every row once, and a batch never commits before the one ahead of it."""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import write
from tests.fault.test_kill import _kill_at
from tests.helpers import log_events
from tests.pg import Db

pytestmark = pytest.mark.fault

TOTAL = 60_000
KEYS = 7_000  # every key repeats across batches: a batch merged out of turn shows
CHUNK = 1_000


def _command(f: Path, dsn: str) -> list[str]:
    return [
        sys.executable, "-m", "ingestd", "--once", "--files", str(f), "--dsn", dsn,
        "--table", "events", "--mode", "upsert", "--pk", "id", "--chunk-size", str(CHUNK),
        "--concurrency", "2", "--metrics-addr", "off", "--log-format", "json",
    ]  # fmt: skip


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_kill_9_of_a_relayed_upsert_then_resume_keeps_the_last_occurrence(
    dsn: str, db: Db, tmp_path: Path, seed: int
) -> None:
    rng = random.Random(seed)
    # Row i: key i % KEYS, value i: the last occurrence of a key has the largest value.
    f = write(tmp_path / "up.csv", "id,v\n" + "".join(f"{i % KEYS},{i}\n" for i in range(TOTAL)))
    db.execute("CREATE TABLE events (id bigint PRIMARY KEY, v bigint)")
    cmd = _command(f, dsn)
    for _ in range(rng.randint(1, 3)):
        _kill_at(cmd, db, rng.randrange(0, TOTAL), rng.uniform(0, 0.05))
    left = TOTAL - db.progress()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    if left > 4 * CHUNK:  # the resume itself ran in turns on two connections
        assert log_events(done.stderr, "relay_joined"), done.stderr[-2000:]
    [m] = db.manifest()
    assert (m["status"], m["rows"]) == ("success", TOTAL)
    got = {r["id"]: r["v"] for r in db.fetch("SELECT id, v FROM events")}
    expected = {k: max(i for i in range(k, TOTAL, KEYS)) for k in range(KEYS)}
    assert got == expected
