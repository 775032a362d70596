"""The chart's RBAC holds what the platform really calls: recorded against the stand-in.

Each service's platform calls (the volume-service's volumes and populator, the
conversion-service's workload pods) are run against the stand-in; every request
its API server saw becomes (API group, resource, verb) and must be granted by
that service's ClusterRole in ``charts/ferry/templates/rbac.yaml``. A call added
to the platform without its rule fails here, not as a 403 in a cluster. The warm
rounds' calls (transfer pods, the round-0 result patched on the claim) need the oVirt
test guest and are checked the same way in ``test_warm_rounds.py``.
"""

from __future__ import annotations

import io
import re
import sys
from pathlib import Path
from typing import Any

import yaml

from ferry.platform.images import ImageRef
from ferry.platform.kubernetes.platform import KubernetesPlatform
from ferry.platform.volumes import VolumeRequest
from ferry.platform.workloads import Workload
from ferry.proto import label
from ferry.proto.inventory import DiskFormat, VolumeMode, VolumeTarget
from ferry.proto.volume import VolumeSource
from ferry.testing.cluster.api import Request
from ferry.testing.cluster.cluster import Cluster

sys.path.insert(0, str(Path(__file__).parent))  # operated: the controller in operator mode

RBAC = Path(__file__).resolve().parents[3] / "charts" / "ferry" / "templates" / "rbac.yaml"
NS = "migrated"
MiB = 1 << 20
_PATH = re.compile(
    r"^/(?:api/v1|apis/(?P<group>[^/]+)/[^/]+)(?:/namespaces/[^/]+)?"
    r"/(?P<plural>[^/]+)(?:/(?P<name>[^/]+))?(?:/(?P<sub>[^/]+))?$"
)
_VERBS = {"POST": "create", "PATCH": "patch", "PUT": "update", "DELETE": "delete"}


def granted(service: str) -> set[tuple[str, str, str]]:
    text = RBAC.read_text().replace("{{ .Release.Name }}", "ferry")
    text = text.replace("{{ .Release.Namespace }}", "ferry-system")
    [role] = [
        d
        for d in yaml.safe_load_all(text)
        if d["kind"] == "ClusterRole" and d["metadata"]["name"] == f"ferry-{service}"
    ]
    return {
        (g, r, v)
        for rule in role["rules"]
        for g in rule["apiGroups"]
        for r in rule["resources"]
        for v in rule["verbs"]
    }


def used(requests: list[Request]) -> set[tuple[str, str, str]]:
    calls = set()
    for request in requests:
        match = _PATH.match(request.path)
        assert match is not None, request.path
        resource = match["plural"] + (f"/{match['sub']}" if match["sub"] else "")
        if request.method == "GET":
            watch = request.query.get("watch") in ("true", "1")
            verb = "get" if match["name"] else ("watch" if watch else "list")
        else:
            verb = _VERBS[request.method]
        calls.add((match["group"] or "", resource, verb))
    return calls


def volume(disk: str, source: VolumeSource) -> VolumeRequest:
    target = VolumeTarget(disk_id=disk, storage_class="wffc", volume_mode=VolumeMode.BLOCK)
    return VolumeRequest(
        namespace=NS,
        migration="mig-1",
        vm="vm-1",
        disk_id=disk,
        capacity=4 * MiB,
        target=target,
        source=source,
    )


async def test_each_services_calls_are_granted_by_its_role(
    platform: KubernetesPlatform, cluster: Cluster, tmp_path: Path
) -> None:
    source = tmp_path / "disk.raw"
    source.write_bytes(b"x" * MiB)
    calls: dict[str, set[tuple[str, str, str]]] = {}

    # When the volume-service's steps run: CreateDataVolumes, AllocateDisks, CopyDisks
    # (the populator), then clean-up
    blank = await platform.ensure_volume(volume("d1", VolumeSource.BLANK))
    populated = await platform.ensure_volume(volume("d2", VolumeSource.POPULATOR))
    await platform.bind_volumes(NS, "mig-1", "vm-1")
    await platform.populate(populated, ImageRef(path=str(source), format=DiskFormat.RAW))
    await platform.delete_temporary_volumes(NS, "mig-1", "vm-1")
    calls["volume-service"] = used(cluster.api.requests)
    cluster.api.requests.clear()

    # and the conversion-service's: a conversion pod with the VM's claim and a secret file
    workload = Workload(
        name="convert",
        argv=["sh", "-c", "echo converted"],
        volumes={blank.name: "/dev/disk0"},
        time_limit=30,
        labels={label.MIGRATION: "mig-1", label.VM: "vm-1"},
        namespace=NS,
        secret_files={"password": b"s3cret"},
        secret_dir="/etc/ferry/secrets",
    )
    assert await platform.run_workload(workload, io.BytesIO()) == 0
    calls["conversion-service"] = used(cluster.api.requests)
    cluster.api.requests.clear()

    # and the volume-service removes everything of the failed VM
    await platform.delete_volumes(NS, "mig-1", "vm-1")
    calls["volume-service"] |= used(cluster.api.requests)

    # Then every call is one the service's role grants
    for service, made in calls.items():
        missing: Any = sorted(made - granted(service))
        assert missing == [], f"{service} calls what its role does not grant: {missing}"
    # and the populator's own steps were among them (the rules that were 403s before)
    assert ("", "persistentvolumes", "patch") in calls["volume-service"]
    assert ("populators.ferry.dev", "ferryvolumepopulators/status", "patch") in calls[
        "volume-service"
    ]
    assert ("", "pods/log", "get") in calls["conversion-service"]


async def test_the_controllers_role_grants_exactly_what_operator_mode_calls(
    cluster: Cluster, nats_url: str, tmp_path: Path
) -> None:
    from operated import NS, Services, documents, eventually, operated, placed

    from ferry.migration_controller.operator.finalizers import FINALIZER
    from ferry.migration_controller.operator.intake import key
    from ferry.platform.kubernetes.ferryobjects import resource

    held = ("id-a", "ConvertGuest")
    services = Services({held: "hold"})  # the migration runs until the test lets it end
    async with operated(nats_url, cluster, tmp_path, services) as op:
        # Given one object of every kind, made past the API (the test is not the operator):
        # a running Migration uses each of them (the hook is its VM's, the budget global)
        budget = {
            "apiVersion": "ferry.dev/v1alpha1",
            "kind": "Budget",
            "metadata": {"name": "all"},
            "spec": {"scope": "global", "maxVms": 4},
        }
        hook = {**budget, "kind": "Hook", "metadata": {"name": "h"}, "spec": {"command": ["true"]}}
        migration = {**budget, "kind": "Migration", "metadata": {"name": "m1"}}
        migration["spec"] = {"plan": {"name": "plan1"}}
        docs = documents("ova", ["id-a"])
        docs[-1]["spec"]["vms"][0]["hooks"] = [{"hook": {"name": "h"}, "step": "PostHook"}]
        made = placed([*docs, budget, hook, migration])
        for doc in made:
            cluster.store.create(op.kind(resource(doc["kind"]).plural), doc)

        def stored(doc: dict[str, Any]) -> dict[str, Any]:
            there = cluster.store.get(
                op.kind(resource(doc["kind"]).plural), NS, doc["metadata"]["name"]
            )
            assert there is not None
            return there

        def finalized(doc: dict[str, Any]) -> list[str]:
            return list(stored(doc)["metadata"].get("finalizers") or [])

        # and the operator holds each while the migration runs, and lets each go after
        await eventually(
            lambda: all(finalized(d) == [FINALIZER] for d in made), timeout=20, what="held"
        )
        services.released.add(held)
        await eventually(lambda: all(finalized(d) == [] for d in made), timeout=30, what="let go")

        # When the operator has applied them all and written each one's status
        def ready(doc: dict[str, Any]) -> bool:
            conditions = (stored(doc).get("status") or {}).get("conditions") or []
            return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

        await eventually(lambda: all(ready(d) for d in made), timeout=20, what="all Ready")
        # and each status write loses a race once (409: read again, write again)
        assert op.controller is not None and op.controller.operator is not None
        operator = op.controller.operator
        for k, doc in list(operator.known.docs.items()):
            stale = {**doc, "metadata": {**doc["metadata"], "resourceVersion": "1"}, "status": {}}
            operator.known.docs[k] = stale
            await operator.statuses.write(key(stale))

        # Then every call was one the controller's role grants, and it grants nothing more
        calls = used(cluster.api.requests)
        assert calls == granted("migration-controller")
