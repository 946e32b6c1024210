"""Move finished files out of the inbox: done/ (dated) on success, failed/ plus a sidecar."""

from __future__ import annotations

import datetime as dt
import errno
import json
import os
import shutil
from pathlib import Path, PurePosixPath
from typing import Any


def _free_name(path: Path) -> Path:
    # A clash never overwrites: a.csv, a.1.csv, a.2.csv ...
    if not path.exists():
        return path
    stem, suffix = path.name.split(".", 1) if "." in path.name else (path.name, "")
    for n in range(1, 100_000):
        candidate = path.with_name(f"{stem}.{n}.{suffix}" if suffix else f"{stem}.{n}")
        if not candidate.exists():
            return candidate
    raise FileExistsError(path)


def _move(src: Path, dest: Path) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(100):
        dest = _free_name(dest)
        try:
            # link + unlink never replaces a file that appeared since _free_name looked
            # (rename would, silently).
            os.link(src, dest, follow_symlinks=False)
        except FileExistsError:
            continue
        except FileNotFoundError:
            raise  # the source is gone (moved by someone else): nothing to move
        except OSError:
            shutil.move(str(src), str(dest))  # another filesystem (or no hard links)
            return dest
        os.unlink(src)
        return dest
    raise FileExistsError(dest)


def _inside(folder: Path, name: PurePosixPath) -> Path:
    # A name is placed under the folder, never beside or above it (`..`, absolute names).
    dest = folder / Path(*name.parts)
    if (
        name.is_absolute()
        or ".." in name.parts
        or not dest.resolve().is_relative_to(folder.resolve())
    ):
        raise OSError(errno.EINVAL, "destination outside the archive directory", str(dest))
    return dest


def to_done(src: Path, done_dir: Path, name: PurePosixPath, today: dt.date | None = None) -> Path:
    """Move a loaded file to done/YYYY-MM-DD/<name> (blocking: run in a thread)."""
    day = (today or dt.date.today()).isoformat()
    return _move(src, _inside(done_dir / day, name))


def to_failed(src: Path, failed_dir: Path, name: PurePosixPath, report: dict[str, Any]) -> Path:
    """Move a failed file to failed/<name> and write <name>.error.json beside it."""
    dest = _move(src, _inside(failed_dir, name))
    sidecar = dest.with_name(dest.name + ".error.json")
    sidecar.write_text(json.dumps(report, indent=2, default=str) + "\n")
    return dest


def failure_report(
    name: PurePosixPath,
    reason: str,
    run_id: str,
    *,
    attempts: int,
    row: int | None = None,
    table: str | None = None,
    checksum: bytes | None = None,
) -> dict[str, Any]:
    """The content of a failed file's .error.json sidecar."""
    report: dict[str, Any] = {
        "file": str(name),
        "reason": reason,
        "row": row,
        "run_id": run_id,
        "time": dt.datetime.now(dt.UTC).isoformat(),
        "attempts": attempts,
    }
    if table is not None:
        report["table"] = table
    if checksum is not None:
        report["checksum_sha256"] = checksum.hex()
    return report
