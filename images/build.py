"""Build Ferry's two images with buildah, from Debian's packages, and check what they run.

``make images`` runs this. The Dockerfiles start from ``python:3.11-slim-bookworm``;
where that cannot be pulled (no container registry, as on the machines Ferry is built
on), the same base is made here from Debian's own packages: debootstrap's minbase of
bookworm with its Python 3.11 (``python3``, ``python3-venv``, ``python-is-python3``, and
``python3-dev``: the official image has the headers too, and the locked packages that
ship as sources build against them; ``passwd`` for ``useradd``, which minbase leaves
out), from the mirror this machine's apt already uses, imported as
``localhost/ferry-python-base:bookworm`` and handed to both Dockerfiles as
``PYTHON_IMAGE``. Then each Dockerfile is built as written (``buildah bud``), and each
image is run (``buildah run``) for what its pods and services need:

* ``ferry:TAG`` (services, pvcinit and populator pods): the ``ferry`` command and every
  service's entry point, the populator program, qemu-img, qemu-nbd and nbdkit, run as
  the non-root user 10001;
* ``ferry-conversion:TAG`` (conversion and virt-inspector pods): virt-v2v,
  virt-inspector, nbdkit, Ferry's pacer for conversions under a budget, and
  libguestfs's appliance really starting (``libguestfs-test-tool``), as 10001.

It exits non-zero, saying which, when a build or a check fails. Nothing is pushed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BASE = "localhost/ferry-python-base:bookworm"
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"  # as Docker's images
BASE_PACKAGES = "python3,python3-venv,python3-dev,python-is-python3,ca-certificates,passwd"

SERVICES = (
    "ferry-migration-controller",
    "ferry-volume-service",
    "ferry-conversion-service",
    "ferry-vm-service",
)
# each image's checks: (what, argv, the exit status it must give)
CHECKS: dict[str, list[tuple[str, list[str], int]]] = {
    "ferry": [
        ("runs as the non-root user", ["sh", "-c", 'test "$(id -u)" = 10001'], 0),
        ("the ferry command", ["ferry", "--help"], 0),
        (
            "every service's entry point",
            ["sh", "-c", f"command -v {' '.join(SERVICES)}"],
            0,
        ),
        (
            "the populator program and the platform",
            ["python", "-c", "import ferry.platform.kubernetes.fill, ferry.volume_service.app"],
            0,
        ),
        ("qemu-img", ["qemu-img", "--version"], 0),
        ("qemu-nbd", ["qemu-nbd", "--version"], 0),
        ("nbdkit with its Python plugin", ["nbdkit", "python", "--version"], 0),
    ],
    "ferry-conversion": [
        ("runs as the non-root user", ["sh", "-c", 'test "$(id -u)" = 10001'], 0),
        ("virt-v2v", ["virt-v2v", "--version"], 0),
        ("virt-v2v-in-place", ["virt-v2v-in-place", "--version"], 0),
        ("virt-inspector", ["virt-inspector", "--version"], 0),
        ("nbdkit with its curl plugin", ["nbdkit", "curl", "--version"], 0),
        # no arguments: its usage, exit 2 (it is there and imports)
        ("Ferry's pacer", ["python3", "-m", "ferry.platform.kubernetes.podpace"], 2),
        # libguestfs's appliance really starts, as this user, with the image's kernel
        # (under TCG here: about a minute)
        ("libguestfs's appliance starts", ["libguestfs-test-tool"], 0),
    ],
}
DOCKERFILES = {"ferry": "Dockerfile", "ferry-conversion": "Dockerfile.conversion"}


def say(line: str) -> None:
    print(f"[images {time.strftime('%H:%M:%S')}] {line}", flush=True)


def buildah(
    *args: str, check: bool = True, quiet: bool = False
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["buildah", *args],
        check=check,
        text=True,
        stdout=subprocess.PIPE if quiet else None,
        stderr=subprocess.PIPE if quiet else None,
    )


def mirror() -> str:
    """The Debian mirror this machine's apt uses (the test guest's builder reads it too)."""
    sys.path.insert(0, str(ROOT / "tests" / "guest"))
    from guestkit.host import detect_mirror  # only here: a helper of the test guest's

    return str(detect_mirror()[0])


def has_image(name: str) -> bool:
    return buildah("inspect", "--type", "image", name, check=False, quiet=True).returncode == 0


def trust_like_this_machine(rootfs: Path) -> None:
    """The certificate authorities this machine adds to Debian's (a TLS-inspecting proxy's,
    say) trusted in the base too, and pip told to use the system's store, as here: else
    the builds cannot reach the Python registry from behind such a proxy. (An image
    built on such a machine trusts its authorities: it is for this machine.)"""
    added = sorted(Path("/usr/local/share/ca-certificates").glob("*.crt"))
    target = rootfs / "usr" / "local" / "share" / "ca-certificates"
    target.mkdir(parents=True, exist_ok=True)
    for crt in added:
        shutil.copy2(crt, target / crt.name)
    subprocess.run(["chroot", str(rootfs), "update-ca-certificates"], check=True,
                   stdout=subprocess.DEVNULL)  # fmt: skip
    (rootfs / "etc" / "pip.conf").write_text(
        "[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n"
    )
    say(f"base: trusts Debian's authorities and {len(added)} of this machine's")


def make_base() -> None:
    """``BASE`` from debootstrap's bookworm minbase with Debian's Python 3.11."""
    if has_image(BASE):
        say(f"base {BASE}: already here")
        return
    with tempfile.TemporaryDirectory(prefix="ferry-base-", dir="/var/tmp") as scratch:
        rootfs = Path(scratch) / "rootfs"
        say(f"base: debootstrap bookworm minbase with {BASE_PACKAGES}")
        subprocess.run(
            ["debootstrap", "--variant=minbase", f"--include={BASE_PACKAGES}", "bookworm",
             str(rootfs), mirror()],
            check=True,
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        shutil.rmtree(rootfs / "var" / "cache" / "apt" / "archives", ignore_errors=True)
        trust_like_this_machine(rootfs)
        container = buildah("from", "scratch", quiet=True).stdout.strip()
        try:
            mount = buildah("mount", container, quiet=True).stdout.strip()
            subprocess.run(["cp", "-a", f"{rootfs}/.", mount], check=True)
            buildah("umount", container, quiet=True)
            buildah("config", "--env", f"PATH={PATH}", "--env",
                    "LANG=C.UTF-8", "--cmd", "python3", container)  # fmt: skip
            buildah("commit", "--quiet", container, BASE, quiet=True)
        finally:
            buildah("rm", container, check=False, quiet=True)
    say(f"base {BASE}: made")


def build(image: str, tag: str, base: str) -> str:
    name = f"localhost/{image}:{tag}"
    say(f"{name}: buildah bud -f {DOCKERFILES[image]} (PYTHON_IMAGE={base})")
    started = time.monotonic()
    buildah("bud", "--layers", "--network", "host", "--build-arg", f"PYTHON_IMAGE={base}",
            "-f", str(ROOT / DOCKERFILES[image]), "-t", name, str(ROOT))  # fmt: skip
    say(f"{name}: built in {time.monotonic() - started:.0f} s")
    return name


def check(image: str, name: str) -> list[str]:
    """Run each of the image's checks in a container of it; the ones that failed."""
    failed = []
    container = buildah("from", name, quiet=True).stdout.strip()
    try:
        for what, argv, status in CHECKS[image]:
            run = buildah("run", "--network", "host", container, "--", *argv,
                          check=False, quiet=True)  # fmt: skip
            ok = run.returncode == status
            say(f"{name}: {'ok  ' if ok else 'FAIL'} {what} ({' '.join(argv)}: {run.returncode})")
            if not ok:
                failed.append(f"{name}: {what}: exit {run.returncode}: {run.stderr.strip()[-400:]}")
    finally:
        buildah("rm", container, check=False, quiet=True)
    return failed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--tag", default="dev")
    parser.add_argument(
        "--base",
        default="",
        help="a Python 3.11 bookworm image to build from (default: made here from Debian)",
    )
    parser.add_argument("--only", choices=sorted(DOCKERFILES), action="append")
    args = parser.parse_args(argv)
    if shutil.which("buildah") is None:
        print("images: buildah is not installed (make system-deps installs it)", file=sys.stderr)
        return 2
    os.environ.setdefault("BUILDAH_ISOLATION", "chroot")  # no user namespaces needed
    base = args.base
    if not base:
        make_base()
        base = BASE
    failed: list[str] = []
    for image in args.only or sorted(DOCKERFILES):
        try:
            name = build(image, args.tag, base)
        except subprocess.CalledProcessError as error:
            failed.append(f"{image}: buildah bud failed (exit {error.returncode}): see above")
            continue
        failed += check(image, name)
    sizes = buildah("images", "--format", "{{.Name}}:{{.Tag}} {{.Size}}", quiet=True).stdout
    for line in sizes.splitlines():
        if "/ferry" in line:
            say(f"image {line}")
    for line in failed:
        print(f"images: {line}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
