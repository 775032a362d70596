"""``ferry`` as a person sees it on a terminal and as a log records it, in a real child process.

The CLI decides by whether its output is a terminal: under a pseudo-terminal it
draws bars redrawn in place; into a pipe (a log) it prints plain lines, no escape
codes, and tables at full width so a name a user must copy is never cut.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import pty
import struct
import sys
import termios
from pathlib import Path

from controller_harness import make_vm
from controller_stack import Stack
from test_cli import OVA, ferry, write_plan

FERRY = [sys.executable, "-m", "ferry.cli.main"]


def _env(tmp: Path, **extra: str) -> dict[str, str]:
    # The width comes from the terminal (or COLUMNS when a test says so), not from ours.
    keep = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("FERRY_") and k not in ("COLUMNS", "LINES")
    }
    return {**keep, "FERRY_DATA_DIR": str(tmp / "no-stack"), **extra}


async def on_a_terminal(args: list[str], env: dict[str, str], columns: int = 120) -> bytes:
    """Run ``args`` with stdout and stderr on a pseudo-terminal; everything it wrote."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
    proc = await asyncio.create_subprocess_exec(
        *args, stdin=slave, stdout=slave, stderr=slave, env=env
    )
    os.close(slave)

    def drain() -> bytes:
        chunks = []
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child closed its side
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)

    try:
        written = await asyncio.wait_for(asyncio.to_thread(drain), 60)
        assert await asyncio.wait_for(proc.wait(), 10) == 0, written.decode(errors="replace")
    finally:
        os.close(master)
    return written


async def into_a_log(args: list[str], env: dict[str, str]) -> str:
    proc = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env
    )
    written, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, written.decode(errors="replace")
    return written.decode()


async def test_migrate_wait_draws_bars_on_a_terminal_and_plain_lines_into_a_log(
    stack: Stack, tmp_path: Path
) -> None:
    # Given a plan of two VMs and the stack running
    stack.source("src", [make_vm("id-a", OVA), make_vm("id-b", OVA)])
    assert (await ferry(stack, "apply", "-f", str(write_plan(tmp_path)))).exit_code == 0
    stack.run_services()
    stack.run_controller()
    name = "a-migration-name-long-enough-that-a-narrow-table-would-cut-it"
    # When `ferry migrate --wait` runs on a terminal
    shown = await on_a_terminal(
        [*FERRY, "migrate", "plan1", "--wait", "--name", name, "--nats", stack.url],
        _env(tmp_path, TERM="xterm-256color"),
    )
    text = shown.decode()
    # Then it drew bars with the terminal's escape codes, and ended with the summary
    assert "\x1b[" in text and "━" in text, text
    assert f"migration {name}: 2 succeeded, 0 failed, 0 canceled" in text, repr(text[-3000:])
    # And drew no log lines ("0:03 a: CopyDisks")
    assert " a: Succeeded" not in text and " a: StorePowerState" not in text
    # When the same plan's VMs are listed into a log at a terminal width of 60
    listed = await into_a_log(
        [*FERRY, "get", "migrations", "--nats", stack.url], _env(tmp_path, COLUMNS="60")
    )
    # Then nothing is cut or wrapped: the name and both times are on one line
    (row,) = [line for line in listed.splitlines() if name in line]
    assert "Succeeded" in row and row.count(":") >= 4, listed
    assert "…" not in listed and "\x1b[" not in listed
    # When the same command is run on a terminal 60 columns wide
    narrow = (
        await on_a_terminal(
            [*FERRY, "get", "migrations", "--nats", stack.url],
            _env(tmp_path, TERM="xterm-256color"),
            columns=60,
        )
    ).decode()
    # Then the terminal's width is respected (the row no longer fits on one line)
    assert not [line for line in narrow.splitlines() if name in line and "Succeeded" in line]
