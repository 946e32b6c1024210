"""Peak memory is the process's own: a service (or a measured test child) started by a
large parent does not report the parent's peak, which Linux carries in ru_maxrss."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

MB = 1 << 20
ROOT = Path(__file__).resolve().parents[2]

# A parent that grows to 400 MB and then starts the measured child.
_FAT_PARENT = """
import subprocess, sys
sys.path.insert(0, sys.argv[1])
ballast = bytearray(400 << 20)
for i in range(0, len(ballast), 4096):
    ballast[i] = 1
if sys.argv[2] == "metric":
    code = "from ingestd.metrics import peak_rss_bytes; print(peak_rss_bytes())"
    print(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip())
else:
    from tests.helpers import run_measuring_peak
    print(run_measuring_peak(["--version"], timeout=60))
"""


@pytest.mark.parametrize("what", ["metric", "test helper"])
def test_a_child_of_a_400_mb_parent_reports_its_own_peak(what: str) -> None:
    out = subprocess.run(
        [sys.executable, "-c", _FAT_PARENT, str(ROOT), "metric" if what == "metric" else "helper"],
        capture_output=True, text=True, check=True, timeout=120, cwd=ROOT,
    )  # fmt: skip
    peak = int(out.stdout.split()[-1])
    assert 5 * MB < peak < 200 * MB, peak
