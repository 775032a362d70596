"""Bounds on what one package may make the reader do, each a provider setting.

A descriptor or archive comes from outside; these bounds keep a hostile one from
costing more than a real export ever needs. The defaults sit far above what
vCenter, ovftool, VirtualBox, oVirt or Ganeti write, and each can be raised per
Provider (``spec.settings``, keys as the field names) for an unusual source.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

from ferry.providers.base import ProviderError


@dataclass(frozen=True)
class Limits:
    max_element_depth: int = 64
    """Deepest nesting of XML elements in a descriptor (real ones stay under 15)."""

    max_name_length: int = 1024
    """Longest tar member name or file reference, in characters."""

    max_members: int = 1024
    """Most members in one OVA archive (an OVF, a manifest, a certificate, disks)."""

    max_collection_nesting: int = 8
    """Deepest nesting of VirtualSystemCollections (vApps inside vApps)."""

    max_descriptor_bytes: int = 16 * 1024 * 1024
    """Largest descriptor, manifest or certificate, which are read into memory."""

    qemu_cpu_seconds: int = 120
    """CPU time one ``qemu-img`` run on a package's image may use (info, check, map)."""

    qemu_address_space_mib: int = 4096
    """Address space of each ``qemu-img`` and ``qemu-nbd`` reading a package's image."""

    @classmethod
    def from_settings(cls, settings: Mapping[str, object]) -> Limits:
        """The limits named in a Provider's settings; other settings are ignored."""
        values: dict[str, int] = {}
        for item in dataclasses.fields(cls):
            raw = settings.get(item.name)
            if raw is None:
                continue
            text = str(raw).strip()
            if not text.isdigit() or int(text) < 1:
                raise ProviderError(f"OVA setting {item.name} must be a positive integer: {raw!r}")
            values[item.name] = int(text)
        return cls(**values)


DEFAULT = Limits()
