"""The migration-controller's settings: the shared service settings, the
``providers`` group every provider-opening service shares
(``FERRY_PROVIDERS__SECRETS_DIR``), and a ``controller`` group of its own
(``FERRY_CONTROLLER__MAX_ATTEMPTS`` …)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from ferry.runtime.providers import ProvidersSettings
from ferry.runtime.settings import ServiceSettings, WorkersSettings


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
    progress_min_interval_seconds: float = Field(
        default=0.5,
        ge=0,
        description="Per disk of a VM, progress is stored and re-published at most this "
        "often (and always when it reaches the total).",
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

    def secrets_dir(self) -> Path:
        return self.providers.root(self.data_dir)


Settings = ControllerSettings
"""The name every service's ``settings.py`` gives its settings class."""
