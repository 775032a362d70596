"""Why a vSphere VM cannot migrate as it is: preflight reasons as codes.

Each :class:`Concern` names a fact a user can change at the source (turn CBT on,
delete snapshots, detach an RDM) before the plan runs again; the code is what the
controller reads, the message is what ``ferry describe plan`` shows. Ferry's own
snapshots (left behind by a killed service) are not the user's: they are removed
on the next attempt instead of blocking it.
"""

from __future__ import annotations

import msgspec

from ferry.proto.inventory import Concern, ConcernCode, Firmware, Vm

CBT_HARDWARE = 7  # vSphere tracks changed blocks from virtual hardware version 7 on


def cbt_blocker(version: str) -> str:
    """Why CBT cannot be turned on for a VM of this virtual hardware (``vmx-04``); "" if it can."""
    digits = version.removeprefix("vmx-")
    if digits.isdigit() and int(digits) < CBT_HARDWARE:
        return (
            f"its virtual hardware is {version} and CBT needs version {CBT_HARDWARE} or later "
            "(upgrade the VM's compatibility, or migrate it cold)"
        )
    return ""


def concerns(vm: Vm, *, ferry_prefix: str, cbt_blocked: str = "") -> list[Concern]:
    found: list[Concern] = []
    if vm.change_tracking is False:
        message = "changed block tracking (CBT) is off: a warm migration needs it"
        if cbt_blocked:
            message = f"changed block tracking (CBT) cannot be enabled: {cbt_blocked}"
        found.append(Concern(code=ConcernCode.CBT_DISABLED, message=message, warm_only=True))
    own = [name for name in vm.snapshots if not name.startswith(ferry_prefix)]
    if own:
        found.append(
            Concern(
                code=ConcernCode.SNAPSHOTS,
                message=f"the VM has snapshots ({', '.join(own)}): consolidate or delete them",
            )
        )
    for disk in vm.disks:
        if disk.rdm:
            found.append(
                Concern(
                    code=ConcernCode.RDM_DISK,
                    message=f"disk {disk.name!r} is a raw device mapping, not a file",
                )
            )
        if disk.shared:
            found.append(
                Concern(
                    code=ConcernCode.SHARED_DISK,
                    message=f"disk {disk.name!r} is shared with other VMs (multi-writer)",
                )
            )
        if disk.mode.startswith("independent"):
            found.append(
                Concern(
                    code=ConcernCode.INDEPENDENT_DISK,
                    message=f"disk {disk.name!r} is independent ({disk.mode}): "
                    "snapshots skip it, so no consistent copy can be taken",
                )
            )
    if vm.vtpm:
        found.append(
            Concern(
                code=ConcernCode.VTPM,
                message="the VM has a virtual TPM whose secrets cannot be carried over",
            )
        )
    if vm.firmware is Firmware.UEFI and vm.secure_boot:
        found.append(
            Concern(
                code=ConcernCode.SECURE_BOOT,
                message="UEFI secure boot is on: its keys cannot be carried over",
            )
        )
    return found


def with_concerns(vm: Vm, *, ferry_prefix: str, cbt_blocked: str = "") -> Vm:
    found = concerns(vm, ferry_prefix=ferry_prefix, cbt_blocked=cbt_blocked)
    return msgspec.structs.replace(vm, concerns=found)
