"""`ferry up --tls`: the stack's nats-server speaks only TLS, with a certificate of a
CA made for the stack; a client that does not trust that CA is refused, one that does
connects (with its identity, as every service does)."""

from __future__ import annotations

import ssl
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from ferry.bus import Bus, Credentials, NotConnected
from ferry.runtime import secretfiles
from ferry.runtime.settings import NatsSettings
from ferry.runtime.stack import identities, nats, processes, tls


@pytest.fixture(scope="module")
def tls_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[nats.Bound, Path]]:
    data = tmp_path_factory.mktemp("tls-stack")
    server, bound = nats.start(data, 0, 20.0, tls_on=True)
    try:
        yield bound, data
    finally:
        processes.stop([server], 10)


def _creds(data: Path, identity: str = "volume") -> Credentials:
    return secretfiles.credentials(identities.credentials_file(nats.identities_dir(data), identity))


async def test_a_client_that_trusts_the_stacks_ca_connects(
    tls_stack: tuple[nats.Bound, Path],
) -> None:
    bound, data = tls_stack
    # Given the CA `ferry up --tls` made, as a service's settings name it
    settings = NatsSettings(url=bound.url, tls_ca_file=tls.files(nats.tls_dir(data)).ca)
    assert bound.url.startswith("tls://")

    # When a service connects with it and its identity
    async with await Bus.connect(
        bound.url, name="volume", credentials=_creds(data), tls=settings.tls()
    ) as bus:
        # Then the connection is up, and it is TLS
        assert bus.connected
        assert bus.nc._server_info.get("tls_required") is True


async def test_a_client_without_the_ca_is_refused(tls_stack: tuple[nats.Bound, Path]) -> None:
    bound, data = tls_stack
    # When a client connects trusting only the system's CAs, Then it is refused at once
    with pytest.raises(NotConnected, match="TLS"):
        await Bus.connect(
            bound.url, name="volume", credentials=_creds(data), tls=ssl.create_default_context(),
            connect_timeout=10.0,
        )  # fmt: skip


async def test_a_client_trusting_another_ca_is_refused(
    tls_stack: tuple[nats.Bound, Path], tmp_path: Path
) -> None:
    bound, data = tls_stack
    # Given a CA of another stack (same names, other keys)
    other = tls.ensure(tmp_path / "other")
    # Then a client trusting it is refused by ours
    with pytest.raises(NotConnected, match="TLS"):
        await Bus.connect(
            bound.url, name="volume", credentials=_creds(data),
            tls=ssl.create_default_context(cafile=str(other.ca)), connect_timeout=10.0,
        )  # fmt: skip


async def test_a_plain_client_gets_nothing_in_clear(tls_stack: tuple[nats.Bound, Path]) -> None:
    bound, data = tls_stack
    # When a client that speaks no TLS connects
    with pytest.raises(NotConnected):
        await Bus.connect(
            f"nats://127.0.0.1:{bound.port}", name="volume", credentials=_creds(data),
            connect_timeout=5.0,
        )  # fmt: skip


def test_the_keys_are_private_and_the_config_names_them(tls_stack: tuple[nats.Bound, Path]) -> None:
    _, data = tls_stack
    folder = nats.tls_dir(data)
    made = tls.files(folder)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert stat.S_IMODE(made.key.stat().st_mode) == 0o600
    assert stat.S_IMODE((folder / "ca-key.pem").stat().st_mode) == 0o600
    conf = (data / "nats" / "nats.conf").read_text()
    assert "tls {" in conf and str(made.cert) in conf and str(made.key) in conf
    assert "ca-key" not in conf  # the server never holds the CA's key


def test_an_empty_ca_setting_is_no_tls() -> None:
    # The chart leaves FERRY_NATS__TLS_CA_FILE empty for a NATS without TLS
    assert NatsSettings(tls_ca_file="").tls() is None  # type: ignore[arg-type]
    assert NatsSettings(credentials_file="").credentials() is None  # type: ignore[arg-type]
