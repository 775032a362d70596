"""The migration-controller's settings: the shared service settings, the
``providers`` group every provider-opening service shares
(``FERRY_PROVIDERS__SECRETS_DIR``), a ``controller`` group of its own
(``FERRY_CONTROLLER__MAX_ATTEMPTS`` …, operator mode in ``FERRY_CONTROLLER__OPERATOR__…``)
and the ``platform`` group, whose kubernetes connection operator mode uses."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from ferry.platform.settings import PlatformSettings
from ferry.runtime.providers import ProvidersSettings
from ferry.runtime.settings import ServiceSettings, WorkersSettings


class OperatorGroup(BaseModel):
    """Operator mode: the ferry.dev objects of a cluster applied as `ferry apply` would,
    and each Migration's pipeline and each object's conditions written to its status."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    enabled: bool = Field(
        default=False,
        description="Watch the cluster's ferry.dev objects (Provider, Plan, Migration, maps, "
        "Hook, Budget) through the platform's kubernetes connection; on in the chart when "
        "the platform is kubernetes.",
    )
    namespaces: str = Field(
        default="",
        description="Namespaces watched, comma-separated; empty: every namespace.",
    )
    status_seconds: float = Field(
        default=2.0,
        gt=0,
        description="How often statuses are compared with the bus and written when changed.",
    )
    watch_seconds: float = Field(
        default=300.0,
        gt=0,
        description="Each watch request's timeout; the watch then resumes where it was.",
    )

    @property
    def watched(self) -> list[str]:
        """The namespaces to list and watch ("" stands for every namespace)."""
        return [n.strip() for n in self.namespaces.split(",") if n.strip()] or [""]


class ControllerGroup(BaseModel):
    """How the controller drives VMs through their itineraries."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    max_attempts: int = Field(
        default=3, ge=1, description="Attempts of a step (transient failures) before the VM fails."
    )
    retry_base_seconds: float = Field(
        default=2.0,
        gt=0,
        description="Backoff before the 2nd attempt; doubles each time, cap 120 s.",
    )
    shutdown_timeout_seconds: float = Field(
        default=300.0, gt=0, description="Graceful source shutdown before it is forced off."
    )
    events_durable: str = Field(
        default="controller-events",
        description="Durable consumer of the events stream the controller advances on.",
    )
    leader_lease_seconds: float = Field(
        default=10.0,
        gt=0,
        description="Replicas are active / standby: the active one renews a lease this "
        "long every third of it; a standby takes over when it lapses.",
    )
    finished_retention_seconds: float = Field(
        default=30 * 24 * 3600,
        gt=0,
        description="How long the per-VM state of an ended migration stays on the bus "
        "(for `ferry get`, the console and audits) before the controller removes it.",
    )
    progress_min_interval_seconds: float = Field(
        default=0.5,
        ge=0,
        description="Per disk of a VM, progress is stored and re-published at most this "
        "often (and always when it reaches the total).",
    )
    inventory_refresh_seconds: float = Field(
        default=300.0,
        ge=0,
        description="The active replica reads every source Provider's inventory this often "
        "and publishes it for the console (0: never).",
    )
    raw_copy_inspection: Literal["tcg", "kvm", "off"] = Field(
        default="tcg",
        description="Preflight of a raw copy (skipGuestConversion) looks for virtio drivers "
        "in each VM's boot disk with libguestfs, under software emulation (tcg) or KVM; "
        "off: no inspection, no warning.",
    )
    raw_copy_inspection_seconds: float = Field(
        default=300.0, gt=0, description="Time one raw-copy inspection may take."
    )
    estimate_probe_seconds: float = Field(
        default=5.0,
        ge=0,
        description="With no finished migration on a plan's source/target pair, admission "
        "reads a few MiB of one disk for the estimate's throughput, for at most this long "
        "(0: no probe; the throughput is assumed).",
    )
    operator: OperatorGroup = Field(
        default_factory=OperatorGroup, description=OperatorGroup.__doc__
    )


def _workers() -> WorkersSettings:
    # The controller's handlers are short (a state write and a few publishes) and one
    # replica serves every VM, so it takes more messages at once than a worker service.
    return WorkersSettings(concurrency=64)


class ControllerSettings(ServiceSettings):
    """Everything the migration-controller reads at start-up."""

    workers: WorkersSettings = Field(default_factory=_workers, description=WorkersSettings.__doc__)
    providers: ProvidersSettings = Field(
        default_factory=ProvidersSettings, description=ProvidersSettings.__doc__
    )
    controller: ControllerGroup = Field(
        default_factory=ControllerGroup, description=ControllerGroup.__doc__
    )
    platform: PlatformSettings = Field(
        default_factory=PlatformSettings, description=PlatformSettings.__doc__
    )

    def secrets_dir(self) -> Path:
        return self.providers.root(self.data_dir)


Settings = ControllerSettings
"""The name every service's ``settings.py`` gives its settings class."""
