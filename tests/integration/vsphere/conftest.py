"""A vSphere API simulator per test, a provider that trusts it, and a handle to shape it.

The simulator is built once (cached by its inputs) from the Debian packages, so
a clean clone needs only ``make system-deps``. ``admin`` is a plain pyVmomi
connection the tests use to arrange the source (CBT, snapshots, odd disks) the
way a vSphere administrator would, independent of the code under test.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from pyVim import connect

sys.path.insert(0, str(Path(__file__).parent))

from vcsimkit import make_provider

from ferry.providers.vsphere.provider import VsphereProvider
from ferry.testing.vcsim.server import Endpoint, Vcsim, binary


@pytest.fixture(scope="session")
def vcsim_binary() -> Path:
    return binary()


@pytest.fixture
def vcsim(vcsim_binary: Path) -> Iterator[Endpoint]:
    with Vcsim() as sim:
        assert sim.endpoint is not None
        yield sim.endpoint


@pytest.fixture
async def provider(vcsim: Endpoint) -> AsyncIterator[VsphereProvider]:
    source = make_provider(vcsim, caBundle=vcsim.cert_file)
    try:
        yield source
    finally:
        await source.close()


@pytest.fixture
def admin(vcsim: Endpoint) -> Iterator[Any]:
    host, port = vcsim.host.rsplit(":", 1)
    si = connect.SmartConnect(
        host=host,
        port=int(port),
        user=vcsim.username,
        pwd=vcsim.password,
        disableSslCertValidation=True,
    )
    try:
        yield si
    finally:
        connect.Disconnect(si)
