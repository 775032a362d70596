"""``ferry logs NAME`` when there is no such log: no stack at all, or which processes there are."""

from __future__ import annotations

import os
from pathlib import Path

import typer
from typer.testing import CliRunner

from ferry.cli import stack
from ferry.runtime.stack.processes import Process, start_time
from ferry.runtime.stack.state import Stack


def app() -> typer.Typer:
    cli = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    stack.register(cli)
    return cli


def logs(data_dir: Path, name: str) -> tuple[int, str]:
    result = CliRunner().invoke(app(), ["logs", name, "--data-dir", str(data_dir)])
    return result.exit_code, result.output


def test_without_a_stack_it_says_so_and_how_to_start_one(tmp_path: Path) -> None:
    # Given a data dir where no stack ever ran
    # When a service's log is asked for
    code, said = logs(tmp_path / "nothing", "migration-controller")
    # Then it says, as the bus commands do, that there is no stack and how to start one
    assert code == 1
    assert f"no Ferry stack found in {tmp_path / 'nothing'}: start one with `ferry up`" in said
    assert "known: \n" not in said and "known:" not in said, said


def test_with_a_stack_an_unknown_name_lists_its_processes(tmp_path: Path) -> None:
    # Given a running stack (its processes: this live test process, as recorded by ferry up)
    # of which only nats-server has written a log so far
    me, started = os.getpid(), start_time(os.getpid())
    assert started is not None

    def proc(name: str, port: int) -> Process:
        return Process(name, me, started, f"{name}.log", port)

    services = [proc(n, 8081 + i) for i, n in enumerate(("migration-controller", "volume-service"))]
    Stack(str(tmp_path), "nats://127.0.0.1:4222", "http://127.0.0.1:8222",
          proc("nats-server", 4222), services).save(tmp_path)  # fmt: skip
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "nats-server.log").write_text("ready\n")
    # When a name that is not one of them is asked for
    code, said = logs(tmp_path, "controller")
    # Then it names the stack's real processes, those without a log yet too
    assert code == 1
    assert said.strip().endswith(
        "its processes: migration-controller, nats-server, volume-service"
    ), said
    # And a real name's log is printed
    assert logs(tmp_path, "nats-server") == (0, "ready\n")
    # And once the stack stopped, its last logs are still listed, and said to be that
    (tmp_path / stack.STATE_FILE).unlink()
    code, said = logs(tmp_path, "controller")
    assert code == 1 and "its processes: nats-server (the stack there is not running" in said
