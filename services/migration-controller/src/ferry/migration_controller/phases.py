"""Names of the steps (phases) of a VM's itinerary and of the states they pass through.

The step names follow the workflow this project implements (Started,
CreateDataVolumes, CopyDisks, AllocateDisks, ConvertGuest, CreateVM, …,
Completed) so that people who know it can read Ferry's status at a glance.
"""

from __future__ import annotations

from enum import StrEnum


class Phase(StrEnum):
    STARTED = "Started"
    PRE_HOOK = "PreHook"
    STORE_POWER_STATE = "StorePowerState"
    POWER_OFF_SOURCE = "PowerOffSource"
    CREATE_DATA_VOLUMES = "CreateDataVolumes"
    ALLOCATE_DISKS = "AllocateDisks"
    CREATE_SNAPSHOT = "CreateSnapshot"
    COPY_DISKS = "CopyDisks"
    COPYING_PAUSED = "CopyingPaused"
    CREATE_FINAL_SNAPSHOT = "CreateFinalSnapshot"
    FINALIZE = "Finalize"
    CONVERT_GUEST = "ConvertGuest"
    CREATE_VM = "CreateVM"
    POWER_ON = "PowerOn"
    POST_HOOK = "PostHook"
    COMPLETED = "Completed"


class StepStatus(StrEnum):
    PENDING = "Pending"
    RUNNING = "Running"
    COMPLETED = "Completed"
    FAILED = "Failed"
    CANCELED = "Canceled"


class VmStatus(StrEnum):
    """A VM's place in its migration; the last three are end states."""

    QUEUED = "Queued"  # accepted, waiting for a slot (maxInFlight, per-host cap)
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    CANCELED = "Canceled"

    @property
    def ended(self) -> bool:
        return self in (VmStatus.SUCCEEDED, VmStatus.FAILED, VmStatus.CANCELED)


class Flow(StrEnum):
    """The three shapes of the workflow (see ARCHITECTURE.md)."""

    IMPORTER = "importer"  # warm, or cold to a remote cluster: DataVolume + importer
    POPULATOR = "populator"  # cold oVirt/OpenStack local: PVC + populator
    CONVERSION = "conversion"  # cold VMware/OVA local: blank volumes + virt-v2v
