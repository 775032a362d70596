"""The parts of a run around virt-v2v: volumes, output links, secrets, settings."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from ferry.conversion_service import accel, rundirs, v2v
from ferry.conversion_service.settings import Settings
from ferry.platform.local.processes import LocalWorkloads
from ferry.platform.workloads import Workload, WorkloadError
from ferry.proto.inventory import Disk, ProviderType, Vm, Volume

VM = Vm(
    id="vm",
    name="vm",
    provider_type=ProviderType.OVA,
    disks=[Disk(id="d1", name="a", capacity=1 << 20), Disk(id="d2", name="b", capacity=1 << 20)],
)


def volume_files(tmp_path: Path, fmt: str = "raw", size: int = 2 << 20) -> list[Volume]:
    found = []
    for index, disk in enumerate(VM.disks):
        path = tmp_path / f"vol{index}"
        with path.open("wb") as handle:
            handle.truncate(size)
        found.append(
            Volume(
                disk_id=disk.id,
                name=f"vol{index}",
                size=size + (1 << 20),  # requested storage: the disk plus overhead
                capacity=size,
                path=str(path),
                format=fmt,
            )
        )
    return found


def test_volume_count_must_match_the_disks(tmp_path: Path) -> None:
    # Given one volume for a two-disk VM
    # Then the run is refused before virt-v2v starts, saying why
    with pytest.raises(v2v.ConversionError, match="2 disk\\(s\\) but 1 volume"):
        v2v.check_volumes(VM, volume_files(tmp_path)[:1])


async def test_missing_volume_file_is_refused(tmp_path: Path) -> None:
    # Given a volume whose file is gone
    vols = volume_files(tmp_path)
    os.unlink(vols[1].path)
    # Then the local platform will not place it for a workload, naming it
    with pytest.raises(WorkloadError, match=r"'vol1': .* does not exist"):
        await LocalWorkloads().place_volumes("ns", vols)
    # And a volume without a path on this host is refused the same way
    pathless = Volume(disk_id="d1", name="elsewhere", size=1, capacity=1)
    with pytest.raises(WorkloadError, match="'elsewhere' has no local path"):
        await LocalWorkloads().place_volumes("ns", [pathless])


def test_mixed_formats_are_refused(tmp_path: Path) -> None:
    # Given a raw and a qcow2 volume (virt-v2v takes one -of)
    vols = volume_files(tmp_path)
    vols[1] = Volume(disk_id="d2", name="q", size=1, path=vols[1].path, format="qcow2")
    with pytest.raises(v2v.ConversionError, match="must all be raw or all qcow2"):
        v2v.check_volumes(VM, vols)


async def test_output_links_are_named_as_virt_v2v_writes_them(tmp_path: Path) -> None:
    # Given two volumes placed by the local platform
    vols = volume_files(tmp_path)
    placed = await LocalWorkloads().place_volumes("ns", vols)
    # When the links are described and a workload runs with them
    links = v2v.output_links(vols, placed)
    assert list(links) == ["out/guest-sda", "out/guest-sdb"]
    script = "printf converted > out/guest-sda"
    workload = Workload(
        name="w", argv=["sh", "-c", script], workdir=str(tmp_path), links=links, time_limit=10
    )
    assert await LocalWorkloads().run_workload(workload, io.BytesIO()) == 0
    # Then guest-sda/sdb point at the volumes, so writes land in them
    assert [os.readlink(tmp_path / link) for link in links] == [v.path for v in vols]
    assert Path(vols[0].path).read_bytes().startswith(b"converted")
    v2v.check_outputs(tmp_path / "out", links)


async def test_a_link_replaced_by_a_file_is_detected(tmp_path: Path) -> None:
    # Given a workload that replaces a link with a regular file (the volume stays empty)
    vols = volume_files(tmp_path)
    links = v2v.output_links(vols, await LocalWorkloads().place_volumes("ns", vols))
    script = "rm out/guest-sdb && printf x > out/guest-sdb"
    workload = Workload(
        name="w", argv=["sh", "-c", script], workdir=str(tmp_path), links=links, time_limit=10
    )
    # Then the run fails instead of reporting an empty volume as converted
    with pytest.raises(WorkloadError, match=r"out/guest-sdb .* was replaced by a file"):
        await LocalWorkloads().run_workload(workload, io.BytesIO())


def test_a_disk_without_volume_is_detected(tmp_path: Path) -> None:
    # Given virt-v2v wrote a third disk next to the links
    vols = volume_files(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    links = {"out/guest-sda": vols[0].path, "out/guest-sdb": vols[1].path}
    (out / "guest-sdc").write_bytes(b"x")
    (out / "guest.xml").write_bytes(b"<domain/>")
    with pytest.raises(v2v.ConversionError, match="guest-sdc"):
        v2v.check_outputs(out, links)


def test_raw_volumes_grow_back_to_their_size(tmp_path: Path) -> None:
    # Given a volume that virt-v2v truncated to the source disk's size
    vols = volume_files(tmp_path, size=3 << 20)
    os.truncate(vols[0].path, 1 << 20)
    # When sizes are restored
    v2v.restore_sizes(vols)
    # Then the file has the guest disk's size again, not the storage's requested size
    assert Path(vols[0].path).stat().st_size == vols[0].capacity == 3 << 20


def test_provider_files_must_stay_in_the_work_directory(tmp_path: Path) -> None:
    # Given a provider that wrote a password file with loose permissions
    work = tmp_path / "work"
    work.mkdir()
    secret = work / "password"
    secret.write_text("not-logged")
    secret.chmod(0o644)
    # When the run secures it
    v2v._secure([str(secret)], work)
    # Then only the owner may read it
    assert secret.stat().st_mode & 0o777 == 0o600
    # And a file outside the run's directory is refused
    with pytest.raises(v2v.ConversionError, match="outside"):
        v2v._secure([str(tmp_path / "elsewhere")], work)


def test_log_path_is_per_migration_and_vm(tmp_path: Path) -> None:
    # Given ids with characters that are unsafe in paths
    path = v2v.log_path(tmp_path, "mig-1", "vm/../../etc")
    # Then the log stays under <data>/logs/conversion/<migration>/
    assert path.parent == tmp_path / "logs" / "conversion" / "mig-1"
    assert path.name.endswith(".log") and "/" not in path.name and ".." not in path.name[:2]


def test_libguestfs_environment_follows_the_verdict() -> None:
    # Given KVM that does not run guests
    # Then libguestfs is told to emulate; with KVM working it is not
    assert accel.Acceleration(False, "hangs").environment() == {
        "LIBGUESTFS_BACKEND": "direct",
        "LIBGUESTFS_BACKEND_SETTINGS": "force_tcg",
    }
    assert "LIBGUESTFS_BACKEND_SETTINGS" not in accel.Acceleration(True, "ok").environment()


async def test_probe_without_qemu_says_why() -> None:
    # Given a QEMU binary that does not exist
    verdict = await accel.probe("/nonexistent/qemu", 5.0, kernel=Path("/dev/null"))
    # Then KVM is not used, with a reason (or /dev/kvm is already missing here)
    assert verdict.kvm is False
    assert verdict.reason


def test_settings_default_to_one_conversion_per_replica(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given the environment of a replica
    monkeypatch.setenv("FERRY_CONVERSION__ACCEL", "tcg")
    # When settings are read
    settings = Settings()
    # Then one conversion runs at a time, and grouped variables reach the group
    assert settings.workers.concurrency == 1
    assert settings.conversion.accel == "tcg"
    monkeypatch.setenv("FERRY_WORKERS__CONCURRENCY", "2")
    assert Settings().workers.concurrency == 2


def test_run_directories_of_dead_services_are_swept(tmp_path: Path) -> None:
    # Given a run directory claimed by this (live) process, one claimed by a process
    # that is gone, and one not claimed yet
    (tmp_path / "ferry-v2v-live").mkdir()
    live = rundirs.claim(tmp_path / "ferry-v2v-live")
    dead = tmp_path / "ferry-v2v-dead"
    dead.mkdir()
    (dead / rundirs._OWNER_FILE).write_text("999999999 12345\n")
    fresh = tmp_path / "ferry-v2v-fresh"
    fresh.mkdir()

    # When a conversion-service starts and sweeps
    removed = rundirs.sweep_orphans(tmp_path)

    # Then only the dead one's directory is gone
    assert removed == [dead]
    assert live is not None and live.is_dir() and fresh.is_dir() and not dead.exists()
