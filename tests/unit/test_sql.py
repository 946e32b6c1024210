"""SQL builders: every name validated and double-quoted, the merge semantics spelled right."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import replace

import pytest

from ingestd.db import sql
from ingestd.db.sql import ORDINAL, Target
from ingestd.identifiers import InvalidIdentifierError, validate_identifier

T = Target(schema="sales", table="orders", columns=("id", "name", "amount"), pk=("id",))
STAGE = sql.stage_name(T)

# Bare (unquoted) words that must never appear outside double quotes in the SQL text.
NAMES = ("sales", "orders", "id", "name", "amount", ORDINAL, STAGE)


def unquoted_names(text: str) -> set[str]:
    """Identifiers of NAMES that occur outside "..." in `text`."""
    outside = re.sub(r'"[^"]*"', " ", text)
    words = set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", outside))
    return words & set(NAMES)


BUILDERS: dict[str, Callable[[Target], str]] = {
    "create_table": lambda t: sql.create_table(
        t, ["bigint", "text", "numeric(12,2)"][: len(t.columns)]
    ),
    "create_stage": lambda t: ";\n".join(sql.create_stage(t, sql.stage_name(t))),
    "upsert": lambda t: sql.upsert(t, sql.stage_name(t)),
    "merge": lambda t: sql.merge(t, sql.stage_name(t)),
}


@pytest.mark.parametrize("builder", BUILDERS.values(), ids=BUILDERS.keys())
def test_every_identifier_is_quoted(builder: Callable[[Target], str]) -> None:
    text = builder(T)
    assert unquoted_names(text) == set()
    assert '"sales"."orders"' in text


def test_create_manifest_quotes_its_names() -> None:
    statements = sql.create_manifest("audit", "ingestion_manifest")
    assert len(statements) == 10
    assert 'CREATE TABLE IF NOT EXISTS "audit"."ingestion_manifest"' in statements[0]
    assert statements[1:7] == [
        'ALTER TABLE "audit"."ingestion_manifest" '
        "ADD COLUMN IF NOT EXISTS rows_rejected bigint NOT NULL DEFAULT 0",
        'ALTER TABLE "audit"."ingestion_manifest" ADD COLUMN IF NOT EXISTS owner text',
        'ALTER TABLE "audit"."ingestion_manifest" ADD COLUMN IF NOT EXISTS lease_until timestamptz',
        'ALTER TABLE "audit"."ingestion_manifest" ADD COLUMN IF NOT EXISTS segment_ends bigint[]',
        'ALTER TABLE "audit"."ingestion_manifest" ADD COLUMN IF NOT EXISTS segment_done bigint[]',
        'ALTER TABLE "audit"."ingestion_manifest" ADD COLUMN IF NOT EXISTS owner_token text',
    ]
    assert (
        'CREATE INDEX IF NOT EXISTS "ingestion_manifest_status_idx" '
        'ON "audit"."ingestion_manifest" (status, processed_at)'
    ) == statements[7]
    assert "(filename, checksum, table_name)" in statements[8]
    assert statements[8].startswith('CREATE UNIQUE INDEX IF NOT EXISTS "ingestion_manifest_')
    for column in ("filename", "checksum", "filesize", "processed_at", "rows", "status", "run_id",
                   "rows_rejected", "owner", "lease_until"):  # fmt: skip
        assert re.search(rf"^\s*{column}\s", statements[0], re.M), column


def test_create_manifest_without_schema() -> None:
    assert sql.create_manifest(None, "m")[0].startswith('CREATE TABLE IF NOT EXISTS "m" (')


def test_create_table() -> None:
    text = sql.create_table(T, ["bigint", "text", "Numeric(12, 2)"])
    assert text == (
        'CREATE TABLE IF NOT EXISTS "sales"."orders" ("id" bigint, "name" text, '
        '"amount" numeric(12, 2), PRIMARY KEY ("id"))'
    )


def test_create_table_without_pk_or_schema() -> None:
    t = Target(schema=None, table="log", columns=("a",), pk=())
    assert sql.create_table(t, ["text"]) == 'CREATE TABLE IF NOT EXISTS "log" ("a" text)'


@pytest.mark.parametrize("bad", ["text); drop table x; --", "foo", "text)"])
def test_create_table_rejects_bad_types(bad: str) -> None:
    with pytest.raises(InvalidIdentifierError, match="not supported"):
        sql.create_table(T, ["bigint", bad, "text"])


def test_create_table_needs_one_type_per_column() -> None:
    with pytest.raises(ValueError, match=r"shorter|longer"):
        sql.create_table(T, ["bigint"])


def test_create_stage() -> None:
    text, sequence, default = sql.create_stage(T, STAGE)
    assert text.startswith(f'CREATE TEMP TABLE IF NOT EXISTS "{STAGE}" ON COMMIT DELETE ROWS AS ')
    assert 'SELECT "id", "name", "amount", 0::bigint AS "ingestd row"' in text
    assert text.endswith('FROM "sales"."orders" WITH NO DATA')
    # Rows COPYed without an ordinal (a file's raw bytes) are numbered in file order.
    assert sequence == f'CREATE TEMP SEQUENCE IF NOT EXISTS "{STAGE}_seq" CACHE 1000000'
    assert default == (
        f'ALTER TABLE "{STAGE}" ALTER COLUMN "ingestd row" '
        f"SET DEFAULT nextval('pg_temp.\"{STAGE}_seq\"')"
    )


def test_the_ordinal_cannot_clash_with_a_file_column() -> None:
    # A file column named like the old ordinal is just a column.
    t = Target(None, "t", ("id", "_ingestd_row"), ("id",))
    assert '"_ingestd_row", 0::bigint AS "ingestd row"' in sql.create_stage(t, "s")[0]
    # The ordinal's name is outside the grammar every file column must match.
    with pytest.raises(InvalidIdentifierError):
        validate_identifier(ORDINAL)


def test_stage_columns() -> None:
    assert sql.stage_columns(T) == ["id", "name", "amount", ORDINAL]


# The key as the catalog describes it: NOT NULL (a primary key).
PK = Target("sales", "orders", ("id", "name", "amount"), ("id",), distinct_nulls=())


def test_upsert() -> None:
    text = sql.upsert(PK, STAGE)
    assert text.startswith(
        'INSERT INTO "sales"."orders" AS t ("id", "name", "amount") OVERRIDING SYSTEM VALUE '
    )
    # The last occurrence of a key in file order wins.
    assert f'SELECT DISTINCT ON ("id") "id", "name", "amount" FROM "{STAGE}"' in text
    assert 'ORDER BY "id", "ingestd row" DESC' in text
    assert (
        'ON CONFLICT ("id") DO UPDATE SET "id" = EXCLUDED."id", "name" = EXCLUDED."name", '
        '"amount" = EXCLUDED."amount"'
    ) in text
    # The key as the last occurrence writes it (compared by text: citext 'Bob' = 'bob').
    assert text.endswith(
        'WHERE (t."id"::text, t."name", t."amount") IS DISTINCT FROM '
        '(EXCLUDED."id"::text, EXCLUDED."name", EXCLUDED."amount")'
    )


def test_rows_with_a_null_key_are_never_folded() -> None:
    # Until the catalog says otherwise, any key column may hold NULL, and NULL equals no
    # other NULL in a unique key: such a row is its own group (its ordinal).
    for target in (T, replace(PK, distinct_nulls=("id",))):
        text = sql.upsert(target, STAGE)
        nulls = 'CASE WHEN "id" IS NULL THEN "ingestd row" END'
        assert f'SELECT DISTINCT ON ("id", {nulls}) ' in text
        assert f'ORDER BY "id", {nulls}, "ingestd row" DESC' in text


def test_upsert_composite_key_with_nullable_columns() -> None:
    t = Target(None, "t", ("a", "b", "v"), ("a", "b"), distinct_nulls=("b",))
    text = sql.upsert(t, "s")
    nulls = 'CASE WHEN "b" IS NULL THEN "ingestd row" END'
    assert f'DISTINCT ON ("a", "b", {nulls})' in text
    assert f'ORDER BY "a", "b", {nulls}, "ingestd row" DESC' in text
    assert 'ON CONFLICT ("a", "b") DO UPDATE SET "a" = EXCLUDED."a", "b" = EXCLUDED."b", ' in text
    both = replace(t, distinct_nulls=None)
    assert 'CASE WHEN "a" IS NULL OR "b" IS NULL THEN' in sql.upsert(both, "s")


def test_nulls_not_distinct_key_folds_nulls_and_merge_matches_them() -> None:
    t = Target(None, "t", ("k", "v"), ("k",), distinct_nulls=(), equal_nulls=("k",))
    assert 'DISTINCT ON ("k") ' in sql.upsert(t, "s")
    assert 'ON (t."k" = s."k" OR (t."k" IS NULL AND s."k" IS NULL)) ' in sql.merge(t, "s")


def test_types_without_equality_are_compared_by_text() -> None:
    t = Target(None, "t", ("id", "doc", "p", "n"), ("id",), as_text=frozenset({"doc", "p"}))
    assert sql.upsert(t, "s").endswith(
        'WHERE (t."id"::text, t."doc"::text, t."p"::text, t."n") IS DISTINCT FROM '
        '(EXCLUDED."id"::text, EXCLUDED."doc"::text, EXCLUDED."p"::text, EXCLUDED."n")'
    )
    assert (
        'WHEN MATCHED AND (t."id"::text, t."doc"::text, t."p"::text, t."n") IS DISTINCT FROM '
        '(s."id"::text, s."doc"::text, s."p"::text, s."n") THEN'
    ) in sql.merge(t, "s")


def test_merge_key_without_equality_matches_on_text() -> None:
    t = Target(None, "t", ("p", "v"), ("p",), as_text=frozenset({"p"}), distinct_nulls=())
    text = sql.merge(t, "s")
    assert 'DISTINCT ON ("p"::text) ' in text and 'ON t."p"::text = s."p"::text ' in text


def test_upsert_pk_only_table_rewrites_only_a_key_written_otherwise() -> None:
    t = Target(None, "keys", ("k",), ("k",))
    text = sql.upsert(t, "s")
    assert text.endswith(
        'ON CONFLICT ("k") DO UPDATE SET "k" = EXCLUDED."k" '
        'WHERE (t."k"::text) IS DISTINCT FROM (EXCLUDED."k"::text)'
    )


def test_merge() -> None:
    text = sql.merge(PK, STAGE)
    assert text.startswith('MERGE INTO "sales"."orders" AS t USING (SELECT DISTINCT ON ("id")')
    assert 'ORDER BY "id", "ingestd row" DESC) AS s ON t."id" = s."id" ' in text
    assert (
        'WHEN MATCHED AND (t."id"::text, t."name", t."amount") IS DISTINCT FROM '
        '(s."id"::text, s."name", s."amount") '
        'THEN UPDATE SET "id" = s."id", "name" = s."name", "amount" = s."amount" '
    ) in text
    assert text.endswith(
        'WHEN NOT MATCHED THEN INSERT ("id", "name", "amount") OVERRIDING SYSTEM VALUE '
        'VALUES (s."id", s."name", s."amount")'
    )


def test_merge_pk_only_rewrites_only_a_key_written_otherwise() -> None:
    text = sql.merge(Target(None, "keys", ("k",), ("k",)), "s")
    assert 'WHEN MATCHED AND (t."k"::text) IS DISTINCT FROM (s."k"::text) THEN' in text
    assert text.endswith(
        'WHEN NOT MATCHED THEN INSERT ("k") OVERRIDING SYSTEM VALUE VALUES (s."k")'
    )


def test_follow_target_names_the_target_only_quoted() -> None:
    text = sql.follow_target(T)
    assert 'LEFT JOIN "sales"."orders" AS held ON false' in text
    assert unquoted_names(text) == set()
    with pytest.raises(InvalidIdentifierError):
        sql.follow_target(Target("s;", "t", ("id",), ("id",)))


BAD_TARGETS = {
    "quote in column": Target(None, "t", ("id", 'a"b'), ("id",)),
    "sql in column": Target(None, "t", ("id", "x; drop"), ("id",)),
    "bad table": Target(None, "t t", ("id", "v"), ("id",)),
    "bad schema": Target("s;", "t", ("id", "v"), ("id",)),
}


@pytest.mark.parametrize("builder", BUILDERS.values(), ids=BUILDERS.keys())
@pytest.mark.parametrize("target", BAD_TARGETS.values(), ids=BAD_TARGETS.keys())
def test_bad_identifiers_are_refused_by_every_builder(
    builder: Callable[[Target], str], target: Target
) -> None:
    with pytest.raises(InvalidIdentifierError):
        builder(target)


@pytest.mark.parametrize("name", ["create_table", "upsert", "merge"])
def test_bad_key_is_refused_by_builders_that_use_the_key(name: str) -> None:
    target = Target(None, "t", ("id", "v"), ('id"; drop table t; --',))
    with pytest.raises(InvalidIdentifierError):
        BUILDERS[name](target)


@pytest.mark.parametrize("table", ["bad name", 'x"', ""])
def test_create_manifest_refuses_bad_names(table: str) -> None:
    with pytest.raises(InvalidIdentifierError):
        sql.create_manifest(None, table)


def test_create_manifest_accepts_every_valid_table_name() -> None:
    table = "m" * 63  # valid: settings accepts it as --manifest-table
    statements = sql.create_manifest(None, table)
    assert f'CREATE TABLE IF NOT EXISTS "{table}"' in statements[0]


def test_stage_name_is_deterministic_and_safe() -> None:
    again = Target(schema="sales", table="orders", columns=("id", "name", "amount"), pk=("id",))
    assert sql.stage_name(again) == STAGE
    assert re.fullmatch(r"ingestd_stage_[0-9a-f]{16}", STAGE)


@pytest.mark.parametrize(
    "other",
    [
        Target("sales", "orders", ("id", "name"), ("id",)),
        Target("sales", "orders", ("id", "amount", "name"), ("id",)),
        Target("sales", "orders2", ("id", "name", "amount"), ("id",)),
        Target("other", "orders", ("id", "name", "amount"), ("id",)),
        Target(None, "orders", ("id", "name", "amount"), ("id",)),
    ],
)
def test_stage_name_differs_per_layout(other: Target) -> None:
    assert sql.stage_name(other) != STAGE


def test_manifest_statements_take_values_as_parameters() -> None:
    name = '"ingestion_manifest"'
    lookup = sql.manifest_lookup(name)
    assert lookup.endswith(
        f"FROM {name} AS m WHERE filename = $1 AND checksum = $2 AND table_name = $3"
    )
    assert "owner_token IS DISTINCT FROM $4 AND lease_until > now()" in lookup
    checkpoint = sql.manifest_checkpoint(name)
    assert "WHERE id = $1 AND rows = $2 AND status = 'pending' AND owner_token = $5" in checkpoint
    assert "SET rows = $3" in checkpoint
    claim = sql.manifest_claim(name)
    assert "ON CONFLICT (filename, checksum, table_name)" in claim
    assert "m.lease_until < now()" in claim and "RETURNING id, rows" in claim


def test_target_label_and_qualified() -> None:
    assert T.label == "sales.orders"
    assert T.qualified == '"sales"."orders"'
    t = Target(None, "orders", ("id",), ("id",))
    assert (t.label, t.qualified) == ("orders", '"orders"')
