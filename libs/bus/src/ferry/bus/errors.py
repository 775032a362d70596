"""What can go wrong on the bus, as exceptions that say what to do next.

Handlers raise :class:`PermanentError` or :class:`TemporaryError` to choose the
outcome of a command; the router turns any other exception into a retry with
backoff. Key-value compare-and-set failures are :class:`Conflict` so callers can
re-read and retry. None of these carry nats-py types, so no other package needs
to import nats-py to handle them.
"""

from __future__ import annotations


class BusError(Exception):
    """Base of every error the bus library raises."""


class PermanentError(BusError):
    """The command can never succeed: terminate it, report it, dead-letter it.

    ``reason`` is one line for humans; ``detail`` holds extra lines (validation
    messages, stderr tail). Neither may contain secrets: both go into the audit
    stream.
    """

    def __init__(self, reason: str, detail: list[str] | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = list(detail or [])


class TemporaryError(BusError):
    """The command may succeed later: redeliver it after ``delay`` seconds."""

    def __init__(self, reason: str, delay: float = 5.0) -> None:
        super().__init__(reason)
        self.reason = reason
        self.delay = max(0.0, float(delay))


class Canceled(BusError):
    """The (migration, vm) the command belongs to was canceled.

    The router cancels a running handler's task when the cancellation arrives
    (the task sees ``asyncio.CancelledError``); a handler that notices
    ``ctx.canceled`` by itself may raise this instead. Either way the message is
    terminated and the service's ``Failed`` event is published with
    ``canceled=True``.
    """

    def __init__(self, reason: str = "canceled") -> None:
        super().__init__(reason)
        self.reason = reason


class Conflict(BusError):
    """A key-value compare-and-set lost the race: someone else wrote first."""

    def __init__(
        self,
        bucket: str,
        key: str,
        expected_revision: int,
        current_revision: int | None = None,
    ) -> None:
        self.bucket = bucket
        self.key = key
        self.expected_revision = expected_revision
        self.current_revision = current_revision
        super().__init__(self._message())

    def _message(self) -> str:
        if self.expected_revision == 0:
            expected = "no entry (create)"
        else:
            expected = f"revision {self.expected_revision}"
        if self.current_revision is None:
            current = "unknown"
        elif self.current_revision == 0:
            current = "no entry"
        else:
            current = f"revision {self.current_revision}"
        return (
            f"compare-and-set conflict on {self.bucket}/{self.key}: "
            f"expected {expected}, found {current}; re-read and retry"
        )


class NotFound(BusError, KeyError):
    """A key that must exist does not (e.g. ``mutate`` without ``create``)."""

    def __init__(self, bucket: str, key: str) -> None:
        self.bucket = bucket
        self.key = key
        super().__init__(f"no entry {bucket}/{key}")

    def __str__(self) -> str:
        return str(self.args[0])


class InvalidKey(BusError, ValueError):
    """A key-value key with characters JetStream does not allow."""

    def __init__(self, bucket: str, key: str) -> None:
        super().__init__(
            f"invalid key {key!r} for bucket {bucket}: use letters, digits and - / _ = . "
            "(no leading or trailing dot); build keys with ferry.proto.subjects"
        )


class CorruptEntry(BusError):
    """A stored value does not decode as the bucket's type."""

    def __init__(self, bucket: str, key: str, revision: int, error: str) -> None:
        super().__init__(f"{bucket}/{key} revision {revision} does not decode: {error}")


class PublishFailed(BusError):
    """No stream acknowledged a publish within the publish timeout."""

    def __init__(self, subject: str, reason: str) -> None:
        self.subject = subject
        super().__init__(f"publish to {subject} not acknowledged: {reason}")


class NotConnected(BusError):
    """The initial connection to NATS did not succeed in time."""


class Unavailable(BusError):
    """JetStream did not answer a request within the publish timeout (no leader elected)."""

    def __init__(self, what: str, reason: str, seconds: float) -> None:
        self.reason = reason  # the last failed attempt's
        super().__init__(f"{what}: JetStream did not answer for {seconds:.0f}s ({reason})")
