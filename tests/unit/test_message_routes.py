"""Each service's real router handles exactly what the message catalog says it handles.

``ferry.proto.catalog`` is the table people read (docs/ARCHITECTURE.md is generated
from it); the routers are what runs. A handler registered and not in the table, or
in the table and never registered (a command that would sit unhandled on its work
queue), fails here. The routers are the ones ``build_router`` makes, with stand-ins
for the platform, the providers and the converter, and a bus that never connects:
building a router does no I/O.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import nats
import pytest

from ferry.bus import Bus, TopologySettings
from ferry.conversion_service import app as conversion_app
from ferry.migration_controller import app as controller_app
from ferry.proto import catalog
from ferry.proto.catalog import Actor
from ferry.vm_service import app as vm_app
from ferry.volume_service import app as volume_app

STAND_IN: Any = object()  # never called: only the routes are looked at


async def no_provider(ref: object) -> Any:
    raise AssertionError("building a router must not open a provider")


def unconnected_bus() -> Bus:
    return Bus(nats.NATS(), name="routes", settings=TopologySettings(), publish_timeout=1.0)


def handled(actor: Actor, data_dir: Path) -> set[str]:
    bus = unconnected_bus()
    if actor is Actor.VOLUME:
        settings = volume_app.Settings(data_dir=data_dir)
        router = volume_app.build_router(bus, settings, platform=STAND_IN, providers=no_provider)
        return set(router.types)
    if actor is Actor.CONVERSION:
        conversion = conversion_app.Settings(data_dir=data_dir)
        router = conversion_app.build_router(
            bus, conversion, providers=no_provider, converter=STAND_IN
        )
        return set(router.types)
    if actor is Actor.VM:
        router = vm_app.build_router(bus, vm_app.Settings(data_dir=data_dir), platform=STAND_IN)
        return set(router.types)
    controller = controller_app.build_router(
        bus, controller_app.Settings(data_dir=data_dir), providers=cast(Any, no_provider)
    )
    return set(controller.commands.types) | set(controller.events.types)


@pytest.mark.parametrize(
    "actor", [Actor.CONTROLLER, Actor.VOLUME, Actor.CONVERSION, Actor.VM], ids=lambda a: a.value
)
def test_a_services_router_handles_what_the_catalog_says(actor: Actor, tmp_path: Path) -> None:
    # Given the catalog's word on what the service handles
    expected = catalog.handled_by(actor)
    # When its router is built as the runtime builds it
    got = handled(actor, tmp_path)
    # Then they agree, type for type
    assert got == expected, (
        f"{actor.value}: registered but not in the catalog: {sorted(got - expected)}; "
        f"in the catalog but not registered: {sorted(expected - got)}"
    )
