"""docker-compose.yml closes the bus as `ferry up` does: docker does not run here, so
the file is read and held to the rules (a real nats-server with this configuration
is started by tests/integration/runtime/test_compose_nats.py).

Every service reads its own NATS identity from a file in its own volume, mounted
read-only, and no other identity's; no password is in the file, a command line or an
environment; NATS admits the identities only and runs as the image's non-root user.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from ferry.runtime.stack import identities

ROOT = Path(__file__).resolve().parents[3]
SERVICES = {
    "migration-controller": "controller",
    "volume-service": "volume",
    "conversion-service": "conversion",
    "vm-service": "vm",
}


def _compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def _mounts(service: dict[str, Any]) -> dict[str, str]:
    """volume name -> "target[:ro]" of a service's short-syntax mounts."""
    found = {}
    for mount in service.get("volumes", []):
        source, target = mount.split(":", 1)
        found[source] = target
    return found


def test_each_service_reads_its_own_identity_from_a_private_read_only_file() -> None:
    services = _compose()["services"]
    for name, identity in SERVICES.items():
        service = services[name]
        env = service["environment"]
        # Then the credentials are a file the service is told of, in its own volume
        path = Path(env["FERRY_NATS__CREDENTIALS_FILE"])
        mounts = _mounts(service)
        own = f"nats-id-{identity}"
        assert mounts[own] == f"{path.parent}:ro", name
        # and it mounts no other identity's volume
        others = {m for m in mounts if m.startswith("nats-id-")} - {own}
        assert others == set(), name


def test_no_secret_in_an_environment_or_a_command_line() -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    compose = _compose()
    for name, service in compose["services"].items():
        env = service.get("environment", {})
        # No setting carries a secret value: credentials are files (…_FILE names a
        # path, which is no secret), never values
        secret_keys = [k for k in env if re.search(r"PASSWORD|TOKEN|SECRET", k, re.I)]
        assert not [k for k in secret_keys if not k.endswith("_FILE")], name
        for key in secret_keys:
            assert str(env[key]).startswith("/run/"), (name, key)  # a mounted file
        assert not [v for v in env.values() if "@" in str(v)], name  # no user:pass@ URL
        assert not re.search(r"password|--pass|--user", " ".join(service["command"]), re.I)
    code = "\n".join(line.split("#")[0] for line in text.splitlines())
    assert "password" not in code.lower()


def test_nats_admits_the_identities_only_and_is_not_root() -> None:
    compose = _compose()
    nats = compose["services"]["nats"]
    text = compose["configs"][nats["configs"][0]["source"]]["content"]
    conf = "\n".join(line.split("#")[0] for line in text.splitlines())  # the settings
    target = Path(nats["configs"][0]["target"])
    # Then the server includes the identities' users, and nothing opens it again
    include = re.search(r'include\s+"([^"]+)"', conf)
    assert include is not None
    assert "no_auth_user" not in conf and "authorization" not in conf.replace(include[1], "")
    # from the server's own identity volume, read-only
    assert _mounts(nats)["nats-id-server"] == f"{(target.parent / include[1]).parent}:ro"
    assert set(_mounts(nats)) == {"nats-data", "nats-id-server"}
    # and it runs as the image's user (the Dockerfile's USER ferry), never as root
    assert nats.get("user") in (None, "ferry", "10001")
    assert nats["depends_on"]["identities"]["condition"] == "service_completed_successfully"


def test_the_identities_service_writes_every_identity_into_its_own_volume() -> None:
    compose = _compose()
    service = compose["services"]["identities"]
    command = service["command"]
    assert command[:3] == ["python", "-m", "ferry.runtime.stack.identities"]
    out = command[command.index("--out") + 1]
    # Then each identity (and the server) has a volume mounted at its folder of --out
    expected = {f"nats-id-{i}": f"{out}/{i}" for i in (*identities.IDENTITIES, identities.SERVER)}
    assert _mounts(service) == expected
    assert set(expected) <= set(compose["volumes"])
    # and the image makes those mount points private and the non-root user's, so a new
    # volume starts out 0700 and owned by ferry
    dockerfile = (ROOT / "Dockerfile").read_text()
    made = re.search(r"for i in ([^;]+); do", dockerfile)
    assert made is not None
    assert set(made[1].split()) == {*identities.IDENTITIES, identities.SERVER}
    assert "install -d -m 0700 -o ferry -g ferry" in dockerfile
