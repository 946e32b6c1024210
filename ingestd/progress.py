"""A progress line for --once backfills on a terminal: per file and overall, rows, MB/s, ETA."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import TextIO

REDRAW_S = 0.25


@dataclass
class _File:
    size: int
    done_bytes: int = 0
    finished: bool = False


class Progress:
    """Fed by the scanner (claims), workers (batches) and results; drawn on one line."""

    def __init__(self, out: TextIO):
        self._out = out
        self._files: dict[str, _File] = {}
        self._rows = 0
        self._started = time.monotonic()
        self._width = 0

    def claimed(self, name: str, size: int) -> None:
        self._files[name] = _File(size)

    def batch(self, name: str, rows: int, payload_bytes: int) -> None:
        self._rows += rows
        f = self._files.get(name)
        if f is not None:  # CSV bytes sent approximate the file's bytes read
            f.done_bytes = min(f.size, f.done_bytes + payload_bytes)

    def finished(self, name: str) -> None:
        f = self._files.get(name)
        if f is not None:
            f.finished = True
            f.done_bytes = f.size

    def line(self) -> str:
        """The progress line as it would be drawn now."""
        total = sum(f.size for f in self._files.values()) or 1
        done = sum(f.done_bytes for f in self._files.values())
        elapsed = max(time.monotonic() - self._started, 1e-6)
        rate = done / elapsed
        eta = (total - done) / rate if rate > 0 else 0.0
        finished = sum(f.finished for f in self._files.values())
        active = [
            f"{name} {100 * f.done_bytes // max(f.size, 1)}%"
            for name, f in self._files.items()
            if not f.finished and f.done_bytes
        ][:3]
        return (
            f"[{finished}/{len(self._files)} files] {self._rows:,} rows {rate / 1e6:.1f} MB/s "
            f"ETA {int(eta) // 60}:{int(eta) % 60:02d} {100 * done // total}%"
            + (" | " + "  ".join(active) if active else "")
        )

    def draw(self) -> None:
        text = self.line()
        pad = max(0, self._width - len(text))
        self._out.write("\r" + text + " " * pad)
        self._out.flush()
        self._width = len(text)

    def clear(self) -> None:
        self._out.write("\r" + " " * self._width + "\r")
        self._out.flush()

    async def run(self) -> None:
        """Redraw until cancelled; the line is cleared at the end, the summary follows."""
        try:
            while True:
                self.draw()
                await asyncio.sleep(REDRAW_S)
        finally:
            self.clear()
