"""Preflight reasons for a libvirt domain: what would make its migration fail or lose data.

Each reason is a sentence for the person who runs the plan; an empty list means
the domain can go. Warm migration needs pull-mode backups (``<backup
supported='yes'/>`` in the daemon's domain capabilities) and a running domain
whose every disk is qcow2 (QEMU keeps a persistent dirty bitmap only there).
"""

from __future__ import annotations

from ferry.proto.inventory import DiskFormat, PowerState, Vm


def reasons(vm: Vm, *, warm: bool, backup_supported: bool, local: bool) -> list[str]:
    found: list[str] = []
    if not vm.disks:
        found.append(f"VM {vm.name} has no disk Ferry can read")
    found += [f"VM {vm.name}: {w}" for w in vm.warnings if "backing chain" in w]
    if warm:
        if not backup_supported:
            found.append("the libvirt daemon does not offer pull-mode backups (needed for warm)")
        if vm.power_state != PowerState.ON:
            found.append(f"VM {vm.name} is not running: warm migration copies a running VM")
        raw = [d.id for d in vm.disks if d.format != DiskFormat.QCOW2]
        if raw:
            found.append(
                f"VM {vm.name}: disk(s) {', '.join(raw)} are not qcow2, so QEMU cannot "
                "track their changes; migrate cold"
            )
    elif vm.power_state == PowerState.OFF and not local:
        found.append(
            f"VM {vm.name} is off on a remote host read without TLS: its disks are read "
            "through a backup job of the domain started paused, served over TLS only "
            "(backupTransport: tls)"
        )
    return found
