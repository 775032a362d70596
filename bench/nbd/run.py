"""bench/nbd: Ferry's NBD client against libnbd's own Python binding, in one run.

Ferry reads guest bytes over NBD in two places: the copy engine (threads, one
connection each, 4 MiB chunks read into a reused buffer) and the providers (an
asyncio reader handing back ``bytes``). The question this bench answers is
whether to keep one hand-written protocol client or to use libnbd's binding
from the operating system's packages (Debian ``python3-libnbd``); the answer,
and the numbers it rests on, are in :mod:`ferry.providers.nbd`.

The server is a ``qemu-nbd`` on a Unix socket, started as the copy engine
starts it, exporting a raw image kept in ``/dev/shm`` so that the disk is not
what is measured. Each case moves the same bytes; each row shows the best
round's throughput and the CPU seconds this process spent per GiB (the cores
are shared: CPU per GiB is the cost that does not depend on the neighbours).

* sequential reads of the whole image in 4 MiB chunks (the copy engine's chunk),
  on one connection and on four (four threads, as the engine runs them);
* sequential writes of the whole image in 4 MiB requests;
* listing the allocated extents of a sparse qcow2 (one 64 KiB cluster in two
  allocated): ``qemu-img map`` (what Ferry runs today) against NBD block status
  (``base:allocation``) through libnbd.

libnbd's binding is built for the system's ``/usr/bin/python3``; the venv's
interpreter is another build of the same 3.11 ABI, so the extension loads if the
two files are imported by path (see :func:`load_libnbd`). The bench says so when
it cannot load it.

Usage: ``.venv/bin/python bench/nbd/run.py [--size-mib 1024] [--repeat 3]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.machinery
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

from ferry.platform.copy.nbd import QemuNbd
from ferry.providers import nbd as ferry_nbd

MiB = 1024 * 1024
GiB = 1024 * MiB
CHUNK = 4 * MiB  # ferry.platform.copy.checksum.CHUNK: what one copy thread reads at a time
DIST = Path("/usr/lib/python3/dist-packages")


def load_libnbd() -> ModuleType | None:
    """libnbd's binding from the system's dist-packages, without putting all of it on
    sys.path (that folder holds other versions of packages the venv pins)."""
    if "nbd" in sys.modules:
        return sys.modules["nbd"]
    found = sorted(DIST.glob(f"libnbdmod.cpython-{sys.version_info[0]}{sys.version_info[1]}-*.so"))
    if not found or not (DIST / "nbd.py").exists():
        return None
    loader = importlib.machinery.ExtensionFileLoader("libnbdmod", str(found[0]))
    spec = importlib.util.spec_from_file_location("libnbdmod", found[0], loader=loader)
    assert spec is not None
    native = importlib.util.module_from_spec(spec)
    loader.exec_module(native)
    sys.modules["libnbdmod"] = native
    spec = importlib.util.spec_from_file_location("nbd", DIST / "nbd.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["nbd"] = module
    spec.loader.exec_module(module)
    return module


@contextlib.contextmanager
def qemu_nbd(path: Path, fmt: str, *, writable: bool) -> Iterator[str]:
    """A server as the copy engine starts one; yields its socket path."""
    server = QemuNbd(str(path), fmt, writable=writable)
    try:
        yield server.socket
    finally:
        server.close()


def make_images(folder: Path, size: int) -> tuple[Path, Path, Path]:
    """A full raw image to read, an empty raw one to write, a half-allocated qcow2."""
    full = folder / "full.raw"
    block = bytearray(os.urandom(CHUNK))
    with full.open("wb") as out:
        for offset in range(0, size, CHUNK):
            block[:8] = offset.to_bytes(8, "little")  # no two chunks alike
            out.write(block)
    empty = folder / "target.raw"
    with empty.open("wb") as out:
        out.truncate(size)
    sparse = folder / "sparse.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(sparse), str(size)], check=True)
    # Every other 64 KiB cluster written: many short extents, the hard case for a lister.
    script = folder / "io.cmds"
    script.write_text("".join(f"write -P 7 {o} 65536\n" for o in range(0, size, 131072)))
    with subprocess.Popen(
        ["qemu-io", "-f", "qcow2", str(sparse)], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL
    ) as io:
        assert io.stdin is not None
        io.stdin.write(script.read_bytes() + b"quit\n")
        io.stdin.close()
    return full, empty, sparse


# -- candidates --------------------------------------------------------------------


def ferry_read(sock: str, size: int, start: int, stop: int) -> None:
    client = ferry_nbd.NbdClient(sock)
    buffer = bytearray(CHUNK)
    view = memoryview(buffer)
    for offset in range(start, stop, CHUNK):
        client.readinto(offset, view[: min(CHUNK, size - offset)])
    client.close()


def ferry_async_read(sock: str, size: int, start: int, stop: int) -> None:
    async def run() -> None:
        client = await ferry_nbd.AsyncNbdClient.connect(sock)
        for offset in range(start, stop, CHUNK):
            await client.read(offset, min(CHUNK, size - offset))
        await client.close()

    asyncio.run(run())


def libnbd_read(nbd: ModuleType) -> Callable[[str, int, int, int], None]:
    def read(sock: str, size: int, start: int, stop: int) -> None:
        handle = nbd.NBD()
        handle.connect_unix(sock)
        for offset in range(start, stop, CHUNK):
            handle.pread(min(CHUNK, size - offset), offset)
        handle.shutdown()

    return read


def libnbd_aio_read(nbd: ModuleType) -> Callable[[str, int, int, int], None]:
    """Into one reused buffer, four 1 MiB requests in flight: what the Ferry client does."""

    def read(sock: str, size: int, start: int, stop: int) -> None:
        handle = nbd.NBD()
        handle.connect_unix(sock)
        view = memoryview(bytearray(CHUNK))
        piece = ferry_nbd.PIPELINE_REQUEST
        for offset in range(start, stop, CHUNK):
            length = min(CHUNK, size - offset)
            cookies = [
                handle.aio_pread(nbd.Buffer.from_buffer(view[a : a + piece]), offset + a)
                for a in range(0, length, piece)
            ]
            for cookie in cookies:
                while not handle.aio_command_completed(cookie):
                    handle.poll(-1)
        handle.shutdown()

    return read


def ferry_write(sock: str, size: int, start: int, stop: int) -> None:
    client = ferry_nbd.NbdClient(sock)
    view = memoryview(os.urandom(CHUNK))
    for offset in range(start, stop, CHUNK):
        client.write(offset, view[: min(CHUNK, size - offset)])
    client.flush()
    client.close()


def libnbd_write(nbd: ModuleType) -> Callable[[str, int, int, int], None]:
    def write(sock: str, size: int, start: int, stop: int) -> None:
        handle = nbd.NBD()
        handle.connect_unix(sock)
        data = os.urandom(CHUNK)
        for offset in range(start, stop, CHUNK):
            handle.pwrite(data[: min(CHUNK, size - offset)], offset)
        handle.flush()
        handle.shutdown()

    return write


def qemu_img_map(path: Path) -> int:
    done = subprocess.run(
        ["qemu-img", "map", "--output=json", "-f", "qcow2", str(path)],
        capture_output=True,
        check=True,
        text=True,
    )
    return sum(1 for row in json.loads(done.stdout) if row.get("data"))


def libnbd_extents(nbd: ModuleType, sock: str) -> int:
    handle = nbd.NBD()
    handle.add_meta_context("base:allocation")
    handle.connect_unix(sock)
    size = handle.get_size()
    found = 0
    offset = 0
    seen: list[int] = []

    def extent(_context: str, _offset: int, entries: list[int], _err: Any) -> int:
        seen.extend(entries)
        return 0

    while offset < size:
        seen.clear()
        handle.block_status(min(size - offset, 2 * GiB - MiB), offset, extent)
        for length, flags in zip(seen[::2], seen[1::2], strict=True):
            if not flags & nbd.STATE_HOLE:
                found += 1
            offset += length
    handle.shutdown()
    return found


# -- timing ------------------------------------------------------------------------


def timed(
    work: Callable[[str, int, int, int], None], sock: str, size: int, connections: int
) -> tuple[float, float]:
    """Wall seconds and this process's CPU seconds for the whole image on N connections."""
    share = size // connections
    spans = [
        (i * share, size if i == connections - 1 else (i + 1) * share) for i in range(connections)
    ]
    threads = [threading.Thread(target=work, args=(sock, size, a, b)) for a, b in spans]
    cpu, wall = time.process_time(), time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - wall, time.process_time() - cpu


def rotated(
    candidates: dict[str, Callable[[str, int, int, int], None]], by: int
) -> list[tuple[str, Callable[[str, int, int, int], None]]]:
    items = list(candidates.items())
    shift = by % len(items)
    return items[shift:] + items[:shift]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    size = args.size_mib * MiB
    nbd = load_libnbd()
    if nbd is None:
        print("libnbd's Python binding is not installed (apt-get install python3-libnbd)")
    with tempfile.TemporaryDirectory(prefix="ferry-bench-nbd-", dir="/dev/shm") as tmp:
        full, target, sparse = make_images(Path(tmp), size)
        reads: dict[str, Callable[[str, int, int, int], None]] = {
            "ferry NbdClient (readinto)": ferry_read,
            "ferry AsyncNbdClient (bytes)": ferry_async_read,
        }
        writes: dict[str, Callable[[str, int, int, int], None]] = {"ferry": ferry_write}
        if nbd is not None:
            reads["libnbd pread (bytes)"] = libnbd_read(nbd)
            reads["libnbd aio_pread (readinto)"] = libnbd_aio_read(nbd)
            writes["libnbd pwrite"] = libnbd_write(nbd)
        best: dict[str, tuple[float, float]] = {}

        def keep(name: str, result: tuple[float, float]) -> None:
            if name not in best or result[0] < best[name][0]:
                best[name] = result

        for round_ in range(args.repeat):
            # One round runs every candidate once, so a busy neighbour hits all alike,
            # and each round starts with another one, so that none is always first.
            with qemu_nbd(full, "raw", writable=False) as sock:
                for connections in (1, 4):
                    for name, work in rotated(reads, round_):
                        keep(f"read  x{connections}  {name}", timed(work, sock, size, connections))
            with qemu_nbd(target, "raw", writable=True) as sock:
                for name, work in rotated(writes, round_):
                    keep(f"write x1  {name}", timed(work, sock, size, 1))
            wall, cpu = time.perf_counter(), time.process_time()
            count = qemu_img_map(sparse)
            keep(f"extents  qemu-img map ({count} extents)", (time.perf_counter() - wall, 0.0))
            if nbd is not None:
                with qemu_nbd(sparse, "qcow2", writable=False) as sock:
                    wall, cpu = time.perf_counter(), time.process_time()
                    count = libnbd_extents(nbd, sock)
                    elapsed = time.perf_counter() - wall, time.process_time() - cpu
                    keep(f"extents  libnbd block_status ({count} extents)", elapsed)
    gib = size / GiB
    print(f"NBD clients, {args.size_mib} MiB image in /dev/shm, qemu-nbd over a Unix socket,")
    print(f"best of {args.repeat} rounds, {os.cpu_count()} cores (shared)\n")
    print(f"{'case':<58} {'seconds':>8} {'MiB/s':>8} {'CPU s/GiB':>10}")
    for name, (wall, cpu) in best.items():
        if name.startswith("extents"):
            print(f"{name:<58} {wall:>8.3f} {'':>8} {'':>10}")
        else:
            print(f"{name:<58} {wall:>8.2f} {size / MiB / wall:>8.0f} {cpu / gib:>10.2f}")
    print("\n(qemu-img map is a child process: its CPU is not this process's)")


if __name__ == "__main__":
    main()
