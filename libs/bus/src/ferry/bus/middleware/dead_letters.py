"""Dead letters: a copy of every given-up command, with why, for people to look at.

The ``Failed`` event says what went wrong; the dead-letter stream keeps the
message itself (original headers and body, plus the reason, the number of
deliveries and the original subject) so that it can be inspected or replayed.
A canceled command is not a fault and is not copied.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ferry.bus.middleware.base import Middleware
from ferry.bus.outcome import GiveUp
from ferry.proto import envelope, subjects
from ferry.proto.base import FailureOutcome

if TYPE_CHECKING:
    from ferry.bus.dispatcher import Dispatcher
    from ferry.bus.job import Job

REASON_HEADER = "Ferry-Dead-Letter-Reason"
DELIVERIES_HEADER = "Ferry-Deliveries"
ORIGINAL_SUBJECT_HEADER = "Ferry-Original-Subject"


class DeadLetters(Middleware):
    def __init__(self) -> None:
        self._dispatcher: Dispatcher | None = None

    async def start(self, dispatcher: Dispatcher) -> None:
        self._dispatcher = dispatcher

    async def reported(self, job: Job, verdict: GiveUp) -> None:
        if verdict.outcome is FailureOutcome.CANCELED or self._dispatcher is None:
            return
        headers = dict(job.msg.headers or {})
        headers[REASON_HEADER] = verdict.reason.replace("\r", " ").replace("\n", " ")[:1000]
        headers[DELIVERIES_HEADER] = str(job.deliveries)
        headers[ORIGINAL_SUBJECT_HEADER] = job.msg.subject
        if envelope.MSG_ID_HEADER not in headers:
            headers[envelope.MSG_ID_HEADER] = f"dlq:{job.origin}"
        subject = _subject(self._dispatcher, job)
        await self._dispatcher.publisher.publish_raw(subject, job.msg.data, headers)


def _subject(dispatcher: Dispatcher, job: Job) -> str:
    parts = job.msg.subject.split(".")
    name = parts[3] if len(parts) == 6 else "invalid"
    mig = job.migration_token if len(parts) == 6 else "_"
    vm = job.vm_token if len(parts) == 6 else "_"
    return subjects.dead_letter(dispatcher.service, name, mig, vm)
