"""Every metric the dashboard and the alert rules query exists in a real ingestd's /metrics."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import write
from tests.daemon import Daemon, wait_for
from tests.deploy.helpers import alert_rules, dashboard_exprs, metric_names

CONFIG = """
inbox = "inbox"
settle_s = 0.2

[[contracts]]
name = "main"
pattern = "*.csv"
table = "t"
pk = ["id"]
"""

# Samples Prometheus itself adds to every scrape, never on /metrics.
SYNTHETIC = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}
# The sample names each metric type exposes (OpenMetrics/prometheus_client conventions).
SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "untyped": ("",),
    "unknown": ("",),
}


def exposed_names(text: str) -> set[str]:
    """Sample names on /metrics, plus those each declared family can have (a labelled
    counter that never counted yet has a TYPE line and no sample)."""
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, family, kind = line.split(" ", 3)
            base = family.removesuffix("_total") if kind == "counter" else family
            names.update(base + suffix for suffix in SUFFIXES[kind])
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{\s]", line, maxsplit=1)[0])
    return names


def test_exposed_names_parses_types_and_samples() -> None:
    text = (
        "# HELP a_total x\n# TYPE a_total counter\n"
        "# TYPE h histogram\nh_bucket{le=\"1\"} 0\nh_sum 0\nh_count 0\n"
        "# TYPE g gauge\ng 1\n"
    )  # fmt: skip
    names = exposed_names(text)
    assert {"a_total", "h_bucket", "h_sum", "h_count", "g"} <= names
    assert "a" not in names and "h" not in names and "a_total_total" not in names


@pytest.fixture
def daemon(daemons: Callable[..., Daemon]) -> Daemon:
    return daemons(CONFIG)


def test_dashboard_and_alert_metrics_exist_on_a_running_daemon(
    daemon: Daemon, tmp_path: Path
) -> None:
    inbox = tmp_path / "inbox"
    write(inbox / "good.csv", "id,v\n1,a\n2,b\n")
    write(inbox / "bad.csv", "v\nno key column\n")  # the contract's key "id" is missing
    wait_for(
        lambda: (
            daemon.metric("ingest_files_processed_total", file_type="csv", status="success") >= 1
            and daemon.metric("ingest_files_processed_total", file_type="csv", status="failed") >= 1
        ),
        what="one loaded and one failed file",
    )
    status, text = daemon.get("/metrics")
    assert status == 200
    exposed = exposed_names(text)

    used: dict[str, set[str]] = {}
    for expr in dashboard_exprs():
        for name in metric_names(expr):
            used.setdefault(name, set()).add("dashboard")
    for rule in alert_rules():
        for name in metric_names(rule["expr"]):
            used.setdefault(name, set()).add(f"alert {rule['alert']}")

    missing = {n: sorted(w) for n, w in used.items() if n not in exposed | SYNTHETIC}
    assert not missing, f"queried but not exposed by ingestd: {missing}"
    # The labelled counters the alerts depend on are really there, with their labels.
    assert 'ingest_files_processed_total{file_type="csv",status="failed"}' in text
    assert 'ingest_files_processed_total{file_type="csv",status="success"}' in text
