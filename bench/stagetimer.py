"""Run ingestd in this process with a stopwatch on each step of the batch loop.

    python -m bench.stagetimer OUT.json <ingestd arguments...>

Wraps (without changing ingestd) the names ingestd.pipeline calls: the reader's batches
and encode_batch or the raw segments (in the producer thread), the COPY into the
stage or the target, merge_batch, the manifest
checkpoint, and asyncpg's transaction BEGIN/COMMIT (on the event loop). Writes the wall
seconds of each to OUT.json. Used by bench.profile.
"""

from __future__ import annotations

import json
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

SECONDS: dict[str, float] = defaultdict(float)
CALLS: dict[str, int] = defaultdict(int)


def _timed_async(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return await fn(*args, **kwargs)
        finally:
            SECONDS[name] += time.perf_counter() - started
            CALLS[name] += 1

    return wrapper


def _timed(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            SECONDS[name] += time.perf_counter() - started
            CALLS[name] += 1

    return wrapper


def _timed_iter(name: str, fn: Callable[..., Iterator[Any]]) -> Callable[..., Iterator[Any]]:
    def wrapper(*args: Any, **kwargs: Any) -> Iterator[Any]:
        it = fn(*args, **kwargs)
        while True:
            started = time.perf_counter()
            try:
                item = next(it)
            except StopIteration:
                SECONDS[name] += time.perf_counter() - started
                return
            SECONDS[name] += time.perf_counter() - started
            CALLS[name] += 1
            yield item

    return wrapper


def install() -> None:
    import asyncpg.transaction

    from ingestd import pipeline, worker
    from ingestd.db import merge
    from ingestd.db.manifest import Manifest
    from ingestd.read.raw_csv import RawCsv

    # The names process_file and apply_batch call, as their modules imported them.
    names = vars(pipeline)
    wrap = {
        "skip_rows": _timed_iter("read (parse + rebatch)", names["skip_rows"]),
        "encode_batch": _timed("encode (Arrow -> CSV bytes)", names["encode_batch"]),
    }
    for name, wrapper in wrap.items():
        setattr(pipeline, name, wrapper)
    # apply_batch calls these through ingestd.db.merge's globals.
    space = vars(merge)
    space["copy_batch"] = _timed_async("COPY into stage", space["copy_batch"])
    space["copy_into_target"] = _timed_async("COPY into target", space["copy_into_target"])
    space["merge_batch"] = _timed_async("merge SQL", space["merge_batch"])
    RawCsv.batches = _timed_iter("read raw segments", RawCsv.batches)  # type: ignore[method-assign]
    Manifest.checkpoint = _timed_async("manifest checkpoint", Manifest.checkpoint)  # type: ignore[method-assign]
    tx = asyncpg.transaction.Transaction
    tx.__aenter__ = _timed_async("BEGIN", tx.__aenter__)  # type: ignore[method-assign]
    tx.__aexit__ = _timed_async("COMMIT", tx.__aexit__)  # type: ignore[method-assign]
    name = "process_file"
    setattr(worker, name, _timed_async("process_file (whole file)", vars(worker)[name]))


def main(argv: list[str]) -> int:
    out, args = Path(argv[0]), argv[1:]
    started = time.perf_counter()
    install()
    from ingestd.cli import main as ingestd_main

    code = ingestd_main(args)
    SECONDS["process (whole run)"] = time.perf_counter() - started
    out.write_text(json.dumps({"seconds": SECONDS, "calls": CALLS, "exit": code}, indent=1))
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
