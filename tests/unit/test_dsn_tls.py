"""TLS settings travel in the DSN untouched, as asyncpg (libpq-compatible) reads them."""

from __future__ import annotations

import inspect
import ssl
from pathlib import Path

import pytest
from asyncpg import connect_utils

from ingestd.config import resolve
from ingestd.db.dsn import check_dsn


def parse(dsn: str) -> tuple[list[object], object]:
    """asyncpg's own parsing of a DSN into addresses and connection parameters."""
    names = inspect.signature(connect_utils._parse_connect_dsn_and_args).parameters
    kwargs: dict[str, object] = {name: None for name in names}
    kwargs["dsn"] = dsn
    addrs, params = connect_utils._parse_connect_dsn_and_args(**kwargs)
    return list(addrs), params


@pytest.fixture
def ca_file() -> str:
    path = ssl.get_default_verify_paths().cafile
    if not path or not Path(path).exists():
        pytest.skip("no CA bundle on this machine")
    return path


@pytest.mark.parametrize(
    ("mode", "hostname_checked"), [("require", False), ("verify-ca", False), ("verify-full", True)]
)
def test_sslmode_and_sslrootcert_are_understood(
    ca_file: str, tmp_path: Path, mode: str, hostname_checked: bool
) -> None:
    dsn = f"postgresql://u:pw@db.example.com:6432/app?sslmode={mode}&sslrootcert={ca_file}"
    flags = {"dsn": dsn, "inbox": str(tmp_path), "table": "t", "mode": "append"}
    settings = resolve(flags, env={})
    assert settings.dsn == dsn  # ingestd passes the DSN through unchanged
    addrs, params = parse(settings.dsn or "")
    assert addrs == [("db.example.com", 6432)]
    context = params.ssl  # type: ignore[attr-defined]
    assert isinstance(context, ssl.SSLContext)
    # With a root certificate, even `require` verifies the server's chain (as libpq does).
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname is hostname_checked


def test_sslmode_disable_means_no_tls() -> None:
    _, params = parse("postgresql://u@h/db?sslmode=disable")
    assert not params.ssl  # type: ignore[attr-defined]


def test_a_missing_root_certificate_is_an_error_not_a_silent_downgrade() -> None:
    with pytest.raises(OSError):
        parse("postgresql://u@h/db?sslmode=verify-full&sslrootcert=/nonexistent/root.crt")


@pytest.mark.parametrize(
    "dsn",
    [
        "postgresql://u:S3cr3t@h:notaport/db",
        "postgresql://u:S3cr3t@h:99999/db",
        "postgres://u:S3cr3t@[::1/db",
    ],
)
def test_a_malformed_url_dsn_is_refused_without_echoing_it(dsn: str) -> None:
    with pytest.raises(ValueError, match="not a valid PostgreSQL URL") as exc:
        check_dsn(dsn)
    assert "S3cr3t" not in str(exc.value)


def test_check_dsn_accepts_url_dsns() -> None:
    for dsn in ("postgresql://u:p@h:5432/db?sslmode=require", "postgres:///db?host=/run/pg"):
        assert check_dsn(dsn) == dsn


def test_check_dsn_refuses_key_value_dsns_without_echoing_them() -> None:
    # asyncpg takes URLs only: say so up front instead of failing at connect time.
    with pytest.raises(ValueError, match="must be a URL") as exc:
        check_dsn("host=h dbname=d password=S3cr3t")
    assert "S3cr3t" not in str(exc.value)
