"""Pick a provider implementation by type: the only place that names them.

A spec is anything with ``type`` (a :class:`ProviderType`) and ``url``, such as
:class:`ferry.proto.volume.SourceRef` or a Provider object's spec (whose
``settings["path"]`` names an OVA directory when ``url`` is empty). The secret,
when there is one, is the provider's credentials as the caller read them; it is
handed to the implementation and never logged.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

from ferry.proto.inventory import ProviderType
from ferry.providers.base import Provider, ProviderError, ProviderNotSupported


class ProviderSpec(Protocol):
    @property
    def type(self) -> ProviderType: ...

    @property
    def url(self) -> str: ...


def create(spec: ProviderSpec, secret: Mapping[str, Any] | None = None) -> Provider:
    """Build the provider for ``spec``; :class:`ProviderNotSupported` if not built yet."""
    kind = ProviderType(spec.type)
    if kind is ProviderType.OVA:
        from ferry.providers.ova import limits
        from ferry.providers.ova import provider as ova

        settings = getattr(spec, "settings", None) or {}
        if urlsplit(spec.url).scheme == "nfs":
            return ova.OvaProvider(
                share_mount(spec.url, str(settings.get("path", ""))),
                limits=limits.Limits.from_settings(settings),
                share=spec.url,
            )
        return ova.OvaProvider(
            ova_root(spec.url or str(settings.get("path", ""))),
            limits=limits.Limits.from_settings(settings),
        )
    if kind is ProviderType.VSPHERE:
        from ferry.providers.vsphere import provider as vsphere

        settings = getattr(spec, "settings", None) or {}
        return vsphere.VsphereProvider.create(spec.url, settings, secret)
    if kind is ProviderType.LIBVIRT:
        from ferry.providers.libvirt import provider as libvirt

        return libvirt.LibvirtProvider(spec.url, secret, getattr(spec, "settings", None))
    if kind is ProviderType.OVIRT:
        from ferry.providers.ovirt import provider as ovirt

        return ovirt.OvirtProvider(spec.url, secret, getattr(spec, "settings", None))
    supported = ", ".join(
        t.value
        for t in (ProviderType.OVA, ProviderType.VSPHERE, ProviderType.LIBVIRT, ProviderType.OVIRT)
    )
    raise ProviderNotSupported(
        f"provider type {kind.value!r} is not implemented yet; supported: {supported}"
    )


def share_mount(url: str, path: str) -> Path:
    """Where this process has the NFS export ``url`` mounted (``settings.path``).

    Ferry mounts nothing itself: the platform does (a cluster mounts the export into the
    services' pods and into each conversion pod, read-only, at this same path).
    """
    parts = urlsplit(url)
    if not parts.hostname or not parts.path.startswith("/"):
        raise ProviderError(f"OVA provider url {url!r} is not an NFS share (nfs://server/path)")
    if not path or not Path(path).is_absolute():
        raise ProviderError(
            f"OVA provider on {url}: settings.path must name the absolute directory where "
            "the share is mounted"
        )
    return Path(path)


def ova_root(url: str) -> Path:
    """The import directory of an OVA provider: a path or ``file://`` URL.

    NFS exports are read through their mount point; mounting is the platform's job.
    """
    if not url:
        raise ProviderError("OVA provider needs a url: the directory holding .ova/.ovf files")
    parts = urlsplit(url)
    if parts.scheme in ("", "file"):
        path = unquote(parts.path) if parts.scheme else url
        if not Path(path).is_absolute():
            raise ProviderError(f"OVA provider url must be an absolute path, got {url!r}")
        return Path(path)
    raise ProviderError(
        f"OVA provider url scheme {parts.scheme!r} is not readable; give a directory, "
        "or nfs://server/path with settings.path where the share is mounted"
    )
