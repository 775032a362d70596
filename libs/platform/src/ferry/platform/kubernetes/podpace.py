"""A conversion pod's bandwidth: its helpers' rate file, fed with grants the pod asks for.

On the local platform the conversion-service takes grants from the budgets while
virt-v2v runs and writes their rate into the file that the captive ``nbdkit``
helpers' rate filter re-reads (``ferry.conversion_service.pacing``). A pod's files are
out of its reach, so a conversion pod under a budget runs its command under this
program::

    python3 -m ferry.platform.kubernetes.podpace TICKET_FILE RATE_FILE STEP -- COMMAND...

It starts COMMAND as its child (same output, environment and directory; SIGTERM and
SIGINT passed on, its exit status returned as the shell would) and, while it runs,
asks the conversion-service for grants of at least STEP bytes (larger while they come
at once: :class:`~ferry.platform.ratefile.Reservation`) with the ticket from the pod's
Secret (:class:`~ferry.platform.kubernetes.grants.Throttle`), writing what it was
granted over each period into RATE_FILE, as the service does locally: a reservation,
so the budget is never exceeded. Until the first period ends the filter reads at its
``rate=`` parameter.

A grant out of reach (the service's replica restarting, the network) keeps the last
rate and is asked again, as locally when the bus is away. A ticket the service
refuses means the conversion it belonged to has ended there (canceled, or its
replica gone and the conversion redelivered): the command is stopped, and the pod
ends saying so, with status :data:`REFUSED` whatever the command's own.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import msgspec

from ferry.platform.kubernetes import grants
from ferry.platform.ratefile import Reservation, write_rate

PERIOD = 1.0  # seconds between updates of the rate file (nbdkit re-reads it each second)
REFUSED = 75  # the exit status of a pod whose ticket was refused (EX_TEMPFAIL)
STOP_GRACE = 10.0  # seconds between SIGTERM and SIGKILL when a refusal stops the command
USAGE = "usage: podpace TICKET_FILE RATE_FILE STEP -- COMMAND..."

Ask = Callable[[int], None]


def feed(
    ask: Ask,
    rate_file: Path,
    step: int,
    done: threading.Event,
    *,
    period: float = PERIOD,
    say: Callable[[str], None] = print,
) -> str:
    """Take grants (``step`` bytes at least, more while they come at once) and write
    their rate until ``done``; the reason if the ticket was refused (then it stops at
    once), else ``""``."""
    pace = Reservation(step, period)
    unreachable = False
    while not done.is_set():
        asked = time.monotonic()
        nbytes = pace.step
        try:
            ask(nbytes)
        except grants.Refused as refused:
            return str(refused)
        except OSError as error:  # out of reach: the last rate holds meanwhile
            if not unreachable:
                say(f"ferry: {error}; keeping the last rate and asking again")
            unreachable = True
            pace.unreachable()
            done.wait(period)
            continue
        if unreachable:
            say("ferry: bandwidth grants are answered again")
            unreachable = False
        bits = pace.granted(nbytes, time.monotonic() - asked)
        if bits is not None and not done.is_set():
            write_rate(rate_file, bits)
    return ""


def _status(code: int) -> int:
    """A child's status as a shell reports it (128 + the signal that ended it)."""
    return 128 - code if code < 0 else code


def run(ask: Ask, rate_file: Path, step: int, command: list[str], period: float = PERIOD) -> int:
    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    try:
        # its own process group: a signal reaches its helpers and virt-v2v too (nbdkit
        # waits for its --run command before it ends)
        child = subprocess.Popen(command, start_new_session=True)
    except OSError as error:
        say(f'exec: "{command[0]}": {error.strerror}')
        return 127

    def signal_all(signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signum)

    before = {
        number: signal.signal(number, lambda signum, _frame: signal_all(signum))
        for number in (signal.SIGTERM, signal.SIGINT)
    }
    done = threading.Event()
    refused: list[str] = []

    def feeding() -> None:
        reason = feed(ask, rate_file, step, done, period=period, say=say)
        if reason and not done.is_set():
            refused.append(reason)
            say(f"ferry: {reason}: the conversion ended there, so this pod stops")
            signal_all(signal.SIGTERM)
            if not done.wait(STOP_GRACE):
                signal_all(signal.SIGKILL)

    # a daemon: a grant may be waited for minutes while the budget is spent, and the
    # pod must not outlive its command for it
    threading.Thread(target=feeding, name="grants", daemon=True).start()
    try:
        status = _status(child.wait())
    finally:
        done.set()
        for number, handler in before.items():
            signal.signal(number, handler)
    if refused:  # never a success: what the command wrote was not paced to the end
        say(f"ferry: stopped: {refused[0]}")
        return REFUSED
    return status


def main(argv: list[str]) -> int:
    if len(argv) < 5 or argv[3] != "--" or not argv[2].isdigit() or int(argv[2]) <= 0:
        print(USAGE, file=sys.stderr)
        return 2
    ticket_file, rate_file, step, command = argv[0], argv[1], int(argv[2]), argv[4:]
    try:
        ticket = msgspec.json.decode(Path(ticket_file).read_bytes(), type=grants.Ticket)
        ask = grants.Throttle(ticket, service="conversion-service")
    except (OSError, msgspec.DecodeError, ValueError) as error:  # never shows the token
        print(f"ferry: the pod's grants ticket {ticket_file}: {error}", file=sys.stderr)
        return 2
    return run(ask, Path(rate_file), step, command)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
