"""The probe read: a pair that never migrated gets its throughput from a short read of a real
source disk (the OVA provider's own reader), within a byte and a time cap; a source that
cannot be read says why and the throughput stays assumed. Admission records it too."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from controller_harness import apply, eventually
from controller_stack import Stack
from test_cli import ferry
from test_ova_admission import _ova_plan

from ferry.proto.inventory import Vm
from ferry.providers.ova.provider import OvaProvider
from ferry.runtime import estimates, probe

sys.path.insert(0, str(Path(__file__).parents[1] / "volume_service"))

import volume_harness

MiB = 1 << 20


async def _ova(root: Path, name: str = "web01") -> tuple[OvaProvider, Vm]:
    made = await volume_harness.make_ova(root, name, size=32 * MiB, raw=True)
    return OvaProvider(root), made.vm


async def test_a_real_disk_read_gives_a_probed_throughput_within_its_byte_cap(
    tmp_path: Path,
) -> None:
    # Given an OVA whose 32 MiB disk holds 16 MiB of data
    provider, vm = await _ova(tmp_path / "import")
    # When the pair has no history and the probe may read 4 MiB
    got = await probe.probed_input(provider, [vm], "no history", limit=4 * MiB)
    # Then the throughput is measured by that read, stated as probed with what was read
    assert got.name == "throughput" and got.probed and got.measured
    assert got.provenance == "probed"
    assert got.value > 0
    assert got.basis.startswith("no history; probe read 4 MiB of web01/")
    # And the estimate uses it in place of the assumed default, the rest still assumed
    est = estimates.estimate(
        "p", provider="ova", hosts=[], target="demo", warm=False, max_in_flight=1,
        vms=[(vm.id, vm.name, 16 * MiB)], history=[], now=0, probed=got,
    )  # fmt: skip
    by = {i.name: i for i in est.inputs}
    assert by["throughput"] == got and not by["conversion"].measured


async def test_a_source_that_cannot_be_read_says_why_and_stays_assumed(tmp_path: Path) -> None:
    # Given an OVA listed, then gone from its directory before the probe reads it
    provider, vm = await _ova(tmp_path / "import")
    (tmp_path / "import" / "web01.ova").unlink()
    # When probed
    got = await probe.probed_input(provider, [vm], "no history")
    # Then the throughput is the assumed default, and the reason is given
    assert not got.measured and not got.probed and got.provenance == "assumed"
    assert got.value == estimates.ASSUMED_THROUGHPUT
    assert "probe failed: web01's disk could not be read" in got.basis, got.basis


async def test_a_probe_stops_at_its_time_cap(tmp_path: Path) -> None:
    provider, vm = await _ova(tmp_path / "import")
    got = await probe.probed_input(provider, [vm], "no history", seconds=1e-6)
    assert not got.measured and "took longer than" in got.basis, got.basis


async def test_admission_of_a_pair_with_no_history_records_a_probed_throughput(
    stack: Stack,
) -> None:
    # Given a real OVA source that never migrated to the target
    root = stack.tmp / "import"
    await volume_harness.make_ova(root, "web01", size=32 * MiB, raw=True)
    stack.ova_sources["src"] = root
    docs = _ova_plan("plan1", [{"name": "web01"}])
    for doc in docs:
        if doc["kind"] == "NetworkMap":  # the OVF's network
            doc["spec"]["map"][0]["source"]["name"] = "VM Network"
        if doc["kind"] == "Provider" and doc["metadata"]["name"] == "src":
            doc["spec"]["url"] = str(root)  # where the CLI opens it
    await apply(stack.bus, docs)
    # And `ferry estimate` of it, before it runs, says its throughput was probed and how
    printed = await ferry(stack, "estimate", "plan1")
    assert printed.exit_code == 0, printed.output
    line = next(t for t in printed.output.splitlines() if "throughput:" in t)
    assert "(probed: no finished migration on src -> " in line, printed.output
    assert "probe read " in line and "web01" in line
    stack.run_controller()
    # When a migration of it is admitted
    await stack.migrate("m1")

    async def recorded() -> bool:
        return bool((await stack.migration("m1")).get("status", {}).get("estimate"))

    await eventually(recorded, timeout=20, what="the estimate is recorded")
    # Then its estimate's throughput was probed from the source disk, and says so
    est = json.loads((await stack.migration("m1"))["status"]["estimate"])
    (throughput,) = [i for i in est["inputs"] if i["name"] == "throughput"]
    assert throughput["probed"] is True and throughput["measured"] is True, throughput
    assert "no finished migration on src -> " in throughput["basis"]
    assert "probe read " in throughput["basis"] and "web01" in throughput["basis"]
