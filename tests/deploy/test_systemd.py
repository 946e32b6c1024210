"""deploy/systemd/ingestd.service: every required directive, and systemd's own verdict.

`systemd-analyze verify` and `systemd-analyze security --offline` run when systemd-analyze
is installed (Debian's systemd package); the directive checks always run.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ingestd.config import resolve
from tests.deploy.helpers import DEPLOY

UNIT = DEPLOY / "systemd" / "ingestd.service"
EXEC = "/usr/local/bin/ingestd"

REQUIRED = {
    "Service": {
        "Type": "simple",
        "ExecStart": f"{EXEC} --config /etc/ingestd/ingestd.toml",
        "User": "ingestd",
        "Group": "ingestd",
        "Restart": "on-failure",
        "RestartSec": "5",
        "KillSignal": "SIGTERM",
        "TimeoutStopSec": "45",
        "EnvironmentFile": "-/etc/ingestd/env",
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
        "ProtectControlGroups": "yes",
        "RestrictSUIDSGID": "yes",
        "LockPersonality": "yes",
        "ReadWritePaths": "/var/lib/ingestd",
        "CapabilityBoundingSet": "",
        "LoadCredential": "db_password:/etc/ingestd/db_password",
        "Environment": "INGESTD_PASSWORD_FILE=%d/db_password",
    },
    "Install": {"WantedBy": "multi-user.target"},
}

needs_systemd_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None,
    reason="systemd-analyze not installed (Debian: apt-get install systemd)",
)


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """Sections -> key -> every value given (systemd units may repeat keys)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"directive outside a section: {line}"
        assert "=" in line and not line.endswith("\\"), f"unexpected line: {line}"
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def test_required_directives() -> None:
    unit = parse_unit(UNIT.read_text())
    for section, directives in REQUIRED.items():
        for key, want in directives.items():
            assert want in unit[section].get(key, []), f"[{section}] {key}={want} missing"
    assert unit["Unit"]["Description"]


def test_stop_timeout_exceeds_the_shutdown_grace() -> None:
    unit = parse_unit(UNIT.read_text())
    grace = resolve({"table": "t", "pk": "id", "inbox": "in"}, env={}).shutdown_grace_s
    assert int(unit["Service"]["TimeoutStopSec"][-1]) > grace


def _checkable_copy(tmp_path: Path) -> Path:
    """The unit, with ExecStart pointing at an installed ingestd if /usr/local/bin has none:
    verify insists that the binary exists, which is the installer's job, not the unit's."""
    text = UNIT.read_text()
    if not Path(EXEC).exists():
        installed = shutil.which("ingestd") or str(Path(sys.executable).parent / "ingestd")
        assert Path(installed).exists()
        text = text.replace(EXEC, installed)
    copy = tmp_path / "ingestd.service"
    copy.write_text(text)
    return copy


@needs_systemd_analyze
def test_systemd_analyze_verify(tmp_path: Path) -> None:
    unit = _checkable_copy(tmp_path)
    done = subprocess.run(
        ["systemd-analyze", "verify", unit.name],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    # verify exits 0 on unknown keys and bad values (it only warns): any output is a failure.
    output = (done.stdout + done.stderr).strip()
    assert done.returncode == 0 and not output, output


@needs_systemd_analyze
def test_systemd_analyze_security_exposure_is_low(tmp_path: Path) -> None:
    unit = _checkable_copy(tmp_path)
    done = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--threshold=25", "--no-pager", unit.name],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    overall = [ln for ln in done.stdout.splitlines() if "Overall exposure level" in ln]
    assert done.returncode == 0, "\n".join(overall) or done.stdout + done.stderr
