"""A migration of OVA copies onto the local platform, driven as a user drives it.

The end-to-end and fault tests all run the same journey against a
:class:`ferry.testing.stack.LocalStack`: the test guest as one OVA per VM,
providers, maps and a Plan applied with ``ferry apply``, ``ferry migrate``, and
the audit stream read back. The journey lives here so that the stack harness
stays about processes.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ferry.runtime.stack import StackError
from ferry.testing.stack import LocalStack

# A raw copy of an OVA VM (skipGuestConversion): the importer's verified copy, no virt-v2v.
RAW_COPY = [
    "Started",
    "StorePowerState",
    "PowerOffSource",
    "CreateDataVolumes",
    "AllocateDisks",
    "CopyDisks",
    "CreateVM",
    "PowerOn",
    "Completed",
]

# The cold OVA flow (flow 3) as the audit stream shows it, step by step.
FLOW3 = [
    "Started",
    "StorePowerState",
    "PowerOffSource",
    "CreateDataVolumes",
    "AllocateDisks",
    "ConvertGuest",
    "CreateVM",
    "PowerOn",
    "Completed",
]


def guest_ova(repo: Path) -> dict[str, Any]:
    """The test guest (tests/guest/build_guest.py): built once, then from the cache."""
    done = subprocess.run(
        [sys.executable, str(repo / "tests/guest/build_guest.py")],
        stdout=subprocess.PIPE,
        text=True,
        check=True,
        timeout=1800,
    )
    guest: dict[str, Any] = json.loads(done.stdout)
    return guest


def place_ovas(stack: LocalStack, ova: Path, names: list[str]) -> Path:
    """One OVA per VM in ``<data>/ova``; the OVA provider names a VM after its file.

    Copies: the provider refuses symlinks and hard links, whose bytes may belong to
    a file outside the import area.
    """
    folder = stack.data_dir / "ova"
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copy2(ova, folder / f"{name}.ova")
    return folder


def plant_secret(stack: LocalStack, name: str, values: Mapping[str, str]) -> None:
    """A Secret as the services read it: ``<data>/secrets/default/<name>/<key>``."""
    folder = stack.data_dir / "secrets" / "default" / name
    folder.mkdir(parents=True, exist_ok=True)
    for key, value in values.items():
        (folder / key).write_text(value)
        (folder / key).chmod(0o600)  # the services refuse a secret others may read


def source_objects(source: str, spec: str, network: str, storage: str) -> str:
    """The source Provider ``source`` (``spec``: its YAML after ``spec:``, inline or a
    block), the local target Provider, a NetworkMap ``nets`` taking source network
    ``network`` to the pod network and a StorageMap ``disks`` (``storage``: its YAML after
    ``map:``), as the YAML documents every e2e stack starts from; a Plan follows."""
    pair = "{source: {name: %s}, destination: {name: local}}" % source  # noqa: UP031
    return f"""\
apiVersion: ferry.dev/v1alpha1
kind: Provider
metadata: {{name: {source}}}
spec:{spec}
---
apiVersion: ferry.dev/v1alpha1
kind: Provider
metadata: {{name: local}}
spec: {{type: kubevirt}}
---
apiVersion: ferry.dev/v1alpha1
kind: NetworkMap
metadata: {{name: nets}}
spec:
  provider: {pair}
  map: [{{source: {{name: {network}}}, destination: {{type: pod}}}}]
---
apiVersion: ferry.dev/v1alpha1
kind: StorageMap
metadata: {{name: disks}}
spec:
  provider: {pair}
  map:{storage}
"""


def ova_objects(
    ova_dir: Path,
    vm_ids: list[str],
    *,
    plan: str = "e2e",
    max_in_flight: int = 20,
    secret: str | None = None,
    power: str = "on",
    raw_copy: bool = False,
) -> str:
    """Providers, maps and a Plan (YAML) for the VMs ``<name>/ferry-test-guest``."""
    secret_ref = f", secret: {{name: {secret}}}" if secret else ""
    vms = "\n".join(
        f"    - id: {vm_id}\n      targetName: {vm_id.split('/')[0]}" for vm_id in vm_ids
    )
    objects = source_objects(
        "ova-source",
        f' {{type: ova, url: "{ova_dir}"{secret_ref}}}',
        "VM Network",
        " [{source: {name: ova}, destination: {storageClass: standard}}]",
    )
    return f"""\
{objects}---
apiVersion: ferry.dev/v1alpha1
kind: Plan
metadata: {{name: {plan}}}
spec:
  provider: {{source: {{name: ova-source}}, destination: {{name: local}}}}
  map: {{network: {{name: nets}}, storage: {{name: disks}}}}
  targetNamespace: e2e
  targetPowerState: "{power}"
  maxInFlight: {max_in_flight}
  skipGuestConversion: {"true" if raw_copy else "false"}
  vms:
{vms}
"""


def apply_yaml(stack: LocalStack, text: str, name: str = "objects.yaml") -> None:
    path = stack.root / name
    path.write_text(text)
    result = stack.ferry("apply", "-f", str(path))
    if result.returncode != 0:
        raise StackError(f"ferry apply failed: {result.stdout}{result.stderr}")


def start_migration(stack: LocalStack, plan: str, name: str) -> None:
    result = stack.ferry("migrate", plan, "--name", name)
    if result.returncode != 0:
        raise StackError(f"ferry migrate failed: {result.stdout}{result.stderr}")


def of_type(events: list[dict[str, Any]], kind: str, vm: str | None = None) -> list[dict[str, Any]]:
    """The events' data of one type (``vm.vm_running``, with or without ``.v1``)."""
    want = kind if kind.endswith(".v1") else kind + ".v1"
    return [
        e["data"] for e in events if e["type"] == want and (vm is None or e["data"].get("vm") == vm)
    ]


def finished(events: list[dict[str, Any]], migration: str) -> dict[str, Any] | None:
    done = [d for d in of_type(events, "migration.completed") if d["migration"] == migration]
    return done[-1] if done else None


async def stored_until_ended(
    stack: LocalStack, migration: str, within: float, poll: float
) -> list[dict[str, Any]]:
    """The migration's events read from the stream every ``poll`` seconds, until it
    completed or failed or ``within`` seconds passed (for tests whose event loop serves
    a stand-in, so they must not block it)."""
    deadline = time.monotonic() + within
    events: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        events = await asyncio.to_thread(stack.stored_events, migration)
        if finished(events, migration) or of_type(events, "migration.failed"):
            break
        await asyncio.sleep(poll)
    return events
