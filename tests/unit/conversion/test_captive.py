"""A provider's captive helpers (nbdkit ``--run``) around virt-v2v, without I/O."""

from __future__ import annotations

import asyncio
import shlex
from pathlib import Path
from typing import Any

import msgspec
import pytest

from ferry.conversion_service import v2v
from ferry.conversion_service.settings import ConversionSettings
from ferry.platform.kubernetes.pacing import Broker
from ferry.platform.local.processes import LocalWorkloads
from ferry.proto.conversion import ConversionMode
from ferry.proto.inventory import Disk, ProviderType, Vm, Volume
from ferry.providers.base import Pace, V2vInput


def test_helpers_wrap_virt_v2v_first_outermost_and_read_the_secret_copies(
    tmp_path: Path,
) -> None:
    # Given a provider input with two nbdkit helpers reading a cookie file it wrote
    work = tmp_path / "work"
    work.mkdir()
    cookie = work / "vsphere-cookie"
    cookie.write_text("vmware_soap_session=secret")
    domain = work / "vsphere-domain.xml"
    domain.write_text("<domain/>")
    given = V2vInput(
        argv=["-i", "libvirtxml", str(domain)],
        files=[str(cookie), str(domain)],
        captive=[
            ["nbdkit", "--port=1", "curl", "url=https://a/1", f"cookie=+{cookie}"],
            ["nbdkit", "--port=2", "curl", "url=https://a/2", f"cookie=+{cookie}"],
        ],
    )

    # When the service points them at the workload's secret files and composes the command
    argv, files, captive = v2v.provider_files(given, work, "/run/input")
    full = v2v.run_captive(["virt-v2v", *argv, "-o", "local"], captive)

    # Then every helper reads the workload's copy of the cookie, never a value
    assert set(files) == {"vsphere-cookie", "vsphere-domain.xml"}
    assert all("cookie=+/run/input/vsphere-cookie" in helper for helper in captive)
    assert "secret" not in " ".join(full)
    # And the first helper runs the second, which runs virt-v2v on the secret copy
    assert full[:2] == ["nbdkit", "--run"] and full[3:] == captive[0][1:]
    inner = shlex.split(full[2])
    assert inner[:2] == ["nbdkit", "--run"] and inner[3:] == captive[1][1:]
    assert shlex.split(inner[2]) == [
        "virt-v2v",
        "-i",
        "libvirtxml",
        "/run/input/vsphere-domain.xml",
        "-o",
        "local",
    ]


def test_no_helper_leaves_the_command_as_it_is() -> None:
    assert v2v.run_captive(["virt-v2v", "-i", "disk", "x"], []) == ["virt-v2v", "-i", "disk", "x"]


def test_sockets_in_the_work_directory_are_where_the_workload_sees_it(tmp_path: Path) -> None:
    # Given a helper serving on a Unix socket in the work directory, and a domain
    # document naming that socket (a vSphere disk's captive nbdkit) and a disk staged in
    # the work directory (which a pod reaches at the same path, through a share)
    work = tmp_path / "work"
    work.mkdir()
    sock = work / "nbd-0.sock"
    staged = work / "disks" / "a.vmdk"
    domain = work / "vsphere-domain.xml"
    domain.write_text(
        f"<domain><source file='json:{{\"path\":\"{sock}\"}}'/><source file='{staged}'/></domain>"
    )
    given = V2vInput(
        argv=["-i", "libvirtxml", str(domain)],
        files=[str(domain)],
        captive=[["nbdkit", f"--unix={sock}", "curl", "url=https://a/1"]],
        workload_paths=[str(sock)],
    )

    # When the workload sees the work directory elsewhere (a pod's)
    argv, files, captive = v2v.provider_files(given, work, "/pod/work/input", "/pod/work")

    # Then the helper makes, and the document names, the socket there
    assert captive == [["nbdkit", "--unix=/pod/work/nbd-0.sock", "curl", "url=https://a/1"]]
    assert b'"path":"/pod/work/nbd-0.sock"' in files["vsphere-domain.xml"]
    assert str(sock).encode() not in files["vsphere-domain.xml"]
    assert argv == ["-i", "libvirtxml", "/pod/work/input/vsphere-domain.xml"]
    # And the staged disk keeps its path (the share's)
    assert f"file='{staged}'".encode() in files["vsphere-domain.xml"]

    # And where it sees the work directory here, nothing changes
    argv, files, captive = v2v.provider_files(given, work, f"{work}/input", str(work))
    assert captive == [["nbdkit", f"--unix={sock}", "curl", "url=https://a/1"]]
    assert str(sock).encode() in files["vsphere-domain.xml"]


def _full(
    tmp_path: Path, workloads: LocalWorkloads, source: Any, **job: Any
) -> tuple[v2v.Converter, v2v.Job]:
    """A full conversion of a one-disk vSphere VM from ``source`` into a volume here."""
    vm = Vm(id="vm-1", name="db", provider_type=ProviderType.VSPHERE,
            disks=[Disk(id="2000", name="a", capacity=1 << 20)])  # fmt: skip
    target = tmp_path / "target.raw"
    target.write_bytes(b"")
    volume = Volume(disk_id="2000", name="v", size=1 << 20, capacity=1 << 20, path=str(target))
    work = tmp_path / "work"
    work.mkdir()
    settings = ConversionSettings(work_dir=work, large_tmp_dir=tmp_path / "large", accel="tcg")
    converter = v2v.Converter(settings, tmp_path / "data", workloads)
    made = v2v.Job(migration="m", vm_key="vm", mode=ConversionMode.FULL, inventory=vm,
                   volumes=[volume], timeout_seconds=60, source=source, **job)  # fmt: skip
    return converter, made


class _Downloaded:
    """A provider whose input is a disk it downloaded onto this host (vSphere over NFC)."""

    def __init__(self, disk: Path) -> None:
        self.disk = disk

    async def v2v_input(self, vm: Vm, workdir: Path, *, pace: Pace | None = None) -> V2vInput:
        domain = workdir / "domain.xml"
        domain.write_text(f"<domain><source file='{self.disk}'/></domain>")
        return V2vInput(
            argv=["-i", "libvirtxml", str(domain)], files=[str(domain)], host_files=[str(self.disk)]
        )


class _Elsewhere(LocalWorkloads):
    workloads_run_here = False  # as a cluster's conversion pods


async def test_an_input_of_host_files_is_refused_where_workloads_run_elsewhere(
    tmp_path: Path,
) -> None:
    # Given a full conversion whose provider downloaded the disk onto this host, and
    # workloads that run elsewhere (pods)
    disk = tmp_path / "2000.vmdk"
    disk.write_bytes(b"x")
    converter, job = _full(tmp_path, _Elsewhere(), _Downloaded(disk))

    # When it runs, it is refused with the reason and the way out, before any workload
    with pytest.raises(v2v.ConversionError, match="conversion pod cannot read") as refused:
        await converter.convert(job)
    assert "2000.vmdk" in refused.value.reason and "diskTransfer: datastore" in refused.value.reason


class _Captured(LocalWorkloads):
    """Workloads that record what they were asked to run (and what the rate file held
    meanwhile), then fail it."""

    def __init__(self, elsewhere: bool = False) -> None:
        super().__init__()
        self.workloads_run_here = not elsewhere
        self.argv: list[str] = []
        self.env: dict[str, str] = {}
        self.secret_files: dict[str, bytes] = {}
        self.rate_file: str = ""
        self.broker = Broker()
        self.tickets_open = 0  # the broker's open tickets while the workload ran

    async def run_workload(self, workload: Any, log: Any, on_line: Any = None) -> int:
        self.argv, self.env = list(workload.argv), dict(workload.env)
        self.secret_files = dict(workload.secret_files)
        self.tickets_open = self.broker.open
        found = [a.split("=", 1)[1] for a in self.argv if a.startswith("rate-file=")]
        if found and self.workloads_run_here:
            await asyncio.sleep(0.05)  # the grants' task has begun
            self.rate_file = Path(found[0]).read_text()
        return 1


class _Pods(_Captured):
    """As a cluster's conversion pods: they take their grants themselves."""

    def __init__(self) -> None:
        super().__init__(elsewhere=True)

    def remote_pace(self, rate: Any) -> Any:
        return self.broker.remote(rate, "http://10.0.0.7:8080")


class _Served:
    """A provider whose input is one captive nbdkit (vSphere's datastore path)."""

    async def v2v_input(self, vm: Vm, workdir: Path, *, pace: Pace | None = None) -> V2vInput:
        domain = workdir / "domain.xml"
        domain.write_text("<domain/>")
        sock = workdir / "nbd-0.sock"
        return V2vInput(
            argv=["-i", "libvirtxml", str(domain)],
            files=[str(domain)],
            captive=[["nbdkit", "--readonly", f"--unix={sock}", "curl", "url=https://h/f"]],
            workload_paths=[str(sock)],
        )


async def test_a_budgeted_conversion_reads_through_the_rate_filter_it_feeds_here(
    tmp_path: Path,
) -> None:
    # Given a full conversion under a bandwidth budget, its source served by a helper,
    # where workloads run on this host
    granted: list[int] = []

    async def rate(nbytes: int) -> None:
        granted.append(nbytes)
        await asyncio.sleep(1)

    workloads = _Captured()
    converter, job = _full(tmp_path, workloads, _Served(), rate=rate)

    # When it runs (the workload fails at once: only its command matters here)
    with pytest.raises(v2v.ConversionError):
        await converter.convert(job)

    # Then the helper reads through nbdkit's rate filter whose file the grants feed
    # (1 MiB/s until the first period ends)
    assert workloads.argv[:2] == ["nbdkit", "--run"] and workloads.argv[3] == "--filter=rate"
    assert workloads.rate_file.strip() == str(8 << 20) and granted


async def test_a_budgeted_conversion_pod_feeds_its_rate_file_with_a_ticket_from_its_secret(
    tmp_path: Path,
) -> None:
    # Given a full conversion under a bandwidth budget, in a pod (workloads elsewhere)
    async def rate(nbytes: int) -> None:
        await asyncio.sleep(0)

    workloads = _Pods()
    converter, job = _full(tmp_path, workloads, _Served(), rate=rate, rate_step=3 << 20)

    # When it runs
    with pytest.raises(v2v.ConversionError):
        await converter.convert(job)

    # Then the pod runs its command under the pacer, which reads the ticket from the
    # pod's secret files and feeds the rate file that the helper's filter re-reads
    pacer, rest = workloads.argv[:7], workloads.argv[7:]
    assert pacer[:3] == ["python3", "-m", "ferry.platform.kubernetes.podpace"]
    ticket_file, rate_file, step, dashes = pacer[3:]
    assert ticket_file.endswith("/input/pace-ticket.json") and step == str(3 << 20)
    assert dashes == "--" and rest[:2] == ["nbdkit", "--run"] and rest[3] == "--filter=rate"
    assert f"rate-file={rate_file}" in rest and rate_file.startswith("/var/tmp/ferry-v2v/")
    # and the ticket (its token) is a secret file, never in the command or environment
    token = msgspec.json.decode(workloads.secret_files["pace-ticket.json"])["token"]
    assert len(token) >= 40
    assert token not in " ".join(workloads.argv) + " ".join(workloads.env.values())
    # and the broker knew the ticket while the pod ran, and no longer
    assert workloads.tickets_open == 1 and workloads.broker.open == 0


async def test_a_budget_where_workloads_cannot_take_grants_is_refused(tmp_path: Path) -> None:
    # Given workloads that run elsewhere and have no way to ask for grants
    async def rate(nbytes: int) -> None:
        await asyncio.sleep(0)

    workloads = _Captured(elsewhere=True)
    converter, job = _full(tmp_path, workloads, _Served(), rate=rate)

    # When a budgeted conversion runs / Then it is refused before any workload ran
    with pytest.raises(v2v.ConversionError, match="cannot take grants"):
        await converter.convert(job)
    assert workloads.argv == []


class _Staged(_Downloaded):
    """A provider that moves the source's bytes itself while it makes the input (an OVA's
    staged copies): it records the pace it was given."""

    def __init__(self, disk: Path) -> None:
        super().__init__(disk)
        self.pace: Pace | None = None

    async def v2v_input(self, vm: Vm, workdir: Path, *, pace: Pace | None = None) -> V2vInput:
        self.pace = pace
        given = await super().v2v_input(vm, workdir)
        return msgspec.structs.replace(given, host_files=[])


async def test_a_budgeted_conversion_paces_what_the_provider_moves_itself(tmp_path: Path) -> None:
    # Given a full conversion under a bandwidth budget whose provider stages the disks
    async def rate(nbytes: int) -> None:
        await asyncio.sleep(0)

    source = _Staged(tmp_path / "disk.raw")
    converter, job = _full(tmp_path, _Captured(), source, rate=rate)

    # When it runs / Then the provider made its input under the job's budgets
    with pytest.raises(v2v.ConversionError):
        await converter.convert(job)
    assert source.pace is rate
