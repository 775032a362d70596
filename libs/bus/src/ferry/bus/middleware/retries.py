"""Retries: what a handler's error means for its message.

``PermanentError`` gives up at once. Anything else is retried, ``TemporaryError``
after the delay it asks for, other exceptions with exponential backoff, until
the delivery that JetStream counts as the last allowed one: then the command
is given up with the outcome ``gave_up`` (another attempt, later, might work).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from ferry.bus.errors import PermanentError, TemporaryError
from ferry.bus.middleware.base import Middleware
from ferry.bus.outcome import Attempt, GiveUp, Retry, Verdict, backoff, describe
from ferry.proto.base import FailureOutcome

if TYPE_CHECKING:
    from ferry.bus.job import Job

# Retry logs keep the logger name they had before the router was split.
log = logging.getLogger("ferry.bus.router")


class Retries(Middleware):
    def judge(self, job: Job, attempt: Attempt) -> Verdict | None:
        error = attempt.error
        if error is None:
            return None
        if isinstance(error, PermanentError):
            return GiveUp(FailureOutcome.PERMANENT, error.reason, error.detail, "permanent")
        if job.deliveries >= job.max_deliver:
            reason = f"gave up after {job.deliveries} deliveries: {describe(error)}"
            return GiveUp(FailureOutcome.GAVE_UP, reason, [], "exhausted")
        message = job.message
        extra = {
            "migration": message.migration if message else "",
            "vm": message.vm if message else "",
            "type": job.type_name,
        }
        if isinstance(error, TemporaryError):
            log.info(
                "temporary failure, retry in %.1fs: %s", error.delay, error.reason, extra=extra
            )
            return Retry(error.delay, "temporary")
        delay = backoff(job.deliveries)
        log.warning(
            "handler failed (delivery %d), retry in %.0fs",
            job.deliveries,
            delay,
            exc_info=error,
            extra=extra,
        )
        return Retry(delay, "error")
