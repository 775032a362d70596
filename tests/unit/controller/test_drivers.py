"""The raw-copy preflight's reading of guestfish's listing (no appliance here)."""

from __future__ import annotations

import pytest

from ferry.migration_controller import drivers

K = "usr/lib/modules/6.1.0-50-amd64/kernel/drivers"


def listing(initrd: list[str], builtin: list[str] = (), windows: list[str] = ()) -> str:  # type: ignore[assignment]
    return "\n".join([*initrd, "--builtin--", *builtin, "--windows--", *windows, ""])


@pytest.mark.parametrize(
    ("output", "virtio"),
    [
        # modules installed, none in the initramfs: the VMware-installed guest
        (listing([f"{K}/ata/ahci.ko", f"{K}/message/fusion/mptspi.ko"]), False),
        (listing([f"{K}/block/virtio_blk.ko"]), True),
        (listing([f"{K}/scsi/virtio_scsi.ko.zst"]), True),
        (listing([f"{K}/virtio/virtio_pci.ko"]), False),  # the bus alone boots nothing
        (listing([], ["kernel/drivers/block/virtio_blk.ko"]), True),  # built in
        (listing([], [], ["viostor.sys", "tcpip.sys"]), True),
        (listing([], [], ["VIOSCSI.SYS"]), True),
        (listing([], [], ["atapi.sys", "storahci.sys"]), False),
        (listing([]), None),  # nothing to look at: unknown, not "no drivers"
    ],
)
def test_listing_verdicts(output: str, virtio: bool | None) -> None:
    assert drivers.read_listing(output).virtio is virtio


def test_warning_only_without_drivers() -> None:
    assert drivers.warning(drivers.Finding(True, "x")) is None
    no = drivers.warning(drivers.Finding(False, "no virtio block driver"))
    assert no is not None and "SATA" in no
    unknown = drivers.warning(drivers.Finding(None, "timed out"))
    assert unknown is not None and "unknown" in unknown


def test_unix_socket_uri_is_spelled_as_libguestfs_reads_it() -> None:
    uri = "nbd+unix:///?socket=/tmp/x/nbd.sock"
    assert drivers.guestfish_uri(uri) == "nbd:///?socket=/tmp/x/nbd.sock"
    assert drivers.guestfish_uri("nbd://host:10809/disk") == "nbd://host:10809/disk"


def test_guestfish_gets_no_variable_of_the_controller(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FERRY_NATS__CREDENTIALS_FILE", "/secret/path")
    env = drivers.environment("tcg")
    assert not [k for k in env if k.startswith("FERRY_")]
    assert env["LIBGUESTFS_BACKEND_SETTINGS"] == "force_tcg"
    assert "LIBGUESTFS_BACKEND_SETTINGS" not in drivers.environment("kvm")
