"""bench/copy: Ferry's importer against qemu-img convert and cp, on one machine, one run.

Images (generated, 1 MiB pieces of data spread over the disk):

* 2 GiB raw, ~50 % allocated with random data, and the same as a streamOptimized VMDK
  (random data does not compress: its grains are mostly stored, not deflated);
* the same as a streamOptimized VMDK, but the pieces are the machine's own programs
  and libraries (``/usr``), which compress about as well as a guest's system disk:
  here inflating is the work;
* 2 GiB raw, ~10 % allocated (does the time follow the data or the size?).

For each case it times Ferry's real importer workload (a child process started
by ``LocalVolumes.import_disk``: sparse read, tree checksum, direct-I/O write,
read-back of every written range from the target compared with the hashed
bytes, final flush and hole check; see ``ferry.platform.copy.engine``), the
same without the read-back, ``qemu-img convert -W -m 4`` and, for raw,
``cp --sparse=always``. The other tools do not fsync by themselves, so their
time with an ``fsync`` of the output is shown too: Ferry's number always
includes it. Peak memory is the highest RSS seen (sampled every 10 ms) over the
whole process tree of each tool (for Ferry: the importer and its qemu-nbd).

Usage: ``.venv/bin/python bench/copy/run.py [--size-gib 2] [--repeat 2] [--keep]``.
Timings are the best of ``--repeat`` rounds; in each round every tool runs once,
one after the other, so that load from other users of a shared machine hits all
tools alike, and the best round is the least disturbed one.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil  # type: ignore[import-untyped]

from ferry.platform.copy import checksum
from ferry.platform.images import ImageRef
from ferry.platform.local.volumes import LocalVolumes
from ferry.platform.settings import LocalSettings
from ferry.platform.volumes import VolumeRequest
from ferry.proto.inventory import DiskFormat, VolumeTarget
from ferry.proto.volume import VolumeSource

MiB = 1024 * 1024
GiB = 1024 * MiB
PIECE = MiB


@dataclass
class Sample:
    tool: str
    case: str
    seconds: float
    seconds_synced: float
    peak_rss: int
    allocated: int
    cpu: float = 0.0  # user + system seconds of the tool's whole process tree
    digest_ok: bool | None = None
    median: float = 0.0  # median time+fsync over the rounds (the table shows the best)


class PeakRss:
    """Samples the RSS of a process tree until stopped; keeps the maximum."""

    def __init__(self, root: psutil.Process, include_root: bool) -> None:
        self._root = root
        self._include_root = include_root
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            total = 0
            try:
                procs = self._root.children(recursive=True)
                if self._include_root:
                    procs.append(self._root)
            except psutil.NoSuchProcess:
                return
            for proc in procs:
                try:
                    total += proc.memory_info().rss
                except psutil.NoSuchProcess:
                    continue
            self.peak = max(self.peak, total)
            time.sleep(0.01)


def random_pieces() -> Iterator[bytes]:
    while True:
        yield os.urandom(PIECE)


def system_pieces() -> Iterator[bytes]:
    """1 MiB pieces of the files under /usr (programs, libraries, text), in a fixed order, cycled.

    Data that deflates like a guest's system disk (the report prints the ratio).
    """
    files = sorted(
        p for root in ("/usr/bin", "/usr/lib", "/usr/share") for p in Path(root).rglob("*")
    )
    pending = b""
    while True:
        for path in files:
            try:
                if not path.is_file() or path.is_symlink():
                    continue
                pending += path.read_bytes()
            except OSError:
                continue
            while len(pending) >= PIECE:
                piece, pending = pending[:PIECE], pending[PIECE:]
                if piece.count(0) < PIECE:  # an all-zero piece would be a hole
                    yield piece


def make_image(
    path: Path, size: int, share: float, seed: int, pieces: Iterator[bytes] | None = None
) -> int:
    """A sparse raw image: 1 MiB pieces (random by default) at random places, ``share`` of it."""
    rng = random.Random(seed)
    slots = size // PIECE
    chosen = sorted(rng.sample(range(slots), int(slots * share)))
    source = pieces if pieces is not None else random_pieces()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.ftruncate(fd, size)
        for slot in chosen:
            os.pwrite(fd, next(source), slot * PIECE)
        os.fsync(fd)
    finally:
        os.close(fd)
    return len(chosen) * PIECE


def to_stream_vmdk(raw: Path, out: Path) -> None:
    args = ["qemu-img", "convert", "-q", "-f", "raw", "-O", "vmdk"]
    subprocess.run([*args, "-o", "subformat=streamOptimized", str(raw), str(out)], check=True)


def fsync_file(path: Path) -> float:
    started = time.perf_counter()
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return time.perf_counter() - started


def children_cpu() -> float:
    """CPU seconds of every descendant waited for so far (grandchildren included)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def settle() -> None:
    """Write back every dirty page first, so no run pays for the previous one's writes."""
    os.sync()


def timed(name: str, args: list[str]) -> tuple[float, float, int]:
    """Run a tool to the end: its seconds, its process tree's CPU seconds, its peak RSS."""
    cpu = children_cpu()
    started = time.perf_counter()
    proc = psutil.Popen(args)
    with PeakRss(proc, include_root=True) as rss:
        code = proc.wait()
    seconds = time.perf_counter() - started
    if code != 0:
        raise SystemExit(f"{name} failed with {code}: {args}")
    return seconds, children_cpu() - cpu, rss.peak


def run_tool(name: str, case: str, args: list[str], out: Path, allocated: int) -> Sample:
    out.unlink(missing_ok=True)
    settle()
    seconds, cpu, peak = timed(name, args)
    synced = seconds + fsync_file(out)
    return Sample(name, case, seconds, synced, peak, allocated, cpu)


def virtual_size(image: Path, fmt: str) -> int:
    info = subprocess.run(
        ["qemu-img", "info", "-f", fmt, "--output=json", str(image)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return int(json.loads(info)["virtual-size"])


@dataclass(frozen=True)
class Case:
    name: str
    image: Path
    format: DiskFormat
    qemu_format: str
    allocated: int
    expected: str  # tree digest of the raw image, by definition


def run_ferry(work: Path, case: Case, run: int, verify: bool = True) -> Sample:
    """One import through the real importer workload, on a fresh volume."""
    platform = LocalVolumes(LocalSettings(storage_root=work / "ferry", verify_readback=verify))
    migration = f"bench-{run}-{abs(hash(case.name))}"
    request = VolumeRequest(
        namespace="bench",
        migration=migration,
        vm="vm",
        disk_id="disk0",
        capacity=virtual_size(case.image, case.qemu_format),
        source=VolumeSource.IMPORTER,
        target=VolumeTarget(disk_id="disk0", storage_class="local"),
    )

    async def go() -> tuple[float, int, str, float]:
        volume = await platform.ensure_volume(request)
        source = ImageRef(path=str(case.image), format=case.format)
        settle()
        cpu = children_cpu()
        with PeakRss(psutil.Process(), include_root=False) as rss:
            started = time.perf_counter()
            copy = await platform.import_disk(volume, source)
            seconds = time.perf_counter() - started
        cpu = children_cpu() - cpu
        await platform.delete_volumes("bench", migration, "vm")
        return seconds, rss.peak, copy.target.digest, cpu

    seconds, peak, digest, cpu = asyncio.run(go())
    tool = FERRY if verify else FERRY_FAST
    sample = Sample(tool, case.name, seconds, seconds, peak, case.allocated, cpu)
    sample.digest_ok = digest == case.expected
    return sample


def run_qemu_img(work: Path, case: Case, _run: int) -> Sample:
    out = work / "out.raw"
    args = ["qemu-img", "convert", "-W", "-m", "4", "-f", case.qemu_format, "-O", "raw"]
    return run_tool(QEMU, case.name, [*args, str(case.image), str(out)], out, case.allocated)


def drop_cached(path: Path) -> None:
    """Evict a (synced) file from the page cache, so the next read comes from the device."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def run_qemu_verified(work: Path, case: Case, _run: int) -> Sample:
    """The verified copy with qemu's own tools: convert, sync, then compare from the device.

    Ferry's importer reads every written range back from the device (direct
    I/O), so the target is evicted from the page cache before ``qemu-img
    compare`` reads it: both verify what the device holds, not the cache.
    """
    out = work / "out.raw"
    convert = run_qemu_img(work, case, _run)
    drop_cached(out)
    compare = ["qemu-img", "compare", "-q", "-f", case.qemu_format, "-F", "raw"]
    # exit 1: the copy differs; 2: it could not be read
    seconds, cpu, peak = timed("qemu-img compare", [*compare, str(case.image), str(out)])
    total = convert.seconds_synced + seconds
    peak = max(convert.peak_rss, peak)
    return Sample(QEMU_VERIFIED, case.name, total, total, peak, case.allocated, convert.cpu + cpu)


@dataclass(frozen=True)
class Ceiling:
    """What the device and the process start alone cost, to judge the copies against."""

    write: float  # dd writes the 50 % image's data, O_DIRECT, then syncs
    read: float  # dd reads it back, O_DIRECT
    at_once: float  # dd writes as much to a new file while another dd reads the first
    start: float  # a fresh Python with the importer's modules, nothing copied

    @property
    def write_then_read(self) -> float:
        return self.write + self.read


def _dd_write(path: Path, count: int) -> list[str]:
    return ["dd", "if=/dev/zero", f"of={path}", "bs=4M", f"count={count}", "oflag=direct"]


def device_ceiling(work: Path, nbytes: int) -> Ceiling:
    """Seconds for ``dd`` to write ``nbytes`` with O_DIRECT (and sync), then read them back.

    What the device alone needs for the traffic of a verified copy of that much
    data: every byte written once and read back once. No copy can beat the sum
    unless the device serves reads and writes at once faster than one after the
    other: ``at_once`` measures that (a write of as many bytes beside the read).
    """
    path, other = work / "ceiling.raw", work / "ceiling-2.raw"
    count = max(1, nbytes // (4 * MiB))
    settle()
    started = time.perf_counter()
    subprocess.run([*_dd_write(path, count), "conv=fsync"], check=True, capture_output=True)
    write = time.perf_counter() - started
    read_args = ["dd", f"if={path}", "of=/dev/null", "bs=4M", "iflag=direct"]
    started = time.perf_counter()
    subprocess.run(read_args, check=True, capture_output=True)
    read = time.perf_counter() - started
    settle()
    started = time.perf_counter()
    quiet = subprocess.DEVNULL
    writer = subprocess.Popen([*_dd_write(other, count), "conv=fsync"], stderr=quiet)
    subprocess.run(read_args, check=True, capture_output=True)
    if writer.wait() != 0:
        raise RuntimeError("dd could not write the second file")
    at_once = time.perf_counter() - started
    path.unlink()
    other.unlink()
    return Ceiling(write, read, at_once, process_start())


def process_start() -> float:
    """The best of five starts of a Python importing what the importer workload imports."""
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        subprocess.run(
            [sys.executable, "-c", "import ferry.platform.local.transfer"],
            check=True,
        )
        best = min(best, time.perf_counter() - started)
    return best


def run_cp(work: Path, case: Case, _run: int) -> Sample:
    out = work / "out.raw"
    args = ["cp", "--sparse=always", str(case.image), str(out)]
    return run_tool("cp --sparse=always", case.name, args, out, case.allocated)


def run_ferry_fast(work: Path, case: Case, run: int) -> Sample:
    return run_ferry(work, case, run, verify=False)


QEMU = "qemu-img convert -W -m 4"
QEMU_VERIFIED = "qemu-img convert + compare"
FERRY = "ferry importer"
FERRY_FAST = "ferry, no read-back"
Runner = Callable[[Path, Case, int], Sample]


def interleaved(n: int, runners: list[Runner], work: Path, case: Case) -> list[Sample]:
    """Each tool once per round, rounds repeated: load from others hits all tools alike."""
    rounds = [[run(work, case, i) for run in runners] for i in range(n)]
    best = []
    for column in zip(*rounds, strict=True):
        sample = min(column, key=lambda s: s.seconds_synced)
        sample.median = statistics.median(s.seconds_synced for s in column)
        best.append(sample)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description="Ferry importer vs qemu-img convert and cp")
    parser.add_argument("--size-gib", type=float, default=2.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=Path("/var/tmp"))
    parser.add_argument("--keep", action="store_true")
    opts = parser.parse_args()
    size = int(opts.size_gib * GiB) // PIECE * PIECE
    work = Path(tempfile.mkdtemp(prefix="ferry-bench-copy-", dir=opts.dir))
    try:
        version = subprocess.run(["qemu-img", "--version"], capture_output=True, text=True)
        print(f"# bench/copy {time.strftime('%Y-%m-%d %H:%M:%S')} work dir {work}")
        print(f"# cpus {os.cpu_count()}, load {os.getloadavg()}, {version.stdout.splitlines()[0]}")
        half, tenth, vmdk = work / "half.raw", work / "tenth.raw", work / "half.vmdk"
        usr, usr_vmdk = work / "usr.raw", work / "usr.vmdk"
        alloc_half = make_image(half, size, 0.5, seed=1)
        alloc_tenth = make_image(tenth, size, 0.1, seed=2)
        alloc_usr = make_image(usr, size, 0.5, seed=3, pieces=system_pieces())
        to_stream_vmdk(half, vmdk)
        to_stream_vmdk(usr, usr_vmdk)
        print(
            f"# streamOptimized VMDK sizes: random data {vmdk.stat().st_size / MiB:.0f} MiB, "
            f"/usr data {usr_vmdk.stat().st_size / MiB:.0f} MiB "
            f"(deflated {alloc_usr / usr_vmdk.stat().st_size:.1f}:1), of "
            f"{alloc_half / MiB:.0f} MiB each"
        )
        digest_half = checksum.of_bytes(half.read_bytes())
        digest_tenth = checksum.of_bytes(tenth.read_bytes())
        digest_usr = checksum.of_bytes(usr.read_bytes())
        usr.unlink()
        cases = [
            Case("50% raw->raw", half, DiskFormat.RAW, "raw", alloc_half, digest_half),
            Case(
                "50% vmdk-stream->raw",
                vmdk,
                DiskFormat.VMDK_STREAM,
                "vmdk",
                alloc_half,
                digest_half,
            ),
            Case(
                "50% vmdk->raw, /usr data",
                usr_vmdk,
                DiskFormat.VMDK_STREAM,
                "vmdk",
                alloc_usr,
                digest_usr,
            ),
            Case("10% raw->raw", tenth, DiskFormat.RAW, "raw", alloc_tenth, digest_tenth),
        ]
        results: list[Sample] = []
        for case in cases:
            runners: list[Runner] = [run_ferry, run_ferry_fast, run_qemu_img, run_qemu_verified]
            if case.format == DiskFormat.RAW:
                runners.append(run_cp)
            results.extend(interleaved(opts.repeat, runners, work, case))
        ceiling = device_ceiling(work, alloc_half)
        report(results, size, ceiling, alloc_half)
    finally:
        if not opts.keep:
            shutil.rmtree(work, ignore_errors=True)


def report(results: list[Sample], size: int, ceiling: Ceiling, ceiling_bytes: int) -> None:
    print()
    header: tuple[str, ...] = ("case", "tool", "time s", "+fsync s", "median s", "CPU s")
    header = (*header, "data MiB/s")
    header = (*header, "RSS MiB", "vs qemu-img", "vs verified")
    print(f"{header[0]:<24} {header[1]:<26} " + " ".join(f"{h:>11}" for h in header[2:]))
    by_case: dict[str, dict[str, Sample]] = {}
    for s in results:
        by_case.setdefault(s.case, {})[s.tool] = s
    for case, tools in by_case.items():
        qemu, verified = tools.get(QEMU), tools.get(QEMU_VERIFIED)
        for tool, s in tools.items():
            rate = s.allocated / MiB / s.seconds_synced
            ratio = f"{qemu.seconds_synced / s.seconds_synced:.2f}x" if qemu else ""
            against = ""
            if verified and tool in (FERRY, QEMU_VERIFIED):
                against = f"{verified.seconds_synced / s.seconds_synced:.2f}x"
            check = {True: " digest ok", False: " DIGEST MISMATCH", None: ""}[s.digest_ok]
            cells = (s.seconds, s.seconds_synced, s.median, s.cpu, rate, s.peak_rss / MiB)
            print(
                f"{case:<24} {tool:<26} "
                + " ".join(f"{c:>11.2f}" if i < 4 else f"{c:>11.0f}" for i, c in enumerate(cells))
                + f" {ratio:>11} {against:>11}{check}"
            )
    half = by_case.get("50% raw->raw", {}).get(FERRY)
    tenth = by_case.get("10% raw->raw", {}).get(FERRY)
    print()
    if half and tenth:
        print(
            f"time follows data: ferry 10% image {tenth.seconds:.2f} s, 50% image "
            f"{half.seconds:.2f} s: time ratio {tenth.seconds / half.seconds:.2f}, data ratio "
            f"{tenth.allocated / half.allocated:.2f}, same virtual size {size / GiB:.1f} GiB"
        )
    c = ceiling
    print(
        f"device alone (dd, 4 MiB, O_DIRECT) for the 50% image's {ceiling_bytes / MiB:.0f} MiB: "
        f"write+sync {c.write:.2f} s, read {c.read:.2f} s, one after the other "
        f"{c.write_then_read:.2f} s, both at once {c.at_once:.2f} s"
    )
    overlap = c.write_then_read / c.at_once
    print(
        f"  at once / one after the other: {overlap:.2f}x "
        + (
            "(the device overlaps reads with writes: a verified copy may beat write-then-read)"
            if overlap > 1.15
            else "(the device does not overlap them: a copy that reads back every byte from "
            "the device needs at least write + read, so it cannot match a copy that only writes)"
        )
    )
    print(f"fixed start: a Python importing the importer's modules, {c.start:.2f} s")
    if half:
        print(
            f"  ferry importer (verified) on that data: {half.seconds:.2f} s, "
            f"{half.seconds / c.write_then_read:.2f}x the device's write-then-read time, "
            f"{half.seconds / (c.write_then_read + c.start):.2f}x of it plus the fixed start"
        )
    for tools in by_case.values():
        ferry, qemu = tools.get(FERRY), tools.get(QEMU)
        if ferry is None or qemu is None or not ferry.case.endswith("raw->raw"):
            continue
        floor = c.start + ferry.allocated / ceiling_bytes * min(c.write_then_read, c.at_once)
        print(
            f"  {ferry.case}: the verified copy's floor on this device (start + write and "
            f"read back {ferry.allocated / MiB:.0f} MiB) {floor:.2f} s, ferry "
            f"{ferry.seconds:.2f} s ({ferry.seconds / floor:.2f}x the floor); qemu-img+fsync "
            f"{qemu.seconds_synced:.2f} s, so at best {qemu.seconds_synced / floor:.2f}x of "
            "qemu-img with a device read-back"
        )
    print(
        "Table: best of the rounds; 'median s' is the median round. vs qemu-img = qemu-img "
        "(time+fsync) / tool (time+fsync), above 1.00x is faster. vs verified = the same against "
        "'qemu-img convert + compare' (convert, fsync, target evicted from the page cache, "
        "qemu-img compare): a copy checked against the device, like Ferry's importer. CPU s = "
        "user+system seconds of the tool's process tree. Ferry's time includes process start, "
        "its own fsyncs and the checksum; 'ferry importer' also reads every written range back "
        "from the target (O_DIRECT: from the device) and compares it with the hashed bytes; "
        "'no read-back' skips that (digest from the buffers)."
    )


if __name__ == "__main__":
    main()
