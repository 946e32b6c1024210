"""The Citus suite's cluster: started once per session from the private build, or skipped.

`make test-citus` builds Citus (tests/citus/build.sh) and sets INGESTD_CITUS_BIN; anywhere
else these tests skip, saying how to run them. Each test gets a schema of its own on the
coordinator (search_path in its DSN), so ingestd's manifest and targets start empty.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.citus.cluster import Cluster
from tests.pg import Db


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    bindir = os.environ.get("INGESTD_CITUS_BIN")
    if not bindir or not (Path(bindir) / "postgres").exists():
        pytest.skip("Citus is not built here: run `make test-citus` (it builds it once)")
    # The nodes run as postgres: a world-readable scratch folder, not pytest's own (0700).
    root = Path(tempfile.mkdtemp(prefix="ingestd-citus-"))
    root.chmod(0o755)
    started = Cluster(Path(bindir), root / "nodes")
    try:
        yield started.start()
    finally:
        started.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def citus_dsn(cluster: Cluster) -> Iterator[str]:
    """The coordinator, with a fresh schema first on search_path (dropped afterwards)."""
    schema = "s_" + uuid.uuid4().hex[:10]
    admin = Db(cluster.coordinator.dsn)
    admin.execute(f"CREATE SCHEMA {schema}")
    try:
        yield f"{cluster.coordinator.dsn}?search_path={schema}"
    finally:
        admin.execute(f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture
def cdb(citus_dsn: str) -> Db:
    return Db(citus_dsn)
