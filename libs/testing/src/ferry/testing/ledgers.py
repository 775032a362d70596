"""What a running delta round on the local platform has made durable, read from disk.

A kill test that wants the restarted round to skip work must kill after some of
the round is durable, and must measure against what was durable, not against
the progress events: a range is reported once written and made durable at the
next checkpoint, so a kill between the two loses that report's last ranges.
The round's ledger (``delta.json``, beside the volume's ``pv.json``) is the
truth the restarted attempt reads.
"""

from __future__ import annotations

import time
from pathlib import Path

import msgspec

from ferry.platform.copy import delta
from ferry.platform.local.storage import PvRecord
from ferry.proto import label


def delta_durable(root: Path, vm: str) -> int:
    """Bytes of ``vm``'s running delta round its ledger has on the target (0: none yet)."""
    total = 0
    for ledger in root.rglob(delta.STATE):
        try:
            pv = msgspec.json.decode((ledger.parent.parent / "pv.json").read_bytes(), type=PvRecord)
            state = msgspec.json.decode(ledger.read_bytes(), type=delta.State)
        except (FileNotFoundError, msgspec.DecodeError):
            continue  # removed as the round ended, or caught mid-replace
        if pv.labels.get(label.VM) == vm:
            total += state.done * delta.CHUNK
    return total


def wait_delta_durable(root: Path, vm: str, below: int, timeout: float = 120) -> int:
    """Wait until part, not all, of ``vm``'s round (``below`` bytes) is durable."""
    deadline = time.monotonic() + timeout
    while True:
        done = delta_durable(root, vm)
        if 0 < done < below:
            return done
        if time.monotonic() > deadline:
            raise AssertionError(f"no part of {vm}'s delta round became durable in {timeout:.0f} s")
        time.sleep(0.05)
