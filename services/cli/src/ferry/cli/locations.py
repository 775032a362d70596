"""Where a Provider says its VMs are, looked at when it is applied: a warning, never a refusal.

The source is read later, by ``ferry inventory`` and by the controller when a
migration starts, and both fail with a clear reason when it is missing; but a
typo in a path then surfaces only hours later, in the middle of a wave. So
``ferry apply`` looks once: an OVA directory that does not exist here, a host
name that does not resolve from here. It only warns, because the place may
exist only where the services run (a share mounted on the workers, a name only
the cluster's DNS knows); the object is stored either way.
"""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

from ferry.proto import objects
from ferry.proto.inventory import ProviderType
from ferry.providers import factory
from ferry.providers.base import ProviderError

RESOLVE_SECONDS = 5.0


async def warning(provider: objects.Provider) -> str | None:
    """One line when the Provider's location is not there as seen from this host."""
    spec, where = provider.spec, f"provider/{provider.name}"
    later = "`ferry inventory` and migrations of it will fail until it does"
    if spec.type is ProviderType.OVA:
        try:
            root = factory.ova_root(spec.url or spec.settings.get("path", ""))
        except ProviderError as bad:
            return f"{where}: {bad}"
        if not root.exists():
            return f"{where}: {root} does not exist on this host; {later}"
        return None
    try:
        parts = urlsplit(spec.url)
        host, port = parts.hostname, parts.port
    except ValueError as bad:
        return f"{where}: {spec.url!r} is not a URL: {bad}"
    if not host:
        return None  # a local hypervisor (qemu:///system) or the local target
    try:
        loop = asyncio.get_running_loop()
        await asyncio.wait_for(loop.getaddrinfo(host, port), RESOLVE_SECONDS)
    except (OSError, TimeoutError):
        return f"{where}: host {host!r} does not resolve from this host; {later}"
    return None
