"""Helpers for the vSphere tests: arrange the simulator as an administrator would."""

from __future__ import annotations

from ferry.providers.vsphere.provider import VsphereProvider
from ferry.testing.vcsim.arrange import datastore_dir, find_vm, run
from ferry.testing.vcsim.server import Endpoint

__all__ = ["datastore_dir", "find_vm", "make_provider", "run"]


def make_provider(endpoint: Endpoint, **settings: str) -> VsphereProvider:
    secret = {"user": endpoint.username, "password": endpoint.password}
    return VsphereProvider.create(endpoint.url, settings, secret)
