"""The libvirt provider without a daemon: domain XML to inventory, preflight, v2v input."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from ferry.proto.inventory import DiskFormat, Firmware, PowerState, ProviderType, Vm
from ferry.proto.volume import SourceRef
from ferry.providers import factory
from ferry.providers.base import ProviderError
from ferry.providers.libvirt import backup, exports, inventory, jobs, v2v, validator
from ferry.providers.libvirt.provider import LibvirtProvider

DOMAIN = """<domain type='kvm' xmlns:libosinfo='http://libosinfo.org/xmlns/libvirt/domain/1.0'>
  <name>web-1</name><uuid>1b4e28ba-2fa1-11d2-883f-0016d3cca427</uuid>
  <metadata><libosinfo:libosinfo><libosinfo:os id='http://debian.org/debian/12'/>
  </libosinfo:libosinfo></metadata>
  <memory unit='GiB'>4</memory><vcpu>8</vcpu>
  <cpu><topology sockets='2' cores='2' threads='2'/></cpu>
  <os firmware='efi'><type>hvm</type>
    <firmware><feature enabled='yes' name='secure-boot'/></firmware></os>
  <devices>
    <disk type='file' device='disk'><driver name='qemu' type='qcow2'/>
      <source file='/var/lib/libvirt/images/web-1.qcow2'/><target dev='vda' bus='virtio'/>
      <boot order='1'/></disk>
    <disk type='block' device='disk'><driver name='qemu' type='raw'/>
      <source dev='/dev/vg/data'/><target dev='sdb' bus='scsi'/></disk>
    <disk type='file' device='disk'><driver name='qemu' type='vmdk'/>
      <source file='/srv/old.vmdk'/><target dev='sdc' bus='sata'/></disk>
    <disk type='network' device='disk'><driver name='qemu' type='raw'/>
      <source protocol='rbd' name='pool/img'/><target dev='vdd' bus='virtio'/></disk>
    <disk type='file' device='cdrom'><target dev='hdc' bus='ide'/></disk>
    <disk type='file' device='disk'><driver name='qemu' type='qcow2'/>
      <source file='/srv/top.qcow2'/>
      <backingStore type='file'><format type='qcow2'/><source file='/srv/base.qcow2'/>
      </backingStore><target dev='vde' bus='virtio'/></disk>
    <interface type='network'><mac address='52:54:00:aa:bb:cc'/>
      <source network='default'/><model type='virtio'/></interface>
    <interface type='bridge'><mac address='52:54:00:dd:ee:ff'/><source bridge='br0'/>
      <model type='e1000'/></interface>
  </devices>
</domain>"""


def _vm(power: PowerState = PowerState.ON) -> Vm:
    sizes = {"vda": (20 << 30, 3 << 30), "sdb": (100 << 30, 100 << 30), "vde": (1 << 30, 0)}
    return inventory.vm(
        inventory.parse(DOMAIN),
        power,
        lambda target: sizes[target],
        lambda path: "pool-" + Path(path).parent.name,
        host="kvm-7",
    )


def test_domain_xml_becomes_inventory() -> None:
    vm = _vm()
    assert (vm.id, vm.name, vm.provider_type) == (
        "1b4e28ba-2fa1-11d2-883f-0016d3cca427",
        "web-1",
        ProviderType.LIBVIRT,
    )
    assert (vm.firmware, vm.secure_boot) == (Firmware.UEFI, True)
    assert (vm.cpu_sockets, vm.cpu_cores, vm.cpu_threads, vm.memory_mib) == (2, 2, 2, 4096)
    assert vm.guest_os == "http://debian.org/debian/12"
    assert vm.host == "kvm-7"
    assert [(d.id, d.format, d.bus, d.capacity, d.allocated, d.boot_order) for d in vm.disks] == [
        ("vda", DiskFormat.QCOW2, "virtio", 20 << 30, 3 << 30, 1),
        ("sdb", DiskFormat.RAW, "scsi", 100 << 30, 100 << 30, None),
        ("vde", DiskFormat.QCOW2, "virtio", 1 << 30, 0, None),
    ]
    assert vm.disks[0].storage == "pool-images"
    assert [(n.mac, n.network, n.model) for n in vm.nics] == [
        ("52:54:00:aa:bb:cc", "default", "virtio"),
        ("52:54:00:dd:ee:ff", "br0", "e1000"),
    ]
    # Devices Ferry cannot carry are named, not silently dropped
    text = " | ".join(vm.warnings)
    assert "sdc has format 'vmdk'" in text
    assert "vdd (network)" in text
    assert "cdrom hdc" in text
    assert "vde has a backing chain" in text


def test_bios_domain_without_topology_counts_vcpus_as_sockets() -> None:
    xml = "<domain><name>a</name><uuid>u</uuid><vcpu>3</vcpu><os><type>hvm</type></os></domain>"
    vm = inventory.vm(inventory.parse(xml), PowerState.OFF, lambda t: (0, 0), lambda p: "")
    assert (vm.firmware, vm.secure_boot, vm.cpu_sockets, vm.memory_mib) == (
        Firmware.BIOS,
        False,
        3,
        1024,
    )


def test_preflight_reasons_for_warm_and_cold() -> None:
    on, off = _vm(PowerState.ON), _vm(PowerState.OFF)
    warm = validator.reasons(off, warm=True, backup_supported=False, local=True)
    assert any("pull-mode backups" in r for r in warm)
    assert any("not running" in r for r in warm)
    assert any("sdb are not qcow2" in r for r in warm)
    assert any("backing chain" in r for r in warm)
    cold_remote = validator.reasons(off, warm=False, backup_supported=True, local=False)
    assert any("off on a remote host" in r for r in cold_remote)
    assert not [
        r
        for r in validator.reasons(on, warm=False, backup_supported=True, local=True)
        if "backing" not in r
    ]


def test_backup_and_checkpoint_xml_name_only_the_chosen_disks() -> None:
    server = backup.unix_server("/w/nbd.sock")
    scratch = {"vda": Path("/w/scratch-vda.qcow2")}
    root = inventory.parse(backup.backup_xml(server, scratch, ["vda", "vdb"], "ferry-1"))
    assert root.get("mode") == "pull" and root.findtext("incremental") == "ferry-1"
    assert [(d.get("name"), d.get("backup")) for d in root.findall("disks/disk")] == [
        ("vda", "yes"),
        ("vdb", "no"),
    ]
    assert _attrs(root, "server") == {"transport": "unix", "socket": "/w/nbd.sock"}
    assert _attrs(root, "disks/disk/scratch") == {"file": "/w/scratch-vda.qcow2"}
    check = inventory.parse(backup.checkpoint_xml("ferry-2", ["vda"], ["vda", "vdb"]))
    assert [d.get("checkpoint") for d in check.findall("disks/disk")] == ["bitmap", "no"]
    assert backup.new_checkpoint_name().startswith(jobs.CHECKPOINT_PREFIX)


def _attrs(root: Any, path: str) -> dict[str, str]:
    found = root.find(path)
    assert found is not None, path
    return dict(found.attrib)


def test_a_job_on_tcp_asks_for_tls_and_names_its_exports_as_ferrys() -> None:
    tls = exports.Tls("kvm-7.example", range(10809, 10811), "CA", "CERT", "KEY")
    server = exports.server_xml(tls, 10810)
    scratch = {"vda": Path("/var/lib/libvirt/images/a.qcow2.ferry-backup-x.scratch")}
    names = {"vda": exports.export_name("vda")}
    root = inventory.parse(backup.backup_xml(server, scratch, ["vda", "vdb"], None, names))
    assert _attrs(root, "server") == {
        "transport": "tcp", "tls": "yes", "name": "kvm-7.example", "port": "10810"
    }  # fmt: skip
    [disk, _] = root.findall("disks/disk")
    assert disk.get("exportname") == "ferry-vda"
    # and a job like it is recognised as Ferry's (a killed run's is ended), another's not
    assert jobs.ours_on_tcp(root)
    theirs = inventory.parse(backup.backup_xml(server, scratch, ["vda"], None))
    assert not jobs.ours_on_tcp(theirs)
    assert "KEY" not in repr(tls)


def test_the_transport_follows_the_uri_unless_set_and_tls_needs_all_three_pems() -> None:
    assert exports.transport_of("qemu:///system", {}) == "unix"
    assert exports.transport_of("qemu+ssh://kvm-7/system", {}) == "tls"
    assert exports.transport_of("qemu:///system", {"backupTransport": "tls"}) == "tls"
    with pytest.raises(exports.TransportError, match="'unix' or 'tls'"):
        exports.transport_of("qemu+ssh://kvm-7/system", {"backupTransport": "tcp"})
    pems = {"backupCACert": "CA", "backupClientCert": "CERT", "backupClientKey": "KEY"}
    assert exports.missing_keys({**pems, "backupClientKey": " "}) == ["backupClientKey"]
    assert exports.tls_of("qemu+ssh://kvm-7/system", {}, {}) is None
    tls = exports.tls_of("qemu+ssh://kvm-7/system", {"backupPorts": "12000-12003"}, pems)
    assert tls is not None and (tls.host, tls.ports) == ("kvm-7", range(12000, 12004))
    with pytest.raises(exports.TransportError, match="backupHost"):
        exports.tls_of("qemu:///system", {"backupTransport": "tls"}, pems)
    for bad in ("x", "0-3", "70000", "12-10"):
        with pytest.raises(exports.TransportError, match="backupPorts"):
            exports.ports_of(bad)


def test_credentials_are_written_private_and_loaded_by_folder(tmp_path: Path) -> None:
    tls = exports.Tls("h", exports.DEFAULT_PORTS, "CA", "CERT", "KEY")
    folder = exports.write_credentials(tmp_path, tls.ca, tls.cert, tls.key)
    assert folder.stat().st_mode & 0o777 == 0o700
    files = {f.name: (f.read_text(), f.stat().st_mode & 0o777) for f in folder.iterdir()}
    assert files == {
        "ca-cert.pem": ("CA", 0o600),
        "client-cert.pem": ("CERT", 0o600),
        "client-key.pem": ("KEY", 0o600),
    }
    assert folder.name.startswith(f"ferry-tls-{os.getpid()}-")
    # and a folder a killed process left is removed by the next one, a live one's kept
    left = tmp_path / "ferry-tls-999999999-x"  # (above pid_max: no such process)
    left.mkdir()
    (left / "client-key.pem").write_text("KEY")
    again = exports.write_credentials(tmp_path, tls.ca, tls.cert, tls.key)
    assert not left.exists() and folder.exists() and again.exists()
    assert exports.tls_object(folder) == (
        f"tls-creds-x509,id={exports.TLS_OBJECT_ID},dir={folder},endpoint=client"
    )


def test_v2v_user_goes_in_the_uri_and_password_in_a_file(tmp_path: Path) -> None:
    args = v2v.input_args("qemu+ssh://kvm-7/system", "web-1", tmp_path, "ops", "pw!")
    assert args.argv[:4] == ["-i", "libvirt", "-ic", "qemu+ssh://ops@kvm-7/system"]
    assert "pw!" not in " ".join(args.argv)
    assert (tmp_path / v2v.PASSWORD_FILE).read_text() == "pw!"
    assert v2v.input_args("qemu:///system", "a", tmp_path, "", "").argv == [
        "-i",
        "libvirt",
        "-ic",
        "qemu:///system",
        "a",
    ]


def test_factory_builds_the_libvirt_provider_without_connecting() -> None:
    ref = SourceRef(provider="kvm", type=ProviderType.LIBVIRT, url="qemu+tls://kvm-7/system")
    made = factory.create(ref, {"username": "ops", "password": "pw"})
    assert isinstance(made, LibvirtProvider) and not made.local
    assert "pw" not in repr(made) and "pw" not in repr(made.client)


def test_the_work_directory_must_be_ours_and_closed_to_others(tmp_path: Path) -> None:
    # Given a work directory others may write into (a socket could be swapped there)
    open_dir = tmp_path / "open"
    open_dir.mkdir()
    open_dir.chmod(0o777)
    with pytest.raises(ProviderError, match="writable by others"):
        backup.job_dir(open_dir)
    # And a symlink standing in for one
    (tmp_path / "link").symlink_to(open_dir)
    with pytest.raises(ProviderError, match="not a directory owned"):
        backup.job_dir(tmp_path / "link")
    # When it is created by the provider itself, it is 0711 and the job's directory inside it
    made = backup.job_dir(tmp_path / "work")
    assert made.parent == tmp_path / "work" and made.name.startswith(jobs.WORKDIR_PREFIX)
    assert (tmp_path / "work").stat().st_mode & 0o777 == 0o711


def test_a_guest_running_on_virtio_disks_and_nics_is_known_to_have_the_drivers() -> None:
    def vm_of(disk_bus: str, nic_model: str) -> Vm:
        xml = f"""<domain><name>a</name><uuid>u</uuid><devices>
          <disk type='file' device='disk'><driver name='qemu' type='qcow2'/>
            <source file='/i/a.qcow2'/><target dev='xda' bus='{disk_bus}'/></disk>
          <interface type='user'><mac address='52:54:00:00:00:01'/>
            <model type='{nic_model}'/></interface></devices></domain>"""
        return inventory.vm(inventory.parse(xml), PowerState.ON, lambda t: (1, 1), lambda p: "")

    # A guest that boots from virtio-blk with a virtio NIC has their drivers
    assert vm_of("virtio", "virtio").virtio_drivers is True
    # One on SATA, or with an e1000 NIC, may not: not known, so it is converted
    assert vm_of("sata", "virtio").virtio_drivers is None
    assert vm_of("virtio", "e1000").virtio_drivers is None
    # The fixture domain mixes buses
    assert _vm().virtio_drivers is None
