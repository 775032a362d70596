"""Fixtures of the kubernetes platform tests against kmock; helpers in ``kubekit``
beside this file."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path

import kmock
import pytest

from ferry.platform.kubernetes.platform import KubernetesPlatform

sys.path.insert(0, str(Path(__file__).parent))

from kubekit import RESOURCES, Controller, make_platform


@pytest.fixture
async def cluster() -> AsyncIterator[kmock.KubernetesEmulator]:
    async with kmock.KubernetesEmulator() as mock, kmock.Server(mock):
        for resource in RESOURCES:
            mock.resources[resource] = kmock.ResourceInfo()
        yield mock


@pytest.fixture
async def controller(cluster: kmock.KubernetesEmulator) -> AsyncIterator[Controller]:
    played = Controller(str(cluster.url))
    yield played
    await played.session.close()


@pytest.fixture
async def platform(cluster: kmock.KubernetesEmulator) -> AsyncIterator[KubernetesPlatform]:
    made = make_platform(cluster)
    yield made
    await made.aclose()
