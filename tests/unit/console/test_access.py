"""Who may read and write, decided without a network: peers are faked at the transport."""

from __future__ import annotations

from pathlib import Path
from unittest import mock

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from ferry.console import access

TOKEN = "a-console-token-of-enough-length"


def request(
    method: str, path: str, peer: str, headers: dict[str, str] | None = None
) -> web.Request:
    transport = mock.Mock()
    transport.get_extra_info.side_effect = lambda name, default=None: (
        (peer, 40000) if name == "peername" else default
    )
    return make_mocked_request(method, path, headers=headers or {}, transport=transport)


async def ok(_: web.Request) -> web.Response:
    return web.Response(text="ok")


async def check(req: web.Request) -> int:
    try:
        response = await access.middleware(access.Token(TOKEN))(req, ok)
    except web.HTTPException as refused:
        return refused.status
    return response.status


@pytest.mark.parametrize(
    ("peer", "headers", "status"),
    [
        ("127.0.0.1", {}, 200),
        ("::1", {}, 200),
        ("10.1.2.3", {}, 403),
        ("10.1.2.3", {"Authorization": "Bearer wrong-token-wrong-token"}, 403),
        ("10.1.2.3", {"Authorization": f"Bearer {TOKEN}"}, 200),
        ("10.1.2.3", {"Cookie": f"{access.COOKIE}={TOKEN}"}, 200),
    ],
)
async def test_reads_are_open_on_loopback_only(
    peer: str, headers: dict[str, str], status: int
) -> None:
    assert await check(request("GET", "/api/snapshot", peer, headers)) == status


async def test_probes_answer_anyone() -> None:
    for path in ("/healthz", "/readyz", "/metrics"):
        assert await check(request("GET", path, "10.1.2.3")) == 200


async def test_writes_need_the_token_even_from_loopback() -> None:
    assert await check(request("POST", "/api/session", "127.0.0.1")) == 401
    good = {"Authorization": f"Bearer {TOKEN}"}
    assert await check(request("POST", "/api/session", "10.1.2.3", good)) == 200


def test_the_token_never_shows_in_its_repr_and_is_created_private(tmp_path: Path) -> None:
    path = tmp_path / "console" / "token"
    token = access.Token.load_or_create(path)
    assert path.stat().st_mode & 0o777 == 0o600
    secret = path.read_text().strip()
    assert secret not in repr(token) and secret not in f"{token}"
    assert access.Token.load_or_create(path).matches(secret)
    with pytest.raises(ValueError, match="16 characters"):
        access.Token("short")
