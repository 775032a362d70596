"""Admission of OVA VMs against the real OVA provider: deployment options, empty disks.

A Plan's ``deploymentOption``: the chosen configuration is the inventory stored
with the VM (so every later step reads it); an option the package does not offer
rejects the migration with a reason naming the VM and the offered options. A VM
whose disks hold no data is refused there too, before anything is copied.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
from controller_harness import apply, documents
from controller_stack import Stack

sys.path.insert(0, str(Path(__file__).parents[1] / "providers"))

import ovfkit

VM = "app/appliance"


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> ovfkit.Images:
    return ovfkit.make_images(tmp_path_factory.mktemp("images"))


def _ova_plan(plan: str, vms: list[dict[str, Any]]) -> list[dict[str, Any]]:
    docs = documents("ova", [], plan=plan)
    for doc in docs:
        if doc["kind"] == "StorageMap":
            doc["spec"]["map"][0]["source"]["name"] = "ova"
        if doc["kind"] == "Plan":
            doc["spec"]["vms"] = vms
    return docs


def _appliance(stack: Stack, images: ovfkit.Images) -> None:
    root = stack.tmp / "import"
    root.mkdir()
    stream = images.stream.read_bytes()
    ovf = ovfkit.appliance_ovf(len(stream), network="net1")
    ovfkit.write_ova(root / "app.ova", "appliance.ovf", ovf, [("appliance.vmdk", stream)])
    stack.ova_sources["src"] = root


async def test_the_chosen_option_is_the_inventory_that_migrates(
    stack: Stack, images: ovfkit.Images
) -> None:
    # Given an appliance OVA and a plan choosing its large size
    _appliance(stack, images)
    await apply(stack.bus, _ova_plan("plan1", [{"id": VM, "deploymentOption": "4CPU-8GB"}]))
    stack.run_services()
    stack.run_controller()

    # When it migrates
    await stack.migrate("m1")
    mig = await stack.wait_end("m1")

    # Then the large configuration is what was stored and migrated
    assert mig["status"]["phase"] == "Succeeded", mig["status"]
    inventory = (await stack.vms("m1"))[VM]["inventory"]
    assert inventory["configuration"] == "4CPU-8GB"
    assert inventory["cpu_sockets"] * inventory["cpu_cores"] == 4
    assert inventory["memory_mib"] == 8192
    assert [d["id"] for d in inventory["disks"]] == ["vmdisk1", "logdisk", "datadisk"]
    assert len(inventory["nics"]) == 2


async def test_an_option_not_offered_rejects_the_migration_with_the_offered_ones(
    stack: Stack, images: ovfkit.Images
) -> None:
    # Given a plan choosing a size the appliance does not offer
    _appliance(stack, images)
    await apply(stack.bus, _ova_plan("plan1", [{"id": VM, "deploymentOption": "huge"}]))
    stack.run_services()
    stack.run_controller()

    # When its migration starts
    await stack.migrate("m1")
    mig = await stack.wait_end("m1")

    # Then it is rejected with a reason naming the VM and the offered options
    assert mig["status"]["phase"] == "Rejected"
    [reason] = mig["status"]["reasons"][VM]
    assert "deploymentOption 'huge' is not offered by VM 'appliance'" in reason
    assert "'1CPU-4GB', '2CPU-4GB', '4CPU-8GB'" in reason
    assert stack.services.runs(VM) == []


async def test_a_vm_whose_disks_hold_no_data_is_refused_before_any_copy(stack: Stack) -> None:
    # Given an OVF folder whose only disk is an empty (sparse) raw file
    folder = stack.tmp / "import" / "blank"
    folder.mkdir(parents=True)
    with (folder / "blank.raw").open("wb") as f:
        f.truncate(8 * 1024 * 1024)
    raw = "http://en.wikipedia.org/wiki/Byte"  # a raw disk, as ovftool names one
    disks = [{"href": "blank.raw", "size": 8 * 1024 * 1024, "format": raw}]
    ovf = ovfkit.vmware_ovf(disks, name="blank").replace("VM Network", "net1")
    (folder / "blank.ovf").write_text(ovf)
    stack.ova_sources["src"] = stack.tmp / "import"
    await apply(stack.bus, _ova_plan("plan1", [{"name": "blank"}]))
    stack.run_services()
    stack.run_controller()

    # When its migration starts
    await stack.migrate("m1")
    mig = await stack.wait_end("m1")

    # Then it is rejected in preflight saying why, and no step ran
    assert mig["status"]["phase"] == "Rejected", mig["status"]
    reasons = mig["status"]["reasons"]["blank"]
    assert any("no operating system to convert" in r for r in reasons), reasons
    assert stack.services.runs("blank/blank/blank") == []
