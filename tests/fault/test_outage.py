"""PostgreSQL stops, crashes and restarts under a running ingestd: nothing lost, nothing twice."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import write
from tests.daemon import Daemon, wait_for
from tests.fault.server import ControlledServer
from tests.helpers import csv_rows, drop, row_count
from tests.invariants import check_books
from tests.pg import Db

pytestmark = pytest.mark.fault

CONFIG = """
inbox = "inbox"
settle_s = 0.2
max_retries = 5
connect_timeout_s = 2
{extra}
[[contracts]]
name = "main"
pattern = "*.csv"
table = "t"
{contract}
"""


def test_database_outage_files_wait_then_load(
    own_server: ControlledServer, own_dsn: str, own_db: Db, tmp_path: Path
) -> None:
    daemon = Daemon(tmp_path, own_dsn, CONFIG.format(extra="", contract='pk = ["id"]'))
    try:
        daemon.wait_ready()
        drop(tmp_path / "inbox", "before.csv", csv_rows(3))
        wait_for(
            lambda: row_count(own_db, unreachable=-1) == 3, what="a file while the server is up"
        )

        own_server.stop("fast")
        wait_for(lambda: daemon.get("/readyz")[0] == 503, what="not ready during the outage")
        drop(tmp_path / "inbox", "during.csv", csv_rows(4, start=100))
        time.sleep(2)
        assert (tmp_path / "inbox" / "during.csv").exists()  # waiting, not failed
        assert not (tmp_path / "failed").exists()
        assert daemon.proc.poll() is None

        own_server.start()
        wait_for(
            lambda: row_count(own_db, unreachable=-1) == 7,
            timeout_s=40,
            what="the waiting file after the outage",
        )
        wait_for(lambda: daemon.get("/readyz")[0] == 200, what="ready again")
        statuses = [m["status"] for m in own_db.manifest()]
        assert statuses == ["success", "success"]
        assert daemon.stop() == 0
        check_books(own_db, tmp_path / "inbox", tmp_path / "done", tmp_path / "failed", "t")
    finally:
        daemon.kill()


@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_server_restart_mid_file_finishes_without_duplicates(
    own_server: ControlledServer, own_dsn: str, own_db: Db, tmp_path: Path, mode: str
) -> None:
    total = 300_000
    f = write(tmp_path / "big.csv", csv_rows(total))
    cmd = [
        sys.executable, "-m", "ingestd", "--once", "--files", str(f), "--dsn", own_dsn,
        "--table", "t", "--mode", "append", "--chunk-size", "5000", "--max-retries", "8",
        "--metrics-addr", "off", "--log-format", "json",
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: own_db.progress() >= 20_000, what="some batches committed")
        own_server.restart(mode)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-3000:]
    assert '"event": "file_retry"' in err
    assert own_db.val("SELECT count(*) FROM t") == total
    assert own_db.val("SELECT count(DISTINCT id) FROM t") == total
    [m] = own_db.manifest()
    assert (m["status"], m["rows"]) == ("success", total)
    assert m["attempts"] >= 2
    check_books(own_db, None, None, None, "t", files=(f,))


def test_closing_the_pool_with_the_server_down_does_not_wait_for_its_reconnect(
    own_server: ControlledServer, own_dsn: str
) -> None:
    """Closing lets a reconnect in flight finish (a TLS handshake cancelled midway left a
    socket open); with the server down the pool's reconnect task only sleeps out its
    backoff, and a stop then waited 2 s for nothing (breaker6 F1)."""
    import asyncio

    import uvloop

    from ingestd.db.database import Database
    from ingestd.retry import Backoff

    async def close_after_outage() -> float:
        db = await Database.open(
            own_dsn, size=3, connect_timeout_s=5, statement_timeout_s=10, attempts=0,
            backoff=Backoff(),
        )  # fmt: skip
        conn = await db.acquire()
        own_server.stop("immediate")
        await db.release(conn, broken=True)  # as after a failed file: the pool reopens it
        await asyncio.sleep(0.05)  # its first attempt has failed: it sleeps
        began = time.monotonic()
        await db.close(timeout_s=10)
        return time.monotonic() - began

    try:
        took = uvloop.run(close_after_outage())
    finally:
        own_server.start()  # the fixture drops its database
    assert took < 1.0, f"close took {took:.2f} s with the server down"
