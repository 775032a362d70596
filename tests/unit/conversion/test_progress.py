"""virt-v2v's output, as 2.2 prints it, turned into stages, percentages and reasons.

The sample lines are copied from real runs of virt-v2v 2.2 on this project's test
guest (``-v -x``), trimmed.
"""

from __future__ import annotations

from ferry.conversion_service.progress import OutputReader, Progress, is_noise
from ferry.platform.workloads import split_lines

RUN = """\
[   0.0] Setting up the source: -i ova /tmp/ova/ferry-test-guest.ova
libguestfs: trace: v2v: get_backend_setting "force_tcg"
[   1.6] Opening the source
[    1.481828] Kernel command line: panic=1 console=ttyS0
[  25.2] Inspecting the source
i_root = /dev/sda1
i_type = linux
i_distro = debian
i_product_name = 12.15
[  40.4] Converting 12.15 to run on KVM
gcaps_block_bus = virtio-blk
gcaps_net_bus = virtio-net
gcaps_machine = q35
gcaps_arch = x86_64
virt-v2v: This guest has virtio drivers installed.
[ 228.3] Checking if the guest needs BIOS or UEFI to boot
[ 229.4] Copying disk 1/1
\texport-size: 2147483648 (2G)
nbdkit: file[1]: debug: file: can_write
"""

BAR = (
    "\u259d   0% [----------------------------------------]\r"
    "\u2597  42% [****************------------------------]\r"
    "\u2583  85% [**********************************------]\r"
    "\u2588 100% [****************************************]\n"
)


def read(text: str) -> tuple[OutputReader, list[Progress]]:
    reader = OutputReader()
    lines, rest = split_lines(text)
    updates = [u for u in (reader.feed(line) for line in [*lines, rest] if line) if u]
    return reader, updates


def test_stage_lines_become_progress_and_kernel_lines_do_not() -> None:
    # Given a run's output up to the copy
    # When it is read
    _, updates = read(RUN)
    # Then each virt-v2v stage is one update, in order, and the copy names its disk
    stages = [u.stage for u in updates]
    assert stages == [
        "Setting up the source: -i ova /tmp/ova/ferry-test-guest.ova",
        "Opening the source",
        "Inspecting the source",
        "Converting 12.15 to run on KVM",
        "Checking if the guest needs BIOS or UEFI to boot",
        "Copying disk 1/1",
    ]
    assert updates[-1] == Progress("Copying disk 1/1", disk=1, disks=1, percent=0.0, elapsed=229.4)


def test_nbdcopy_bar_redrawn_with_carriage_returns_gives_percentages() -> None:
    # Given the copy stage, then nbdcopy's bar redrawn in one chunk
    # When it is read
    _, updates = read(RUN + BAR)
    # Then every redraw is a percentage of disk 1 of 1, ending at 100
    percents = [u.percent for u in updates if u.disk == 1]
    assert percents == [0.0, 42.0, 85.0, 100.0]


def test_machine_readable_fraction_is_a_percentage() -> None:
    # Given a copy stage followed by the N/100 form of --progress=FD
    _, updates = read("[  10.0] Copying disk 2/3\n7/100\n50/100\n")
    # Then it reads as percent of disk 2 of 3
    assert [(u.disk, u.disks, u.percent) for u in updates] == [
        (2, 3, 0.0),
        (2, 3, 7.0),
        (2, 3, 50.0),
    ]


def test_percent_outside_a_copy_is_ignored() -> None:
    # Given a bar before any "Copying disk" stage (e.g. an OVA being unpacked)
    _, updates = read("[   0.0] Opening the source\n 42% [****----]\n")
    # Then only the stage is reported
    assert [u.percent for u in updates] == [None]


def test_decisions_are_read_from_the_log() -> None:
    # Given a run with -v output
    reader, _ = read(RUN + "virt-v2v: This guest requires UEFI on the target to boot.\n")
    # Then what virt-v2v decided is known
    decisions = reader.decisions
    assert decisions.virtio_drivers is True
    assert decisions.uefi is True
    assert decisions.block_bus == "virtio-blk"
    assert decisions.net_bus == "virtio-net"
    assert decisions.machine == "q35"
    assert decisions.inspected["distro"] == "debian"
    assert decisions.inspected["product_name"] == "12.15"


def test_bios_guest_is_bios_and_missing_drivers_are_noticed() -> None:
    # Given a guest for which virt-v2v found no virtio drivers and no UEFI
    reader, _ = read(
        "[  61.0] Checking if the guest needs BIOS or UEFI to boot\n"
        "virt-v2v: This guest does not have virtio drivers installed.\n"
    )
    # Then both are recorded as negative, not unknown
    assert reader.decisions.uefi is False
    assert reader.decisions.virtio_drivers is False


def test_error_block_is_the_reason_without_boilerplate() -> None:
    # Given a failed inspection among trace noise, as virt-v2v-in-place 2.2 printed it
    output = (
        RUN
        + "libguestfs: trace: v2v: inspect_os = []\n"
        + "virt-v2v-in-place: error: inspection could not detect the source guest "
        + "(or physical machine).\n"
        + "\n"
        + "Assuming that you are running virt-v2v/virt-p2v on a source which is "
        + "supported (and not, for example, a blank disk), then this should not happen.\n"
        + "\n"
        + "No root device found in this operating system image.\n"
        + "rm -rf -- '/tmp/ferry-v2v-1k3ndg1r/tmp/v2v.hWryv4'\n"
        + "libguestfs: trace: v2v: close\n"
        + "umount-all: /proc/mounts: fsname=/dev/root dir=/ type=ext2\n"
        + "Some unrelated line after the clean-up\n"
    )
    # When it is read
    reader, _ = read(output)
    reason, detail = reader.failure()
    # Then the reason is virt-v2v's error line and the detail its explanation only
    assert reason == "inspection could not detect the source guest (or physical machine)."
    assert detail == [
        "Assuming that you are running virt-v2v/virt-p2v on a source which is supported "
        "(and not, for example, a blank disk), then this should not happen.",
        "No root device found in this operating system image.",
    ]


def test_reporting_bugs_boilerplate_ends_the_error() -> None:
    # Given virt-v2v's advice to report bugs after the error
    reader, _ = read(
        "virt-v2v: error: nbdcopy command failed, see earlier error messages\n"
        "\n"
        "If reporting bugs, run virt-v2v with debugging enabled and include the "
        "complete output:\n"
        "\n"
        "  virt-v2v -v -x [...]\n"
    )
    # Then the advice is not part of the failure
    assert reader.failure() == ("nbdcopy command failed, see earlier error messages", [])


def test_without_an_error_line_the_tail_skips_noise() -> None:
    # Given a run killed mid-way (no "error:" line), ending in trace noise
    reader, _ = read(RUN + "libguestfs: trace: v2v: close\n[    3.000001] reboot: Power down\n")
    # Then the failure names the last meaningful line, not libguestfs' trace
    reason, detail = reader.failure(limit=3)
    assert reason == "[ 229.4] Copying disk 1/1"
    assert "virt-v2v: This guest has virtio drivers installed." in detail
    assert not any("libguestfs" in line or "nbdkit" in line for line in detail)


def test_noise_filter() -> None:
    # Given typical lines of a verbose run
    # Then libguestfs/kernel/nbdkit chatter is noise, virt-v2v's own lines are not
    assert is_noise("libguestfs: trace: v2v: launch")
    assert is_noise("[    1.481828] Kernel panic - not syncing")
    assert is_noise("nbdkit: file[1]: debug: file: can_write")
    assert is_noise("\u2588 100% [****************************************]")
    assert not is_noise("virt-v2v: warning: could not determine a way to update Grub2")
    assert not is_noise("[  25.2] Inspecting the source")


def test_split_lines_keeps_the_unfinished_rest() -> None:
    # Given a chunk that ends mid-line
    lines, rest = split_lines("a\r\nb\rc\nhalf")
    # Then complete lines come out and the rest waits for the next chunk
    assert (lines, rest) == (["a", "b", "c"], "half")
