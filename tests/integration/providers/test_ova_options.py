"""A Plan may choose a deployment option per VM: that configuration is what migrates.

The appliance written here offers three sizes; the large one has more CPUs and
memory, a second NIC, a bigger log disk and a data disk of its own. Chosen, its
facts are what the provider reports, what its disks open, and what virt-v2v's
libvirt document describes; an option the package does not offer is refused
with the ones it does.
"""

from __future__ import annotations

from pathlib import Path

import ovfkit
import pytest
from defusedxml import ElementTree

from ferry.providers.base import Configurable
from ferry.providers.ova import errors
from ferry.providers.ova.provider import OvaProvider

LARGE = "4CPU-8GB"


@pytest.fixture
def provider(tmp_path: Path, images: ovfkit.Images) -> OvaProvider:
    root = tmp_path / "import"
    root.mkdir()
    stream = images.stream.read_bytes()
    ovfkit.write_ova(
        root / "app.ova",
        "appliance.ovf",
        ovfkit.appliance_ovf(len(stream)),
        [("appliance.vmdk", stream)],
    )
    return OvaProvider(root)


async def test_a_chosen_option_is_what_the_vm_is_read_as(
    provider: OvaProvider, images: ovfkit.Images, tmp_path: Path
) -> None:
    # Given the appliance as the inventory describes it (the default, medium size)
    default = await provider.vm("app/appliance")
    assert isinstance(provider, Configurable)
    assert (default.configuration, len(default.nics), len(default.disks)) == ("2CPU-4GB", 1, 2)

    # When the large option is chosen
    large = await provider.configured(default, LARGE)

    # Then its CPUs, memory, NICs and disks are the large configuration's
    assert large.id == default.id and large.configuration == LARGE
    assert large.cpu_sockets * large.cpu_cores == 4 and large.memory_mib == 8192
    assert [n.name for n in large.nics] == ["eth0", "eth1"]
    assert [(d.id, d.blank, d.capacity) for d in large.disks] == [
        ("vmdisk1", False, ovfkit.SOURCE_SIZE),
        ("logdisk", True, 32 * ovfkit.MiB),
        ("datadisk", True, 64 * ovfkit.MiB),
    ]
    # And its own disk opens (a blank one: zeros) and the shared one reads the source
    async with provider.open_disk(large, "datadisk") as data:
        assert data.size == 64 * ovfkit.MiB
        assert await data.read(0, 4096) == bytes(4096)
    async with provider.open_disk(large, "vmdisk1") as system:
        for offset, length, _ in ovfkit.DATA:
            assert await system.read(offset, length) == images.expected[offset : offset + length]
    # And virt-v2v's document describes the large configuration
    work = tmp_path / "work"
    work.mkdir()
    given = await provider.v2v_input(large, work)
    domain = ElementTree.fromstring(Path(given.argv[2]).read_bytes())
    assert domain.find("vcpu").text == "4"
    memory = domain.find("memory")
    assert (memory.get("unit"), memory.text) == ("MiB", "8192")
    assert len(list(domain.iter("disk"))) == 3
    assert len(list(domain.iter("interface"))) == 2


async def test_the_default_vm_still_opens_its_own_configuration(provider: OvaProvider) -> None:
    # Given the large option was read once (a second cached reading of the package)
    default = await provider.vm("app/appliance")
    await provider.configured(default, LARGE)

    # When the default VM's disks are asked for / Then the large-only disk is not one
    with pytest.raises(Exception, match="datadisk"):
        async with provider.open_disk(default, "datadisk"):
            pass
    async with provider.open_disk(default, "logdisk") as log:
        assert log.size == 16 * ovfkit.MiB


async def test_an_option_the_package_does_not_offer_is_refused_with_those_it_does(
    provider: OvaProvider,
) -> None:
    # Given the appliance
    vm = await provider.vm("app/appliance")

    # When an option it does not offer is chosen / Then the reason names the offered ones
    with pytest.raises(errors.DeploymentOptionError) as refused:
        await provider.configured(vm, "16CPU-64GB")
    assert "'16CPU-64GB' is not offered" in str(refused.value)
    assert "'1CPU-4GB', '2CPU-4GB', '4CPU-8GB'" in str(refused.value)
