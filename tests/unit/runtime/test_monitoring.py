"""The chart's Grafana dashboard and PrometheusRule: off by default, well-formed when on,
every query names a metric Ferry really exports (scraped from the registries), and the
rules are checked and their alerts unit-tested by Prometheus's own promtool."""

from __future__ import annotations

import functools
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import kubernetes_validate
import msgspec
import yaml
from prometheus_client.parser import text_string_to_metric_families

from ferry.console import gauges
from ferry.proto import objects
from ferry.proto.estimate import VmEstimate
from ferry.proto.phases import Flow, StepStatus, VmStatus
from ferry.proto.state import CopyRound, DiskState, StepState, VmView, now_iso
from ferry.runtime import estimates
from ferry.runtime.metrics import Metrics
from ferry.testing import helm

sys.path.insert(0, str(Path(__file__).parent))  # the chart's facts live with the chart tests
from test_deploy import CHART, KUBERNETES

# PromQL words that are not metric names; `up` is Prometheus's own scrape series.
PROMQL = {
    "sum", "by", "rate", "increase", "topk", "histogram_quantile", "time", "le", "and", "or",
    "without", "max", "min", "avg", "count", "offset", "bool", "on", "ignoring", "delta",
}  # fmt: skip
BUILTIN = {"up"}


def exported() -> set[str]:
    """Every sample name a Ferry service and the console expose, from a real scrape."""
    return set(scraped())


@functools.cache
def scraped() -> dict[str, frozenset[str]]:
    """Every sample name a Ferry service and the console expose, with its label names."""
    metrics = Metrics("volume-service")
    metrics.handled("t", 0.1)
    metrics.failed("t", "permanent")
    metrics.redelivered("t")
    metrics.waiting("conversion-workers", 3)
    views = gauges.Views(metrics.registry)
    step = StepState(name="CopyDisks", service="volume-service", status=StepStatus.RUNNING,
                     started=now_iso(0))  # fmt: skip
    guess = VmEstimate(vm="v", name="v", bytes=10, cold_duration=60, cold_downtime=60,
                       warm_duration=70, warm_downtime=5)  # fmt: skip
    other = msgspec.structs.replace(guess, vm="w")
    est = estimates.estimate(
        "p",
        provider="s",
        hosts=[],
        target="n",
        warm=False,
        max_in_flight=1,
        vms=[("v", "v", 10)],
        history=[],
        now=0,
    )
    est = msgspec.structs.replace(est, vms=[guess, other])
    mig = objects.Migration.model_validate({
        "metadata": {"name": "m"}, "spec": {"plan": {"name": "p"}},
        "status": {"started": now_iso(0), "completed": now_iso(90),
                   "estimate": estimates.encode(est)},
    })  # fmt: skip
    views.update([
        VmView(plan="p", migration="m", vm="v", name="v", target_name="v", namespace="n",
               flow=Flow.IMPORTER, status=VmStatus.RUNNING, steps=[step], started=now_iso(0),
               disks=[DiskState(id="d", name="d", total=10, done=5)],
               rounds=[CopyRound(precopy=0, copied=10), CopyRound(precopy=1, copied=2)]),
        VmView(plan="p", migration="m", vm="w", name="v", target_name="w", namespace="n",
               flow=Flow.IMPORTER, status=VmStatus.SUCCEEDED, started=now_iso(0),
               ended=now_iso(80)),
    ], migrations=[mig])  # fmt: skip
    text = metrics.exposition().decode()
    found: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            found.setdefault(s.name, set()).update(s.labels)
    return {name: frozenset(labels) for name, labels in found.items()}


def grouped_by(expr: str) -> set[str]:
    """The label names an expression aggregates or matches by: they must exist on its series."""
    return {
        label.strip()
        for group in re.findall(r"\b(?:by|on|ignoring|without)\s*\(([^)]*)\)", expr)
        for label in group.split(",")
        if label.strip()
    }


def names_in(expr: str) -> set[str]:
    bare = re.sub(r"\{[^}]*\}|\"[^\"]*\"|\[[^\]]*\]", "", expr)
    bare = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", bare)
    words = set(re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", bare))
    return words - PROMQL


_MONITORING = ("monitoring-dashboard.yaml", "monitoring-rules.yaml")


@functools.cache
def _rendered(enabled: bool) -> str:
    on = {"monitoring": {"dashboard": {"enabled": enabled}, "rules": {"enabled": enabled}}}
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as values:
        values.write(yaml.safe_dump(on))
        values.flush()
        args = ["template", "ferry", str(CHART), "--namespace", "ferry-system"]
        for name in _MONITORING:
            args += ["--show-only", f"templates/{name}"]
        done = helm.run(*args, "--values", values.name, check=False)
    if done.returncode != 0 and "could not find template" in done.stderr:
        return ""  # --show-only of templates that render nothing
    assert done.returncode == 0, done.stderr
    return done.stdout


def rendered(enabled: bool) -> list[dict[str, Any]]:
    """The monitoring objects as the real helm renders them (none when off)."""
    return [doc for doc in yaml.safe_load_all(_rendered(enabled)) if doc]


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
    # And every label a query groups by is one its metrics carry (a legend of "-> " is no chart)
    for expr in exprs:
        carried = {"le"}.union(*(scraped().get(n, frozenset()) for n in names_in(expr)))
        assert grouped_by(expr) <= carried, (expr, grouped_by(expr) - carried)
    # And the bytes per disk are charted per source and target
    assert any("by (source, target)" in e and "ferry_disk_bytes_total" in e for e in exprs)


def test_rules_parse_and_alert_on_exported_metrics() -> None:
    (rule,) = [o for o in rendered(True) if o["kind"] == "PrometheusRule"]
    rules = [r for g in rule["spec"]["groups"] for r in g["rules"]]
    alerts = {r["alert"] for r in rules}
    assert alerts == {
        "FerryVmFailed", "FerryMigrationStalled", "FerryServiceNotReady",
        "FerryDeadLettersGrowing", "FerryConversionQueueStuck", "FerryVmOverEstimate",
        "FerryStepOverExpected",
    }  # fmt: skip
    known = exported() | BUILTIN
    for r in rules:
        assert r["labels"]["severity"] in ("warning", "critical")
        assert isinstance(r["expr"], str) and names_in(r["expr"]) <= known, r["expr"]
    stalled = next(r for r in rules if r["alert"] == "FerryMigrationStalled")
    assert stalled["expr"].endswith("> 60 * 15")


def promtool(*args: str, cwd: Path) -> str:
    tool = shutil.which("promtool")
    assert tool, "promtool not found: `make system-deps` installs Debian's prometheus package"
    done = subprocess.run([tool, *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_promtool_checks_the_rules_and_their_alerts_fire_when_they_should(tmp_path: Path) -> None:
    # Given the rendered rules as a Prometheus rule file
    (rule,) = [o for o in rendered(True) if o["kind"] == "PrometheusRule"]
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rule["spec"]))
    # When Prometheus's own checker reads them
    checked = promtool("check", "rules", "rules.yaml", cwd=tmp_path)
    # Then every rule parses
    assert "SUCCESS: 7 rules found" in checked, checked
    # And, fed series, each new alert fires exactly when it should
    said = {r["alert"]: r["annotations"] for g in rule["spec"]["groups"] for r in g["rules"]}
    for case in ALERT_TESTS["tests"]:
        for check in case["alert_rule_test"]:
            for alert in check["exp_alerts"]:
                alert["exp_annotations"] = said[check["alertname"]]
    (tmp_path / "tests.yaml").write_text(yaml.safe_dump(ALERT_TESTS, sort_keys=False))
    promtool("test", "rules", "tests.yaml", cwd=tmp_path)


QUEUE = 'ferry_queue_depth{service="conversion-service", consumer="conversion-workers"}'
BUSY = 'ferry_in_flight{service="conversion-service", pod="conv-0"}'
VM = '{migration="m", vm="web"}'
STEP = 'ferry_step_duration_seconds{{migration="m", vm="web", step="{step}", status="{status}"}}'
EXPECTED = 'ferry_step_expected_seconds{{migration="m", vm="web", step="{step}"}}'
ALERT_TESTS: dict[str, Any] = {
    "rule_files": ["rules.yaml"],
    "evaluation_interval": "1m",
    "tests": [
        {   # conversions queue up (one more a minute) while no worker is busy: it fires
            "interval": "1m",
            "input_series": [
                {"series": QUEUE, "values": "0+1x30"},
                {"series": BUSY, "values": "0x30"},
            ],
            "alert_rule_test": [
                {"eval_time": "3m", "alertname": "FerryConversionQueueStuck", "exp_alerts": []},
                {"eval_time": "20m", "alertname": "FerryConversionQueueStuck",
                 "exp_alerts": [{"exp_labels": {"severity": "critical"}}]},
            ],
        },
        {   # the same queue with a worker busy is only a queue: it does not fire
            "interval": "1m",
            "input_series": [
                {"series": QUEUE, "values": "0+1x30"},
                {"series": BUSY, "values": "1x30"},
            ],
            "alert_rule_test": [
                {"eval_time": "20m", "alertname": "FerryConversionQueueStuck", "exp_alerts": []},
            ],
        },
        {   # a VM estimated at 10 minutes, running for 30 and counting: it fires after 2x + 5m
            "interval": "1m",
            "input_series": [
                {"series": "ferry_vm_running_seconds" + VM, "values": "0+60x40"},
                {"series": "ferry_vm_estimate_seconds" + VM, "values": "600x40"},
            ],
            "alert_rule_test": [
                {"eval_time": "22m", "alertname": "FerryVmOverEstimate", "exp_alerts": []},
                {"eval_time": "30m", "alertname": "FerryVmOverEstimate",
                 "exp_alerts": [{"exp_labels": {"severity": "warning", "migration": "m",
                                                "vm": "web"}}]},
            ],
        },
        {   # a VM well inside its whole estimate whose CopyDisks (expected 5 minutes) has run
            # for 20 and counting, beside a ConvertGuest on time: only the copy is stuck
            "interval": "1m",
            "input_series": [
                {"series": STEP.format(step="CopyDisks", status="Running"), "values": "0+60x30"},
                {"series": EXPECTED.format(step="CopyDisks"), "values": "300x30"},
                {"series": STEP.format(step="ConvertGuest", status="Running"),
                 "values": "0+60x30"},
                {"series": EXPECTED.format(step="ConvertGuest"), "values": "3600x30"},
                {"series": STEP.format(step="AllocateDisks", status="Completed"),
                 "values": "9000x30"},  # an ended step is never stuck, however long it took
                {"series": EXPECTED.format(step="AllocateDisks"), "values": "60x30"},
                {"series": "ferry_vm_running_seconds" + VM, "values": "0+60x30"},
                {"series": "ferry_vm_estimate_seconds" + VM, "values": "86400x30"},
            ],
            "alert_rule_test": [
                {"eval_time": "12m", "alertname": "FerryStepOverExpected", "exp_alerts": []},
                {"eval_time": "20m", "alertname": "FerryStepOverExpected",
                 "exp_alerts": [{"exp_labels": {"severity": "warning", "migration": "m",
                                                "vm": "web", "step": "CopyDisks"}}]},
                {"eval_time": "20m", "alertname": "FerryVmOverEstimate", "exp_alerts": []},
            ],
        },
    ],
}  # fmt: skip


def test_bytes_per_disk_carry_the_source_and_target_the_estimates_key_history_by() -> None:
    # Given a stored VM of provider ova-lab on host esx1 copying into namespace apps
    from prometheus_client import CollectorRegistry, generate_latest

    from ferry.proto.volume import ProviderType, SourceRef

    registry = CollectorRegistry()
    views = gauges.Views(registry)
    views.update([
        estimates.Stored(plan="p", migration="m", vm="v", name="web", target_name="web",
                         namespace="apps", host="esx1", flow=Flow.IMPORTER,
                         status=VmStatus.RUNNING, started=now_iso(0),
                         provider=SourceRef(provider="ova-lab", type=ProviderType.OVA),
                         disks=[DiskState(id="d", name="disk-0", total=10, done=4)]),
    ])  # fmt: skip
    # When Prometheus scrapes the console
    text = generate_latest(registry).decode()
    samples = [s for f in text_string_to_metric_families(text) for s in f.samples]
    # Then the bytes written and to write name the pair, as the estimates' history does
    for name, value in (("ferry_disk_bytes_total", 4), ("ferry_disk_size_bytes", 10)):
        (got,) = [s for s in samples if s.name == name]
        assert got.labels == {"migration": "m", "vm": "web", "disk": "disk-0",
                              "source": "ova-lab@esx1", "target": "apps"}  # fmt: skip
        assert got.value == value
