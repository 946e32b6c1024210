"""The command line as a user types it: boolean flags with values, subcommands in --help,
and every usage or configuration error as one line with exit status 2 (no database)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingestd.cli import _parser, build_settings
from ingestd.exceptions import UsageError
from tests.conftest import run_cli


def ingestd(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """The real `ingestd` process: its own stderr and exit status."""
    return subprocess.run(
        [sys.executable, "-m", "ingestd", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        check=False,
    )


@pytest.fixture
def inbox(tmp_path: Path) -> Path:
    path = tmp_path / "inbox"
    path.mkdir()
    return path


def base(inbox: Path) -> list[str]:
    return ["--inbox", str(inbox), "--table", "t", "--pk", "id"]


def test_boolean_flags_take_a_value_as_older_scripts_write_them(inbox: Path) -> None:
    s = build_settings([*base(inbox), "--dry-run", "false", "--preserve-types", "true", "--once"])
    assert (s.dry_run, s.contracts[0].preserve_types, s.once) == (False, True, True)
    s = build_settings([*base(inbox), "--dry-run", "--tolerant", "yes", "--keep-files", "0"])
    assert (s.dry_run, s.contracts[0].tolerant, s.keep_files) == (True, True, False)


def test_no_flags_turn_a_setting_off(inbox: Path) -> None:
    s = build_settings([*base(inbox), "--no-resume", "--no-header", "--headers", "id,v"])
    assert s.resume is False and s.contracts[0].csv.header is False
    s = build_settings([*base(inbox), "--no-raw-csv", "--once", "--no-once"])
    assert s.raw_csv is False and s.once is False


def test_a_flag_beats_the_environment(inbox: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INGESTD_CONCURRENCY", "3")
    monkeypatch.setenv("INGESTD_DRY_RUN", "true")
    assert build_settings(base(inbox)).concurrency == 3
    s = build_settings([*base(inbox), "--concurrency", "5", "--dry-run", "false"])
    assert (s.concurrency, s.dry_run) == (5, False)


def test_a_boolean_flag_with_another_word_is_one_line_exit_2(inbox: Path) -> None:
    with pytest.raises(UsageError, match="--dry-run must be true or false"):
        build_settings([*base(inbox), "--dry-run", "maybe"])
    result = ingestd(*base(inbox), "--dry-run", "maybe")
    assert result.returncode == 2
    assert result.stderr == (
        "ingestd: error: --dry-run must be true or false (or 1/0, yes/no), not 'maybe'\n"
    )


def test_a_malformed_command_line_is_one_line_not_the_usage(inbox: Path) -> None:
    result = ingestd(*base(inbox), "--no-such-flag")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "unrecognized arguments: --no-such-flag" in (
        result.stderr
    )
    result = ingestd(*base(inbox), "--chunk-size")
    assert result.returncode == 2 and result.stderr.count("\n") == 1


def test_help_lists_the_subcommands_and_every_flag_with_its_default() -> None:
    result = ingestd("--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    for command in ("status", "check-config", "retry"):
        assert f"{command} " in text
    assert "--chunk-size N rows per batch, one transaction each (default 50000; env" in text
    assert "--settle-s S daemon: a file must hold still" in text and "(default 0.2; env" in text
    assert "(default 256; env INGESTD_MEMORY_LIMIT_MB)" in text
    assert "--dry-run [BOOL]" in text and "--no-dry-run for false" in text


@pytest.mark.parametrize(
    ("command", "expected"),
    [("status", "--json"), ("check-config", "config"), ("retry", "--all-failed")],
)
def test_each_subcommand_has_its_own_help(command: str, expected: str) -> None:
    result = ingestd(command, "--help")
    assert result.returncode == 0, result.stderr
    assert f"usage: ingestd {command}" in result.stdout and expected in result.stdout


def test_options_before_a_subcommand_are_refused_in_one_line(tmp_path: Path) -> None:
    result = run_cli(["--dsn", "postgresql://u@h/db", "status"])
    assert result.code == 2
    assert result.err == (
        "ingestd: error: options go after the command: `ingestd status OPTION ...` "
        "(see ingestd status --help for the ones it takes)\n"
    )


BAD = [
    ("pk = 5\n", "contract 1: pk must be a list of column names"),
    ('contracts = "x"\n', "contracts must be a list of [[contracts]] tables, not 'x'"),
    ("[defaults]\ncsv = 5\n", "[defaults]: csv must be a table"),
    ("pattern = 7\n", "contract 1: pattern must be a string (in quotes), not 7"),
    ('chunk_size = "1000"\n', "chunk_size must be a whole number, not '1000'"),
    ('resume = "no"\n', "resume must be true or false"),
]


def bad_config(tmp_path: Path, text: str) -> Path:
    (tmp_path / "inbox").mkdir(exist_ok=True)
    path = tmp_path / "ingestd.toml"
    if text.startswith(("pk", "pattern")):
        text = f'[[contracts]]\ntable = "t"\nmode = "append"\n{text}'
    elif text.startswith("[defaults]"):
        text = f'{text}[[contracts]]\ntable = "t"\npk = "id"\n'
    path.write_text(f'inbox = "inbox"\n{text}')
    return path


@pytest.mark.parametrize(("text", "fragment"), BAD)
def test_check_config_says_what_is_wrong_in_one_line(
    tmp_path: Path, text: str, fragment: str
) -> None:
    path = bad_config(tmp_path, text)
    result = ingestd("check-config", str(path))
    assert result.returncode == 2
    assert result.stderr.startswith(f"ingestd check-config: error: config file {path}: ")
    assert fragment in result.stderr and result.stderr.count("\n") == 1
    assert "Traceback" not in result.stderr + result.stdout


@pytest.mark.parametrize(("text", "fragment"), BAD)
def test_start_up_says_what_is_wrong_in_one_line(tmp_path: Path, text: str, fragment: str) -> None:
    path = bad_config(tmp_path, text)
    result = ingestd("--config", str(path), "--once", "--dsn", "postgresql://u@127.0.0.1:1/db")
    assert result.returncode == 2
    assert result.stderr.startswith(f"ingestd: error: config file {path}: ")
    assert fragment in result.stderr and result.stderr.count("\n") == 1
    assert "Traceback" not in result.stderr + result.stdout


def test_a_wrong_environment_variable_at_start_up_is_one_line(inbox: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ingestd", *base(inbox), "--once"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"PATH": "/usr/bin:/bin", "INGESTD_CHUNK_SIZE": "lots"},
    )
    assert result.returncode == 2
    assert result.stderr == (
        "ingestd: error: INGESTD_CHUNK_SIZE must be a whole number, not 'lots'\n"
    )


FLAGS = sorted(
    s
    for a in _parser()._actions
    for s in a.option_strings
    if s not in ("-h", "--help", "--version")
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(words=st.lists(st.tuples(st.sampled_from(FLAGS), st.text(max_size=8)), max_size=4))
def test_any_command_line_is_settings_a_usage_error_or_exit_2(
    words: list[tuple[str, str]], tmp_path_factory: pytest.TempPathFactory
) -> None:
    inbox = tmp_path_factory.getbasetemp() / "fuzz-inbox"
    inbox.mkdir(exist_ok=True)
    argv = [*base(inbox), *(w for pair in words for w in pair)]
    try:
        build_settings(argv)
    except UsageError as exc:
        assert "\n" not in str(exc) or any("\n" in w for _, w in words)
    except SystemExit as exc:
        assert exc.code == 2
