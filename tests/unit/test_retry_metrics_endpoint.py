"""Backoff, the Prometheus collectors, and the tiny HTTP endpoint that serves them."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator

import pytest

from ingestd.endpoint import Endpoint
from ingestd.metrics import Metrics
from ingestd.retry import Backoff

# --- Backoff ------------------------------------------------------------------------------


@pytest.mark.parametrize("attempt", range(5))
def test_backoff_grows_exponentially_with_bounded_jitter(attempt: int) -> None:
    backoff = Backoff(base_s=1.0, cap_s=1000.0)
    for _ in range(200):
        delay = backoff.delay(attempt)
        assert 2**attempt <= delay <= 2**attempt + 0.5


def test_backoff_jitter_varies() -> None:
    delays = {Backoff().delay(0) for _ in range(50)}
    assert len(delays) > 1


def test_backoff_scales_with_base() -> None:
    backoff = Backoff(base_s=0.01, cap_s=30.0, jitter_s=0.0)
    assert [backoff.delay(n) for n in range(4)] == [0.01, 0.02, 0.04, 0.08]


def test_backoff_is_capped() -> None:
    backoff = Backoff(base_s=1.0, cap_s=30.0)
    for attempt in (5, 6, 10, 50, 1000):
        assert 30.0 <= backoff.delay(attempt) <= 30.5
    assert Backoff(jitter_s=0.0).delay(20) == 30.0


def test_backoff_is_capped_for_any_attempt() -> None:
    assert 30.0 <= Backoff().delay(5_000) <= 30.5


async def test_backoff_sleep_waits() -> None:
    start = time.monotonic()
    await Backoff().sleep(0.05)
    assert time.monotonic() - start >= 0.04


# --- Metrics ------------------------------------------------------------------------------

DESIGN_METRICS = (
    "ingest_files_processed_total",
    "ingest_batches_processed_total",
    "ingest_rows_read_total",
    "ingest_rows_staged_total",
    "ingest_rows_upserted_total",
    "ingest_batch_latency_seconds",
    "ingest_db_errors_total",
    "ingest_memory_peak_bytes",
    "ingest_retries_total",
    "ingest_queue_depth",
    "ingest_files_in_flight",
    "ingest_oldest_waiting_file_age_seconds",
)


def sample(text: str, name: str, labels: str = "") -> float:
    """The value of one sample line `name{labels} value` in the exposition text."""
    pattern = "^" + re.escape(name) + (re.escape("{" + labels + "}") if labels else "") + r" (\S+)$"
    match = re.search(pattern, text, re.M)
    assert match, f"no sample {name}{{{labels}}} in:\n{text}"
    return float(match.group(1))


def exercised() -> Metrics:
    m = Metrics()
    m.files_processed.labels(file_type="csv", status="success").inc()
    m.batches_processed.labels(file_type="csv", worker_id="0").inc(2)
    m.rows_read.labels(file_type="csv").inc(10)
    m.rows_staged.labels(file_type="csv").inc(10)
    m.rows_upserted.labels(table_name="orders").inc(7)
    m.batch_latency.observe(0.2)
    m.db_errors.labels(error_class="deadlockdetected").inc()
    m.retries.inc()
    m.queue_depth.set(3)
    m.files_in_flight.set(2)
    return m


def test_every_design_metric_is_exported() -> None:
    text = exercised().render().decode()
    for name in DESIGN_METRICS:
        assert re.search(rf"^{name}(\{{[^}}]*\}})? ", text, re.M) or (f"{name}_count" in text), name


def test_metric_values() -> None:
    text = exercised().render().decode()
    assert sample(text, "ingest_files_processed_total", 'file_type="csv",status="success"') == 1
    assert sample(text, "ingest_batches_processed_total", 'file_type="csv",worker_id="0"') == 2
    assert sample(text, "ingest_rows_read_total", 'file_type="csv"') == 10
    assert sample(text, "ingest_rows_upserted_total", 'table_name="orders"') == 7
    assert sample(text, "ingest_db_errors_total", 'error_class="deadlockdetected"') == 1
    assert sample(text, "ingest_retries_total") == 1
    assert sample(text, "ingest_queue_depth") == 3
    assert sample(text, "ingest_files_in_flight") == 2
    assert sample(text, "ingest_batch_latency_seconds_count") == 1
    assert sample(text, "ingest_batch_latency_seconds_sum") == pytest.approx(0.2)
    assert sample(text, "ingest_batch_latency_seconds_bucket", 'le="0.25"') == 1
    assert sample(text, "ingest_batch_latency_seconds_bucket", 'le="0.1"') == 0
    assert "# TYPE ingest_batch_latency_seconds histogram" in text


def test_unlabelled_metrics_show_before_any_sample() -> None:
    text = Metrics().render().decode()
    for name in (
        "ingest_retries_total",
        "ingest_queue_depth",
        "ingest_files_in_flight",
        "ingest_oldest_waiting_file_age_seconds",
        "ingest_batch_latency_seconds_count",
    ):
        assert sample(text, name) == 0, name


def test_memory_peak_is_the_process_rss() -> None:
    text = Metrics().render().decode()
    assert sample(text, "ingest_memory_peak_bytes") > 1_000_000


def test_oldest_waiting_age_is_computed_at_scrape_time() -> None:
    m = Metrics()
    since: list[float | None] = [None]
    m.track_oldest(lambda: since[0])
    assert sample(m.render().decode(), "ingest_oldest_waiting_file_age_seconds") == 0
    since[0] = time.monotonic() - 42
    assert sample(m.render().decode(), "ingest_oldest_waiting_file_age_seconds") >= 42
    since[0] = time.monotonic() + 100  # a clock oddity never gives a negative age
    assert sample(m.render().decode(), "ingest_oldest_waiting_file_age_seconds") == 0


def test_each_metrics_instance_has_its_own_registry() -> None:
    a, b = Metrics(), Metrics()
    a.retries.inc(5)
    assert sample(b.render().decode(), "ingest_retries_total") == 0
    assert sample(a.render().decode(), "ingest_retries_total") == 5


# --- Endpoint -----------------------------------------------------------------------------


class Served:
    def __init__(self, endpoint: Endpoint, metrics: Metrics, ready: list[bool]):
        self.endpoint = endpoint
        self.metrics = metrics
        self.ready = ready

    async def request(self, method: str, path: str) -> tuple[int, dict[str, str], bytes]:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.endpoint.port)
        try:
            writer.write(f"{method} {path} HTTP/1.1\r\nHost: test\r\n\r\n".encode())
            await writer.drain()
            raw = await asyncio.wait_for(reader.read(), 5)
        finally:
            writer.close()
            await writer.wait_closed()
        head, _, body = raw.partition(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in header_lines:
            key, _, value = line.partition(":")
            headers[key.strip().lower()] = value.strip()
        return int(status_line.split(" ")[1]), headers, body


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    metrics = exercised()
    ready = [False]
    endpoint = Endpoint(metrics, lambda: ready[0])
    await endpoint.start("127.0.0.1", 0)
    try:
        yield Served(endpoint, metrics, ready)
    finally:
        await endpoint.stop()


async def test_endpoint_binds_a_free_port(served: Served) -> None:
    assert served.endpoint.port > 0


async def test_get_metrics(served: Served) -> None:
    status, headers, body = await served.request("GET", "/metrics")
    assert status == 200
    assert headers["content-type"].startswith("text/plain")
    assert int(headers["content-length"]) == len(body)
    text = body.decode()
    for name in DESIGN_METRICS:
        assert name in text
    assert sample(text, "ingest_retries_total") == 1


async def test_metrics_reflect_changes_between_scrapes(served: Served) -> None:
    served.metrics.retries.inc(4)
    _, _, body = await served.request("GET", "/metrics?x=1")
    assert sample(body.decode(), "ingest_retries_total") == 5


async def test_healthz(served: Served) -> None:
    assert await served.request("GET", "/healthz") == (
        200,
        {"content-type": "text/plain", "content-length": "3", "connection": "close"},
        b"ok\n",
    )


async def test_readyz_follows_readiness(served: Served) -> None:
    status, _, body = await served.request("GET", "/readyz")
    assert (status, body) == (503, b"not ready\n")
    served.ready[0] = True
    status, _, body = await served.request("GET", "/readyz")
    assert (status, body) == (200, b"ready\n")


async def test_head_has_no_body(served: Served) -> None:
    status, headers, body = await served.request("HEAD", "/healthz")
    assert status == 200
    assert headers["content-length"] == "3"
    assert body == b""


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE"])
async def test_other_methods_are_refused(served: Served, method: str) -> None:
    status, _, body = await served.request(method, "/metrics")
    assert (status, body) == (405, b"only GET\n")


@pytest.mark.parametrize("path", ["/", "/metricz", "/metrics/extra", "/../etc/passwd"])
async def test_unknown_paths(served: Served, path: str) -> None:
    status, _, body = await served.request("GET", path)
    assert (status, body) == (404, b"not found\n")


async def test_client_hanging_up_does_not_stop_the_server(served: Served) -> None:
    _, writer = await asyncio.open_connection("127.0.0.1", served.endpoint.port)
    writer.write(b"GET /hea")
    writer.close()
    await writer.wait_closed()
    status, _, _ = await served.request("GET", "/healthz")
    assert status == 200


async def test_stop_closes_the_port() -> None:
    endpoint = Endpoint(Metrics(), lambda: True)
    await endpoint.start("127.0.0.1", 0)
    port = endpoint.port
    await endpoint.stop()
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", port)
