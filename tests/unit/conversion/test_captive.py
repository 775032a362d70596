"""A provider's captive helpers (nbdkit ``--run``) around virt-v2v, without I/O."""

from __future__ import annotations

import shlex
from pathlib import Path

from ferry.conversion_service import v2v
from ferry.providers.base import V2vInput


def test_helpers_wrap_virt_v2v_first_outermost_and_read_the_secret_copies(
    tmp_path: Path,
) -> None:
    # Given a provider input with two nbdkit helpers reading a cookie file it wrote
    work = tmp_path / "work"
    work.mkdir()
    cookie = work / "vsphere-cookie"
    cookie.write_text("vmware_soap_session=secret")
    domain = work / "vsphere-domain.xml"
    domain.write_text("<domain/>")
    given = V2vInput(
        argv=["-i", "libvirtxml", str(domain)],
        files=[str(cookie), str(domain)],
        captive=[
            ["nbdkit", "--port=1", "curl", "url=https://a/1", f"cookie=+{cookie}"],
            ["nbdkit", "--port=2", "curl", "url=https://a/2", f"cookie=+{cookie}"],
        ],
    )

    # When the service points them at the workload's secret files and composes the command
    argv, files, captive = v2v.provider_files(given, work, "/run/input")
    full = v2v.run_captive(["virt-v2v", *argv, "-o", "local"], captive)

    # Then every helper reads the workload's copy of the cookie, never a value
    assert set(files) == {"vsphere-cookie", "vsphere-domain.xml"}
    assert all("cookie=+/run/input/vsphere-cookie" in helper for helper in captive)
    assert "secret" not in " ".join(full)
    # And the first helper runs the second, which runs virt-v2v on the secret copy
    assert full[:2] == ["nbdkit", "--run"] and full[3:] == captive[0][1:]
    inner = shlex.split(full[2])
    assert inner[:2] == ["nbdkit", "--run"] and inner[3:] == captive[1][1:]
    assert shlex.split(inner[2]) == [
        "virt-v2v",
        "-i",
        "libvirtxml",
        "/run/input/vsphere-domain.xml",
        "-o",
        "local",
    ]


def test_no_helper_leaves_the_command_as_it_is() -> None:
    assert v2v.run_captive(["virt-v2v", "-i", "disk", "x"], []) == ["virt-v2v", "-i", "disk", "x"]


def test_sockets_in_the_work_directory_are_where_the_workload_sees_it(tmp_path: Path) -> None:
    # Given a helper serving on a Unix socket in the work directory, and a domain
    # document naming that socket (a vSphere disk's captive nbdkit)
    work = tmp_path / "work"
    work.mkdir()
    sock = work / "nbd-0.sock"
    domain = work / "vsphere-domain.xml"
    domain.write_text(f'<domain><source file=\'json:{{"path":"{sock}"}}\'/></domain>')
    given = V2vInput(
        argv=["-i", "libvirtxml", str(domain)],
        files=[str(domain)],
        captive=[["nbdkit", f"--unix={sock}", "curl", "url=https://a/1"]],
    )

    # When the workload sees the work directory elsewhere (a pod's)
    argv, files, captive = v2v.provider_files(given, work, "/pod/work/input", "/pod/work")

    # Then the helper makes, and the document names, the socket there
    assert captive == [["nbdkit", "--unix=/pod/work/nbd-0.sock", "curl", "url=https://a/1"]]
    assert b'"path":"/pod/work/nbd-0.sock"' in files["vsphere-domain.xml"]
    assert str(work).encode() not in files["vsphere-domain.xml"]
    assert argv == ["-i", "libvirtxml", "/pod/work/input/vsphere-domain.xml"]

    # And where it sees it here, nothing changes
    argv, files, captive = v2v.provider_files(given, work, f"{work}/input", str(work))
    assert captive == [["nbdkit", f"--unix={sock}", "curl", "url=https://a/1"]]
    assert str(sock).encode() in files["vsphere-domain.xml"]
