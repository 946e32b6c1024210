"""The types the steps of a load share: statuses, how a file ended, and a run's results."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ingestd import archive


class ManifestStatus(StrEnum):
    """A manifest row's status (db.sql.MANIFEST_STATUSES is the table's check on them)."""

    PENDING = "pending"  # claimed, loading, interrupted, or met a bug: resumes on a next run
    SUCCESS = "success"  # loaded in full; the file moved to done/
    FAILED = "failed"  # a permanent problem with the file; it moved to failed/
    RETRYING = "retrying"  # transient trouble outlasted the retries; the file is in the inbox
    SKIPPED = "skipped"  # a copy of bytes loaded under another name (on_duplicate_content)
    SUPERSEDED = "superseded"  # set by an operator: an earlier version given up on purpose


class Outcome(StrEnum):
    """How one file ended in this run (FileResult.status): the summary and exit status."""

    SUCCESS = "success"  # loaded (or its rows all committed) and recorded
    SKIPPED = "skipped"  # loaded already, or a duplicate of loaded bytes
    FAILED = "failed"  # permanent: recorded failed, moved to failed/
    RETRYING = "retrying"  # transient and out of retries: stays in the inbox
    INTERRUPTED = "interrupted"  # a stop, or the manifest gone: stays pending, resumes
    HELD = "held"  # --once: another live instance has it (a lease), not loaded here
    HANDED_OVER = "handed_over"  # another instance took it over (our lease ran out)
    INTERNAL_ERROR = "internal_error"  # a bug in ingestd: stays pending in the inbox


# Outcomes that make --once exit 1: the file did not load and is not someone else's.
UNFINISHED = frozenset({Outcome.FAILED, Outcome.RETRYING, Outcome.INTERNAL_ERROR})


@dataclass(frozen=True)
class FileResult:
    """How one file ended, for the summary and the exit status."""

    name: str
    table: str
    status: Outcome
    rows: int = 0
    error: str | None = None
    row: int | None = None
    seconds: float = 0.0
    file_type: str = ""
    attempts: int = 1
    stay: bool = False  # leave the file in the inbox (transient failure, file changed)
    archive: archive.Pending | None = None  # its move out of the inbox failed: retried
    rows_before: int = 0  # of `rows`, committed by an earlier run (a resumed file)

    @property
    def rows_this_run(self) -> int:
        """The rows this run committed: a resumed file's earlier rows are not this run's."""
        return max(0, self.rows - self.rows_before)


@dataclass
class Results:
    """Outcomes of a run, appended by workers and the scanner (single event loop: no lock)."""

    files: list[FileResult] = field(default_factory=list)
    on_result: Callable[[FileResult], None] | None = None

    def add(self, result: FileResult) -> None:
        """Record one file's outcome and tell whoever listens (scanner, progress line)."""
        self.files.append(result)
        if self.on_result is not None:
            self.on_result(result)


def internal_error_text(exc: BaseException) -> str:
    """The summary's reason for a file that met a bug: what happened and what to do."""
    return (
        f"internal error (a bug in ingestd): {type(exc).__name__}: {exc}; the file stays "
        "pending in the inbox; the internal_error log line has the traceback to report"
    )
