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


def dry_run(settings: Settings, out: TextIO) -> int:
    """Print, per file: contract, mode, rows, columns and the DDL of a missing target."""
    paths: list[Path] = (
        list(settings.files) or list(scan(settings.inbox))
        if settings.inbox
        else list(settings.files)
    )
    failed = 0
    print(f"dry run: {len(paths)} file(s); nothing is written to the database or moved", file=out)
    for path in paths:
        name = relative_name(path, None if settings.files else settings.inbox)
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
