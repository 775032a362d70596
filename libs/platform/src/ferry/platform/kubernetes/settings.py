"""Settings of the kubernetes platform (pydantic: they come from the user)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from ferry.platform.volumes import DEFAULT_FILESYSTEM_OVERHEAD


class KubernetesPlatformSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = Field(
        default="",
        description="API server URL; when set, no kubeconfig is read (tests, a proxy).",
    )
    kubeconfig: str = Field(default="", description="kubeconfig path; empty: the default one.")
    context: str = Field(default="", description="kubeconfig context; empty: the current one.")
    in_cluster: bool = Field(
        default=False, description="Use the pod's service account instead of a kubeconfig."
    )
    verify_ssl: bool = True
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
    poll_seconds: float = Field(default=2.0, gt=0, description="How often transfers are polled.")
    bind_timeout: float = Field(default=600.0, gt=0, description="pvcinit: seconds to Bound.")
    transfer_timeout: float = Field(
        default=24 * 3600.0, gt=0, description="Seconds an import or population may take."
    )
    stop_timeout: float = Field(
        default=300.0, gt=0, description="Seconds a graceful stop may take before it is forced."
    )
    require_guest_agent: bool = Field(
        default=False,
        description="Running means the guest agent connected, not only the instance running.",
    )
