"""``ferry install-service``'s units: the supervisor's policy in systemd's terms, valid units.

systemd does not run here, so the units are checked as text and, where
``systemd-analyze`` exists, by ``systemd-analyze verify`` (which parses them as
systemd would and checks that each ExecStart binary exists).
"""

from __future__ import annotations

import json
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from ferry.bus import Bus, NotConnected
from ferry.runtime import secretfiles
from ferry.runtime.stack import identities, nats, services, systemd
from ferry.runtime.stack.state import RestartPolicy


def _sections(text: str) -> dict[str, dict[str, list[str]]]:
    found: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line.startswith("["):
            current = found.setdefault(line.strip("[]"), {})
        elif "=" in line:
            key, value = line.split("=", 1)
            current.setdefault(key, []).append(value)
    return found


def test_units_carry_the_supervisors_restart_policy(tmp_path: Path) -> None:
    # Given the default policy
    policy = RestartPolicy()

    # When units are made
    units = systemd.units(
        tmp_path, "/usr/bin/nats-server", nats_port=4222, http_port=8081, policy=policy
    )

    # Then there is one per process plus a target that wants them all
    names = [systemd.NATS_UNIT, *(systemd.unit_name(s.name) for s in services.SERVICES)]
    assert sorted(units) == sorted([*names, systemd.TARGET])
    assert _sections(units[systemd.TARGET])["Unit"]["Wants"] == [" ".join(names)]
    for name in names:
        unit = _sections(units[name])
        # every exit is restarted, the delay grows from the first to the cap
        assert unit["Service"]["Restart"] == ["always"]
        assert unit["Service"]["RestartSec"] == ["0.5"]
        assert unit["Service"]["RestartMaxDelaySec"] == ["30"]
        assert policy.delay * 2 ** int(unit["Service"]["RestartSteps"][0]) >= policy.max_delay
        # and after crash_loop_after fast failures the unit is left down
        assert unit["Unit"]["StartLimitBurst"] == ["5"]
        window = int(unit["Unit"]["StartLimitIntervalSec"][0])
        assert window >= 5 * policy.min_uptime + sum(policy.backoff(n) for n in range(1, 5))
        assert unit["Unit"]["PartOf"] == [systemd.TARGET]
    vm = _sections(units[systemd.unit_name("vm-service")])["Service"]
    env = dict(e.strip('"').split("=", 1) for e in vm["Environment"])
    assert env["FERRY_HTTP__PORT"] == "8084" and env["FERRY_NATS__URL"] == "nats://127.0.0.1:4222"
    assert vm["ExecStart"] == [f"{sys.executable} -m ferry.vm_service"]
    # and nothing of the installing shell's environment reaches a unit
    assert set(env) == {
        "FERRY_DATA_DIR", "FERRY_NATS__URL", "FERRY_NATS__CREDENTIALS_FILE",
        "FERRY_HTTP__HOST", "FERRY_HTTP__PORT", "PYTHONUNBUFFERED",
    }  # fmt: skip


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_systemd_analyze_verifies_the_written_units(tmp_path: Path) -> None:
    # Given the units as `ferry install-service` writes them
    unit_dir = tmp_path / "units"
    done = subprocess.run(
        [sys.executable, "-m", "ferry.cli.main", "install-service", "--data-dir",
         str(tmp_path / "data"), "--unit-dir", str(unit_dir)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "data" / "nats" / "nats.conf").read_text() == nats.stack_config(
        tmp_path / "data", 4222, monitor_port=8222
    )

    # When systemd-analyze verifies them
    files = sorted(str(p) for p in unit_dir.iterdir())
    verify = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *files],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip

    # Then they pass; systemd before 254 only does not know the growing delay yet
    assert verify.returncode == 0, verify.stderr
    complaints = [
        line for line in verify.stderr.splitlines()
        if line.strip() and "RestartSteps" not in line and "RestartMaxDelaySec" not in line
    ]  # fmt: skip
    assert complaints == [], verify.stderr


def test_print_writes_nothing(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "ferry.cli.main", "install-service", "--print", "--data-dir",
         str(tmp_path / "data"), "--unit-dir", str(tmp_path / "units")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"# {systemd.NATS_UNIT}" in done.stdout and "Restart=always" in done.stdout
    assert not (tmp_path / "units").exists() and not (tmp_path / "data").exists()


def test_installed_units_name_each_identity_file_and_hold_no_secret(tmp_path: Path) -> None:
    # Given the units and server configuration `ferry install-service` writes
    data, unit_dir = tmp_path / "data", tmp_path / "units"
    done = subprocess.run(
        [sys.executable, "-m", "ferry.cli.main", "install-service", "--data-dir", str(data),
         "--unit-dir", str(unit_dir)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    folder = nats.identities_dir(data)
    passwords = {p.stem: json.loads(p.read_text())["password"] for p in folder.glob("*.json")}
    assert set(passwords) == set(identities.IDENTITIES)

    # Then no unit holds a password, in ExecStart, Environment or anywhere
    texts = {p.name: p.read_text() for p in unit_dir.iterdir()}
    for name, text in texts.items():
        assert not [i for i, pw in passwords.items() if pw in text], name
    # and each service reads its own identity's file (the console the CLI's)
    for spec in services.SERVICES:
        unit = _sections(texts[systemd.unit_name(spec.name)])["Service"]
        env = dict(e.strip('"').split("=", 1) for e in unit["Environment"])
        own = spec.service.value if spec.service is not None else identities.CLI
        assert env["FERRY_NATS__CREDENTIALS_FILE"] == str(folder / f"{own}.json")
    # and the server admits these identities only, from a private file
    conf = data / "nats" / "nats.conf"
    assert stat.S_IMODE(conf.stat().st_mode) == 0o600
    text = conf.read_text()
    assert "authorization {" in text and "no_auth_user" not in text
    assert all(json.dumps(pw) in text for pw in passwords.values())
    # and `--print` shows no password either
    shown = subprocess.run(
        [sys.executable, "-m", "ferry.cli.main", "install-service", "--print", "--data-dir",
         str(data)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert shown.returncode == 0 and not [pw for pw in passwords.values() if pw in shown.stdout]


async def test_services_installed_this_way_connect_and_anonymous_clients_do_not(
    tmp_path: Path,
) -> None:
    # Given the server configuration install-service wrote, started as its unit would
    data = tmp_path / "data"
    text = nats.stack_config(data, 0, monitor_port=0)
    nats.write_config(data / "nats" / "nats.conf", text)
    log = data / "nats-server.log"
    server = subprocess.Popen(nats.argv(data / "nats" / "nats.conf", log))
    try:
        bound = nats.wait_ready(server, log, 0, 20.0, monitor=True)
        # When the vm-service connects with the file its unit names, Then it is in
        creds = secretfiles.credentials(
            identities.credentials_file(nats.identities_dir(data), "vm")
        )
        async with await Bus.connect(bound.url, name="vm", credentials=creds) as bus:
            assert bus.connected
        # And an anonymous client is refused
        with pytest.raises(NotConnected, match="authorization"):
            await Bus.connect(bound.url, name="anonymous", connect_timeout=10.0)
    finally:
        server.terminate()
        server.wait(10)
