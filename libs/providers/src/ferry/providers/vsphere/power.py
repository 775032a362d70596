"""Source power: a guest shutdown through VMware Tools, forced off after a grace period.

A guest asked through Tools can flush its file systems; pulling the plug cannot.
So Ferry asks first and forces only when the guest did not stop within the
timeout, or when Tools is not running and nobody inside can be asked. The caller
learns which happened (forced or not), because a forced stop is worth an event.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from pyVmomi import vim, vmodl

from ferry.proto.inventory import PowerState
from ferry.providers.vsphere import client
from ferry.providers.vsphere.inventory import POWER
from ferry.providers.vsphere.snapshots import tools_running

log = logging.getLogger(__name__)
POLL = 0.5


def state(vm_ref: Any) -> PowerState:
    return POWER.get(str(vm_ref.runtime.powerState), PowerState.UNKNOWN)


def shutdown(vm_ref: Any, timeout: float) -> bool:
    """Blocking: stop the VM; True when it had to be forced off."""
    if state(vm_ref) is PowerState.OFF:
        return False
    if tools_running(vm_ref):
        try:
            vm_ref.ShutdownGuest()
        except (vim.fault.ToolsUnavailable, vim.fault.InvalidState, vmodl.MethodFault) as exc:
            log.warning(
                "guest shutdown of %s refused, forcing: %s", vm_ref._moId, client.fault_text(exc)
            )
        else:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if state(vm_ref) is PowerState.OFF:
                    return False
                time.sleep(POLL)
            log.warning(
                "%s still running %.0fs after guest shutdown, forcing", vm_ref._moId, timeout
            )
    if state(vm_ref) is PowerState.OFF:
        return False
    client.wait_for(vm_ref.PowerOffVM_Task(), f"power off of {vm_ref._moId}")
    return True


def power_on(vm_ref: Any) -> None:
    """Blocking: start the VM; a VM already running is left as it is."""
    if state(vm_ref) is PowerState.ON:
        return
    client.wait_for(vm_ref.PowerOnVM_Task(), f"power on of {vm_ref._moId}")
