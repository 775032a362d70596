"""Secrets others may read are refused, as ssh refuses such a key; probes bind loopback."""

from __future__ import annotations

from pathlib import Path

import pytest

from ferry.bus import PermanentError
from ferry.runtime.providers import MountedSecrets
from ferry.runtime.settings import HttpSettings


def plant(root: Path, mode: int) -> None:
    folder = root / "default" / "vcenter"
    folder.mkdir(parents=True)
    (folder / "password").write_text("hunter2\n")
    (folder / "password").chmod(mode)


def test_a_world_readable_provider_secret_is_refused_with_the_fix(tmp_path: Path) -> None:
    # Given a mounted secret that anyone on the host may read
    plant(tmp_path, 0o644)
    # When a service reads it, Then it refuses, naming the file, its mode and the fix
    with pytest.raises(PermanentError, match=r"mode 0644.*chmod 0600"):
        MountedSecrets(tmp_path).read("default", "vcenter")


def test_a_private_secret_is_read_and_group_read_only_when_allowed(tmp_path: Path) -> None:
    plant(tmp_path, 0o640)
    with pytest.raises(PermanentError):
        MountedSecrets(tmp_path).read("default", "vcenter")
    assert MountedSecrets(tmp_path, allow_group_read=True).read("default", "vcenter") == {
        "password": "hunter2"
    }
    (tmp_path / "default" / "vcenter" / "password").chmod(0o600)
    assert MountedSecrets(tmp_path).read("default", "vcenter") == {"password": "hunter2"}


def test_the_health_server_binds_loopback_unless_configured() -> None:
    assert HttpSettings().host == "127.0.0.1"
