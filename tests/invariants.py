"""The books never lie: the manifest, the folders and the target table agree.

Any test that has done something hostile calls check_books() at its end. It reads every
manifest row and every file under the inbox, done/ and failed/, and fails the test with
the full list of disagreements:

- a file in done/ has a `success` row for its checksum, and no version is in done/ twice
  (files sharing a checksum are at most as many as the names loaded or skipped with it);
- a file in failed/ has a `failed` row for its checksum (or, for a file that could not be
  read, a failed row with an empty checksum) and a readable sidecar beside it whose
  checksum, when it has one, is the file's; no sidecar is without its file;
- a `success` row's bytes are somewhere: in done/, or still in the inbox (kept, or a move
  waiting for its retry: the caller sees those in Books.inbox_final);
- no temporary file of an interrupted move is left anywhere;
- with `table`: where rows carry their source (`source_column` holds the manifest
  filename), each success row's loaded rows (rows - rows_rejected) equal the table's rows
  for that file; else the table's row count equals the rows committed by every version
  loaded into it (only meaningful where no two rows share a key: append mode, or upsert
  with distinct keys).
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ingestd.archive import SIDECAR_SUFFIX, TEMP_PREFIX
from ingestd.identifiers import quote_qualified
from tests.pg import Db


@dataclass
class Books:
    """What check_books found, for further asserts by the caller."""

    rows: list[dict[str, Any]] = field(default_factory=list)  # the manifest
    inbox: dict[Path, bytes] = field(default_factory=dict)  # file -> sha256
    done: dict[Path, bytes] = field(default_factory=dict)
    failed: dict[Path, bytes] = field(default_factory=dict)
    inbox_final: list[Path] = field(default_factory=list)  # in the inbox with a final row


def _sha256(path: Path) -> bytes:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while piece := fh.read(1 << 20):
            digest.update(piece)
    return digest.digest()


def _files(root: Path | None, skip: tuple[Path, ...] = ()) -> tuple[dict[Path, bytes], list[Path]]:
    """Regular files under root (not under skip) with their checksums; temp leftovers."""
    found: dict[Path, bytes] = {}
    temps: list[Path] = []
    if root is None or not root.is_dir():
        return found, temps
    skipped = {p.resolve() for p in skip if p.exists()}
    for path in sorted(root.rglob("*")):
        if any(path.resolve().is_relative_to(s) for s in skipped):
            continue
        if path.name.startswith(TEMP_PREFIX):
            temps.append(path)
        elif path.is_file() and not path.is_symlink():
            found[path] = _sha256(path)
    return found, temps


def _manifest(db: Db, manifest: str) -> list[dict[str, Any]]:
    try:
        return db.fetch(f"SELECT * FROM {quote_qualified(None, manifest)} ORDER BY id")
    except Exception as exc:  # no manifest at all: only an empty world agrees with that
        if "does not exist" in str(exc):
            return []
        raise


def check_books(
    db: Db,
    inbox: Path | None,
    done: Path | None,
    failed: Path | None,
    table: str | None = None,
    source_column: str | None = None,
    manifest: str = "ingestion_manifest",
    files: tuple[Path, ...] = (),
) -> Books:
    """Assert that manifest, folders and table agree (see the module docstring); `files`
    are loaded with --files from outside any inbox and count as inbox files."""
    rows = _manifest(db, manifest)
    by_sum: dict[bytes, set[str]] = defaultdict(set)
    for r in rows:
        by_sum[bytes(r["checksum"])].add(r["status"])
    archives = tuple(p for p in (done, failed) if p is not None)
    books = Books(rows=rows)
    books.inbox, temps = _files(inbox, archives)
    books.inbox.update({f: _sha256(f) for f in files if f.is_file()})
    books.done, more = _files(done)
    temps += more
    everything, more = _files(failed)
    temps += more
    sidecars = {p: s for p, s in everything.items() if p.name.endswith(SIDECAR_SUFFIX)}
    books.failed = {p: s for p, s in everything.items() if p not in sidecars}
    wrong = [f"temporary file left by a move: {p}" for p in temps]

    wrong += _check_done(books.done, rows)
    unreadable = {r["filename"] for r in rows if r["status"] == "failed" and not r["checksum"]}
    wrong += _check_failed(books.failed, sidecars, by_sum, unreadable)
    placed = set(books.done.values()) | set(books.inbox.values())
    for r in rows:
        if r["status"] == "success" and bytes(r["checksum"]) not in placed:
            wrong.append(f"success row {r['id']} ({r['filename']}): its bytes are nowhere")
    books.inbox_final = [
        p for p, c in books.inbox.items() if by_sum.get(c, set()) & {"success", "failed"}
    ]
    if table is not None:
        wrong += _check_rows(db, rows, table, source_column)
    assert not wrong, "the books disagree:\n  " + "\n  ".join(wrong)
    return books


def _check_done(files: dict[Path, bytes], rows: list[dict[str, Any]]) -> list[str]:
    # Each manifest row (a name and its bytes) accounts for one file in done/ at most: the
    # same bytes under two names may be there twice, one version never.
    names: dict[bytes, set[str]] = defaultdict(set)
    for r in rows:
        if r["status"] in ("success", "skipped"):
            names[bytes(r["checksum"])].add(r["filename"])
    wrong = []
    seen: dict[bytes, list[Path]] = defaultdict(list)
    for path, checksum in files.items():
        if not any(r["status"] == "success" and bytes(r["checksum"]) == checksum for r in rows):
            wrong.append(f"{path} is in done/ but no success row has its checksum")
        seen[checksum].append(path)
    for checksum, paths in seen.items():
        if len(paths) > max(1, len(names[checksum])):
            wrong.append(f"the same version is in done/ {len(paths)} times: {sorted(paths)}")
    return wrong


def _check_failed(
    files: dict[Path, bytes],
    sidecars: dict[Path, bytes],
    by_sum: dict[bytes, set[str]],
    unreadable: set[str],
) -> list[str]:
    wrong = []
    for path, checksum in files.items():
        sidecar = path.with_name(path.name + SIDECAR_SUFFIX)
        report: dict[str, Any] = {}
        if sidecar not in sidecars:
            wrong.append(f"{path} is in failed/ without its sidecar {sidecar.name}")
        else:
            try:
                report = json.loads(sidecar.read_text())
            except ValueError as exc:
                wrong.append(f"sidecar {sidecar} is not JSON: {exc}")
            if report.get("checksum_sha256") not in (None, checksum.hex()):
                wrong.append(f"sidecar {sidecar} names another checksum than its file's")
        if "failed" not in by_sum.get(checksum, set()) and report.get("file") not in unreadable:
            wrong.append(f"{path} is in failed/ but no failed row has its checksum")
    for sidecar in sidecars:
        if sidecar.with_name(sidecar.name.removesuffix(SIDECAR_SUFFIX)) not in files:
            wrong.append(f"sidecar {sidecar} has no file beside it")
    return wrong


def _check_rows(
    db: Db, rows: list[dict[str, Any]], table: str, source_column: str | None
) -> list[str]:
    schema, _, name = table.rpartition(".")
    target = quote_qualified(schema or None, name)
    mine = [r for r in rows if r["table_name"] == table]
    wrong = []
    if source_column is not None:
        col = quote_qualified(None, source_column)
        counts = {
            r["src"]: r["n"]
            for r in db.fetch(f"SELECT {col} AS src, count(*) AS n FROM {target} GROUP BY 1")
        }
        for r in mine:
            if (
                r["status"] == "success"
                and counts.get(r["filename"], 0) != r["rows"] - r["rows_rejected"]
            ):
                wrong.append(
                    f"success row {r['id']} ({r['filename']}) says "
                    f"{r['rows'] - r['rows_rejected']} rows, {table} has "
                    f"{counts.get(r['filename'], 0)} from it"
                )
        return wrong
    total = int(db.val(f"SELECT count(*) FROM {target}"))
    committed = sum(r["rows"] - r["rows_rejected"] for r in mine)
    if total != committed:
        wrong.append(f"{table} has {total} rows; the manifest counts {committed} committed")
    return wrong
