"""The deployment files: Helm chart and docker-compose.yml are well-formed and agree
with the settings.

The chart is linted (``--strict``) and rendered by a real helm
(:mod:`ferry.testing.helm`: the pinned release binary from a registry package).
Rendered objects are validated strictly against the Kubernetes OpenAPI schemas.
Docker does not run here: the compose file and Dockerfile are read, not run.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from ferry.console.settings import ConsoleSettings
from ferry.migration_controller.settings import ControllerGroup
from ferry.platform import crdgen
from ferry.platform.settings import PlatformSettings
from ferry.proto import objects as ferry_objects
from ferry.runtime import settings
from ferry.runtime.providers import ProvidersSettings
from ferry.testing import helm

# The chart deploys to a cluster: it sets the platform's kind and its kubernetes group;
# the local group belongs to `ferry up` and docker-compose.
CHART_PLATFORM = {
    name: doc
    for name, doc in settings.environment_names(PlatformSettings, "FERRY_PLATFORM__").items()
    if not name.startswith("FERRY_PLATFORM__LOCAL__")
}
EVERY_PLATFORM = settings.environment_names(PlatformSettings, "FERRY_PLATFORM__")
CONSOLE = settings.environment_names(ConsoleSettings, "FERRY_CONSOLE__")
PROVIDERS = settings.environment_names(ProvidersSettings, "FERRY_PROVIDERS__")
CONTROLLER = settings.environment_names(ControllerGroup, "FERRY_CONTROLLER__")

ROOT = Path(__file__).resolve().parents[3]
CHART = ROOT / "charts" / "ferry"
KUBERNETES = "1.30.0"
SERVICES = ("migration-controller", "volume-service", "conversion-service", "vm-service")


def _objects(*values: Path) -> list[dict[str, Any]]:
    """The chart as the real ``helm template`` renders it (``values``: extra files)."""
    return helm.template(CHART, release="ferry", namespace="ferry-system", values=values)


MONITORING = {"monitoring": {"dashboard": {"enabled": True}, "rules": {"enabled": True}}}


def test_helm_lint_strict_accepts_the_chart_and_refuses_a_broken_one(tmp_path: Path) -> None:
    # When the real helm lints the chart, strictly (warnings are failures), with its
    # defaults and with every optional object on
    values = tmp_path / "monitoring.yaml"
    values.write_text(yaml.safe_dump(MONITORING))
    for extra in ([], ["--values", str(values)]):
        done = helm.run("lint", "--strict", str(CHART), *extra, check=False)
        # Then it passes
        assert done.returncode == 0, done.stdout + done.stderr
        assert "1 chart(s) linted, 0 chart(s) failed" in done.stdout
    # And a copy with a template that reads a value the chart does not have fails
    broken = tmp_path / "ferry"
    shutil.copytree(CHART, broken)
    (broken / "templates" / "broken.yaml").write_text("x: {{ .Values.nothing.here }}\n")
    done = helm.run("lint", "--strict", str(broken), check=False)
    assert done.returncode != 0 and "nil pointer" in done.stdout + done.stderr


def test_optional_monitoring_objects_render(tmp_path: Path) -> None:
    # Given the chart with its dashboard and rules on
    values = tmp_path / "monitoring.yaml"
    values.write_text(yaml.safe_dump(MONITORING))
    kinds = {o["kind"] for o in _objects(values)}
    # Then the rules and the dashboard's ConfigMap are rendered
    assert {"PrometheusRule", "ConfigMap"} <= kinds


def test_chart_metadata_and_values_parse() -> None:
    # Given the chart's metadata and values
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())

    # Then they hold what the templates need
    assert chart["apiVersion"] == "v2"
    assert chart["name"] == "ferry"
    assert set(values["services"]) == {"controller", "volume", "conversion", "vm"}
    assert values["console"]["token"] == ""  # set at install time, never in the chart


def test_values_settings_use_the_settings_names() -> None:
    # Given the settings block of the values and the settings model
    values = yaml.safe_load((CHART / "values.yaml").read_text())["settings"]
    known = settings.environment_names() | CHART_PLATFORM | PROVIDERS

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
    for service in (*SERVICES, "console"):
        assert f"Deployment/ferry-{service}" in kinds
        assert f"Service/ferry-{service}" in kinds
    assert "Secret/ferry-console" in kinds
    assert "HorizontalPodAutoscaler/ferry-conversion-service" in kinds
    for service in SERVICES:
        assert {f"ServiceAccount/ferry-{service}", f"ClusterRole/ferry-{service}"} <= set(kinds)
        assert f"ClusterRoleBinding/ferry-{service}" in kinds


def test_deployments_probe_health_and_pass_settings_as_env() -> None:
    # Given the rendered Deployments
    every = [o for o in _objects() if o["kind"] == "Deployment"]
    deployments = [d for d in every if d["metadata"]["name"] != "ferry-console"]
    known = settings.environment_names() | CHART_PLATFORM | PROVIDERS

    for deployment in deployments:
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        # Then liveness and readiness probe the runtime's endpoints
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        # and every FERRY_ variable is one the services read, with a value
        env = {e["name"]: e["value"] for e in container["env"] if "valueFrom" not in e}
        fields = {e["name"]: e["valueFrom"] for e in container["env"] if "valueFrom" in e}
        own = CONTROLLER if deployment["metadata"]["name"] == "ferry-migration-controller" else {}
        assert set(env) <= set(known) | set(own)
        assert env["FERRY_NATS__URL"] == "nats://nats:4222"
        # (empty only where empty means "not set": no API host or kubeconfig in a pod,
        # no publish ledger)
        unset = {f"FERRY_PLATFORM__KUBERNETES__{n}" for n in ("HOST", "KUBECONFIG", "CONTEXT")}
        unset.add("FERRY_NATS__TLS_CA_FILE")  # a NATS without TLS
        unset.add("FERRY_BUS__LEDGER_DIR")
        unset.add("FERRY_CONTROLLER__OPERATOR__NAMESPACES")  # every namespace
        assert all(isinstance(v, str) and (v or k in unset) for k, v in env.items())
        # and the services that use the target platform run on the cluster, in-cluster
        if deployment["metadata"]["name"] != "ferry-migration-controller":
            assert env["FERRY_PLATFORM__KIND"] == "kubernetes"
            assert env["FERRY_PLATFORM__KUBERNETES__IN_CLUSTER"] == "true"
        else:  # and the controller, on the kubernetes platform, in operator mode, in-cluster
            assert env["FERRY_CONTROLLER__OPERATOR__ENABLED"] == "true"
            assert env["FERRY_PLATFORM__KUBERNETES__IN_CLUSTER"] == "true"
        # and the pods of the volume-service and the conversion-service ask this very
        # replica for bandwidth grants (a ticket lives in it): its pod IP, from the
        # downward API, no secret
        if deployment["metadata"]["name"] in ("ferry-volume-service", "ferry-conversion-service"):
            assert fields == {"POD_IP": {"fieldRef": {"fieldPath": "status.podIP"}}}
            pacing = env["FERRY_PLATFORM__KUBERNETES__PACING_URL"]
            assert pacing == f"http://$(POD_IP):{env['FERRY_HTTP__PORT']}"
            names = [e["name"] for e in container["env"]]  # $(POD_IP) expands if defined above
            assert names.index("POD_IP") < names.index("FERRY_PLATFORM__KUBERNETES__PACING_URL")
        else:
            assert fields == {} and "FERRY_PLATFORM__KUBERNETES__PACING_URL" not in env
        # and the grace period outlasts the drain
        grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        assert grace > float(env["FERRY_WORKERS__GRACE_SECONDS"])

    concurrency = {
        d["metadata"]["name"]: {
            e["name"]: e.get("value") for e in d["spec"]["template"]["spec"]["containers"][0]["env"]
        }["FERRY_WORKERS__CONCURRENCY"]
        for d in deployments
    }
    # a per-service override wins, the others fall back to the global value
    assert concurrency["ferry-conversion-service"] == "1"
    assert concurrency["ferry-volume-service"] == "4"
    # and the controller runs an active replica and a standby on a lease of the chart's length
    (controller,) = [
        d for d in deployments if d["metadata"]["name"] == "ferry-migration-controller"
    ]
    assert controller["spec"]["replicas"] == 2
    env = {
        e["name"]: e["value"]
        for e in controller["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["FERRY_CONTROLLER__LEADER_LEASE_SECONDS"] == "10"


def test_console_reads_its_token_from_the_secret_as_a_file() -> None:
    # Given the rendered console Deployment and its Secret
    objects = _objects()
    deployment = next(
        o for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"] == "ferry-console"
    )
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    # Then its settings are ones the console reads, the token is a mounted file of the
    # chart's Secret, and no variable carries the token itself
    assert set(env) <= set(settings.environment_names()) | set(CONSOLE)
    assert container["command"] == ["ferry-console"]
    mount = next(m for m in container["volumeMounts"] if m["name"] == "token")
    assert env["FERRY_CONSOLE__TOKEN_FILE"] == mount["mountPath"] + "/token"
    assert mount["readOnly"] is True
    volume = next(v for v in pod["volumes"] if v["name"] == "token")
    assert volume["secret"]["secretName"] == "ferry-console"
    assert all("secretKeyRef" not in str(e) for e in container["env"])
    assert pod["automountServiceAccountToken"] is False
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"


def _granted(role: dict[str, Any]) -> set[tuple[str, str, str]]:
    return {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def test_each_service_runs_as_its_own_account_with_its_own_rules() -> None:
    # Given the rendered chart
    objects = _objects()
    roles = {o["metadata"]["name"]: o for o in objects if o["kind"] == "ClusterRole"}
    bindings = {o["metadata"]["name"]: o for o in objects if o["kind"] == "ClusterRoleBinding"}
    deployments = {o["metadata"]["name"]: o for o in objects if o["kind"] == "Deployment"}

    for service in SERVICES:
        name = f"ferry-{service}"
        # Then each service's pod uses its own account, bound to its own role
        pod = deployments[name]["spec"]["template"]["spec"]
        assert pod["serviceAccountName"] == name
        binding = bindings[name]
        assert binding["roleRef"]["name"] == name
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": name, "namespace": "ferry-system"}
        ]
        # and no role grants a wildcard
        for group, resource, verb in _granted(roles[name]):
            assert "*" not in (group, resource, verb)
    # and only the services that touch a kind may: Secrets never for the vm-service or the
    # controller, VirtualMachines only for the vm-service, Ferry's CRs only the controller
    kinds = {s: {(g, r) for g, r, _ in _granted(roles[f"ferry-{s}"])} for s in SERVICES}
    assert ("", "secrets") not in kinds["vm-service"] | kinds["migration-controller"]
    assert {s for s in SERVICES if ("kubevirt.io", "virtualmachines") in kinds[s]} == {"vm-service"}
    assert {s for s in SERVICES if ("ferry.dev", "plans") in kinds[s]} == {"migration-controller"}
    # and the controller may read every kind of Ferry's own CRDs (a new kind is not
    # forgotten in its role)
    for crd_file in (CHART / "crds").glob("*.ferry.dev.yaml"):
        crd = yaml.safe_load(crd_file.read_text())
        if crd["spec"]["group"] == "ferry.dev":
            plural = crd["spec"]["names"]["plural"]
            assert ("ferry.dev", plural, "list") in _granted(roles["ferry-migration-controller"])
    assert ("populators.ferry.dev", "ferryvolumepopulators") in kinds["volume-service"]
    assert ("", "persistentvolumes", "patch") in _granted(roles["ferry-volume-service"])


def test_every_pod_is_restricted_non_root_with_a_read_only_root() -> None:
    # Given every rendered Deployment
    for deployment in (o for o in _objects() if o["kind"] == "Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        # Then the pod runs as a non-root user with the runtime's seccomp profile
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] != 0
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        for container in pod["containers"]:
            context = container["securityContext"]
            # and its container cannot gain privileges or write its image
            assert context["allowPrivilegeEscalation"] is False
            assert context["readOnlyRootFilesystem"] is True
            assert context["capabilities"] == {"drop": ["ALL"]}
            assert context.get("privileged", False) is False
            # (scratch space is a volume)
            assert "/tmp" in {m["mountPath"] for m in container["volumeMounts"]}
    # and the image's user is the one the pods run as
    uid = yaml.safe_load((CHART / "values.yaml").read_text())["podSecurityContext"]["runAsUser"]
    assert f"--uid {uid}" in (ROOT / "Dockerfile").read_text()


def test_provider_secrets_are_files_in_the_services_that_read_sources(tmp_path: Path) -> None:
    # Given a chart installed with one provider Secret
    source = {"secret": {"name": "vcenter", "items": [{"key": "password", "path": "ns/vc/pw"}]}}
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump({"providerSecrets": [source]}))
    rendered = [o for o in _objects(values) if o["kind"] == "Deployment"]
    readers = {"ferry-migration-controller", "ferry-volume-service", "ferry-conversion-service"}

    for deployment in rendered:
        kubernetes_validate.validate(deployment, KUBERNETES, strict=True)
        pod = deployment["spec"]["template"]["spec"]
        container = pod["containers"][0]
        env = {e["name"]: e.get("value") for e in container["env"]}
        mounts = {m["name"]: m for m in container["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["volumes"]}
        if deployment["metadata"]["name"] in readers:
            # Then the services that open providers see the Secret read-only, as files,
            # where FERRY_PROVIDERS__SECRETS_DIR points
            mount = mounts["provider-secrets"]
            assert mount["readOnly"] is True
            assert env["FERRY_PROVIDERS__SECRETS_DIR"] == mount["mountPath"]
            projected = volumes["provider-secrets"]["projected"]
            assert projected["sources"] == [source]
            assert projected["defaultMode"] == 0o400
        else:
            # and the others never do
            assert "provider-secrets" not in volumes
        assert all("secretKeyRef" not in str(e) for e in container["env"])


def test_chart_crds_are_the_generated_ones_and_valid() -> None:
    # Given the CRDs checked in under charts/ferry/crds and the ones the models make
    generated = crdgen.render()
    checked_in = {p.name: p.read_text() for p in (CHART / "crds").glob("*.yaml")}

    # Then they are the same files (`make crds` after a model change)
    assert checked_in == generated
    crds = {c["spec"]["names"]["kind"]: c for c in crdgen.crds()}
    assert set(crds) == {*ferry_objects.KINDS, "FerryVolumePopulator"}
    # and each one is a valid CustomResourceDefinition with a structural schema
    for crd in crds.values():
        kubernetes_validate.validate(crd, KUBERNETES, strict=True)
        assert "$ref" not in json.dumps(crd)
        assert '"const"' not in json.dumps(crd)


def _crd_validator(crd: dict[str, Any]) -> Any:
    import jsonschema  # type: ignore[import-untyped,unused-ignore]

    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return jsonschema.Draft4Validator(schema)


def test_crd_schemas_accept_the_examples_and_refuse_what_the_models_refuse() -> None:
    # Given the CRDs and the example objects people apply
    crds = {c["spec"]["names"]["kind"]: c for c in crdgen.crds()}
    examples = [
        d
        for path in sorted((ROOT / "examples").glob("*.yaml"))
        for d in yaml.safe_load_all(path.read_text())
        if d
    ]
    kinds = {"Provider", "Plan", "NetworkMap", "StorageMap", "Budget"}
    assert {d["kind"] for d in examples} >= kinds

    # Then every example validates against its kind's CRD
    for doc in examples:
        errors = list(_crd_validator(crds[doc["kind"]]).iter_errors(doc))
        assert errors == [], (doc["kind"], [e.message for e in errors])
    # and an object the model refuses is refused by the CRD too
    plan = next(d for d in examples if d["kind"] == "Plan")
    bad = {**plan, "spec": {**plan["spec"], "targetPowerState": "sideways", "vms": []}}
    with pytest.raises(ValueError):
        ferry_objects.parse_object(bad)
    paths = {tuple(e.path) for e in _crd_validator(crds["Plan"]).iter_errors(bad)}
    assert paths == {("spec", "targetPowerState"), ("spec", "vms")}


def test_compose_file_runs_nats_with_jetstream_and_the_four_services() -> None:
    # Given docker-compose.yml
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]

    # Then nats runs with a config that enables JetStream on a file store, fsync always
    assert set(services) == {"identities", "nats", "console", *SERVICES}
    conf = compose["configs"][services["nats"]["configs"][0]["source"]]["content"]
    assert "jetstream" in conf
    assert "sync_interval: always" in conf
    assert "store_dir" in conf
    assert any(v == "nats-data:/var/lib/nats" for v in services["nats"]["volumes"])

    # and every service runs its console script against nats, with settings it knows
    known = settings.environment_names() | EVERY_PLATFORM
    for name in SERVICES:
        service = services[name]
        assert service["command"] == [f"ferry-{name}"]
        assert service["environment"]["FERRY_NATS__URL"] == "nats://nats:4222"
        assert {k for k in service["environment"] if k.startswith("FERRY_")} <= set(known)
        assert service["depends_on"]["nats"]["condition"] == "service_healthy"
        assert "/readyz" in " ".join(service["healthcheck"]["test"])


def test_compose_runs_the_console_with_its_token_from_a_secret_file() -> None:
    # Given docker-compose.yml's console
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    console = compose["services"]["console"]
    env = console["environment"]
    # Then it runs the console's script against nats, with settings it knows
    assert console["command"] == ["ferry-console"]
    assert env["FERRY_NATS__URL"] == "nats://nats:4222"
    assert {k for k in env if k.startswith("FERRY_")} <= set(settings.environment_names() | CONSOLE)
    # And its token is a file from a compose secret, never a value in its environment
    (secret,) = console["secrets"]
    assert env["FERRY_CONSOLE__TOKEN_FILE"] == f"/run/secrets/{secret}"
    assert set(compose["secrets"][secret]) == {"environment"}
    assert not [k for k in env if "TOKEN" in k and k != "FERRY_CONSOLE__TOKEN_FILE"]
    # And it is published on loopback only, its probes answered like every service's
    assert console["ports"] == ["127.0.0.1:8085:8080"]
    assert "/readyz" in " ".join(console["healthcheck"]["test"])


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


def test_ova_shares_are_mounted_read_only_in_the_services_that_read_sources(
    tmp_path: Path,
) -> None:
    # Given a chart installed with one OVA share
    share = {
        "name": "ova",
        "server": "nfs.example",
        "path": "/exports/ova",
        "mountPath": "/mnt/ova",
    }
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump({"providerShares": [share]}))
    readers = {"ferry-migration-controller", "ferry-volume-service", "ferry-conversion-service"}

    for deployment in (o for o in _objects(values) if o["kind"] == "Deployment"):
        kubernetes_validate.validate(deployment, KUBERNETES, strict=True)
        pod = deployment["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in pod["volumes"]}
        mounts = {m["name"]: m for m in pod["containers"][0]["volumeMounts"]}
        if deployment["metadata"]["name"] in readers:
            # Then the services that read sources see the export read-only at its path
            nfs = {"server": "nfs.example", "path": "/exports/ova", "readOnly": True}
            assert volumes["share-ova"]["nfs"] == nfs
            assert mounts["share-ova"] == {
                "name": "share-ova",
                "mountPath": "/mnt/ova",
                "readOnly": True,
            }
        else:
            # and the others do not mount it
            assert "share-ova" not in volumes
