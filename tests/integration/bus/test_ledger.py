"""The publish ledger sees what the audit stream's dedupe hides."""

from __future__ import annotations

from pathlib import Path

from ferry.bus import Bus, TopologySettings, declare, ledger
from ferry.proto.conversion import GuestConverted
from ferry.proto.subjects import Service

TOPOLOGY = TopologySettings(duplicate_window_seconds=60)


async def test_a_result_published_twice_is_one_stream_entry_but_two_ledger_lines(
    nats_url: str, tmp_path: Path
) -> None:
    first = GuestConverted(plan="p", migration="m", vm="v", step="ConvertGuest", seconds=10.0)
    rerun = GuestConverted(plan="p", migration="m", vm="v", step="ConvertGuest", seconds=11.5)
    async with await Bus.connect(nats_url, name="ledger-test", settings=TOPOLOGY) as bus:
        await declare(bus, TOPOLOGY, [Service.CONVERSION])
        bus.ledger = ledger.Ledger(tmp_path / "ledger", "conversion-service")
        # Given a result reported, then reported again (a redelivery answered from the record)
        await bus.publish(first)
        await bus.publish_many([first])
        # And the same step's effect done a second time (a re-run: its duration differs)
        await bus.publish(rerun)
        stored = [m async for _, m in bus.events(follow=False)]
    lines = list(ledger.read(tmp_path / "ledger"))
    # Then the stream kept the re-report once, while the ledger saw every publish
    assert len(stored) == 2
    assert [line["duplicate"] for line in lines] == [False, True, False]
    # And counting distinct ids per step tells the re-report from the double effect
    found = ledger.effects(lines)
    assert {k: len(v) for k, v in found.items()} == {
        ("conversion.guest_converted.v1", "m/v", "ConvertGuest"): 2
    }
