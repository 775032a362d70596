"""The controller opens a source as the services do: the Provider object from the objects
bucket, and the Secret it names read from the mounted secrets directory.

Before, the controller called the provider factory with the command's reference
alone, so a provider that needs credentials could never answer it. The secret's
value must reach the factory and nothing else.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from controller_stack import controller_settings

from ferry.bus import Bus
from ferry.migration_controller import app
from ferry.proto import objects, subjects
from ferry.proto.inventory import ProviderType
from ferry.proto.subjects import Bucket
from ferry.proto.volume import SourceRef
from ferry.providers import factory
from ferry.runtime.providers import SecretNotFound

SECRET_VALUE = "s3cr3t-for-the-controller-0815"


async def store_provider(bus: Bus, folder: Path) -> None:
    provider = objects.Provider(
        metadata=objects.ObjectMeta(name="ova-store", namespace="ferry-test"),
        spec=objects.ProviderSpec(
            type=ProviderType.OVA,
            settings={"path": str(folder)},
            secret=objects.ObjectRef(name="ova-creds"),
        ),
    )
    await bus.kv(Bucket.OBJECTS, dict).put(
        subjects.object_key("Provider", "ova-store"), objects.to_document(provider)
    )


def watch_factory(monkeypatch: pytest.MonkeyPatch) -> list[Mapping[str, Any] | None]:
    """The secrets the provider factory is called with, in order (the factory still runs)."""
    given: list[Mapping[str, Any] | None] = []
    real = factory.create

    def watched(spec: Any, secret: Mapping[str, Any] | None = None) -> Any:
        given.append(secret)
        return real(spec, secret)

    monkeypatch.setattr(factory, "create", watched)
    return given


async def test_the_controllers_provider_is_opened_with_its_secret(
    bus: Bus,
    nats_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    # Given a Provider object naming a Secret, and the factory watched
    (tmp_path / "ova").mkdir()
    await store_provider(bus, tmp_path / "ova")
    given = watch_factory(monkeypatch)
    settings = controller_settings(nats_url).model_copy(update={"data_dir": tmp_path / "data"})
    controller = app.build_router(bus, settings)  # the default way to open providers
    ref = SourceRef(provider="ova-store", type=ProviderType.OVA)

    # When the controller opens it before the secret is mounted
    with pytest.raises(SecretNotFound, match="secret ferry-test/ova-creds is not mounted"):
        await controller.driver.sources.get(ref)
    # And again once it is
    secret = settings.secrets_dir() / "ferry-test" / "ova-creds"
    secret.mkdir(parents=True)
    (secret / "password").write_text(SECRET_VALUE + "\n")
    (secret / "password").chmod(0o600)  # a secret others may read is refused
    provider = await controller.driver.sources.get(ref)

    # Then the factory got the secret with the Provider object's settings
    assert given == [{"password": SECRET_VALUE}]
    assert await provider.inventory() == []  # the object's path, not the empty reference
    # And the secret's value is in no log record
    assert SECRET_VALUE not in caplog.text


async def test_a_secret_rotated_on_disk_is_read_anew_without_a_new_apply(
    bus: Bus,
    nats_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    # Given a Provider whose mounted Secret the controller opened the source with
    (tmp_path / "ova").mkdir()
    await store_provider(bus, tmp_path / "ova")
    given = watch_factory(monkeypatch)
    settings = controller_settings(nats_url).model_copy(update={"data_dir": tmp_path / "data"})
    sources = app.build_router(bus, settings).driver.sources
    ref = SourceRef(provider="ova-store", type=ProviderType.OVA)
    secret = settings.secrets_dir() / "ferry-test" / "ova-creds"
    secret.mkdir(parents=True)

    def mount(value: str, *, replace: bool) -> None:
        # replace: as a Secret volume (and careful tools) do, a new file renamed over the old
        target = secret / "password"
        fresh = secret / ".new" if replace else target
        fresh.write_text(value + "\n")
        fresh.chmod(0o600)
        if replace:
            fresh.replace(target)

    mount("first-0815", replace=True)
    first = await sources.get(ref)
    # When it is used again with nothing changed
    # Then the opened source is kept
    assert await sources.get(ref) is first and given == [{"password": "first-0815"}]
    # When the secret is rotated on disk (same length), the Provider not applied again
    mount("again-0815", replace=True)
    # Then the next use opens the source anew with the new value
    second = await sources.get(ref)
    assert second is not first and given[-1] == {"password": "again-0815"}
    # And so does a value rewritten in place
    mount("rewritten-in-place", replace=False)
    assert await sources.get(ref) is not second
    assert given[-1] == {"password": "rewritten-in-place"}
    # And no value is in any log record
    assert "changed since it was opened" in caplog.text
    assert not any(v in caplog.text for v in ("first-0815", "again-0815", "rewritten-in"))
