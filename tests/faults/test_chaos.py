"""The chaos run's short schedule: 5 raw-copy migrations under ``ferry up``, 20 kill -9s.

The same machinery as ``make chaos`` (``bench/chaos/run.py``, 20 migrations and
100 kills), at a size ``make test`` can afford: services and the nats-server are
killed at seeded random moments while the supervisor restarts them, and then
every VM must have completed exactly once with its bytes intact, one volume and
one VirtualMachine each, no dead letter, and nothing of the stack left running
after ``ferry down``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from ferry.testing import chaos
from ferry.testing.supervised import SupervisedStack

pytestmark = [pytest.mark.slow, pytest.mark.e2e, pytest.mark.timeout(900)]

UP_OPTIONS: tuple[str, ...] = ("--restart-delay", "0.3", "--restart-max-delay", "2")
UP_OPTIONS += ("--min-uptime", "1", "--crash-loop-after", "1000")
VMS, KILLS, SEED = 5, 20, 19


def test_twenty_kills_during_five_raw_copies_lose_and_repeat_nothing(tmp_path: Path) -> None:
    # Given a supervised stack and five small OVAs to migrate in raw copy mode
    ledger = tmp_path / "ledger"
    stack = SupervisedStack(tmp_path / "stack", env=chaos.settings(ledger))
    stack.start(120.0, *UP_OPTIONS)
    plan = chaos.schedule(SEED, KILLS, (0.3, 1.2))
    try:
        fleet = chaos.make_fleet(stack, VMS, size_mib=128, in_flight=2)
        # When 20 kill -9s hit random processes while the migrations run
        done = chaos.migration_done(stack, "m-chaos")
        run = chaos.run(stack, fleet, "m-chaos", plan, done=done, timeout=600)
        audit = chaos.audit(stack, fleet, "m-chaos", ledger)
        left = chaos.down(stack)
    finally:
        stack.close()
    print(f"{len(run.kills)} kills in {run.seconds:.1f}s: {run.kills}")
    # Then every kill landed while the migrations ran
    assert len(run.kills) == KILLS
    # And nothing was lost or done twice, bytes equal, no dead letter
    assert audit.problems == []
    assert audit.completed == VMS
    # And nothing of the stack runs after `ferry down`
    assert left == []
