"""The metrics endpoint: loopback by default, GET/HEAD on three paths, nothing leaks, no crash."""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from ingestd.config import resolve
from ingestd.settings import DEFAULT_METRICS_ADDR, Settings
from tests.conftest import write
from tests.daemon import Daemon, wait_for

NAME = "zz-Distinctive-Qx7Name.csv"


def raw(port: int, payload: bytes, timeout_s: float = 10.0) -> bytes:
    """Send raw bytes, return whatever comes back before the server closes (b'' if nothing)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as s:
        try:
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)
        except OSError:
            return b""  # the server hung up first (e.g. on a huge header): fine
        chunks = []
        try:
            while chunk := s.recv(65536):
                chunks.append(chunk)
        except OSError:
            pass
    return b"".join(chunks)


def test_endpoint_binds_loopback_by_default(tmp_path: Path) -> None:
    assert DEFAULT_METRICS_ADDR.startswith("127.0.0.1:")
    assert Settings(contracts=()).metrics_addr == ("127.0.0.1", 9108)
    settings = resolve({"inbox": str(tmp_path), "table": "t", "mode": "append"}, env={})
    assert settings.metrics_addr == ("127.0.0.1", 9108)


@pytest.fixture
def daemon(daemons: Callable[..., Daemon], tmp_path: Path) -> Daemon:
    config = 'inbox = "inbox"\nsettle_s = 0.1\n[[contracts]]\npattern = "*.csv"\ntable = "t"\n'
    config += 'pk = ["id"]\n'
    (tmp_path / "inbox").mkdir()
    return daemons(config, ready=False)


def test_pages_leak_no_file_name_dsn_or_trace(daemon: Daemon, dsn: str, tmp_path: Path) -> None:
    daemon.wait_ready()
    write(tmp_path / "inbox" / NAME, "id,v\n1,a\n2\n")  # bad: a short row
    wait_for(lambda: (tmp_path / "failed" / NAME).exists(), 30, "the bad file failed")
    host_dir = dict(p.split("=", 1) for p in urlsplit(dsn).query.split("&") if "=" in p)["host"]
    secrets = [NAME, "Qx7Name", dsn, urlsplit(dsn).path.strip("/"), host_dir, "Traceback"]
    pages = {p: daemon.get(p) for p in ("/metrics", "/healthz", "/readyz", "/x", f"/{NAME}")}
    assert pages["/metrics"][0] == 200
    assert 'status="failed"' in pages["/metrics"][1]  # the failure is counted...
    assert pages["/healthz"] == (200, "ok\n")
    assert pages["/readyz"] == (200, "ready\n")
    assert pages["/x"][0] == 404 and pages[f"/{NAME}"][0] == 404
    extra = {
        "post": raw(daemon.port, b"POST /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
        "delete": raw(daemon.port, b"DELETE /healthz HTTP/1.1\r\n\r\n"),
        "traversal": raw(daemon.port, b"GET /../../etc/passwd HTTP/1.1\r\n\r\n"),
        "head": raw(daemon.port, b"HEAD /metrics HTTP/1.1\r\n\r\n"),
    }
    assert extra["post"].startswith(b"HTTP/1.1 405") and extra["delete"].startswith(b"HTTP/1.1 405")
    assert extra["traversal"].startswith(b"HTTP/1.1 404")
    assert extra["head"].startswith(b"HTTP/1.1 200") and extra["head"].endswith(b"\r\n\r\n")
    texts = [body for _, body in pages.values()] + [b.decode("latin-1") for b in extra.values()]
    for text in texts:
        for secret in secrets:
            assert secret not in text, f"{secret!r} leaked:\n{text[:2000]}"


@pytest.mark.parametrize(
    "payload",
    [
        b"\x00\xff\xfe garbage \x01\x02\r\n\r\n",
        b"GET /metrics HTTP/1.1\r\nX-Big: " + b"a" * 200_000 + b"\r\n\r\n",
        b"GET /metrics HTTP/1.1\r\nX-Big: " + b"a" * 200_000,  # never terminated
        b"GET /metrics",  # hangs up mid-request
        b"\r\n\r\n",
        b"GET\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(256)) * 4,  # TLS hello
    ],
    ids=["binary", "huge-header", "huge-unterminated", "truncated", "empty", "no-path", "tls"],
)
def test_malformed_requests_do_not_stop_the_daemon(daemon: Daemon, payload: bytes) -> None:
    daemon.wait_ready()
    for _ in range(3):
        answer = raw(daemon.port, payload)
        assert b"Traceback" not in answer
    assert daemon.proc.poll() is None
    assert daemon.get("/healthz") == (200, "ok\n")
    assert daemon.get("/metrics")[0] == 200
    assert "Traceback" not in daemon.logs_text()
