"""Pick a target platform by name; services never import an implementation.

``create("local", {"data_dir": …})`` gives the embedded platform (files and
child processes); ``"kubernetes"`` drives a cluster with KubeVirt and CDI (its
client connects on first use).
Implementations are imported here, lazily, so that using one never loads the
other's dependencies.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ferry.platform.base import Platform

NAMES = ("local", "kubernetes")


class UnknownPlatform(ValueError):
    """The settings name a platform Ferry does not have."""


class PlatformUnavailable(RuntimeError):
    """The platform exists in name but cannot be used yet or here; the message says why."""


def create(name: str, settings: Mapping[str, Any] | Any) -> Platform:
    """The platform called ``name``, configured from ``settings`` (a mapping or model)."""
    if name == "local":
        from ferry.platform.local.platform import LocalPlatform, LocalPlatformSettings

        if isinstance(settings, LocalPlatformSettings):
            return LocalPlatform(settings)
        values = settings.model_dump() if hasattr(settings, "model_dump") else dict(settings)
        return LocalPlatform(LocalPlatformSettings.model_validate(values))
    if name == "kubernetes":
        from ferry.platform.kubernetes.platform import (
            KubernetesPlatform,
            KubernetesPlatformSettings,
        )

        if isinstance(settings, KubernetesPlatformSettings):
            return KubernetesPlatform(settings)
        values = settings.model_dump() if hasattr(settings, "model_dump") else dict(settings)
        return KubernetesPlatform(KubernetesPlatformSettings.model_validate(values))
    raise UnknownPlatform(f"unknown platform {name!r}; choose one of {', '.join(NAMES)}")
