"""What each exporter writes outside the standard items: firmware, MACs, NIC models.

- VMware (ovftool, vSphere): ``vmw:osType``, ``vmw:CoresPerSocket``,
  ``<vmw:Config vmw:key="firmware" vmw:value="efi"/>``, MACs in ``rasd:Address``.
- VirtualBox: its own ``vbox:Machine`` section holding firmware
  (``<Firmware type="EFI"/>``) and MACs (``<Adapter MACAddress="080027…"/>``).
- oVirt/RHV: ``rasd:MACAddress``, numeric NIC types, firmware as ``<BiosType>``.
"""

from __future__ import annotations

import re
from typing import Protocol
from xml.etree.ElementTree import Element

from ferry.proto.inventory import Firmware, Nic
from ferry.providers.ova.ovfxml import attr, children, local, text

NIC_MODELS = {
    "vmxnet3": "vmxnet3",
    "vmxnet2": "vmxnet2",
    "e1000": "e1000",
    "e1000e": "e1000e",
    "pcnet32": "pcnet",
    "82540em": "e1000",
    "82543gc": "e1000",
    "82545em": "e1000",
    "virtio": "virtio",
    "3": "virtio",  # oVirt's numeric interface types: 3 is pv (virtio)
    "0": "rtl8139",
    "5": "e1000",
}
# oVirt's BiosType: (UEFI values, secure-boot value). 4.4 added CLUSTER_DEFAULT as 0
# and shifted the rest up by one; the envelope's ovf:version tells which applies.
_OVIRT_BIOS_4_4 = ({"3", "4"}, "4")  # Q35_OVMF=3, Q35_SECURE_BOOT=4
_OVIRT_BIOS_OLD = ({"2", "3"}, "3")  # Q35_OVMF=2, Q35_SECURE_BOOT=3


class Facts(Protocol):
    firmware: Firmware
    secure_boot: bool
    nics: list[Nic]


def nic(item: Element, index: int) -> Nic:
    subtype = text(item, "ResourceSubType").lower()
    mac = text(item, "MACAddress") or text(item, "Address")
    return Nic(
        id=text(item, "InstanceID") or text(item, "InstanceId") or f"nic{index}",
        name=text(item, "ElementName")
        or text(item, "Name")
        or text(item, "Caption")
        or f"nic{index}",
        mac=normal_mac(mac),
        network=text(item, "Connection"),
        model=NIC_MODELS.get(subtype, subtype),
    )


def normal_mac(value: str) -> str:
    """``00:50:56:aa:bb:cc`` from any of the spellings exporters use, else ``""``."""
    hexdigits = re.sub(r"[^0-9A-Fa-f]", "", value)
    if len(hexdigits) != 12 or len(value) > 17:
        return ""
    return ":".join(hexdigits[i : i + 2] for i in range(0, 12, 2)).lower()


def vmware_config(hardware: Element, system: Facts) -> None:
    for config in children(hardware, "Config"):
        key, value = attr(config, "key") or "", (attr(config, "value") or "").lower()
        if key == "firmware":
            system.firmware = Firmware.UEFI if value == "efi" else Firmware.BIOS
        elif key in ("uefi.secureBoot.enabled", "bootOptions.efiSecureBootEnabled"):
            system.secure_boot = value == "true"


def virtualbox_machine(vs: Element, system: Facts) -> None:
    for machine in children(vs, "Machine"):
        adapters = []
        for element in machine.iter():
            tag = local(element.tag)
            if tag == "Firmware" and (attr(element, "type") or "").upper().startswith("EFI"):
                system.firmware = Firmware.UEFI
            elif tag == "Adapter" and (attr(element, "enabled") or "false") == "true":
                adapters.append(element)
        _virtualbox_macs(adapters, system)


def _virtualbox_macs(adapters: list[Element], system: Facts) -> None:
    """VirtualBox keeps MACs only in its own section.

    Its hardware section lists one Ethernet item per enabled adapter, in slot
    order, so the n-th enabled adapter is the n-th NIC.
    """
    adapters.sort(key=lambda a: int(s) if (s := attr(a, "slot") or "").isdigit() else 0)
    for index, adapter in enumerate(adapters[: len(system.nics)]):
        found = system.nics[index]
        mac = normal_mac(attr(adapter, "MACAddress") or "")
        if mac and not found.mac:
            system.nics[index] = Nic(
                id=found.id, name=found.name, mac=mac, network=found.network, model=found.model
            )


def ovirt_bios(vs: Element, system: Facts, version: str) -> None:
    bios = text(vs, "BiosType")
    if not bios:
        return
    major_minor = re.match(r"^(\d+)\.(\d+)", version)
    old = major_minor is not None and (int(major_minor[1]), int(major_minor[2])) < (4, 4)
    uefi, secure = _OVIRT_BIOS_OLD if old else _OVIRT_BIOS_4_4
    if bios in uefi:
        system.firmware = Firmware.UEFI
        system.secure_boot = bios == secure
