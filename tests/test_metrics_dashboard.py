"""The Grafana dashboard and the Prometheus config in configs/ name only metrics the service
exports (no cluster: the names come from deployments/serving/metrics.py; that Ray Serve's and ours
really appear in a scrape is tests/test_ops_run.py's)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from deployments.serving.metrics import METRICS, exported_names

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "configs" / "grafana-dashboard.json"
# A series name in PromQL: ray_… or haproxy_… not followed by "(" (a function).
_NAME = re.compile(r"\b((?:ray|haproxy)_[a-z0-9_]+)\b(?!\s*\()")


def dashboard_queries(path: Path = DASHBOARD) -> list[str]:
    doc = json.loads(path.read_text())
    panels = [p for p in doc["panels"] if p["type"] != "row"]
    return [t["expr"] for p in panels for t in p["targets"]]


def metric_names(queries: list[str]) -> set[str]:
    return {name for q in queries for name in _NAME.findall(q)}


def unknown_names(queries: list[str]) -> set[str]:
    """Names of ours the service does not export, and names that are neither ours nor Serve's nor
    HAProxy's (those two are found in a live scrape by tests/test_ops_run.py)."""
    names = metric_names(queries)
    ours = {n for n in names if n.startswith("ray_opensesame_")}
    theirs = {n for n in names - ours if n.startswith(("ray_serve_", "haproxy_"))}
    return (ours - exported_names()) | (names - ours - theirs)


def test_every_query_names_an_exported_metric() -> None:
    queries = dashboard_queries()
    assert queries and all(metric_names([q]) for q in queries), "a query without a metric"
    assert unknown_names(queries) == set()


def test_a_misspelt_metric_is_caught() -> None:
    misspelt = "ray_opensesame_http_request_total"
    assert unknown_names([f"rate({misspelt}[5m])"]) == {misspelt}
    assert unknown_names(['ray_foo_bar']) == {"ray_foo_bar"}


def test_every_metric_of_ours_has_a_panel() -> None:
    used = metric_names(dashboard_queries())
    assert [m for m in METRICS if not exported_names([m]) & used] == []


@pytest.mark.parametrize("job", ["opensesame-ray", "opensesame-haproxy"])
def test_prometheus_scrapes_make_runs_ports(job: str) -> None:
    doc = yaml.safe_load((ROOT / "configs" / "prometheus.yml").read_text())
    targets = {j["job_name"]: j["static_configs"][0]["targets"] for j in doc["scrape_configs"]}
    makefile = (ROOT / "Makefile").read_text()
    variable = "METRICS_PORT" if job == "opensesame-ray" else "HAPROXY_METRICS_PORT"
    port = re.search(rf"^{variable} \?= (\d+)$", makefile, re.M)
    assert port and targets[job] == [f"127.0.0.1:{port.group(1)}"]
