"""``ferry migrate --wait`` into a log: plain lines per step change, and progress lines."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from ferry.cli import watch
from ferry.proto import conversion, migration
from ferry.proto.phases import Flow
from ferry.proto.state import VmView

IDS = {"plan": "p", "migration": "m", "vm": "vm-1"}


def lines_of(period: float, capsys: pytest.CaptureFixture[str]) -> list[str]:
    board = watch.Lines(datetime.now(UTC), period=period)
    board.add_vm(
        VmView(
            plan="p",
            migration="m",
            vm="vm-1",
            name="web",
            target_name="web",
            namespace="ns",
            flow=Flow.CONVERSION,
        )
    )
    board.see(migration.StepStarted(**IDS, step="CopyDisks", service="volume"))
    for done in (1 << 20, 2 << 20, 3 << 20):
        board.see(migration.Progress(**IDS, step="CopyDisks", done=done, total=4 << 20))
    board.see(migration.StepStarted(**IDS, step="ConvertGuest", service="conversion"))
    board.see(
        conversion.ConversionProgress(**IDS, step="ConvertGuest", stage="Inspecting", elapsed=45)
    )
    return capsys.readouterr().out.splitlines()


def test_a_log_gets_a_progress_line_per_vm_at_most_once_per_period(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # When the bytes move and a conversion reports its stage, with no period to wait
    every = lines_of(0.0, capsys)
    # Then each report is a plain line with the VM, the step, its progress or stage
    assert any(line.endswith("web: CopyDisks 25% (1.0 MiB of 4.0 MiB)") for line in every)
    assert any(line.endswith("web: CopyDisks 75% (3.0 MiB of 4.0 MiB)") for line in every)
    assert any(line.endswith("web: ConvertGuest: Inspecting (45 s in)") for line in every)
    assert all(line.startswith("0:0") for line in every), every  # the migration's clock
    # When the same happens within one period
    thinned = lines_of(3600.0, capsys)
    # Then only the step changes are printed
    assert [line.split(" ", 1)[1] for line in thinned] == ["web: CopyDisks", "web: ConvertGuest"]
