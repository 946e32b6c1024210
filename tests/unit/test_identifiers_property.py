"""Hostile names: any string is either a safe, double-quoted identifier or refused.

Property tests over arbitrary text (unicode, quotes, semicolons, NUL, whitespace, very
long strings), for the validator, every SQL builder, settings and file header rows; and
a check of the source that SQL text is only ever built in ingestd/db/sql.py.
"""

from __future__ import annotations

import re
import string
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from ingestd.config import resolve
from ingestd.db import sql
from ingestd.db.manifest import Manifest
from ingestd.db.sql import Target
from ingestd.exceptions import FileError, UsageError
from ingestd.identifiers import (
    InvalidIdentifierError,
    quote_ident,
    quote_qualified,
    validate_identifier,
    validate_pg_type,
)
from ingestd.read import open_reader
from ingestd.settings import Contract

SAFE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
NASTY = [
    "",
    " ",
    "a b",
    'a"b',
    "a'b",
    "a;b",
    "t; DROP TABLE x; --",
    'x" ; DROP TABLE y; --',
    "a\x00b",
    "a\nb",
    "a\tb",
    "é",
    "\uff41",  # fullwidth a
    "a" * 64,
    "a" * 10_000,
    "\uff11",  # fullwidth 1
    "_\u200b",
    "a-b",
    "a.b",
    "$1",
    "a\r",
    "a\n",
]
# Arbitrary text, plus names that pass, so both branches of every property are exercised.
names = st.one_of(
    st.text(),
    st.text(alphabet=string.printable + "\x00\u00e9\u200b\uff41\u0661", max_size=80),
    st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,70}", fullmatch=True),
    st.sampled_from(NASTY),
)
# Characters any generated SQL text is made of (the statements' own punctuation included).
SQL_SAFE = set(string.ascii_letters + string.digits + "_ \n\"(),.=*$:'<>!|+-[]")


def quoted_tokens_are_safe(text: str) -> None:
    assert set(text) <= SQL_SAFE, sorted(set(text) - SQL_SAFE)
    assert ";" not in text and "--" not in text.replace("ingestd.create:", "")
    assert text.count('"') % 2 == 0
    for token in re.findall(r'"([^"]*)"', text):
        # The stage's row-number column: a fixed name no file column can take (a space).
        assert SAFE_NAME.fullmatch(token) or token == sql.ORDINAL, token


def is_valid(name: str) -> bool:
    try:
        validate_identifier(name)
    except InvalidIdentifierError:
        return False
    return True


@given(names)
@example("\x00")
@example("a" * 63)
@example("a" * 64)
def test_identifier_is_valid_and_quoted_or_refused(name: str) -> None:
    try:
        got = validate_identifier(name)
    except InvalidIdentifierError as exc:
        assert str(exc)  # says why
        assert not (SAFE_NAME.fullmatch(name) and len(name.encode()) <= 63)
        with pytest.raises(InvalidIdentifierError):
            quote_ident(name)
        return
    assert got == name
    assert SAFE_NAME.fullmatch(name) and len(name.encode("utf-8")) <= 63
    assert name.isascii()
    assert quote_ident(name) == f'"{name}"'
    assert quote_qualified(name, name) == f'"{name}"."{name}"'


@given(st.one_of(st.text(), st.sampled_from(["numeric(12,2)", "text[]", "integer"])))
@example("numeric(\u0661\u0662)")  # Arabic-Indic digits are digits to Python's \d
@example("text; DROP TABLE x")
@example("integer)")
def test_pg_types_are_known_ascii_spellings_or_refused(type_name: str) -> None:
    try:
        normal = validate_pg_type(type_name)
    except InvalidIdentifierError:
        return
    assert re.fullmatch(r"[a-z][a-z0-9 ]*(\(\d+(, ?\d+)?\))?(\[\])?", normal, re.ASCII), normal


def builders(target: Target, stage: str) -> list[Callable[[], str | list[str]]]:
    return [
        lambda: sql.create_table(target, ["text"] * len(target.columns)),
        lambda: sql.create_stage(target, stage),
        lambda: sql.upsert(target, stage),
        lambda: sql.merge(target, stage),
        lambda: sql.create_manifest(target.schema, target.table),
    ]


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(
    schema=st.one_of(st.none(), names),
    table=names,
    columns=st.lists(names, min_size=1, max_size=5, unique=True),
    pk_count=st.integers(min_value=0, max_value=5),
    stage=names,
)
def test_every_sql_builder_quotes_safe_names_or_refuses(
    schema: str | None, table: str, columns: list[str], pk_count: int, stage: str
) -> None:
    pk = tuple(columns[: min(pk_count, len(columns))])
    target = Target(schema, table, tuple(columns), pk)
    every_name = [n for n in (schema, table, *columns, stage) if n is not None]
    for build in builders(target, stage):
        try:
            out = build()
        except InvalidIdentifierError:
            assert not all(is_valid(n) for n in every_name)
            continue
        statements = out if isinstance(out, list) else [out]
        for text in statements:
            quoted_tokens_are_safe(text)
        text = "\n".join(statements)
        assert f'"{table}"' in text
        if schema is not None:
            assert f'"{schema}"."{table}"' in text
    # A stage name is derived, never taken from input: always safe.
    if all(is_valid(n) for n in (table, *columns)) and (schema is None or is_valid(schema)):
        assert SAFE_NAME.fullmatch(sql.stage_name(target))


@given(schema=st.one_of(st.none(), names), table=names)
def test_manifest_statements_quote_safe_names_or_refuse(schema: str | None, table: str) -> None:
    try:
        manifest = Manifest(schema, table)
    except InvalidIdentifierError:
        assert not (is_valid(table) and (schema is None or is_valid(schema)))
        return
    for build in (
        sql.manifest_lookup,
        sql.manifest_claim,
        sql.manifest_checkpoint,
        sql.manifest_progress,
        sql.manifest_attempt,
        sql.manifest_finish,
        sql.manifest_record_failure,
        sql.manifest_status_counts,
        sql.manifest_recent,
    ):
        text = build(manifest.name)
        quoted_tokens_are_safe(text)
        assert f'"{table}"' in text


INBOX = Path(tempfile.gettempdir()) / "ingestd-property-no-inbox"  # need not exist (daemon)


@settings(max_examples=300)
@given(table=names, pk=names, headers=names)
@example(table="t", pk="id", headers="id,v")
@example(table="t", pk="id", headers='id,"v"')
@example(table="t", pk="id", headers="id, v ; drop")
def test_settings_yield_validated_names_or_a_usage_error(table: str, pk: str, headers: str) -> None:
    flags = {"inbox": str(INBOX), "table": table, "pk": pk, "headers": headers}
    try:
        resolved = resolve(flags, env={}, config={})
    except UsageError as exc:
        assert str(exc)
        return
    (contract,) = resolved.contracts
    for name in (contract.table, *contract.pk, *(contract.headers or ())):
        assert validate_identifier(name) == name
    assert contract.table == table


@pytest.fixture(scope="module")
def header_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix="ingestd-headers-"))


@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(header=st.lists(names, min_size=1, max_size=4))
@example(header=["id", "v"])
@example(header=["id", 'x" ; DROP TABLE t; --'])
@example(header=["id", "id"])
def test_header_rows_yield_validated_names_or_fail_the_file(
    header_dir: Path, header: list[str]
) -> None:
    assume(all("\r" not in h and "\n" not in h for h in header))  # one physical header line
    line = ",".join('"' + h.replace('"', '""') + '"' for h in header)
    path = header_dir / "f.csv"
    path.write_bytes((line + "\n" + ",".join("1" for _ in header) + "\n").encode("utf-8"))
    contract = Contract(name="c", pattern="*", table="t", mode="append", file_type="csv")
    try:
        reader = open_reader(path, contract, 1000)
    except FileError as exc:
        assert str(exc)
        return
    assert list(reader.layout.columns) == header
    for name in reader.layout.columns:
        assert validate_identifier(name) == name


# --- SQL text is built in one place -----------------------------------------------------------

PACKAGE = Path(__file__).resolve().parents[2] / "ingestd"
SQL_WORDS = re.compile(
    r"\b(INSERT\s+INTO|UPDATE\s+\S+\s+SET|CREATE\s+(TEMP\s+)?TABLE|CREATE\s+INDEX|DELETE\s+FROM|"
    r"MERGE\s+INTO|DROP\s+(TABLE|INDEX)|ALTER\s+TABLE\s+\S+\s+(ADD|DROP)|TRUNCATE\s|"
    r"COPY\s+\S+\s+FROM|SELECT\s.+\sFROM\s)",
)
# Lines outside db/sql.py that may mention SQL: messages to the user and the ping.
ALLOWED = {
    ("db/target.py", "add them with ALTER TABLE"),
    ("db/connection.py", 'conn.fetchval("SELECT 1"'),
}


def test_sql_text_is_only_built_in_db_sql_py() -> None:
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel == "db/sql.py":
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if SQL_WORDS.search(line) and not any(
                rel == f and fragment in line for f, fragment in ALLOWED
            ):
                offenders.append(f"{rel}:{number}: {line.strip()}")
    assert offenders == []
    assert SQL_WORDS.search((PACKAGE / "db" / "sql.py").read_text())  # the check can match


def test_source_check_would_catch_an_f_string_statement() -> None:
    assert SQL_WORDS.search('await conn.execute(f"INSERT INTO {t} VALUES ({v})")')
    assert SQL_WORDS.search('q = f"SELECT x FROM {t}"')
    assert SQL_WORDS.search('f"UPDATE {name} SET a = 1"')
