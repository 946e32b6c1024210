"""Fault tests get a server of their own, so stopping it cannot disturb other tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fault.server import ControlledServer
from tests.pg import Db, fresh_database


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[ControlledServer]:
    server = ControlledServer(tmp_path)
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def own_dsn(own_server: ControlledServer) -> Iterator[str]:
    with fresh_database(own_server.dsn) as dsn:
        yield dsn


@pytest.fixture
def own_db(own_dsn: str) -> Db:
    return Db(own_dsn)
