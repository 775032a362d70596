"""The checked-in JSON Schemas and AsyncAPI document match the structs."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from ferry.proto import schemagen


def _check(*extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ferry.proto.schemagen", "--check", *extra],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_checked_in_schemas_match_the_structs() -> None:
    # Given the structs in ferry.proto and the files under proto/
    # When the generator runs in check mode
    done = _check()

    # Then nothing drifted (otherwise: run `make schemas` and commit)
    assert done.returncode == 0, done.stderr


def test_the_check_catches_a_drifted_schema(tmp_path: Path) -> None:
    # Given a copy of the checked-in files with one schema edited by hand
    out = tmp_path / "proto"
    shutil.copytree(schemagen.DEFAULT_OUT / "schemas", out / "schemas")
    shutil.copy(schemagen.DEFAULT_OUT / "asyncapi.json", out / "asyncapi.json")
    assert _check(str(out)).returncode == 0
    edited = out / "schemas" / "volume.copy_disks.v1.json"
    edited.write_text(edited.read_text().replace('"precopy"', '"precopy_rounds"'))

    # When the check runs against it
    done = _check(str(out))

    # Then it fails and names the file
    assert done.returncode == 1
    assert "volume.copy_disks.v1.json" in done.stderr
