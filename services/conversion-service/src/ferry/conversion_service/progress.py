"""Reading virt-v2v's output: stages, copy progress, its decisions, its errors.

virt-v2v 2.2 has no structured progress stream (``--machine-readable`` only
lists capabilities there), so this parses what it prints for people:

- stage lines ``[  12.3] Copying disk 1/2`` (timestamp with one decimal; the
  appliance kernel's own ``[    1.481828]`` lines have six and are noise);
- nbdcopy's progress bar ``▐  42% [*****-----]``, redrawn with ``\\r``; and the
  ``42/100`` form a machine-readable nbdcopy writes, should a later virt-v2v pass
  ``--progress=FD``;
- with ``-v``, its inspection record (``i_distro = debian``), the guest
  capabilities it chose (``gcaps_block_bus = virtio-blk``) and its verdicts
  (``This guest has virtio drivers installed.``, ``This guest requires UEFI on
  the target to boot.``);
- ``virt-v2v: error: …`` and the lines that follow it.

A failure must carry the few lines that explain it, not megabytes of libguestfs
trace: :class:`OutputReader` keeps a tail of the meaningful lines only.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass, field, replace

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Z0-9]|\x1bc")
_STAGE = re.compile(r"^\[\s*(\d+\.\d)\]\s+(\S.*)$")
_COPYING = re.compile(r"^Copying disk (\d+)/(\d+)")
_BAR = re.compile(r"(\d{1,3})%\s*\[[*\-#= ]*\]")
_FRACTION = re.compile(r"^(\d+)/(\d+)$")
_CAPABILITY = re.compile(r"^\s*gcaps_([a-z0-9_]+)\s*=\s*(\S+)\s*$")
_INSPECTED = re.compile(r"^i_([a-z0-9_]+) = ?(.*)$")
_ERROR = re.compile(r"^(virt-v2v(?:-in-place)?|virt-inspector): error: (.*)$")
_REPORTING_BUGS = re.compile(r"^(If reporting bugs|\s+virt-v2v(?:-in-place)? -v -x)")

# Lines that say how libguestfs works, never why a conversion failed.
_NOISE = (
    re.compile(r"^\[\s*\d+\.\d{2,}\]"),  # appliance kernel log
    re.compile(r"^(libguestfs|libnbd|guestfsd|supermin|commandrvf|chroot|nbdkit)\b.*?:"),
    re.compile(r"^(\+ |command: |renaming |mount |umount |Run |udevadm|/init|/usr/|/sbin/)"),
    re.compile(r"^\S*\s*\d{1,3}%\s*\["),  # progress bars
    re.compile(r"^\d+/\d+$"),
    re.compile(r"^(gcaps_|i_|target_|[a-z_]+ = )"),  # debug dumps of internal records
    re.compile(r"^\s*[<{}\]\)]"),  # XML/JSON debug dumps
    re.compile(r"^\t|^(protocol|export)[:=]"),  # nbdinfo dumps
    re.compile(r"^rm -rf -- |^[a-z][a-z0-9_-]*: /"),  # clean-up, daemon traces
    re.compile(r"^\s*$"),
    re.compile(r"^\\x1b|^\x1b"),
)


@dataclass(frozen=True)
class Progress:
    """One observation: the current stage and, while copying, the disk and percent."""

    stage: str
    disk: int | None = None
    disks: int | None = None
    percent: float | None = None
    elapsed: float | None = None  # virt-v2v's own clock, seconds since it started


@dataclass
class Decisions:
    """What virt-v2v decided about the converted guest, from its log."""

    virtio_drivers: bool | None = None
    uefi: bool | None = None
    capabilities: dict[str, str] = field(default_factory=dict)
    inspected: dict[str, str] = field(default_factory=dict)  # its inspection record (i_*)

    @property
    def block_bus(self) -> str | None:
        return self.capabilities.get("block_bus")

    @property
    def net_bus(self) -> str | None:
        return self.capabilities.get("net_bus")

    @property
    def machine(self) -> str | None:
        return self.capabilities.get("machine")

    @property
    def arch(self) -> str | None:
        return self.capabilities.get("arch")


def clean(line: str) -> str:
    return _ANSI.sub("", line).rstrip()


def is_noise(line: str) -> bool:
    return any(pattern.search(line) for pattern in _NOISE)


class OutputReader:
    """Feed it virt-v2v's output line by line; it tracks progress, decisions, errors."""

    def __init__(self, tail_lines: int = 12) -> None:
        self.progress: Progress | None = None
        self.decisions = Decisions()
        self.errors: list[str] = []  # "error: …" lines and their continuation
        self._in_error = False
        self._tail: deque[str] = deque(maxlen=max(tail_lines, 1))

    def feed(self, raw: str) -> Progress | None:
        """Read one line; return the new :class:`Progress` when it changed."""
        line = clean(raw)
        self._note_decision(line)
        self._note_error(line)
        if not is_noise(line):
            self._tail.append(line.strip())
        update = self._progress_of(line)
        if update is not None and update != self.progress:
            self.progress = update
            return update
        return None

    def _progress_of(self, line: str) -> Progress | None:
        stage = _STAGE.match(line)
        if stage:
            text = stage.group(2).strip()
            copying = _COPYING.match(text)
            if copying:
                return Progress(
                    stage=text,
                    disk=int(copying.group(1)),
                    disks=int(copying.group(2)),
                    percent=0.0,
                    elapsed=float(stage.group(1)),
                )
            return Progress(stage=text, elapsed=float(stage.group(1)))
        if self.progress is None or self.progress.disk is None:
            return None
        percent = _percent_of(line)
        if percent is None:
            return None
        return replace(self.progress, percent=percent)

    def _note_decision(self, line: str) -> None:
        text = line.split(": ", 1)[-1] if line.startswith("virt-v2v") else line
        if text.startswith("This guest has virtio drivers installed"):
            self.decisions.virtio_drivers = True
        elif text.startswith("This guest does not have virtio drivers installed"):
            self.decisions.virtio_drivers = False
        elif text.startswith("This guest requires UEFI on the target"):
            self.decisions.uefi = True
        elif line.strip() == "Checking if the guest needs BIOS or UEFI to boot" or (
            _STAGE.match(line) and "needs BIOS or UEFI" in line
        ):
            self.decisions.uefi = self.decisions.uefi or False
        capability = _CAPABILITY.match(line)
        if capability:
            self.decisions.capabilities[capability.group(1)] = capability.group(2)
        inspected = _INSPECTED.match(line)
        if inspected:
            self.decisions.inspected[inspected.group(1)] = inspected.group(2).strip()

    def _note_error(self, line: str) -> None:
        error = _ERROR.match(line)
        if error:
            self.errors = [error.group(2).strip()]
            self._in_error = True
            return
        if not self._in_error:
            return
        if not line.strip():
            return  # virt-v2v separates the paragraphs of one error with blank lines
        if _REPORTING_BUGS.match(line) or is_noise(line):
            self._in_error = False  # the message is over; clean-up chatter follows
        else:
            self.errors.append(line.strip())

    def tail(self) -> list[str]:
        """The last meaningful lines, oldest first."""
        return list(self._tail)

    def failure(self, limit: int = 12) -> tuple[str, list[str]]:
        """A one-line reason and the supporting lines for a failed run."""
        if self.errors:
            reason = self.errors[0]
            detail = self.errors[1:limit]
            return reason, detail
        lines = self.tail()[-limit:]
        if not lines:
            return "virt-v2v failed without saying why", []
        return lines[-1], lines[:-1]


def _percent_of(line: str) -> float | None:
    bars = list(_BAR.finditer(line))
    if bars:  # a chunk can hold several redraws: the last one is current
        return min(float(bars[-1].group(1)), 100.0)
    fraction = _FRACTION.match(line.strip())
    if fraction and int(fraction.group(2)) > 0:
        return min(100.0 * int(fraction.group(1)) / int(fraction.group(2)), 100.0)
    return None
