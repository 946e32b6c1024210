"""After each file: the target's dead tuples for the metric, and ANALYZE after large upserts."""

from __future__ import annotations

import logging
import time

from ingestd.db import indexes
from ingestd.db.connection import Connection
from ingestd.exceptions import IngestdError
from ingestd.metrics import Metrics
from ingestd.settings import Mode

log = logging.getLogger(__name__)
# The gauge is scraped every few seconds at most: sampling it after every file cost two
# round trips per file (a fifth of a small file's work); one sample per target this often.
SAMPLE_EVERY_S = 5.0


class Upkeep:
    """Counts the rows upserts and merges wrote per target; past `analyze_after_rows`, the
    target is ANALYZEd (the planner's statistics were made for a smaller table) and its
    dead tuples logged, so that the runbook can say when a manual VACUUM helps."""

    def __init__(self, analyze_after_rows: int, metrics: Metrics, server_version: int) -> None:
        self._version = server_version
        self._threshold = analyze_after_rows
        self._metrics = metrics
        self._written: dict[str, int] = {}  # rows since the last ANALYZE, per target
        self._sampled: dict[str, float] = {}  # when the target's dead tuples were last read

    async def after_file(
        self, conn: Connection, qualified: str, label: str, mode: Mode, rows: int
    ) -> None:
        """Never fails the file: it is loaded and recorded already."""
        try:
            counts = None
            if mode != "append" and self._threshold:
                written = self._written.get(label, 0) + rows
                self._written[label] = written
                if written >= self._threshold:
                    self._written[label] = 0
                    counts = await indexes.analyze(conn, qualified, self._version)
                    log.info(
                        "target_analyzed",
                        extra={"table": label, "rows_written": written,
                               "dead_tuples": counts[0] if counts else None,
                               "live_tuples": counts[1] if counts else None},
                    )  # fmt: skip
            now = time.monotonic()
            if counts is None:
                last = self._sampled.get(label)
                if last is not None and now - last < SAMPLE_EVERY_S:
                    return
                counts = await indexes.dead_tuples(conn, qualified, self._version)
            self._sampled[label] = now
        except IngestdError as exc:
            log.warning("upkeep_failed", extra={"table": label, "error": str(exc)})
            return
        if counts is not None:
            self._metrics.dead_tuples.labels(label).set(counts[0])
