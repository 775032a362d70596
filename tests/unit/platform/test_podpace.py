"""A conversion pod's pacer: grants in, rate file out; out of reach and refused."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import pytest

from ferry.platform.kubernetes import grants, podpace

MiB = 1 << 20


def test_grants_out_of_reach_keep_the_last_rate_and_are_asked_again(tmp_path: Path) -> None:
    # Given grants that wait a while, then are out of reach twice, then answered again
    rate_file = tmp_path / "rate"
    seen: list[str | None] = []  # the rate file as each ask found it
    said: list[str] = []
    done = threading.Event()

    def ask(nbytes: int) -> None:
        seen.append(rate_file.read_text() if rate_file.exists() else None)
        if len(seen) in (6, 7):
            raise OSError("no bandwidth grant from the conversion-service: refused")
        time.sleep(0.03)
        if len(seen) == 12:
            done.set()

    # When the pacer feeds the rate file with them
    reason = podpace.feed(ask, rate_file, MiB, done, period=0.05, say=said.append)

    # Then it never gave up, said once that the grants were away and once that they
    # came back, kept the rate it had written while they were away (nbdkit reads on at
    # it), and wrote rates again after
    assert reason == "" and len(seen) == 12
    assert [s.split(":")[0] for s in said] == ["ferry", "ferry"]
    assert "keeping the last rate" in said[0] and "answered again" in said[1]
    assert seen[5] is not None and seen[5] == seen[6] == seen[7], seen
    assert int(rate_file.read_text()) > 1 and rate_file.read_text() != seen[7]


def test_a_refused_ticket_ends_the_feeding_with_its_reason(tmp_path: Path) -> None:
    def ask(nbytes: int) -> None:
        raise grants.Refused("the conversion-service refused a bandwidth grant (HTTP 403)")

    reason = podpace.feed(ask, tmp_path / "rate", MiB, threading.Event(), period=0.05)
    assert "HTTP 403" in reason and not (tmp_path / "rate").exists()


@pytest.mark.parametrize(
    "argv",
    [[], ["t", "r", "1", "x", "true"], ["t", "r", "0", "--", "true"], ["t", "r", "-1", "--", "x"]],
)
def test_a_wrong_command_line_is_refused_with_the_usage(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert podpace.main(argv) == 2
    assert "usage: podpace" in capsys.readouterr().err


def test_an_unreadable_ticket_is_refused_saying_which_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "ticket.json"
    bad.write_text('{"url": "http://10.0.0.7:8080"}')  # no token
    assert podpace.main([str(bad), str(tmp_path / "rate"), "1048576", "--", "true"]) == 2
    assert str(bad) in capsys.readouterr().err


def test_the_commands_status_is_the_pods(tmp_path: Path) -> None:
    def ask(nbytes: int) -> None:
        threading.Event().wait(0.01)

    rate = tmp_path / "rate"
    assert podpace.run(ask, rate, MiB, [sys.executable, "-c", "raise SystemExit(3)"]) == 3
    killed = "import os, signal; os.kill(os.getpid(), signal.SIGTERM)"
    assert podpace.run(ask, rate, MiB, [sys.executable, "-c", killed]) == 128 + 15
    assert podpace.run(ask, rate, MiB, [str(tmp_path / "missing")]) == 127
