"""Settings: FERRY_ variables nested with __, every field documented, bad values named."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel, ValidationError

from ferry.runtime import settings
from ferry.runtime.lifecycle import load_settings
from ferry.runtime.settings import LogFormat, ServiceSettings


def _all_fields(model: type[BaseModel], prefix: str = "") -> list[tuple[str, str | None]]:
    found: list[tuple[str, str | None]] = []
    for name, field in model.model_fields.items():
        found.append((prefix + name, field.description))
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            found += _all_fields(annotation, f"{prefix}{name}.")
    return found


def test_nested_environment_variables_reach_their_group(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given FERRY_ variables for top-level and nested fields
    monkeypatch.setenv("FERRY_NATS__URL", "nats://bus.example:4222")
    monkeypatch.setenv("FERRY_HTTP__PORT", "9123")
    monkeypatch.setenv("FERRY_WORKERS__CONCURRENCY", "7")
    monkeypatch.setenv("FERRY_DATA_DIR", "/var/lib/ferry")
    monkeypatch.setenv("FERRY_LOG__FORMAT", "text")
    monkeypatch.setenv("FERRY_BUS__MAX_DELIVER", "9")

    # When the settings are read
    loaded = ServiceSettings()

    # Then each lands in its group, typed
    assert loaded.nats.url == "nats://bus.example:4222"
    assert loaded.http.port == 9123
    assert loaded.workers.concurrency == 7
    assert loaded.data_dir == Path("/var/lib/ferry")
    assert loaded.log.format is LogFormat.TEXT
    assert loaded.bus.max_deliver == 9
    # and untouched fields keep their defaults
    assert loaded.workers.grace_seconds == 30.0


def test_every_field_is_documented() -> None:
    # Given every field of every group
    fields = _all_fields(ServiceSettings)

    # Then each has a description (it is the Helm values' documentation too)
    undocumented = [name for name, doc in fields if not doc or not doc.strip()]
    assert len(fields) > 10
    assert undocumented == []


def test_environment_names_lists_every_leaf_variable() -> None:
    # When the variable names are derived from the model
    names = settings.environment_names()

    # Then they follow FERRY_<GROUP>__<FIELD> and carry their documentation
    assert "FERRY_NATS__URL" in names
    assert "FERRY_WORKERS__CONCURRENCY" in names
    assert "FERRY_DATA_DIR" in names
    assert all(doc for doc in names.values())


def test_bad_value_is_an_error_that_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a concurrency that is not a number
    monkeypatch.setenv("FERRY_WORKERS__CONCURRENCY", "many")

    # When a service loads its settings
    with pytest.raises(SystemExit) as exited:
        load_settings(ServiceSettings)

    # Then it exits 2 and says which variable is wrong
    assert exited.value.code == 2
    assert "FERRY_WORKERS__CONCURRENCY" in capsys.readouterr().err


def test_out_of_range_value_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a port beyond 65535
    monkeypatch.setenv("FERRY_HTTP__PORT", "70000")

    # Then reading fails with a validation error
    with pytest.raises(ValidationError):
        ServiceSettings()


def test_bus_settings_become_the_topology_settings() -> None:
    # Given bus settings
    bus = settings.BusSettings(max_deliver=3, ack_wait_seconds=12)

    # When converted for the bus library
    topo = bus.topology()

    # Then the values carry over
    assert topo.max_deliver == 3
    assert topo.ack_wait_seconds == 12
