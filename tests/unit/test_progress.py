"""The progress display's books and ETA, on a fake clock."""

from __future__ import annotations

import io

import pytest

from ingestd.progress import MIN_WINDOW_S, WINDOW_S, Progress


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def steady(p: Progress, clock: Clock, name: str, seconds: int, bytes_per_s: int) -> None:
    for _ in range(seconds):
        clock.now += 1
        p.batch(name, bytes_per_s // 100, bytes_per_s)


def test_eta_at_a_steady_rate_is_the_remaining_bytes_over_the_rate() -> None:
    clock = Clock()
    p = Progress(io.StringIO(), clock=clock)
    p.claimed("a.csv", 1_000_000)
    clock.now += 30  # start-up (checksum, planning) is not loading: not in the rate
    p.batch("a.csv", 0, 0)
    steady(p, clock, "a.csv", 50, 10_000)
    s = p.snapshot()
    assert s.bytes_done == 500_000 and s.bytes_total == 1_000_000
    assert s.bytes_per_s == pytest.approx(10_000)
    assert s.eta_s == pytest.approx(50)
    assert s.rows_per_s == pytest.approx(100)


def test_eta_follows_a_change_of_rate_within_the_window() -> None:
    clock = Clock()
    p = Progress(io.StringIO(), clock=clock)
    p.claimed("big.csv", 10_000_000)
    steady(p, clock, "big.csv", 120, 20_000)  # 2.4 MB at 20 kB/s
    steady(p, clock, "big.csv", int(WINDOW_S) + 5, 5_000)  # then slower: the window forgets
    s = p.snapshot()
    assert s.bytes_per_s == pytest.approx(5_000, rel=0.05)
    assert s.eta_s == pytest.approx((10_000_000 - s.bytes_done) / 5_000, rel=0.05)


def test_several_workers_and_segments_add_up_per_file_and_in_total() -> None:
    clock = Clock()
    p = Progress(io.StringIO(), clock=clock)
    p.claimed("a.csv", 400)
    p.claimed("b.csv", 600)
    for _ in range(10):  # two segments of b and a, from three workers, interleaved
        clock.now += 1
        p.batch("a.csv", 1, 20)
        p.batch("b.csv", 1, 15)
        p.batch("b.csv", 1, 15)
    s = p.snapshot()
    assert (s.bytes_done, s.bytes_total, s.rows) == (500, 1000, 30)
    assert {name: pct for name, pct, _ in s.active} == {"a.csv": 50, "b.csv": 50}
    assert s.eta_s == pytest.approx(10, rel=0.15)
    p.finished("a.csv")
    p.finished("b.csv")
    done = p.snapshot()
    assert done.files_done == 2 and done.bytes_done == 1000 and done.eta_s == 0
    assert "[2/2 files] 30 rows" in p.line() and "1.0 kB of 1.0 kB (100%)" in p.line()


def test_no_eta_before_the_first_batch_and_a_short_history_uses_the_average() -> None:
    clock = Clock()
    p = Progress(io.StringIO(), clock=clock)
    p.claimed("a.csv", 100)
    assert p.snapshot().eta_s is None and "ETA --:--" in p.line()
    p.batch("a.csv", 1, 0)
    clock.now += MIN_WINDOW_S / 2
    p.batch("a.csv", 1, 10)
    assert p.snapshot().eta_s == pytest.approx(90 / (10 / (MIN_WINDOW_S / 2)))


def test_a_long_eta_shows_hours() -> None:
    clock = Clock()
    p = Progress(io.StringIO(), clock=clock)
    p.claimed("huge.csv", 10**12)
    p.batch("huge.csv", 1, 0)
    clock.now += 10
    p.batch("huge.csv", 1, 10**7)
    assert "ETA 277:" in p.line()  # (10**12 - 10**7) / 10**6 per s: 277 h 46 min
