"""docker-compose.yml's NATS, run for real without docker: the identities service's
command writes the volumes' contents, the compose file's nats.conf is started by the
pinned nats-server with those folders where the containers mount them, and each
service connects with the file its container sees; an anonymous client is refused,
and an identity is held to its subjects."""

from __future__ import annotations

import json
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from ferry.bus import Bus, NotConnected, PublishFailed, TopologySettings, declare
from ferry.proto import migration
from ferry.proto.subjects import Service
from ferry.runtime import secretfiles
from ferry.runtime.stack import identities, nats

ROOT = Path(__file__).resolve().parents[3]
TOPOLOGY = TopologySettings(ack_wait_seconds=5.0, duplicate_window_seconds=30)


@pytest.fixture(scope="module")
def compose_nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    root = tmp_path_factory.mktemp("compose")
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    # The identities service's command, with --out where its volumes are
    command = compose["services"]["identities"]["command"]
    out = root / "ferry-identities"
    argv = [sys.executable if c == "python" else c for c in command]
    argv[argv.index("--out") + 1] = str(out)
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    # The nats service's configuration, at its target, with the server's volume mounted
    service = compose["services"]["nats"]
    conf = compose["configs"][service["configs"][0]["source"]]["content"]
    etc = root / "etc-nats"
    etc.mkdir()
    shutil.copytree(out / identities.SERVER, etc / "identities")
    store = root / "store"
    conf = conf.replace('"/var/lib/nats"', json.dumps(str(store)))
    conf = conf.replace("0.0.0.0:4222", "127.0.0.1:-1").replace("0.0.0.0:8222", "127.0.0.1:-1")
    (etc / "nats.conf").write_text(conf)
    log = root / "nats.log"
    server = subprocess.Popen(nats.argv(etc / "nats.conf", log))
    try:
        bound = nats.wait_ready(server, log, 0, 20.0, monitor=True)
        yield bound.url, out
    finally:
        server.terminate()
        server.wait(10)


async def _connect(url: str, out: Path, identity: str) -> Bus:
    path = out / identity / "credentials.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    creds = secretfiles.credentials(path)
    return await Bus.connect(
        url, name=identity, settings=TOPOLOGY, credentials=creds, publish_timeout=3.0
    )


async def test_every_service_connects_with_its_own_file(compose_nats: tuple[str, Path]) -> None:
    url, out = compose_nats
    for service in Service:
        async with await _connect(url, out, service.value) as bus:
            await declare(bus, TOPOLOGY, [service])
            assert bus.connected


async def test_an_anonymous_client_is_refused(compose_nats: tuple[str, Path]) -> None:
    url, _ = compose_nats
    with pytest.raises(NotConnected, match="authorization violation"):
        await Bus.connect(url, name="anonymous", connect_timeout=10.0)


async def test_an_identity_is_held_to_its_subjects(compose_nats: tuple[str, Path]) -> None:
    url, out = compose_nats
    async with await _connect(url, out, "volume") as bus:
        with pytest.raises(PublishFailed):
            await bus.publish(migration.VmCompleted(plan="p", migration="m", vm="v"))


def test_running_the_identities_service_again_keeps_the_credentials(
    compose_nats: tuple[str, Path],
) -> None:
    _, out = compose_nats
    before = (out / "vm" / "credentials.json").read_text()
    identities.split(out)
    assert (out / "vm" / "credentials.json").read_text() == before
    assert all(
        stat.S_IMODE((out / i).stat().st_mode) == 0o700
        for i in (*identities.IDENTITIES, identities.SERVER)
    )
