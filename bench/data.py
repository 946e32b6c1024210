"""Deterministic benchmark data, cached under bench/data/ (git-ignored).

The CSV files follow the Brazilian company-registry (Receita Federal CNPJ) dialect: `;`
delimiter, every field quoted, latin-1, no header row. The Parquet file holds the same
rows with real types. Row `i` is the same in every file that holds it, whatever the
file's size, so files built for different sizes agree with each other.
"""

from __future__ import annotations

import datetime as dt
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

DATA_DIR = Path(__file__).resolve().parent / "data"
FORMAT_VERSION = 1  # bump when the generator changes, so cached files are rebuilt

ENCODING = "latin-1"
DELIMITER = ";"

# (column, PostgreSQL type, Arrow type): the 11 columns of every file, in file order.
SCHEMA: tuple[tuple[str, str, pa.DataType], ...] = (
    ("cnpj_basico", "bigint", pa.int64()),
    ("razao_social", "text", pa.string()),
    ("natureza_juridica", "integer", pa.int32()),
    ("qualificacao_responsavel", "smallint", pa.int16()),
    ("capital_social", "numeric(18,2)", pa.decimal128(18, 2)),
    ("porte_empresa", "smallint", pa.int16()),
    ("ente_federativo", "text", pa.string()),
    ("data_inicio", "date", pa.date32()),
    ("uf", "text", pa.string()),
    ("municipio", "integer", pa.int32()),
    ("email", "text", pa.string()),
)
COLUMNS: tuple[str, ...] = tuple(name for name, _, _ in SCHEMA)
PK = "cnpj_basico"

_WORDS = (
    "COMÉRCIO", "SERVIÇOS", "ALIMENTAÇÃO", "CONSTRUÇÃO", "TRANSPORTES", "INDÚSTRIA",
    "JOSÉ", "JOÃO", "MARIA", "ANTÔNIO", "SÃO", "PAULO", "GONÇALVES", "ASSUNÇÃO",
    "DISTRIBUIDORA", "MERCADO", "PADARIA", "OFICINA", "CONSULTORIA", "AGROPECUÁRIA",
    "IRMÃOS", "FILHOS", "BRASIL", "NORDESTE", "CEARÁ", "PARANÁ", "GOIÁS", "LIMA",
)  # fmt: skip
_SUFFIXES = ("LTDA", "ME", "EIRELI", "S.A.", "EPP")
_NATUREZA = (2062, 2135, 2305, 2240, 1244, 3999, 2143, 2046)
_QUALIFICACAO = (49, 50, 65, 16, 5, 10)
_PORTE = (1, 3, 5)
_UF = ("SP", "RJ", "MG", "BA", "PR", "RS", "PE", "CE", "PA", "SC", "GO", "DF", "AM")
_ENTE = ("", "", "", "", "", "", "", "", "UNIÃO", "SÃO PAULO - SP")
_DOMAINS = ("gmail.com", "hotmail.com", "empresa.com.br", "uol.com.br", "yahoo.com.br")
_SEED = 20_240_808
_BLOCK = 10_000  # rows per seeded block: row i depends only on (seed, i // _BLOCK)


@dataclass(frozen=True)
class Row:
    """One company, as Python values (the Parquet writer's view)."""

    cnpj_basico: int
    razao_social: str
    natureza_juridica: int
    qualificacao_responsavel: int
    capital_cents: int
    porte_empresa: int
    ente_federativo: str
    data_inicio: int  # days since 1970-01-01
    uf: str
    municipio: int
    email: str


def rows(first_id: int, count: int) -> Iterator[Row]:
    """Rows with keys first_id .. first_id + count - 1, deterministic per key."""
    key = first_id
    end = first_id + count
    while key < end:
        block = key // _BLOCK
        rng = random.Random(_SEED * 1_000_003 + block)
        block_start = block * _BLOCK
        # Advance the block's generator to `key` so a row never depends on where a file starts.
        for k in range(block_start, min(end, block_start + _BLOCK)):
            row = _row(rng, k)
            if k >= key:
                yield row
        key = min(end, block_start + _BLOCK)


def _row(rng: random.Random, key: int) -> Row:
    words = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(3, 5)))
    name = f"{words} {rng.choice(_SUFFIXES)}"
    email = "" if rng.random() < 0.3 else f"contato{rng.randint(1, 9999)}@{rng.choice(_DOMAINS)}"
    return Row(
        cnpj_basico=key,
        razao_social=name,
        natureza_juridica=rng.choice(_NATUREZA),
        qualificacao_responsavel=rng.choice(_QUALIFICACAO),
        capital_cents=rng.randrange(0, 10**9),
        porte_empresa=rng.choice(_PORTE),
        ente_federativo=rng.choice(_ENTE),
        data_inicio=rng.randrange(-7_000, 19_000),
        uf=rng.choice(_UF),
        municipio=rng.randint(1000, 9999),
        email=email,
    )


_EPOCH_ORDINAL = 719_163  # date(1970, 1, 1).toordinal()


def _csv_line(r: Row) -> str:
    # date as YYYYMMDD (ISO 8601 basic), as the registry writes it; PostgreSQL reads it as is.
    day = dt.date.fromordinal(_EPOCH_ORDINAL + r.data_inicio).strftime("%Y%m%d")
    capital = f"{r.capital_cents // 100}.{r.capital_cents % 100:02d}"
    fields = (
        f"{r.cnpj_basico:08d}", r.razao_social, str(r.natureza_juridica),
        str(r.qualificacao_responsavel), capital, str(r.porte_empresa), r.ente_federativo,
        day, r.uf, str(r.municipio), r.email,
    )  # fmt: skip
    return ";".join(f'"{f}"' for f in fields) + "\n"


def _publish(tmp: Path, path: Path) -> Path:
    os.replace(tmp, path)
    return path


def csv_file(first_id: int, count: int, name: str | None = None, folder: Path = DATA_DIR) -> Path:
    """The CSV file of rows first_id.. (count rows), built once and cached."""
    path = folder / (name or f"companies_v{FORMAT_VERSION}_{first_id}_{count}.csv")
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name("." + path.name + ".tmp")
    with tmp.open("w", encoding=ENCODING, newline="") as out:
        chunk: list[str] = []
        for row in rows(first_id, count):
            chunk.append(_csv_line(row))
            if len(chunk) >= 20_000:
                out.write("".join(chunk))
                chunk.clear()
        out.write("".join(chunk))
    return _publish(tmp, path)


def dirty_csv(src: Path, every: int) -> tuple[Path, list[int]]:
    """A copy of csv_file(1, n) whose row every `every` (from every // 2 on) holds "x" for
    natureza_juridica, a value that does not cast; also the keys of those rows."""
    path = src.with_name(f"dirty{every}_{src.name}")
    with src.open(encoding=ENCODING, newline="") as lines:
        count = sum(1 for _ in lines)
    keys = [1 + i for i in range(every // 2, count, every)]
    if path.exists():
        return path, keys
    tmp = path.with_name("." + path.name + ".tmp")
    with (
        src.open(encoding=ENCODING, newline="") as lines,
        tmp.open("w", encoding=ENCODING, newline="") as out,
    ):
        for i, line in enumerate(lines):
            if i % every == every // 2:
                fields = line.split(";", 3)  # quoted fields; the first two hold no ';'
                line = ";".join([*fields[:2], '"x"', fields[3]])
            out.write(line)
    return _publish(tmp, path), keys


def parquet_file(first_id: int, count: int) -> Path:
    """The same rows as csv_file, typed, in a Parquet file (row groups of 100,000 rows)."""
    path = DATA_DIR / f"companies_v{FORMAT_VERSION}_{first_id}_{count}.parquet"
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name("." + path.name + ".tmp")
    schema = pa.schema([(name, arrow) for name, _, arrow in SCHEMA])
    with pq.ParquetWriter(str(tmp), schema) as writer:
        for start in range(first_id, first_id + count, 100_000):
            n = min(100_000, first_id + count - start)
            writer.write_table(_arrow_table(list(rows(start, n)), schema))
    return _publish(tmp, path)


def _arrow_table(batch: list[Row], schema: pa.Schema) -> pa.Table:
    columns = [
        [r.cnpj_basico for r in batch],
        [r.razao_social for r in batch],
        [r.natureza_juridica for r in batch],
        [r.qualificacao_responsavel for r in batch],
        [Decimal(r.capital_cents).scaleb(-2) for r in batch],
        [r.porte_empresa for r in batch],
        [r.ente_federativo for r in batch],
        [r.data_inicio for r in batch],
        [r.uf for r in batch],
        [r.municipio for r in batch],
        [r.email for r in batch],
    ]
    arrays = [
        pa.array(values, type=field.type) for values, field in zip(columns, schema, strict=True)
    ]
    return pa.Table.from_arrays(arrays, schema=schema)


def small_files(folder: Path, first_id: int, files: int, rows_each: int) -> list[Path]:
    """`files` CSV files of `rows_each` rows each, keys from first_id on, in `folder`."""
    key = first_id
    paths = []
    for i in range(files):
        paths.append(csv_file(key, rows_each, name=f"part_{i:05d}.csv", folder=folder))
        key += rows_each
    return paths


def small_file_set(first_id: int, files: int, rows_each: int) -> Path:
    """A cached folder of small files (see small_files)."""
    folder = DATA_DIR / f"small_v{FORMAT_VERSION}_{first_id}_{files}x{rows_each}"
    done = folder / ".complete"
    if not done.exists():
        small_files(folder, first_id, files, rows_each)
        done.touch()
    return folder


def table_ddl(table: str) -> str:
    """The typed target table, primary key on cnpj_basico."""
    cols = ", ".join(f"{name} {pg}" for name, pg, _ in SCHEMA)
    return f"CREATE TABLE {table} ({cols}, PRIMARY KEY ({PK}))"
