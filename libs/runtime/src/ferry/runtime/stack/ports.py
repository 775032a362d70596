"""Ports for the stack's processes on the loopback interface."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A port nobody listens on now. Another process may take it before the child binds
    it; the child then fails to start and says so in its log, which is reported."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def service_ports(first: int, count: int) -> list[int]:
    """``first`` and the ports after it, or distinct free ports when ``first`` is 0."""
    if first:
        return [first + index for index in range(count)]
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        if port not in ports:  # none is bound yet, so the kernel may offer one twice
            ports.append(port)
    return ports
