"""Applying objects to the bucket never undoes what the controller wrote meanwhile.

``ferry apply`` and operator mode both write a person's object with the status the
controller keeps in the same entry; the controller writes that status as a migration
starts and ends. A re-apply read a moment before a status write must not put the old
status back: a Migration so re-applied as it started stayed without a phase and never
ended (seen under load in operator mode).
"""

from __future__ import annotations

from typing import Any

import pytest
from controller_harness import migration_doc

from ferry.bus import Bus, KeyValue
from ferry.proto import objects
from ferry.runtime import objectbucket


async def test_a_re_apply_keeps_the_status_the_controller_wrote_meanwhile(
    bus: Bus, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a Migration in the bucket
    mig = objects.parse_object(migration_doc("m1"), "test")
    assert await objectbucket.store(bus, mig) == "migration/m1 created"
    key = objectbucket.key_of("Migration", "m1")
    bucket = objectbucket.kv(bus)

    # And the controller writing its phase just after a re-apply read the entry
    read = KeyValue.get
    wrote: list[int] = []

    async def read_then_controller_writes(self: KeyValue[Any], k: str) -> Any:
        entry = await read(self, k)
        if k == key and not wrote and entry is not None:
            started = {**entry.value, "status": {"phase": "Running"}}
            wrote.append(await bucket.update(k, started, entry.revision))
        return entry

    monkeypatch.setattr(KeyValue, "get", read_then_controller_writes)
    # When the same Migration is applied again
    said = await objectbucket.store(bus, mig)
    monkeypatch.undo()

    # Then the controller's phase is still there
    assert wrote and said == "migration/m1 unchanged"
    stored = await objectbucket.get_doc(bus, "Migration", "m1")
    assert stored is not None and stored["status"] == {"phase": "Running"}, stored
