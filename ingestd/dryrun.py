"""--dry-run: read and validate every file, say what would happen, write nothing anywhere."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import TextIO

import pyarrow.parquet as pq

from ingestd.db.database import Database
from ingestd.db.schema import plan
from ingestd.db.sql import Target, create_table
from ingestd.db.target import table_columns
from ingestd.discover import relative_name, scan
from ingestd.exceptions import FileError, IngestdError
from ingestd.names import shown_name
from ingestd.read import BatchReader, Limits, open_reader
from ingestd.read.columns import normalize_names
from ingestd.read.csv_reader import read_header
from ingestd.retry import Backoff
from ingestd.settings import Contract, Settings
from ingestd.storage import Handle, Storage, resolve, storage_for
from ingestd.storage.zip import ZipArchive, is_archive, unmatched_reason


def dry_run(settings: Settings, out: TextIO) -> int:
    """Print, per file: contract, mode, rows, columns and the DDL of a missing target."""
    inbox = settings.inbox
    # An object-store inbox is listed through its storage (the same names the daemon uses).
    storage = storage_for(settings) if isinstance(inbox, str) and not settings.files else None
    paths: list[Handle] = (
        list(storage.entries())
        if storage is not None
        else list(settings.files) or list(scan(inbox))
        if isinstance(inbox, Path)
        else list(settings.files)
    )
    failed = 0
    tables = _table_columns(settings)
    print(f"dry run: {len(paths)} file(s); nothing is written to the database or moved", file=out)
    for path, name in _entries(paths, storage, settings, out):
        if path is None:
            failed += 1  # the archive itself, as the real run would fail it
            continue
        contract = settings.contract_for(name)
        if contract is None:
            print(f"  FAIL {shown_name(str(name))}: no contract matches", file=out)
            failed += 1
            continue
        try:
            reader = open_reader(path, contract, settings.chunk_size, settings.memory_limit_bytes)
            rows = sum(batch.num_rows for batch in reader)
        except FileError as exc:
            print(f"  FAIL {shown_name(str(name))}: {exc}", file=out)
            failed += 1
            continue
        target = Target(contract.schema, contract.table, reader.layout.columns, contract.pk)
        print(
            f"  ok   {shown_name(str(name))} -> {target.label} ({contract.mode}): {rows:,} rows, "
            f"columns {', '.join(reader.layout.columns)}",
            file=out,
        )
        for line in _drift_lines(path, contract, reader, tables):
            print(f"       {line}", file=out)
        print(
            f"       if the table is missing: {create_table(target, reader.layout.pg_types)}",
            file=out,
        )
    return 1 if failed else 0


def _entries(
    paths: list[Handle], storage: Storage | None, settings: Settings, out: TextIO
) -> Iterator[tuple[Handle | None, PurePosixPath]]:
    """Each file with its manifest name; an archive as its members, as the real run offers
    them (ARCHIVE.zip/MEMBER, only its central directory read), or None for an archive the
    real run would fail whole (said here)."""
    inbox = settings.inbox
    for path in paths:
        if storage is not None:
            name = storage.name_of(path)
        else:
            assert isinstance(path, Path)  # noqa: S101 - a local listing or --files
            name = relative_name(
                path, inbox if isinstance(inbox, Path) and not settings.files else None
            )
        if not is_archive(path):
            yield path, name
            continue
        outer = storage if storage is not None else resolve(path)
        group = ZipArchive(outer, path, name, outer.identity(path) or (0,), _stays)
        try:
            members = group.members()
        except (OSError, FileError) as exc:
            reason = f"cannot read file: {exc.strerror}" if isinstance(exc, OSError) else exc
            print(f"  FAIL {shown_name(str(name))}: {reason}", file=out)
            yield None, name
            continue
        matched = [m for m in members if settings.contract_for(group.name_of(m)) is not None]
        for member in members:
            if member not in matched:
                shown = shown_name(str(group.name_of(member)))
                print(f"  skip {shown}: no contract matches (the archive does not fail)", file=out)
        if not matched:
            patterns = [c.pattern for c in settings.contracts]
            reason = unmatched_reason(str(name), patterns, empty=not members)
            print(f"  FAIL {shown_name(str(name))}: {reason}", file=out)
            yield None, name
            continue
        for member in matched:
            yield member, group.name_of(member)


def _stays(folder: str, report: object) -> str:
    return "stays where it is (dry run)"  # a dry run never ends a member: never called


Tables = dict[tuple[str | None, str], dict[str, str]] | str


def _table_columns(settings: Settings) -> Tables:
    """The columns of the tables whose contracts evolve their schema, read (never written)
    when a DSN is given; else, or if the database cannot be read, why not."""
    wanted = {(c.schema, c.table) for c in settings.contracts if c.schema_evolution != "fail"}
    if not wanted:
        return {}
    if not settings.dsn:
        return "without --dsn the table's columns are unknown"

    async def read() -> Tables:
        db = await Database.open(
            settings.dsn or "",
            size=1,
            connect_timeout_s=settings.connect_timeout_s,
            statement_timeout_s=settings.statement_timeout_s,
            attempts=0,
            backoff=Backoff(),
        )
        try:
            async with db.connection() as conn:
                return {key: await table_columns(conn, *key) for key in sorted(wanted, key=str)}
        finally:
            await db.close()

    try:
        return asyncio.run(read())
    except IngestdError as exc:
        return f"the table's columns could not be read ({exc})"


def _drift_lines(
    path: Handle, contract: Contract, reader: BatchReader, tables: Tables
) -> Iterator[str]:
    """What column_names and schema_evolution would do to this file, one line each."""
    layout = reader.layout
    if contract.column_names == "normalize":
        mapping = _renames(path, contract, layout.file_type)
        yield "names normalized: " + (
            ", ".join(f"{before!r} -> {after}" for before, after in mapping) or "none changed"
        )
    mode = contract.schema_evolution
    if mode == "fail":
        return
    if isinstance(tables, str):
        yield f"schema_evolution = {mode}: {tables}"
        return
    table = tables.get((contract.schema, contract.table), {})
    if not table:
        yield f"schema_evolution = {mode}: the table is missing and would be created"
        return
    typed = contract.preserve_types and layout.file_type in ("parquet", "ndjson")
    try:
        drift = plan(contract, layout.columns, layout.pg_types, table, typed)
    except FileError as exc:
        yield f"schema_evolution = {mode}: the file would fail: {exc}"
        return
    types = dict(zip(drift.columns, drift.types, strict=True))
    if drift.adds:
        added = ", ".join(f"{c} {types[c]}" for c in drift.adds)
        yield f"schema_evolution = {mode}: would add column(s) {added}"
    if drift.dropped:
        yield f"schema_evolution = ignore: would drop column(s) {', '.join(drift.dropped)}"
    if drift.rescued:
        yield (
            f"schema_evolution = rescue: column(s) {', '.join(drift.rescued)} would go into "
            f"{drift.rescue}"
        )
    if not (drift.adds or drift.dropped or drift.rescued):
        yield f"schema_evolution = {mode}: the table has every column of the file"


def _renames(path: Handle, contract: Contract, file_type: str) -> list[tuple[str, str]]:
    """The file's own names that normalization changes, with what they become."""
    if file_type == "parquet" and isinstance(path, Path):
        names = list(pq.read_schema(path).names)
    elif file_type == "csv" and contract.csv.header:
        names = read_header(path, contract, Limits(1))
    else:
        return []
    return [(b, a) for b, a in zip(names, normalize_names(names), strict=True) if b != a]
