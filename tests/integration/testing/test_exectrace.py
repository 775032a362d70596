"""The exec tracer sees what sampling /proc would miss: every exec of a whole process
tree, however short-lived, with its argv and environment, and the reads of one file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ferry.testing import exectrace

pytestmark = pytest.mark.skipif(not exectrace.available(), reason="strace is not installed")
SECRET = "canary-Tr-41d0c"


def _traced(tmp_path: Path, script: str) -> tuple[list[exectrace.Exec], list[exectrace.Read]]:
    log, program = tmp_path / "trace", tmp_path / "child.py"
    program.write_text(script)  # (on `python -c`, the secret would be on the tracee's argv)
    argv = exectrace.wrap([sys.executable, str(program)], log)
    subprocess.run(argv, check=True, timeout=60, env={"PATH": "/usr/bin:/bin"})
    return exectrace.parse(log, watched="secret-file")


def test_a_secret_on_a_grandchilds_argv_for_a_moment_is_seen(tmp_path: Path) -> None:
    # Given a child that runs, for a few milliseconds, a grandchild with the secret on argv
    script = f"import subprocess; subprocess.run(['sh', '-c', 'true', '{SECRET}'])"
    execs, _ = _traced(tmp_path, script)
    # Then the tracer names it
    assert [e.program for e in execs if SECRET.encode() in e.call] == ["/usr/bin/sh"]
    assert exectrace.leaks(execs, SECRET)


def test_a_secret_in_a_childs_environment_is_seen(tmp_path: Path) -> None:
    script = (
        f"import os, subprocess; subprocess.run(['true'], env={{**os.environ, 'PASS': '{SECRET}'}})"
    )
    execs, _ = _traced(tmp_path, script)
    assert len(exectrace.leaks(execs, SECRET)) == 1


def test_a_secret_read_from_a_file_is_a_read_not_a_leak(tmp_path: Path) -> None:
    # Given a child that gets the secret the right way: a file it reads
    secret_file = tmp_path / "secret-file"
    secret_file.write_text(SECRET)
    script = f"import subprocess; subprocess.run(['cat', '{secret_file}'], capture_output=True)"
    execs, reads = _traced(tmp_path, script)
    # Then the read shows the child received it, and no exec carried it
    cat = [e.pid for e in execs if e.program.endswith("/cat")]
    assert [r.pid for r in reads if SECRET.encode() in r.data] == cat
    assert exectrace.leaks(execs, SECRET) == []
