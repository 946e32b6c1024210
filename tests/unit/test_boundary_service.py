"""The service's supervision and its report: a dead task's crash keeps the bug's own
traceback; a --once run stopped with files unfinished does not exit 0."""

from __future__ import annotations

import asyncio
import traceback

import pytest

from ingestd.model import FileResult, Outcome
from ingestd.service import RunReport, _raise_if_dead


def _the_line_with_the_bug() -> None:
    raise KeyError("x")


async def _dead_task() -> asyncio.Task[None]:
    async def health() -> None:
        _the_line_with_the_bug()

    task = asyncio.create_task(health(), name="ingestd-health")
    await asyncio.gather(task, return_exceptions=True)
    return task


def test_a_dead_task_keeps_its_traceback() -> None:
    async def main() -> None:
        scanning = asyncio.create_task(asyncio.sleep(3600))
        dead = await _dead_task()
        try:
            with pytest.raises(RuntimeError, match="ingestd-health stopped unexpectedly") as caught:
                _raise_if_dead(scanning, dead, stopping=False)
        finally:
            scanning.cancel()
        assert isinstance(caught.value.__cause__, KeyError)
        text = "".join(traceback.format_exception(caught.value))
        assert "_the_line_with_the_bug" in text

    asyncio.run(main())


@pytest.mark.parametrize(
    ("status", "code"),
    [(Outcome.SUCCESS, 0), (Outcome.SKIPPED, 0), (Outcome.HELD, 0), (Outcome.INTERRUPTED, 1),
     (Outcome.INTERNAL_ERROR, 1), (Outcome.FAILED, 1)],
)  # fmt: skip
def test_once_exit_code(status: Outcome, code: int) -> None:
    files = (FileResult("a.csv", "t", Outcome.SUCCESS), FileResult("b.csv", "t", status))
    assert RunReport("r", files, 1.0, once=True).exit_code == code
    assert RunReport("r", files, 1.0, once=False).exit_code == 0  # the daemon's stop is fine
