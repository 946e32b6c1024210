"""The default concurrency: min(max(cores, 4), free connection slots / 2), pool of
concurrency + 2."""

from __future__ import annotations

import pytest

from ingestd.defaults import choose, server_is_local


@pytest.mark.parametrize(
    ("cores", "max_connections", "reserved", "concurrency"),
    [
        (2, 100, 3, 4),  # few cores: the floor of 4 workers (measured faster than 2)
        (6, 100, 3, 6),  # cores bound it
        (16, 20, 3, 8),  # connection slots bound it: (20 - 3) // 2
        (8, 3, 3, 1),  # never below one
        (0, None, 0, 4),
    ],
)
def test_concurrency_is_the_smaller_of_cores_and_half_the_slots(
    cores: int, max_connections: int | None, reserved: int, concurrency: int
) -> None:
    chosen = choose(cores, "client", max_connections, reserved)
    assert chosen.concurrency == concurrency
    assert chosen.pool_size == concurrency + 2


def test_the_reason_names_what_bound_it() -> None:
    assert "connection slots" in choose(16, "client", 20, 3).reason
    assert choose(6, "server (same host)", 100, 3).reason == "6 cores (server (same host))"
    assert choose(2, "client", 100, 3).reason == "at least 4 workers (2 cores, client)"


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
