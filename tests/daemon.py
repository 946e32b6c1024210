"""Run ingestd as a real daemon subprocess and drive it from a test."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.helpers import log_events


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(check: Callable[[], Any], timeout_s: float = 20.0, what: str = "condition") -> Any:
    """Poll until check() is truthy; fail the test with `what` after the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.05)


class Daemon:
    """An `ingestd` process with a config file, a metrics port and captured output."""

    def __init__(
        self,
        workdir: Path,
        dsn: str,
        config: str,
        extra_args: tuple[str, ...] = (),
        prefix: tuple[str, ...] = (),  # a command to start it through (e.g. setpriv)
    ):
        self.workdir = workdir
        self.port = free_port()
        self.config = workdir / "ingestd.toml"
        self.config.write_text(config)
        self.log_path = workdir / f"ingestd-{time.monotonic_ns()}.log"
        self.out_path = self.log_path.with_suffix(".out")
        args = [
            *prefix, sys.executable, "-m", "ingestd", "--config", str(self.config), "--dsn", dsn,
            "--metrics-addr", f"127.0.0.1:{self.port}", "--log-format", "json", *extra_args,
        ]  # fmt: skip
        self._log = self.log_path.open("wb")
        self._out = self.out_path.open("wb")
        self.proc = subprocess.Popen(
            args, cwd=workdir, stdout=self._out, stderr=self._log, env={**os.environ}
        )

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=2) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()
        except OSError:
            return 0, ""

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        wait_for(lambda: self.get("/readyz")[0] == 200 or self.proc.poll() is not None,
                 timeout_s, "readyz")  # fmt: skip
        assert self.proc.poll() is None, self.logs_text()

    def metric(self, name: str, **labels: str) -> float:
        """Value of one sample on /metrics (0 if absent)."""
        _, text = self.get("/metrics")
        want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        for line in text.splitlines():
            if line.startswith("#"):
                continue
            key, _, value = line.rpartition(" ")
            metric, _, rest = key.partition("{")
            got = ",".join(sorted(rest.rstrip("}").split(","))) if rest else ""
            if metric == name and got == want:
                return float(value)
        return 0.0

    def signal(self, sig: int = signal.SIGTERM) -> None:
        self.proc.send_signal(sig)

    def stop(self, timeout_s: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout_s)
        finally:
            self._log.close()
            self._out.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._log.close()
        self._out.close()

    def logs_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        return log_events(self.logs_text(), name)
