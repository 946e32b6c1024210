"""Shared fixtures: one PostgreSQL per session, a fresh database per test, the CLI in-process."""

from __future__ import annotations

import io
import logging
import signal
from collections.abc import Callable, Iterator, Sequence
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.daemon import Daemon
from tests.fault.proxy import Proxy
from tests.helpers import unix_socket
from tests.helpers import write as write  # tests import it from here too
from tests.pg import Db, fresh_database, server
from tests.s3server import Bucket, S3Server, new_bucket, session_server


@pytest.fixture(scope="session")
def pg_admin_dsn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Admin DSN of the session's server (embedded unless INGESTD_TEST_DSN is set)."""
    with server(tmp_path_factory.mktemp("pg")) as dsn:
        yield dsn


@pytest.fixture(scope="session")
def s3server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """One SeaweedFS S3 server per session (skips when `weed` cannot run here)."""
    yield from session_server(tmp_path_factory.mktemp("s3"))


@pytest.fixture
def bucket(s3server: S3Server, monkeypatch: pytest.MonkeyPatch) -> Iterator[Bucket]:
    """A new bucket on the session's S3 server, its credentials and endpoint in this test's
    environment (ingestd's subprocesses and daemons inherit it)."""
    for name, value in s3server.env().items():
        monkeypatch.setenv(name, value)
    yield new_bucket(s3server)


@pytest.fixture
def dsn(pg_admin_dsn: str) -> Iterator[str]:
    """DSN of a database created for this test alone."""
    with fresh_database(pg_admin_dsn) as test_dsn:
        yield test_dsn


@pytest.fixture
def db(dsn: str) -> Db:
    return Db(dsn)


@dataclass
class CliResult:
    code: int
    out: str
    err: str


def run_cli(args: Sequence[str]) -> CliResult:
    """Run `ingestd ARGS` in this process and capture what it prints."""
    from ingestd.cli import main

    out, err = io.StringIO(), io.StringIO()
    handlers = {
        sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
    }
    try:
        with redirect_stdout(out), redirect_stderr(err):
            code = main([str(a) for a in args])
    finally:
        # ingestd ignores late signals once its run is over; pytest wants its Ctrl-C back.
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    # The CLI configures the root logger onto the captured stream; detach it.
    for handler in list(logging.getLogger().handlers):
        logging.getLogger().removeHandler(handler)
    return CliResult(code, out.getvalue(), err.getvalue())


@pytest.fixture(autouse=True)
def _root_logger_restored() -> Iterator[None]:
    """Give each test the root logger as it found it: a test that calls ingestd's main()
    directly leaves ingestd's handler behind, whose secret scrubbing rewrites records
    that pytest's caplog also sees (a later test's caplog then lost the traceback)."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    for handler in handlers:
        if handler not in root.handlers:
            root.addHandler(handler)
    root.setLevel(level)


@pytest.fixture
def cli(dsn: str) -> object:
    """run_cli with the test database's DSN and quiet defaults filled in."""

    def call(*args: object) -> CliResult:
        base = ["--dsn", dsn, "--metrics-addr", "off", "--log-format", "json"]
        return run_cli([*base, *map(str, args)])

    return call


@pytest.fixture
def tcp_dsn(dsn: str) -> Iterator[str]:
    """The test database over TCP: a process without root's powers cannot reach the embedded
    server's socket folder (mode 0700, another owner)."""
    socket_path = unix_socket(dsn)
    if socket_path is None:
        yield dsn
        return
    proxy = Proxy(socket_path).start()
    parts = urlsplit(dsn)
    try:
        yield f"postgresql://{parts.username or 'postgres'}@127.0.0.1:{proxy.port}{parts.path}"
    finally:
        proxy.stop()


@pytest.fixture
def daemons(tmp_path: Path, dsn: str) -> Iterator[Callable[..., Daemon]]:
    """Start `ingestd` daemons in tmp_path on the test database; each is killed after the test.

    Call it as start(config, *args, dsn=..., ready=True): `ready` waits for /readyz.
    """
    started: list[Daemon] = []
    test_dsn = dsn

    def start(config: str, *args: str, dsn: str = test_dsn, ready: bool = True) -> Daemon:
        daemon = Daemon(tmp_path, dsn, config, args)
        started.append(daemon)
        if ready:
            daemon.wait_ready()
        return daemon

    yield start
    for daemon in started:
        daemon.kill()
