"""The OVA provider: a directory of ``.ova`` files and unpacked ``.ovf`` folders.

The directory (local, or an NFS export mounted by the platform) is the import
area; nothing outside it is ever opened. Each package is checked when it is first
seen (archive index, descriptor, manifest entry of the descriptor, every disk
image's header and ``qemu-img info``) and the result is cached until the file
changes. Each package is read in isolation: whatever goes wrong with one (an
error, or any exception at all) becomes that package's verdict and never hides
another. A package whose descriptor cannot be used is rejected as a whole; one
whose descriptor reads but some disk does not keeps its VMs, each with the
reason per disk. Only VMs with every disk usable are in :meth:`inventory`;
:meth:`packages` lists everything with its verdict, and asking for an unusable
VM raises its first reason, so the user learns which file is wrong and why.

Disk digests from the manifest are checked when a disk is opened (once per file
version): hashing every disk on every inventory would read the whole share. For
a conversion they are checked on private copies, the ones virt-v2v then reads.

OVA VMs are never running: power operations are no-ops that report "off".

An OVA has no datastores. Every disk of an OVA provider is reported on one
storage, :data:`STORAGE` (``ova``), which is the key a StorageMap names for
them: ``source: {name: ova}``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import msgspec

from ferry.proto.inventory import Disk, DiskFormat, Package, PowerState, ProviderType, Status, Vm
from ferry.providers.base import DiskNotFound, Pace, ProviderError, V2vInput, VmNotFound
from ferry.providers.ova import descriptor, domainxml, errors, guests, image, manifest, staging
from ferry.providers.ova.disks import DiskRef
from ferry.providers.ova.limits import DEFAULT, Limits
from ferry.providers.ova.package import Archive, Folder, safe_name
from ferry.providers.ova.package import Package as OvfPackage
from ferry.providers.ova.reader import OvaDiskReader

log = logging.getLogger(__name__)

STORAGE = "ova"  # the one source storage of every OVA disk (a StorageMap's key)


@dataclass
class Loaded:
    """One checked package: its VMs and the checked images of their disks."""

    key: str
    package: OvfPackage
    vms: list[Vm]
    images: dict[tuple[str, str], image.Image]  # (vm id, disk id) → image
    files: dict[tuple[str, str], str]  # (vm id, disk id) → package file name
    entries: dict[str, manifest.Entry]
    refs: dict[tuple[str, str], DiskRef] = field(default_factory=dict)  # as the OVF says
    verified: set[str] = field(default_factory=set)
    problems: dict[str, list[errors.OvaError]] = field(default_factory=dict)  # by VM id

    def first_problem(self) -> errors.OvaError | None:
        return next((p for found in self.problems.values() for p in found), None)


@dataclass
class Scan:
    """What a pass over the import directory found."""

    loaded: dict[str, Loaded] = field(default_factory=dict)  # read, perhaps with bad disks
    rejected: dict[str, errors.OvaError] = field(default_factory=dict)  # first reason of each
    paths: dict[str, Path] = field(default_factory=dict)


class OvaProvider:
    """A :class:`ferry.providers.base.Provider` over an import directory."""

    def __init__(
        self,
        root: Path,
        *,
        verify_digests: bool = True,
        limits: Limits = DEFAULT,
        share: str = "",
    ) -> None:
        self.root = Path(root)
        # The NFS export (``nfs://server/path``) that ``root`` is the mount of, if any:
        # a conversion that runs elsewhere (a pod) mounts it read-only at ``root`` too.
        self.share = share
        self.verify_digests = verify_digests
        self.limits = limits
        # By file and deployment option ("" for the default one).
        self._cache: dict[tuple[Path, str], tuple[tuple[int, int], Loaded | errors.OvaError]] = {}

    # -- reachability and inventory ----------------------------------------------

    async def check(self) -> None:
        try:
            info = self.root.stat()
        except OSError as exc:
            raise ProviderError(f"OVA directory {self.root}: {exc.strerror}") from None
        if not stat.S_ISDIR(info.st_mode) or not os.access(self.root, os.R_OK | os.X_OK):
            raise ProviderError(f"OVA directory {self.root} is not a readable directory")

    async def inventory(self) -> list[Vm]:
        found = await self.scan()
        usable = (vm for pkg in found.loaded.values() for vm in pkg.vms if vm.status is Status.OK)
        return sorted(usable, key=lambda v: v.id)

    async def packages(self) -> list[Package]:
        """Every package of the directory with its verdict, rejected ones included."""
        found = await self.scan()
        listed = []
        for key, path in sorted(found.paths.items()):
            loaded = found.loaded.get(key)
            if loaded is None:
                reason = _one_line(found.rejected[key].problem)
                listed.append(
                    Package(id=key, path=str(path), status=Status.REJECTED, errors=[reason])
                )
                continue
            reasons = [f"VM {vm.name!r}: {e}" for vm in loaded.vms for e in vm.errors]
            status = Status.REJECTED if reasons else Status.OK
            listed.append(
                Package(id=key, path=str(path), status=status, errors=reasons, vms=loaded.vms)
            )
        return listed

    async def scan(self) -> Scan:
        """Every package in the directory, checked; rejected ones with their error."""
        await self.check()
        found = Scan()
        for key, path in await asyncio.to_thread(self._candidates):
            found.paths[key] = path
            result = await self._load_cached(key, path)
            if isinstance(result, errors.OvaError):
                log.warning("rejected OVA package %s: %s", key, result.problem)
                found.rejected[key] = result
                continue
            found.loaded[key] = result
            problem = result.first_problem()
            if problem is not None:
                log.warning("OVA package %s has unusable disks: %s", key, problem.problem)
                found.rejected[key] = problem
        return found

    async def load(self, path: Path) -> list[Vm]:
        """Check one package (an .ova or an .ovf inside the root) and return its VMs."""
        key = self._key(path)
        result = await self._load_cached(key, path)
        if isinstance(result, errors.OvaError):
            raise result
        problem = result.first_problem()
        if problem is not None:
            raise problem
        return result.vms

    async def vm(self, id_or_name: str) -> Vm:
        found = await self.scan()
        vms = [vm for pkg in found.loaded.values() for vm in pkg.vms]
        for vm in vms:
            if vm.id == id_or_name:
                return _usable(found.loaded[vm.id.rsplit("/", 1)[0]], vm)
        named = [vm for vm in vms if vm.name == id_or_name]
        if len(named) == 1:
            return _usable(found.loaded[named[0].id.rsplit("/", 1)[0]], named[0])
        if len(named) > 1:
            raise VmNotFound(id_or_name, [f"{vm.id} (ambiguous name)" for vm in named])
        package = id_or_name.rsplit("/", 1)[0]
        if package in found.rejected:
            raise found.rejected[package]
        raise VmNotFound(id_or_name, [vm.id for vm in vms])

    async def configured(self, vm: Vm, option: str) -> Vm:
        """``vm`` as its deployment option ``option`` describes it (a Plan's choice).

        CPU, memory, NICs and disks are the ones of that configuration, and every
        later call given the returned VM (disks, virt-v2v input) reads that
        configuration. An option the package does not offer, or one whose disks
        cannot be used, raises the reason.
        """
        if option == vm.configuration:
            return vm
        if not vm.configurations:
            raise errors.DeploymentOptionError(
                vm.id, f"deployment option {option!r} asked for, but the VM offers none"
            )
        loaded = await self._loaded_for(vm.id, option)
        return _usable(loaded, next(v for v in loaded.vms if v.id == vm.id))

    # -- power: an OVA is a file, never a running VM -----------------------------

    async def power_state(self, vm: Vm) -> PowerState:
        return PowerState.OFF

    async def shutdown(self, vm: Vm, timeout: float) -> bool:  # noqa: ASYNC109
        return False

    async def power_on(self, vm: Vm) -> None:
        log.info("power on of OVA VM %s is a no-op", vm.id)

    # -- disks and conversion ----------------------------------------------------

    def open_disk(self, vm: Vm, disk_id: str) -> OvaDiskReader:
        return OvaDiskReader(
            f"{vm.id}:{disk_id}",
            lambda: self._disk(vm.id, disk_id, vm.configuration),
            self.limits,
        )

    async def _disk(
        self, vm_id: str, disk_id: str, option: str
    ) -> tuple[image.Image, _Verify | None]:
        loaded = await self._loaded_for(vm_id, option)
        checked = loaded.images.get((vm_id, disk_id))
        if checked is None:
            for problem in loaded.problems.get(vm_id, []):
                raise problem
            raise DiskNotFound(vm_id, disk_id)
        name = loaded.files.get((vm_id, disk_id))  # None: a blank disk, nothing to verify
        verify = None
        if self.verify_digests and name in loaded.entries and name not in loaded.verified:
            verify = _Verify(loaded, name)
        return checked, verify

    async def v2v_input(self, vm: Vm, workdir: Path, *, pace: Pace | None = None) -> V2vInput:
        """``-i libvirtxml`` over private, digest-checked copies of the disks.

        Each file is copied into ``workdir`` and its manifest digest checked on the
        bytes copied (:mod:`staging`), always, whatever ``verify_digests`` says:
        virt-v2v reads exactly what was checked. The copies are checked again as
        images (:func:`image.inspect`), and the document (:mod:`domainxml`) names them.
        The copies are the conversion's reads of the package: ``pace`` paces them.
        """
        loaded = await self._loaded_for(vm.id, vm.configuration)
        listed = _usable(loaded, next(v for v in loaded.vms if v.id == vm.id))
        staged = staging.Staged(loaded.package, workdir / "disks", loaded.entries)
        if pace is not None:
            staged.throttle = staging.blocking(pace, asyncio.get_running_loop(), staged.stopped)
        sources = []
        for disk in vm.disks:
            checked, ref = loaded.images.get((vm.id, disk.id)), loaded.refs.get((vm.id, disk.id))
            if checked is None or ref is None:
                raise DiskNotFound(vm.id, disk.id)
            for location in checked.files:  # copied off the event loop, then inspected
                try:
                    await asyncio.to_thread(staged.locate, location.name)
                except asyncio.CancelledError:
                    staged.stopped.set()  # the thread cannot be canceled: it stops itself
                    raise
            sources.append((await image.inspect(staged, ref)).source)
        document = workdir / "source.xml"
        facts = msgspec.structs.replace(listed, disks=vm.disks)
        await asyncio.to_thread(document.write_bytes, domainxml.source_xml(facts, sources))
        shares = {str(self.root): self.share} if self.share else {}
        return V2vInput(
            argv=["-i", "libvirtxml", str(document)], files=[str(document)], shares=shares
        )

    async def verify(self, vm: Vm) -> None:
        """Check every manifest digest of ``vm``'s disks now (reads them whole)."""
        loaded = await self._loaded_for(vm.id, vm.configuration)
        for (vm_id, _), name in loaded.files.items():
            if vm_id == vm.id and name in loaded.entries and name not in loaded.verified:
                await _Verify(loaded, name)()

    async def _loaded_for(self, vm_id: str, option: str = "") -> Loaded:
        """The package of ``vm_id`` (``<package key>/<VirtualSystem id>``), loaded
        in deployment option ``option`` ("" for the default one)."""
        key = vm_id.rsplit("/", 1)[0]
        safe_name(self.root, key)  # a VM id from a message must not walk out of the root
        for suffix in (".ova", ".ovf"):
            path = self.root / (key + suffix)
            if path.is_file() or path.is_symlink():
                result = await self._load_cached(key, path, option)
                if isinstance(result, errors.OvaError):
                    raise result
                if any(vm.id == vm_id for vm in result.vms):
                    return result
        raise VmNotFound(vm_id)

    # -- discovery and loading ---------------------------------------------------

    def _candidates(self) -> list[tuple[str, Path]]:
        found: list[tuple[str, Path]] = []
        for entry in sorted(self.root.iterdir()):
            info = entry.lstat()
            if stat.S_ISLNK(info.st_mode):
                found.append((self._key(entry), entry))  # refused when loaded, with a reason
            elif stat.S_ISDIR(info.st_mode):
                try:
                    found.extend((self._key(p), p) for p in sorted(entry.glob("*.ovf")))
                except OSError:
                    found.append((self._key(entry), entry))  # refused when loaded, with a reason
            elif entry.suffix.lower() in (".ova", ".ovf"):
                found.append((self._key(entry), entry))
        return found

    def _key(self, path: Path) -> str:
        relative = Path(os.path.relpath(path, self.root))
        if relative.parts and relative.parts[0] == "..":
            raise errors.UnsafeMemberError(path, "outside the OVA directory")
        return relative.with_suffix("").as_posix()

    async def _load_cached(
        self, key: str, path: Path, option: str = ""
    ) -> Loaded | errors.OvaError:
        try:
            info = await asyncio.to_thread(path.lstat)
        except OSError as exc:
            return errors.OvaError(path, f"cannot read: {exc.strerror}")
        stamp = (info.st_mtime_ns, info.st_size)
        cached = self._cache.get((path, option))
        if cached is not None and cached[0] == stamp:
            return cached[1]
        result: Loaded | errors.OvaError
        try:
            result = await _load(key, path, info, self.limits, self.root.stat().st_dev, option)
        except errors.OvaError as exc:
            result = exc
        except OSError as exc:
            result = errors.OvaError(path, f"cannot read: {exc.strerror or exc}")
        except Exception as exc:  # one package's failure is its verdict, never the scan's
            log.debug("OVA package %s failed unexpectedly", path, exc_info=True)
            result = errors.OvaError(
                path, f"cannot be read: {type(exc).__name__}: {_one_line(str(exc))}"
            )
        self._cache[(path, option)] = (stamp, result)
        return result


class _Verify:
    """Check one file's manifest digest off the event loop, once per file version."""

    def __init__(self, loaded: Loaded, name: str) -> None:
        self.loaded, self.name = loaded, name

    async def __call__(self) -> None:
        entry = self.loaded.entries[self.name]
        await asyncio.to_thread(manifest.verify, self.loaded.package, entry)
        self.loaded.verified.add(self.name)


async def _load(
    key: str, path: Path, info: os.stat_result, limits: Limits, root_device: int, option: str
) -> Loaded:
    if stat.S_ISLNK(info.st_mode):
        raise errors.UnsafeMemberTypeError(path, "is a symlink; copy the file into the directory")
    if info.st_dev != root_device:
        # A mount inside the import area puts someone else's files under a clean name.
        raise errors.UnsafeMemberTypeError(
            path, "lies on another filesystem than the import directory (a mount inside it)"
        )
    if stat.S_ISDIR(info.st_mode):
        raise errors.OvaError(path, "the folder cannot be listed (check its permissions)")
    if path.suffix.lower() == ".ova":
        package: OvfPackage = await asyncio.to_thread(Archive, path, limits)
    else:
        package = Folder(path, limits)
    text = package.read_small(package.descriptor)
    entries = manifest.of_package(package)
    if package.descriptor in entries:
        manifest.verify(package, entries[package.descriptor])
    systems = descriptor.parse(str(package.source), text, limits, option)
    loaded = Loaded(key, package, [], {}, {}, entries)
    notes = manifest.package_notes(package, entries)
    for system in systems:
        loaded.vms.append(await _vm(loaded, system, notes, several=len(systems) > 1))
    return loaded


async def _vm(loaded: Loaded, system: descriptor.System, notes: list[str], *, several: bool) -> Vm:
    # The VirtualSystem id is encoded so that any id (slashes, spaces, colons) keeps
    # the VM id a "<package>/<system>" pair; names derived from it are made safe
    # where they become names (volumes, Kubernetes objects).
    vm_id = f"{loaded.key}/{quote(system.id, safe='')}"
    warnings = [*system.warnings, *notes]
    if several:
        warnings.append("the package holds several VMs; virt-v2v converts only the first")
    disks: list[Disk] = []
    problems: list[errors.OvaError] = []
    for ref in system.disks:
        disk, problem = await _disk(loaded, vm_id, ref, warnings)
        disks.append(disk)
        if problem is not None:
            problems.append(problem)
    if problems:
        loaded.problems[vm_id] = problems
    # Known before any copy: the VM is refused in preflight, not after minutes in virt-v2v.
    concerns = guests.concerns(system.guest_os)
    concerns += (
        []
        if problems or concerns
        else await image.nothing_to_convert(
            [(ref.disk_id, loaded.images[(vm_id, ref.disk_id)]) for ref in system.disks],
            loaded.package.limits,
        )
    )
    return Vm(
        id=vm_id,
        name=system.name,
        provider_type=ProviderType.OVA,
        power_state=PowerState.OFF,
        firmware=system.firmware,
        secure_boot=system.secure_boot,
        cpu_sockets=system.cpu_sockets,
        cpu_cores=system.cpu_cores,
        cpu_threads=system.cpu_threads,
        memory_mib=system.memory_mib,
        guest_os=system.guest_os,
        disks=disks,
        nics=list(system.nics),
        warnings=warnings,
        status=Status.REJECTED if problems else Status.OK,
        errors=[d.error for d in disks if d.error],
        configuration=system.configuration,
        configurations=system.configurations,
        concerns=concerns,
    )


async def _disk(
    loaded: Loaded, vm_id: str, ref: DiskRef, warnings: list[str]
) -> tuple[Disk, errors.OvaError | None]:
    """One disk of the inventory, and why it cannot be used when it cannot."""
    problem = ref.problem
    checked: image.Image | None = None
    if problem is None and loaded.entries and ref.file and ref.file not in loaded.entries:
        problem = errors.ManifestError(
            loaded.package.source, f"disk {ref.disk_id}: file {ref.file} is not in the manifest"
        )
    if problem is None:
        try:
            checked = await image.inspect(loaded.package, ref)
        except errors.OvaError as exc:
            problem = exc
    capacity = ref.capacity or 0
    if checked is not None:
        loaded.images[(vm_id, ref.disk_id)] = checked
        loaded.refs[(vm_id, ref.disk_id)] = ref
        if ref.file is not None:
            loaded.files[(vm_id, ref.disk_id)] = ref.file
        if checked.note:
            warnings.append(checked.note)
        if ref.capacity is None:
            capacity = checked.virtual_size
            warnings.append(
                f"disk {ref.disk_id} declares no capacity; its image's {capacity} bytes are used"
            )
    disk = Disk(
        id=ref.disk_id,
        name=ref.file or "",
        capacity=capacity,
        format=checked.format if checked is not None else (ref.declared or DiskFormat.RAW),
        allocated=ref.populated,
        bus=ref.bus,
        boot_order=ref.boot_order,
        storage=STORAGE,
        blank=ref.file is None and problem is None,
        error=_reason(ref, problem) if problem is not None else "",
    )
    return disk, problem


def _reason(ref: DiskRef, problem: errors.OvaError) -> str:
    """The problem in one line, naming the disk and its file once."""
    text = _one_line(problem.problem)
    if text.startswith(f"disk {ref.disk_id}"):
        return text
    return f"disk {ref.disk_id} ({ref.file or 'no file'}): {text}"


def _usable(loaded: Loaded, vm: Vm) -> Vm:
    for problem in loaded.problems.get(vm.id, []):
        raise problem
    return vm


def _one_line(text: str) -> str:
    return " ".join(text.split())[:500]
