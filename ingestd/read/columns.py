"""Columns: check (or normalize) a file's column names and choose the columns to load, for
every format alike."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator, Sequence

import pyarrow as pa

from ingestd.exceptions import FileError
from ingestd.identifiers import MAX_IDENT_BYTES, InvalidIdentifierError, validate_identifier
from ingestd.read.batches import BatchReader, FileLayout
from ingestd.settings import Contract
from ingestd.storage import Openable

_OTHER = re.compile(r"[^a-z0-9]+")
# Every table has these (PostgreSQL 12+): a user column may not take their names.
SYSTEM_COLUMNS = frozenset({"tableoid", "xmin", "cmin", "xmax", "cmax", "ctid"})


def normalize_name(name: str) -> str:
    """One column name as lower-case ASCII snake_case: accents dropped (Unicode
    decomposition), every run of other characters one `_` (none at either end), a leading
    digit prefixed with `_`, a system column's name (xmin, ctid...) suffixed with `_`, cut
    to 63 bytes. Always a valid identifier and a valid column name; idempotent."""
    ascii_only = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode("ascii")
    snake = _OTHER.sub("_", ascii_only.lower()).strip("_")
    if not snake or snake[0].isdigit():
        snake = "_" + snake
    if snake in SYSTEM_COLUMNS:
        # Valid identifiers that PostgreSQL refuses as column names: xmin -> xmin_.
        return snake + "_"
    return _cut(snake, MAX_IDENT_BYTES)


def _cut(name: str, size: int) -> str:
    # ASCII: a character is a byte. A cut that ends in `_` loses it (idempotence).
    cut = name[:size]
    return cut.rstrip("_") or cut


def normalize_names(names: Sequence[str]) -> list[str]:
    """Every name normalized; a name already taken gets `_2`, `_3`... in file order (the
    base cut so that the whole stays within 63 bytes)."""
    taken: set[str] = set()
    out: list[str] = []
    for name in names:
        base = candidate = normalize_name(name)
        n = 1
        while candidate in taken:
            n += 1
            suffix = f"_{n}"
            stem = _cut(base, MAX_IDENT_BYTES - len(suffix))
            candidate = (stem if stem != "_" else "") + suffix  # _2, not __2: idempotent
        taken.add(candidate)
        out.append(candidate)
    return out


def load_names(
    names: list[str],
    path: Openable,
    contract: Contract,
    file_type: str = "csv",
    loaded: tuple[str, ...] | None = None,
) -> list[str]:
    """The names a file's columns load under, in file order: the file's own, checked as
    check_header does (column_names = strict), or normalized. Every reader's names go
    through here."""
    if contract.column_names == "strict":
        check_header(names, path, file_type, loaded)
        return list(names)
    _check_distinct(names, path, file_type)
    return normalize_names(names)


def renamed(batches: Iterator[pa.RecordBatch], to: dict[str, str]) -> Iterator[pa.RecordBatch]:
    """Batches read under a file's own names, under the names they load as."""
    for batch in batches:
        yield batch.rename_columns([to.get(n, n) for n in batch.schema.names])


def _check_distinct(names: list[str], path: Openable, file_type: str) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            if file_type == "csv":
                raise FileError(f"{path.name}: header names column {name!r} twice", row=1)
            raise FileError(f"{path.name}: the file has two columns named {name!r}")
        seen.add(name)


def check_header(
    names: list[str], path: Openable, file_type: str = "csv", loaded: tuple[str, ...] | None = None
) -> None:
    """Refuse a file whose column names cannot be loaded, with advice fitting its type.

    A CSV header is checked whole. A Parquet file's names are its schema: only the
    columns that will be loaded (`loaded`, when the contract picks them) must be valid.
    """
    _check_distinct(names, path, file_type)
    for name in names:
        if loaded is not None and name not in loaded:
            continue
        try:
            validate_identifier(name, what="header column" if file_type == "csv" else "column")
        except InvalidIdentifierError as exc:
            row = 1 if file_type == "csv" else None  # a Parquet file has no header row
            raise FileError(f"{path.name}: {exc}. {_rename_advice(file_type)}", row=row) from None


def _rename_advice(file_type: str) -> str:
    normalize = "; or let ingestd name it with --column-names normalize"
    if file_type == "parquet":
        return (
            "Rename the column where the file is written, name every column yourself in "
            "file order with --no-header --headers a,b,c, or load only the other columns "
            "with --headers a,b" + normalize
        )
    # --no-header alone would load the header line as a data row.
    return (
        "Rename the column in the file's header, or remove the header line and name the "
        "columns yourself with --no-header --headers a,b,c" + normalize
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


def narrowed(reader: BatchReader, columns: tuple[str, ...]) -> BatchReader:
    """The reader's batches holding only `columns` (schema_evolution = ignore drops the
    others), always through Arrow: a file's own bytes hold every column."""
    layout = reader.layout
    types = dict(zip(layout.columns, layout.pg_types, strict=True))
    kept = FileLayout(layout.file_type, columns, tuple(types[c] for c in columns))

    def batches() -> Iterator[pa.RecordBatch]:
        for batch in reader:
            yield batch if batch.schema.names == list(columns) else batch.select(list(columns))

    return BatchReader(kept, batches())
