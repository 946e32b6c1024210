"""Columns: check a file's header and choose the columns to load, for CSV and Parquet alike."""

from __future__ import annotations

from pathlib import Path

from ingestd.exceptions import FileError
from ingestd.identifiers import InvalidIdentifierError, validate_identifier
from ingestd.settings import Contract


def check_header(names: list[str], path: Path) -> None:
    seen: set[str] = set()
    for name in names:
        try:
            validate_identifier(name, what="header column")
        except InvalidIdentifierError as exc:
            raise FileError(
                f"{path.name}: {exc}. Rename the column in the file, or load it with "
                "--no-header --headers a,b,c to name the columns yourself",
                row=1,
            ) from None
        if name in seen:
            raise FileError(f"{path.name}: header names column {name!r} twice", row=1)
        seen.add(name)


def select_columns(names: list[str], contract: Contract) -> tuple[tuple[str, ...], set[str]]:
    """The columns to load (contract order, or the file's) and those the file lacks."""
    if contract.headers is None:
        columns = tuple(names)
    else:
        columns = contract.headers
    missing = {c for c in columns if c not in names}
    if missing and (not contract.tolerant or missing & set(contract.pk)):
        raise FileError(
            f"file lacks column(s) {', '.join(sorted(missing))} that the contract expects "
            f"(file has: {', '.join(names[:30])}); fix the file or the contract's headers"
            + ("" if contract.tolerant else ", or use --tolerant to fill them with NULL")
        )
    absent_pk = [c for c in contract.pk if c not in columns]
    if absent_pk:
        raise FileError(f"file has no primary key column {', '.join(absent_pk)}")
    return columns, missing
