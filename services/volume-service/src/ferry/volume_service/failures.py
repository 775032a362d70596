"""What a failed volume operation means for the command: give up, or try again.

The platform and the providers raise their own precise errors; the bus knows
two outcomes. A copy that failed for a reason the data cannot change (no space,
an I/O error, a source that disappeared, a checksum mismatch, an invalid
source) fails the step with that reason, so the user reads it in the
``volume.failed`` event. A workload that died without a reason (killed, OOM)
is retried: the next delivery resumes from the checkpoint; so is a read the
source broke off because its session or lease ended (``SourceInterrupted``).
"""

from __future__ import annotations

from ferry.bus import PermanentError, TemporaryError
from ferry.platform import errors as copy_errors
from ferry.platform.volumes import VolumeError
from ferry.providers.base import ProviderError, SourceInterrupted

RETRY_DELAY_SECONDS = 1.0


def classify(exc: BaseException, what: str) -> PermanentError | TemporaryError | None:
    """The bus outcome for ``exc`` raised while doing ``what``; None: not ours to judge."""
    if isinstance(exc, PermanentError | TemporaryError):
        return exc
    if isinstance(exc, copy_errors.CopyError):
        if exc.code == "workload_crashed":
            return TemporaryError(f"{what}: {exc.reason}; resuming", RETRY_DELAY_SECONDS)
        return PermanentError(f"{what}: {exc.reason}", [f"error: {exc.code}"])
    if isinstance(exc, VolumeError):
        return PermanentError(f"{what}: {exc.reason}", [f"error: {type(exc).__name__}"])
    if isinstance(exc, SourceInterrupted):  # a session or lease ended: a new one may not
        return TemporaryError(f"{what}: {exc}", RETRY_DELAY_SECONDS)
    if isinstance(exc, ProviderError):
        # A missing VM or disk, an unsupported provider, a package that fails its
        # manifest or safety checks: none of these heal by redelivering.
        return PermanentError(f"{what}: {exc}")
    return None
