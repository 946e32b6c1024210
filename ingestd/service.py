"""The composition root: build everything, wire it, run it, and stop it cleanly."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from ingestd import backfill
from ingestd.db.capacity import connection_limit, server_limits
from ingestd.db.connection import Connection, server_version
from ingestd.db.database import Database
from ingestd.db.indexes import Target
from ingestd.db.manifest import Manifest, ManifestGoneError, application_name, new_token
from ingestd.db.merge import MERGE_MIN_VERSION
from ingestd.defaults import choose, client_cores, server_is_local, too_few_connections
from ingestd.embedded import start_embedded
from ingestd.endpoint import Endpoint
from ingestd.exceptions import FileError, IngestdError, RetryableError, UsageError
from ingestd.logs import bound
from ingestd.metrics import Metrics
from ingestd.model import UNFINISHED, FileResult, Help, LoadContext, Results
from ingestd.progress import Progress
from ingestd.read import release_memory_promptly
from ingestd.retry import Backoff
from ingestd.scanner import Scanner
from ingestd.settings import Settings
from ingestd.upkeep import Upkeep
from ingestd.worker import Worker, WorkQueue, never_opened

log = logging.getLogger(__name__)
HEALTH_INTERVAL_S = 2.0


@dataclass(frozen=True)
class RunReport:
    """What a run did: every file's outcome and how long it took."""

    run_id: str
    files: tuple[FileResult, ...]
    seconds: float
    once: bool
    halted: bool = False  # the manifest disappeared under the run
    unreadable: tuple[tuple[str, str], ...] = ()  # inbox folders not listed: name, reason
    stopped: bool = False  # a stop was requested (SIGTERM): files may not have been looked at
    backfill: str = ""  # indexes a backfill dropped are still to be rebuilt: what to run

    @property
    def exit_code(self) -> int:
        """DESIGN.md's exit status: --once exits 0 only if every file succeeded or was
        skipped (or is another live instance's), so 1 if any failed, met a bug or was
        interrupted by a stop (`ingestd --once && next-step` must not take a killed
        backfill for a complete one), or the manifest disappeared under it; the daemon
        exits 0 (a restart must not be automatic then: systemd would restart it onto a
        new, empty manifest)."""
        if not self.once:
            return 0
        failed = any(f.status in UNFINISHED for f in self.files)
        # A folder it could not list holds files it never saw, and so may a run stopped
        # before the end: not a complete run either.
        unfinished = self.halted or self.unreadable or self.stopped or self.backfill
        return 1 if failed or unfinished else 0


def new_run_id() -> str:
    """A short id that ties together a run's logs, manifest rows and sidecars."""
    return uuid.uuid4().hex[:12]


class Service:
    """One ingestd instance: pool, scanner, workers, endpoint; --once and daemon alike."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.run_id = new_run_id()
        self.token = new_token()  # this process's claims, apart from another with our id
        self.manifest = Manifest(
            settings.manifest_schema, settings.manifest_table, settings.instance_id,
            settings.lease_s, self.token,
        )  # fmt: skip
        self.metrics = Metrics()
        # The one stop: set by a signal (request_stop) or at the end of a --once run; the
        # scanner stops discovering, each worker stops before its next file and batch.
        self.stopping = asyncio.Event()
        self._abort = asyncio.Event()  # a second signal: roll back the batches in hand now
        self.stop_requested = False  # by a signal: a --once run then did not complete
        self.results = Results()
        self._backoff = Backoff(settings.retry_base_s, settings.retry_cap_s)
        self._scanner: Scanner | None = None
        self._embedded: Any = None  # keeps the embedded server alive for the run
        self.endpoint: Endpoint | None = None
        self._twins = 0  # other live processes seen with our instance id
        self._backfill_targets: list[Target] = []  # --backfill: ANALYZEd after the rebuild
        self._backfill_note = ""  # indexes still dropped at the end: the summary says so

    def request_stop(self) -> None:
        """First signal: stop discovery; workers finish their batch in hand, then exit.
        Second signal: abort now; the batch in hand rolls back."""
        if self.stopping.is_set():
            log.warning("shutdown_abort")
            self._abort.set()
        else:
            log.info("shutdown_requested")
            self.stop_requested = True
            self.stopping.set()

    def reload(self, settings: Settings) -> None:
        """SIGHUP: new contracts and log level apply to files discovered from now on; any
        other changed key keeps its old value everywhere and is named in one WARNING."""
        from ingestd.settings import reloaded

        applied, restart = reloaded(self.settings, settings)
        self.settings = applied
        if self._scanner is not None:
            self._scanner.settings = applied
        logging.getLogger().setLevel(applied.log_level)
        if restart:
            log.warning("config_reload_needs_restart", extra={"keys": list(restart)})
        log.info("config_reloaded", extra={"contracts": [c.name for c in applied.contracts]})

    def is_ready(self) -> bool:
        """Database reachable, the inbox there, and discovery running."""
        scanner = self._scanner
        if self.manifest.broken is not None:
            return False  # loading nothing until restarted: manifest.halt
        return (
            scanner is not None
            and scanner.db_ok
            and scanner.inbox_ok
            and not self.stopping.is_set()
        )

    async def run(self) -> RunReport:
        """Run until the inbox is drained (--once) or a stop is requested (daemon)."""
        started = time.monotonic()
        release_memory_promptly()
        with bound(run_id=self.run_id, instance_id=self.settings.instance_id):
            log.info("run_started", extra={"once": self.settings.once})
            await self._start_endpoint()
            try:
                await self._run()
            finally:
                if self.endpoint is not None:
                    await self.endpoint.stop()
            log.info("run_finished", extra={"files": len(self.results.files)})
        files = tuple(self.results.files)
        return RunReport(
            self.run_id, files, time.monotonic() - started, self.settings.once,
            halted=self.manifest.broken is not None, stopped=self.stop_requested,
            unreadable=self._scanner.unreadable_folders() if self._scanner else (),
            backfill=self._backfill_note,
        )  # fmt: skip

    def _progress(self) -> Progress | None:
        """--once: a line redrawn at a terminal, else a `progress` log line now and then."""
        if not self.settings.once:
            return None
        if self._show_progress():
            return Progress(sys.stderr)
        return Progress(sys.stderr, tty=False)

    def _show_progress(self) -> bool:
        """A progress line for --once at a terminal; the info log lines would garble it,
        so the terminal then shows warnings and errors only."""
        if not (self.settings.once and sys.stderr.isatty()):
            return False
        root = logging.getLogger()
        root.setLevel(max(root.level, logging.WARNING))
        return True

    async def _start_endpoint(self) -> None:
        addr = self.settings.metrics_addr
        if addr is None:
            return
        self.endpoint = Endpoint(self.metrics, self.is_ready)
        self.metrics.ready.set_function(lambda: 1.0 if self.is_ready() else 0.0)
        try:
            await self.endpoint.start(*addr)
        except OSError as exc:
            if self.settings.once and "metrics_addr" not in (self.settings.given or ()):
                # The default address, most likely the daemon's on this host: a backfill
                # beside it goes on without an endpoint (DESIGN.md, Metrics).
                log.warning(
                    "metrics_endpoint_skipped",
                    extra={"addr": f"{addr[0]}:{addr[1]}", "error": exc.strerror},
                )
                self.endpoint = None
                return
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
        if not s.once and s.inbox is not None and not isinstance(s.inbox, str):
            # One that cannot be made (a parent not writable, not mounted yet) is waited for:
            # the watcher says inbox_missing and the daemon is not ready until it exists.
            with contextlib.suppress(OSError):
                s.inbox.mkdir(parents=True, exist_ok=True)
        opening = asyncio.ensure_future(self._open(await self._dsn()))
        # The one stop also ends the wait for an unreachable server at start-up: its
        # retries may take far longer than shutdown_grace_s (systemd would SIGKILL).
        stopped = asyncio.ensure_future(self.stopping.wait())
        try:
            await asyncio.wait({opening, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
            if not opening.done():
                opening.cancel()
            await asyncio.gather(stopped, opening, return_exceptions=True)
        if opening.cancelled():
            log.info("shutdown_before_start", extra={"reason": "stopped while connecting"})
            return
        db = opening.result()
        try:
            await self._serve(db)
        finally:
            await db.close(timeout_s=10)

    async def _open(self, dsn: str) -> Database:
        """The pool, once the concurrency is known (chosen from the machine and the server
        when the user set none: a first connection asks the server for its limits)."""
        s = self.settings
        if not s.is_given("concurrency"):
            probe = await self._connect(dsn, size=1)
            try:
                async with probe.connection() as conn:
                    max_connections, reserved = await server_limits(conn)
                    limit, limited_by = await connection_limit(conn)
            finally:
                await probe.close()
            local = server_is_local(dsn)
            chosen = choose(client_cores(), "server (same host)" if local else "client",
                            max_connections, reserved, limit, limited_by)  # fmt: skip
            self.settings = s = replace(s, concurrency=chosen.concurrency)
            log.info(
                "defaults_chosen",
                extra={"concurrency": chosen.concurrency, "pool_size": chosen.pool_size,
                       "cores": chosen.cores, "cores_of": chosen.cores_of,
                       "max_connections": max_connections, "reason": chosen.reason},
            )  # fmt: skip
            # Said before the pool connects: it would retry, then fail on the limit.
            size = max(s.concurrency, s.backfill_index_jobs if s.backfill else 0) + 2
            if refused := too_few_connections(limit, limited_by, size):
                raise UsageError(refused)
        # one per worker, two for claims, leases, health checks; or one per index rebuilt
        return await self._connect(
            dsn, size=max(s.concurrency, s.backfill_index_jobs if s.backfill else 0) + 2
        )

    async def _connect(self, dsn: str, *, size: int) -> Database:
        s = self.settings
        return await Database.open(
            dsn,
            size=size,
            connect_timeout_s=s.connect_timeout_s,
            statement_timeout_s=s.statement_timeout_s,
            attempts=s.max_retries,
            backoff=self._backoff,
            lock_timeout_s=s.lock_timeout_s,
            application_name=application_name(self.token, s.instance_id),
        )

    async def _serve(self, db: Database) -> None:
        s = self.settings
        manifest = self.manifest
        self.metrics.manifest_missing.set_function(lambda: float(manifest.broken is not None))
        try:
            async with db.connection() as conn:
                if s.once and s.backfill:
                    await backfill.check_owners(conn, s)  # refused before anything is made
                if await manifest.ensure(conn):
                    # Normal on a first start; after a manifest was dropped, every file in
                    # the inbox loads again (README runbook).
                    log.warning("manifest_created", extra={"manifest": manifest.name})
                version = await server_version(conn)
                await self._check_twins(manifest, conn)
        except (FileError, RetryableError) as exc:
            # Typically a missing grant: the message names the privilege and the fix.
            raise UsageError(f"cannot use the manifest {manifest.name}: {exc}") from None
        _check_server(s, version)
        await self._backfill_begin(db)
        queue: WorkQueue = asyncio.Queue(maxsize=s.effective_queue_size)
        progress = self._progress()
        ctx = LoadContext(
            settings=s,
            manifest=manifest,
            metrics=self.metrics,
            run_id=self.run_id,
            server_version=version,
            stopping=self.stopping,
            progress=progress,
            upkeep=Upkeep(s.analyze_after_rows, self.metrics, version),
            offer=functools.partial(_offer, queue),
        )
        scanner = Scanner(
            s, db, manifest, queue, self.results, self.metrics, self.run_id, self._backoff
        )
        self._scanner = scanner
        scanner.progress = progress
        self.results.on_result = _chain(self.results.on_result, scanner.finished)
        if progress is not None:
            self.results.on_result = _chain(
                self.results.on_result, lambda result: progress.finished(result.name)
            )
        self.metrics.queue_depth.set_function(queue.qsize)
        self.metrics.track_oldest(scanner.oldest_waiting)
        leases = scanner.leases
        workers = [
            Worker(f"w{i}", db, ctx, self.results, self._backoff, leases)
            for i in range(s.concurrency)
        ]
        tasks = [
            asyncio.create_task(w.run(queue), name=f"ingestd-worker-{i}")
            for i, w in enumerate(workers)
        ]
        # Supervised like the scanner and the workers: one that dies stops the service
        # loudly, instead of readiness or the leases freezing unseen.
        background = [
            asyncio.create_task(self._health(db, scanner), name="ingestd-health"),
            asyncio.create_task(self._renew(db, manifest, leases), name="ingestd-leases"),
        ]
        if progress is not None:
            background.append(asyncio.create_task(progress.run(), name="ingestd-progress"))
        try:
            await self._drive(scanner, queue, [*tasks, *background])
        finally:
            await self._stop_workers(tasks)
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            self._never_opened(queue)
        await self._backfill_finish(db, progress is not None and sys.stderr.isatty())

    def _index_jobs(self) -> int:
        """Rebuilds at once: as configured, within the pool (see _run)."""
        s = self.settings
        pool = max(s.concurrency, s.backfill_index_jobs if s.backfill else 0) + 2
        return min(s.backfill_index_jobs, pool)

    async def _backfill_begin(self, db: Database) -> None:
        """Daemon: refuse a table in backfill. --once --backfill: record and drop the
        targets' secondary indexes. Another --once run: rebuild what a killed backfill left."""
        s = self.settings
        try:
            async with db.connection() as conn:
                if not s.once:
                    await backfill.refuse_daemon(conn, s)
                    return
                if s.backfill:
                    plans = await backfill.begin(conn, s, self.run_id, self.token)
                    self._backfill_targets = [p.target for p in plans]
                    return
        except UsageError:
            raise
        except IngestdError as exc:
            raise UsageError(
                f"backfill: cannot prepare the targets: {exc}; indexes already dropped are "
                f"recorded, and `{backfill.FINISH_HINT}` or the next --once run rebuilds them"
            ) from None
        # Loading goes on if one fails (indexes are not needed for correctness); the
        # summary says what is still dropped.
        try:
            outcome = await backfill.finish(db, s, jobs=self._index_jobs(), token=self.token)
        except IngestdError as exc:
            log.warning("backfill_finish_failed", extra={"error": str(exc)})
            return
        self._backfill_note = outcome.message()

    async def _backfill_finish(self, db: Database, at_terminal: bool) -> None:
        """--once --backfill after the load: rebuild, then ANALYZE; a stop leaves the records."""
        s = self.settings
        if not (s.once and s.backfill):
            return
        if self.stop_requested or self.manifest.broken is not None:
            self._backfill_note = (
                f"backfill: stopped before the indexes were rebuilt; run "
                f"`{backfill.FINISH_HINT}` (or the --once run again) to rebuild them"
            )
            return
        say = _say if at_terminal else None
        run = asyncio.ensure_future(
            backfill.finish(
                db,
                s,
                jobs=self._index_jobs(),
                token=self.token,
                analyze=self._backfill_targets,
                say=say,
            )
        )
        aborted = asyncio.ensure_future(self._abort.wait())  # any signal during the rebuild
        try:
            await asyncio.wait({run, aborted}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            aborted.cancel()
            if not run.done():
                run.cancel()
            await asyncio.gather(run, aborted, return_exceptions=True)
        if run.cancelled():
            self.stop_requested = True
            self._backfill_note = (
                f"backfill: stopped during the rebuild (the index in hand rolled back); run "
                f"`{backfill.FINISH_HINT}` to rebuild the rest"
            )
            return
        error = run.exception()
        if isinstance(error, IngestdError):  # the files are loaded: only the rebuild waits
            self._backfill_note = (
                f"backfill: the indexes could not be rebuilt ({error}); run "
                f"`{backfill.FINISH_HINT}` to rebuild them"
            )
            return
        self._backfill_note = run.result().message()

    async def _drive(
        self, scanner: Scanner, queue: WorkQueue, supervised: list[asyncio.Task[None]]
    ) -> None:
        """Discover (once, or until stopped), drain the queue in --once; stop if a task dies."""
        if self.settings.once:
            discovery = scanner.scan_once()
        else:
            discovery = scanner.watch(self.stopping)
        scanning = asyncio.create_task(discovery, name="ingestd-scanner")
        stopped = asyncio.create_task(self.stopping.wait(), name="ingestd-stop")
        draining: asyncio.Task[None] | None = None
        try:
            await _first(scanning, stopped, *supervised)
            if self.settings.once and not self.stopping.is_set():
                draining = asyncio.create_task(queue.join(), name="ingestd-drain")
                await _first(draining, stopped, *supervised)
            _raise_if_dead(scanning, *supervised, stopping=self.stopping.is_set())
        finally:
            tasks = [t for t in (scanning, stopped, draining) if t is not None]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _stop_workers(self, tasks: list[asyncio.Task[None]]) -> None:
        """Let each worker finish (or roll back) its batch in hand, within the grace period;
        a second signal or the deadline cancels them, which rolls back the open batch."""
        self.stopping.set()  # workers stop before their next batch and their next file
        grace_s = self.settings.shutdown_grace_s
        finished = asyncio.ensure_future(asyncio.wait(tasks))
        aborted = asyncio.ensure_future(self._abort.wait())
        try:
            done, _ = await asyncio.wait(
                {finished, aborted}, timeout=grace_s, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            finished.cancel()  # cancels the wait, not the workers
            aborted.cancel()
        if not done:
            log.error("shutdown_timeout", extra={"grace_s": grace_s})
        for task in tasks:
            task.cancel()
        await asyncio.wait(tasks, timeout=10)

    def _never_opened(self, queue: WorkQueue) -> None:
        """The files still queued at the stop: reported interrupted, never opened."""
        while not queue.empty():
            item = queue.get_nowait()
            if not isinstance(item, Help):
                self.results.add(never_opened(item))

    async def _renew(self, db: Database, manifest: Manifest, leases: set[int]) -> None:
        """Renew the leases on files in hand, so that a slow batch is not taken over; and
        look out for another live process using this instance id."""
        while True:
            await asyncio.sleep(self.settings.lease_s / 3)
            try:
                async with db.connection() as conn:
                    await self._check_twins(manifest, conn)
                    if manifest.broken is None:
                        await manifest.check(conn)  # noticed while idle too
                    if leases and manifest.broken is None:
                        await manifest.renew(conn, sorted(leases))
            except ManifestGoneError as exc:
                manifest.halt(exc)
            except IngestdError as exc:  # the batches renew too; an outage is told elsewhere
                log.debug("lease_renewal_failed", extra={"error": str(exc)})

    async def _check_twins(self, manifest: Manifest, conn: Connection) -> None:
        """Warn once when another live process uses this instance id; the gauge follows."""
        twins = await manifest.twins(conn)
        seen_before = self._twins
        self._twins = twins
        self.metrics.instance_id_shared.set(twins)
        if twins and not seen_before:
            log.warning(
                "instance_id_shared",
                extra={
                    "processes": twins + 1,
                    "error": f"{twins} other live process(es) use instance id "
                    f"{self.settings.instance_id!r} on this database; each keeps its own "
                    "claims apart (per-process token), but give every instance its own "
                    "--instance-id / INGESTD_INSTANCE_ID",
                },
            )

    async def _health(self, db: Database, scanner: Scanner) -> None:
        """Keep readiness honest while no files flow: ping the database now and then."""
        while True:
            await asyncio.sleep(HEALTH_INTERVAL_S if scanner.db_ok else HEALTH_INTERVAL_S / 2)
            ok = await db.ping(timeout_s=min(self.settings.connect_timeout_s, 5.0))
            if ok and not scanner.db_ok:
                log.info("database_available")
            elif not ok and scanner.db_ok:
                log.warning("database_unavailable", extra={"error": "health check failed"})
            scanner.db_ok = ok


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _check_server(settings: Settings, version: int) -> None:
    merging = [c.name for c in settings.contracts if c.mode == "merge"]
    if merging and version < MERGE_MIN_VERSION:
        raise UsageError(
            f"contract(s) {', '.join(merging)} use --mode merge, which needs PostgreSQL 15 or "
            f"newer; this server is {version // 10000}. Use --mode upsert instead"
        )


async def _first(*tasks: asyncio.Task[Any]) -> None:
    await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)


def _raise_if_dead(
    scanning: asyncio.Task[None], *supervised: asyncio.Task[None], stopping: bool
) -> None:
    """A background task that ended on its own is a bug or a lost resource: stop loudly.
    After a stop, a worker that returned is just done (workers end by themselves then)."""
    if scanning.done() and not scanning.cancelled() and scanning.exception() is not None:
        raise scanning.exception()  # type: ignore[misc]  # checked not None just above
    for task in supervised:
        if task.done():
            error = None if task.cancelled() else task.exception()
            if error is None and stopping and not task.cancelled():
                continue
            # Chained: the crash report's traceback shows the failing line, not only this one.
            raise RuntimeError(f"{task.get_name()} stopped unexpectedly: {error!r}") from error


def _chain(
    first: Callable[[FileResult], None] | None, second: Callable[[FileResult], None]
) -> Callable[[FileResult], None]:
    def both(result: FileResult) -> None:
        if first is not None:
            first(result)
        second(result)

    return both


def _offer(queue: WorkQueue, item: Help) -> bool:
    """Put a help offer on the queue unless it is full (then nobody is idle anyway)."""
    try:
        queue.put_nowait(item)
    except asyncio.QueueFull:
        return False
    return True
