"""What the importer and populator workloads do, inside their own process.

Each workload is a child process (``python -m ferry.platform.local.importer`` or
``…populator``) so that killing it, or the service, is a real crash: whatever
it leaves behind is what the next attempt must cope with. It reads its job
(one JSON line) on stdin, never on the command line, and reports on stdout one
JSON object per line: ``stage``, ``progress``, then ``done`` or ``error``.

A *paced* job (a copy under bandwidth budgets) asks before a chunk moves:
``want`` with some bytes on stdout, then it waits for one line on stdin, the
service's grant, taken from the budgets' rates shared by every replica
(:mod:`ferry.bus.rate`). It asks in steps that follow how long grants take and
spends them chunk by chunk (:class:`~ferry.platform.grantsteps.Allowance`), so no
chunk moves before its grant. The workload needs no bus connection of its own.

The populator runs the whole populator sequence, each stage committed by one
atomic record write, so a kill between any two stages leaves the original
claim either unbound or bound to the complete, verified data:

1. ``prime``   — the temporary prime claim exists and has a volume;
2. ``filled``  — the copy into the prime's volume finished and was verified;
3. ``rebound`` — the original claim now points at that volume (the commit);
4. ``cleaned`` — the prime claim is gone.

A copy failure (no space, I/O error, source gone) discards what was written —
the importer empties its volume, the populator deletes its prime — and marks
the claim Failed with the reason; a kill keeps the checkpoint so the next
attempt resumes.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import threading

import msgspec

from ferry.platform import errors
from ferry.platform.copy import checksum, delta, engine
from ferry.platform.copy.sink import open_sink
from ferry.platform.copy.source import open_source
from ferry.platform.grantsteps import Allowance
from ferry.platform.images import ImageRef
from ferry.platform.local.storage import StorageConfig, Store
from ferry.platform.volumes import (
    Phase,
    VolumeError,
    VolumeNotFound,
    VolumeState,
)
from ferry.proto import label
from ferry.proto.inventory import DiskCopy
from ferry.proto.volume import VolumeSource

FAULT_PAUSE_ENV = "FERRY_FAULT_PAUSE_AFTER"  # fault injection: stop after this stage


class Job(msgspec.Struct, frozen=True, kw_only=True):
    config: StorageConfig
    namespace: str
    name: str
    source: ImageRef
    # A warm round: write only ``source.extents`` over the filled volume; ``last``
    # (the source is off) also compares the whole disks.
    delta: bool = False
    last: bool = False
    paced: bool = False  # ask for a grant on stdin before each chunk moves


class Stage(msgspec.Struct, frozen=True, tag_field="event", tag="stage"):
    stage: str


class ProgressLine(msgspec.Struct, frozen=True, tag_field="event", tag="progress"):
    done: int
    total: int
    rate: float


class Want(msgspec.Struct, frozen=True, tag_field="event", tag="want"):
    bytes: int


class Done(msgspec.Struct, frozen=True, tag_field="event", tag="done"):
    copy: DiskCopy
    resumed_at: int = 0


class Error(msgspec.Struct, frozen=True, tag_field="event", tag="error"):
    code: str
    reason: str


Line = Stage | ProgressLine | Want | Done | Error
_ENCODER = msgspec.json.Encoder()


_OUT = threading.Lock()  # copy threads report too: one whole line at a time


def emit(line: Line) -> None:
    data = _ENCODER.encode(line) + b"\n"
    with _OUT:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()


def stage(name: str) -> None:
    emit(Stage(name))
    if os.environ.get(FAULT_PAUSE_ENV) == name:
        os.kill(os.getpid(), signal.SIGSTOP)


def prime_name(name: str) -> str:
    return f"{name}-prime"


_GRANTS = threading.Lock()


def wait_for_grant(nbytes: int) -> None:
    """Block until the service grants ``nbytes`` (chunks of every copy thread, one at a time)."""
    with _GRANTS:
        emit(Want(nbytes))
        if not sys.stdin.buffer.readline():
            raise OSError("the service stopped granting bandwidth (stdin closed)")


def _options(config: StorageConfig, paced: bool = False) -> engine.Options:
    return engine.Options(
        workers=config.copy_workers,
        checkpoint_seconds=config.checkpoint_seconds,
        max_rate=config.max_rate,
        verify=config.verify_readback,
        # asked in steps, spent chunk by chunk: a few asks a second, not one a chunk
        throttle=Allowance(wait_for_grant, checksum.CHUNK) if paced else None,
    )


def _transfer(
    store: Store, claim: VolumeState, ref: ImageRef, paced: bool = False
) -> tuple[DiskCopy, int]:
    source = open_source(ref)
    try:
        if source.size > claim.capacity:
            raise errors.InvalidSourceError(
                f"the source disk ({source.size} bytes) is larger than volume "
                f"{claim.name} ({claim.capacity} bytes)"
            )
        sink = open_sink(claim.path, claim.format, claim.capacity)
        result = engine.copy(
            source,
            sink,
            store.copy_dir(claim),
            _options(store.config, paced),
            lambda p: emit(ProgressLine(p.done, p.total, p.rate)),
        )
    finally:
        source.close()
    copy = DiskCopy(
        disk_id=claim.disk_id,
        volume=claim.name,
        bytes_copied=result.bytes_written,
        source=result.source,
        target=result.target,
        seconds=round(result.seconds, 3),
    )
    return copy, result.resumed_at


def _claim(store: Store, job: Job, source: VolumeSource) -> VolumeState:
    claim = store.read(job.namespace, job.name)
    if claim is None:
        raise VolumeNotFound(f"no volume {job.namespace}/{job.name}")
    if claim.source != source or claim.prime_of:
        raise VolumeError(f"volume {claim.name} is a {claim.source} volume, not {source}")
    return claim


def run_importer(store: Store, job: Job) -> Done:
    with store.lock(job.namespace):
        claim = _claim(store, job, VolumeSource.IMPORTER)
        if claim.phase == Phase.SUCCEEDED and claim.copy is not None:
            return Done(claim.copy)
        if not claim.pv:
            store.check_capacity([claim])
            claim = store.allocate(claim)
        claim = store.write(msgspec.structs.replace(claim, phase=Phase.POPULATING, reason=""))
    stage("bound")
    with store.workload_lock(claim):
        again = store.read(job.namespace, job.name)
        if again is not None and again.phase == Phase.SUCCEEDED and again.copy is not None:
            return Done(again.copy)  # an earlier workload finished while we waited
        try:
            copy, resumed_at = _transfer(store, claim, job.source, job.paced)
        except errors.CopyError as exc:
            store.reset_data(claim)
            with store.lock(job.namespace):
                store.write(msgspec.structs.replace(claim, phase=Phase.FAILED, reason=exc.reason))
            raise
    with store.lock(job.namespace):
        store.write(msgspec.structs.replace(claim, phase=Phase.SUCCEEDED, copy=copy))
    stage("filled")
    return Done(copy, resumed_at)


def run_delta(store: Store, job: Job) -> Done:
    """A warm round onto a volume an earlier round filled; its record is left as it was."""
    with store.lock(job.namespace):
        claim = store.read(job.namespace, job.name)
        if claim is None:
            raise VolumeNotFound(f"no volume {job.namespace}/{job.name}")
        if claim.phase != Phase.SUCCEEDED or not claim.path:
            raise VolumeError(f"volume {claim.name} holds no full copy yet: no delta applies")
    stage("bound")
    ref = job.source
    source = open_source(ref)
    whole = open_source(msgspec.structs.replace(ref, extents=None)) if job.last else None
    try:
        with store.workload_lock(claim):
            result = delta.apply(
                source,
                open_sink(claim.path, claim.format, claim.capacity),
                list(ref.extents or []),
                whole=whole,
                options=_options(store.config, job.paced),
                progress=lambda p: emit(ProgressLine(p.done, p.total, p.rate)),
                state_dir=store.copy_dir(claim),
                key=ref.snapshot,
            )
    finally:
        source.close()
        if whole is not None:
            whole.close()
    stage("filled")
    copy = DiskCopy(
        disk_id=claim.disk_id,
        volume=claim.name,
        bytes_copied=result.written,
        source=result.source,
        target=result.target,
        seconds=round(result.seconds, 3),
    )
    return Done(copy, result.resumed_at)


def new_prime(claim: VolumeState) -> VolumeState:
    labels = {**claim.labels, label.TEMPORARY: "true", label.PRIME_OF: claim.name}
    return msgspec.structs.replace(
        claim,
        name=prime_name(claim.name),
        labels=labels,
        prime_of=claim.name,
        phase=Phase.PENDING,
        pv="",
        path="",
        reason="",
        copy=None,
    )


def drop_primes(store: Store, claim: VolumeState) -> list[str]:
    """Forget the claim's prime(s); their volume is deleted unless the claim now owns it."""
    dropped = []
    for prime in store.claims(claim.namespace):
        if prime.prime_of != claim.name:
            continue
        store.forget(prime.namespace, prime.name)
        if prime.pv and prime.pv != claim.pv:
            store.delete_pv(prime.storage_class, prime.pv)
        dropped.append(prime.name)
    return dropped


def run_populator(store: Store, job: Job) -> Done:
    with store.lock(job.namespace):
        claim = _claim(store, job, VolumeSource.POPULATOR)
        if claim.phase == Phase.SUCCEEDED and claim.copy is not None:
            drop_primes(store, claim)
            return Done(claim.copy)
        prime = store.read(job.namespace, prime_name(job.name))
        if prime is None:
            prime = new_prime(claim)
            store.create(prime)
        if not prime.pv:
            store.check_capacity([prime])
            prime = store.allocate(prime)
        if prime.phase != Phase.SUCCEEDED:
            prime = store.write(msgspec.structs.replace(prime, phase=Phase.POPULATING))
        claim = store.write(msgspec.structs.replace(claim, phase=Phase.POPULATING, reason=""))
    stage("prime")
    resumed_at = 0
    if prime.phase != Phase.SUCCEEDED or prime.copy is None:
        try:
            with store.workload_lock(prime):
                copy, resumed_at = _transfer(store, prime, job.source, job.paced)
        except errors.CopyError as exc:
            with store.lock(job.namespace):
                drop_primes(store, claim)
                store.write(msgspec.structs.replace(claim, phase=Phase.FAILED, reason=exc.reason))
            raise
        with store.lock(job.namespace):
            prime = store.write(msgspec.structs.replace(prime, phase=Phase.SUCCEEDED, copy=copy))
    stage("filled")
    with store.lock(job.namespace):
        claim = store.write(
            msgspec.structs.replace(
                claim, pv=prime.pv, path=prime.path, phase=Phase.SUCCEEDED, copy=prime.copy
            )
        )
    stage("rebound")
    with store.lock(job.namespace):
        drop_primes(store, claim)
    stage("cleaned")
    assert claim.copy is not None
    return Done(claim.copy, resumed_at)


def _die_with_parent() -> None:
    """A workload must not outlive the service that started it (like a pod's owner)."""
    parent = os.getppid()
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:
        os._exit(1)


def main(kind: str) -> int:
    _die_with_parent()
    try:
        job = msgspec.json.decode(sys.stdin.buffer.readline(), type=Job)
        store = Store(job.config)
        if job.delta:
            done = run_delta(store, job)
        elif kind == "importer":
            done = run_importer(store, job)
        else:
            done = run_populator(store, job)
    except errors.CopyError as exc:
        emit(Error(exc.code, exc.reason))
        return 2
    except VolumeError as exc:
        emit(Error("volume", exc.reason))
        return 2
    except (OSError, msgspec.DecodeError, ValueError) as exc:
        emit(Error("copy_failed", f"{type(exc).__name__}: {exc}"))
        return 3
    emit(done)
    with contextlib.suppress(OSError):
        sys.stdout.flush()
    return 0
