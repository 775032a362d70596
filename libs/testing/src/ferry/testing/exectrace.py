"""Every program a process tree runs, with its whole argv and environment: an exec tracer.

Sampling ``/proc`` misses a child that lives less than the sampling interval, and a
secret handed over for a moment is exactly such a child. ``strace -f`` instead
stops each process of the tree at every ``execve`` and records the arguments and
the environment it passed (``-v``: unabbreviated; ``-s``: strings up to 64 KiB;
``-xx``: every byte hex-escaped, so nothing is hidden by quoting). With
``--seccomp-bpf`` the kernel stops the tree only on the traced calls, so the
programs run at nearly full speed.

Besides ``execve`` it records ``read`` calls on one file (``watched``), with the
bytes read, so a test can show that a child *did* receive a secret through that
file: the read is the proof, the absence from every exec is the guarantee.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

_HEX = re.compile(r"\\x([0-9a-f]{2})")
_LINE = re.compile(r"^(\w+)\((.*)$")


@dataclass(frozen=True)
class Exec:
    """One ``execve`` of the traced tree: who, which program, the whole traced call."""

    pid: int
    program: str
    call: bytes  # path, argv and environment, every byte as the program got it


@dataclass(frozen=True)
class Read:
    """A ``read`` of the watched file: who read what."""

    pid: int
    data: bytes


def available() -> bool:
    return shutil.which("strace") is not None


def wrap(argv: Sequence[str], log: Path) -> list[str]:
    """``argv`` run under the tracer, writing one record per process to ``log.<pid>``
    (one file each: no call of one process is split by another's)."""
    return [
        "strace", "-f", "-ff", "--seccomp-bpf", "-qq", "-v", "-xx", "-s", "65536", "-y",
        "-e", "trace=execve,read", "-e", "signal=none", "-o", str(log), *argv,
    ]  # fmt: skip


def _decode(text: str) -> bytes:
    return _HEX.sub(lambda m: chr(int(m.group(1), 16)), text).encode("latin-1")


_READ = re.compile(rb'^(\d+)<(.*)>, "(.*)", \d+\)', re.S)


def parse(log: Path, watched: str | None = None) -> tuple[list[Exec], list[Read]]:
    """The execs of the whole tree, and the reads of the file whose path ends ``watched``."""
    execs: list[Exec] = []
    reads: list[Read] = []
    for record in sorted(log.parent.glob(f"{log.name}.*")):
        pid = int(record.suffix.lstrip("."))
        for line in record.read_text(errors="replace").splitlines():
            found = _LINE.match(line)
            if found is None:
                continue
            call, rest = found[1], _decode(found[2])
            if call == "execve":
                quoted = rest.count(b'"') > 1
                program = rest.split(b'"', 2)[1].decode(errors="replace") if quoted else ""
                execs.append(Exec(pid, program, rest))
            elif call == "read" and watched is not None:
                got = _READ.match(rest)
                if got is not None and got[2].endswith(watched.encode()):
                    reads.append(Read(pid, got[3]))
    return execs, reads


def leaks(execs: list[Exec], secret: str) -> list[str]:
    """Each exec whose argv or environment holds ``secret`` (as bytes, anywhere)."""
    needle = secret.encode()
    return [f"pid {e.pid} {e.program}" for e in execs if needle in e.call]
