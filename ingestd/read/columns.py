"""Columns: check a file's header and choose the columns to load, for CSV and Parquet alike."""

from __future__ import annotations

from ingestd.exceptions import FileError
from ingestd.identifiers import InvalidIdentifierError, validate_identifier
from ingestd.settings import Contract
from ingestd.storage import Openable


def check_header(
    names: list[str], path: Openable, file_type: str = "csv", loaded: tuple[str, ...] | None = None
) -> None:
    """Refuse a file whose column names cannot be loaded, with advice fitting its type.

    A CSV header is checked whole. A Parquet file's names are its schema: only the
    columns that will be loaded (`loaded`, when the contract picks them) must be valid.
    """
    seen: set[str] = set()
    for name in names:
        if name in seen:
            if file_type == "csv":
                raise FileError(f"{path.name}: header names column {name!r} twice", row=1)
            raise FileError(f"{path.name}: the file has two columns named {name!r}")
        seen.add(name)
        if loaded is not None and name not in loaded:
            continue
        try:
            validate_identifier(name, what="header column" if file_type == "csv" else "column")
        except InvalidIdentifierError as exc:
            row = 1 if file_type == "csv" else None  # a Parquet file has no header row
            raise FileError(f"{path.name}: {exc}. {_rename_advice(file_type)}", row=row) from None


def _rename_advice(file_type: str) -> str:
    if file_type == "parquet":
        return (
            "Rename the column where the file is written, name every column yourself in "
            "file order with --no-header --headers a,b,c, or load only the other columns "
            "with --headers a,b"
        )
    # --no-header alone would load the header line as a data row.
    return (
        "Rename the column in the file's header, or remove the header line and name the "
        "columns yourself with --no-header --headers a,b,c"
    )


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
