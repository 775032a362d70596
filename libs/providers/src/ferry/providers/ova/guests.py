"""Guests virt-v2v cannot convert, known from the descriptor before anything is read.

virt-v2v converts Linux and Windows guests; anything else fails inside its
appliance after minutes. The descriptor names the guest's family (VMware's
``vmw:osType`` such as ``freebsd64Guest``, VirtualBox's ``OSType`` such as
``FreeBSD_64``, or a description), so a guest of a family virt-v2v never
converts is a concern in the inventory and preflight refuses it. Only families
that are certainly not Linux or Windows are named; an unclear or numeric type
(``otherGuest``, a CIM id) is left to virt-v2v.
"""

from __future__ import annotations

import re

from ferry.proto.inventory import Concern, ConcernCode

_UNCONVERTIBLE = (
    ("freebsd", "FreeBSD"),
    ("netbsd", "NetBSD"),
    ("openbsd", "OpenBSD"),
    ("solaris", "Solaris"),
    ("opensolaris", "Solaris"),
    ("darwin", "macOS"),
    ("macos", "macOS"),
    ("netware", "NetWare"),
    ("os2", "OS/2"),
    ("ecomstation", "OS/2"),
    ("dos", "DOS"),
    ("vmkernel", "VMware ESXi"),
)
_WORD = re.compile(r"[a-z]+\d?")


def concerns(guest_os: str) -> list[Concern]:
    """A concern when ``guest_os`` names a family virt-v2v does not convert; else none."""
    words = _WORD.findall(guest_os.lower().replace("/", ""))
    for prefix, family in _UNCONVERTIBLE:
        if any(w.startswith(prefix) for w in words):
            return [
                Concern(
                    code=ConcernCode.UNSUPPORTED,
                    message=f"the guest is {family} ({guest_os!r}): virt-v2v converts only "
                    "Linux and Windows guests",
                )
            ]
    return []
