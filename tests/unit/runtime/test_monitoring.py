"""The chart's Grafana dashboard and PrometheusRule: off by default, well-formed when on,
and every query names a metric Ferry really exports (scraped from the registries)."""

from __future__ import annotations

import copy
import json
import re
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import yaml
from prometheus_client.parser import text_string_to_metric_families

from ferry.console import gauges
from ferry.proto.phases import Flow, StepStatus, VmStatus
from ferry.proto.state import DiskState, StepState, VmView, now_iso
from ferry.runtime.metrics import Metrics

sys.path.insert(0, str(Path(__file__).parent))  # the chart renderer lives with the chart tests
from test_deploy import CHART, KUBERNETES, _scope, render

# PromQL words that are not metric names; `up` is Prometheus's own scrape series.
PROMQL = {
    "sum", "by", "rate", "increase", "topk", "histogram_quantile", "time", "le", "and", "or",
    "without", "max", "min", "avg", "count", "offset", "bool", "on", "ignoring",
}  # fmt: skip
BUILTIN = {"up"}


def exported() -> set[str]:
    """Every sample name a Ferry service and the console expose, from a real scrape."""
    metrics = Metrics("volume-service")
    metrics.handled("t", 0.1)
    metrics.failed("t", "permanent")
    metrics.redelivered("t")
    views = gauges.Views(metrics.registry)
    step = StepState(name="CopyDisks", service="volume-service", status=StepStatus.RUNNING,
                     started=now_iso(0))  # fmt: skip
    views.update([
        VmView(plan="p", migration="m", vm="v", name="v", target_name="v", namespace="n",
               flow=Flow.IMPORTER, status=VmStatus.RUNNING, steps=[step],
               disks=[DiskState(id="d", name="d", total=10, done=5)])
    ])  # fmt: skip
    text = metrics.exposition().decode()
    return {s.name for f in text_string_to_metric_families(text) for s in f.samples}


def names_in(expr: str) -> set[str]:
    bare = re.sub(r"\{[^}]*\}|\"[^\"]*\"|\[[^\]]*\]", "", expr)
    bare = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", bare)
    words = set(re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", bare))
    return words - PROMQL


def rendered(enabled: bool) -> list[dict[str, Any]]:
    scope = copy.deepcopy(_scope())
    scope["Values"]["monitoring"]["dashboard"]["enabled"] = enabled
    scope["Values"]["monitoring"]["rules"]["enabled"] = enabled
    found = []
    for name in ("monitoring-dashboard.yaml", "monitoring-rules.yaml"):
        text = render((CHART / "templates" / name).read_text(), scope)
        found += [doc for doc in yaml.safe_load_all(text) if doc]
    return found


def test_monitoring_is_off_by_default() -> None:
    assert rendered(False) == []


def test_dashboard_is_a_sidecar_configmap_whose_queries_use_exported_metrics() -> None:
    # Given the chart rendered with the dashboard on
    (config,) = [o for o in rendered(True) if o["kind"] == "ConfigMap"]
    kubernetes_validate.validate(config, KUBERNETES, strict=True)
    assert config["metadata"]["labels"]["grafana_dashboard"] == "1"
    # When its dashboard is read
    dashboard = json.loads(config["data"]["ferry.json"])
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    # Then every panel has a query and each names only metrics Ferry exports
    assert len(exprs) >= len(dashboard["panels"]) > 0
    known = exported() | BUILTIN
    for expr in exprs:
        assert names_in(expr) and names_in(expr) <= known, (expr, names_in(expr) - known)


def test_rules_parse_and_alert_on_exported_metrics() -> None:
    (rule,) = [o for o in rendered(True) if o["kind"] == "PrometheusRule"]
    rules = [r for g in rule["spec"]["groups"] for r in g["rules"]]
    alerts = {r["alert"] for r in rules}
    assert alerts == {
        "FerryVmFailed", "FerryMigrationStalled", "FerryServiceNotReady", "FerryDeadLettersGrowing"
    }  # fmt: skip
    known = exported() | BUILTIN
    for r in rules:
        assert r["labels"]["severity"] in ("warning", "critical")
        assert isinstance(r["expr"], str) and names_in(r["expr"]) <= known, r["expr"]
    stalled = next(r for r in rules if r["alert"] == "FerryMigrationStalled")
    assert stalled["expr"].endswith("> 60 * 15")
