"""The volume-service's settings from FERRY_ variables, and what the platform gets."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from ferry.platform.local.platform import LocalPlatformSettings
from ferry.runtime.settings import environment_names
from ferry.volume_service import app
from ferry.volume_service.settings import Settings


def test_defaults_put_storage_and_secrets_under_the_data_dir(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given only a data dir
    monkeypatch.setenv("FERRY_DATA_DIR", "/srv/ferry")
    settings = app.Settings()
    # Then the local platform stores volumes in <data_dir>/storage
    assert settings.platform == "local"
    assert settings.storage_root() == Path("/srv/ferry/storage")
    assert settings.secrets_dir() == Path("/srv/ferry/secrets")
    assert settings.volumes.progress_interval_seconds == 1.0


def test_nested_variables_set_the_volume_group(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given the group's variables, as the Helm chart would set them
    monkeypatch.setenv("FERRY_VOLUMES__STORAGE_ROOT", "/mnt/volumes")
    monkeypatch.setenv("FERRY_VOLUMES__STORAGE_CLASSES", '{"fast": "/mnt/ssd"}')
    monkeypatch.setenv("FERRY_VOLUMES__PROGRESS_INTERVAL_SECONDS", "0.5")
    monkeypatch.setenv("FERRY_VOLUMES__COPY_WORKERS", "8")
    monkeypatch.setenv("FERRY_VOLUMES__DISKS_IN_PARALLEL", "2")
    monkeypatch.setenv("FERRY_VOLUMES__MAX_RATE", "1048576")
    settings = Settings()
    # Then the platform gets a valid configuration from them
    local = LocalPlatformSettings.model_validate(settings.platform_settings())
    assert local.data_dir == Path("/mnt/volumes")
    assert local.storage_classes == {"fast": Path("/mnt/ssd")}
    assert (local.copy_workers, local.max_rate) == (8, 1048576.0)
    assert settings.volumes.disks_in_parallel == 2
    assert settings.volumes.progress_interval_seconds == 0.5


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("FERRY_PLATFORM", "openshift"),
        ("FERRY_VOLUMES__PROGRESS_INTERVAL_SECONDS", "0.01"),
        ("FERRY_VOLUMES__COPY_WORKERS", "0"),
        ("FERRY_VOLUMES__FILESYSTEM_OVERHEAD", "1.5"),
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
    for wanted in ("STORAGE_ROOT", "PROGRESS_INTERVAL_SECONDS", "COPY_WORKERS", "MAX_RATE"):
        assert f"FERRY_VOLUMES__{wanted}" in names
    assert "FERRY_PLATFORM" in names
    assert all(description for description in names.values()), names
