"""Fixtures the e2e tests share: a local stack (the four services, NATS, the console) in
the test's temporary directory, and a vSphere API simulator. A test that needs a stack
with other settings defines its own ``stack``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ferry.testing.stack import LocalStack
from ferry.testing.vcsim.server import Endpoint, Vcsim


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[LocalStack]:
    stack = LocalStack(tmp_path / "stack")
    try:
        yield stack.start()
    finally:
        stack.close()


@pytest.fixture
def vcsim() -> Iterator[Endpoint]:
    with Vcsim() as sim:
        assert sim.endpoint is not None
        yield sim.endpoint
