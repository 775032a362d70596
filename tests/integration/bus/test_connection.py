"""Connecting: nats-py's loop retries the first connection; failures never show credentials."""

from __future__ import annotations

import asyncio
import logging
import socket
from pathlib import Path

import pytest

from ferry.bus import Bus, NotConnected
from ferry.testing.nats import NatsServer


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_first_connection_waits_for_a_late_server(tmp_path: Path) -> None:
    # Given a server that is not running yet on a known port
    server = NatsServer(tmp_path / "late")
    server.port = _free_port()
    try:
        # When a service connects before the server is up
        connecting = asyncio.create_task(Bus.connect(server.url, name="early", connect_timeout=30))
        await asyncio.sleep(1.0)
        assert not connecting.done()
        await asyncio.to_thread(server.start)

        # Then the connection succeeds once the server is there
        bus = await asyncio.wait_for(connecting, 30)
        async with bus:
            assert bus.connected
    finally:
        server.close()


async def test_unreachable_server_is_a_clear_error_without_secrets(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Given a URL with credentials that points nowhere
    url = f"nats://ferry:hunter2@127.0.0.1:{_free_port()}"

    # When connecting with a short deadline
    with caplog.at_level(logging.DEBUG), pytest.raises(NotConnected) as err:
        await Bus.connect(url, name="lonely", connect_timeout=1.5)

    # Then the error names the server but no password, and neither do the logs
    assert "127.0.0.1" in str(err.value) and "hunter2" not in str(err.value)
    assert "hunter2" not in caplog.text
