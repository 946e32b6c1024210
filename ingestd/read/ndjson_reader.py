"""NDJSON: one JSON object per line (plain or compressed), its top-level keys as columns,
streamed as record batches of text that PostgreSQL casts to each column's type.

Lines are parsed by the standard library's json, not pyarrow's JSON reader: pyarrow fixes
the schema from its first block and fails on a key first seen later or on a value whose
type changes ("unexpected field", "changed from number to string"), and it reads nested
objects as structs, which fill keys an object lacks with null and so change the value.
A first pass learns the columns (the union of the keys, in order of first appearance)
and what each holds; it also finds a malformed line before any row is loaded.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

import pyarrow as pa

from ingestd.exceptions import FileError
from ingestd.identifiers import InvalidIdentifierError, validate_identifier
from ingestd.read.batches import BatchReader, FileLayout, Limits, _normalise, rebatch
from ingestd.read.columns import load_names, renamed, select_columns
from ingestd.read.compression import BrokenStream, counted, open_stream
from ingestd.settings import Contract
from ingestd.storage import Openable

__all__ = ["open_ndjson"]

_READ_BYTES = 1 << 20
_BOM = b"\xef\xbb\xbf"
_MAX_COLUMNS = 1600  # PostgreSQL's limit on a table's columns
_INT64 = range(-(1 << 63), 1 << 63)
_JSON_TYPES = ("json", "jsonb")


class _Number(str):
    """A JSON number with a fraction or exponent, kept as written (1.50 stays 1.50; a
    float would print 1.5, and lose digits past 17)."""

    __slots__ = ()


def _refuse_constant(name: str) -> Any:
    # Python's json takes NaN and Infinity, which JSON does not have.
    raise ValueError(f"{name} is not a JSON value")


def _lines(path: Openable, max_line_bytes: int) -> Iterator[tuple[int, bytes]]:
    """(line number, line) of every line that is not blank, the stream read in pieces."""
    stream = open_stream(path)
    pending: list[bytes] = []
    number, size, first = 0, 0, True
    while True:
        data = stream.read(_READ_BYTES)
        if first:
            while len(data) < len(_BOM) and (more := stream.read(_READ_BYTES)):
                data += more
            data, first = data.removeprefix(_BOM), False
        if not data:
            break
        start = 0
        while (end := data.find(b"\n", start)) >= 0:
            number += 1
            line = data[start:end]
            if pending:
                line, pending, size = b"".join([*pending, line]), [], 0
            if line.strip():
                yield number, line
            start = end + 1
        if start < len(data):
            pending.append(data[start:])
            size += len(data) - start
            if size > max_line_bytes:
                raise FileError(
                    f"line {number + 1} is longer than {max_line_bytes >> 20} MiB (or the file "
                    "has no line breaks): NDJSON holds one object per line; if lines really "
                    "are that long, raise memory_limit_mb",
                    row=number + 1,
                )
    line = b"".join(pending)
    if line.strip():
        yield number + 1, line


def _parse(line: bytes, number: int) -> dict[str, Any]:
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FileError(
            f"line {number} is not valid UTF-8 (byte {line[exc.start : exc.start + 1]!r}): "
            "JSON text is UTF-8",
            row=number,
        ) from None
    try:
        value = json.loads(text, parse_float=_Number, parse_constant=_refuse_constant)
    except json.JSONDecodeError as exc:
        raise FileError(
            f"line {number} is not valid JSON: {exc.msg} at character {exc.pos + 1}: "
            f"{text[:120]!r}; fix or remove the line",
            row=number,
        ) from None
    except (ValueError, RecursionError) as exc:  # NaN, a 5,000-digit integer, deep nesting
        reason = "values nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise FileError(f"line {number} cannot be read: {reason}", row=number) from None
    if not isinstance(value, dict):
        kind = "array" if isinstance(value, list) else "value"
        raise FileError(
            f"line {number} is a JSON {kind}, not an object: NDJSON holds one object "
            "{...} per line, whose keys are the columns",
            row=number,
        )
    return value


# What each type json.loads makes holds, for a table ingestd creates (int: see _kind).
_KINDS: dict[type, str] = {
    str: "text",
    _Number: "double precision",
    bool: "boolean",
    dict: "jsonb",
    list: "jsonb",
}


# Kinds of number a double precision column cannot hold exactly (not column types).
_WIDE_INT = "bigint beyond 2^53"
_EXACT_DECIMAL = "decimal a double rounds"
_FLOAT53 = range(-(1 << 53), (1 << 53) + 1)


def _kind(value: Any) -> str:
    if type(value) is int:
        if value in _FLOAT53:
            return "bigint"
        return _WIDE_INT if value in _INT64 else "numeric"
    if type(value) is _Number and not _survives_float(value):
        return _EXACT_DECIMAL
    return _KINDS[type(value)]


def _survives_float(text: str) -> bool:
    """True when the decimal `text` reads back from a double as the same number (0.1 does:
    its shortest repr is 0.1; 0.12345678901234567 and 1e400 do not)."""
    number = float(text)
    try:
        return Decimal(repr(number)) == Decimal(text)
    except InvalidOperation:  # inf
        return False


def _column_type(kinds: set[str], typed: bool) -> str:
    """The PostgreSQL type for a key's values (of these kinds) in a table ingestd creates."""
    if kinds == {"jsonb"}:
        return "jsonb"
    if not typed or not kinds:
        return "text"
    if kinds <= {"bigint", _WIDE_INT}:
        return "bigint"
    if kinds <= {"bigint", "double precision"}:
        return "double precision"  # every value reads back from a double as written
    if kinds <= {"bigint", _WIDE_INT, "numeric", "double precision", _EXACT_DECIMAL}:
        # A double would round one of the values (an integer beyond 2^53, a decimal with
        # more digits than a double keeps): numeric keeps them all.
        return "numeric"
    if len(kinds) == 1:
        return next(iter(kinds))
    return "text"


@dataclass
class _Survey:
    """What the first pass learns: every key in order of first appearance, and the kinds
    of value each holds."""

    kinds: dict[str, set[str]] = field(default_factory=dict)

    def add(self, row: dict[str, Any], number: int) -> None:
        for key, value in row.items():
            seen = self.kinds.get(key)
            if seen is None:
                if len(self.kinds) >= _MAX_COLUMNS:
                    raise FileError(
                        f"line {number} brings a key beyond {_MAX_COLUMNS} distinct keys, "
                        "PostgreSQL's limit on columns: name the keys to load with headers",
                        row=number,
                    )
                seen = self.kinds[key] = set()
            if value is not None:
                seen.add(_kind(value))


def _survey(path: Openable, limits: Limits, wanted: set[str] | None) -> _Survey:
    survey = _Survey()
    for number, line in _lines(path, limits.max_block_bytes):
        row = _parse(line, number)
        survey.add(row if wanted is None else {k: v for k, v in row.items() if k in wanted}, number)
    return survey


def _dump(value: Any) -> str:
    """JSON text of a value, numbers with a fraction as written."""
    if isinstance(value, dict):
        items = (f"{json.dumps(k, ensure_ascii=False)}: {_dump(v)}" for k, v in value.items())
        return "{" + ", ".join(items) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_dump(v) for v in value) + "]"
    if type(value) is _Number:
        return str.__str__(value)
    return json.dumps(value, ensure_ascii=False)  # str, int, bool, None


def _text(value: Any, as_json: bool) -> str | None:
    """A value as the text PostgreSQL reads into its column: JSON text for json and jsonb
    columns and for nested values, else the value itself (true/false, digits as written)."""
    kind = type(value)
    if kind is str and not as_json:
        return value  # type: ignore[no-any-return]  # the common case first
    if value is None:
        return None
    if as_json or kind is dict or kind is list:
        return _dump(value)
    if kind is bool:
        return "true" if value else "false"
    return str.__str__(value) if kind is _Number else str(value)


def _check_names(names: list[str], path: Openable) -> None:
    for name in names:
        try:
            validate_identifier(name, what="key")
        except InvalidIdentifierError as exc:
            raise FileError(
                f"{path.name}: {exc}. Rename the key where the file is written, or load only "
                "the other keys with headers = [...]"
            ) from None


def open_ndjson(path: Openable, contract: Contract, limits: Limits) -> BatchReader:
    """Open an NDJSON file: one pass learns its keys and checks every line, the batches
    come from a second."""
    wanted = set(contract.headers) if contract.headers is not None else None
    if contract.column_names == "normalize":
        wanted = None  # headers name normalized keys: every key is surveyed
    try:
        survey = _survey(path, limits, wanted)
    except BrokenStream as broken:
        raise broken.after(0) from None
    names = list(survey.kinds)
    if not names and wanted is None:
        raise FileError("the file is empty (no JSON object with a key in it)")
    keys = names
    names = load_names(keys, path, contract, "ndjson", ()) if keys else keys
    source = dict(zip(names, keys, strict=True))  # load name -> the file's key
    survey.kinds = {n: survey.kinds[source[n]] for n in names}
    columns, missing = select_columns(names, contract)
    _check_names([c for c in columns if c not in missing], path)
    types = dict(contract.types)
    pg_types = tuple(
        types.get(c) or _column_type(survey.kinds.get(c, set()), contract.preserve_types)
        for c in columns
    )
    layout = FileLayout("ndjson", columns, pg_types)
    as_json = {c for c, t in zip(columns, pg_types, strict=True) if t.lower() in _JSON_TYPES}
    present = [c for c in columns if c not in missing]
    if not present:
        raise FileError(f"no line of the file has any of the keys {', '.join(columns)}")
    batches = _batches(path, [source[c] for c in present], {source[c] for c in as_json}, limits)
    if names != keys:
        batches = renamed(batches, {k: n for n, k in source.items()})
    batches = _normalise(batches, columns, missing, contract)
    batches = counted(rebatch(batches, limits.chunk_size, limits.batch_bytes))
    return BatchReader(layout, batches, 0, columns)


def _batches(
    path: Openable, columns: list[str], as_json: set[str], limits: Limits
) -> Iterator[pa.RecordBatch]:
    """Record batches of text columns, cut by rows and by the bytes of JSON read: Python
    objects take several times the bytes of their text."""
    budget = max(1 << 20, limits.batch_bytes // 8)
    values: dict[str, list[str | None]] = {c: [] for c in columns}
    rows = size = 0
    for number, line in _lines(path, limits.max_block_bytes):
        row = _parse(line, number)
        for c, column in values.items():
            value = row.get(c)
            # Strings are most values: appended as they are, without a call.
            column.append(
                value if type(value) is str and c not in as_json else _text(value, c in as_json)
            )
        rows += 1
        size += len(line)
        if rows >= limits.chunk_size or size >= budget:
            yield _batch(values, number)
            values, rows, size = {c: [] for c in columns}, 0, 0
    if rows:
        yield _batch(values, None)


def _batch(values: dict[str, list[str | None]], last_line: int | None) -> pa.RecordBatch:
    arrays = []
    for name, column in values.items():
        try:
            arrays.append(pa.array(column, pa.string()))
        except (UnicodeEncodeError, pa.ArrowException):
            # A lone surrogate (\ud800) decodes in JSON but is not Unicode text.
            where = f" (in the lines up to {last_line})" if last_line else ""
            raise FileError(
                f"key {name}: a value holds a lone surrogate escape (\\ud800-\\udfff) "
                f"that is not a character{where}: fix the writer"
            ) from None
    return pa.RecordBatch.from_arrays(arrays, names=list(values))
