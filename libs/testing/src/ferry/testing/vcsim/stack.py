"""A vSphere source in a local stack: its objects, its Secret and guest writes.

What the vSphere e2e tests share: the Provider (pinned to the simulator's thumbprint,
credentials in a Secret), maps and a Plan as YAML, and the writes "of the guest"
into a VM's flat extent (the simulator runs no guest).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ferry.testing.migration import apply_yaml, of_type, plant_secret, source_objects
from ferry.testing.stack import LocalStack
from ferry.testing.vcsim.server import Endpoint

KIB = 1024


def vsphere_objects(
    endpoint: Endpoint,
    vms: list[str],
    *,
    plan: str,
    warm: bool,
    interval: int = 10,
    power: str = "off",
    per_host: int = 10,
    cold_transfer: str = "",
    disk_transfer: str = "",
    raw_copy: bool = False,
) -> str:
    """Provider (pinned thumbprint, credentials in a Secret), maps and a Plan, as YAML."""
    transfer = f", coldTransfer: {cold_transfer}" if cold_transfer else ""
    transfer += f", diskTransfer: {disk_transfer}" if disk_transfer else ""
    names = "\n".join(
        f"    - name: {vm}\n      targetName: {vm.lower().replace('_', '-')}" for vm in vms
    )
    objects = source_objects(
        "vcenter",
        f"""
  type: vsphere
  url: "{endpoint.url}"
  secret: {{name: vcenter-creds}}
  settings: {{thumbprint: "{endpoint.thumbprint}"{transfer}}}""",
        "DC0_DVPG0",
        " [{source: {name: LocalDS_0}, destination: {storageClass: standard}}]",
    )
    return f"""\
{objects}---
apiVersion: ferry.dev/v1alpha1
kind: Plan
metadata: {{name: {plan}}}
spec:
  provider: {{source: {{name: vcenter}}, destination: {{name: local}}}}
  map: {{network: {{name: nets}}, storage: {{name: disks}}}}
  targetNamespace: e2e
  targetPowerState: "{power}"
  warm: {str(warm).lower()}
  precopyIntervalSeconds: {interval}
  maxInFlightPerHost: {per_host}
  skipGuestConversion: {str(raw_copy).lower()}
  vms:
{names}
"""


def prepare(stack: LocalStack, endpoint: Endpoint, text: str) -> None:
    plant_secret(stack, "vcenter-creds", {"user": endpoint.username, "password": endpoint.password})
    apply_yaml(stack, text)


def guest_write(flat: Path, offset: int, marker: bytes) -> bytes:
    """What a guest write leaves in the flat extent: 4 KiB of ``marker``."""
    data = (marker * (4 * KIB // len(marker) + 1))[: 4 * KIB]
    with flat.open("r+b") as out:
        out.seek(offset)
        out.write(data)
    return data


def rounds(events: list[dict[str, Any]], vm: str) -> list[dict[str, Any]]:
    return of_type(events, "volume.disks_copied", vm)


def step_times(events: list[dict[str, Any]], vm: str) -> dict[str, float]:
    done = of_type(events, "migration.step_completed", vm)
    return {d["step"]: round(float(d.get("seconds") or 0.0), 1) for d in done}
