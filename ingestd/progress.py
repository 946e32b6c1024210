"""Progress of a --once run: per file and in total, rows/s, bytes done of bytes total, ETA.

Fed by the scanner (claims), every worker's batches (split segments of one file add up
under its name) and the results. On a terminal one line is redrawn in place; elsewhere a
`progress` log line now and then, which a log collector keeps and a person can still read.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO

log = logging.getLogger(__name__)
REDRAW_S = 0.25
LOG_EVERY_S = 10.0
# The ETA follows the rate of the last minute: steady enough not to jump with each batch,
# recent enough to follow a change (the rebuild of a slow file, a worker that finished).
WINDOW_S = 60.0
MIN_WINDOW_S = 5.0  # before this much history, the average since the first batch


@dataclass
class _File:
    size: int
    done_bytes: int = 0
    rows: int = 0
    started: float | None = None
    finished: bool = False


@dataclass(frozen=True)
class Snapshot:
    """Where the run stands: what the line shows."""

    files_done: int
    files: int
    rows: int
    rows_per_s: float
    bytes_done: int
    bytes_total: int
    bytes_per_s: float
    eta_s: float | None  # None: not known yet (nothing loaded)
    active: tuple[tuple[str, int, float], ...]  # (name, percent, rows/s) of files loading


class Progress:
    """The books of a run's progress, and its display; `clock` is injectable for tests."""

    def __init__(self, out: TextIO, *, clock: Callable[[], float] = time.monotonic,
                 tty: bool = True) -> None:  # fmt: skip
        self._out = out
        self._clock = clock
        self._tty = tty
        self._files: dict[str, _File] = {}
        self._rows = 0
        self._done = 0  # the files' done_bytes, kept as they change: a sum per batch was O(files)
        self._first: float | None = None  # the first batch: rates count from there
        self._samples: deque[tuple[float, int, int]] = deque()  # (time, bytes, rows)
        self._width = 0

    def claimed(self, name: str, size: int) -> None:
        old = self._files.get(name)
        if old is not None:
            self._done -= old.done_bytes
        self._files[name] = _File(size)

    def batch(self, name: str, rows: int, payload_bytes: int) -> None:
        now = self._clock()
        if self._first is None:
            self._first = now
            self._samples.append((now, 0, 0))
        self._rows += rows
        f = self._files.get(name)
        if f is not None:  # the CSV bytes sent approximate the file's bytes read
            f.started = now if f.started is None else f.started
            self._set_done(f, min(f.size, f.done_bytes + payload_bytes))
            f.rows += rows
        self._samples.append((now, self._bytes_done(), self._rows))
        while len(self._samples) > 2 and self._samples[1][0] < now - WINDOW_S:
            self._samples.popleft()

    def finished(self, name: str) -> None:
        f = self._files.get(name)
        if f is not None:
            f.finished = True
            self._set_done(f, f.size)

    def _set_done(self, f: _File, done_bytes: int) -> None:
        self._done += done_bytes - f.done_bytes
        f.done_bytes = done_bytes

    def _bytes_done(self) -> int:
        return self._done

    def snapshot(self) -> Snapshot:
        """The run's progress now."""
        now = self._clock()
        total = sum(f.size for f in self._files.values())
        done = self._bytes_done()
        byte_rate, row_rate = self._rates(now, done)
        eta = None
        if byte_rate > 0:
            eta = max(0.0, (total - done) / byte_rate)
        elif total and done >= total:
            eta = 0.0
        active = tuple(
            (name, 100 * f.done_bytes // max(f.size, 1),
             f.rows / max(now - f.started, 1e-6) if f.started is not None else 0.0)
            for name, f in self._files.items()
            if not f.finished and f.done_bytes
        )  # fmt: skip
        return Snapshot(
            sum(f.finished for f in self._files.values()), len(self._files), self._rows,
            row_rate, done, total, byte_rate, eta, active,
        )  # fmt: skip

    def _rates(self, now: float, done: int) -> tuple[float, float]:
        """(bytes/s, rows/s): over the window once it holds enough history, else since the
        first batch (start-up before it, the checksum and planning, is not loading)."""
        if self._first is None:
            return 0.0, 0.0
        t0, bytes0, rows0 = self._samples[0]
        if now - t0 < MIN_WINDOW_S:
            t0, bytes0, rows0 = self._first, 0, 0
        span = max(now - t0, 1e-6)
        return (done - bytes0) / span, (self._rows - rows0) / span

    def line(self) -> str:
        """The progress line as it would be drawn now."""
        s = self.snapshot()
        pct = 100 * s.bytes_done // s.bytes_total if s.bytes_total else 0
        text = (
            f"[{s.files_done}/{s.files} files] {s.rows:,} rows {s.rows_per_s:,.0f} rows/s "
            f"{_size(s.bytes_done)} of {_size(s.bytes_total)} ({pct}%) "
            f"{s.bytes_per_s / 1e6:.1f} MB/s ETA {_duration(s.eta_s)}"
        )
        if s.active:
            shown = [f"{_short(n)} {p}% {r:,.0f}/s" for n, p, r in s.active[:3]]
            more = f" +{len(s.active) - 3}" if len(s.active) > 3 else ""
            text += " | " + "  ".join(shown) + more
        return text

    def draw(self) -> None:
        text = self.line()
        pad = max(0, self._width - len(text))
        self._out.write("\r" + text + " " * pad)
        self._out.flush()
        self._width = len(text)

    def clear(self) -> None:
        self._out.write("\r" + " " * self._width + "\r")
        self._out.flush()

    def log_line(self) -> None:
        """The progress as a log event (not a terminal: no line to redraw)."""
        s = self.snapshot()
        log.info(
            "progress",
            extra={"files_done": s.files_done, "files": s.files, "rows": s.rows,
                   "rows_per_s": round(s.rows_per_s), "bytes_done": s.bytes_done,
                   "bytes_total": s.bytes_total,
                   "eta_s": None if s.eta_s is None else round(s.eta_s, 1)},
        )  # fmt: skip

    async def run(self) -> None:
        """Redraw until cancelled (the line is cleared at the end, the summary follows); not
        on a terminal, a progress log line every LOG_EVERY_S."""
        if not self._tty:
            while True:
                await asyncio.sleep(LOG_EVERY_S)
                if self._first is not None:
                    self.log_line()
        try:
            while True:
                self.draw()
                await asyncio.sleep(REDRAW_S)
        finally:
            self.clear()


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "--:--"
    whole = int(seconds)
    hours, rest = divmod(whole, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def _size(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def _short(name: str, width: int = 24) -> str:
    return name if len(name) <= width else "…" + name[-(width - 1) :]
