"""What vdsm does on an oVirt host for the engine stand-in's backups, done for real.

A live backup (the VM runs) is libvirt's pull-mode backup of the **running libvirt
domain** behind the VM, begun with a checkpoint named by the engine's checkpoint id
(vdsm's ``start_backup``): QEMU's NBD server on a Unix socket exports each disk under
the disk's id, and an incremental one also exports ``qemu:dirty-bitmap:…`` for the
blocks written since ``from_checkpoint_id``. A cold backup (the VM is down) is what
vdsm does on the volumes: a persistent bitmap named by the new checkpoint added to
each qcow2 file (``qemu-img bitmap --add``), and per disk a read-only ``qemu-nbd``
exporting the file and, for an incremental, the bitmap of ``from_checkpoint_id``.

Either way the result is one NBD URL per disk, which the engine puts behind an image
transfer's ticket on the real imageio daemon. Stopping a backup ends the job (or the
qemu-nbds) and removes its directory; deleting a checkpoint deletes libvirt's
checkpoint (which merges its bitmap into its parent's) or, with the domain off, its
metadata and the bitmap in each file.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

import libvirt

from ferry.providers.libvirt.inventory import parse
from ferry.testing.libvirtd import scratch_dir

URI = "qemu:///system"


class VdsmError(RuntimeError):
    """The host could not do what the engine asked; the message says why."""


@dataclass
class Job:
    """One backup's exports on the host: a libvirt job or qemu-nbds, in ``dir``."""

    dir: Path
    urls: dict[str, str] = field(default_factory=dict)  # disk id → nbd: URL
    servers: list[subprocess.Popen[bytes]] = field(default_factory=list)  # cold only
    domain: str = ""  # live only


def _targets(dom: libvirt.virDomain) -> list[str]:
    root = parse(dom.XMLDesc(0))
    return [
        str(d.find("target").get("dev"))  # type: ignore[union-attr]
        for d in root.findall("devices/disk")
        if d.get("device") == "disk"
    ]


def _qemu_owner(dom: libvirt.virDomain) -> tuple[int, int] | None:
    for label in parse(dom.XMLDesc(0)).findall("seclabel"):
        text = (label.findtext("label") or "").strip()
        if label.get("model") == "dac" and ":" in text:
            uid, gid = text.split(":", 1)
            return int(uid.lstrip("+")), int(gid.lstrip("+"))
    return None


def active(domain: str, uri: str = URI) -> bool:
    conn = libvirt.open(uri)
    try:
        return bool(conn.lookupByName(domain).isActive())
    finally:
        conn.close()


def power(domain: str, action: str, uri: str = URI) -> None:
    """``shutdown`` (the ACPI power button), ``stop`` (pulled from power) or ``start``."""
    conn = libvirt.open(uri)
    try:
        dom = conn.lookupByName(domain)
        if action == "shutdown":
            dom.shutdownFlags(libvirt.VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN)
        elif action == "stop":
            if dom.isActive():
                dom.destroy()
        elif not dom.isActive():
            dom.create()
    finally:
        conn.close()


def start_live(
    domain: str,
    disks: dict[str, str],
    since: str | None,
    checkpoint: str | None,
    tracked: list[str],
    uri: str = URI,
) -> Job:
    """Begin a pull-mode backup of ``disks`` (disk id → target) of the running domain,
    with a checkpoint over the ``tracked`` targets (none when ``checkpoint`` is None)."""
    conn = libvirt.open(uri)
    try:
        dom = conn.lookupByName(domain)
        job = Job(scratch_dir("ferry-vdsm-backup-"), domain=domain)
        owner = _qemu_owner(dom)
        if owner is not None:
            os.chown(job.dir, *owner)
        socket = job.dir / "nbd.sock"
        everything = _targets(dom)
        by_target = {t: d for d, t in disks.items()}
        rows = []
        for target in everything:
            if target in by_target:
                scratch = quoteattr(str(job.dir / f"scratch-{target}.qcow2"))
                rows.append(
                    f"<disk name={quoteattr(target)} backup='yes' type='file' "
                    f"exportname={quoteattr(by_target[target])}><scratch file={scratch}/></disk>"
                )
            else:
                rows.append(f"<disk name={quoteattr(target)} backup='no'/>")
        incremental = f"<incremental>{escape(since)}</incremental>" if since else ""
        backup = (
            f"<domainbackup mode='pull'>{incremental}"
            f"<server transport='unix' socket={quoteattr(str(socket))}/>"
            f"<disks>{''.join(rows)}</disks></domainbackup>"
        )
        cxml = None
        if checkpoint:
            marks = "".join(
                f"<disk name={quoteattr(t)} checkpoint={'bitmap' if t in tracked else 'no'!r}/>"
                for t in everything
            )
            cxml = (
                f"<domaincheckpoint><name>{escape(checkpoint)}</name>"
                f"<disks>{marks}</disks></domaincheckpoint>"
            )
        try:
            dom.backupBegin(backup, cxml, 0)
        except libvirt.libvirtError as exc:
            shutil.rmtree(job.dir, ignore_errors=True)
            raise VdsmError(f"backup could not start: {exc.get_error_message()}") from None
        job.urls = {d: f"nbd:unix:{socket}:exportname={d}" for d in disks}
        return job
    finally:
        conn.close()


def start_cold(
    images: dict[str, tuple[Path, str]], since: str | None, checkpoint: str | None
) -> Job:
    """Export the files of a VM that is down: ``images`` is disk id → (path, qemu
    format); the new checkpoint's bitmap is added to every qcow2 file first."""
    job = Job(scratch_dir("ferry-vdsm-backup-"))
    try:
        for disk_id, (path, fmt) in images.items():
            names = bitmaps(path) if fmt == "qcow2" else []
            if since and since not in names:
                raise VdsmError(f"disk {disk_id} has no bitmap for checkpoint {since}")
            if checkpoint and fmt == "qcow2":
                subprocess.run(
                    ["qemu-img", "bitmap", "--add", "-f", "qcow2", str(path), checkpoint],
                    check=True, capture_output=True, timeout=60,
                )  # fmt: skip
            socket = job.dir / f"{disk_id[:8]}.sock"
            bitmap = ["--bitmap", since] if since else []
            proc = subprocess.Popen(
                ["qemu-nbd", "--read-only", "--persistent", "--shared=8", "-f", fmt,
                 *bitmap, "-k", str(socket), str(path)],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            job.servers.append(proc)
            deadline = time.monotonic() + 30
            while not socket.exists():
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise VdsmError(f"qemu-nbd did not serve disk {disk_id}")
                time.sleep(0.05)
            job.urls[disk_id] = f"nbd:unix:{socket}"
    except BaseException:
        stop(job)
        raise
    return job


def stop(job: Job, uri: str = URI, timeout: float = 30.0) -> None:
    """End the backup's exports (vdsm's ``stop_backup``) and remove its directory."""
    for proc in job.servers:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if job.domain:
        conn = libvirt.open(uri)
        try:
            dom = conn.lookupByName(job.domain)
            with contextlib.suppress(libvirt.libvirtError):
                dom.abortJob()
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                try:
                    dom.backupGetXMLDesc(0)
                except libvirt.libvirtError:
                    break
                time.sleep(0.05)
        except libvirt.libvirtError:
            pass  # the domain is gone, and its job with it
        finally:
            conn.close()
    shutil.rmtree(job.dir, ignore_errors=True)


def bitmaps(path: Path) -> list[str]:
    done = subprocess.run(
        ["qemu-img", "info", "-U", "--output=json", "-f", "qcow2", str(path)],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    if done.returncode != 0:
        raise VdsmError(f"qemu-img info {path}: {done.stderr.strip()[-300:]}")
    data = json.loads(done.stdout).get("format-specific", {}).get("data", {})
    return [str(b.get("name", "")) for b in data.get("bitmaps", [])]


def delete_checkpoint(domain: str, checkpoint: str, images: list[Path], uri: str = URI) -> None:
    """vdsm's ``delete_checkpoints``: libvirt merges the bitmap into its parent's while
    the domain runs; with it off, the metadata goes and each file's bitmap is removed."""
    conn = libvirt.open(uri)
    try:
        dom = conn.lookupByName(domain)
        running = bool(dom.isActive())
        try:
            found = dom.checkpointLookupByName(checkpoint, 0)
            found.delete(0 if running else libvirt.VIR_DOMAIN_CHECKPOINT_DELETE_METADATA_ONLY)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN_CHECKPOINT:
                raise VdsmError(f"checkpoint {checkpoint}: {exc.get_error_message()}") from None
    finally:
        conn.close()
    if not running:
        for path in images:
            if checkpoint in bitmaps(path):
                subprocess.run(
                    ["qemu-img", "bitmap", "--remove", "-f", "qcow2", str(path), checkpoint],
                    check=True, capture_output=True, timeout=60,
                )  # fmt: skip
