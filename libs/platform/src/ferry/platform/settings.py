"""The target platform's settings, declared once for every service that uses a platform.

A service's settings hold one ``platform`` group of this shape, so the same
variables configure the volume-service, the vm-service and the conversion-service:
``FERRY_PLATFORM__KIND`` picks the implementation, and each implementation reads
only its own sub-group (``FERRY_PLATFORM__LOCAL__…``, ``FERRY_PLATFORM__KUBERNETES__…``).
Both sub-groups always exist with their defaults, so switching the kind never
trips over the other implementation's keys; unknown keys are errors, so a typo
never goes unnoticed.

This module imports no implementation: services read it without loading QEMU
helpers or the Kubernetes client, and the implementations take their settings
from here instead of declaring them again.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from ferry.platform.volumes import DEFAULT_FILESYSTEM_OVERHEAD

__all__ = [
    "DEFAULT_BOOT_MARKER",
    "KubernetesSettings",
    "LocalSettings",
    "PlatformSettings",
    "QemuSettings",
]

DEFAULT_BOOT_MARKER = r"login:"


class _Group(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class QemuSettings(_Group):
    """How the local platform runs a VirtualMachine under QEMU."""

    binary: str = Field(default="qemu-system-x86_64", description="The QEMU binary.")
    accel: Literal["", "kvm", "tcg"] = Field(
        default="",
        description="kvm or tcg; empty: boot a probe kernel under KVM once and fall back "
        "to TCG when it does not get to its end.",
    )
    ovmf_dir: Path = Field(
        default=Path("/usr/share/OVMF"), description="Where the UEFI firmware files are."
    )
    boot_marker: str = Field(
        default=DEFAULT_BOOT_MARKER,
        description="Regular expression the guest prints on its serial console once it is up.",
    )
    powerdown_seconds: float = Field(
        default=60.0, gt=0, description="ACPI power-off grace before QEMU is told to quit."
    )
    quit_seconds: float = Field(
        default=5.0, gt=0, description="Grace after 'quit' before QEMU is killed."
    )
    console_tail_lines: int = Field(
        default=30, ge=1, description="Console lines kept in a boot failure."
    )
    poll_seconds: float = Field(
        default=0.25, gt=0, description="How often a starting or stopping VM is looked at."
    )


class LocalSettings(_Group):
    """The embedded platform: volumes are files, workloads child processes, VMs QEMU."""

    storage_root: Path | None = Field(
        default=None,
        description="Root of the volumes (claims, volumes, checkpoints). Unset: "
        "<data_dir>/storage. Every replica on one host must use the same root.",
    )
    storage_classes: dict[str, Path] = Field(
        default_factory=dict,
        description="Directory per storage class (JSON object: class → path); a class not "
        "listed lives under the storage root.",
    )
    filesystem_overhead: float = Field(
        default=DEFAULT_FILESYSTEM_OVERHEAD,
        ge=0,
        lt=1,
        description="Share of a Filesystem-mode volume kept for filesystem metadata (CDI: 0.055).",
    )
    check_capacity: bool = Field(
        default=True,
        description="pvcinit refuses to bind when the storage has less free space than the "
        "VM's volumes request. Off: thin provisioning (a copy may then fail with ENOSPC).",
    )
    copy_workers: int = Field(
        default=4, ge=1, le=64, description="Threads that copy ranges of one disk in parallel."
    )
    checkpoint_seconds: float = Field(
        default=10.0,
        gt=0,
        description="A transfer commits a resumable checkpoint this often; a killed copy "
        "restarts from its last checkpoint.",
    )
    verify_readback: bool = Field(
        default=True,
        description="Read every written range back from the volume (from the device where "
        "it takes direct I/O) and compare it with the source bytes before it counts as "
        "copied; after the flush, check that the source's holes read as zeros. Off: the "
        "target checksum comes from the written buffers (faster where the device is the "
        "bottleneck, weaker).",
    )
    max_rate: float | None = Field(
        default=None,
        gt=0,
        description="Cap on one disk transfer, in bytes per second of data; unset: unlimited.",
    )
    python: str = Field(
        default=sys.executable, description="Interpreter that runs the transfer workloads."
    )
    qemu: QemuSettings = Field(default_factory=QemuSettings, description=QemuSettings.__doc__)


class KubernetesSettings(_Group):
    """A cluster with KubeVirt and CDI, driven through its API server."""

    host: str = Field(
        default="",
        description="API server URL; when set, no kubeconfig is read (tests, a proxy).",
    )
    kubeconfig: str = Field(default="", description="kubeconfig path; empty: the default one.")
    context: str = Field(default="", description="kubeconfig context; empty: the current one.")
    in_cluster: bool = Field(
        default=False, description="Use the pod's service account instead of a kubeconfig."
    )
    verify_ssl: bool = Field(
        default=True,
        description="Check the API server's certificate (off only for tests). A kubeconfig "
        "context with insecure-skip-tls-verify is honoured, as kubectl does, and logged.",
    )
    filesystem_overhead: float = Field(
        default=DEFAULT_FILESYSTEM_OVERHEAD,
        ge=0,
        lt=1,
        description="Overhead Ferry adds to populator PVCs (CDI adds its own to DataVolumes).",
    )
    pvcinit_image: str = Field(
        default="",
        description="Image of the pvcinit pod (anything with `sleep`); required to bind volumes.",
    )
    populator_image: str = Field(
        default="",
        description="Image of the populator pods that fill a prime PVC and of the transfer "
        "pods of flow 1's rounds: the services' image (./Dockerfile), which has the copy "
        "engine and qemu-nbd.",
    )
    conversion_image: str = Field(
        default="",
        description="Image of the conversion and virt-inspector pods, which run virt-v2v "
        "on the PVCs: the conversion image (./Dockerfile.conversion). Unset: a conversion "
        "on this platform fails.",
    )
    pacing_url: str = Field(
        default="",
        pattern=r"^(https?://[^\s/]+(/\S*)?)?$",
        description="How the pods this replica starts (transfer and populator pods of the "
        "volume-service, conversion pods of the conversion-service) reach its HTTP port to "
        "ask for bandwidth grants (e.g. http://10.0.0.7:8080; the chart uses the pod's own "
        "IP, since a ticket lives in the replica that opened it). Empty: a copy or "
        "conversion under a bandwidth budget is refused.",
    )
    poll_seconds: float = Field(default=2.0, gt=0, description="How often transfers are polled.")
    bind_timeout: float = Field(default=600.0, gt=0, description="pvcinit: seconds to Bound.")
    transfer_timeout: float = Field(
        default=24 * 3600.0, gt=0, description="Seconds an import or population may take."
    )
    checkpoint_seconds: float = Field(
        default=10.0,
        gt=0,
        description="A transfer pod makes its copy durable this often; a warm round's pod "
        "that fails or is replaced is followed by one that resumes from its last checkpoint.",
    )
    stop_timeout: float = Field(
        default=300.0, gt=0, description="Seconds a graceful stop may take before it is forced."
    )
    require_guest_agent: bool = Field(
        default=False,
        description="Running means the guest agent connected, not only the instance running.",
    )


class PlatformSettings(_Group):
    """The target platform: which one, and each implementation's own settings."""

    kind: Literal["local", "kubernetes"] = Field(
        default="local",
        description="local (volumes are files, workloads child processes, VMs QEMU) or "
        "kubernetes (DataVolumes, PVCs and populators through CDI; KubeVirt VMs).",
    )
    local: LocalSettings = Field(default_factory=LocalSettings, description=LocalSettings.__doc__)
    kubernetes: KubernetesSettings = Field(
        default_factory=KubernetesSettings, description=KubernetesSettings.__doc__
    )

    @property
    def filesystem_overhead(self) -> float:
        """The share the chosen platform keeps for filesystem metadata (sizes up front)."""
        chosen = self.kubernetes if self.kind == "kubernetes" else self.local
        return chosen.filesystem_overhead
