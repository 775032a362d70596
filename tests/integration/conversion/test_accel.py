"""The KVM probe boots a real kernel; both of its answers, on this machine."""

from __future__ import annotations

import pytest

from ferry.conversion_service import accel

pytestmark = [pytest.mark.slow]


@pytest.mark.timeout(120)
async def test_probe_sees_a_kernel_boot_under_emulation() -> None:
    # Given the host kernel and QEMU's software emulation (always available)
    kernel = accel.probe_kernel()
    if kernel is None:
        pytest.fail("no /boot/vmlinuz-* to probe with (install a linux-image package)")
    # When the probe boots it with TCG
    verdict = await accel.probe("qemu-system-x86_64", 60.0, kernel, accelerator="tcg")
    # Then it sees the kernel run to its panic
    assert verdict.kvm is True, verdict.reason
    assert "booted" in verdict.reason


@pytest.mark.timeout(120)
async def test_probe_verdict_for_kvm_here_is_definite_and_explained() -> None:
    # Given this machine's /dev/kvm (present, but on some hosts it cannot run guests)
    # When the probe tries it with a short limit
    verdict = await accel.probe("qemu-system-x86_64", 15.0)
    # Then it answers either way with a reason, and the environment follows it
    assert verdict.reason
    env = verdict.environment()
    assert ("LIBGUESTFS_BACKEND_SETTINGS" in env) is (not verdict.kvm)
    print(f"KVM usable: {verdict.kvm} ({verdict.reason})")
