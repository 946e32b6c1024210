"""`ingestd status` for a role that may not read the manifest: one line, exit 2."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.helpers import write
from tests.integration.test_least_privilege import as_role
from tests.pg import Db


@pytest.fixture
def reader(db: Db) -> Iterator[str]:
    name = "ingestd_s_" + uuid.uuid4().hex[:10]
    db.execute(f"CREATE ROLE \"{name}\" LOGIN PASSWORD 'pw'")
    yield name
    db.execute(f'DROP OWNED BY "{name}"')
    db.execute(f'DROP ROLE "{name}"')


def test_status_without_a_grant_on_the_manifest_is_one_line(
    cli, dsn: str, db: Db, reader: str, tmp_path: Path
) -> None:
    write(tmp_path / "inbox" / "a.csv", "id\n1\n")
    assert (
        cli("--once", "--inbox", tmp_path / "inbox", "--table", "t", "--mode", "append").code == 0
    )
    db.execute(f'REVOKE ALL ON ingestion_manifest FROM "{reader}"')
    result = run_cli(["status", "--dsn", as_role(dsn, reader, "pw")])
    assert result.code == 2, result.err
    assert result.err.startswith("ingestd status: error: permission denied for table")
    assert len(result.err.strip().splitlines()) == 1 and "Traceback" not in result.err
    assert "crashed" not in result.err and "pw@" not in result.err
