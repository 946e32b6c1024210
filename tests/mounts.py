"""Real hostile file systems for tests: a tiny tmpfs, a read-only mount, an immutable folder.

Each needs root (mount, chattr); without it the test is skipped with the reason.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, check=False, timeout=30)


def _need(ok: bool, what: str, detail: str = "") -> None:
    if not ok:
        pytest.skip(f"cannot {what} here (needs root): {detail.strip()}")


@contextmanager
def tmpfs(folder: Path, size: str = "64k") -> Iterator[Path]:
    """A tmpfs of `size` mounted on folder (created), unmounted afterwards."""
    folder.mkdir(parents=True, exist_ok=True)
    _need(os.geteuid() == 0 and shutil.which("mount") is not None, "mount a tmpfs")
    done = _run("mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder))
    _need(done.returncode == 0, "mount a tmpfs", done.stderr)
    try:
        yield folder
    finally:
        _run("umount", "-l", str(folder))


def remount(folder: Path, mode: str) -> None:
    """Remount a mount point read-only ("ro") or read-write ("rw")."""
    done = _run("mount", "-o", f"remount,{mode}", str(folder))
    assert done.returncode == 0, done.stderr


@contextmanager
def read_only_bind(folder: Path) -> Iterator[Path]:
    """folder (created) bind-mounted onto itself read-only; back to normal afterwards."""
    folder.mkdir(parents=True, exist_ok=True)
    _need(os.geteuid() == 0 and shutil.which("mount") is not None, "bind-mount")
    done = _run("mount", "--bind", str(folder), str(folder))
    _need(done.returncode == 0, "bind-mount", done.stderr)
    try:
        remount_bind(folder, "ro")
        yield folder
    finally:
        _run("umount", "-l", str(folder))


def remount_bind(folder: Path, mode: str) -> None:
    """Make a bind mount read-only ("ro") or writable again ("rw")."""
    done = _run("mount", "-o", f"remount,bind,{mode}", str(folder))
    assert done.returncode == 0, done.stderr


@contextmanager
def immutable(folder: Path) -> Iterator[Path]:
    """folder (created) with chattr +i: nothing can be added to it, not even by root."""
    folder.mkdir(parents=True, exist_ok=True)
    _need(shutil.which("chattr") is not None, "chattr", "chattr not installed")
    done = _run("chattr", "+i", str(folder))
    _need(done.returncode == 0, "chattr +i", done.stderr)
    try:
        yield folder
    finally:
        set_immutable(folder, False)


def set_immutable(folder: Path, on: bool) -> None:
    """chattr +i / -i."""
    done = _run("chattr", "+i" if on else "-i", str(folder))
    assert done.returncode == 0, done.stderr
