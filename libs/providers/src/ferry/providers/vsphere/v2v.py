"""virt-v2v's input side for a vSphere VM: libvirt's ESX driver over ``vpx://``.

virt-v2v reads the VM's configuration and disks from vCenter itself (over the
datastore HTTP path, as Ferry's own reader does). The password goes into a 0600
file in the work directory and is named by ``--password-file``; the URI carries
only the user name. ``no_verify=1`` appears only when the Provider is insecure:
otherwise libvirt verifies the server with the system's CAs.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import quote

from ferry.proto.inventory import Vm
from ferry.providers.base import V2vInput
from ferry.providers.vsphere.client import Session


def vpx_uri(session: Session, vm: Vm) -> str:
    user = quote(session.credentials.username, safe="")
    where = "/".join(quote(part, safe="") for part in (vm.datacenter, vm.cluster, vm.host) if part)
    query = "?no_verify=1" if session.trust.insecure else ""
    return f"vpx://{user}@{session.netloc}/{where}{query}"


def v2v_input(session: Session, vm: Vm, workdir: Path) -> V2vInput:
    password = workdir / "vsphere-password"
    fd = os.open(password, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(session.credentials.password)
    argv = [
        "-i",
        "libvirt",
        "-ic",
        vpx_uri(session, vm),
        "-ip",
        str(password),
        vm.name,
    ]
    return V2vInput(argv=argv, files=[str(password)])
