"""The network between ingestd and PostgreSQL cut or stalled mid-COPY and mid-commit."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.conftest import write
from tests.fault.proxy import Fault, Proxy, after_bytes, commit_number
from tests.fault.server import ControlledServer
from tests.helpers import csv_rows, unix_socket
from tests.invariants import check_books
from tests.pg import Db

pytestmark = pytest.mark.fault
TOTAL = 100_000


@pytest.fixture
def proxy(own_server: ControlledServer) -> Iterator[Proxy]:
    socket_path = unix_socket(own_server.dsn)
    assert socket_path, own_server.dsn  # a server of the test's own listens on a socket
    proxy = Proxy(socket_path).start()
    yield proxy
    proxy.stop()


def _load(
    tmp_path: Path, proxy: Proxy, own_dsn: str, *extra: str
) -> subprocess.CompletedProcess[str]:
    database = urlsplit(own_dsn).path
    dsn = f"postgresql://postgres@127.0.0.1:{proxy.port}{database}"
    f = write(tmp_path / "n.csv", csv_rows(TOTAL, start=0, value="x" * 40))
    cmd = [
        sys.executable, "-m", "ingestd", "--once", "--files", str(f), "--dsn", dsn,
        "--table", "events", "--mode", "append", "--chunk-size", "10000", "--max-retries", "5",
        "--metrics-addr", "off", "--log-format", "json", *extra,
    ]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180, check=False)


def _exactly_once(db: Db, *, segments: int | None = None) -> None:
    assert db.val("SELECT count(*) FROM events") == TOTAL
    assert db.val("SELECT count(DISTINCT id) FROM events") == TOTAL
    [m] = db.manifest()
    assert (m["status"], m["rows"]) == ("success", TOTAL)
    assert m["attempts"] >= 2
    assert m["segment_done"] == m["segment_ends"]
    assert (m["segment_ends"] and len(m["segment_ends"])) == segments


# The same file whole, and split in two segments loaded by two workers at once.
SPLIT = pytest.mark.parametrize(
    "extra", [(), ("--concurrency", "2", "--split-mb", "1")], ids=["whole", "split"]
)


@SPLIT
def test_connection_dropped_mid_copy_is_retried(
    proxy: Proxy, own_dsn: str, own_db: Db, tmp_path: Path, extra: tuple[str, ...]
) -> None:
    fault = proxy.add_fault(Fault("drop", after_bytes(1_500_000)))
    result = _load(tmp_path, proxy, own_dsn, *extra)
    assert fault.fired.is_set()
    assert result.returncode == 0, result.stderr[-3000:]
    _exactly_once(own_db, segments=2 if extra else None)
    check_books(own_db, None, None, None, "events", files=(tmp_path / "n.csv",))


@SPLIT
def test_connection_dropped_after_commit_sent_counts_the_batch_once(
    proxy: Proxy, own_dsn: str, own_db: Db, tmp_path: Path, extra: tuple[str, ...]
) -> None:
    # The server gets the COMMIT, the client never hears back: the outcome is unknown
    # to ingestd, and the manifest is what tells it the batch is in.
    fault = proxy.add_fault(Fault("drop", commit_number(6), after_forwarding=True))
    result = _load(tmp_path, proxy, own_dsn, *extra)
    assert fault.fired.is_set()
    assert result.returncode == 0, result.stderr[-3000:]
    _exactly_once(own_db, segments=2 if extra else None)
    check_books(own_db, None, None, None, "events", files=(tmp_path / "n.csv",))


def test_connection_dropped_before_commit_arrives_rolls_back_the_batch(
    proxy: Proxy, own_dsn: str, own_db: Db, tmp_path: Path
) -> None:
    fault = proxy.add_fault(Fault("drop", commit_number(6), after_forwarding=False))
    result = _load(tmp_path, proxy, own_dsn)
    assert fault.fired.is_set()
    assert result.returncode == 0, result.stderr[-3000:]
    _exactly_once(own_db)
    check_books(own_db, None, None, None, "events", files=(tmp_path / "n.csv",))


def test_stalled_commit_is_bounded_by_timeouts(
    proxy: Proxy, own_dsn: str, own_db: Db, tmp_path: Path
) -> None:
    # A partition while the COMMIT is in flight: neither side hears from the other. The
    # client's deadline ends the wait; the server ends the orphaned session on its own
    # (idle_in_transaction_session_timeout), releasing the manifest row's lock.
    config = tmp_path / "c.toml"
    config.write_text("statement_timeout_s = 2\nconnect_timeout_s = 3\n")
    fault = proxy.add_fault(Fault("stall", commit_number(4), after_forwarding=False))
    started = time.monotonic()
    result = _load(tmp_path, proxy, own_dsn, "--config", str(config))
    assert fault.fired.is_set()
    assert result.returncode == 0, result.stderr[-3000:]
    assert time.monotonic() - started < 90
    assert "timed out" in result.stderr.lower() or "timeout" in result.stderr.lower()
    _exactly_once(own_db)
    check_books(own_db, None, None, None, "events", files=(tmp_path / "n.csv",))
