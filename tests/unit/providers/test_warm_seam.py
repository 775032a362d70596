"""Every provider that offers warm migration takes the seam's calls as the copy loop
makes them: a signature that drifted from :class:`ferry.providers.base.WarmSource`
fails at a precopy, deep in a migration, not here."""

from __future__ import annotations

import inspect

import pytest

from ferry.providers.base import WarmSource
from ferry.providers.libvirt.provider import LibvirtProvider
from ferry.providers.ovirt.provider import OvirtProvider
from ferry.providers.vsphere.provider import VsphereProvider

WARM = [LibvirtProvider, OvirtProvider, VsphereProvider]


@pytest.mark.parametrize("provider", WARM, ids=lambda p: p.__name__)
def test_a_warm_provider_takes_every_call_the_seam_defines(provider: type) -> None:
    for name in ("changes", "remove_checkpoint", "checkpoints"):
        wanted = inspect.signature(getattr(WarmSource, name))
        given = inspect.signature(getattr(provider, name))
        # Then it accepts the seam's arguments, positionally and by name, as the loop
        # passes them (the copy loop: changes(vm, since, round_id))
        arguments = [p for p in wanted.parameters if p != "self"]
        given.bind("self", *arguments)
        given.bind("self", **{a: a for a in arguments})
