"""The command line: parse flags, configure logging, run, print a summary, exit with a status."""

from __future__ import annotations

import argparse
import gc
import logging
import os
import signal
import sys
import traceback
import types
import typing
from argparse import SUPPRESS
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TextIO

from ingestd import __version__
from ingestd.config import load_config, resolve, unknown_environment
from ingestd.db.dsn import mask_dsn, password_of
from ingestd.exceptions import DatabaseUnavailableError, IngestdError, UsageError
from ingestd.logs import bound
from ingestd.logs import setup as setup_logging
from ingestd.names import shown, shown_name
from ingestd.settings import (
    Contract,
    CsvOptions,
    Settings,
    env_name,
    flag_name,
    setting_keys,
    shown_default,
)

# The run's modules (asyncpg, pyarrow, prometheus_client: ~0.3 s) load with the run:
# --version, --help, a usage error and check-config answer without them
# (tests/unit/test_import_cost.py).
if TYPE_CHECKING:
    from ingestd.worker import FileResult

EXIT_FAILED, EXIT_USAGE = 1, 2
log = logging.getLogger(__name__)

# Subcommands; each parses its own arguments (`ingestd status --help`).
COMMANDS = {
    "status": "the manifest at a glance: counts, recent failures, files in progress",
    "check-config": "validate a config file without touching anything",
    "retry": "move failed files back to the inbox (FILE... or --all-failed)",
    "backfill": "indexes a --backfill run dropped and not yet rebuilt; --finish rebuilds them",
}


class _Parser(argparse.ArgumentParser):
    """A usage error is one line and exit 2, not the whole usage text."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _add_keys(group: Any, cls: type) -> None:
    """One flag per setting of `cls` that has one; help and default from its field.
    Values stay text here: resolve checks them, whatever their source, in one place."""
    hints = typing.get_type_hints(cls)
    for f, meta in setting_keys(cls):
        if not meta.flag:
            continue
        default = shown_default(f)
        where = f"default {default}; " if default else ""
        flag = flag_name(f.name)
        if hints[f.name] is bool:
            no = "--no-" + flag[2:]
            text = f"{meta.help} ({where}{no} for false; env {env_name(f.name)})"
            # `--dry-run` alone, `--dry-run false` as older scripts write it, or --no-dry-run.
            group.add_argument(
                flag, dest=f.name, nargs="?", const="true", metavar="BOOL", help=_escape(text)
            )
            group.add_argument(no, dest=f.name, action="store_const", const="false", help=SUPPRESS)
            continue
        choices = _choices(hints[f.name])
        metavar = meta.metavar or ("|".join(choices) if choices else None)
        text = f"{meta.help} ({where}env {env_name(f.name)})"
        group.add_argument(flag, dest=f.name, metavar=metavar, help=_escape(text))


def _choices(hint: Any) -> tuple[str, ...]:
    """The values of a Literal setting, also one that may be None (`Literal[...] | None`)."""
    if typing.get_origin(hint) is typing.Literal:
        return tuple(str(v) for v in typing.get_args(hint))
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return tuple(c for arg in typing.get_args(hint) for c in _choices(arg))
    return ()


def _escape(text: str) -> str:
    return text.replace("%", "%%")  # argparse formats help with %


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="ingestd",
        allow_abbrev=False,  # `--max` would mean another flag the day one more starts so
        usage="%(prog)s [OPTION ...]   (a run: --once, or a daemon)\n       %(prog)s COMMAND ...",
        description="Load CSV, NDJSON and Parquet files (plain, compressed or zipped; from a "
        "folder or an S3 bucket) into PostgreSQL, exactly once. Every setting "
        "is a flag, an INGESTD_* variable or a key in the config file, in that order of "
        "precedence.",
        epilog="Exit status: 0 all files loaded or skipped, 1 some file failed or is left "
        "retrying, or a folder could not be read, 2 bad usage or configuration.",
    )
    p.add_argument("--version", action="version", version=f"ingestd {__version__}")
    p.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="TOML config file (see config/ingestd.example.toml)",
    )
    p.add_argument(
        "--files",
        nargs="+",
        metavar="PATH",
        help="load exactly these files (implies --once, --keep-files)",
    )
    _add_keys(p.add_argument_group("run"), Settings)
    contract = p.add_argument_group("contract (one target table, no config file needed)")
    _add_keys(contract, Contract)
    _add_keys(contract, CsvOptions)
    commands = p.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for name, text in COMMANDS.items():
        # Each command parses the rest itself: REMAINDER hands it over untouched, and a
        # prefix no argument has keeps argparse from reading `--dsn` as an option here.
        sub = commands.add_parser(name, help=text, add_help=False, prefix_chars="\0")
        sub.add_argument("command_args", nargs=argparse.REMAINDER)
    return p


def _flags(ns: argparse.Namespace) -> dict[str, Any]:
    # Only what the user typed: None means "not given", so the config file can fill it.
    skip = ("config", "command", "command_args")
    return {k: v for k, v in vars(ns).items() if v is not None and k not in skip}


def build_settings(argv: Sequence[str]) -> Settings:
    """Parse argv into Settings (argparse exits 2 itself on a malformed command line)."""
    ns = _parser().parse_args(argv)
    config = load_config(ns.config) if ns.config else None
    return resolve(_flags(ns), config=config, config_path=ns.config)


def _open_std_fds() -> None:
    """Put /dev/null on a standard stream started closed (`ingestd >&-`): the next file
    opened would take its number, and the event loop refuses a descriptor below 3 (uvloop
    aborts the process); output to a closed stream is lost either way."""
    for fd, name in ((0, "stdin"), (1, "stdout"), (2, "stderr")):
        try:
            os.fstat(fd)
            continue
        except OSError:
            pass
        null = os.open(os.devnull, os.O_RDWR)
        if null != fd:
            os.dup2(null, fd)
            os.close(null)
        if getattr(sys, name) is None:  # Python found it closed at start
            setattr(sys, name, open(fd, "r" if fd == 0 else "w", closefd=False))


def _detach_stdout() -> None:
    """After a failed write of standard output: /dev/null in its place, so that the
    buffered rest does not fail again at exit."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `ingestd` command."""
    _open_std_fds()
    try:
        return _main(list(sys.argv[1:] if argv is None else argv), program=argv is None)
    except BrokenPipeError:
        # `ingestd status | head`: the reader left; say nothing more, as Unix tools do.
        _detach_stdout()
        return EXIT_FAILED
    except Exception as exc:  # a bug before or after the run: still one JSON line
        if not logging.getLogger().handlers:
            setup_logging("json", "INFO")
        log_crash(exc)
        return EXIT_FAILED


def _main(args: list[str], program: bool = False) -> int:
    ns = _parser().parse_args(args)
    if ns.command is not None:
        if _flags(ns) or ns.config:
            print(
                f"ingestd: error: options go after the command: `ingestd {ns.command} "
                f"OPTION ...` (see ingestd {ns.command} --help for the ones it takes)",
                file=sys.stderr,
            )
            return EXIT_USAGE
        return _command(ns.command, ns.command_args)
    try:
        config = load_config(ns.config) if ns.config else None
        settings = resolve(_flags(ns), config=config, config_path=ns.config)
    except UsageError as exc:
        print(f"ingestd: error: {mask_dsn(str(exc))}", file=sys.stderr)
        return EXIT_USAGE
    secrets = tuple(p for p in [password_of(settings.dsn or "")] if p)
    setup_logging(settings.log_format, settings.log_level, secrets)
    for name in unknown_environment(os.environ):
        log.warning("unknown_environment_variable", extra={"variable": name})
    if settings.dry_run:
        from ingestd.dryrun import dry_run

        code = dry_run(settings, sys.stdout)
        if settings.backfill:
            code = max(code, _dry_run_backfill(settings))
        return code
    return _run(settings, secrets, args, program)


def _dry_run_backfill(settings: Settings) -> int:
    """--dry-run --backfill: what would be dropped and rebuilt (catalog reads only)."""
    import asyncio

    from ingestd.backfill import describe
    from ingestd.db.database import Database
    from ingestd.retry import Backoff

    if not settings.dsn:
        print("  backfill: the plan needs the database: give --dsn or INGESTD_DSN (a dry "
              "run does not start the embedded server)")  # fmt: skip
        return 0

    async def plan() -> list[str]:
        db = await Database.open(
            str(settings.dsn), size=1, attempts=0, backoff=Backoff(),
            connect_timeout_s=settings.connect_timeout_s,
            statement_timeout_s=settings.statement_timeout_s,
        )  # fmt: skip
        try:
            async with db.connection() as conn:
                return await describe(conn, settings)
        finally:
            await db.close()

    try:
        lines = asyncio.run(plan())
    except IngestdError as exc:
        print(f"ingestd: error: {mask_dsn(str(exc))}", file=sys.stderr)
        return EXIT_USAGE
    for line in lines:
        print(line)
    return 0


def _run(
    settings: Settings, secrets: tuple[str, ...], args: Sequence[str], program: bool = False
) -> int:
    from ingestd.db.locks import ManifestLockedError
    from ingestd.service import Service

    if program:
        # Every module is in, and its objects live as long as the process: the cyclic GC
        # need not walk them again. Its walks at exit cost a --once run ~0.25 s after the
        # work was done (0.04 s frozen). Only as the program: main() called with
        # arguments (a test) leaves its caller's heap alone.
        gc.freeze()

    def scrub(text: str) -> str:
        for secret in secrets:
            text = text.replace(secret, "***")
        return mask_dsn(text)

    ids: dict[str, str] = {}
    try:
        return _event_loop_run(Service, settings, args, ids)
    except (UsageError, DatabaseUnavailableError) as exc:
        print(f"ingestd: error: {scrub(str(exc))}", file=sys.stderr)
        return EXIT_USAGE
    except ManifestLockedError as exc:  # a --once run: files wait, like a lock on a target
        print(f"ingestd: error: {scrub(str(exc))}", file=sys.stderr)
        return EXIT_FAILED
    except Exception as exc:  # a bug: say so in one line; the log has the traceback
        with bound(**ids):
            log_crash(exc)
        print(
            f"ingestd: internal error: {scrub(repr(exc))}; files not finished stay pending and "
            "resume on the next run (--log-level DEBUG shows the traceback)",
            file=sys.stderr,
        )
        return EXIT_FAILED


def _event_loop_run(
    service_cls: Any, settings: Settings, args: Sequence[str], ids: dict[str, str]
) -> int:
    """Run the service; `ids` gets its run_id and instance_id, for a crash's last line."""
    import asyncio

    async def go() -> int:
        service = service_cls(settings)
        ids.update(run_id=service.run_id, instance_id=settings.instance_id)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, service.request_stop)
        loop.add_signal_handler(signal.SIGHUP, lambda: _reload(service, args))
        report = await service.run()
        code = int(report.exit_code)
        try:
            print_summary(
                report.run_id, report.files, report.seconds, sys.stdout, report.unreadable
            )
            if report.backfill:
                print(f"  {report.backfill}")
            sys.stdout.flush()
        except OSError as exc:
            # The run is done and its books are right: only the report is lost. Not a bug
            # of ingestd; a reader that left (EPIPE) is said nothing, as Unix tools do.
            _detach_stdout()
            if not isinstance(exc, BrokenPipeError):
                reason = exc.strerror or str(exc)
                print(
                    f"ingestd: error: cannot write the summary to standard output: {reason}",
                    file=sys.stderr,
                )
            return max(code, EXIT_FAILED)
        return code

    try:
        try:
            import uvloop

            return int(uvloop.run(go()))
        except ImportError:
            return asyncio.run(go())
    finally:
        # The run is over: a late second SIGTERM must not turn a clean exit into a kill.
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)


def _reload(service: Any, args: Sequence[str]) -> None:
    """SIGHUP: re-read the config file with the same flags; keep the old one if it is bad."""
    # A signal handler runs outside the run's task: bind its context here.
    with bound(run_id=service.run_id, instance_id=service.settings.instance_id):
        try:
            settings = build_settings(args)
        except UsageError as exc:
            log.error("config_reload_failed", extra={"error": str(exc)})
            return
        except SystemExit:  # argparse: cannot happen with the flags that started the run
            log.error("config_reload_failed", extra={"error": "the command line did not parse"})
            return
        except Exception as exc:  # a bug in the checks: the old settings keep running
            log.error("config_reload_failed", extra={"error": f"internal error: {exc!r}"})
            return
        service.reload(settings)


def log_crash(exc: BaseException) -> None:
    """The last word of a process that dies of a bug: one JSON line, `crashed`, with the
    exception's type and message; the traceback only at DEBUG, as a field."""
    extra: dict[str, Any] = {"error_type": type(exc).__name__, "error": str(exc)}
    if log.isEnabledFor(logging.DEBUG):
        extra["traceback"] = "".join(traceback.format_exception(exc))
    log.critical("crashed", extra=extra)


def print_summary(
    run_id: str,
    files: Sequence[FileResult],
    seconds: float,
    out: TextIO,
    unreadable: Sequence[tuple[str, str]] = (),
) -> None:
    """One readable block: totals, the folders it could not list, then a line per file
    (failures with their reason)."""
    statuses = ("success", "skipped", "failed", "retrying", "internal_error", "interrupted", "held")
    count = {s: sum(1 for f in files if f.status == s) for s in statuses}
    # Every row this run committed counts, a failed or interrupted file's too; a resumed
    # file's rows committed by an earlier run do not (nor in the rate).
    rows = sum(f.rows_this_run for f in files)
    rate = rows / seconds if seconds > 0 else 0.0
    print(
        f"ingestd run {run_id}: {count['success']} loaded, {count['skipped']} skipped, "
        f"{count['failed']} failed"
        + (f", {count['retrying']} retrying" if count["retrying"] else "")
        + (f", {count['internal_error']} internal error" if count["internal_error"] else "")
        + (f", {count['interrupted']} interrupted" if count["interrupted"] else "")
        + (f", {count['held']} held by another instance" if count["held"] else "")
        + f"; {rows:,} rows in {seconds:.2f} s ({rate:,.0f} rows/s)",
        file=out,
    )
    if unreadable:
        folders = ", ".join(f"{shown_name(name)} ({reason})" for name, reason in unreadable)
        noun = "folder" if len(unreadable) == 1 else "folders"
        print(f"  {len(unreadable)} {noun} could not be read: {folders}", file=out)
    labels = {"success": "loaded", "skipped": "skipped", "failed": "FAILED"}
    first = ("failed", "retrying", "internal_error")
    for f in sorted(files, key=lambda f: (f.status not in first, f.name)):
        line = f"  {labels.get(f.status, f.status):<8} {shown_name(f.name)} -> {f.table or '?'}"
        earlier = f", {f.rows_this_run:,} of them this run" if f.rows_before and f.rows else ""
        if f.status == "success":
            line += f" ({f.rows:,} rows{earlier})"
        if f.error:
            line += f": {shown(f.error)}"
        if f.status != "success" and f.rows:
            line += f" ({f.rows:,} rows committed{earlier})"
        print(line, file=out)


def _command(name: str, argv: list[str]) -> int:
    if name == "status":
        from ingestd.status import main as status_main

        return status_main(argv)
    from ingestd.commands import backfill, check_config, retry

    if name == "backfill":
        return backfill(argv)
    return check_config(argv) if name == "check-config" else retry(argv)
