"""The chart's own NATS (``nats.deploy``): a 3-server JetStream cluster as a StatefulSet,
routed over a headless Service, fsync on every write, Ferry's identities only; rendered
by a real helm and validated strictly against the Kubernetes schemas."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from ferry.testing import helm

CHART = Path(__file__).resolve().parents[3] / "charts" / "ferry"
ON = "nats: {deploy: true}\nsettings: {nats: {url: 'nats://ferry-nats:4222'}, bus: {replicas: 3}}\n"


def _render(tmp_path: Path, text: str) -> list[dict[str, Any]]:
    values = tmp_path / "values.yaml"
    values.write_text(text)
    return helm.template(CHART, release="ferry", namespace="ferry-system", values=(values,))


def test_the_chart_runs_a_three_server_jetstream_cluster(tmp_path: Path) -> None:
    # When the chart is rendered with nats.deploy on
    objects = _render(tmp_path, ON)
    by = {(o["kind"], o["metadata"]["name"]): o for o in objects}

    # Then every object is valid Kubernetes
    for obj in objects:
        kubernetes_validate.validate(obj, "1.30.0", strict=True)
    sts = by[("StatefulSet", "ferry-nats")]
    assert sts["spec"]["replicas"] == 3
    assert sts["spec"]["serviceName"] == "ferry-nats-headless"
    assert by[("Service", "ferry-nats-headless")]["spec"]["clusterIP"] == "None"
    # and each server routes to all three by their stable names, JetStream fsyncing always
    conf = by[("ConfigMap", "ferry-nats")]["data"]["nats.conf"]
    routes = re.findall(r"nats-route://(\S+):6222", conf)
    assert routes == [f"ferry-nats-{i}.ferry-nats-headless.ferry-system.svc" for i in range(3)]
    assert "sync_interval: always" in conf and "server_name: $POD_NAME" in conf
    # and only Ferry's identities are admitted: the users come from a Secret, as a file
    assert 'include "identities/authorization.conf"' in conf and "no_auth_user" not in conf
    pod = sts["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    users = next(v for v in pod["volumes"] if v["name"] == "users")
    assert users["secret"]["secretName"] == "ferry-nats-server"
    # and it runs restricted like every Ferry pod, its store on its own claim
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    assert {"mountPath": "/var/lib/nats", "name": "data"} in container["volumeMounts"]


def test_the_chart_refuses_a_nats_cluster_with_unreplicated_streams(tmp_path: Path) -> None:
    # When nats.deploy is on but the streams would keep one replica
    with pytest.raises(AssertionError, match=r"settings\.bus\.replicas"):
        _render(tmp_path, "nats: {deploy: true}\n")


def test_the_chart_runs_no_nats_by_default(tmp_path: Path) -> None:
    objects = _render(tmp_path, "{}\n")
    assert not [o for o in objects if o["metadata"]["name"].startswith("ferry-nats")]
