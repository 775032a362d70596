"""The private nats-server helper: ports, restarts, fsync configuration."""

from __future__ import annotations

import socket
from pathlib import Path

from ferry.testing.nats import NatsServer, find_binary


def test_binary_is_the_pinned_one_next_to_the_interpreter() -> None:
    import sys

    assert Path(find_binary()).parent == Path(sys.executable).parent


def test_kill_and_restart_keep_port_and_store(tmp_path: Path) -> None:
    # Given a running server
    with NatsServer(tmp_path / "n") as server:
        port = server.port
        assert port and "sync_interval: always" in server.config_file.read_text()

        # When it is killed with SIGKILL
        server.kill()
        assert not server.running
        with socket.socket() as probe:
            assert probe.connect_ex(("127.0.0.1", port)) != 0

        # Then it restarts on the same port with the same store directory
        server.restart()
        assert server.running and server.port == port
        assert (server.store_dir / "jetstream").is_dir()
        server.stop()
        assert not server.running
