"""A Migration of thousands of VMs keeps a status the cluster will store.

etcd stores an object of at most 1.5 MiB; a larger write fails whole, so a status
that grew past it would stop changing for good. The operator fits the per-VM pipeline
into a budget: every VM in brief first, full detail (steps, disks, rounds) for the
running and failed ones before the rest, and says how many are brief or left out.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ferry.migration_controller.operator.statuses import VMS_BYTES, fitted
from ferry.platform import crdgen, factory
from ferry.platform.clusterobjects import ClusterObjectsError
from ferry.platform.settings import KubernetesSettings
from ferry.proto.pipeline import DiskSummary, RoundSummary, StepSummary, VmSummary
from ferry.testing.cluster.cluster import Cluster

NS = "waves"
STEPS = ["Started", "CreateDataVolumes", "AllocateDisks", "CreateSnapshot", "CopyDisks",
         "CopyingPaused", "StorePowerState", "PowerOffSource", "CreateFinalSnapshot",
         "Finalize", "ConvertGuest", "CreateVM", "PowerOn", "Completed"]  # fmt: skip


def vm(n: int, status: str) -> VmSummary:
    """A warm VM well into its migration: every step, three disks, twelve rounds."""
    when = "2026-12-07T03:00:00+00:00"
    return VmSummary(
        id=f"vm-{n:05d}", name=f"app-server-{n:05d}.datacenter.example", status=status,
        phase="CopyDisks", step="CopyDisks", flow="importer", targetName=f"app-{n:05d}",
        namespace=NS, bytesDone=n, bytesTotal=3 << 30,
        steps=[StepSummary(name=s, service="volume", status="Completed", attempt=1,
                           started=when, ended=when) for s in STEPS],
        disks=[DiskSummary(id=f"disk-{d}", name=f"disk-{d}", total=1 << 30, done=1 << 29,
                           checksum="sha256:" + "ab" * 32) for d in range(3)],
        rounds=[RoundSummary(precopy=r, changed=1 << 26, copied=1 << 26, seconds=12.5)
                for r in range(12)],
    )  # fmt: skip


def test_every_vm_fits_in_full_when_there_is_room() -> None:
    vms = [vm(n, "Running") for n in range(10)]
    shown, brief, omitted = fitted(vms, VMS_BYTES)
    assert (len(shown), brief, omitted) == (10, 0, 0)
    assert all(len(d["steps"]) == len(STEPS) and len(d["rounds"]) == 12 for d in shown)


def test_thousands_fit_in_brief_with_the_running_and_failed_in_full() -> None:
    # Given 3,000 VMs: a few running, a few failed, the rest done
    status = {7: "Running", 1500: "Failed", 2999: "Running"}
    vms = [vm(n, status.get(n, "Succeeded")) for n in range(3000)]
    # When the status is fitted
    shown, brief, omitted = fitted(vms, VMS_BYTES)
    # Then it is within the budget, in the VMs' order, every VM accounted for
    assert len(json.dumps(shown, separators=(",", ":"))) <= VMS_BYTES + 2
    assert brief + omitted + sum(1 for d in shown if d.get("steps")) == 3000
    ids = [d["id"] for d in shown]
    assert ids == sorted(ids)
    # and the running and failed ones keep their detail
    full = {d["id"] for d in shown if d.get("steps")}
    assert {"vm-00007", "vm-01500", "vm-02999"} <= full
    assert brief > 0


@pytest.fixture
async def api(cluster: Cluster) -> object:
    for crd in crdgen.crds():
        cluster.install_crd(crd)
    made = factory.cluster_objects(KubernetesSettings(host=cluster.url))
    yield made
    await made.aclose()


async def test_the_fitted_status_is_stored_where_the_whole_one_is_refused(
    cluster: Cluster, api: object, tmp_path: Path
) -> None:
    # Given a Migration in the cluster, and the pipeline of 3,000 VMs
    created = await api.create(  # type: ignore[attr-defined]
        {"apiVersion": "ferry.dev/v1alpha1", "kind": "Migration",
         "metadata": {"name": "wave-1", "namespace": NS}, "spec": {"plan": {"name": "p"}}}
    )  # fmt: skip
    vms = [vm(n, "Succeeded" if n % 7 else "Running") for n in range(3000)]
    whole = [v.model_dump(mode="json") for v in vms]
    # When the whole pipeline is written, the cluster refuses it as etcd would
    with pytest.raises(ClusterObjectsError, match=r"(?i)too large"):
        await api.write_status({**created, "status": {"vms": whole}})  # type: ignore[attr-defined]
    # Then the fitted one is stored, and says how many VMs it shows in brief or leaves out
    shown, brief, omitted = fitted(vms, VMS_BYTES)
    status = {"vms": shown, "vmsBrief": brief, "vmsOmitted": omitted}
    stored = await api.write_status({**created, "status": status})  # type: ignore[attr-defined]
    assert len(stored["status"]["vms"]) == 3000 - omitted
    assert stored["status"]["vmsBrief"] == brief > 0
