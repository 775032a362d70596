"""One guest conversion: virt-v2v (full) or virt-v2v-in-place, start to inspection.

Full mode writes straight into the bound volumes
    virt-v2v has no output that takes "these existing files/devices". Its
    ``-o local -os DIR`` output writes disk *i* to ``DIR/NAME-sd<x>`` by opening
    that path: libguestfs's ``disk_create`` opens it with ``O_CREAT|O_TRUNC``
    (which follows a symlink, keeps the target's inode, and on a block device
    truncates nothing), then nbdkit's file plugin serves it and nbdcopy writes
    the converted disk through it. So each run gets a private directory of
    symlinks named as virt-v2v expects (``guest-sda`` → the first volume's file
    or block device, …) and ``-on guest`` fixes NAME. This is what Forklift's
    conversion pod does with ``/mnt/disks/diskN/disk.img`` and ``/dev/blockN``.
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
    ends. Nothing secret is on the command line, so logging the argv is safe.

Everything a run creates (work directory, virt-v2v's overlays and sockets)
goes when the run ends; only the log stays, under
``<data>/logs/conversion/<migration>/<vm>.log``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import shutil
import stat
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO, Protocol

from ferry.conversion_service import accel, domain, inspection, reasons
from ferry.conversion_service.progress import Decisions, OutputReader, Progress
from ferry.conversion_service.settings import ConversionSettings
from ferry.platform.workloads import (
    Workload,
    WorkloadError,
    WorkloadPlatform,
    WorkloadTimedOut,
)
from ferry.proto import subjects
from ferry.proto.conversion import ConversionMode
from ferry.proto.inventory import Inspection, Vm, Volume
from ferry.providers.base import ProviderError, V2vInput

GUEST_NAME = "guest"  # virt-v2v's -on: fixes the output file names, not the VM's name

ProgressCallback = Callable[[Progress], Awaitable[None]]


class V2vSource(Protocol):
    """The part of a provider a full conversion needs."""

    async def v2v_input(self, vm: Vm, workdir: Path) -> V2vInput: ...


class ConversionError(Exception):
    """A conversion that cannot succeed as asked: reason, supporting lines, log path."""

    def __init__(self, reason: str, detail: Sequence[str] = (), log: Path | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = list(detail)
        self.log = log


class ConversionTimedOut(ConversionError):
    """The run exceeded its time limit; virt-v2v and its helpers were killed."""


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


@dataclass(frozen=True)
class Result:
    inspection: Inspection
    seconds: float
    log: Path


def log_path(data_dir: Path, migration: str, vm: str) -> Path:
    folder = data_dir / "logs" / "conversion" / subjects.token(migration)
    return folder / f"{subjects.token(vm)}.log"


def check_volumes(vm: Vm, volumes: Sequence[Volume]) -> None:
    """Every source disk has a volume that exists on this host, formats agree."""
    if len(volumes) != len(vm.disks):
        raise ConversionError(
            f"VM {vm.name!r} has {len(vm.disks)} disk(s) but {len(volumes)} volume(s) were "
            "bound; virt-v2v writes one volume per source disk"
        )
    for volume in volumes:
        if not volume.path:
            raise ConversionError(f"volume {volume.name!r} has no local path on this host")
        if not Path(volume.path).exists():
            raise ConversionError(f"volume {volume.name!r}: {volume.path} does not exist")
    formats = {volume.format or "raw" for volume in volumes}
    if len(formats) > 1 or not formats <= {"raw", "qcow2"}:
        raise ConversionError(
            f"volumes must all be raw or all qcow2 for virt-v2v, got {sorted(formats)}"
        )


def _secure(files: Sequence[str], workdir: Path) -> None:
    """The provider's files: inside the run directory and readable by us only."""
    for name in files:
        path = Path(name)
        if not path.resolve().is_relative_to(workdir.resolve()):
            raise ConversionError(f"provider wrote {path} outside the run's work directory")
        if path.exists():
            path.chmod(0o600)


def link_outputs(outdir: Path, volumes: Sequence[Volume]) -> list[Path]:
    """``outdir/guest-sda`` → first volume, … as virt-v2v ``-o local`` names them."""
    links = []
    for index, volume in enumerate(volumes):
        link = outdir / f"{GUEST_NAME}-sd{domain.drive_name(index)}"
        link.symlink_to(Path(volume.path).resolve())
        links.append(link)
    return links


def check_outputs(outdir: Path, links: Sequence[Path], volumes: Sequence[Volume]) -> None:
    """virt-v2v wrote through every link, and wrote nothing else."""
    for link, volume in zip(links, volumes, strict=True):
        if not link.is_symlink():
            raise ConversionError(
                f"virt-v2v replaced the link to {volume.path} with a file; the volume "
                "was not written"
            )
    expected = {link.name for link in links}
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


_OWNER_FILE = ".ferry-owner"


def _process_start(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (clock ticks since boot), or None if it is gone.

    A pid alone can be reused; pid plus start time names one process for good.
    """
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat_line.rsplit(")", 1)[1].split()[19]


def _claim(directory: Path) -> Path:
    (directory / _OWNER_FILE).write_text(f"{os.getpid()} {_process_start(os.getpid())}\n")
    return directory


def sweep_orphans(*folders: Path) -> list[Path]:
    """Remove run directories whose owning service process no longer exists.

    A conversion-service killed with -9 cannot clean up after itself; the next one
    to start on the host does, without touching the runs of replicas still alive.
    """
    removed = []
    for folder in folders:
        for run in folder.glob("ferry-v2v-*"):
            try:
                pid, started = (run / _OWNER_FILE).read_text().split()
            except (OSError, ValueError):
                continue  # not (yet) claimed: leave it alone
            if _process_start(int(pid)) != started:
                shutil.rmtree(run, ignore_errors=True)
                removed.append(run)
    return removed


class Converter:
    """Runs conversions on this host; one instance per service."""

    def __init__(
        self, settings: ConversionSettings, data_dir: Path, workloads: WorkloadPlatform
    ) -> None:
        self.settings = settings
        self.data_dir = data_dir
        self.workloads = workloads
        sweep_orphans(settings.work_dir, settings.large_tmp_dir)

    async def environment(self) -> dict[str, str]:
        acceleration = await accel.acceleration(self.settings)
        # Our own settings (FERRY_*, which may name credentials files) stay out; the
        # operator's libguestfs tuning (LIBGUESTFS_PATH for a fixed appliance, …) stays in.
        decided = ("LIBGUESTFS_BACKEND", "LIBGUESTFS_BACKEND_SETTINGS", "VIRT_V2V_TMPDIR")
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith("FERRY_") and key not in decided
        }
        env.update(acceleration.environment())
        env["LIBGUESTFS_CACHEDIR"] = str(
            self.settings.appliance_cache_dir or os.environ.get("LIBGUESTFS_CACHEDIR", "/var/tmp")  # noqa: S108
        )
        env["LANG"] = env["LC_ALL"] = "C.UTF-8"  # messages we parse are the untranslated ones
        return env

    async def convert(self, job: Job, on_progress: ProgressCallback | None = None) -> Result:
        """Convert ``job``'s guest; :class:`ConversionError` says why it could not."""
        check_volumes(job.inventory, job.volumes)
        log = log_path(self.data_dir, job.migration, job.vm_key)
        log.parent.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        with contextlib.ExitStack() as stack:
            workdir = _claim(
                Path(tempfile.mkdtemp(prefix="ferry-v2v-", dir=self.settings.work_dir))
            )
            stack.callback(shutil.rmtree, workdir, ignore_errors=True)
            self.settings.large_tmp_dir.mkdir(parents=True, exist_ok=True)
            large = _claim(
                Path(tempfile.mkdtemp(prefix="ferry-v2v-", dir=self.settings.large_tmp_dir))
            )
            stack.callback(shutil.rmtree, large, ignore_errors=True)
            log_file = stack.enter_context(log.open("ab"))
            env = await self.environment()
            env.update(TMPDIR=str(workdir / "tmp"), VIRT_V2V_TMPDIR=str(large))
            (workdir / "tmp").mkdir()
            reader = OutputReader(self.settings.error_lines)
            try:
                decisions = await self._run(job, workdir, env, log_file, reader, on_progress)
                system = await self._inspect(job, decisions, env, log_file)
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
        self, job: Job, decisions: Decisions, env: dict[str, str], log_file: BinaryIO
    ) -> inspection.InspectedOs:
        logged = inspection.from_log(decisions)
        if logged is not None and not self.settings.verify_with_inspector:
            return logged
        try:
            return await inspection.inspect_disks(
                self.workloads,
                self.settings.virt_inspector,
                job.volumes,
                env=env,
                log_file=log_file,
                time_limit=self.settings.inspect_timeout_seconds,
                grace=self.settings.kill_grace_seconds,
            )
        except WorkloadError as error:
            raise ConversionError(f"virt-inspector: {error}") from None

    async def _run(
        self,
        job: Job,
        workdir: Path,
        env: dict[str, str],
        log_file: BinaryIO,
        reader: OutputReader,
        on_progress: ProgressCallback | None,
    ) -> Decisions:
        verbose = ["-v", "-x"] if self.settings.verbose else []
        links: list[Path] = []
        outdir = workdir / "out"
        if job.mode is ConversionMode.FULL:
            if job.source is None:
                raise ConversionError("full conversion needs a provider to read the source")
            try:
                given = await job.source.v2v_input(job.inventory, workdir)
            except ProviderError as error:
                raise ConversionError(f"the provider cannot open the VM: {error}") from None
            _secure(given.files, workdir)
            outdir.mkdir()
            links = link_outputs(outdir, job.volumes)
            argv = [
                self.settings.virt_v2v,
                *verbose,
                *given.argv,
                "-o",
                "local",
                "-os",
                str(outdir),
                "-on",
                GUEST_NAME,
                "-of",
                job.volumes[0].format or "raw",
            ]
        else:
            document = workdir / "domain.xml"
            document.write_bytes(domain.domain_xml(job.inventory, job.volumes))
            argv = [self.settings.virt_v2v_in_place, *verbose, "-i", "libvirtxml", str(document)]

        _note(log_file, f"{job.mode.value} conversion of {job.inventory.name!r}")
        _note(log_file, shlex.join(argv))

        async def on_line(line: str) -> None:
            update = reader.feed(line)
            if update is not None and on_progress is not None:
                await on_progress(update)

        try:
            workload = Workload(
                name=f"{job.mode.value}-conversion",
                argv=argv,
                env=env,
                volumes={v.name: v.path for v in job.volumes},
                workdir=str(workdir),
                time_limit=job.timeout_seconds,
                grace=self.settings.kill_grace_seconds,
            )
            status = await self.workloads.run_workload(workload, log_file, on_line)
        except WorkloadTimedOut as error:
            raise ConversionTimedOut(
                f"conversion exceeded its time limit of {error.seconds:g}s and was killed",
                reader.tail(),
            ) from None
        except WorkloadError as error:  # it never started: not on this platform, no volumes
            raise ConversionError(str(error)) from None
        if status != 0:
            reason, detail = reasons.in_user_words(*reader.failure(self.settings.error_lines))
            raise ConversionError(reason, detail)
        if job.mode is ConversionMode.FULL:
            check_outputs(outdir, links, job.volumes)
            restore_sizes(job.volumes)
        return reader.decisions


def _note(log_file: BinaryIO, message: str) -> None:
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    log_file.write(f"\n=== {stamp} ferry: {message}\n".encode())
    log_file.flush()
