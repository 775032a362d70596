"""The deployment files: Helm chart and docker-compose.yml are well-formed and agree
with the settings.

Neither helm nor docker runs here, so the chart is rendered by a small renderer
that understands exactly the template subset the chart uses (value lookups and the
``quote``, ``default``, ``toYaml`` and ``nindent`` functions); anything else in a
template fails the test, which keeps the templates simple. Rendered objects are
validated against the Kubernetes OpenAPI schemas.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from ferry.platform.settings import PlatformSettings
from ferry.runtime import settings

# The chart deploys to a cluster: it sets the platform's kind and its kubernetes group;
# the local group belongs to `ferry up` and docker-compose.
CHART_PLATFORM = {
    name: doc
    for name, doc in settings.environment_names(PlatformSettings, "FERRY_PLATFORM__").items()
    if not name.startswith("FERRY_PLATFORM__LOCAL__")
}
EVERY_PLATFORM = settings.environment_names(PlatformSettings, "FERRY_PLATFORM__")

ROOT = Path(__file__).resolve().parents[3]
CHART = ROOT / "charts" / "ferry"
KUBERNETES = "1.30.0"
SERVICES = ("migration-controller", "volume-service", "conversion-service", "vm-service")

_ACTION = re.compile(r"(\s*)\{\{(-?)\s*(.*?)\s*(-?)\}\}(\s*)", re.S)


def _lookup(path: str, scope: dict[str, Any]) -> Any:
    value: Any = scope
    for part in path.lstrip(".").split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def _term(token: str, scope: dict[str, Any]) -> Any:
    if token.startswith("."):
        return _lookup(token, scope)
    if token.startswith('"'):
        return json.loads(token)
    if re.fullmatch(r"-?\d+", token):
        return int(token)
    raise AssertionError(f"template uses something the test renderer does not know: {token}")


def _go_str(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _evaluate(expression: str, scope: dict[str, Any]) -> str:
    value: Any = None
    for index, stage in enumerate(s.strip() for s in expression.split("|")):
        words = stage.split()
        name, args = words[0], [_term(w, scope) for w in words[1:]]
        if index == 0 and name.startswith("."):
            value = _term(name, scope)
        elif index == 0 and name == "toYaml":
            value = yaml.safe_dump(args[0], default_flow_style=False).rstrip("\n")
        elif name == "quote":
            value = json.dumps(_go_str(value))
        elif name == "default":
            value = value if value not in (None, "", 0, False, {}, []) else args[0]
        elif name == "toYaml":
            value = yaml.safe_dump(value, default_flow_style=False).rstrip("\n")
        elif name == "nindent":
            pad = " " * args[0]
            value = "\n" + "\n".join(pad + line for line in _go_str(value).splitlines())
        else:
            raise AssertionError(f"template function not supported by the test renderer: {name}")
    return _go_str(value)


def render(template: str, scope: dict[str, Any]) -> str:
    def replace(match: re.Match[str]) -> str:
        before, trim_left, expression, trim_right, after = match.groups()
        rendered = _evaluate(expression, scope)
        return ("" if trim_left else before) + rendered + ("" if trim_right else after)

    return _ACTION.sub(replace, template)


def _scope() -> dict[str, Any]:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    return {
        "Values": values,
        "Release": {"Name": "ferry", "Namespace": "ferry-system"},
        "Chart": {
            "Name": chart["name"],
            "Version": chart["version"],
            "AppVersion": chart["appVersion"],
        },
    }


def _objects() -> list[dict[str, Any]]:
    scope = _scope()
    objects = []
    for template in sorted((CHART / "templates").glob("*.yaml")):
        text = render(template.read_text(), scope)
        objects += [doc for doc in yaml.safe_load_all(text) if doc]
    return objects


def test_chart_metadata_and_values_parse() -> None:
    # Given the chart's metadata and values
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())

    # Then they hold what the templates need
    assert chart["apiVersion"] == "v2"
    assert chart["name"] == "ferry"
    assert set(values["services"]) == {"controller", "volume", "conversion", "vm"}


def test_values_settings_use_the_settings_names() -> None:
    # Given the settings block of the values and the settings model
    values = yaml.safe_load((CHART / "values.yaml").read_text())["settings"]
    known = settings.environment_names() | CHART_PLATFORM

    # When every leaf is turned into its FERRY_ variable
    def leaves(tree: dict[str, Any], prefix: str) -> list[str]:
        out: list[str] = []
        for key, value in tree.items():
            if isinstance(value, dict):
                out += leaves(value, f"{prefix}{key.upper()}__")
            else:
                out.append(f"{prefix}{key.upper()}")
        return out

    names = leaves(values, "FERRY_")

    # Then each one is a real setting, and every setting has a value in the chart
    assert sorted(set(names) - set(known)) == []
    assert sorted(set(known) - set(names)) == []


def test_rendered_chart_is_valid_kubernetes() -> None:
    # When the chart is rendered with its default values
    objects = _objects()

    # Then every object validates against the Kubernetes schemas
    for obj in objects:
        kubernetes_validate.validate(obj, KUBERNETES, strict=True)
    kinds = sorted(f"{o['kind']}/{o['metadata']['name']}" for o in objects)
    for service in SERVICES:
        assert f"Deployment/ferry-{service}" in kinds
        assert f"Service/ferry-{service}" in kinds
    assert "HorizontalPodAutoscaler/ferry-conversion-service" in kinds
    assert {"ServiceAccount/ferry-ferry", "ClusterRole/ferry-ferry"} <= set(kinds)


def test_deployments_probe_health_and_pass_settings_as_env() -> None:
    # Given the rendered Deployments
    deployments = [o for o in _objects() if o["kind"] == "Deployment"]
    known = settings.environment_names() | CHART_PLATFORM

    for deployment in deployments:
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        # Then liveness and readiness probe the runtime's endpoints
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        # and every FERRY_ variable is one the services read, with a value
        env = {e["name"]: e["value"] for e in container["env"]}
        assert set(env) <= set(known)
        assert env["FERRY_NATS__URL"] == "nats://nats:4222"
        # (empty only where empty means "not set": no API host or kubeconfig in a pod)
        unset = {f"FERRY_PLATFORM__KUBERNETES__{n}" for n in ("HOST", "KUBECONFIG", "CONTEXT")}
        assert all(isinstance(v, str) and (v or k in unset) for k, v in env.items())
        # and the services that use the target platform run on the cluster, in-cluster
        if deployment["metadata"]["name"] != "ferry-migration-controller":
            assert env["FERRY_PLATFORM__KIND"] == "kubernetes"
            assert env["FERRY_PLATFORM__KUBERNETES__IN_CLUSTER"] == "true"
        # and the grace period outlasts the drain
        grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        assert grace > float(env["FERRY_WORKERS__GRACE_SECONDS"])

    concurrency = {
        d["metadata"]["name"]: {
            e["name"]: e["value"] for e in d["spec"]["template"]["spec"]["containers"][0]["env"]
        }["FERRY_WORKERS__CONCURRENCY"]
        for d in deployments
    }
    # a per-service override wins, the others fall back to the global value
    assert concurrency["ferry-conversion-service"] == "1"
    assert concurrency["ferry-volume-service"] == "4"


def test_rbac_covers_the_objects_the_services_manage() -> None:
    # Given the ClusterRole
    role = next(o for o in _objects() if o["kind"] == "ClusterRole")
    granted = {
        (g, r) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]
    }

    # Then DataVolumes, PVCs, Pods and VirtualMachines are covered
    for needed in [
        ("cdi.kubevirt.io", "datavolumes"),
        ("", "persistentvolumeclaims"),
        ("", "pods"),
        ("kubevirt.io", "virtualmachines"),
    ]:
        assert needed in granted


def test_renderer_refuses_what_it_does_not_understand() -> None:
    # Given a template with a construct outside the supported subset
    # Then rendering fails loudly instead of producing wrong YAML
    with pytest.raises(AssertionError):
        render('{{ include "x" . }}', _scope())


def test_compose_file_runs_nats_with_jetstream_and_the_four_services() -> None:
    # Given docker-compose.yml
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]

    # Then nats runs with a config that enables JetStream on a file store, fsync always
    assert set(services) == {"nats", *SERVICES}
    conf = compose["configs"][services["nats"]["configs"][0]["source"]]["content"]
    assert "jetstream" in conf
    assert "sync_interval: always" in conf
    assert "store_dir" in conf
    assert any(v.endswith(":/data") for v in services["nats"]["volumes"])

    # and every service runs its console script against nats, with settings it knows
    known = settings.environment_names() | EVERY_PLATFORM
    for name in SERVICES:
        service = services[name]
        assert service["command"] == [f"ferry-{name}"]
        assert service["environment"]["FERRY_NATS__URL"] == "nats://nats:4222"
        assert {k for k in service["environment"] if k.startswith("FERRY_")} <= set(known)
        assert service["depends_on"]["nats"]["condition"] == "service_healthy"
        assert "/readyz" in " ".join(service["healthcheck"]["test"])


def test_dockerfile_installs_the_lock_and_the_console_scripts_exist() -> None:
    # Given the Dockerfile and the members' declared console scripts
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "requirements.lock" in dockerfile
    for name in SERVICES:
        pyproject = (ROOT / "services" / name / "pyproject.toml").read_text()
        # Then each script the compose file and the chart run is declared
        assert f'ferry-{name} = "ferry.' in pyproject


def test_every_deployment_reads_its_own_nats_identity_from_a_secret() -> None:
    # Given the chart's deployments
    for service, token in [
        ("migration-controller", "controller"),
        ("volume-service", "volume"),
        ("conversion-service", "conversion"),
        ("vm-service", "vm"),
    ]:
        text = (CHART / "templates" / f"deployment-{service}.yaml").read_text()
        # Then the credentials come from the service's own Secret, as a file, read-only
        assert f"secretName: {{{{ .Release.Name }}}}-nats-{token}" in text
        assert "FERRY_NATS__CREDENTIALS_FILE" in text and "readOnly: true" in text
        assert "defaultMode: 0440" in text
