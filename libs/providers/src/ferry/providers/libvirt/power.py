"""Power of a libvirt domain: state, ACPI shutdown with a grace period, then destroy.

The graceful path presses the ACPI power button (what a person at the console
would do), so the guest flushes its file systems; only a guest that ignores it
for ``timeout`` seconds is destroyed (pulled from power). A domain that vanishes
while it is being shut down is reported as not found, never as off.
"""

from __future__ import annotations

import time

import libvirt

from ferry.proto.inventory import PowerState

_ON = {
    libvirt.VIR_DOMAIN_RUNNING,
    libvirt.VIR_DOMAIN_BLOCKED,
    libvirt.VIR_DOMAIN_PAUSED,
    libvirt.VIR_DOMAIN_SHUTDOWN,  # shutting down: still running until it is off
    libvirt.VIR_DOMAIN_PMSUSPENDED,
}
_OFF = {libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_CRASHED}
POLL_SECONDS = 0.5


def state(dom: libvirt.virDomain) -> PowerState:
    code = dom.state(0)[0]
    if code in _ON:
        return PowerState.ON
    if code in _OFF:
        return PowerState.OFF
    return PowerState.UNKNOWN


def shutdown(dom: libvirt.virDomain, timeout: float) -> bool:
    """Blocking: ACPI power button, wait up to ``timeout``, then destroy; True when forced."""
    if not dom.isActive():
        return False
    try:
        dom.shutdownFlags(libvirt.VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN)
    except libvirt.libvirtError:
        if not dom.isActive():
            return False  # it went off between the look and the press
        raise
    deadline = time.monotonic() + max(0.0, timeout)
    while time.monotonic() < deadline:
        if not dom.isActive():
            return False
        time.sleep(POLL_SECONDS)
    try:
        dom.destroy()
    except libvirt.libvirtError:
        if dom.isActive():
            raise
        return False  # it finished shutting down on its own at the last moment
    return True


def start(dom: libvirt.virDomain) -> None:
    if not dom.isActive():
        dom.create()
