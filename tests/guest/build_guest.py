#!/usr/bin/env python3
"""Build (and cache) Ferry's test guest: a tiny Debian VM packaged like a vSphere OVA.

What it builds
    A minimal Debian bookworm (amd64) made with ``debootstrap --variant=minbase``
    plus a kernel, systemd, udev and GRUB, on a 2 GiB MBR-partitioned disk with
    one ext4 partition.  The guest prints a getty ``login:`` prompt on the
    serial console (ttyS0); root's password is ``ferry``.

    Like a guest installed on VMware, its initramfs holds the drivers of VMware's
    virtual hardware (LSI Logic / PVSCSI / IDE / SATA) but NOT the virtio
    drivers, so the disk boots on IDE/SATA and does NOT boot on virtio-blk until
    something (virt-v2v) converts it.  The virtio modules are still installed in
    /lib/modules, which is what virt-v2v needs to rebuild the initramfs.

    The disk is packaged as a VMware-style OVA: OVF 1.0 envelope (vmx-13,
    LSI Logic SCSI, E1000 NIC on "VM Network", BIOS firmware), a
    streamOptimized VMDK and a SHA256 manifest, in a ustar archive in the order
    .ovf, .mf, .vmdk.  The raw disk image is kept too, for boot tests.

Cache
    ``$FERRY_CACHE_DIR/test-guest`` or ``~/.cache/ferry/test-guest``, one
    sub-directory per hash of the builder (this file and ``guestkit/``), so any change to the recipe rebuilds.
    Builds happen in a temporary directory that is renamed into place at the end
    (an interrupted build never leaves a half entry) under a lock file (two
    concurrent callers never build twice).

Use
    python tests/guest/build_guest.py [--cache-dir DIR] [--force] [--verify]
    prints a JSON object with the artifact paths on stdout.

    From Python (tests/ is not a package; load this file by path)::

        import importlib.util, sys
        spec = importlib.util.spec_from_file_location("ferry_test_guest", PATH)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = mod          # before exec_module (dataclasses)
        spec.loader.exec_module(mod)
        guest = mod.ensure_guest()            # -> GuestArtifacts

Building needs root (debootstrap, chroot, mount namespaces) and the Debian
packages debootstrap, qemu-utils, qemu-system-x86, libguestfs-tools,
e2fsprogs, fdisk and util-linux.  Using a cached guest needs none of that.
Python 3.11 standard library only.  The builder lives in ``guestkit/`` next to this
file (recipe, cache, host helpers, build, OVF, boot tests); this file is its entry
point and the names callers use.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from guestkit.boot import SerialVM, power_button_test, qemu_command, verify_guest
from guestkit.cache import (
    GuestArtifacts,
    default_cache_dir,
    ensure_guest,
    recipe_hash,
)
from guestkit.host import detect_mirror, kvm_usable

__all__ = [
    "GuestArtifacts",
    "SerialVM",
    "default_cache_dir",
    "detect_mirror",
    "ensure_guest",
    "kvm_usable",
    "main",
    "power_button_test",
    "qemu_command",
    "recipe_hash",
    "verify_guest",
]


# --------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help=f"cache directory (default: {default_cache_dir()})",
    )
    ap.add_argument("--force", action="store_true", help="rebuild even if cached")
    ap.add_argument(
        "--verify",
        action="store_true",
        help="boot-test the guest under QEMU (IDE: must log in; virtio: must not boot)",
    )
    args = ap.parse_args(argv)

    def _term(signum, frame):  # run the finally: clean-ups on SIGTERM
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _term)

    guest = ensure_guest(args.cache_dir, force=args.force)
    out = guest.to_json()
    rc = 0
    if args.verify:
        out["verify"] = verify_guest(guest)
        rc = 0 if out["verify"]["ok"] else 1
    print(json.dumps(out, indent=2))
    return rc


if __name__ == "__main__":
    sys.exit(main())
