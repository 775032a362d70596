"""Which image each pod of the kubernetes platform runs: conversion pods the
conversion image (settings ``conversion_image``), never the services' image."""

from __future__ import annotations

import io
import sys
from pathlib import Path

from ferry.platform.kubernetes.platform import KubernetesPlatform
from ferry.platform.workloads import Workload
from ferry.testing.cluster.cluster import Cluster

sys.path.insert(0, str(Path(__file__).parent))
from standin_images import CONVERSION_IMAGE, FERRY_IMAGE  # the conftest's images


async def test_a_conversion_pod_runs_the_conversion_image(
    platform: KubernetesPlatform, cluster: Cluster
) -> None:
    # Given a platform whose conversion image and populator (services') image differ
    assert platform.settings.conversion_image == CONVERSION_IMAGE != FERRY_IMAGE
    workload = Workload(
        name="convert-vm-1", argv=["sh", "-c", "exit 0"], namespace="migrated", time_limit=60
    )

    # When it runs a conversion workload
    code = await platform.run_workload(workload, io.BytesIO())

    # Then the pod it created ran, from the conversion image
    assert code == 0
    (pod,) = [
        r.body
        for r in cluster.api.requests
        if r.method == "POST" and r.path.endswith("/pods") and r.body["kind"] == "Pod"
    ]
    assert pod["spec"]["containers"][0]["image"] == CONVERSION_IMAGE
