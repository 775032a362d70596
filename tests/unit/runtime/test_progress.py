"""The one progress throttle every service uses: keyed, first and last always,
at most one moved report per interval, and every new stage."""

from __future__ import annotations

from ferry.runtime.progress import Throttle


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_throttle_admits_first_last_and_one_per_interval_per_disk() -> None:
    # Given a throttle of one report per second
    clock = Clock()
    throttle = Throttle(1.0, clock)
    # Then the first report of each disk passes, the next ones only after a second
    assert throttle.admit("a", 0, 100)
    assert throttle.admit("b", 0, 100)
    clock.now += 0.5
    assert not throttle.admit("a", 10, 100)
    clock.now += 0.6
    assert throttle.admit("a", 20, 100)
    # And a report that did not move is not repeated, however late
    clock.now += 5
    assert not throttle.admit("a", 20, 100)
    # And the one that reaches the total always passes, once
    clock.now += 0.1
    assert throttle.admit("a", 100, 100)
    assert not throttle.admit("a", 100, 100)


def test_throttle_lets_stages_through_and_thins_percentages() -> None:
    # Given a throttle with a long interval, fed as the conversion-service feeds it
    throttle = Throttle(interval=3600)
    # Then a new stage passes, repeated percentages do not, and 100% always does
    assert throttle.admit("vm", 0.0, 100.0, ("Opening the source", None))
    assert throttle.admit("vm", 0.0, 100.0, ("Copying disk 1/1", 1))
    assert not throttle.admit("vm", 40.0, 100.0, ("Copying disk 1/1", 1))
    assert throttle.admit("vm", 100.0, 100.0, ("Copying disk 1/1", 1))
    assert throttle.admit("vm", 0.0, 100.0, ("Creating output metadata", None))


def test_a_forgotten_key_starts_again() -> None:
    # Given a key whose last report was just admitted
    throttle = Throttle(3600)
    assert throttle.admit("a", 10, 100)
    assert not throttle.admit("a", 20, 100)
    # When its work ends and it is forgotten
    throttle.forget("a")
    # Then its next report is a first one again
    assert throttle.admit("a", 20, 100)
