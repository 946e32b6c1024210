"""Issue 17's cases: the main data set as a .csv.zst, and as NDJSON (numbers as JSON
numbers), each loaded by ingestd into the typed table: compare with psql_copy of the
plain CSV. The files are built once from the cached CSV and rows, beside them."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pyarrow as pa

from bench import data
from bench.cases import (
    TARGET,
    Bench,
    Measurement,
    _csv_contract,
    _expect_rows,
    _expect_source_values,
    _fresh,
    _ingestd,
    _measured,
    _size,
)

_EPOCH_ORDINAL = 719_163  # date(1970, 1, 1).toordinal()


def zst_file(csv: Path) -> Path:
    """The CSV compressed with zstd (pyarrow's default level), built once."""
    path = csv.with_name(csv.name + ".zst")
    if path.exists():
        return path
    tmp = path.with_name("." + path.name + ".tmp")
    with csv.open("rb") as src, pa.CompressedOutputStream(str(tmp), "zstd") as out:
        while chunk := src.read(1 << 20):
            out.write(chunk)
    tmp.replace(path)
    return path


def _line(r: data.Row) -> str:
    day = dt.date.fromordinal(_EPOCH_ORDINAL + r.data_inicio).isoformat()
    capital = f"{r.capital_cents // 100}.{r.capital_cents % 100:02d}"  # a JSON number
    s = json.dumps
    return (
        f'{{"cnpj_basico": {r.cnpj_basico}, "razao_social": {s(r.razao_social)}, '
        f'"natureza_juridica": {r.natureza_juridica}, '
        f'"qualificacao_responsavel": {r.qualificacao_responsavel}, '
        f'"capital_social": {capital}, "porte_empresa": {r.porte_empresa}, '
        f'"ente_federativo": {s(r.ente_federativo)}, "data_inicio": "{day}", '
        f'"uf": {s(r.uf)}, "municipio": {r.municipio}, "email": {s(r.email)}}}\n'
    )


def ndjson_file(count: int) -> Path:
    """Rows 1..count as NDJSON (UTF-8), built once."""
    path = data.DATA_DIR / f"companies_v{data.FORMAT_VERSION}_1_{count}.jsonl"
    if path.exists():
        return path
    tmp = path.with_name("." + path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as out:
        chunk: list[str] = []
        for row in data.rows(1, count):
            chunk.append(_line(row))
            if len(chunk) >= 20_000:
                out.write("".join(chunk))
                chunk.clear()
        out.write("".join(chunk))
    tmp.replace(path)
    return path


def ingestd_csv_zst(b: Bench) -> Measurement:
    """ingestd --mode append of the CSV as .csv.zst (the Arrow path: no raw COPY of
    compressed bytes), one worker."""
    _fresh(b)
    path = zst_file(b.files.csv)
    args = _ingestd(b, *_csv_contract(TARGET, "append"), "--concurrency", "1", "--files", str(path))
    m = _measured(b, "ingestd_csv_zst", args, b.sizes.rows, _size(path))
    _expect_rows(b, TARGET, b.sizes.rows, m.case)
    _expect_source_values(b, m.case)
    return m


def ingestd_ndjson(b: Bench) -> Measurement:
    """ingestd --mode append of the same rows as NDJSON into the typed table, one worker
    (two passes over the file: keys, then rows)."""
    _fresh(b)
    path = ndjson_file(b.sizes.rows)
    args = _ingestd(
        b, "--table", TARGET, "--pk", data.PK, "--mode", "append", "--file-type", "ndjson",
        "--concurrency", "1", "--files", str(path),
    )  # fmt: skip
    m = _measured(b, "ingestd_ndjson", args, b.sizes.rows, _size(path))
    _expect_rows(b, TARGET, b.sizes.rows, m.case)
    _expect_source_values(b, m.case)
    return m


FORMAT_CASES = {"ingestd_csv_zst": ingestd_csv_zst, "ingestd_ndjson": ingestd_ndjson}
