"""A 3-node JetStream cluster under ``ferry up --nats-cluster 3`` loses a node mid-copy.

Streams and KV buckets are declared with three replicas, so a kill -9 of the node
leading the audit stream (every step publishes there) costs an election, not
the stream. To show the replicas carry the run, the supervisor's restart of the
killed node is held off (a restart delay far longer than the run): the migration
must complete on the two nodes left. Then the node is started again from its own
pinned configuration and store (the command line the supervisor would run) and
must rejoin, current with the cluster. The audit is the chaos run's: every VM
completed exactly once, no step's effect twice (the publish ledger), bytes equal,
nothing dead-lettered.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from ferry.runtime.stack import nats, readiness
from ferry.testing import chaos
from ferry.testing.migration import start_migration
from ferry.testing.supervised import SupervisedStack

pytestmark = [pytest.mark.slow, pytest.mark.e2e, pytest.mark.timeout(900)]

# The services are never killed here; the killed nats node stays down for the run.
UP_OPTIONS = ("--nats-cluster", "3", "--restart-delay", "3600", "--restart-max-delay", "3600")
VMS = 3
MIGRATION = "m-cluster"
# Bytes/s of data per copy (the cap is per transfer): each 256 MiB disk holds 128 MiB of
# data, so each copy takes about half a minute (at 24 MiB/s they took 5 s, and a loaded
# run saw every copy end before its poll of the events found the first progress)
RATE = 4 * 1024 * 1024


def _jsz(monitor: str) -> dict[str, Any]:
    url = f"{monitor}/jsz?streams=true&config=true"
    with urllib.request.urlopen(url, timeout=5) as answer:
        found: dict[str, Any] = json.load(answer)
    return found


def _streams(monitor: str) -> dict[str, dict[str, Any]]:
    return {
        s["name"]: s
        for account in _jsz(monitor).get("account_details", [])
        for s in account.get("stream_detail", [])
    }


def _monitor_of(data_dir: Path, number: int) -> str:
    """A node's monitoring URL, from its pinned configuration."""
    for line in nats.config_file(data_dir, number).read_text().splitlines():
        if line.startswith("http: "):
            return "http://" + line.removeprefix("http: ").strip()
    raise AssertionError(f"node {number} has no monitor")


def _wait(what: str, check: Any, timeout: float = 120.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = check()
        except OSError:
            value = None
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_node_killed_mid_copy_loses_and_repeats_nothing(tmp_path: Path) -> None:
    # Given `ferry up --nats-cluster 3` and three small OVAs to migrate in raw copy mode
    ledger = tmp_path / "ledger"
    # (the copies paced so that the kill lands while they run, on a loaded machine too)
    pace = {"FERRY_PLATFORM__LOCAL__MAX_RATE": str(RATE)}
    stack = SupervisedStack(tmp_path / "stack", env=chaos.settings(ledger, **pace))
    stack.start(120.0, *UP_OPTIONS)
    data = stack.data_dir
    rejoined: subprocess.Popen[bytes] | None = None
    try:
        monitors = {n: _monitor_of(data, n) for n in (1, 2, 3)}
        streams = _streams(monitors[1])
        # Then every stream and bucket has three replicas
        assert streams and {s["config"]["num_replicas"] for s in streams.values()} == {3}
        fleet = chaos.make_fleet(stack, VMS, size_mib=256, in_flight=VMS)
        # The node leading the audit stream (any node that hosts it says which), and one
        # of the others to ask afterwards
        hosted = {name: s for m in monitors.values() for name, s in _streams(m).items()}
        leader = hosted["FERRY_EVENTS"]["cluster"]["leader"]
        number = int(leader.rsplit("-", 1)[1])
        witness = monitors[1 if number != 1 else 2]
        done = chaos.migration_done(stack, MIGRATION)

        # When it is killed -9 while the disks are being copied
        start_migration(stack, fleet.plan, MIGRATION)
        _wait(
            "a copy in progress",
            lambda: any(e["type"] == "volume.disk_progress.v1" for e in stack.stored_events()),
        )
        copied = [e for e in stack.stored_events() if e["type"] == "volume.disks_copied.v1"]
        killed = stack.pid(nats.node_name(number))
        os.kill(killed, signal.SIGKILL)
        assert len(copied) < VMS, "every copy had ended before the kill"

        # Then the migration completes on the two nodes left
        _wait("the migration to end", done, timeout=400)
        assert stack.pid(nats.node_name(number)) == killed  # nobody restarted it

        # and the two left elect a leader of the audit stream among themselves (a run
        # that ends within the election timeout of the kill is still electing: wait)
        def elected() -> str | None:
            now = _streams(witness)["FERRY_EVENTS"]["cluster"].get("leader")
            return now if now and now != leader else None

        new_leader = _wait("a new leader of the audit stream", elected, timeout=60)

        # And the node rejoins from its own configuration and store, current again
        log = nats.log_file(data, number)
        with log.open("ab") as out:
            rejoined = subprocess.Popen(
                nats.argv(nats.config_file(data, number), log),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

        lead = monitors[int(new_leader.rsplit("-", 1)[1])]

        def current() -> bool:  # its own health, and the stream leader's view of it
            if readiness.http_status(f"{monitors[number]}/healthz") != 200:
                return False
            replicas = _streams(lead)["FERRY_EVENTS"]["cluster"].get("replicas", [])
            return any(r["name"] == leader and r.get("current") for r in replicas)

        _wait("the node to rejoin, current", current)
        audit = chaos.audit(stack, fleet, MIGRATION, ledger)
    finally:
        if rejoined is not None:
            rejoined.kill()
            rejoined.wait()
        stack.close()
    print(f"killed {leader} (pid {killed}); new leader {new_leader}; audit {audit}")
    # And nothing was lost or done twice, bytes equal, no dead letter
    assert audit.problems == []
    assert audit.completed == VMS
