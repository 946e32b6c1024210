"""Operator subcommands: `ingestd check-config FILE`, `ingestd retry FILE... | --all-failed`,
`ingestd backfill [--finish]`."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from ingestd.config import load_config, resolve, resolve_dsn, resolve_keys
from ingestd.db.dsn import mask_dsn
from ingestd.exceptions import IngestdError, UsageError
from ingestd.names import shown_name
from ingestd.settings import Settings, beside_inbox

MAX_STATUS_LIMIT = 10_000  # recent failures listed by `ingestd status --limit N`


class Parser(argparse.ArgumentParser):
    """A subcommand's usage error is one line and exit 2, as the main command's is."""

    def __init__(self, prog: str, description: str | None) -> None:
        # No abbreviations: `--lim` would mean another flag the day one more starts so.
        super().__init__(prog=prog, description=description, allow_abbrev=False)

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def status_limit(text: str) -> int:
    """`ingestd status --limit N`: a whole number the query can take."""
    try:
        value = int(text) if text.isascii() else -1
    except ValueError:
        value = -1
    if not 0 <= value <= MAX_STATUS_LIMIT:
        raise argparse.ArgumentTypeError(
            f"must be a whole number from 0 to {MAX_STATUS_LIMIT:,}, not {text!r}"
        )
    return value


def check_config(argv: Sequence[str]) -> int:
    """Validate a config file without touching anything: 0 if usable, 2 with the reason."""
    p = Parser(prog="ingestd check-config", description=check_config.__doc__)
    p.add_argument("config", type=Path)
    p.add_argument(
        "--dsn",
        help="also read each contract's target in this database (catalog reads only): what "
        "it is (plain, partitioned, distributed, reference, missing) and whether the key fits",
    )
    ns = p.parse_args(argv)
    try:
        settings = resolve({}, config=load_config(ns.config), config_path=ns.config)
    except UsageError as exc:
        message = str(exc) if str(ns.config) in str(exc) else f"{ns.config}: {exc}"
        print(f"ingestd check-config: error: {mask_dsn(message)}", file=sys.stderr)
        return 2
    print(f"{ns.config}: ok")
    print(f"  inbox {settings.inbox}, done {settings.done_path}, failed {settings.failed_path}")
    concurrency = (
        str(settings.concurrency)
        if settings.is_given("concurrency")
        else "min(cores, max_connections/2, 8), chosen at start"
    )
    print(f"  chunk size {settings.chunk_size:,}, concurrency {concurrency}, "
          f"metrics {_addr(settings)}")  # fmt: skip
    where = "--dsn" if ns.dsn else "from the config or INGESTD_DSN" if settings.dsn else "embedded"
    print(f"  database: {where}")
    for c in settings.contracts:
        target = f"{c.schema}.{c.table}" if c.schema else c.table
        key = ",".join(c.pk) or "no key"
        print(f"  contract {c.name}: {c.pattern} -> {target} ({c.mode}, {key}, {c.file_type})")
    if ns.dsn is None:
        return 0
    import asyncio  # only to ask the database: the file's check is quick without it

    try:
        lines, fits = asyncio.run(_targets(ns.dsn, settings))
    except IngestdError as exc:
        print(f"ingestd check-config: error: {mask_dsn(str(exc))}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    return 0 if fits else 1


async def _targets(dsn: str, settings: Settings) -> tuple[list[str], bool]:
    """Per contract, what its target is and whether its key fits: (lines, all fit)."""
    from ingestd.db.database import Database
    from ingestd.db.sql import Target
    from ingestd.db.topology import fit
    from ingestd.retry import Backoff

    db = await Database.open(
        dsn, size=1, attempts=0, backoff=Backoff(),
        connect_timeout_s=settings.connect_timeout_s,
        statement_timeout_s=settings.statement_timeout_s,
    )  # fmt: skip
    lines, fits = ["  targets:"], True
    try:
        async with db.connection() as conn:
            for c in settings.contracts:
                target = Target(c.schema, c.table, (), c.pk)
                topology, problem = await fit(conn, target, c.mode, c.create_partitions)
                key = f"key ({', '.join(c.pk)})" if c.pk else "no key"
                verdict = "fits" if problem is None else f"does not fit: {problem}"
                lines.append(
                    f"  {c.name}: table {target.label} is {topology.describe()}; {key} {verdict}"
                )
                fits = fits and problem is None
    finally:
        await db.close()
    return lines, fits


def retry(argv: Sequence[str]) -> int:
    """Move failed files back to the inbox (after a fix) and drop their sidecars."""
    p = Parser(prog="ingestd retry", description=retry.__doc__)
    p.add_argument("files", nargs="*", type=Path, help="files in the failed directory")
    p.add_argument("--all-failed", action="store_true", help="every file in the failed directory")
    p.add_argument("--config", type=Path)
    p.add_argument("--inbox", help="the inbox (env INGESTD_INBOX, else the config file's)")
    p.add_argument(
        "--failed-dir",
        help="the failed directory (env INGESTD_FAILED_DIR; default: failed/ beside the inbox)",
    )
    ns = p.parse_args(argv)
    try:
        inbox, failed = _directories(ns)
        moved = _retry(inbox, failed, ns.files, all_failed=ns.all_failed)
    except UsageError as exc:
        print(f"ingestd retry: error: {mask_dsn(str(exc))}", file=sys.stderr)
        return 2
    for src, dest in moved:
        print(f"  {shown_name(str(src))} -> {shown_name(str(dest))}")
    print(f"{len(moved)} file(s) back in the inbox; the next scan loads them")
    return 0


def _directories(ns: argparse.Namespace) -> tuple[Path, Path]:
    """(inbox, failed directory) by resolve's rules: flag > INGESTD_* > config file."""
    config = load_config(ns.config) if ns.config else {}
    flags = {"inbox": ns.inbox, "failed_dir": ns.failed_dir}
    got = resolve_keys(("inbox", "failed_dir"), flags, os.environ, config, ns.config)
    inbox: Path | str | None = got["inbox"]
    if inbox is None:
        raise UsageError("no inbox: give --inbox, INGESTD_INBOX or --config")
    if isinstance(inbox, str):
        raise UsageError(
            f"ingestd retry moves files between local folders; for {inbox}, copy the objects "
            "from failed/ back under the inbox prefix (they load as new versions)"
        )
    if not _real(inbox).is_dir():
        # Moving the files into a folder made here (a typo) hides them where nobody looks.
        raise UsageError(f"inbox {inbox} does not exist or is not a directory: check --inbox")
    failed_dir = beside_inbox(got["failed_dir"], inbox, "failed")
    assert isinstance(failed_dir, Path)  # noqa: S101 - a local inbox has a local failed/
    inbox_real, failed_real = _real(inbox), _real(failed_dir)
    if failed_real.is_relative_to(inbox_real) or inbox_real.is_relative_to(failed_real):
        raise UsageError(
            f"the failed directory {failed_dir} and the inbox {inbox} overlap: "
            "give --failed-dir the folder failed files were moved to"
        )
    return inbox, failed_dir


def _real(path: Path) -> Path:
    try:
        return path.resolve()
    except (OSError, RuntimeError):  # RuntimeError: a symbolic link loop (before 3.13)
        raise UsageError(f"cannot look at {path}: a symbolic link loop or no access") from None


def _retry(
    inbox: Path, failed: Path, files: list[Path], *, all_failed: bool
) -> list[tuple[Path, Path]]:
    failed = failed.resolve()
    if all_failed == bool(files):
        raise UsageError("name the files to retry, or give --all-failed (not both)")
    chosen = _all_failed(failed) if all_failed else [_inside(f, failed) for f in files]
    moved = []
    for src in chosen:
        relative = src.relative_to(failed)
        dest = inbox / relative
        if dest.exists():
            raise UsageError(f"{dest} already exists in the inbox; remove one of them first")
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(src, dest)
        src.with_name(src.name + ".error.json").unlink(missing_ok=True)
        moved.append((src, dest))
    return moved


def _all_failed(failed: Path) -> list[Path]:
    return sorted(
        p for p in failed.rglob("*") if p.is_file() and not p.name.endswith(".error.json")
    )


def _inside(path: Path, failed: Path) -> Path:
    if path.name.endswith(".error.json"):
        original = path.name.removesuffix(".error.json")
        raise UsageError(
            f"{path} is a sidecar (why a file failed), not a file to load: retry {original}"
        )
    candidate = path if path.is_absolute() else (Path.cwd() / path)
    if not candidate.exists():
        candidate = failed / path
    resolved = candidate.resolve()
    if not resolved.is_relative_to(failed) or not resolved.is_file():
        archive = _archive_of(path, failed)
        if archive is not None:
            # status names a failed member ARCHIVE.zip/MEMBER; the archive is what moved.
            raise UsageError(
                f"{path} is a member of the zip archive {archive.name}: retry the archive "
                f"(ingestd retry {archive})"
            )
        raise UsageError(f"{path} is not a file in the failed directory {failed}")
    return resolved


def _archive_of(path: Path, failed: Path) -> Path | None:
    """The failed archive a member name (ARCHIVE.zip/MEMBER) lies in, if there is one."""
    parts = path.parts
    for at in range(len(parts) - 1, 0, -1):
        if parts[at - 1].lower().endswith(".zip"):
            head = Path(*parts[:at])
            for candidate in (head, failed / head):
                if candidate.is_file() and candidate.resolve().is_relative_to(failed):
                    return candidate
    return None


def _addr(settings: Settings) -> str:
    addr = settings.metrics_addr
    return "off" if addr is None else f"{addr[0]}:{addr[1]}"


_BACKFILL_KEYS = (
    "state_dir", "manifest_schema", "connect_timeout_s", "statement_timeout_s",
    "backfill_index_jobs", "backfill_maintenance_work_mem_mb",
)  # fmt: skip


def backfill(argv: Sequence[str]) -> int:
    """List the indexes a backfill dropped and has not rebuilt; --finish rebuilds them
    (as a killed --backfill run would have) and ANALYZEs their tables."""
    p = Parser(prog="ingestd backfill", description=backfill.__doc__)
    p.add_argument("--finish", action="store_true", help="rebuild them now")
    p.add_argument("--config", type=Path, metavar="FILE", help="TOML config file")
    p.add_argument("--dsn", metavar="DSN", help="PostgreSQL URL (env INGESTD_DSN)")
    p.add_argument("--password-file", metavar="FILE", help="env INGESTD_PASSWORD_FILE")
    p.add_argument("--state-dir", metavar="DIR", help="embedded server (env INGESTD_STATE_DIR)")
    p.add_argument("--manifest-schema", metavar="S", help="env INGESTD_MANIFEST_SCHEMA")
    p.add_argument("--connect-timeout-s", metavar="S", help="env INGESTD_CONNECT_TIMEOUT_S")
    p.add_argument("--backfill-index-jobs", metavar="N", help="env INGESTD_BACKFILL_INDEX_JOBS")
    p.add_argument(
        "--backfill-maintenance-work-mem-mb",
        metavar="MB",
        help="env INGESTD_BACKFILL_MAINTENANCE_WORK_MEM_MB",
    )
    ns = p.parse_args(argv)
    import asyncio

    from ingestd.logs import setup as setup_logging

    setup_logging("text", "WARNING")
    try:
        config = load_config(ns.config) if ns.config else {}
        got = resolve_keys(_BACKFILL_KEYS, vars(ns), os.environ, config, ns.config)
        dsn = resolve_dsn(ns.dsn, os.environ, config, ns.config, ns.password_file)
        lines, left = asyncio.run(_backfill(dsn, got, finish=ns.finish))
    except IngestdError as exc:
        reason = str(exc).removesuffix(" (transient; will retry)")
        print(f"ingestd backfill: error: {mask_dsn(reason)}", file=sys.stderr)
        return 2
    for line in lines:
        print(line)
    return 1 if left else 0


async def _backfill(
    dsn: str | None, got: dict[str, object], *, finish: bool
) -> tuple[list[str], int]:
    from ingestd import backfill as bf
    from ingestd.db import indexes
    from ingestd.db.database import Database
    from ingestd.embedded import start_embedded
    from ingestd.retry import Backoff

    handle = None
    if not dsn:
        state_dir = Path(str(got["state_dir"]))
        if not (state_dir / "pgdata").is_dir():
            raise UsageError(
                f"no embedded database in {state_dir} (no pgdata folder): give --state-dir "
                "of the instance, or --dsn / INGESTD_DSN"
            )
        import asyncio

        dsn, handle = await asyncio.to_thread(start_embedded, state_dir)
    jobs = int(str(got["backfill_index_jobs"]))
    settings = Settings(
        contracts=(),
        manifest_schema=got["manifest_schema"],  # type: ignore[arg-type]  # resolved above
        backfill_maintenance_work_mem_mb=int(str(got["backfill_maintenance_work_mem_mb"])),
    )
    db = await Database.open(
        str(dsn), size=jobs + 1, attempts=0, backoff=Backoff(),
        connect_timeout_s=float(str(got["connect_timeout_s"])),
        statement_timeout_s=float(str(got["statement_timeout_s"])),
    )  # fmt: skip
    try:
        async with db.connection() as conn:
            waiting = await indexes.pending(conn, bf.records_table(settings.manifest_schema))
        if not finish:
            lines = [f"{len(waiting)} index(es) dropped by a backfill, waiting to be rebuilt"]
            lines += [
                f"  {ix.target_label}: {ix.name} (run {ix.run_id}"
                + (", its backfill is running)" if ix.alive else ")")
                for ix in waiting
            ]
            if waiting:
                lines.append(f"rebuild them with `{bf.FINISH_HINT}`")
            return lines, 0
        out = await bf.finish(db, settings, jobs=jobs)
    finally:
        await db.close()
        del handle
    lines = [
        f"rebuilt {len(out.built)} index(es)" + (f": {', '.join(out.built)}" if out.built else "")
    ]
    if out.existed:
        lines.append(f"already there (records cleared): {', '.join(out.existed)}")
    if out.analyzed:
        lines.append(f"analyzed {', '.join(out.analyzed)}")
    if out.running:
        lines.append(f"{len(out.running)} index(es) belong to a backfill still running: left to it")
    lines += [f"FAILED {error}" for error in out.errors]
    return lines, len(out.left)
