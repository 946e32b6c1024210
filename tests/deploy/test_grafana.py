"""The Grafana dashboard and its provisioning files."""

from __future__ import annotations

from tests.deploy.helpers import (
    DEPLOY,
    dashboard,
    dashboard_exprs,
    dashboard_panels,
    load_yaml,
    metric_names,
)

PROVISIONING = DEPLOY / "grafana" / "provisioning"


def test_dashboard_has_unique_panel_ids_and_a_datasource_variable() -> None:
    dash = dashboard()
    assert dash["uid"] == "ingestd" and dash["title"]
    panels = dashboard_panels()
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for panel in panels:
        if panel["type"] == "row":
            continue
        assert panel["title"] and panel["targets"], panel
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"]
            assert target["expr"].strip()
            # Every query follows the job and instance selectors.
            if "ingest_" in target["expr"] or "up{" in target["expr"]:
                assert 'job=~"$job"' in target["expr"], target["expr"]
                assert 'instance=~"$instance"' in target["expr"], target["expr"]


def test_dashboard_covers_what_operators_need() -> None:
    used = set().union(*(metric_names(e) for e in dashboard_exprs()))
    exprs = "\n".join(dashboard_exprs())
    assert {
        "ingest_rows_upserted_total",  # throughput in rows
        "ingest_rows_read_total",
        "ingest_files_processed_total",  # files by status
        "ingest_batch_latency_seconds_bucket",  # latency quantiles
        "ingest_queue_depth",
        "ingest_oldest_waiting_file_age_seconds",
        "ingest_db_errors_total",  # errors by class
        "ingest_retries_total",
        "ingest_memory_peak_bytes",
        "ingest_ready",
    } <= used
    for q in ("0.5", "0.95", "0.99"):
        assert (
            f"histogram_quantile({q}, sum by (le) (rate(ingest_batch_latency_seconds_bucket"
            in exprs
        )
    assert "sum by (error_class)" in exprs and "sum by (status)" in exprs


def test_provisioning_points_at_the_compose_prometheus_and_dashboard_mount() -> None:
    (datasource,) = load_yaml(PROVISIONING / "datasources" / "prometheus.yaml")["datasources"]
    assert datasource["type"] == "prometheus"
    assert datasource["url"] == "http://prometheus:9090"
    (provider,) = load_yaml(PROVISIONING / "dashboards" / "ingestd.yaml")["providers"]
    assert provider["type"] == "file"
    compose = load_yaml(DEPLOY / "compose.yaml")
    mounts = compose["services"]["grafana"]["volumes"]
    assert f"./grafana/ingestd.json:{provider['options']['path']}/ingestd.json:ro" in mounts
