"""Raw copy (``spec.skipGuestConversion``) of the real test guest through the four services.

No virt-v2v: the importer copies the OVA's disk unchanged into its volume, so the
target holds exactly the source's bytes (the copy's digests, and the digest of the
guest's raw disk computed here apart from the copy; the volume itself changes once
the guest boots from it). Preflight
warns that the guest has no virtio driver in its initramfs, so the VirtualMachine
gets a SATA disk and an e1000 NIC, and the guest boots on them.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml

from ferry.platform.copy import engine
from ferry.platform.copy.source import open_source
from ferry.platform.images import ImageRef
from ferry.testing.migration import (
    RAW_COPY,
    apply_yaml,
    finished,
    guest_ova,
    of_type,
    ova_objects,
    place_ovas,
    start_migration,
)
from ferry.testing.stack import LocalStack, v2v_processes

pytestmark = [pytest.mark.slow, pytest.mark.e2e, pytest.mark.timeout(1200)]

REPO = Path(__file__).resolve().parents[2]
VM = "guest-r/ferry-test-guest"


def tree_digest(raw: str) -> str:
    """The copy engine's digest of a raw file, computed apart from any copy."""
    src = open_source(ImageRef(path=raw))
    try:
        return engine.digest(src).digest
    finally:
        src.close()


def test_raw_copy_copies_the_disk_unchanged_warns_and_boots_on_sata(stack: LocalStack) -> None:
    # Given the test guest as an OVA and a Plan with skipGuestConversion
    guest = guest_ova(REPO)
    ova_dir = place_ovas(stack, Path(guest["ova"]), ["guest-r"])
    apply_yaml(stack, ova_objects(ova_dir, [VM], raw_copy=True))
    recorder = stack.record_events()
    time.sleep(2)
    # When the migration runs
    start_migration(stack, "e2e", "raw")
    done = stack.wait_for("the migration to end", lambda ev: finished(ev, "raw"), recorder, 900)
    time.sleep(2)
    events = recorder.events()
    # Then the VM migrated along the raw-copy itinerary and nothing converted it
    failures = [(d["step"], d.get("reason")) for d in of_type(events, "migration.step_failed")]
    assert (done["succeeded"], done["failed"]) == (1, 0), failures
    assert [d["step"] for d in of_type(events, "migration.step_completed", VM)] == RAW_COPY
    assert of_type(events, "conversion.convert_guest", VM) == []
    assert of_type(events, "conversion.guest_converted", VM) == []
    assert v2v_processes(str(stack.root)) == []
    assert "virt-v2v" not in stack.log_text()
    # And preflight warned that the guest has no virtio driver to boot from
    (started,) = of_type(events, "migration.started")
    assert "no virtio block driver" in " ".join(started["warnings"][VM])
    # And the volume held exactly the source's bytes when copied: the copy's target
    # digest is the source's, and both are the digest of the guest's raw disk computed
    # here on its own (the volume itself changed since: the guest booted from it)
    (copied,) = of_type(events, "volume.disks_copied", VM)
    (disk,) = copied["disks"]
    assert disk["source"]["digest"] == disk["target"]["digest"] == tree_digest(guest["raw"])
    # And the VirtualMachine uses the buses the unconverted guest has drivers for
    vm = yaml.safe_load((stack.data_dir / "vms" / "e2e" / "guest-r.yaml").read_text())
    text = yaml.safe_dump(vm)
    assert "bus: sata" in text and "bus: virtio" not in text
    assert "model: e1000" in text
    # And the guest booted on them
    (running,) = of_type(events, "vm.vm_running", VM)
    assert guest["login_marker"] in Path(running["console"]).read_text(errors="replace")
