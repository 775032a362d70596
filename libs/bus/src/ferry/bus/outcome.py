"""What becomes of a delivered message: the verdicts the dispatcher settles.

A handler computes; middleware judges what its result or error means; the
dispatcher carries the verdict out (publish then ack, nak with a delay, or
report and terminate). Keeping the verdicts as plain values lets the real
router and the in-memory test broker share every decision and differ only in
the transport underneath.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import msgspec

from ferry.proto.base import FailureOutcome, Message

Result = Message | Sequence[Message] | None

# The verdicts and attempts are immutable structs (not frozen dataclasses): the
# dispatcher makes two for every message, and a frozen dataclass costs ~0.9 µs to make,
# a struct ~0.1 µs.

BACKOFF_BASE_SECONDS = 1.0
BACKOFF_CAP_SECONDS = 60.0


class Attempt(msgspec.Struct, frozen=True):
    """How one run of a handler ended."""

    result: Result = None
    error: Exception | None = None
    interrupted: bool = False  # its task was cancelled by the router (cancel or shutdown)
    seconds: float = 0.0


class Ack(msgspec.Struct, frozen=True):
    """Publish ``result`` (if any), then ack. ``label`` set: acked without handling."""

    result: Result = None
    seconds: float = 0.0
    label: str | None = None


class Retry(msgspec.Struct, frozen=True):
    """Nak for redelivery after ``delay`` seconds; ``label`` is the metrics reason, if any."""

    delay: float
    label: str | None = None


class GiveUp(msgspec.Struct, frozen=True):
    """Terminate: publish the service's ``Failed`` with ``outcome``, then term."""

    outcome: FailureOutcome
    reason: str
    detail: list[str] = msgspec.field(default_factory=list)
    label: str = "permanent"  # the metrics reason: permanent, exhausted, invalid, canceled


Verdict = Ack | Retry | GiveUp


def backoff(deliveries: int) -> float:
    """Delay before the next delivery after ``deliveries`` failed ones: 1, 2, 4 … 60 s."""
    exponent = max(0, deliveries - 1)
    return min(BACKOFF_CAP_SECONDS, BACKOFF_BASE_SECONDS * 2.0 ** min(exponent, 16))


def as_messages(result: Result) -> list[Message]:
    if result is None:
        return []
    if isinstance(result, Message):
        return [result]
    out = list(result)
    for item in out:
        if not isinstance(item, Message):
            raise TypeError(f"handlers return Ferry messages, got {type(item).__name__}")
    return out


def describe(error: BaseException) -> str:
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


_URL_CREDENTIALS = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/@\s]+@")


def scrub(text: str) -> str:
    """Remove credentials embedded in URLs (``scheme://user:pass@host``).

    Failure reasons go into the audit stream; an exception text from a client
    library may quote the URL it was given, secrets included.
    """
    return _URL_CREDENTIALS.sub(r"\1***@", text)
