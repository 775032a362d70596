"""The OVA provider: a directory of ``.ova`` files and unpacked ``.ovf`` folders.

The directory (local, or an NFS export mounted by the platform) is the import
area; nothing outside it is ever opened. Each package is checked when it is first
seen (archive index, descriptor, manifest entry of the descriptor, every disk
image's header and ``qemu-img info``) and the result is cached until the file
changes. A package that fails any check is left out of the inventory and its
error is kept: asking for one of its VMs raises that error, so the user learns
which file is wrong and why.

Disk digests from the manifest are checked when a disk is opened (once per file
version): hashing every disk on every inventory would read the whole share.

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

from ferry.proto.inventory import Disk, PowerState, ProviderType, Vm
from ferry.providers.base import DiskNotFound, ProviderError, V2vInput, VmNotFound
from ferry.providers.ova import descriptor, errors, image, manifest
from ferry.providers.ova.package import Archive, Folder, Package, safe_name
from ferry.providers.ova.reader import OvaDiskReader

log = logging.getLogger(__name__)

STORAGE = "ova"  # the one source storage of every OVA disk (a StorageMap's key)


@dataclass
class Loaded:
    """One checked package: its VMs and the checked images of their disks."""

    key: str
    package: Package
    vms: list[Vm]
    images: dict[tuple[str, str], image.Image]  # (vm id, disk id) → image
    files: dict[tuple[str, str], str]  # (vm id, disk id) → package file name
    entries: dict[str, manifest.Entry]
    verified: set[str] = field(default_factory=set)


@dataclass
class Scan:
    """What a pass over the import directory found."""

    loaded: dict[str, Loaded] = field(default_factory=dict)
    rejected: dict[str, errors.OvaError] = field(default_factory=dict)


class OvaProvider:
    """A :class:`ferry.providers.base.Provider` over an import directory."""

    def __init__(self, root: Path, *, verify_digests: bool = True) -> None:
        self.root = Path(root)
        self.verify_digests = verify_digests
        self._cache: dict[Path, tuple[tuple[int, int], Loaded | errors.OvaError]] = {}

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
        return sorted((vm for pkg in found.loaded.values() for vm in pkg.vms), key=lambda v: v.id)

    async def scan(self) -> Scan:
        """Every package in the directory, checked; rejected ones with their error."""
        await self.check()
        found = Scan()
        for key, path in await asyncio.to_thread(self._candidates):
            result = await self._load_cached(key, path)
            if isinstance(result, errors.OvaError):
                log.warning("rejected OVA package %s: %s", key, result.problem)
                found.rejected[key] = result
            else:
                found.loaded[key] = result
        return found

    async def load(self, path: Path) -> list[Vm]:
        """Check one package (an .ova or an .ovf inside the root) and return its VMs."""
        key = self._key(path)
        result = await self._load_cached(key, path)
        if isinstance(result, errors.OvaError):
            raise result
        return result.vms

    async def vm(self, id_or_name: str) -> Vm:
        found = await self.scan()
        vms = [vm for pkg in found.loaded.values() for vm in pkg.vms]
        for vm in vms:
            if vm.id == id_or_name:
                return vm
        named = [vm for vm in vms if vm.name == id_or_name]
        if len(named) == 1:
            return named[0]
        if len(named) > 1:
            raise VmNotFound(id_or_name, [f"{vm.id} (ambiguous name)" for vm in named])
        package = id_or_name.rsplit("/", 1)[0]
        if package in found.rejected:
            raise found.rejected[package]
        raise VmNotFound(id_or_name, [vm.id for vm in vms])

    # -- power: an OVA is a file, never a running VM -----------------------------

    async def power_state(self, vm: Vm) -> PowerState:
        return PowerState.OFF

    async def shutdown(self, vm: Vm, timeout: float) -> bool:  # noqa: ASYNC109
        return False

    async def power_on(self, vm: Vm) -> None:
        log.info("power on of OVA VM %s is a no-op", vm.id)

    # -- disks and conversion ----------------------------------------------------

    def open_disk(self, vm: Vm, disk_id: str) -> OvaDiskReader:
        return OvaDiskReader(f"{vm.id}:{disk_id}", lambda: self._disk(vm.id, disk_id))

    async def _disk(self, vm_id: str, disk_id: str) -> tuple[image.Image, _Verify | None]:
        loaded = await self._loaded_for(vm_id)
        checked = loaded.images.get((vm_id, disk_id))
        if checked is None:
            raise DiskNotFound(vm_id, disk_id)
        name = loaded.files[(vm_id, disk_id)]
        verify = None
        if self.verify_digests and name in loaded.entries and name not in loaded.verified:
            verify = _Verify(loaded, name)
        return checked, verify

    async def v2v_input(self, vm: Vm, workdir: Path) -> V2vInput:
        loaded = await self._loaded_for(vm.id)
        package = loaded.package
        target = package.source if isinstance(package, Archive) else package.source.parent
        return V2vInput(argv=["-i", "ova", str(target)])

    async def verify(self, vm: Vm) -> None:
        """Check every manifest digest of ``vm``'s disks now (reads them whole)."""
        loaded = await self._loaded_for(vm.id)
        for (vm_id, _), name in loaded.files.items():
            if vm_id == vm.id and name in loaded.entries and name not in loaded.verified:
                await _Verify(loaded, name)()

    async def _loaded_for(self, vm_id: str) -> Loaded:
        """The package of ``vm_id`` (``<package key>/<VirtualSystem id>``), loaded."""
        key = vm_id.rsplit("/", 1)[0]
        safe_name(self.root, key)  # a VM id from a message must not walk out of the root
        for suffix in (".ova", ".ovf"):
            path = self.root / (key + suffix)
            if path.is_file() or path.is_symlink():
                result = await self._load_cached(key, path)
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
                found.extend((self._key(p), p) for p in sorted(entry.glob("*.ovf")))
            elif entry.suffix.lower() in (".ova", ".ovf"):
                found.append((self._key(entry), entry))
        return found

    def _key(self, path: Path) -> str:
        relative = Path(os.path.relpath(path, self.root))
        if relative.parts and relative.parts[0] == "..":
            raise errors.UnsafeMemberError(path, "outside the OVA directory")
        return relative.with_suffix("").as_posix()

    async def _load_cached(self, key: str, path: Path) -> Loaded | errors.OvaError:
        try:
            info = await asyncio.to_thread(path.lstat)
        except OSError as exc:
            return errors.OvaError(path, f"cannot read: {exc.strerror}")
        stamp = (info.st_mtime_ns, info.st_size)
        cached = self._cache.get(path)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        result: Loaded | errors.OvaError
        try:
            result = await _load(key, path, info)
        except errors.OvaError as exc:
            result = exc
        except OSError as exc:
            result = errors.OvaError(path, f"cannot read: {exc.strerror or exc}")
        self._cache[path] = (stamp, result)
        return result


class _Verify:
    """Check one file's manifest digest off the event loop, once per file version."""

    def __init__(self, loaded: Loaded, name: str) -> None:
        self.loaded, self.name = loaded, name

    async def __call__(self) -> None:
        entry = self.loaded.entries[self.name]
        await asyncio.to_thread(manifest.verify, self.loaded.package, entry)
        self.loaded.verified.add(self.name)


async def _load(key: str, path: Path, info: os.stat_result) -> Loaded:
    if stat.S_ISLNK(info.st_mode):
        raise errors.UnsafeMemberTypeError(path, "is a symlink; copy the file into the directory")
    if path.suffix.lower() == ".ova":
        package: Package = await asyncio.to_thread(Archive, path)
    else:
        package = Folder(path)
    text = package.read_small(package.descriptor)
    entries = _manifest(package)
    if package.descriptor in entries:
        manifest.verify(package, entries[package.descriptor])
    systems = descriptor.parse(str(package.source), text)
    loaded = Loaded(key, package, [], {}, {}, entries)
    for system in systems:
        loaded.vms.append(await _vm(loaded, system, several=len(systems) > 1))
    return loaded


def _manifest(package: Package) -> dict[str, manifest.Entry]:
    name = package.manifest_name()
    if name is None:
        return {}
    entries = manifest.parse(package.source, name, package.read_small(name))
    for entry in entries.values():
        package.locate(entry.name)  # a listed file that is missing is an error
    return entries


async def _vm(loaded: Loaded, system: descriptor.System, *, several: bool) -> Vm:
    vm_id = f"{loaded.key}/{system.id}"
    warnings = list(system.warnings)
    if several:
        warnings.append("the package holds several VMs; virt-v2v converts only the first")
    disks: list[Disk] = []
    for ref in system.disks:
        if ref.file is None:
            warnings.append(f"disk {ref.disk_id} has no content file and is skipped")
            continue
        checked = await image.inspect(loaded.package, ref)
        if loaded.entries and ref.file not in loaded.entries:
            warnings.append(f"disk file {ref.file} is not in the manifest")
        loaded.images[(vm_id, ref.disk_id)] = checked
        loaded.files[(vm_id, ref.disk_id)] = ref.file
        disks.append(
            Disk(
                id=ref.disk_id,
                name=ref.file,
                capacity=ref.capacity,
                format=checked.format,
                allocated=ref.populated,
                bus=ref.bus,
                boot_order=ref.boot_order,
                storage=STORAGE,
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
    )
