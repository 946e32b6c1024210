"""Every Prometheus collector ingestd exports, on a registry of its own."""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Callable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from ingestd import archive

LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


def peak_rss_bytes() -> int:
    """Peak resident memory of this process."""
    # On Linux ru_maxrss carries the peak of the parent it was forked from across exec
    # (a service started by a large process would report that process); VmHWM does not.
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # Linux reports KiB


class Metrics:
    """The collectors of one service instance (a fresh registry each, so tests do not leak)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.files_processed = Counter(
            "ingest_files_processed",
            "Files finished, by outcome (success, failed, skipped).",
            ["file_type", "status"],
            registry=r,
        )
        self.batches_processed = Counter(
            "ingest_batches_processed", "Batches committed.", ["file_type", "worker_id"], registry=r
        )
        self.rows_read = Counter(
            "ingest_rows_read", "Rows read from files.", ["file_type"], registry=r
        )
        self.rows_staged = Counter(
            "ingest_rows_staged", "Rows COPYed into stage tables.", ["file_type"], registry=r
        )
        self.rows_upserted = Counter(
            "ingest_rows_upserted",
            "Target rows inserted or changed (unchanged rows in upsert mode are not counted).",
            ["table_name"],
            registry=r,
        )
        self.rows_rejected = Counter(
            "ingest_rows_rejected",
            "Rows set aside to ingestion_rejects (--max-bad-rows).",
            ["table_name"],
            registry=r,
        )
        self.schema_changes = Counter(
            "ingest_schema_changes",
            "Columns ingestd added to a table (schema_evolution = add or rescue), each also "
            "a row in ingestion_schema_changes.",
            ["table_name"],
            registry=r,
        )
        self.rows_rescued = Counter(
            "ingest_rows_rescued",
            "Rows loaded with values kept aside in the rescue column (schema_evolution = rescue).",
            ["table_name"],
            registry=r,
        )
        self.batch_latency = Histogram(
            "ingest_batch_latency_seconds",
            "COPY + merge + checkpoint of one batch, commit included.",
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.db_errors = Counter(
            "ingest_db_errors", "Database errors, by class.", ["error_class"], registry=r
        )
        self.internal_errors = Counter(
            "ingest_internal_errors",
            "Bugs in ingestd met while offering or loading a file (each logged as "
            "internal_error with its traceback; the file stays pending in the inbox).",
            registry=r,
        )
        self.memory_peak = Gauge("ingest_memory_peak_bytes", "Peak resident memory.", registry=r)
        self.memory_peak.set_function(peak_rss_bytes)
        self.retries = Counter(
            "ingest_retries", "Attempts repeated after a transient error.", registry=r
        )
        self.queue_depth = Gauge(
            "ingest_queue_depth", "Claimed files waiting for a worker.", registry=r
        )
        self.files_in_flight = Gauge(
            "ingest_files_in_flight", "Files being loaded now.", registry=r
        )
        self.oldest_waiting = Gauge(
            "ingest_oldest_waiting_file_age_seconds",
            "Age of the oldest file still in the inbox and not yet finished (0: none waits).",
            registry=r,
        )
        self.ready = Gauge(
            "ingest_ready", "1 when the database is reachable and discovery runs.", registry=r
        )
        self.unreadable_folders = Gauge(
            "ingest_inbox_unreadable_folders",
            "Folders under the inbox that could not be listed at the last scan (their files wait).",
            registry=r,
        )
        self.watcher_restarts = Counter(
            "ingest_watcher_restarts",
            "Times the inbox watcher stopped on an error and was started again.",
            registry=r,
        )
        self.last_success = Gauge(
            "ingest_last_success_timestamp_seconds",
            "Unix time of the last file loaded.",
            registry=r,
        )
        self.archive_errors = Counter(
            "ingest_archive_errors",
            "Moves to done/ or failed/ that could not complete (retried with backoff).",
            ["folder", "reason"],
            registry=r,
        )
        self.archive_pending = Gauge(
            "ingest_archive_pending_files",
            "Finished files still in the inbox because their move failed; retried.",
            registry=r,
        )
        self.instance_id_shared = Gauge(
            "ingest_instance_id_shared",
            "Other live processes using this process's instance id on the same database "
            "(should be 0: give each instance its own id).",
            registry=r,
        )
        self.manifest_missing = Gauge(
            "ingest_manifest_missing",
            "1 once the manifest or a row of a file in hand disappeared under this process: "
            "it loads nothing more (not ready) until restarted.",
            registry=r,
        )
        self.dead_tuples = Gauge(
            "ingest_dead_tuples",
            "Dead tuples of a target (pg_stat_user_tables.n_dead_tup), sampled after each "
            "file; high after large upserts: a manual VACUUM gives the space back sooner.",
            ["table_name"],
            registry=r,
        )
        self.precreate()

    def precreate(self) -> None:
        """Give the outcome counters their series at zero, so that rate() and increase()
        see the first failure after a start (a series born at 1 has no increase)."""
        for file_type in ("csv", "parquet"):
            for status in ("success", "failed", "skipped", "retrying"):
                self.files_processed.labels(file_type, status)
            self.rows_read.labels(file_type)
            self.rows_staged.labels(file_type)
        for folder in archive.FOLDERS:
            for reason in archive.REASONS:
                self.archive_errors.labels(folder, reason)

    def track_oldest(self, oldest_since: Callable[[], float | None]) -> None:
        """Compute the oldest-waiting age at scrape time from a monotonic timestamp source."""

        def age() -> float:
            since = oldest_since()
            return 0.0 if since is None else max(0.0, time.monotonic() - since)

        self.oldest_waiting.set_function(age)

    def render(self) -> bytes:
        """The text exposition format."""
        return generate_latest(self.registry)
