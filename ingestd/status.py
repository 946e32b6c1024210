"""`ingestd status`: the manifest at a glance (counts, recent failures, files in progress)."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from ingestd.commands import Parser, status_limit
from ingestd.config import load_config, resolve_dsn, resolve_keys
from ingestd.db.database import Database
from ingestd.db.dsn import mask_dsn
from ingestd.db.manifest import Manifest
from ingestd.embedded import start_embedded
from ingestd.exceptions import IngestdError, UsageError
from ingestd.logs import dumps
from ingestd.logs import setup as setup_logging
from ingestd.names import shown_name
from ingestd.retry import Backoff


def main(argv: Sequence[str]) -> int:
    """Print the manifest summary; exit 2 if the database cannot be reached."""
    p = Parser(prog="ingestd status", description="Show the manifest summary.")
    p.add_argument("--config", type=Path, metavar="FILE", help="TOML config file")
    p.add_argument("--dsn", metavar="DSN", help="PostgreSQL URL (env INGESTD_DSN)")
    p.add_argument("--password-file", metavar="FILE", help="env INGESTD_PASSWORD_FILE")
    p.add_argument("--state-dir", metavar="DIR", help="embedded server (env INGESTD_STATE_DIR)")
    p.add_argument("--manifest-table", metavar="T", help="env INGESTD_MANIFEST_TABLE")
    p.add_argument("--manifest-schema", metavar="S", help="env INGESTD_MANIFEST_SCHEMA")
    p.add_argument("--connect-timeout-s", metavar="S", help="env INGESTD_CONNECT_TIMEOUT_S")
    p.add_argument(
        "--limit", type=status_limit, default=10, help="how many recent failures to list (10)"
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    ns = p.parse_args(argv)
    setup_logging("text", "ERROR")
    try:
        config = load_config(ns.config) if ns.config else {}
        # The same keys, environment variables and checks as a run (flag > env > file).
        got = resolve_keys(
            ("state_dir", "manifest_table", "manifest_schema", "connect_timeout_s",
             "statement_timeout_s"),
            vars(ns), os.environ, config, ns.config,
        )  # fmt: skip
        dsn = resolve_dsn(ns.dsn, os.environ, config, ns.config, ns.password_file)
        manifest = Manifest(got["manifest_schema"], got["manifest_table"])
        summary = asyncio.run(_summary(dsn, got, manifest, ns.limit))
    except IngestdError as exc:  # a grant missing on the manifest too: one line, not a crash
        reason = str(exc).removesuffix(" (transient; will retry)")  # status does not retry
        print(f"ingestd status: error: {mask_dsn(reason)}", file=sys.stderr)
        return 2
    if ns.json:
        print(dumps(summary))
    else:
        print_status(summary, sys.stdout)
    return 0


async def _summary(
    dsn: str | None, got: dict[str, Any], manifest: Manifest, limit: int
) -> dict[str, Any]:
    handle = None
    if not dsn:
        state_dir = got["state_dir"]
        if not (state_dir / "pgdata").is_dir():
            # A read-only command: never initdb a new, empty cluster in the wrong folder.
            raise UsageError(
                f"no embedded database in {state_dir} (no pgdata folder): give --state-dir "
                "of the instance, or --dsn / INGESTD_DSN"
            )
        dsn, handle = await asyncio.to_thread(start_embedded, state_dir)
    db = await Database.open(
        str(dsn),
        size=1,
        connect_timeout_s=got["connect_timeout_s"],
        statement_timeout_s=got["statement_timeout_s"],
        attempts=0,
        backoff=Backoff(),
    )
    try:
        async with db.connection() as conn:
            # Never create it here: a manifest dropped under a running daemon must stay
            # missing for the daemon to notice (manifest.halt), not come back empty.
            if not await manifest.exists(conn):
                raise UsageError(
                    f"there is no manifest table {manifest.name} in this database: ingestd "
                    "creates it at its first start (check --dsn and --manifest-table)"
                )
            await manifest.ensure(conn)
            return await manifest.summary(conn, limit)
    finally:
        await db.close()
        del handle


def print_status(summary: dict[str, Any], out: TextIO) -> None:
    """A readable table of the summary."""
    counts = summary["counts"]
    print(f"{'status':<10}{'files':>10}{'rows':>16}{'rejected':>12}", file=out)
    shown = ["success", "pending", "failed"]
    shown += [s for s in ("retrying", "skipped", "superseded") if s in counts]
    for status in shown:
        c = counts.get(status, {"files": 0, "rows": 0, "rejected": 0})
        print(f"{status:<10}{c['files']:>10,}{c['rows']:>16,}{c['rejected']:>12,}", file=out)
    if summary["pending"]:
        print("\nin progress (or interrupted; resumed on the next run):", file=out)
        for r in summary["pending"]:
            print(
                f"  {shown_name(r['filename'])} -> {r['table_name']}: "
                f"{r['rows']:,} rows committed, run {r['run_id']}",
                file=out,
            )
    if summary.get("retrying"):
        print("\nwaiting for another attempt (transient failure; the file is in the inbox):",
              file=out)  # fmt: skip
        for r in summary["retrying"]:
            print(f"  {shown_name(r['filename'])} -> {r['table_name']}: {r['notes']}", file=out)
    if summary["failed"]:
        print("\nrecent failures:", file=out)
        for r in summary["failed"]:
            when = r["processed_at"].strftime("%Y-%m-%d %H:%M:%S") if r["processed_at"] else "?"
            name, table = shown_name(r["filename"]), r["table_name"] or "?"
            print(f"  {when}  {name} -> {table}: {r['notes']}", file=out)
