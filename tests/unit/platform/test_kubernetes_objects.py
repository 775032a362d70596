"""The kubernetes platform's pure parts: the objects it builds and how it reads status.

Every built object is checked against the real schemas (CDI, core via
kubernetes-validate, Ferry's populator CRD), so a field a cluster would drop or
reject fails here. No API server is involved; see the integration tests for
the requests themselves.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import pytest
from kubernetes_asyncio.client.exceptions import ApiException

from ferry.platform import factory
from ferry.platform.kubernetes import fill, objects
from ferry.platform.kubernetes.client import AlreadyExists, ClusterError, Forbidden, cluster_error
from ferry.platform.kubernetes.platform import KubernetesPlatform
from ferry.platform.kubernetes.vms import vm_phase
from ferry.platform.kubernetes.volumes import state_of
from ferry.platform.schemas import SchemaValidationError
from ferry.platform.settings import PlatformSettings
from ferry.platform.vms import VmPhase
from ferry.platform.volumes import Phase, VolumeRequest, required_size
from ferry.proto.inventory import Checksum, VolumeMode, VolumeTarget
from ferry.proto.volume import VolumeSource

GiB = 1 << 30


def request(
    source: VolumeSource = VolumeSource.BLANK,
    mode: VolumeMode = VolumeMode.FILESYSTEM,
    capacity: int = 10 * GiB + 1,
    disk_id: str = "disk/1 (scsi0:0)",
) -> VolumeRequest:
    return VolumeRequest(
        namespace="migrated",
        migration="mig-1",
        vm="vm-42",
        disk_id=disk_id,
        capacity=capacity,
        target=VolumeTarget(
            disk_id=disk_id,
            storage_class="fast",
            volume_mode=mode,
            access_modes=["ReadWriteMany"],
        ),
        source=source,
    )


def test_datavolumes_are_valid_and_ask_for_the_aligned_capacity() -> None:
    # Given a disk one byte over 10 GiB
    # When its DataVolume is built
    dv = objects.data_volume(request(VolumeSource.BLANK), "web01-d1", "raw")

    # Then it is valid, has the source, and asks for capacity aligned to 1 MiB
    objects.validate_object(dv)
    assert dv["spec"]["source"] == {"blank": {}}
    assert dv["spec"]["storage"]["resources"]["requests"]["storage"] == str(10 * GiB + (1 << 20))
    assert dv["spec"]["storage"]["accessModes"] == ["ReadWriteMany"]
    # And the disk id, which is no valid label value, is kept whole in an annotation
    assert dv["metadata"]["annotations"][objects.ANNOTATION_DISK] == "disk/1 (scsi0:0)"
    objects.validate_object({"apiVersion": "v1", "kind": "ConfigMap", "metadata": dv["metadata"]})


@pytest.mark.parametrize("source", [VolumeSource.POPULATOR, VolumeSource.IMPORTER])
def test_only_a_blank_volume_is_a_datavolume(source: VolumeSource) -> None:
    # Given a populator or importer request
    # When a DataVolume is built for it
    # Then the builder refuses
    with pytest.raises(ValueError, match="not a DataVolume"):
        objects.data_volume(request(source), "x", "raw")


@pytest.mark.parametrize("mode", list(VolumeMode))
def test_populator_claim_adds_overhead_only_for_filesystem(mode: VolumeMode) -> None:
    # Given a populator request
    # When the claim and its CR are built
    claim = objects.populator_claim(request(VolumeSource.POPULATOR, mode), "v", "raw", 0.055)
    cr = objects.populator_cr(request(VolumeSource.POPULATOR, mode), "v", "raw")

    # Then both are valid, and the size follows CDI's overhead rule
    objects.validate_object(claim)
    objects.validate_object(cr)
    wanted = required_size(10 * GiB + 1, mode, 0.055)
    assert claim["spec"]["resources"]["requests"]["storage"] == str(wanted)
    assert (wanted > 10 * GiB + (1 << 20)) == (mode == VolumeMode.FILESYSTEM)
    assert claim["spec"]["dataSourceRef"]["kind"] == "FerryVolumePopulator"


def test_the_populator_crd_is_a_valid_crd_and_checks_its_crs() -> None:
    # Given the CRD Ferry ships and a CR with a typo'd field
    objects.validate_object(objects.POPULATOR_CRD)
    cr = objects.populator_cr(request(VolumeSource.POPULATOR), "v", "raw")
    cr["spec"]["diskID"] = cr["spec"].pop("diskId")

    # When the CR is validated
    # Then it is refused, naming the field
    with pytest.raises(SchemaValidationError, match="diskI"):
        objects.validate_object(cr)


def test_pvcinit_pod_is_restricted_and_mounts_block_as_devices() -> None:
    # Given one Filesystem and one Block claim
    claims = [("a", VolumeMode.FILESYSTEM), ("b", VolumeMode.BLOCK)]

    # When the pvcinit pod is built
    pod = objects.pvcinit_pod("migrated", "mig-1", "vm-42", claims, "busybox:stable", 600)

    # Then it is a valid pod that mounts one and attaches the other as a device
    objects.validate_object(pod)
    container = pod["spec"]["containers"][0]
    assert container["volumeMounts"] == [{"name": "disk-0", "mountPath": "/disks/0"}]
    assert container["volumeDevices"] == [{"name": "disk-1", "devicePath": "/dev/disk-1"}]
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert pod["metadata"]["labels"]["ferry.io/temporary"] == "true"
    assert pod["metadata"]["name"] == objects.pvcinit_name("mig-1", "vm-42")


@pytest.mark.parametrize(
    ("text", "value"),
    [("1Gi", GiB), ("1073741824", GiB), ("1.5G", 1_500_000_000), ("512Mi", 512 << 20)],
)
def test_quantities(text: str, value: int) -> None:
    assert objects.quantity(text) == value


def _dv(source: VolumeSource, phase: str) -> dict[str, Any]:
    dv = objects.data_volume(request(source), "v", "raw")
    dv["status"] = {"phase": phase}
    return dv


@pytest.mark.parametrize(
    ("source", "dv_phase", "pvc_phase", "expected"),
    [
        (VolumeSource.BLANK, "", "", Phase.PENDING),
        (VolumeSource.BLANK, "WaitForFirstConsumer", "Pending", Phase.PENDING),
        (VolumeSource.BLANK, "PVCBound", "Bound", Phase.BOUND),
        (VolumeSource.BLANK, "Succeeded", "Bound", Phase.BOUND),  # empty, for virt-v2v
        (VolumeSource.BLANK, "ImportInProgress", "Bound", Phase.POPULATING),
        (VolumeSource.BLANK, "Failed", "Bound", Phase.FAILED),
        (VolumeSource.BLANK, "Succeeded", "Lost", Phase.FAILED),
    ],
)
def test_datavolume_phases(
    source: VolumeSource, dv_phase: str, pvc_phase: str, expected: Phase
) -> None:
    # Given a DataVolume and its claim in these phases
    claim = {"spec": {"volumeName": "pv-1"}, "status": {"phase": pvc_phase}}

    # When Ferry reads them
    state = state_of(_dv(source, dv_phase), claim, 0.055)

    # Then the volume's phase is as expected, with the shape read back from the object
    assert state.phase == expected
    assert (state.capacity, state.storage_class, state.disk_id) == (
        10 * GiB + 1,
        "fast",
        "disk/1 (scsi0:0)",
    )


def test_a_populator_claim_is_succeeded_once_bound() -> None:
    # Given a populator claim, pending and then bound
    claim = objects.populator_claim(request(VolumeSource.POPULATOR), "v", "raw", 0.055)
    pending = state_of({**claim, "status": {"phase": "Pending"}}, None, 0.055)
    bound = state_of(
        {**claim, "spec": {**claim["spec"], "volumeName": "pv"}, "status": {"phase": "Bound"}},
        None,
        0.055,
    )

    # Then it is Pending, and Succeeded once bound (the populator binds it only when full)
    assert (pending.phase, bound.phase, bound.pv) == (Phase.PENDING, Phase.SUCCEEDED, "pv")
    assert bound.size == required_size(10 * GiB + 1, VolumeMode.FILESYSTEM, 0.055)


def test_a_transfer_claim_is_a_full_copy_only_with_round_zeros_result() -> None:
    # Given an importer claim, pending, bound, then bound with round 0's result on it
    claim = objects.transfer_claim(request(VolumeSource.IMPORTER), "v", "raw", 0.055)
    objects.validate_object(claim)
    assert "dataSourceRef" not in claim["spec"]
    bound = {**claim, "spec": {**claim["spec"], "volumeName": "pv"}, "status": {"phase": "Bound"}}
    summed = Checksum(algorithm="sha256-tree", digest="ab", bytes=10 * GiB + 1)
    result = fill.Done(bytes_copied=5, source=summed, target=summed, seconds=1.0)
    annotations = {
        **bound["metadata"]["annotations"],
        objects.ANNOTATION_COPY: msgspec.json.encode(result).decode(),
    }
    filled = {**bound, "metadata": {**bound["metadata"], "annotations": annotations}}

    # When Ferry reads them
    states = [
        state_of(c, None, 0.055) for c in ({**claim, "status": {"phase": "Pending"}}, bound, filled)
    ]

    # Then only the last is Succeeded, and it carries round 0's verified copy
    assert [s.phase for s in states] == [Phase.PENDING, Phase.BOUND, Phase.SUCCEEDED]
    assert states[1].copy is None
    assert states[2].copy is not None and states[2].copy.target == summed
    assert states[2].source == VolumeSource.IMPORTER


@pytest.mark.parametrize(
    ("vm", "vmi", "agent", "expected"),
    [
        ({"spec": {"runStrategy": "Halted"}}, None, False, VmPhase.STOPPED),
        ({"spec": {"runStrategy": "Always"}}, None, False, VmPhase.STARTING),
        ({"spec": {"running": True}}, None, False, VmPhase.STARTING),
        ({"status": {"printableStatus": "ErrorUnschedulable"}}, None, False, VmPhase.FAILED),
        ({}, {"status": {"phase": "Scheduling"}}, False, VmPhase.STARTING),
        ({}, {"status": {"phase": "Running"}}, False, VmPhase.RUNNING),
        (
            {},
            {"status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "False"}]}},
            False,
            VmPhase.STARTING,
        ),
        ({}, {"status": {"phase": "Running"}}, True, VmPhase.STARTING),
        (
            {},
            {
                "status": {
                    "phase": "Running",
                    "conditions": [{"type": "AgentConnected", "status": "True"}],
                }
            },
            True,
            VmPhase.RUNNING,
        ),
        (
            {},
            {
                "status": {
                    "phase": "Running",
                    "conditions": [{"type": "AgentConnected", "status": "False"}],
                }
            },
            False,
            VmPhase.STARTING,
        ),
        ({}, {"status": {"phase": "Failed"}}, False, VmPhase.FAILED),
    ],
)
def test_vm_phases(
    vm: dict[str, Any], vmi: dict[str, Any] | None, agent: bool, expected: VmPhase
) -> None:
    assert vm_phase(vm, vmi, agent)[0] == expected


@pytest.mark.parametrize(
    ("status", "kind", "permanent"),
    [
        (403, Forbidden, True),
        (401, Forbidden, True),
        (409, AlreadyExists, True),
        (422, ClusterError, True),
        (429, ClusterError, False),
        (503, ClusterError, False),
    ],
)
def test_api_errors_say_whether_a_retry_can_help(
    status: int, kind: type[ClusterError], permanent: bool
) -> None:
    # Given an API error with a Status body
    error = ApiException(status=status, reason="x")
    error.body = b'{"kind": "Status", "message": "datavolumes is forbidden"}'

    # When it is translated
    translated = cluster_error(error, "create DataVolume ns/v")

    # Then its type, permanence and message are right
    assert type(translated) is kind
    assert translated.permanent is permanent
    assert translated.status == status
    assert "create DataVolume ns/v" in translated.reason


def test_the_factory_makes_a_kubernetes_platform_without_connecting() -> None:
    # Given settings naming an API server that is not there
    # When the factory builds the platform
    settings = PlatformSettings.model_validate(
        {"kind": "kubernetes", "kubernetes": {"host": "http://127.0.0.1:9", "poll_seconds": 1}}
    )
    made = factory.create(settings, data_dir=Path("unused"))

    # Then it is built (the client connects on first use), and bad settings are refused
    assert isinstance(made, KubernetesPlatform)
    with pytest.raises(ValueError, match="filesystem_overhead"):
        PlatformSettings.model_validate({"kubernetes": {"filesystem_overhead": 1.5}})
