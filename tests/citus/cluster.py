"""A Citus cluster on loopback for tests: a coordinator and two workers in a scratch folder.

The binaries are the private installation tests/citus/build.sh makes (INGESTD_CITUS_BIN).
PostgreSQL refuses to run as root, so the nodes run as `postgres` when the tests are root.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg

from tests.daemon import free_port
from tests.pg import run

CONF = """
shared_preload_libraries = 'citus'
listen_addresses = '127.0.0.1'
port = {port}
unix_socket_directories = '{sockets}'
fsync = off
synchronous_commit = off
full_page_writes = off
max_connections = 200
max_prepared_transactions = 200
citus.shard_count = 8
citus.enable_statistics_collection = off
log_min_messages = warning
"""


def _user() -> str | None:
    """The user the nodes run as: postgres when the tests are root, else the caller."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        return None
    return "postgres"


@dataclass
class Node:
    name: str
    data: Path
    port: int
    log: Path

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"


@dataclass
class Cluster:
    """Start with start(), stop with stop(); `coordinator.dsn` is where ingestd connects."""

    bindir: Path
    root: Path
    nodes: list[Node] = field(default_factory=list)

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        user = _user()
        cmd = [*(["runuser", "-u", user, "--"] if user else []), *args]
        return subprocess.run(cmd, capture_output=True, text=True, check=check, timeout=120)

    def _ctl(self, node: Node, *args: str, check: bool = True) -> None:
        done = self._run(
            str(self.bindir / "pg_ctl"), "-D", str(node.data), "-l", str(node.log), "-w",
            "-t", "60", *args, check=False,
        )  # fmt: skip
        if check and done.returncode != 0:
            log = node.log.read_text(errors="replace")[-2000:] if node.log.exists() else ""
            raise RuntimeError(f"pg_ctl {' '.join(args)} {node.name}: {done.stderr}\n{log}")

    def start(self) -> Cluster:
        self.root.mkdir(parents=True, exist_ok=True)
        sockets = self.root / "sockets"
        sockets.mkdir(exist_ok=True)
        user = _user()
        for name in ("coordinator", "worker1", "worker2"):
            node = Node(name, self.root / name, free_port(), self.root / f"{name}.log")
            node.data.mkdir()
            if user:
                shutil.chown(self.root, user)
                shutil.chown(sockets, user)
                shutil.chown(node.data, user)
            self._run(
                str(self.bindir / "initdb"), "-D", str(node.data), "-U", "postgres",
                "--auth=trust", "-E", "UTF8", "--no-sync",
            )  # fmt: skip
            with (node.data / "postgresql.conf").open("a") as conf:
                conf.write(CONF.format(port=node.port, sockets=sockets))
            if user:
                node.log.touch()
                shutil.chown(node.log, user)
            self._ctl(node, "start")
            self.nodes.append(node)
        for node in self.nodes:
            run(_execute(node.dsn, "CREATE EXTENSION IF NOT EXISTS citus"))
        head = self.coordinator
        run(_execute(head.dsn, f"SELECT citus_set_coordinator_host('127.0.0.1', {head.port})"))
        for worker in self.workers:
            run(_execute(head.dsn, f"SELECT citus_add_node('127.0.0.1', {worker.port})"))
        return self

    @property
    def coordinator(self) -> Node:
        return self.nodes[0]

    @property
    def workers(self) -> list[Node]:
        return self.nodes[1:]

    def restart(self, node: Node, mode: str = "fast") -> None:
        """Stop a node (fast: sessions ended; immediate: as a crash) and start it again."""
        self._ctl(node, "-m", mode, "stop")
        self._ctl(node, "start")

    def stop(self) -> None:
        for node in reversed(self.nodes):
            self._ctl(node, "-m", "immediate", "stop", check=False)
        self.nodes.clear()


async def _execute(dsn: str, statement: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()
