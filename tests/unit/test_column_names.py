"""column_names = normalize: the one function every reader's names go through, as a table
and as properties; and schema_evolution's plan (which columns load, are added, dropped,
rescued) without a server."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ingestd.db.schema import plan
from ingestd.exceptions import FileError
from ingestd.identifiers import validate_identifier
from ingestd.read import open_reader
from ingestd.read.columns import normalize_name, normalize_names
from ingestd.settings import Contract

TABLE = [
    ("Razão Social", "razao_social"),
    ("CNPJ Básico", "cnpj_basico"),
    ("Nome Fantasia", "nome_fantasia"),
    ("  leading and trailing  ", "leading_and_trailing"),
    ("Preço (R$)", "preco_r"),
    ("e-mail/contato", "e_mail_contato"),
    ("a__b", "a_b"),
    ("already_fine", "already_fine"),
    ("CamelCase", "camelcase"),
    ("2024 total", "_2024_total"),
    ("1", "_1"),
    ("Ação!", "acao"),
    ("Straße", "strae"),  # no decomposition for ß: dropped, not guessed
    ("ﬁle", "file"),  # compatibility decomposition: the ligature is two letters
    ("日本語", "_"),  # nothing ASCII is left
    ("", "_"),
    ("%", "_"),
    ("_id", "id"),
]


@pytest.mark.parametrize(("name", "expected"), TABLE)
def test_normalization_table(name: str, expected: str) -> None:
    assert normalize_name(name) == expected


def test_repeats_get_suffixes_in_file_order() -> None:
    assert normalize_names(["Nome", "nome", "NOME", "Nome_2", "x"]) == [
        "nome",
        "nome_2",
        "nome_3",
        "nome_2_2",  # the file's own nome_2 came after ingestd's
        "x",
    ]


def test_over_long_names_are_cut_to_63_bytes_and_stay_unique() -> None:
    long = "Ç" * 100  # two bytes in UTF-8, one ASCII letter normalized
    first, second = normalize_names([long, long + "x"])
    assert first == "c" * 63
    assert second == "c" * 61 + "_2"
    multibyte = "é" * 40 + " " + "ã" * 40
    assert len(normalize_name(multibyte).encode()) <= 63
    assert normalize_name("a" * 62 + " b") == "a" * 62  # a cut never ends in _


NAMES = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=90)


@given(st.lists(NAMES, max_size=12))
def test_always_valid_unique_and_idempotent(names: list[str]) -> None:
    out = normalize_names(names)
    assert len(out) == len(names)
    assert len(set(out)) == len(out)
    for name in out:
        assert validate_identifier(name) == name
        assert len(name.encode()) <= 63
        assert name == name.lower()
    assert normalize_names(out) == out


@given(NAMES)
def test_one_name_idempotent(name: str) -> None:
    once = normalize_name(name)
    assert normalize_name(once) == once


def test_csv_header_normalized_and_contract_names_it(tmp_path: Path) -> None:
    path = tmp_path / "e.csv"
    path.write_bytes("Razão Social;CNPJ Básico;Nome Fantasia\nACME;123;Acme\n".encode("latin-1"))
    contract = Contract(
        name="e",
        table="e",
        pk=("cnpj_basico",),
        column_names="normalize",
    )
    contract = _with_csv(contract, delimiter=";", encoding="latin-1")
    reader = open_reader(path, contract, 100)
    assert reader.layout.columns == ("razao_social", "cnpj_basico", "nome_fantasia")
    [batch] = list(reader)
    assert batch.to_pylist() == [
        {"razao_social": "ACME", "cnpj_basico": "123", "nome_fantasia": "Acme"}
    ]


def test_strict_still_refuses_and_points_at_normalize(tmp_path: Path) -> None:
    path = tmp_path / "e.csv"
    path.write_text("Razão Social\nx\n")
    with pytest.raises(FileError, match="--column-names normalize"):
        open_reader(path, Contract(name="e", table="e", mode="append"), 100)


def test_parquet_names_normalized_and_selected(tmp_path: Path) -> None:
    path = tmp_path / "p.parquet"
    pq.write_table(pa.table({"Order ID": [1, 2], "Preço": [1.5, 2.5], "Nome": ["a", "b"]}), path)
    contract = Contract(
        name="p", table="p", pk=("order_id",), column_names="normalize",
        headers=("order_id", "preco"), preserve_types=True,
    )  # fmt: skip
    reader = open_reader(path, contract, 100)
    assert reader.layout.columns == ("order_id", "preco")
    assert reader.layout.pg_types == ("bigint", "double precision")
    assert [b.to_pylist() for b in reader] == [
        [{"order_id": 1, "preco": 1.5}, {"order_id": 2, "preco": 2.5}]
    ]


def _with_csv(contract: Contract, **options: object) -> Contract:
    from dataclasses import replace

    return replace(contract, csv=replace(contract.csv, **options))


# --- the plan -------------------------------------------------------------------------------

FILE = ("id", "name", "city", "score")
TYPES = ("text", "text", "text", "bigint")
TABLE_HAS = {"id": "text", "name": "text"}


def _contract(mode: str) -> Contract:
    return Contract(name="t", table="t", pk=("id",), schema_evolution=mode)  # type: ignore[arg-type]


def test_plan_add() -> None:
    p = plan(_contract("add"), FILE, TYPES, TABLE_HAS)
    assert (p.columns, p.adds, p.types) == (FILE, ("city", "score"), TYPES)


def test_plan_ignore() -> None:
    p = plan(_contract("ignore"), FILE, TYPES, TABLE_HAS)
    assert (p.file_columns, p.columns, p.dropped) == (("id", "name"), ("id", "name"), FILE[2:])


def test_plan_rescue() -> None:
    p = plan(_contract("rescue"), FILE, TYPES, TABLE_HAS)
    assert p.file_columns == FILE
    assert p.columns == ("id", "name", "_rescued_data")
    assert (p.rescued, p.adds) == (("city", "score"), ("_rescued_data",))


def test_plan_new_table_creates_every_column() -> None:
    assert plan(_contract("add"), FILE, TYPES, {}).changes_nothing
    p = plan(_contract("rescue"), FILE, TYPES, {})
    assert (p.columns, p.types[-1], p.adds) == ((*FILE, "_rescued_data"), "jsonb", ())


def test_plan_rescue_column_brought_by_the_file_is_refused() -> None:
    with pytest.raises(FileError, match="--rescue-column"):
        plan(_contract("rescue"), ("id", "_rescued_data"), ("text", "text"), TABLE_HAS)


def test_plan_add_refuses_a_wider_type_with_the_alter() -> None:
    with pytest.raises(FileError, match='ALTER COLUMN "score" TYPE bigint'):
        plan(_contract("add"), FILE, TYPES, {**TABLE_HAS, "score": "integer"}, typed=True)
    # Narrower or equal, or not typed by the file: the values decide, as before.
    plan(_contract("add"), FILE, TYPES, {**TABLE_HAS, "score": "numeric"}, typed=True)
    plan(_contract("add"), FILE, TYPES, {**TABLE_HAS, "score": "integer"}, typed=False)


def test_ndjson_keys_normalized(tmp_path: Path) -> None:
    path = tmp_path / "e.jsonl"
    path.write_text(
        '{"Razão Social": "ACME", "CNPJ Básico": 1, "nested": {"a": 1}}\n'
        '{"Razão Social": "B", "razão social": "dup"}\n'
    )
    contract = Contract(
        name="e", table="e", pk=("cnpj_basico",), column_names="normalize", file_type="ndjson"
    )
    reader = open_reader(path, contract, 100)
    assert reader.layout.columns == ("razao_social", "cnpj_basico", "nested", "razao_social_2")
    [batch] = list(reader)
    assert batch.to_pylist() == [
        {"razao_social": "ACME", "cnpj_basico": "1", "nested": '{"a": 1}', "razao_social_2": None},
        {"razao_social": "B", "cnpj_basico": None, "nested": None, "razao_social_2": "dup"},
    ]
