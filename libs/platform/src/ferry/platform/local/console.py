"""A local VM's serial console: its last lines, and watching it for the boot marker.

The console log is the only window into a guest that did not boot, so its tail
goes into the failure; the boot marker (a login prompt by default) is how the
local platform knows the guest is up, as KubeVirt would know from its agent.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

_CONTROL = re.compile(
    r"\x1b(?:\[[0-9;?]*[ -/]*[@-~]|[()#][A-Za-z0-9]|[@-Z\\-_a-z=>78])|[\x00-\x08\x0b-\x1f\x7f]"
)


def console_tail(path: Path, lines: int) -> list[str]:
    """The last ``lines`` non-empty lines of a console log, without escape sequences."""
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - 64 * 1024))
            text = handle.read().decode(errors="replace")
    except FileNotFoundError:
        return []
    cleaned = (_CONTROL.sub("", line).rstrip() for line in text.replace("\r", "\n").split("\n"))
    return [line for line in cleaned if line][-lines:]


class ConsoleWatch:
    """Follows a serial console log and tells when a pattern appeared."""

    _WINDOW = 4096  # characters kept so a marker split across reads is still seen

    def __init__(self, path: Path, pattern: str) -> None:
        self.path = path
        self.pattern = re.compile(pattern)
        self._offset = 0
        self._window = ""

    def seen(self) -> bool:
        try:
            with self.path.open("rb") as handle:
                handle.seek(self._offset)
                chunk = handle.read()
        except FileNotFoundError:
            return False
        self._offset += len(chunk)
        self._window = (self._window + _CONTROL.sub("", chunk.decode(errors="replace")))[
            -self._WINDOW :
        ]
        return bool(self.pattern.search(self._window))
