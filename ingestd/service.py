"""The composition root: build everything, wire it, run it, and stop it cleanly."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ingestd.claim import Job
from ingestd.db.connection import Pool, create_pool, server_version
from ingestd.db.manifest import Manifest
from ingestd.db.merge import MERGE_MIN_VERSION
from ingestd.embedded import start_embedded
from ingestd.endpoint import Endpoint
from ingestd.exceptions import UsageError
from ingestd.logs import bound
from ingestd.metrics import Metrics
from ingestd.pipeline import LoadContext
from ingestd.retry import Backoff
from ingestd.scanner import Scanner
from ingestd.settings import Settings
from ingestd.worker import FileResult, Results, Worker

log = logging.getLogger("ingestd.service")


@dataclass(frozen=True)
class RunReport:
    """What a run did: every file's outcome and how long it took."""

    run_id: str
    files: tuple[FileResult, ...]
    seconds: float

    @property
    def exit_code(self) -> int:
        """DESIGN.md's exit status: 1 if any file failed, else 0."""
        return 1 if any(f.status == "failed" for f in self.files) else 0


def new_run_id() -> str:
    """A short id that ties together a run's logs, manifest rows and sidecars."""
    return uuid.uuid4().hex[:12]


class Service:
    """One ingestd instance: pool, scanner, workers, endpoint."""

    def __init__(
        self,
        settings: Settings,
        *,
        backoff: Backoff | None = None,
        on_result: Callable[[FileResult], None] | None = None,
    ):
        self.settings = settings
        self.run_id = new_run_id()
        self.metrics = Metrics()
        self.stop_event = asyncio.Event()
        self.results = Results(on_result=on_result)
        self._backoff = backoff or Backoff(settings.retry_base_s, settings.retry_cap_s)
        self._ready = False
        self._embedded: Any = None
        self.endpoint: Endpoint | None = None

    def request_stop(self) -> None:
        """Stop discovery; workers finish or roll back their batch in hand."""
        self.stop_event.set()

    async def run(self) -> RunReport:
        """Run until the inbox is drained (--once) or a stop is requested."""
        started = time.monotonic()
        with bound(run_id=self.run_id):
            log.info("run_started", extra={"once": self.settings.once})
            await self._start_endpoint()
            try:
                await self._run()
            finally:
                if self.endpoint is not None:
                    await self.endpoint.stop()
        return RunReport(self.run_id, tuple(self.results.files), time.monotonic() - started)

    async def _start_endpoint(self) -> None:
        addr = self.settings.metrics_addr
        if addr is None:
            return
        self.endpoint = Endpoint(self.metrics, lambda: self._ready)
        try:
            await self.endpoint.start(*addr)
        except OSError as exc:
            raise UsageError(
                f"cannot serve metrics on {addr[0]}:{addr[1]}: {exc.strerror}; "
                "choose another --metrics-addr or turn it off with --metrics-addr off"
            ) from None

    async def _dsn(self) -> str:
        if self.settings.dsn:
            return self.settings.dsn
        dsn, self._embedded = await asyncio.to_thread(start_embedded, self.settings.state_dir)
        return dsn

    async def _run(self) -> None:
        s = self.settings
        pool = await create_pool(
            await self._dsn(),
            size=s.concurrency + 1,  # one per worker, one for the scanner
            connect_timeout_s=s.connect_timeout_s,
            statement_timeout_s=s.statement_timeout_s,
            attempts=s.max_retries,
            backoff=self._backoff,
        )
        try:
            await self._serve(pool)
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(pool.close(), 10)

    async def _serve(self, pool: Pool) -> None:
        s = self.settings
        manifest = Manifest(s.manifest_schema, s.manifest_table)
        async with pool.acquire() as conn:
            await manifest.ensure(conn)
            version = await server_version(conn)
            _check_server(s, version)
            queue: asyncio.Queue[Job] = asyncio.Queue(maxsize=s.effective_queue_size)
            ctx = LoadContext(s, manifest, self.metrics, self.run_id, version)
            scanner = Scanner(s, conn, manifest, queue, self.results, self.metrics, self.run_id)
            self.results.on_result = _chain(self.results.on_result, scanner.finished)
            self.metrics.queue_depth.set_function(queue.qsize)
            self.metrics.track_oldest(scanner.oldest_waiting)
            workers = [
                asyncio.create_task(
                    Worker(f"w{i}", pool, ctx, self.results, self._backoff).run(queue),
                    name=f"ingestd-worker-{i}",
                )
                for i in range(s.concurrency)
            ]
            self._ready = True
            self.metrics.ready.set(1)
            try:
                await self._drive(scanner, queue, workers)
            finally:
                self._ready = False
                self.metrics.ready.set(0)
                await _stop_tasks(workers, s.shutdown_grace_s)

    async def _drive(
        self, scanner: Scanner, queue: asyncio.Queue[Job], workers: list[asyncio.Task[None]]
    ) -> None:
        """Scan, then wait for the queue to drain (or for a stop, or for a worker to die)."""
        scanning = asyncio.create_task(scanner.scan_once(), name="ingestd-scanner")
        draining: asyncio.Task[None] | None = None
        stopping = asyncio.create_task(self.stop_event.wait(), name="ingestd-stop")
        try:
            await _first(scanning, stopping, *workers)
            if not self.stop_event.is_set():
                draining = asyncio.create_task(queue.join(), name="ingestd-drain")
                await _first(draining, stopping, *workers)
            dead = [w for w in workers if w.done()]
            if dead:
                raise RuntimeError(f"worker {dead[0].get_name()} stopped: {dead[0].exception()!r}")
        finally:
            for task in (scanning, stopping, draining):
                if task is not None:
                    task.cancel()
            await asyncio.gather(
                *(t for t in (scanning, stopping, draining) if t is not None),
                return_exceptions=True,
            )


def _check_server(settings: Settings, version: int) -> None:
    merging = [c.name for c in settings.contracts if c.mode == "merge"]
    if merging and version < MERGE_MIN_VERSION:
        raise UsageError(
            f"contract(s) {', '.join(merging)} use --mode merge, which needs PostgreSQL 15 or "
            f"newer; this server is {version // 10000}. Use --mode upsert instead"
        )


async def _first(*tasks: asyncio.Task[Any]) -> None:
    done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    for task in done:
        if (
            not task.cancelled()
            and task.exception() is not None
            and task.get_name() == "ingestd-scanner"
        ):
            raise task.exception()  # type: ignore[misc]  # checked not None just above


async def _stop_tasks(tasks: list[asyncio.Task[None]], grace_s: float) -> None:
    """Cancel workers; each rolls back the batch in hand. Bounded by the grace period."""
    for task in tasks:
        task.cancel()
    _, pending = await asyncio.wait(tasks, timeout=grace_s)
    if pending:
        log.error("shutdown_timeout", extra={"tasks": [t.get_name() for t in pending]})


def _chain(
    first: Callable[[FileResult], None] | None, second: Callable[[FileResult], None]
) -> Callable[[FileResult], None]:
    def both(result: FileResult) -> None:
        if first is not None:
            first(result)
        second(result)

    return both
