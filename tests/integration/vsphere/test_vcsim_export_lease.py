"""The simulator's NFC export leases (Ferry's overlay): what a client of ExportVm meets.

These test the stand-in, not Ferry's provider: that a lease is handed out only for
a powered-off VM, serves each disk as a streamOptimized VMDK holding the disk's
bytes, expires without progress calls, and serves nothing once ended.
"""

from __future__ import annotations

import hashlib
import json
import os
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from pyVmomi import vim

from ferry.providers.vsphere import nfc
from ferry.testing.vcsim.arrange import admin, find_vm, place_disk, run
from ferry.testing.vcsim.server import Endpoint, Vcsim

VM = "DC0_H0_VM0"
MIB = 1 << 20


def _disk_image(folder: Path) -> tuple[Path, str]:
    """A 4 MiB raw disk, its second MiB random, the rest holes; and its digest."""
    raw = folder / "disk.raw"
    with raw.open("wb") as f:
        f.truncate(4 * MIB)
        f.seek(MIB)
        f.write(os.urandom(MIB))
    return raw, hashlib.sha256(raw.read_bytes()).hexdigest()


def _powered_off(si: Any) -> Any:
    vm = find_vm(si, VM)
    run(vm.PowerOffVM_Task())
    return vm


def _wait_ready(lease: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while lease.state == vim.HttpNfcLease.State.initializing:
        assert time.monotonic() < deadline, "the lease never became ready"
        time.sleep(0.05)
    assert lease.state == vim.HttpNfcLease.State.ready, lease.error


def _get(endpoint: Endpoint, device_url: str) -> bytes:
    url = device_url.replace("*", endpoint.host, 1)
    context = ssl.create_default_context(cafile=endpoint.cert_file)
    with urllib.request.urlopen(url, context=context, timeout=30) as response:
        data: bytes = response.read()
        assert len(data) == int(response.headers["Content-Length"])
        return data


@pytest.fixture
def sim(vcsim_binary: Path) -> Any:
    with Vcsim(nfc_lease_timeout=2) as simulator:
        yield simulator.endpoint


def test_an_export_lease_serves_each_disk_as_a_stream_optimized_vmdk(
    sim: Endpoint, tmp_path: Path
) -> None:
    raw, digest = _disk_image(tmp_path)
    with admin(sim) as si:
        place_disk(si, VM, raw)
        vm = _powered_off(si)
        lease = vm.ExportVm()
        _wait_ready(lease)
        [device] = lease.info.deviceUrl
        assert (
            device.disk and device.fileSize == 4 * MIB and device.url.startswith("https://*/nfc/")
        )
        # keyed by the disk's controller and unit, as the provider reads them from the VM
        [(_, place)] = nfc.device_paths(vm).items()
        assert device.key == f"/{vm._moId}/{place}" and place.endswith("0:0"), device.key
        lease.HttpNfcLeaseProgress(50)
        stream = tmp_path / "exported.vmdk"
        stream.write_bytes(_get(sim, device.url))
        lease.HttpNfcLeaseComplete()

        # The stream is a streamOptimized VMDK whose contents are the disk's bytes
        info = json.loads(
            subprocess.run(
                ["qemu-img", "info", "--output=json", "-f", "vmdk", str(stream)],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
        )
        assert info["format-specific"]["data"]["create-type"] == "streamOptimized"
        back = tmp_path / "back.raw"
        subprocess.run(
            ["qemu-img", "convert", "-f", "vmdk", "-O", "raw", str(stream), str(back)], check=True
        )
        assert hashlib.sha256(back.read_bytes()).hexdigest() == digest

        # And once completed the lease serves nothing more
        with pytest.raises(urllib.error.HTTPError) as gone:
            _get(sim, device.url)
        assert gone.value.code == 404


def test_a_running_vm_is_refused_an_export_lease(sim: Endpoint) -> None:
    with admin(sim) as si:
        vm = find_vm(si, VM)
        assert vm.runtime.powerState == "poweredOn"
        with pytest.raises(vim.fault.InvalidPowerState):
            vm.ExportVm()


def test_a_lease_without_progress_expires_and_serves_nothing(sim: Endpoint, tmp_path: Path) -> None:
    raw, _ = _disk_image(tmp_path)
    with admin(sim) as si:
        place_disk(si, VM, raw)
        vm = _powered_off(si)
        kept, idle = vm.ExportVm(), vm.ExportVm()
        _wait_ready(kept)
        _wait_ready(idle)

        # When one lease gets progress calls for longer than the timeout (2 s) and
        # the other none
        for _ in range(8):
            kept.HttpNfcLeaseProgress(10)
            time.sleep(0.5)

        # Then the idle one has expired: state error, Timedout, no more data, calls refused
        assert idle.state == vim.HttpNfcLease.State.error
        assert isinstance(idle.error, vim.fault.Timedout)
        with pytest.raises(urllib.error.HTTPError) as gone:
            _get(sim, idle.info.deviceUrl[0].url)
        assert gone.value.code == 404
        with pytest.raises(vim.fault.Timedout):
            idle.HttpNfcLeaseProgress(20)

        # And the kept one still serves
        assert kept.state == vim.HttpNfcLease.State.ready
        assert len(_get(sim, kept.info.deviceUrl[0].url)) > 0
        kept.HttpNfcLeaseAbort()
