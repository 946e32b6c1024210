"""The worker's own decisions, against an in-memory manifest: retry, give up, bugs, stop, split.

No PostgreSQL here: the manifest is a small fake keeping the rows a worker touches, and the
load step (pipeline.process_file) is replaced by a script of what each attempt does. What
the server decides (which driver error is transient) is not modelled: an attempt raises
the ingestd error the database layer would have raised, and the test checks what the
worker makes of it: attempts, the manifest status, where the file is, metrics, log lines.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from pathlib import Path, PurePosixPath
from types import SimpleNamespace
from typing import Any

import pytest

from ingestd import worker
from ingestd.claim import Job
from ingestd.db.manifest import Claim, Committed, FileVersion, Segments
from ingestd.discover import identity
from ingestd.exceptions import FileError, Interrupted, RetryableError
from ingestd.metrics import Metrics
from ingestd.model import LoadContext, ManifestStatus, Outcome, Results
from ingestd.read.raw_csv import raw_csv
from ingestd.retry import Backoff
from ingestd.settings import BadRows, Contract, Settings
from ingestd.split import SplitLoad, plan_split
from tests.helpers import csv_rows, write

TRANSIENT = "deadlock detected (transient; will retry)"


@dataclass
class Row:
    """One manifest row as the worker sees it."""

    status: str = ManifestStatus.PENDING
    rows: int = 0
    attempts: int = 1  # the claim counted the first attempt
    notes: str | None = None
    segments: Segments | None = None


class FakeManifest:
    """The manifest calls a worker makes, kept in memory (one row per claim id)."""

    table_ref = (None, "ingestion_manifest")
    name = "ingestion_manifest"

    def __init__(self) -> None:
        self.rows: dict[int, Row] = {}
        self.broken: str | None = None

    def halt(self, error: Exception) -> None:
        self.broken = self.broken or str(error)

    async def add_attempt(self, conn: object, claim_id: int) -> None:
        self.rows[claim_id].attempts += 1

    async def progress(self, conn: object, claim_id: int) -> Committed:
        row = self.rows[claim_id]
        return Committed(row.rows, 0, 0, row.segments)

    async def finish(self, conn: object, claim_id: int, status: str, notes: str | None) -> int:
        row = self.rows[claim_id]
        row.status, row.notes = status, notes
        return row.rows

    async def plan_segments(self, conn: object, claim_id: int, plan: Segments) -> Committed:
        row = self.rows[claim_id]
        row.segments = plan
        return Committed(row.rows, 0, 0, plan)


class FakeDatabase:
    """Hands out connections that are never used for SQL (the fakes take them as tokens)."""

    def __init__(self) -> None:
        self.released: list[bool] = []  # `broken` of each release

    async def acquire(self) -> object:
        return object()

    async def release(self, conn: object, *, broken: bool = False) -> None:
        self.released.append(broken)


@dataclass
class Rig:
    """A worker on a fake manifest, the inbox beside it, and what its attempts do."""

    tmp_path: Path
    manifest: FakeManifest
    metrics: Metrics
    ctx: LoadContext
    results: Results
    loads: list[str]  # the file name of each attempt, in order
    script: dict[str, list[Callable[[], int]]]  # file name -> its attempts, in order

    @property
    def inbox(self) -> Path:
        return self.tmp_path / "inbox"

    def job(self, name: str, claim_id: int, text: str = csv_rows(3), **contract: Any) -> Job:
        path = write(self.inbox / name, text)
        self.manifest.rows[claim_id] = Row()
        values = {
            "path": path,
            "name": PurePosixPath(name),
            "contract": Contract(name="main", table="t", pk=("id",), **contract),
            "version": FileVersion(name, b"\x00" * 16, path.stat().st_size),
            "claim": Claim(manifest_id=claim_id, rows_done=0),
            "identity": identity(path),
            "queued_at": 0.0,
        }
        # Only the fields Job has (issue 13 retires some): the test is about the worker.
        return Job(**{f.name: values[f.name] for f in fields(Job)})

    async def run(self, *jobs: Job) -> Results:
        """Queue the jobs, let one worker take them, stop it once the queue is drained."""
        queue: worker.WorkQueue = asyncio.Queue()
        for job in jobs:
            queue.put_nowait(job)
        leases = {job.claim.manifest_id for job in jobs}
        w = worker.Worker("w0", FakeDatabase(), self.ctx, self.results, Backoff(0, 0, 0), leases)
        task = asyncio.ensure_future(w.run(queue))
        drained = asyncio.ensure_future(queue.join())
        # The worker serves until cancelled, or ends by itself after a stop.
        await asyncio.wait({task, drained}, timeout=10, return_when=asyncio.FIRST_COMPLETED)
        assert task.done() or drained.done(), "the worker neither drained the queue nor ended"
        drained.cancel()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task  # an error the worker let out fails the test here
        return self.results


@pytest.fixture
def rig(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Rig]:
    settings = Settings(contracts=(), inbox=tmp_path / "inbox", once=True, max_retries=2)
    manifest = FakeManifest()
    metrics = Metrics()
    ctx = LoadContext(settings, manifest, metrics, "run-1", 160000, asyncio.Event())
    rig = Rig(tmp_path, manifest, metrics, ctx, Results(), [], {})

    async def process_file(conn: object, job: Job, *args: object) -> int:
        rig.loads.append(job.path.name)
        return rig.script[job.path.name].pop(0)()

    monkeypatch.setattr(worker, "process_file", process_file)
    yield rig


def loads(rows: int, then: Callable[[], None] | None = None) -> Callable[[], int]:
    """An attempt that commits `rows` (after `then`, e.g. a stop request)."""

    def attempt() -> int:
        if then is not None:
            then()
        return rows

    return attempt


def raises(error: Exception, then: Callable[[], None] | None = None) -> Callable[[], int]:
    """An attempt that fails with `error` (after `then`)."""

    def attempt() -> int:
        if then is not None:
            then()
        raise error

    return attempt


def sample(metrics: Metrics, name: str) -> float:
    value = metrics.registry.get_sample_value(name)
    return 0.0 if value is None else float(value)


# --- retry --------------------------------------------------------------------------------


async def test_a_transient_error_is_retried_and_counted(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    rig.script["a.csv"] = [raises(RetryableError(TRANSIENT)), raises(RetryableError(TRANSIENT)),
                           loads(3)]  # fmt: skip
    job = rig.job("a.csv", 1)
    with caplog.at_level(logging.INFO, logger="ingestd.worker"):
        [result] = (await rig.run(job)).files
    assert (result.status, result.rows, result.attempts) == (Outcome.SUCCESS, 3, 3)
    assert rig.loads == ["a.csv"] * 3
    assert rig.manifest.rows[1].attempts == 3  # the claim's, then one per retry
    assert sample(rig.metrics, "ingest_retries_total") == 2
    retries = [r for r in caplog.records if r.getMessage() == "file_retry"]
    assert [r.__dict__["attempt"] for r in retries] == [2, 3]  # the attempt after the wait
    assert not (rig.inbox / "a.csv").exists()
    assert list((rig.tmp_path / "done").rglob("a.csv"))  # moved once loaded


async def test_giving_up_leaves_the_file_retrying_in_the_inbox(rig: Rig) -> None:
    rig.script["a.csv"] = [raises(RetryableError(TRANSIENT)) for _ in range(3)]
    job = rig.job("a.csv", 1)
    [result] = (await rig.run(job)).files
    # max_retries = 2: the first attempt and two retries, then no more.
    assert rig.loads == ["a.csv"] * 3
    assert (result.status, result.stay) == (Outcome.RETRYING, True)
    row = rig.manifest.rows[1]
    assert row.status == ManifestStatus.RETRYING and row.attempts == 3
    assert row.notes is not None and row.notes.startswith("gave up after 3 attempts: deadlock")
    assert "(transient; will retry)" not in row.notes  # no retry follows now
    assert "stays in the inbox for the next run" in row.notes
    assert (rig.inbox / "a.csv").exists() and not (rig.tmp_path / "failed").exists()
    assert sample(rig.metrics, "ingest_retries_total") == 2


async def test_a_permanent_error_is_not_retried_and_the_file_fails(rig: Rig) -> None:
    rig.script["a.csv"] = [raises(FileError("row 2 has 3 fields, expected 2"))]
    job = rig.job("a.csv", 1)
    [result] = (await rig.run(job)).files
    assert rig.loads == ["a.csv"]
    assert result.status == Outcome.FAILED
    assert rig.manifest.rows[1].status == ManifestStatus.FAILED
    assert not (rig.inbox / "a.csv").exists()
    assert (rig.tmp_path / "failed" / "a.csv").exists()
    assert (rig.tmp_path / "failed" / "a.csv.error.json").exists()
    assert sample(rig.metrics, "ingest_retries_total") == 0


async def test_a_bug_leaves_the_file_pending_in_the_inbox_and_the_worker_goes_on(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    rig.script["a.csv"] = [raises(KeyError("x"))]
    rig.script["b.csv"] = [loads(3)]
    with caplog.at_level(logging.INFO, logger="ingestd.worker"):
        first, second = (await rig.run(rig.job("a.csv", 1), rig.job("b.csv", 2))).files
    assert rig.loads == ["a.csv", "b.csv"]  # not retried in a loop; the next file loads
    assert (first.status, first.stay) == (Outcome.INTERNAL_ERROR, True)
    assert rig.manifest.rows[1].status == ManifestStatus.PENDING
    assert (rig.inbox / "a.csv").exists() and not (rig.tmp_path / "failed").exists()
    assert sample(rig.metrics, "ingest_internal_errors_total") == 1
    [line] = [r for r in caplog.records if r.getMessage() == "internal_error"]
    assert line.exc_info is not None  # the traceback, for the bug report
    assert second.status == Outcome.SUCCESS


# --- stop ---------------------------------------------------------------------------------


async def test_a_stop_during_the_backoff_ends_the_file_interrupted_without_another_attempt(
    rig: Rig,
) -> None:
    def commit_then_stop() -> None:
        rig.manifest.rows[1].rows = 2  # a batch committed before the transient error
        rig.ctx.stopping.set()

    rig.script["a.csv"] = [raises(RetryableError(TRANSIENT), then=commit_then_stop)]
    [result] = (await rig.run(rig.job("a.csv", 1))).files
    assert rig.loads == ["a.csv"]
    assert (result.status, result.rows, result.stay) == (Outcome.INTERRUPTED, 2, True)
    assert rig.manifest.rows[1].status == ManifestStatus.PENDING  # resumes on the next run
    assert (rig.inbox / "a.csv").exists() and not (rig.tmp_path / "failed").exists()


async def test_after_a_stop_the_worker_takes_no_next_file(rig: Rig) -> None:
    rig.script["a.csv"] = [loads(3, then=rig.ctx.stopping.set)]
    rig.script["b.csv"] = [loads(3)]
    await rig.run(rig.job("a.csv", 1), rig.job("b.csv", 2))
    assert rig.loads == ["a.csv"]  # b.csv is not opened after the stop
    assert (rig.inbox / "b.csv").exists() and not (rig.tmp_path / "failed").exists()
    assert rig.manifest.rows[2].status == ManifestStatus.PENDING


# --- split --------------------------------------------------------------------------------


def _split_job(rig: Rig, tmp_path: Path, **contract: Any) -> tuple[Job, Settings]:
    job = rig.job("big.csv", 7, csv_rows(6000), **{"mode": "append", **contract})  # ~60 kB
    settings = Settings(contracts=(), inbox=tmp_path / "inbox", concurrency=3, split_mb=0.01)
    return job, settings


def _context(rig: Rig, settings: Settings, *, offer: bool = True) -> LoadContext:
    return LoadContext(settings, rig.manifest, rig.metrics, "run-1", 160000, asyncio.Event(),
                       offer=(lambda _help: True) if offer else None)  # fmt: skip


async def test_a_large_append_is_planned_into_row_aligned_segments_in_the_manifest(
    rig: Rig, tmp_path: Path
) -> None:
    job, settings = _split_job(rig, tmp_path)
    raw = raw_csv(job.path, job.contract.csv, names_match=True, compressed=False)
    assert raw is not None
    committed = await plan_split(object(), job, _context(rig, settings), raw, Committed(0, 0, 0))
    plan = rig.manifest.rows[7].segments
    assert plan is not None and committed.segments == plan
    assert len(plan.ends) == settings.concurrency
    assert plan.done == (raw.start, *plan.ends[:-1])  # each segment starts where one ends
    assert plan.ends[-1] == job.version.filesize
    data = job.path.read_bytes()
    assert all(data[end - 1 : end] == b"\n" for end in plan.ends)  # at row boundaries
    rows = [data[a:b].count(b"\n") for a, b in zip(plan.done, plan.ends, strict=True)]
    assert sum(rows) == 6000 and min(rows) > 0


@pytest.mark.parametrize(
    ("why", "contract", "offer"),
    [
        ("upsert", {"mode": "upsert"}, True),
        ("bad rows allowed", {"max_bad_rows": BadRows(count=5)}, True),
        ("nobody to help", {}, False),
    ],
)
async def test_a_file_is_not_split_when_its_rows_must_be_counted_from_the_top(
    rig: Rig, tmp_path: Path, why: str, contract: dict[str, Any], offer: bool
) -> None:
    job, settings = _split_job(rig, tmp_path, **contract)
    raw = raw_csv(job.path, job.contract.csv, names_match=True, compressed=False)
    before = Committed(0, 0, 0)
    ctx = _context(rig, settings, offer=offer)
    assert await plan_split(object(), job, ctx, raw, before) is before, why
    assert rig.manifest.rows[7].segments is None


# --- split: who loads which segment ---------------------------------------------------------


class ScriptedSplit(SplitLoad):
    """The hand-out of a split file's segments, each segment's load replaced by a record of
    who loaded it (SplitLoad._load is where the batches would go to PostgreSQL)."""

    def __init__(self, segments: Segments, fail: int | None = None) -> None:
        job = SimpleNamespace(name=PurePosixPath("big.csv"))  # only its name is logged
        super().__init__(job, None, None, None, segments)  # type: ignore[arg-type]
        self.failing = fail
        self.loaded: list[tuple[str, int]] = []
        self.started = asyncio.Event()

    async def _load(self, conn: object, worker_id: str, segment: int) -> None:
        self.started.set()
        await asyncio.sleep(0)  # a batch's await: the other participants take turns
        if segment == self.failing:
            raise FileError("row 5 has 3 fields, expected 2")
        self.loaded.append((worker_id, segment))


FOUR = Segments(ends=(100, 200, 300, 400), done=(0, 100, 300, 300))  # segment 2 is done


async def test_each_segment_left_is_loaded_once_by_whoever_asks() -> None:
    split = ScriptedSplit(FOUR)
    assert split.left == 3
    owner = split.take_part(object(), "w0")
    helper = split.help(object(), "w1")
    assert await asyncio.gather(owner, helper) == [True, True]
    await split.finished()
    assert sorted(segment for _, segment in split.loaded) == [0, 1, 3]  # 2 was done
    assert {worker for worker, _ in split.loaded} == {"w0", "w1"}  # both helped
    assert split.left == 0


async def test_a_failing_segment_stops_the_others_and_the_owner_raises_it() -> None:
    split = ScriptedSplit(FOUR, fail=0)
    results = await asyncio.gather(split.take_part(object(), "w0"), split.help(object(), "w1"))
    assert results == [False, True]  # the failing participant's connection may be unusable
    with pytest.raises(FileError, match="row 5 has 3 fields"):
        await split.finished()
    assert [segment for _, segment in split.loaded] == [1]  # in hand already; 3 never taken
    assert split.left == 1


async def test_a_participant_cancelled_mid_segment_leaves_the_file_interrupted() -> None:
    split = ScriptedSplit(Segments(ends=(100,), done=(0,)))
    split._load = _forever.__get__(split)  # type: ignore[method-assign]
    part = asyncio.ensure_future(split.take_part(object(), "w0"))
    await split.started.wait()
    part.cancel()
    with pytest.raises(asyncio.CancelledError):
        await part
    with pytest.raises(Interrupted, match="resumes on the next run"):
        await split.finished()


async def _forever(self: ScriptedSplit, conn: object, worker_id: str, segment: int) -> None:
    self.started.set()
    await asyncio.Event().wait()  # a batch that never ends until the task is cancelled
