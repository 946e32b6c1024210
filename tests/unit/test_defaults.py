"""The default concurrency: min(cores, free connection slots / 2, 8), pool of
concurrency + 2."""

from __future__ import annotations

import pytest

from ingestd.defaults import choose, server_is_local, too_few_connections


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
    ("limit", "concurrency"),
    [(None, 8), (100, 8), (6, 4), (3, 1), (2, 1), (0, 1)],
)
def test_a_connection_limit_leaves_room_for_the_pool(limit: int | None, concurrency: int) -> None:
    chosen = choose(16, "client", 100, 3, limit, "role app")
    assert chosen.concurrency == concurrency and chosen.pool_size == concurrency + 2
    if limit is not None and limit - 2 < 8:
        assert "CONNECTION LIMIT" in chosen.reason and "role app" in chosen.reason


def test_a_limit_below_the_smallest_pool_is_said_in_one_line() -> None:
    assert too_few_connections(None, "", 3) == too_few_connections(3, "role app", 3) == ""
    line = too_few_connections(2, "role app", 3)
    assert "CONNECTION LIMIT of role app is 2" in line and "needs 3" in line
    assert "\n" not in line


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
