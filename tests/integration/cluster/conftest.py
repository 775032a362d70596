"""A cluster stand-in per test, and Ferry's kubernetes platform pointed at it."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from ferry.platform import factory
from ferry.platform.kubernetes import objects
from ferry.platform.kubernetes.platform import KubernetesPlatform
from ferry.platform.settings import KubernetesSettings, PlatformSettings
from ferry.testing.cluster.cluster import Cluster

TOOLS_IMAGE = "ferry/tools:test"  # pvcinit and shell tools: the host's /usr/bin
# Ferry's own image (the populator pod): this checkout's interpreter and packages.
FERRY_IMAGE = "ferry/ferry:test"
CLASSES = {"wffc": "WaitForFirstConsumer", "immediate": "Immediate"}


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    images = {
        TOOLS_IMAGE: {"PATH": "/usr/bin:/bin"},
        FERRY_IMAGE: {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin"},
    }
    async with Cluster(tmp_path / "cluster", CLASSES, images) as made:
        made.install_crd(objects.POPULATOR_CRD)
        yield made


@pytest.fixture
async def platform(cluster: Cluster) -> AsyncIterator[KubernetesPlatform]:
    settings = KubernetesSettings(
        host=cluster.url,
        pvcinit_image=TOOLS_IMAGE,
        populator_image=FERRY_IMAGE,
        conversion_image=TOOLS_IMAGE,
        poll_seconds=0.05,
        bind_timeout=5,
        transfer_timeout=20,
    )
    chosen = PlatformSettings(kind="kubernetes", kubernetes=settings)
    made = factory.create(chosen, data_dir=Path("unused"))
    assert isinstance(made, KubernetesPlatform)
    yield made
    await made.aclose()
