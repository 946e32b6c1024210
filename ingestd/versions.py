"""Append mode's guard against rows loaded twice: a new version of a file on top of the
rows its earlier version committed, and the same bytes arriving under another name."""

from __future__ import annotations

from ingestd.claim import Job
from ingestd.db.connection import Connection
from ingestd.db.manifest import Earlier, Manifest
from ingestd.db.sql import manifest_supersede_hint
from ingestd.exceptions import FileError, IngestdError, RetryableError
from ingestd.model import ManifestStatus
from ingestd.settings import Settings


class NewVersionRefused(FileError):
    """on_new_version = "refuse": an earlier version of this file committed rows but was
    never loaded in full, so this version's rows would land on top of part of its own."""


class DuplicateContent(IngestdError):
    """on_duplicate_content = "skip": these bytes were loaded (or are loading) under
    another name; this file is recorded as skipped and moves to done/."""

    def __init__(self, message: str, original: Earlier):
        super().__init__(message)
        self.original = original


async def check_append(conn: Connection, job: Job, manifest: Manifest, settings: Settings) -> None:
    """Raise NewVersionRefused or DuplicateContent if loading this version in append mode
    would put rows into the target a second time; nothing for other modes (an upsert of
    the same rows changes nothing) or for a version that has committed rows already."""
    contract = job.contract
    if contract.mode != "append" or job.claim.rows_done:
        return
    table = f"{contract.schema}.{contract.table}" if contract.schema else contract.table
    claim_id = job.claim.manifest_id
    if settings.on_duplicate_content == "skip":
        original = await manifest.same_content(conn, claim_id, job.version, table)
        if original is not None:
            _same_content(original, table, manifest.name)
    if settings.on_new_version == "refuse":
        earlier = await manifest.earlier_versions(conn, claim_id, job.version, table)
        if earlier:
            raise NewVersionRefused(_refusal(job, earlier, table, manifest.name))


def _same_content(original: Earlier, table: str, manifest: str) -> None:
    """Skip a copy of bytes loaded in full; wait for a copy still loading; refuse a copy of
    bytes whose load failed after committing rows (they would go in twice)."""
    what = f"same bytes as {original.filename} (manifest id {original.manifest_id}"
    if original.status == ManifestStatus.SUCCESS:
        raise DuplicateContent(
            f"{what}, success) for table {table}: not loaded again "
            '(on_duplicate_content = "load" would load it)',
            original,
        )
    if original.status != ManifestStatus.FAILED:  # pending or retrying: it may still finish
        raise RetryableError(f"{what}, {original.status}) is still being loaded into {table}")
    supersede = manifest_supersede_hint(manifest, [original.manifest_id])
    raise FileError(
        f"{what}) failed after committing {original.rows:,} rows to {table}: loading this "
        f"copy would put them in twice. Drop it into the inbox as {original.filename} to "
        f"resume that load after its committed rows, or remove those rows, run {supersede} "
        "and move this file back with ingestd retry"
    )


def _refusal(job: Job, earlier: list[Earlier], table: str, manifest: str) -> str:
    rows = sum(e.rows for e in earlier)
    supersede = manifest_supersede_hint(manifest, [e.manifest_id for e in earlier])
    what = ", ".join(f"id {e.manifest_id} {e.status}" for e in earlier)
    return (
        f"an earlier version of {job.name} ({what}) committed {rows:,} rows to {table} "
        "and was never loaded in full; "
        'on_new_version = "refuse" keeps this version from being appended on top of them. '
        f"Remove those rows from {table}, then run {supersede}; and move this file back "
        "with ingestd retry "
        '(or set on_new_version = "append" to load it on top)'
    )
