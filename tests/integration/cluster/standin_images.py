"""The images the cluster stand-in's kubelet runs, for the fixtures and the tests.

A module of its own, not the ``conftest``: another test directory's ``conftest`` may
be the one imported under that name when both are collected.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

TOOLS_IMAGE = "ferry/tools:test"  # pvcinit and shell tools: the host's /usr/bin
# Ferry's own image (the populator pod): this checkout's interpreter and packages.
FERRY_IMAGE = "ferry/ferry:test"
CLASSES = {"wffc": "WaitForFirstConsumer", "immediate": "Immediate"}


def ferry_image_env() -> dict[str, str]:
    """Ferry's image: this interpreter, and this checkout's sources where ``PYTHONPATH``
    puts them before the installed ones (a worktree run against another's venv)."""
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin"}
    if os.environ.get("PYTHONPATH"):
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    return env
