"""The DSN password never shows: logs, errors, summaries, sidecars, status, metrics, health."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

import pytest

from tests.conftest import CliResult, run_cli, write
from tests.daemon import Daemon, wait_for
from tests.pg import Db

SECRET = "S3cr3t-xyzzy-42"  # noqa: S105 - the canary the tests grep for
ODD_SECRET = SECRET + "/@:%' \\x"  # needs quoting in a URL and in key=value form
FORBIDDEN = (SECRET, quote(SECRET, safe=""), "xyzzy")


def with_password(dsn: str, password: str | None) -> str:
    """The test database's DSN (trust auth) with a user and password in it."""
    parts = urlsplit(dsn)
    hostport = parts.netloc.rpartition("@")[2]
    userinfo = "postgres" if password is None else f"postgres:{quote(password, safe='')}"
    return urlunsplit((parts.scheme, f"{userinfo}@{hostport}", parts.path, parts.query, ""))


def assert_clean(*texts: str) -> None:
    for text in texts:
        for secret in FORBIDDEN:
            assert secret not in text, f"secret {secret!r} leaked in:\n{text}"


def sidecars(root: Path) -> list[str]:
    return [p.read_text() for p in root.rglob("*.error.json")]


def inbox_with_files(root: Path) -> Path:
    inbox = root / "inbox"
    write(inbox / "good.csv", "id,v\n1,a\n2,b\n")
    write(inbox / "bad.csv", 'id,v\n1,a,extra,fields\n"unterminated\n')
    write(inbox / "nopk.csv", "x,v\n1,a\n")
    return inbox


def run_load(root: Path, *args: str) -> CliResult:
    inbox = inbox_with_files(root)
    return run_cli(
        [
            *("--once", "--inbox", str(inbox), "--table", "t", "--pk", "id"),
            *("--metrics-addr", "off", "--log-level", "DEBUG", "--max-retries", "0"),
            *args,
        ]
    )


def check_run(root: Path, result: CliResult, db: Db) -> None:
    assert result.code == 1, result.out + result.err  # good loaded, bad ones failed
    assert db.val("SELECT count(*) FROM t") == 2
    failed = sidecars(root)
    assert len(failed) == 2
    notes = [r["notes"] or "" for r in db.manifest()]
    assert_clean(result.out, result.err, *failed, *notes, json.dumps(db.manifest(), default=str))


@pytest.mark.parametrize("source", ["flag", "env", "config", "password_file", "env_file"])
def test_loads_never_show_the_password(
    source: str, dsn: str, db: Db, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("INGESTD_DSN", raising=False)
    monkeypatch.delenv("INGESTD_PASSWORD_FILE", raising=False)
    secret_file = tmp_path / "pw"
    secret_file.write_text(ODD_SECRET + "\n")
    config = tmp_path / "ingestd.toml"
    args: list[str] = []
    if source == "flag":
        args = ["--dsn", with_password(dsn, SECRET)]
    elif source == "env":
        monkeypatch.setenv("INGESTD_DSN", with_password(dsn, SECRET))
    elif source == "config":
        config.write_text(f'dsn = "{with_password(dsn, SECRET)}"\n')
        args = ["--config", str(config)]
    elif source == "password_file":
        config.write_text(f'dsn = "{with_password(dsn, None)}"\npassword_file = "{secret_file}"\n')
        args = ["--config", str(config)]
    else:
        monkeypatch.setenv("INGESTD_DSN", with_password(dsn, None))
        monkeypatch.setenv("INGESTD_PASSWORD_FILE", str(secret_file))
    result = run_load(tmp_path, *args)
    check_run(tmp_path, result, db)
    # The password did reach the DSN (else this test would prove nothing).
    if source in ("password_file", "env_file"):
        from ingestd.cli import build_settings

        settings = build_settings([*args, "--inbox", str(tmp_path), "--table", "t", "--pk", "id"])
        assert urlsplit_password(settings.dsn or "") == ODD_SECRET


def urlsplit_password(dsn: str) -> str:
    from urllib.parse import unquote

    return unquote(urlsplit(dsn).password or "")


@pytest.mark.parametrize(
    "bad_dsn",
    [
        f"postgresql://u:{SECRET}@127.0.0.1:1/db",
        f"postgresql://u:{SECRET}@127.0.0.1:notaport/db",
        f"postgres://u:{SECRET}@[::1/db",
        f"host=127.0.0.1 port=1 user=u password={SECRET} dbname=db",
        f"host=127.0.0.1 port=1 user=u password='{SECRET}' dbname=db",
    ],
)
def test_unreachable_or_malformed_dsn_errors_hide_the_password(
    bad_dsn: str, tmp_path: Path
) -> None:
    inbox = inbox_with_files(tmp_path)
    result = run_cli(
        [
            *("--once", "--inbox", str(inbox), "--table", "t", "--pk", "id", "--dsn", bad_dsn),
            *("--metrics-addr", "off", "--max-retries", "0", "--log-level", "DEBUG"),
        ]
    )
    assert result.code != 0
    assert result.err.strip(), "a failed connection must say why"
    assert "Traceback" not in result.err
    assert_clean(result.out, result.err)
    status = run_cli(["status", "--dsn", bad_dsn])
    assert status.code == 2
    assert_clean(status.out, status.err)


def test_missing_database_error_hides_the_password(dsn: str, tmp_path: Path) -> None:
    parts = urlsplit(with_password(dsn, SECRET))
    wrong = urlunsplit((parts.scheme, parts.netloc, "/no_such_db_xyz", parts.query, ""))
    result = run_load(tmp_path, "--dsn", wrong)
    assert result.code == 2
    assert "no_such_db_xyz" in result.err
    assert_clean(result.out, result.err)


def test_status_never_shows_the_password(dsn: str, db: Db, tmp_path: Path) -> None:
    result = run_load(tmp_path, "--dsn", with_password(dsn, SECRET))
    check_run(tmp_path, result, db)
    for extra in ([], ["--json"]):
        status = run_cli(["status", "--dsn", with_password(dsn, SECRET), *extra])
        assert status.code == 0, status.err
        assert "failed" in status.out
        assert_clean(status.out, status.err)


@pytest.fixture
def daemon(daemons: Callable[..., Daemon], dsn: str, tmp_path: Path) -> Daemon:
    config = 'inbox = "inbox"\nsettle_s = 0.1\n[[contracts]]\npattern = "*.csv"\ntable = "t"\n'
    config += 'pk = ["id"]\n'
    (tmp_path / "inbox").mkdir()
    return daemons(config, "--log-level", "DEBUG", dsn=with_password(dsn, SECRET), ready=False)


def test_daemon_logs_metrics_and_health_never_show_the_password(
    daemon: Daemon, db: Db, tmp_path: Path
) -> None:
    daemon.wait_ready()
    inbox_with_files(tmp_path)
    wait_for(lambda: len(sidecars(tmp_path)) == 2, 30, "two failed files with sidecars")
    wait_for(lambda: list((tmp_path / "done").rglob("good.csv")), 30, "the good file loaded")
    pages = [daemon.get(p) for p in ("/metrics", "/readyz", "/healthz", "/nope")]
    assert pages[0][0] == 200 and "ingest_files_processed_total" in pages[0][1]
    assert daemon.stop() == 0
    assert_clean(
        *(body for _, body in pages),
        daemon.logs_text(),
        daemon.out_path.read_text(),
        *sidecars(tmp_path),
    )
    assert db.val("SELECT count(*) FROM t") == 2
