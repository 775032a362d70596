"""``ferry describe`` shows a warm VM's copy rounds."""

from __future__ import annotations

from ferry.cli.migrations import rounds
from ferry.proto.phases import Flow
from ferry.proto.state import CopyRound, VmView


def test_each_round_shows_what_changed_what_was_copied_and_how_long() -> None:
    view = VmView(
        plan="p", migration="m", vm="v", name="web", target_name="web", namespace="ns",
        flow=Flow.IMPORTER, warm=True,
        rounds=[
            CopyRound(precopy=0, changed=2 << 30, copied=2 << 30, seconds=31.0),
            CopyRound(precopy=1, changed=5 << 20, copied=5 << 20, seconds=1.24),
            CopyRound(precopy=1, final=True, changed=64 << 10, copied=64 << 10, seconds=0.5),
        ],
    )  # fmt: skip
    assert rounds(view) == [
        "  round 0 (full copy): 2.0 GiB changed, 2.0 GiB copied in 31.0 s",
        "  round 1 (precopy): 5.0 MiB changed, 5.0 MiB copied in 1.2 s",
        "  round 1 (final delta): 64.0 KiB changed, 64.0 KiB copied in 0.5 s",
    ]
