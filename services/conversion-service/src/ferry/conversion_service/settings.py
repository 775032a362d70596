"""The conversion-service's settings: the shared service settings plus a
``conversion`` group, read from ``FERRY_…`` variables (``FERRY_CONVERSION__ACCEL``).

One conversion keeps a QEMU appliance busy for minutes, so a replica runs one at
a time unless told otherwise (``FERRY_WORKERS__CONCURRENCY``): capacity grows by
adding replicas, which is what this service is for.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from ferry.platform.settings import PlatformSettings
from ferry.runtime.providers import ProvidersSettings
from ferry.runtime.settings import ServiceSettings, WorkersSettings


class ConversionSettings(BaseModel):
    """How virt-v2v runs on this replica."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    virt_v2v: str = Field(default="virt-v2v", description="The virt-v2v binary (full mode).")
    virt_v2v_in_place: str = Field(
        default="virt-v2v-in-place", description="The virt-v2v-in-place binary."
    )
    virt_inspector: str = Field(
        default="virt-inspector", description="The virt-inspector binary (post-conversion check)."
    )
    qemu: str = Field(
        default="qemu-system-x86_64", description="QEMU used to probe whether KVM runs guests."
    )
    accel: Literal["auto", "kvm", "tcg"] = Field(
        default="auto",
        description="auto: boot a kernel under KVM once and fall back to TCG "
        "(LIBGUESTFS_BACKEND_SETTINGS=force_tcg) when it does not run; kvm/tcg: skip the probe.",
    )
    kvm_probe_seconds: float = Field(
        default=10.0, gt=0, description="How long the KVM probe kernel may take to panic."
    )
    verbose: bool = Field(
        default=True,
        description="Run virt-v2v with -v -x so the kept log is enough to debug a failure.",
    )
    work_dir: Path = Field(
        default=Path("/tmp"),  # noqa: S108 - mkdtemp below it, mode 0700; short for socket paths
        description="Parent of each run's private work directory (sockets, secrets, "
        "output links, and an OVA's disks copied for their digest check: room for the "
        "largest VM's disk files). Keep the path short: unix socket paths are limited to "
        "108 bytes.",
    )
    large_tmp_dir: Path = Field(
        default=Path("/var/tmp"),  # noqa: S108 - virt-v2v's own default for its overlays
        description="Where virt-v2v keeps its overlays (needs 1 GiB free); a private "
        "sub-directory per run is removed afterwards.",
    )
    appliance_cache_dir: Path | None = Field(
        default=None,
        description="LIBGUESTFS_CACHEDIR for the shared supermin appliance; unset: "
        "libguestfs's default (/var/tmp), so runs do not rebuild it.",
    )
    default_timeout_seconds: int = Field(
        default=3600, gt=0, description="Time limit when a command carries none."
    )
    verify_with_inspector: bool = Field(
        default=True,
        description="After converting, run virt-inspector on the target volumes (proves "
        "they hold an inspectable guest; about a minute under TCG). Off: report virt-v2v's "
        "own inspection from its log.",
    )
    inspect_timeout_seconds: float = Field(
        default=600.0, gt=0, description="Time limit of the virt-inspector check."
    )
    appliance_silence_seconds: float = Field(
        default=180.0,
        ge=0,
        description="While the libguestfs appliance boots (verbose output), this long "
        "without a line means its boot stopped: the run is killed and tried again later "
        "(0: wait for the time limit).",
    )
    kill_grace_seconds: float = Field(
        default=5.0,
        ge=0,
        description="After SIGTERM, how long virt-v2v may clean up before its whole "
        "session (nbdkit, qemu) is killed.",
    )
    progress_interval_seconds: float = Field(
        default=2.0, ge=0, description="Minimum time between two progress events of one VM."
    )
    heartbeat_seconds: float = Field(
        default=10.0,
        gt=0,
        le=15,
        description="Longest time without a progress event while a conversion runs: through "
        "virt-v2v's silent stages the last stage is published again with the elapsed time, "
        "so a watcher can tell slow from stuck.",
    )
    error_lines: int = Field(
        default=12, ge=1, le=100, description="Log lines (noise removed) kept in a failure."
    )
    lease_seconds: float = Field(
        default=90.0,
        gt=5,
        description="A conversion holds a lease on its VM in the locks bucket, renewed "
        "every third of this; a dead replica's lease lapses after it.",
    )


def _one_at_a_time() -> WorkersSettings:
    return WorkersSettings(concurrency=1)


class Settings(ServiceSettings):
    """Everything the conversion-service reads at start-up."""

    workers: WorkersSettings = Field(
        default_factory=_one_at_a_time,
        description="Conversions run in parallel by one replica (default 1: each one "
        "runs a QEMU appliance for minutes).",
    )
    platform: PlatformSettings = Field(
        default_factory=PlatformSettings, description=PlatformSettings.__doc__
    )
    providers: ProvidersSettings = Field(
        default_factory=ProvidersSettings, description=ProvidersSettings.__doc__
    )
    conversion: ConversionSettings = Field(
        default_factory=ConversionSettings, description=ConversionSettings.__doc__
    )

    def secrets_dir(self) -> Path:
        return self.providers.root(self.data_dir)
