"""One guest conversion: virt-v2v (full) or virt-v2v-in-place, start to inspection.

Full mode writes straight into the bound volumes
    virt-v2v has no output that takes "these existing files/devices". Its
    ``-o local -os DIR`` output writes disk *i* to ``DIR/NAME-sd<x>`` by opening
    that path: libguestfs's ``disk_create`` opens it with ``O_CREAT|O_TRUNC``
    (which follows a symlink, keeps the target's inode, and on a block device
    truncates nothing), then nbdkit's file plugin serves it and nbdcopy writes
    the converted disk through it. So each run's workload gets links named as
    virt-v2v expects (``out/guest-sda`` → the first volume's file or block device
    *as the workload sees it*, …), made by the platform inside the workload (a
    local run's directory, or a conversion pod's), and ``-on guest`` fixes NAME.
    This is what Forklift's conversion pod does with ``/mnt/disks/diskN/disk.img``
    and ``/dev/blockN``; where a volume is seen comes from the platform
    (``place_volumes``), never from this service's own paths.
    Nothing is copied afterwards: when virt-v2v exits, the data is in the
    volumes (nbdcopy ``--flush``). virt-v2v sets a file's size to the source
    disk's virtual size; a volume pre-allocated larger (filesystem overhead) is
    grown back to its size. Afterwards the links must still be links (virt-v2v
    did not replace them with files) and nothing else may have appeared in the
    directory (a source disk without a volume).

In-place mode
    The importer already copied the disks into the volumes; a libvirt XML
    describing them (:mod:`ferry.conversion_service.domain`) is the input of
    ``virt-v2v-in-place -i libvirtxml``.

Inputs and secrets
    The provider says how virt-v2v reads its VM (``Provider.v2v_input``); files it
    writes (a password for ``-ip``) live in the run's directory, are forced to
    mode 0600, and are removed with the directory when the run ends, however it
    ends. They reach the workload as its secret files (``<workdir>/input``, a
    mounted Secret in a pod), with virt-v2v's argv pointed there; a share the input
    reads (an OVA on NFS) is mounted read-only at the same path. Nothing secret is
    on the command line, so logging the argv is safe. What the input reads through
    (a vSphere session) the provider keeps while the workload runs
    (``V2vInput.hold``); when it ended anyway, the provider's reason is the run's.

Everything a run creates (work directory, virt-v2v's overlays and sockets)
goes when the run ends; only the log stays, under
``<data>/logs/conversion/<migration>/<vm>.log``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shlex
import shutil
import stat
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from ferry.conversion_service import accel, appliance, domain, inspection, pacing, reasons, rundirs
from ferry.conversion_service.inputs import InputError, provider_files, run_captive, secure
from ferry.conversion_service.progress import Decisions, OutputReader, Progress
from ferry.conversion_service.settings import ConversionSettings
from ferry.platform.volumes import labels_for
from ferry.platform.workloads import (
    Placed,
    Workload,
    WorkloadError,
    WorkloadLost,
    WorkloadPlatform,
    WorkloadTimedOut,
)
from ferry.proto import subjects
from ferry.proto.conversion import ConversionMode
from ferry.proto.inventory import Inspection, Vm, Volume
from ferry.providers.base import InputHold, Pace, ProviderError, V2vInput

log = logging.getLogger(__name__)

GUEST_NAME = "guest"  # virt-v2v's -on: fixes the output file names, not the VM's name
_OUT = "out"  # virt-v2v's -os, in the work directory
_INPUT = "input"  # the provider's files and the domain document, in the work directory
# A conversion pod's work directory (an emptyDir): short, because virt-v2v's helpers put
# their Unix sockets under TMPDIR and a socket path is limited to 107 bytes.
_POD_WORKDIR = "/var/tmp/ferry-v2v"  # noqa: S108 - inside the pod: its own emptyDir

ProgressCallback = Callable[[Progress], Awaitable[None]]


class V2vSource(Protocol):
    """The part of a provider a full conversion needs."""

    async def v2v_input(self, vm: Vm, workdir: Path, *, pace: Pace | None = None) -> V2vInput: ...


class ConversionError(Exception):
    """A conversion that cannot succeed as asked: reason, supporting lines, log path."""

    def __init__(
        self,
        reason: str,
        detail: Sequence[str] = (),
        log: Path | None = None,
        *,
        transient: bool = False,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = list(detail)
        self.log = log
        self.transient = transient  # the same run may succeed later (reasons.transient)


class ConversionTimedOut(ConversionError):
    """The run exceeded its time limit; virt-v2v and its helpers were killed."""


class ConversionLost(ConversionError):
    """The platform ended the run (a conversion pod evicted, its node lost): retry it."""


@dataclass(frozen=True)
class Job:
    """What to convert, independent of the bus."""

    migration: str
    vm_key: str  # the VM's id as the migration names it (log file name)
    mode: ConversionMode
    inventory: Vm
    volumes: Sequence[Volume]
    timeout_seconds: float
    source: V2vSource | None = None  # full mode only
    namespace: str = ""  # where the VM's claims are (a conversion pod runs there)
    # The bandwidth budgets' grants the source's reads wait for, and the bytes asked at
    # once (:mod:`~ferry.conversion_service.pacing`); None: unpaced.
    rate: pacing.Rate | None = None
    rate_step: int = pacing.STEP


@dataclass(frozen=True)
class Result:
    inspection: Inspection
    seconds: float
    log: Path


def log_path(data_dir: Path, migration: str, vm: str) -> Path:
    folder = data_dir / "logs" / "conversion" / subjects.token(migration)
    return folder / f"{subjects.token(vm)}.log"


def check_volumes(vm: Vm, volumes: Sequence[Volume]) -> None:
    """Every source disk has a volume, formats agree (where they are: the platform's)."""
    if len(volumes) != len(vm.disks):
        raise ConversionError(
            f"VM {vm.name!r} has {len(vm.disks)} disk(s) but {len(volumes)} volume(s) were "
            "bound; virt-v2v writes one volume per source disk"
        )
    formats = {volume.format or "raw" for volume in volumes}
    if len(formats) > 1 or not formats <= {"raw", "qcow2"}:
        raise ConversionError(
            f"volumes must all be raw or all qcow2 for virt-v2v, got {sorted(formats)}"
        )


def _secure(files: Sequence[str], workdir: Path) -> None:
    try:
        secure(files, workdir)
    except InputError as error:
        raise ConversionError(str(error)) from None


def output_links(volumes: Sequence[Volume], placed: Mapping[str, Placed]) -> dict[str, str]:
    """``out/guest-sda`` → where the workload sees the first volume's disk, … as virt-v2v
    ``-o local`` names its outputs; the platform makes them inside the workload."""
    return {
        f"{_OUT}/{GUEST_NAME}-sd{domain.drive_name(index)}": placed[volume.name].disk
        for index, volume in enumerate(volumes)
    }


def check_outputs(outdir: Path, links: Mapping[str, str]) -> None:
    """virt-v2v wrote nothing but the linked disks (the platform checked the links are
    still links). Seen only where the work directory is this host's."""
    if not outdir.is_dir():
        return
    expected = {Path(link).name for link in links}
    extra = sorted(
        entry.name
        for entry in outdir.iterdir()
        if entry.name not in expected and entry.name.startswith(f"{GUEST_NAME}-sd")
    )
    if extra:
        raise ConversionError(f"virt-v2v wrote disks that have no volume: {', '.join(extra)}")


def restore_sizes(volumes: Sequence[Volume]) -> None:
    """Grow raw volume files back to the guest disk's size if virt-v2v shrank them.

    The guest-visible size is the volume's ``capacity``; ``size`` is the storage
    requested for it (with filesystem overhead) and must never leak into the disk
    the guest sees. Volumes from producers that do not report a capacity are left
    as virt-v2v wrote them.
    """
    for volume in volumes:
        path = Path(volume.path)
        info = path.stat()
        want = volume.capacity
        if stat.S_ISREG(info.st_mode) and volume.format == "raw" and 0 < info.st_size < want:
            os.truncate(path, want)


class Converter:
    """Runs conversions on this host; one instance per service."""

    def __init__(
        self, settings: ConversionSettings, data_dir: Path, workloads: WorkloadPlatform
    ) -> None:
        self.settings = settings
        self.data_dir = data_dir
        self.workloads = workloads
        rundirs.sweep_orphans(settings.work_dir, settings.large_tmp_dir)

    async def environment(self) -> dict[str, str]:
        """What virt-v2v's workload runs with. A local child inherits this host's
        environment (the operator's libguestfs tuning); a workload that runs elsewhere
        (a conversion pod) gets only the decided variables over its image's own."""
        acceleration = await accel.acceleration(self.settings)
        env: dict[str, str] = {}
        if self.workloads.workloads_run_here:
            # Our own settings (FERRY_*, which may name credentials files) stay out; the
            # operator's libguestfs tuning (LIBGUESTFS_PATH for a fixed appliance, …) in.
            decided = ("LIBGUESTFS_BACKEND", "LIBGUESTFS_BACKEND_SETTINGS", "VIRT_V2V_TMPDIR")
            env = {
                key: value
                for key, value in os.environ.items()
                if not key.startswith("FERRY_") and key not in decided
            }
            env["LIBGUESTFS_CACHEDIR"] = str(
                self.settings.appliance_cache_dir
                or os.environ.get("LIBGUESTFS_CACHEDIR", "/var/tmp")  # noqa: S108
            )
        env.update(acceleration.environment())
        env["LANG"] = env["LC_ALL"] = "C.UTF-8"  # messages we parse are the untranslated ones
        return env

    async def convert(self, job: Job, on_progress: ProgressCallback | None = None) -> Result:
        """Convert ``job``'s guest; :class:`ConversionError` says why it could not."""
        check_volumes(job.inventory, job.volumes)
        try:
            placed = await self.workloads.place_volumes(job.namespace, job.volumes)
        except WorkloadError as error:
            raise ConversionError(str(error)) from None
        log = log_path(self.data_dir, job.migration, job.vm_key)
        log.parent.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        with contextlib.ExitStack() as stack:
            workdir = rundirs.claim(
                Path(tempfile.mkdtemp(prefix="ferry-v2v-", dir=self.settings.work_dir))
            )
            stack.callback(shutil.rmtree, workdir, ignore_errors=True)
            self.settings.large_tmp_dir.mkdir(parents=True, exist_ok=True)
            large = rundirs.claim(
                Path(tempfile.mkdtemp(prefix="ferry-v2v-", dir=self.settings.large_tmp_dir))
            )
            stack.callback(shutil.rmtree, large, ignore_errors=True)
            log_file = stack.enter_context(log.open("ab"))
            env = await self.environment()
            if self.workloads.workloads_run_here:
                scratch = rundirs.scratch_dir(workdir)
                stack.callback(shutil.rmtree, scratch, ignore_errors=True)
                env.update(TMPDIR=str(scratch), VIRT_V2V_TMPDIR=str(large))
            else:  # a pod's work directory is its own scratch space (an emptyDir)
                env.update(TMPDIR=_POD_WORKDIR, VIRT_V2V_TMPDIR=_POD_WORKDIR)
            reader = OutputReader(self.settings.error_lines)
            seen = str(workdir) if self.workloads.workloads_run_here else _POD_WORKDIR
            run = _Run(job, workdir, seen, placed, env)
            try:
                decisions = await self._run(run, log_file, reader, on_progress)
                system = await self._inspect(run, decisions, log_file)
            except inspection.InspectionFailed as error:
                _note(log_file, f"failed: {error.reason}")
                raise ConversionError(error.reason, error.detail, log) from None
            except ConversionError as error:
                error.log = log
                _note(log_file, f"failed: {error.reason}")
                raise
            except asyncio.CancelledError:
                _note(log_file, "canceled: virt-v2v and its helpers were stopped")
                raise
            seconds = time.monotonic() - started
            _note(log_file, f"converted in {seconds:.1f}s")
            return Result(inspection.summary(system, decisions, job.inventory), seconds, log)
        raise AssertionError("unreachable")  # pragma: no cover - ExitStack never swallows

    async def _inspect(
        self, run: _Run, decisions: Decisions, log_file: BinaryIO
    ) -> inspection.InspectedOs:
        logged = inspection.from_log(decisions)
        if logged is not None and not self.settings.verify_with_inspector:
            return logged
        try:
            return await inspection.inspect_disks(
                self.workloads,
                self.settings.virt_inspector,
                run.job.volumes,
                run.placed,
                env=run.env,
                log_file=log_file,
                time_limit=self.settings.inspect_timeout_seconds,
                grace=self.settings.kill_grace_seconds,
                workdir=run.seen,
                **run.owner(),
            )
        except WorkloadLost as error:
            raise ConversionLost(f"virt-inspector: {error}") from None
        except WorkloadError as error:
            raise ConversionError(f"virt-inspector: {error}") from None

    async def _run(
        self,
        run: _Run,
        log_file: BinaryIO,
        reader: OutputReader,
        on_progress: ProgressCallback | None,
    ) -> Decisions:
        job, workdir = run.job, run.workdir
        verbose = ["-v", "-x"] if self.settings.verbose else []
        links: dict[str, str] = {}
        hold: InputHold | None = None  # what the provider keeps while virt-v2v reads
        paced: contextlib.AbstractAsyncContextManager[None] = contextlib.nullcontext()
        secret_dir = f"{run.seen}/{_INPUT}"
        if job.mode is ConversionMode.FULL:
            if job.source is None:
                raise ConversionError("full conversion needs a provider to read the source")
            try:
                # what the provider moves itself before virt-v2v starts is paced per
                # chunk; the captive helpers' reads while it runs, below
                given = await job.source.v2v_input(job.inventory, workdir, pace=job.rate)
            except ProviderError as error:
                raise ConversionError(f"the provider cannot open the VM: {error}") from None
            if given.host_files and not self.workloads.workloads_run_here:
                raise ConversionError(
                    "the provider's input is files of the conversion-service's host "
                    f"({', '.join(Path(f).name for f in given.host_files)}), which a "
                    "conversion pod cannot read: on this platform read the source another "
                    "way (for vSphere: diskTransfer: datastore)"
                )
            _secure(given.files, workdir)
            given_argv, files, captive = provider_files(given, workdir, secret_dir, run.seen)
            try:  # the helpers' reads under the budgets: fed here, or by the pod itself
                pace = pacing.plan(
                    self.workloads,
                    job.rate,
                    job.rate_step,
                    captive,
                    workdir=workdir,
                    seen=run.seen,
                    secret_dir=secret_dir,
                )
            except WorkloadError as error:
                raise ConversionError(str(error)) from None
            captive, paced, wrap = pace.captive, pace.grants, pace.wrap
            files = {**files, **pace.files}
            links = output_links(job.volumes, run.placed)
            argv = [
                self.settings.virt_v2v,
                *verbose,
                *given_argv,
                "-o",
                "local",
                "-os",
                f"{run.seen}/{_OUT}",
                "-on",
                GUEST_NAME,
                "-of",
                job.volumes[0].format or "raw",
            ]
            argv = wrap(run_captive(argv, captive))
            shares, hold = dict(given.shares), given.hold
        else:
            files = {"domain.xml": domain.domain_xml(job.inventory, job.volumes, run.placed)}
            argv = [
                self.settings.virt_v2v_in_place,
                *verbose,
                "-i",
                "libvirtxml",
                f"{secret_dir}/domain.xml",
            ]
            shares = {}

        _note(log_file, f"{job.mode.value} conversion of {job.inventory.name!r}")
        _note(log_file, shlex.join(argv))

        async def on_line(line: str) -> None:
            update = reader.feed(line)
            if update is not None and on_progress is not None:
                await on_progress(update)

        workload = Workload(
            name=f"{job.mode.value}-conversion",
            argv=argv,
            env=run.env,
            volumes={name: placed.mount for name, placed in run.placed.items()},
            workdir=run.seen,
            time_limit=job.timeout_seconds,
            grace=self.settings.kill_grace_seconds,
            secret_files=files,
            secret_dir=secret_dir,
            links=links,
            shares=shares,
            **run.owner(),
        )
        try:
            async with hold or contextlib.nullcontext(), paced:  # the input, its grants
                await self._workload(workload, log_file, reader, on_line)
        except ProviderError as error:  # it ended anyway: the provider's reason, retried
            raise ConversionError(str(error), reader.tail(), transient=True) from None
        if job.mode is ConversionMode.FULL:
            check_outputs(workdir / _OUT, links)
            restore_sizes(job.volumes)
        return reader.decisions

    async def _workload(
        self,
        workload: Workload,
        log_file: BinaryIO,
        reader: OutputReader,
        on_line: Callable[[str], Awaitable[None]],
    ) -> None:
        """Run it; a failure is a :class:`ConversionError` with its reason."""
        watch = appliance.Watch(self.settings.appliance_silence_seconds)

        async def watched(line: str) -> None:
            watch.feed(line)
            await on_line(line)

        try:
            status = await watch.guard(self.workloads.run_workload(workload, log_file, watched))
        except appliance.ApplianceHung as error:
            _note(log_file, str(error))
            raise ConversionError(str(error), reader.tail(), transient=True) from None
        except WorkloadTimedOut as error:
            raise ConversionTimedOut(
                f"conversion exceeded its time limit of {error.seconds:g}s and was killed",
                reader.tail(),
            ) from None
        except WorkloadLost as error:  # evicted, its node gone: nothing said it would fail
            raise ConversionLost(str(error), reader.tail()) from None
        except WorkloadError as error:  # it never started, or wrote around its volumes
            raise ConversionError(str(error)) from None
        if status != 0:
            said, lines = reader.failure(self.settings.error_lines)
            reason, detail = reasons.in_user_words(said, lines)
            raise ConversionError(reason, detail, transient=reasons.transient(status, said, lines))


@dataclass(frozen=True)
class _Run:
    """One run's facts that every workload of it shares."""

    job: Job
    workdir: Path  # this host's (the provider's files are written here)
    seen: str  # the work directory as the workload sees it
    placed: Mapping[str, Placed]
    env: dict[str, str]

    def owner(self) -> dict[str, Any]:
        """Where its workloads run and whose they are (a pod's namespace and labels)."""
        return {
            "namespace": self.job.namespace,
            "labels": labels_for(self.job.migration, self.job.vm_key),
        }


def _note(log_file: BinaryIO, message: str) -> None:
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    log_file.write(f"\n=== {stamp} ferry: {message}\n".encode())
    log_file.flush()
