"""``ferry inventory -f provider.yaml`` on an OVA directory, with no stack running."""

from __future__ import annotations

import json
from pathlib import Path

import ovfkit
from typer.testing import CliRunner

from ferry.cli.main import app


def _area(tmp_path: Path, images: ovfkit.Images) -> Path:
    root = tmp_path / "import"
    root.mkdir()
    stream = images.stream.read_bytes()
    ovf = ovfkit.vmware_ovf([{"href": "d.vmdk", "size": len(stream)}], name="web01")
    ovfkit.write_ova(root / "web01.ova", "web01.ovf", ovf, [("d.vmdk", stream)])
    (root / "broken.ova").write_bytes(b"not a tar at all" * 100)
    provider = tmp_path / "provider.yaml"
    provider.write_text(
        "apiVersion: ferry.dev/v1alpha1\nkind: Provider\nmetadata:\n  name: exports\n"
        f"spec:\n  type: ova\n  url: {root}\n"
    )
    return provider


def test_inventory_from_a_file_lists_every_package_with_its_verdict(
    tmp_path: Path, images: ovfkit.Images
) -> None:
    # Given an OVA directory with one good and one broken package, and no stack
    provider = _area(tmp_path, images)

    # When listed as JSON from the Provider's file (NATS pointed nowhere)
    result = CliRunner().invoke(
        app, ["inventory", "-f", str(provider), "-o", "json", "--nats", "nats://127.0.0.1:1"]
    )

    # Then both packages are there with status and errors, and the exit code says rejected
    assert result.exit_code == 1, result.output
    packages = {p["id"]: p for p in json.loads(result.stdout)}
    assert packages["web01"]["status"] == "ok"
    assert packages["web01"]["vms"][0]["status"] == "ok"
    assert packages["web01"]["vms"][0]["errors"] == []
    assert packages["broken"]["status"] == "rejected"
    [reason] = packages["broken"]["errors"]
    assert "tar" in reason
    assert "1 of 2 packages rejected" in result.stderr


def test_allow_rejected_makes_a_rejected_package_expected(
    tmp_path: Path, images: ovfkit.Images
) -> None:
    provider = _area(tmp_path, images)
    result = CliRunner().invoke(app, ["inventory", "-f", str(provider), "--allow-rejected"])
    assert result.exit_code == 0, result.output
    assert "web01" in result.stdout and "broken" in result.stdout
