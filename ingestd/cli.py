"""The command line: parse flags, configure logging, run, print a summary, exit with a status."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from ingestd import __version__
from ingestd.config import load_config, resolve
from ingestd.db.dsn import mask_dsn, password_of
from ingestd.db.locks import ManifestLockedError
from ingestd.exceptions import DatabaseUnavailableError, UsageError
from ingestd.logs import bound
from ingestd.logs import setup as setup_logging
from ingestd.names import shown, shown_name
from ingestd.settings import Settings
from ingestd.worker import FileResult

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
log = logging.getLogger("ingestd.cli")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ingestd",
        description="Load CSV and Parquet files into PostgreSQL, exactly once.",
        epilog="Subcommands: `ingestd status` shows the manifest; `ingestd check-config FILE` "
        "validates a config; `ingestd retry FILE...|--all-failed` moves failed files back to "
        "the inbox. Exit status: 0 all files "
        "loaded or skipped, 1 some file failed or is left retrying, or a folder could not be "
        "read, 2 bad usage or configuration.",
    )
    p.add_argument("--version", action="version", version=f"ingestd {__version__}")
    p.add_argument("--config", type=Path, help="TOML config file (see config/ingestd.example.toml)")
    p.add_argument("--inbox", help="directory to watch (daemon) or drain (--once)")
    p.add_argument(
        "--once", action="store_true", default=None, help="process what is there, then exit"
    )
    p.add_argument(
        "--files",
        nargs="+",
        metavar="PATH",
        help="load exactly these files (implies --once, --keep-files)",
    )
    p.add_argument(
        "--dsn", help="PostgreSQL DSN (else INGESTD_DSN, else the config; none: embedded server)"
    )
    p.add_argument(
        "--state-dir", help="where the embedded PostgreSQL keeps its data (default .ingestd)"
    )
    g = p.add_argument_group("contract (one target table, no config file needed)")
    g.add_argument("--table", help="target table")
    g.add_argument("--schema", help="target schema (default: first on search_path)")
    g.add_argument("--pk", help="primary key column(s), comma-separated")
    g.add_argument(
        "--headers", help="columns to load, comma-separated (positional with --no-header)"
    )
    g.add_argument(
        "--types", help="column types for new tables, e.g. id:bigint,price:numeric(12,2)"
    )
    g.add_argument("--file-type", choices=["csv", "parquet", "auto"], default=None)
    g.add_argument("--mode", help="upsert (default), append or merge")
    g.add_argument(
        "--preserve-types",
        action="store_true",
        default=None,
        help="Parquet types become column types",
    )
    g.add_argument(
        "--tolerant",
        action="store_true",
        default=None,
        help="fill columns the file lacks instead of failing",
    )
    g.add_argument("--tolerant-mode", help="null (default) or empty: what fills a missing column")
    g.add_argument(
        "--max-bad-rows",
        help="rows that fail to cast or violate a constraint, set aside to ingestion_rejects "
        "before the file fails: N or a percentage such as 1%% (default 0)",
    )
    g.add_argument("--delimiter", help="CSV delimiter: , ; | or tab")
    g.add_argument("--quote", help='CSV quote character (default ")')
    g.add_argument("--encoding", help="CSV encoding (default utf-8; e.g. latin-1)")
    g.add_argument(
        "--header",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="first row names the columns (default yes)",
    )
    r = p.add_argument_group("run")
    r.add_argument("--chunk-size", type=int, help="rows per batch and transaction (default 50000)")
    r.add_argument(
        "--concurrency", type=int, help="parallel workers, one connection each (default 4)"
    )
    r.add_argument(
        "--max-retries", type=int, help="retries of transient errors per file (default 3)"
    )
    r.add_argument(
        "--resume",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="skip files already loaded, continue partly loaded ones (default on)",
    )
    r.add_argument(
        "--dry-run",
        action="store_true",
        default=None,
        help="read and validate files, write nothing",
    )
    r.add_argument("--done-dir", help="where loaded files go (default: done/ beside the inbox)")
    r.add_argument("--failed-dir", help="where failed files go (default: failed/ beside the inbox)")
    r.add_argument(
        "--keep-files", action="store_true", default=None, help="leave files where they are"
    )
    r.add_argument(
        "--memory-limit-mb",
        type=int,
        help="memory for one worker's batches in flight; wide rows shrink the batch (default 256)",
    )
    r.add_argument(
        "--split-mb",
        type=float,
        help="append of a CSV file at least twice this size: split into segments of at least "
        "this size, loaded by idle workers in parallel (default 32; 0: never split)",
    )
    r.add_argument(
        "--instance-id",
        help="this instance's name in the manifest and logs (default: the host name; "
        "or INGESTD_INSTANCE_ID); several instances on one host need one each",
    )
    r.add_argument("--manifest-table", help="manifest table name (default ingestion_manifest)")
    r.add_argument(
        "--lock-timeout-s",
        type=float,
        help="seconds a statement waits for a lock another session holds on a table before "
        "the attempt fails and is retried (default 30; 0: no limit; or INGESTD_LOCK_TIMEOUT_S)",
    )
    r.add_argument(
        "--on-new-version",
        choices=["refuse", "append"],
        default=None,
        help="append mode, a changed file whose earlier version committed rows: refuse "
        "(default: it fails, naming those rows and the clean-up) or append on top of them",
    )
    r.add_argument(
        "--on-duplicate-content",
        choices=["skip", "load"],
        default=None,
        help="append mode, the same bytes under another name: skip (default) or load again",
    )
    r.add_argument(
        "--metrics-addr",
        help="HOST:PORT for /metrics, /healthz, /readyz, or off (default 127.0.0.1:9108)",
    )
    r.add_argument("--log-format", choices=["json", "text"], default=None)
    r.add_argument("--log-level", help="DEBUG, INFO (default), WARNING or ERROR")
    return p


def _flags(ns: argparse.Namespace) -> dict[str, Any]:
    # Only what the user typed: None means "not given", so the config file can fill it.
    return {k: v for k, v in vars(ns).items() if v is not None and k != "config"}


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
        return _main(list(sys.argv[1:] if argv is None else argv))
    except BrokenPipeError:
        # `ingestd status | head`: the reader left; say nothing more, as Unix tools do.
        _detach_stdout()
        return EXIT_FAILED
    except Exception as exc:  # a bug before or after the run: still one JSON line
        if not logging.getLogger().handlers:
            setup_logging("json", "INFO")
        log_crash(exc)
        return EXIT_FAILED


def _main(args: list[str]) -> int:
    if args[:1] == ["status"]:
        from ingestd.status import main as status_main

        return status_main(args[1:])
    if args[:1] == ["check-config"]:
        from ingestd.operator import check_config

        return check_config(args[1:])
    if args[:1] == ["retry"]:
        from ingestd.operator import retry

        return retry(args[1:])
    try:
        settings = build_settings(args)
    except UsageError as exc:
        print(f"ingestd: error: {mask_dsn(str(exc))}", file=sys.stderr)
        return EXIT_USAGE
    secrets = tuple(p for p in [password_of(settings.dsn or "")] if p)
    setup_logging(settings.log_format, settings.log_level, secrets)
    if settings.dry_run:
        from ingestd.dryrun import dry_run

        return dry_run(settings, sys.stdout)
    return _run(settings, secrets, args)


def _run(settings: Settings, secrets: tuple[str, ...], args: Sequence[str]) -> int:
    from ingestd.service import Service

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
            service.reload(build_settings(args))
        except UsageError as exc:
            log.error("config_reload_failed", extra={"error": str(exc)})


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
    statuses = ("success", "skipped", "failed", "retrying", "interrupted", "held")
    count = {s: sum(1 for f in files if f.status == s) for s in statuses}
    # Every row this run committed counts, a failed or interrupted file's too; a resumed
    # file's rows committed by an earlier run do not (nor in the rate).
    rows = sum(f.rows_this_run for f in files)
    rate = rows / seconds if seconds > 0 else 0.0
    print(
        f"ingestd run {run_id}: {count['success']} loaded, {count['skipped']} skipped, "
        f"{count['failed']} failed"
        + (f", {count['retrying']} retrying" if count["retrying"] else "")
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
    first = ("failed", "retrying")
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


def dumps(value: Any) -> str:
    """JSON for machine-readable output (dates as ISO strings)."""
    return json.dumps(value, default=str, indent=2)
