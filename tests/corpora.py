"""Third-party test corpora, brought at test time from a package registry (never committed).

csv-spectrum (BSD-2-Clause) is published on npm as `csv-spectrum`; `npm pack` fetches the
tarball, which is unpacked once into a cache folder shared by every run on the machine.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

import pytest

CSV_SPECTRUM = "csv-spectrum@2.0.0"
_CACHE = Path(os.environ.get("INGESTD_CORPORA", Path.home() / ".cache" / "ingestd-corpora"))


def csv_spectrum() -> Path:
    """The csv-spectrum package folder (csvs/, json/, LICENSE); skips without npm."""
    given = os.environ.get("INGESTD_CSV_SPECTRUM")
    if given:
        return Path(given)
    folder = _CACHE / CSV_SPECTRUM.replace("@", "-")
    if (folder / "csvs").is_dir():
        return folder
    npm = shutil.which("npm")
    if npm is None:
        pytest.skip(
            "csv-spectrum comes from npm (apt-get install npm), or set INGESTD_CSV_SPECTRUM"
        )
    with tempfile.TemporaryDirectory() as scratch:
        packed = subprocess.run(
            [npm, "pack", CSV_SPECTRUM, "--silent", "--pack-destination", scratch],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        tarballs = list(Path(scratch).glob("*.tgz"))
        if packed.returncode != 0 or not tarballs:
            pytest.skip(f"npm pack {CSV_SPECTRUM} failed: {packed.stderr.strip()[:200]}")
        unpacked = Path(scratch) / "unpacked"
        with tarfile.open(tarballs[0]) as tar:
            tar.extractall(unpacked, filter="data")
        folder.parent.mkdir(parents=True, exist_ok=True)
        # npm tarballs hold one folder, package/; the rename makes the cache appear whole.
        shutil.move(str(unpacked / "package"), str(folder))
    return folder
