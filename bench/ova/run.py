"""bench/ova: what the checked private copy of an OVA disk costs before a conversion.

virt-v2v reads copies of an OVA's disk files, made in the conversion's work
directory with the manifest digest computed on the bytes written
(:mod:`ferry.providers.ova.staging`). This bench measures that copy against the
plain tools doing the same two jobs, in the same run, on the same file: ``cp
--sparse=always`` followed by ``sha256sum`` of the copy (two passes), and ``cp``
alone (the floor: the copy without any digest).

The source is a raw file of ``--size-mib`` MiB, half random data and half zeros
(as a real disk with free space), in a tar member at a 512-byte offset, as in an
OVA. Each row is the best of ``--repeat`` rounds; the page cache is not dropped
(that needs root and disturbs the neighbours), so the first round warms it.

Usage: ``.venv/bin/python bench/ova/run.py [--size-mib 1024] [--repeat 3]``.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from ferry.providers.ova.package import Location
from ferry.providers.ova.staging import copy

MiB = 1024 * 1024
OFFSET = 512


def make_source(directory: Path, size: int) -> tuple[Path, Path]:
    """An "archive" with the disk at OFFSET, and the disk alone (for the plain tools)."""
    disk = directory / "disk.raw"
    with disk.open("wb") as f:
        block = os.urandom(4 * MiB)
        for start in range(0, size, 4 * MiB):
            f.write(block if (start // (4 * MiB)) % 2 == 0 else bytes(4 * MiB))
    archive = directory / "disk.ova"
    with archive.open("wb") as out, disk.open("rb") as data:
        out.write(bytes(OFFSET))
        shutil.copyfileobj(data, out, 8 * MiB)
    return archive, disk


def best(rounds: int, run: Callable[[], None], clean: Callable[[], None]) -> float:
    times = []
    for _ in range(rounds):
        clean()
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    clean()
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    size = args.size_mib * MiB
    with tempfile.TemporaryDirectory(prefix="ferry-bench-ova-", dir="/var/tmp") as tmp:
        work = Path(tmp)
        archive, disk = make_source(work, size)
        target = work / "copy.raw"
        location = Location("disk.raw", archive, OFFSET, size, None)
        expected = hashlib.sha256(disk.read_bytes()).hexdigest()

        def clean() -> None:
            target.unlink(missing_ok=True)

        def staged() -> None:
            assert copy(location, target, "sha256") == expected

        def cp_and_hash() -> None:
            subprocess.run(["cp", "--sparse=always", str(disk), str(target)], check=True)
            out = subprocess.run(["sha256sum", str(target)], check=True, capture_output=True)
            assert out.stdout.split()[0].decode() == expected

        def cp_only() -> None:
            subprocess.run(["cp", "--sparse=always", str(disk), str(target)], check=True)

        rows = [
            ("ferry staging (copy + sha256, one pass)", best(args.repeat, staged, clean)),
            ("cp --sparse=always + sha256sum", best(args.repeat, cp_and_hash, clean)),
            ("cp --sparse=always (no digest)", best(args.repeat, cp_only, clean)),
        ]
    print(f"bench/ova: {args.size_mib} MiB disk (half data, half zeros), best of {args.repeat}")
    for name, seconds in rows:
        print(f"  {name:42s} {seconds:6.2f} s  {args.size_mib / seconds:7.0f} MiB/s")


if __name__ == "__main__":
    main()
