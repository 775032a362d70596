"""The names a migration and its VMs pass through, shared by whoever writes or reads them.

The controller writes these into the per-VM state and the Migration's status;
the command line and any auditor read them back. As ``StrEnum`` members they
compare equal to the plain strings already stored, so a stored document keeps
decoding.

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


class MigrationPhase(StrEnum):
    """A Migration's ``status.phase``; empty until the controller accepts or rejects it."""

    NOT_STARTED = ""
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    CANCELED = "Canceled"
    REJECTED = "Rejected"

    @property
    def ended(self) -> bool:
        return self not in (MigrationPhase.NOT_STARTED, MigrationPhase.RUNNING)

    @property
    def shown(self) -> str:
        """The phase as people read it: a migration nobody has accepted yet is Pending."""
        return self.value or "Pending"


class Flow(StrEnum):
    """The three shapes of the workflow (see ARCHITECTURE.md)."""

    IMPORTER = "importer"  # warm, or cold to a remote cluster: DataVolume + importer
    POPULATOR = "populator"  # cold oVirt/OpenStack local: PVC + populator
    CONVERSION = "conversion"  # cold VMware/OVA local: blank volumes + virt-v2v
