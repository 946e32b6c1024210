"""Defects a breaker found in settings, config and the subcommands (notes-breaker-settings)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ingestd.commands import check_config
from ingestd.db.dsn import mask_dsn

SECRET = "Zq9SecretPw"  # noqa: S105 - a test value


def _config(tmp_path: Path, body: str) -> Path:
    (tmp_path / "inbox").mkdir(exist_ok=True)
    path = tmp_path / "c.toml"
    path.write_text(f'inbox = "inbox"\n{body}\n[[contracts]]\ntable = "t"\nmode = "append"\n')
    return path


@pytest.mark.parametrize(
    "dsn",
    [
        f'["postgresql://u:{SECRET}@127.0.0.1:1/db"]',  # D9: a list, echoed by the type check
        f'{{password = "{SECRET}"}}',  # a table: no mask knows this form
        f'"postgresql://u:{SECRET}@x@127.0.0.1:port/db"',  # D10: an @ in it, and a bad port
    ],
)
def test_check_config_never_prints_a_password(
    tmp_path: Path, dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """D9/D10: a wrong dsn value is refused in one line that does not carry the password."""
    assert check_config([str(_config(tmp_path, f"dsn = {dsn}"))]) == 2
    out = capsys.readouterr()
    assert "dsn" in out.err.lower()
    assert SECRET not in out.err + out.out
    assert "Secret" not in out.err + out.out
    assert len(out.err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "text",
    [
        "postgresql://u:p@ss@host:5432/db",
        "postgresql://u:p@ss@w@rd@host/db",
        "cannot connect to postgres://u:p@ss@[::1]:5/db: refused",
        "postgresql://u:a@b@h/db and postgresql://v:c@d@h/db",
    ],
)
def test_mask_dsn_masks_a_password_with_an_at_sign_whole(text: str) -> None:
    """D10: the password runs to the last @ before the host."""
    masked = mask_dsn(text)
    for part in ("p@ss", "ss@", "rd@", "a@b", "c@d", "@w"):
        assert part not in masked
    assert "***@" in masked
