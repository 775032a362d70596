"""A cluster stand-in per test, and Ferry's kubernetes platform pointed at it."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from kubernetes_asyncio.client import ApiClient, Configuration

from ferry.bus import Bus, TopologySettings, declare
from ferry.platform import factory
from ferry.platform.kubernetes import objects
from ferry.platform.kubernetes.client import KubeClient
from ferry.platform.kubernetes.platform import KubernetesPlatform
from ferry.platform.settings import KubernetesSettings, PlatformSettings
from ferry.proto.subjects import Service
from ferry.runtime.health import HealthServer, Readiness
from ferry.runtime.metrics import Metrics
from ferry.testing.cluster.cluster import Cluster
from ferry.testing.ovirt.imageio import Imageio

sys.path.insert(0, str(Path(__file__).parent))
import standin_images
from standin_images import CLASSES, CONVERSION_IMAGE, FERRY_IMAGE, TOOLS_IMAGE, ferry_image_env


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    images = {
        TOOLS_IMAGE: {"PATH": "/usr/bin:/bin"},
        FERRY_IMAGE: ferry_image_env(),
        CONVERSION_IMAGE: ferry_image_env(),
    }
    async with Cluster(tmp_path / "cluster", CLASSES, images) as made:
        made.install_crd(objects.POPULATOR_CRD)
        yield made


@pytest.fixture
async def e2e_cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    """The four-service e2e tests' stand-in (:func:`standin_images.e2e_cluster`)."""
    async with standin_images.e2e_cluster(tmp_path / "cluster") as made:
        yield made


@pytest.fixture
async def client(cluster: Cluster) -> AsyncIterator[KubeClient]:
    """Ferry's own API client, pointed at the stand-in (a module may override ``cluster``)."""
    configuration = Configuration()
    configuration.host = cluster.url
    async with ApiClient(configuration=configuration) as made:
        yield KubeClient(made)


@pytest.fixture
async def platform(cluster: Cluster) -> AsyncIterator[KubernetesPlatform]:
    settings = KubernetesSettings(
        host=cluster.url,
        pvcinit_image=TOOLS_IMAGE,
        populator_image=FERRY_IMAGE,
        conversion_image=CONVERSION_IMAGE,
        poll_seconds=0.05,
        bind_timeout=5,
        transfer_timeout=60,  # three populator attempts on a loaded machine
    )
    chosen = PlatformSettings(kind="kubernetes", kubernetes=settings)
    made = factory.create(chosen, data_dir=Path("unused"))
    assert isinstance(made, KubernetesPlatform)
    yield made
    await made.aclose()


# The grant broker's pieces (test_pacing, test_round_resume): the volume-service's bus,
# its HTTP server on 127.0.0.1, and the real imageio daemon as a source pods read.


@pytest.fixture
async def bus(nats_url: str) -> AsyncIterator[Bus]:
    settings = TopologySettings()
    async with await Bus.connect(nats_url, name="volume", settings=settings) as connected:
        await declare(connected, settings, [Service.VOLUME])
        yield connected


@pytest.fixture
async def server() -> AsyncIterator[HealthServer]:
    """The runtime's HTTP server on a free port of 127.0.0.1 (the volume-service's)."""
    made = HealthServer("volume", Metrics("volume"), Readiness(), host="127.0.0.1", port=0)
    await made.start()
    yield made
    await made.stop()


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Imageio]:
    with Imageio(tmp_path / "imageio") as made:
        yield made
