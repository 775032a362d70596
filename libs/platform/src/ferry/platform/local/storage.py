"""The local platform's storage: claims, volumes and their data files on disk.

Layout under ``<data_dir>/volumes``::

    claims/<namespace>/<name>.json      one claim (PVC / DataVolume): a VolumeState
    storage/<class>/<pv>/pv.json        one bound volume ("PersistentVolume")
    storage/<class>/<pv>/disk.img       its data: Filesystem mode (raw or qcow2)
    storage/<class>/<pv>/block.raw      its data: Block mode (always raw)
    storage/<class>/<pv>/copy/          a transfer's checkpoint while one runs
    locks/<namespace>.lock              serialises record changes (every replica)

A storage class may be placed elsewhere (``storage_classes``), one directory
per class, like a provisioner per StorageClass. A claim record is the single
source of truth for what a claim is bound to: binding and re-binding are one
atomic replacement of that record, which is what makes a populator's re-bind
all-or-nothing.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path

import msgspec

from ferry.platform import durable
from ferry.platform.volumes import (
    DEFAULT_FILESYSTEM_OVERHEAD,
    InsufficientStorage,
    Phase,
    VolumeError,
    VolumeState,
)
from ferry.proto.inventory import VolumeMode


class StorageConfig(msgspec.Struct, frozen=True, kw_only=True):
    """What the store and the workloads need of :class:`~ferry.platform.settings.LocalSettings`.

    A plain struct, so that a workload process starts without loading pydantic.
    """

    data_dir: str
    storage_classes: dict[str, str] = msgspec.field(default_factory=dict)
    filesystem_overhead: float = DEFAULT_FILESYSTEM_OVERHEAD
    check_capacity: bool = True
    copy_workers: int = 2
    checkpoint_seconds: float = 10.0
    verify_readback: bool = True
    max_rate: float | None = None


class PvRecord(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    storage_class: str
    volume_mode: VolumeMode
    access_modes: list[str]
    capacity: int
    size: int
    format: str
    path: str
    labels: dict[str, str]
    claim: str  # namespace/name of the claim it was made for


_STATE = msgspec.json.Decoder(VolumeState)


class Store:
    """Synchronous access to the records; callers hold ``lock`` while changing them."""

    def __init__(self, config: StorageConfig) -> None:
        self.config = config
        self.root = Path(config.data_dir).resolve() / "volumes"

    # -- paths -------------------------------------------------------------------

    def claims_dir(self, namespace: str) -> Path:
        return self.root / "claims" / _safe(namespace)

    def claim_path(self, namespace: str, name: str) -> Path:
        return self.claims_dir(namespace) / f"{_safe(name)}.json"

    def storage_dir(self, storage_class: str) -> Path:
        custom = self.config.storage_classes.get(storage_class)
        return Path(custom) if custom else self.root / "storage" / _safe(storage_class)

    def pv_dir(self, storage_class: str, pv: str) -> Path:
        return self.storage_dir(storage_class) / _safe(pv)

    def copy_dir(self, state: VolumeState) -> Path:
        return self.pv_dir(state.storage_class, state.pv) / "copy"

    # -- locking -------------------------------------------------------------------

    @contextlib.contextmanager
    def lock(self, namespace: str) -> Iterator[None]:
        path = self.root / "locks" / f"{_safe(namespace)}.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def workload_lock(self, state: VolumeState) -> Iterator[None]:
        """One writer per volume: a second workload waits for the first to end."""
        path = self.pv_dir(state.storage_class, state.pv) / "workload.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    # -- claims --------------------------------------------------------------------

    def read(self, namespace: str, name: str) -> VolumeState | None:
        try:
            return _STATE.decode(self.claim_path(namespace, name).read_bytes())
        except FileNotFoundError:
            return None

    def write(self, state: VolumeState) -> VolumeState:
        path = self.claim_path(state.namespace, state.name)
        path.parent.mkdir(parents=True, exist_ok=True)
        durable.write_atomic(path, msgspec.json.encode(state))
        return state

    def create(self, state: VolumeState) -> bool:
        path = self.claim_path(state.namespace, state.name)
        path.parent.mkdir(parents=True, exist_ok=True)
        return durable.create_exclusive(path, msgspec.json.encode(state))

    def forget(self, namespace: str, name: str) -> bool:
        return durable.remove(self.claim_path(namespace, name))

    def claims(self, namespace: str) -> list[VolumeState]:
        directory = self.claims_dir(namespace)
        if not directory.is_dir():
            return []
        found = []
        for path in sorted(directory.glob("*.json")):
            with contextlib.suppress(FileNotFoundError):
                found.append(_STATE.decode(path.read_bytes()))
        return found

    def find(self, namespace: str, labels: Mapping[str, str]) -> list[VolumeState]:
        return [
            c
            for c in self.claims(namespace)
            if all(c.labels.get(k) == v for k, v in labels.items())
        ]

    # -- volumes (PVs) ---------------------------------------------------------------

    def check_capacity(self, claims: list[VolumeState]) -> None:
        """Refuse, naming the numbers, when a storage directory cannot hold ``claims``."""
        if not self.config.check_capacity:
            return
        need: dict[Path, int] = {}
        for claim in claims:
            directory = self.storage_dir(claim.storage_class)
            need[directory] = need.get(directory, 0) + claim.size
        for directory, wanted in need.items():
            directory.mkdir(parents=True, exist_ok=True)
            st = os.statvfs(directory)
            free = st.f_bavail * st.f_frsize
            if free < wanted:
                raise InsufficientStorage(
                    f"storage {directory} has {free} bytes free, the volumes need {wanted}"
                )

    def allocate(self, claim: VolumeState) -> VolumeState:
        """Give a claim its volume: data file of the disk's size, then bind (atomic)."""
        pv = f"pv-{claim.name}"
        directory = self.pv_dir(claim.storage_class, pv)
        directory.mkdir(parents=True, exist_ok=True)
        data = directory / ("block.raw" if claim.volume_mode == VolumeMode.BLOCK else "disk.img")
        make_data_file(data, claim.format, claim.capacity)
        record = PvRecord(
            name=pv,
            storage_class=claim.storage_class,
            volume_mode=claim.volume_mode,
            access_modes=list(claim.access_modes),
            capacity=claim.capacity,
            size=claim.size,
            format=claim.format,
            path=str(data),
            labels=dict(claim.labels),
            claim=f"{claim.namespace}/{claim.name}",
        )
        durable.write_atomic(directory / "pv.json", msgspec.json.encode(record))
        bound = msgspec.structs.replace(claim, pv=pv, path=str(data), phase=Phase.BOUND)
        return self.write(bound)

    def reset_data(self, state: VolumeState) -> None:
        """Empty a volume's data after a failed transfer (nothing half-written remains)."""
        if not state.pv:
            return
        data = Path(state.path)
        tmp = data.with_name(f".{data.name}.reset")
        make_data_file(tmp, state.format, state.capacity, replace=True)
        os.replace(tmp, data)
        durable.fsync_dir(data.parent)
        shutil.rmtree(self.copy_dir(state), ignore_errors=True)

    def delete_pv(self, storage_class: str, pv: str) -> bool:
        if not pv:
            return False
        directory = self.pv_dir(storage_class, pv)
        if not directory.exists():
            return False
        shutil.rmtree(directory)
        return True

    def pvs(self, storage_class: str) -> list[PvRecord]:
        directory = self.storage_dir(storage_class)
        found = []
        for path in sorted(directory.glob("*/pv.json")) if directory.is_dir() else []:
            with contextlib.suppress(FileNotFoundError, msgspec.DecodeError):
                found.append(msgspec.json.decode(path.read_bytes(), type=PvRecord))
        return found


def make_data_file(path: Path, fmt: str, capacity: int, *, replace: bool = False) -> None:
    """An empty disk image of ``capacity`` bytes; kept as it is when it already exists."""
    if path.exists() and not replace:
        return
    tmp = path.with_name(f".{path.name}.new")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    if fmt == "raw":
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.ftruncate(fd, capacity)
            os.fsync(fd)
        finally:
            os.close(fd)
    elif fmt == "qcow2":
        result = subprocess.run(
            ["qemu-img", "create", "-q", "-f", "qcow2", str(tmp), str(capacity)],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise VolumeError(f"cannot create a qcow2 volume: {result.stderr.strip()}")
    else:
        raise VolumeError(f"unsupported volume format {fmt!r} (raw or qcow2)")
    os.replace(tmp, path)
    durable.fsync_dir(path.parent)


def _safe(name: str) -> str:
    """A path component that cannot escape its directory."""
    if not name or name in {".", ".."} or "/" in name or "\0" in name:
        raise VolumeError(f"invalid name {name!r}")
    return name
