"""The populator pod's program: ``python -m ferry.platform.kubernetes.fill JOB_FILE``.

It runs inside Ferry's image, in the pod the populator controller
(:mod:`ferry.platform.kubernetes.populator`) starts on the node of the prime claim,
and does what the local populator's copy stage does, with the same engine: read
the source disk, write it into the prime claim (a Block device, or ``disk.img`` in
a Filesystem claim, where KubeVirt and CDI look for it), verify, and say so. The
job comes as a file of a mounted Secret, never on the command line: a source's
option tree may name credentials. Its stdout is one JSON object per line
(``progress``, then ``done`` with both checksums), which the controller reads from
the pod's log; a failure exits non-zero with the reason as its last words, which
the kubelet keeps as the termination message.
"""

from __future__ import annotations

import sys
from pathlib import Path

import msgspec

from ferry.platform.copy import engine
from ferry.platform.copy.sink import open_sink
from ferry.platform.copy.source import open_source
from ferry.platform.images import ImageRef
from ferry.proto.inventory import Checksum

FILESYSTEM_IMAGE = "disk.img"  # the file KubeVirt boots from in a Filesystem claim


class Job(msgspec.Struct, frozen=True, kw_only=True):
    source: ImageRef
    target: str  # the device path (Block) or the mount directory (Filesystem)
    block: bool
    format: str = "raw"
    capacity: int
    state_dir: str  # the copy engine's checkpoint: an emptyDir, so a retried pod restarts


class Progress(msgspec.Struct, frozen=True, tag_field="event", tag="progress"):
    done: int
    total: int


class Done(msgspec.Struct, frozen=True, tag_field="event", tag="done"):
    bytes_copied: int
    source: Checksum
    target: Checksum
    seconds: float


Line = Progress | Done
_encoder = msgspec.json.Encoder()


def emit(line: Line) -> None:
    sys.stdout.write(_encoder.encode(line).decode() + "\n")
    sys.stdout.flush()


def run(job: Job) -> Done:
    path = job.target if job.block else str(Path(job.target) / FILESYSTEM_IMAGE)
    source = open_source(job.source)
    try:
        if source.size > job.capacity:
            raise SystemExit(
                f"the source disk ({source.size} bytes) is larger than the volume "
                f"({job.capacity} bytes)"
            )
        if not job.block:
            Path(path).touch()
        sink = open_sink(path, job.format, job.capacity)
        result = engine.copy(
            source,
            sink,
            Path(job.state_dir),
            engine.Options(workers=2),
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


def main(argv: list[str]) -> int:
    job = msgspec.json.decode(Path(argv[0]).read_bytes(), type=Job)
    try:
        emit(run(job))
    except Exception as error:  # the reason is the pod's termination message
        print(f"populator: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
