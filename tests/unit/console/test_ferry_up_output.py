"""What ``ferry up`` says about the console: its address, and its token only on a terminal."""

from __future__ import annotations

from pathlib import Path

import pytest

from ferry.cli import stack
from ferry.runtime.stack.processes import Process


def a_stack(data_dir: Path) -> stack.Stack:
    nats = Process("nats-server", 1, 1, "n.log", 4222)
    console = Process("console", 2, 2, "c.log", 8085)
    return stack.Stack(str(data_dir), "nats://x", "http://m", nats, [console])


def test_prints_the_token_on_a_terminal_and_only_its_file_in_a_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a console that wrote its token
    (tmp_path / "console").mkdir()
    (tmp_path / "console" / "token").write_text("the-token-0123456789abcdef\n")
    # When ferry up writes to a terminal, then to a log
    monkeypatch.setattr("sys.stdout.isatty", lambda: True)
    on_terminal = stack.describe(a_stack(tmp_path))
    monkeypatch.setattr("sys.stdout.isatty", lambda: False)
    in_log = stack.describe(a_stack(tmp_path))
    # Then both say where the console is; only the terminal shows the token itself
    assert "console    http://127.0.0.1:8085/" in on_terminal
    assert "the-token-0123456789abcdef" in on_terminal
    assert "the-token-0123456789abcdef" not in in_log
    assert str(tmp_path / "console" / "token") in in_log
