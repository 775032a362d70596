"""The two images: the services' (./Dockerfile) and the conversion image
(./Dockerfile.conversion), and who uses which.

No Docker engine runs here and hadolint is not packaged by Debian, so the Dockerfiles
are parsed by BuildKit's own parser (the ``dockerfile`` package wraps it) and held to
what the images promise: known instructions, stages that exist, a non-root user, apt
lists removed, and the right tools in the right image. The chart is rendered by a real
helm; the platform's conversion pods are built from its settings.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dockerfile
import pytest

from ferry.testing import helm

ROOT = Path(__file__).resolve().parents[3]
CHART = ROOT / "charts" / "ferry"
KNOWN = {
    "FROM", "RUN", "COPY", "ENV", "WORKDIR", "USER", "EXPOSE", "CMD", "ENTRYPOINT",
    "ARG", "LABEL", "ADD", "HEALTHCHECK", "SHELL", "STOPSIGNAL", "VOLUME", "ONBUILD",
}  # fmt: skip
VIRT_TOOLS = ("virt-v2v", "libguestfs-tools", "nbdkit", "qemu-utils")


def _parsed(name: str) -> list[Any]:
    return list(dockerfile.parse_file(str(ROOT / name)))


def _packages(commands: list[Any]) -> set[str]:
    words: set[str] = set()
    for command in commands:
        if command.cmd == "RUN" and "apt-get install" in command.value[0]:
            words |= set(command.value[0].split())
    return words


def _final_stage(commands: list[Any]) -> list[Any]:
    starts = [i for i, c in enumerate(commands) if c.cmd == "FROM"]
    return commands[starts[-1] :]


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.conversion"])
def test_each_dockerfile_parses_and_keeps_the_rules(name: str) -> None:
    commands = _parsed(name)
    # Then every instruction is one Docker knows
    assert {c.cmd for c in commands} <= KNOWN, {c.cmd for c in commands} - KNOWN
    # and each stage copied from is defined before
    stages: list[str] = []
    # (a base may be a global ARG, declared before the first FROM, with its default)
    args = dict(c.value[0].split("=", 1) for c in commands if c.cmd == "ARG" and "=" in c.value[0])
    for command in commands:
        if command.cmd == "FROM":
            base = command.value[0]
            if base.startswith("${") and base.endswith("}"):
                base = args[base[2:-1]]
            assert ":" in base and not base.endswith(":latest"), f"unpinned base {base}"
            if len(command.value) == 3 and command.value[1].upper() == "AS":
                stages.append(command.value[2])
        for flag in command.flags:
            if flag.startswith("--from="):
                assert flag.removeprefix("--from=") in stages
    final = _final_stage(commands)
    # and the final stage runs as the non-root user the pods and compose expect
    users = [c.value[0] for c in final if c.cmd == "USER"]
    assert users and users[-1] == "ferry"
    assert any("--uid 10001" in c.value[0] for c in final if c.cmd == "RUN")
    # and every apt-get install cleans its lists in the same layer
    for command in commands:
        if command.cmd == "RUN" and "apt-get install" in command.value[0]:
            assert "--no-install-recommends" in command.value[0]
            assert "rm -rf /var/lib/apt/lists/*" in command.value[0]


def test_the_virt_tools_are_in_the_conversion_image_only() -> None:
    services = _packages(_final_stage(_parsed("Dockerfile")))
    conversion = _packages(_final_stage(_parsed("Dockerfile.conversion")))
    # Then the conversion image has virt-v2v, libguestfs, nbdkit and qemu-utils
    assert set(VIRT_TOOLS) <= conversion
    # and the services' image has the copy engine's tools but none of libguestfs's
    assert {"qemu-utils", "nbdkit"} <= services
    assert not services & {"virt-v2v", "libguestfs-tools", "guestfs-tools", "linux-image-amd64"}
    # and both carry Ferry's packages from the same locked build
    for name in ("Dockerfile", "Dockerfile.conversion"):
        assert any(c.cmd == "COPY" and "--from=build" in c.flags for c in _parsed(name)), name
    # and in the conversion image its venv comes first on PATH: a conversion pod under a
    # budget runs `python3 -m ferry.platform.kubernetes.podpace` from it
    final = _final_stage(_parsed("Dockerfile.conversion"))
    pairs = [c.value for c in final if c.cmd == "ENV"]
    env = {k: v for value in pairs for k, v in zip(value[::2], value[1::2], strict=True)}
    assert env["PATH"].split(":")[0] == "/opt/ferry/bin"
    assert any(c.cmd == "COPY" and c.value[:2] == ("/opt/ferry", "/opt/ferry") for c in final)


def _platform_env(objects: list[dict[str, Any]], deployment: str) -> dict[str, str]:
    (found,) = [
        o for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"] == deployment
    ]
    container = found["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e["value"] for e in container["env"] if "value" in e}  # not valueFrom


def test_the_chart_gives_conversion_pods_the_conversion_image(tmp_path: Path) -> None:
    # Given the chart rendered with its defaults
    objects = helm.template(CHART, release="ferry", namespace="ferry-system")
    version = "0.1.0"
    for name in ("ferry-volume-service", "ferry-conversion-service", "ferry-vm-service"):
        env = _platform_env(objects, name)
        prefix = "FERRY_PLATFORM__KUBERNETES__"
        # Then conversion pods run the conversion image, populator and pvcinit the services'
        assert env[prefix + "CONVERSION_IMAGE"] == f"ferry-conversion:{version}"
        assert env[prefix + "POPULATOR_IMAGE"] == f"ferry:{version}"
        assert env[prefix + "PVCINIT_IMAGE"] == f"ferry:{version}"
    # And the services themselves run the services' image
    for deployment in (o for o in objects if o["kind"] == "Deployment"):
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        assert container["image"] == f"ferry:{version}"

    # When the conversion image is given a registry and tag, or a setting overrides it
    values = tmp_path / "values.yaml"
    values.write_text(
        "conversionImage: {repository: registry.example/ferry-conversion, tag: '7'}\n"
        "settings: {platform: {kubernetes: {populator_image: my/populator:1}}}\n"
    )
    env = _platform_env(
        helm.template(CHART, release="ferry", namespace="ferry-system", values=(values,)),
        "ferry-conversion-service",
    )
    # Then each is what was asked for
    assert (
        env["FERRY_PLATFORM__KUBERNETES__CONVERSION_IMAGE"] == "registry.example/ferry-conversion:7"
    )
    assert env["FERRY_PLATFORM__KUBERNETES__POPULATOR_IMAGE"] == "my/populator:1"
