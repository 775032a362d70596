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
from conftest import controller_settings

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
    given: list[Mapping[str, Any] | None] = []
    real = factory.create

    def watched(spec: Any, secret: Mapping[str, Any] | None = None) -> Any:
        given.append(secret)
        return real(spec, secret)

    monkeypatch.setattr(factory, "create", watched)
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
