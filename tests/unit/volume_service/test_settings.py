"""The volume-service's settings from FERRY_ variables, and what the platform gets."""

from __future__ import annotations

from pathlib import Path
from typing import cast

import nats
import pytest
from aiohttp import web
from pydantic import ValidationError

from ferry.bus import Bus, TopologySettings
from ferry.platform import factory
from ferry.platform.local.platform import LocalPlatform
from ferry.runtime.settings import environment_names
from ferry.volume_service import app
from ferry.volume_service.settings import Settings


def test_defaults_put_storage_and_secrets_under_the_data_dir(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Given only a data dir
    monkeypatch.setenv("FERRY_DATA_DIR", str(tmp_path))
    settings = app.Settings()
    # When the factory builds the platform from them
    platform = factory.create(settings.platform, data_dir=settings.data_dir)
    # Then it is the local platform, storing volumes in <data_dir>/storage
    assert settings.platform.kind == "local"
    assert isinstance(platform, LocalPlatform)
    assert platform.volumes.settings.storage_root == tmp_path / "storage"
    assert settings.secrets_dir() == tmp_path / "secrets"
    assert settings.volumes.progress_interval_seconds == 1.0


def test_nested_variables_set_the_platform_and_volume_groups(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given the groups' variables, as the Helm chart would set them
    monkeypatch.setenv("FERRY_PLATFORM__LOCAL__STORAGE_ROOT", "/mnt/volumes")
    monkeypatch.setenv("FERRY_PLATFORM__LOCAL__STORAGE_CLASSES", '{"fast": "/mnt/ssd"}')
    monkeypatch.setenv("FERRY_PLATFORM__LOCAL__COPY_WORKERS", "8")
    monkeypatch.setenv("FERRY_PLATFORM__LOCAL__MAX_RATE", "1048576")
    monkeypatch.setenv("FERRY_PLATFORM__LOCAL__QEMU__ACCEL", "tcg")
    monkeypatch.setenv("FERRY_VOLUMES__PROGRESS_INTERVAL_SECONDS", "0.5")
    monkeypatch.setenv("FERRY_VOLUMES__DISKS_IN_PARALLEL", "2")
    settings = Settings()
    # Then the platform group and the service's own group hold them
    local = settings.platform.local
    assert local.storage_root == Path("/mnt/volumes")
    assert local.storage_classes == {"fast": Path("/mnt/ssd")}
    assert (local.copy_workers, local.max_rate, local.qemu.accel) == (8, 1048576.0, "tcg")
    assert settings.volumes.disks_in_parallel == 2
    assert settings.volumes.progress_interval_seconds == 0.5


def test_the_kubernetes_platform_is_reached_from_its_group(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given the kind and the kubernetes group (local keys absent: they are not forced on it)
    monkeypatch.setenv("FERRY_PLATFORM__KIND", "kubernetes")
    monkeypatch.setenv("FERRY_PLATFORM__KUBERNETES__IN_CLUSTER", "true")
    monkeypatch.setenv("FERRY_PLATFORM__KUBERNETES__PVCINIT_IMAGE", "ferry-pvcinit:1")
    settings = Settings()
    # When the factory builds it
    from ferry.platform.kubernetes.platform import KubernetesPlatform

    platform = factory.create(settings.platform, data_dir=settings.data_dir)
    # Then it is the kubernetes platform with those settings (it connects on first use)
    assert isinstance(platform, KubernetesPlatform)
    assert platform.settings.in_cluster is True
    assert platform.settings.pvcinit_image == "ferry-pvcinit:1"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("FERRY_PLATFORM__KIND", "openshift"),
        ("FERRY_VOLUMES__PROGRESS_INTERVAL_SECONDS", "0.01"),
        ("FERRY_PLATFORM__LOCAL__COPY_WORKERS", "0"),
        ("FERRY_PLATFORM__LOCAL__FILESYSTEM_OVERHEAD", "1.5"),
        ("FERRY_PLATFORM__KUBERNETES__BIND_TIMEOUT", "-1"),
        ("FERRY_PLATFORM__LOCAL__TYPO", "1"),
        ("FERRY_VOLUMES__TYPO", "1"),
    ],
)
def test_bad_values_are_errors_that_name_the_field(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError) as bad:
        Settings()
    field = name.removeprefix("FERRY_").split("__")[-1].lower()
    assert field in str(bad.value).lower()


def test_every_setting_is_documented() -> None:
    names = environment_names(Settings)
    for wanted in ("STORAGE_ROOT", "COPY_WORKERS", "MAX_RATE", "QEMU__ACCEL"):
        assert f"FERRY_PLATFORM__LOCAL__{wanted}" in names
    for wanted in ("HOST", "KUBECONFIG", "IN_CLUSTER", "PVCINIT_IMAGE", "CONVERSION_IMAGE"):
        assert f"FERRY_PLATFORM__KUBERNETES__{wanted}" in names
    assert "FERRY_VOLUMES__PROGRESS_INTERVAL_SECONDS" in names
    assert "FERRY_PLATFORM__KIND" in names
    assert all(description for description in names.values()), names


def test_on_kubernetes_the_router_brings_the_grant_brokers_route(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Given the kubernetes platform, with the address its pods ask for grants at
    monkeypatch.setenv("FERRY_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("FERRY_PLATFORM__KIND", "kubernetes")
    monkeypatch.setenv("FERRY_PLATFORM__KUBERNETES__HOST", "https://127.0.0.1:1")
    monkeypatch.setenv("FERRY_PLATFORM__KUBERNETES__PACING_URL", "http://10.0.0.7:8080")
    settings = app.Settings()
    bus = Bus(nats.NATS(), name="routes", settings=TopologySettings(), publish_timeout=1.0)

    # When the service builds its router (no I/O: the platform connects on first use)
    router = app.build_router(bus, settings)

    # Then the router carries the broker's route for the runtime to serve
    assert settings.platform.kubernetes.pacing_url == "http://10.0.0.7:8080"
    routes = [cast("web.RouteDef", r) for r in router.http_routes]
    assert [(r.method, r.path) for r in routes] == [("POST", "/pace/grants")]
    # and on the local platform it carries none (its importer is paced through a pipe)
    monkeypatch.setenv("FERRY_PLATFORM__KIND", "local")
    assert app.build_router(bus, app.Settings()).http_routes == []


@pytest.mark.parametrize("bad", ["10.0.0.7:8080", "file:///etc/passwd", "http://", "http://a b"])
def test_a_pacing_url_that_is_not_http_exits_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, bad: str
) -> None:
    # Given a pacing URL a pod could not ask at
    monkeypatch.setenv("FERRY_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("FERRY_PLATFORM__KUBERNETES__PACING_URL", bad)
    # Then the settings are refused
    with pytest.raises(ValidationError, match="pacing_url"):
        app.Settings()
