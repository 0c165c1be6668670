"""The checked-in Grafana dashboard only names metrics the components export (core/metrics.py)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client import REGISTRY

import core.metrics  # noqa: F401  (declares the metrics)

DASHBOARD = Path(__file__).resolve().parents[2] / "docs" / "grafana-dashboard.json"


def test_dashboard_uses_exported_metrics_only():
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}
    exported = {family.name + suffix for family in REGISTRY.collect()
                for suffix in suffixes.get(family.type, ("",))}
    exprs = [t["expr"] for p in json.loads(DASHBOARD.read_text())["panels"] for t in p["targets"]]
    names = {n for e in exprs for n in re.findall(r"\bpandaes_[a-z_]+", e)}
    assert names and names <= exported, names - exported
    for prefix in ("pandaes_ledger_events", "pandaes_consumer_lag", "pandaes_http_request_seconds",
                   "pandaes_getjob", "pandaes_db_pool_connections", "pandaes_projection_position"):
        assert any(n.startswith(prefix) for n in names), prefix
