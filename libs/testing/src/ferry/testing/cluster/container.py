"""Inside a pod's private mount namespace: put its volumes where its spec says, then exec.

The kubelet starts ``unshare --mount --propagation private python -m
ferry.testing.cluster.container SPEC`` and this module, already alone in its
mount namespace, bind-mounts each volume (a claim's directory or block file, a
Secret's files, the termination-message file) onto the path the container asked
for, read-only where the spec says so, and replaces itself with the container's
command. A path whose parent does not exist is made on a tmpfs laid over its
nearest existing ancestor, which keeps that ancestor's entries by bind-mounting
them back, so nothing outside the namespace ever sees the pod's paths.

A container whose ``securityContext.readOnlyRootFilesystem`` is true gets what a
runtime gives it: every mount it did not ask for (the machine's root, its tmp
included) remounted read-only in its namespace; its volumes, the termination-message
file and the kernel's ``/proc``, ``/sys`` and ``/dev`` stay as they were.
"""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path


def _mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True, capture_output=True)


def _shadow(directory: Path, scratch: Path) -> None:
    """Lay a writable tmpfs over ``directory`` that still shows everything it held."""
    layer = Path(tempfile.mkdtemp(dir=scratch))
    _mount("-t", "tmpfs", "tmpfs", str(layer))
    for entry in os.scandir(directory):
        target = layer / entry.name
        if entry.is_symlink():
            target.symlink_to(os.readlink(entry.path))
        elif entry.is_dir():
            target.mkdir()
            _mount("--rbind", entry.path, str(target))
        else:
            target.touch()
            _mount("--bind", entry.path, str(target))
    _mount("--move", str(layer), str(directory))


def _make(target: Path, is_file: bool, scratch: Path, shadowed: set[Path]) -> None:
    if target.exists():
        return
    ancestor = target.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if ancestor == Path("/"):
        raise SystemExit(f"stand-in kubelet: cannot make {target}: its top directory is new")
    if ancestor not in shadowed:
        _shadow(ancestor, scratch)
        shadowed.add(ancestor)
    target.parent.mkdir(parents=True, exist_ok=True)
    if is_file:
        target.touch()
    else:
        target.mkdir()


_KERNEL = ("/proc", "/sys", "/dev")


def _read_only_root(volumes: set[str]) -> None:
    """Remount read-only every writable mount of this namespace but the pod's volumes."""
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        target, options = fields[4].replace("\\040", " "), fields[5].split(",")
        if "ro" in options or target in volumes:
            continue
        if any(target == k or target.startswith(k + "/") for k in _KERNEL):
            continue
        if any(target.startswith(v.rstrip("/") + "/") for v in volumes):
            continue
        _remount_read_only(target)


_MS_RDONLY, _MS_REMOUNT, _MS_BIND = 1, 32, 4096


def _remount_read_only(target: str) -> None:
    """``mount -o remount,bind,ro TARGET`` as one system call: a pod's namespace holds
    a mount per entry of each directory its paths were made in, too many to fork for."""
    libc = ctypes.CDLL(None, use_errno=True)
    flags = _MS_REMOUNT | _MS_BIND | _MS_RDONLY
    if libc.mount(None, target.encode(), None, ctypes.c_ulong(flags), None) != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"remount read-only {target}: {os.strerror(error)}")


def main(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    scratch = Path(spec["scratch"])
    shadowed: set[Path] = set()
    for mount in spec["mounts"]:
        source, target = Path(mount["source"]), Path(mount["target"])
        _make(target, source.is_file() or source.is_block_device(), scratch, shadowed)
        _mount("--bind", str(source), str(target))
        if mount.get("read_only"):
            _mount("-o", "remount,bind,ro", str(target))
    if spec.get("read_only_root"):
        _read_only_root({m["target"] for m in spec["mounts"]})
    os.chdir(spec.get("workdir") or "/")
    argv = spec["argv"]
    try:
        os.execvpe(argv[0], argv, spec["env"])  # noqa: S606 - a container's exec, as given
    except OSError as error:
        # what a container runtime reports for a command that is not in the image
        print(f'exec: "{argv[0]}": {error.strerror}', file=sys.stderr)
        raise SystemExit(128) from None


if __name__ == "__main__":
    main(sys.argv[1])
