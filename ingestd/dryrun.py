"""--dry-run: read and validate every file, say what would happen, write nothing anywhere."""

from __future__ import annotations

from pathlib import Path
from typing import TextIO

from ingestd.db.sql import Target, create_table
from ingestd.discover import relative_name, scan
from ingestd.exceptions import FileError
from ingestd.names import shown_name
from ingestd.read import open_reader
from ingestd.settings import Settings
from ingestd.storage import Handle, storage_for


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
    print(f"dry run: {len(paths)} file(s); nothing is written to the database or moved", file=out)
    for path in paths:
        if storage is not None:
            name = storage.name_of(path)
        else:
            assert isinstance(path, Path)  # noqa: S101 - a local listing or --files
            name = relative_name(
                path, inbox if isinstance(inbox, Path) and not settings.files else None
            )
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
            f"columns {', '.join(reader.layout.columns)}\n"
            f"       if the table is missing: {create_table(target, reader.layout.pg_types)}",
            file=out,
        )
    return 1 if failed else 0
