"""The default concurrency: min(cores, free connection slots / 2, 8), pool of
concurrency + 2."""

from __future__ import annotations

import pytest

from ingestd.defaults import choose, server_is_local


@pytest.mark.parametrize(
    ("cores", "max_connections", "reserved", "concurrency"),
    [
        (2, 100, 3, 2),  # cores bound it
        (16, 14, 3, 5),  # connection slots bound it: (14 - 3) // 2
        (64, 1000, 3, 8),  # at most 8 by default
        (8, 3, 3, 1),  # never below one
        (0, None, 0, 1),
    ],
)
def test_concurrency_is_the_smaller_of_cores_and_half_the_slots(
    cores: int, max_connections: int | None, reserved: int, concurrency: int
) -> None:
    chosen = choose(cores, "client", max_connections, reserved)
    assert chosen.concurrency == concurrency
    assert chosen.pool_size == concurrency + 2


def test_the_reason_names_what_bound_it() -> None:
    assert "connection slots" in choose(16, "client", 14, 3).reason
    assert choose(6, "server (same host)", 100, 3).reason == "6 cores (server (same host))"
    assert choose(64, "client", 1000, 3).reason == "at most 8 by default (64 cores, client)"


@pytest.mark.parametrize(
    ("dsn", "local"),
    [
        ("postgresql://u@/db?host=/tmp/pg", True),
        ("postgresql://u@localhost:5432/db", True),
        ("postgresql://u@127.0.0.1/db", True),
        ("postgresql://u@db.example.com/db", False),
        ("postgresql://u@[::1]:5432/db", True),
    ],
)
def test_a_server_on_this_machine_shares_its_cores(dsn: str, local: bool) -> None:
    assert server_is_local(dsn) is local
