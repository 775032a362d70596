"""The populator pod's program: ``python -m ferry.platform.kubernetes.fill JOB_FILE``.

It runs inside Ferry's image, in the pod the populator controller
(:mod:`ferry.platform.kubernetes.populator`) starts on the node of the prime claim,
and does what the local populator's copy stage does, with the same engine: read
the source disk, write it into the prime claim (a Block device, or ``disk.img`` in
a Filesystem claim, where KubeVirt and CDI look for it), verify, and say so. The
job comes as a file of a mounted Secret, never on the command line: a source's
option tree may name credentials. Its stdout is one JSON object per line
(``progress``, then ``done`` with both checksums), which the controller reads from
the pod's log; a failure exits non-zero (:data:`TRANSIENT` or :data:`PERMANENT`) with the reason as
its last words, which the kubelet keeps as the termination message.

A warm round (:mod:`ferry.platform.kubernetes.rounds`) runs the same program on the
VM's claim itself: round 0 is the full copy above, a later round a *delta* job that
writes only the round's changed ``extents`` over the filled volume with the local
importer's own round (:func:`ferry.platform.copy.delta.apply`), the ``last`` one also
comparing the whole disks. A delta round prints its ledger at each commit (``checkpoint``:
a few dozen bytes, all durable on the claim); the volume-service hands the last one it
read to the pod it starts next for the same round (``resume``), which then writes only
what the pod before had not made durable, Block claims included, where nothing of a
pod's own outlives it.

Under a bandwidth budget the job carries ``pace_url`` and ``pace_token`` (the
volume-service's grant broker and the copy's ticket, :mod:`ferry.platform.kubernetes.grants`):
every chunk, full or delta, is then granted before it is read.
"""

from __future__ import annotations

import sys
from pathlib import Path

import msgspec

from ferry.platform import errors
from ferry.platform.copy import checksum, delta, engine
from ferry.platform.copy.delta import State as Ledger
from ferry.platform.copy.sink import open_sink
from ferry.platform.copy.source import open_source
from ferry.platform.grantsteps import Allowance
from ferry.platform.images import ImageRef
from ferry.platform.kubernetes import grants
from ferry.proto.inventory import Checksum, Extent
from ferry.providers.base import repr_hiding

FILESYSTEM_IMAGE = "disk.img"  # the file KubeVirt boots from in a Filesystem claim
# Exit codes of a failure: another pod may succeed (an I/O error, a connection lost), or
# it would fail the same way (the source refused or too big, the target differing).
TRANSIENT = 1
PERMANENT = 2


class Job(msgspec.Struct, frozen=True, kw_only=True):
    source: ImageRef
    target: str  # the device path (Block) or the mount directory (Filesystem)
    block: bool
    format: str = "raw"
    capacity: int
    state_dir: str  # the copy engine's checkpoint: an emptyDir, so a retried pod restarts
    # A warm round after the first: only ``extents`` (the round's changes) are written
    # over the filled volume; ``last`` (the source is off) also compares whole disks.
    delta: bool = False
    last: bool = False
    extents: list[Extent] = []
    key: str = ""  # the round's picture of the source (a warm view's checkpoint)
    resume: Ledger | None = None  # what an earlier pod of the round made durable
    checkpoint_seconds: float = 10.0  # how often progress is made durable (and printed)
    # Empty the target first: a round 0 run again after a failed or killed pod must not
    # keep what that pod wrote where the source has holes.
    fresh: bool = False
    # Under a bandwidth budget: where to ask for each chunk's grant, and the copy's
    # ticket (a secret, like the source's URL: only ever in the job's Secret).
    pace_url: str = ""
    pace_token: str = ""

    def __repr__(self) -> str:
        return repr_hiding(self, "pace_token")

    def options(self) -> engine.Options:
        """The copy engine's options: two workers, and the broker's grants when paced."""
        cadence = max(self.checkpoint_seconds, 0.0)
        if not (self.pace_url and self.pace_token):
            return engine.Options(workers=2, checkpoint_seconds=cadence)
        ticket = grants.Ticket(url=self.pace_url, token=self.pace_token)
        # asked in steps, spent chunk by chunk: a few requests a second, not one a chunk
        allowance = Allowance(grants.Throttle(ticket), checksum.CHUNK)
        return engine.Options(workers=2, checkpoint_seconds=cadence, throttle=allowance)


class Progress(msgspec.Struct, frozen=True, tag_field="event", tag="progress"):
    done: int
    total: int


class Done(msgspec.Struct, frozen=True, tag_field="event", tag="done"):
    bytes_copied: int
    source: Checksum
    target: Checksum
    seconds: float


class Checkpoint(msgspec.Struct, frozen=True, tag_field="event", tag="checkpoint"):
    state: Ledger  # a delta round's ledger, durable on the claim when printed


Line = Progress | Done | Checkpoint
_encoder = msgspec.json.Encoder()


def emit(line: Line) -> None:
    sys.stdout.write(_encoder.encode(line).decode() + "\n")
    sys.stdout.flush()


def run(job: Job) -> Done:
    path = job.target if job.block else str(Path(job.target) / FILESYSTEM_IMAGE)
    if job.delta:
        return run_delta(job, path)
    source = open_source(job.source)
    try:
        if source.size > job.capacity:
            raise errors.InvalidSourceError(
                f"the source disk ({source.size} bytes) is larger than the volume "
                f"({job.capacity} bytes)"
            )
        if not job.block:
            Path(path).touch()
        sink = open_sink(path, job.format, job.capacity)
        if job.fresh:
            sink.punch(0, job.capacity)
        result = engine.copy(
            source,
            sink,
            Path(job.state_dir),
            job.options(),
            lambda p: emit(Progress(p.done, p.total)),
        )
    finally:
        source.close()
    return Done(
        bytes_copied=result.bytes_written,
        source=result.source,
        target=result.target,
        seconds=round(result.seconds, 3),
    )


def run_delta(job: Job, path: str) -> Done:
    if not Path(path).exists():
        raise errors.InvalidSourceError(
            f"the volume holds no full copy yet ({path} is missing): no delta applies"
        )
    source = open_source(job.source)
    # the whole disk with its true allocation, not the round's extents (as the local one)
    whole = open_source(msgspec.structs.replace(job.source, extents=None)) if job.last else None
    try:
        result = delta.apply(
            source,
            open_sink(path, job.format, job.capacity),
            job.extents,
            whole=whole,
            options=job.options(),
            progress=lambda p: emit(Progress(p.done, p.total)),
            state_dir=Path(job.state_dir),
            key=job.key,
            resume=job.resume,
            on_commit=lambda state: emit(Checkpoint(state)),
        )
    finally:
        source.close()
        if whole is not None:
            whole.close()
    return Done(
        bytes_copied=result.written,
        source=result.source,
        target=result.target,
        seconds=round(result.seconds, 3),
    )


def main(argv: list[str]) -> int:
    job = msgspec.json.decode(Path(argv[0]).read_bytes(), type=Job)
    try:
        emit(run(job))
    except Exception as error:  # the reason is the pod's termination message
        print(f"{type(error).__name__}: {error}", file=sys.stderr)
        again = isinstance(error, OSError) or (
            isinstance(error, errors.CopyError) and not error.permanent
        )
        return TRANSIENT if again else PERMANENT
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
