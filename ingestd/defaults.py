"""Defaults from the machine and the server when the user sets none: concurrency about
min(cores, max_connections / 2), at most 8, a pool of concurrency + 2 (the original
design's rule)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

LOCAL_HOSTS = frozenset({"", "localhost", "127.0.0.1", "::1"})
POOL_EXTRA = 2  # claims, leases and health checks beside one connection per worker
# At most this many by default: beyond it the server, not the client, is the bottleneck
# (helper speed's measurements: on 2 cores, 2 workers loaded a 1 M-row CSV in 1.06x psql's
# time, 4 workers in 1.82x; small files: 28 vs 31 files/s, within noise).
MAX_DEFAULT = 8


@dataclass(frozen=True)
class Chosen:
    """A concurrency chosen for this run, and why (the defaults_chosen log line)."""

    concurrency: int
    pool_size: int
    cores: int
    cores_of: str  # "server (same host)" or "client"
    max_connections: int | None
    reason: str


def client_cores() -> int:
    """CPUs this process may run on (a container's or taskset's limit, not the host's)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def server_is_local(dsn: str) -> bool:
    """True when the server runs on this machine (a Unix socket, or a loopback address):
    then this machine's cores are the server's."""
    parts = urlsplit(dsn)
    hosts = parse_qs(parts.query).get("host", [])
    host = hosts[0] if hosts else (parts.hostname or "")
    return host.startswith("/") or host in LOCAL_HOSTS


def choose(
    cores: int,
    cores_of: str,
    max_connections: int | None,
    reserved: int = 0,
    conn_limit: int | None = None,
    limited_by: str = "",
) -> Chosen:
    """concurrency = min(cores, free connection slots / 2, MAX_DEFAULT, the role's or
    database's CONNECTION LIMIT - POOL_EXTRA), at least 1."""
    concurrency = max(1, min(cores, MAX_DEFAULT))
    reason = f"{cores} cores ({cores_of})"
    if cores > MAX_DEFAULT:
        reason = f"at most {MAX_DEFAULT} by default ({cores} cores, {cores_of})"
    if max_connections is not None:
        half = max(1, (max_connections - reserved) // 2)
        if half < concurrency:
            concurrency = half
            reason = (
                f"half the server's {max_connections - reserved} connection slots "
                f"(fewer than the {cores} cores, {cores_of})"
            )
    if conn_limit is not None and conn_limit - POOL_EXTRA < concurrency:
        concurrency = max(1, conn_limit - POOL_EXTRA)
        reason = f"the CONNECTION LIMIT {conn_limit} of {limited_by} (pool = concurrency + 2)"
    return Chosen(concurrency, concurrency + POOL_EXTRA, cores, cores_of, max_connections, reason)


def too_few_connections(conn_limit: int | None, limited_by: str, pool: int) -> str:
    """The one line saying a CONNECTION LIMIT cannot hold the pool ('' when it can)."""
    if conn_limit is None or conn_limit >= pool:
        return ""
    return (
        f"the CONNECTION LIMIT of {limited_by} is {conn_limit}, and ingestd needs {pool} "
        f"connections (concurrency {pool - POOL_EXTRA} + {POOL_EXTRA} for claims and health "
        f"checks): raise it (ALTER ROLE / ALTER DATABASE ... CONNECTION LIMIT {pool}) or "
        "lower concurrency"
    )
