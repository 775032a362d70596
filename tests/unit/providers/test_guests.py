"""Guests virt-v2v cannot convert are named from the descriptor; unclear ones are not."""

from __future__ import annotations

import pytest

from ferry.proto.inventory import ConcernCode
from ferry.providers.ova import guests


@pytest.mark.parametrize(
    ("guest_os", "family"),
    [
        ("freebsd64Guest", "FreeBSD"),  # vCenter / ovftool
        ("FreeBSD_64", "FreeBSD"),  # VirtualBox
        ("solaris11_64Guest", "Solaris"),
        ("darwin19_64Guest", "macOS"),
        ("Oracle Solaris 11 (64-bit)", "Solaris"),
    ],
)
def test_a_family_virt_v2v_never_converts_is_a_concern(guest_os: str, family: str) -> None:
    # Given the guest type a producer wrote / When judged / Then it is named as unsupported
    [concern] = guests.concerns(guest_os)
    assert concern.code is ConcernCode.UNSUPPORTED
    assert family in concern.message and "Linux and Windows" in concern.message


@pytest.mark.parametrize(
    "guest_os",
    [
        "debian11_64Guest",
        "otherLinux64Guest",
        "otherGuest",
        "windows2019srv_64Guest",
        "Debian12_64",
        "Debian GNU/Linux 12 (64-bit)",
        "Microsoft Windows Server 2016 (64-bit)",
        "96",
        "",
    ],
)
def test_linux_windows_and_unclear_types_are_left_to_virt_v2v(guest_os: str) -> None:
    # Given a convertible or unclear guest type / When judged / Then there is no concern
    assert guests.concerns(guest_os) == []
