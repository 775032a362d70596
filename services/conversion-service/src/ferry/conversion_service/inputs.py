"""The provider's side of a full conversion's command: its files and captive helpers.

A provider's :class:`~ferry.providers.base.V2vInput` names files it wrote into the
run's work directory (a cookie, a CA, the domain document) and helpers that must run
around virt-v2v (an ``nbdkit`` per disk). The workload may run elsewhere (a pod), so
the files reach it as secret files and every path is pointed at where it sees them.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from pathlib import Path

from ferry.providers.base import V2vInput


class InputError(Exception):
    """The provider's input cannot be used as it is (a file outside the work directory)."""


def secure(files: Sequence[str], workdir: Path) -> None:
    """The provider's files: inside the run directory and readable by us only."""
    for name in files:
        path = Path(name)
        if not path.resolve().is_relative_to(workdir.resolve()):
            raise InputError(f"provider wrote {path} outside the run's work directory")
        if path.exists():
            path.chmod(0o600)


def provider_files(
    given: V2vInput, workdir: Path, secret_dir: str, workload_dir: str = ""
) -> tuple[list[str], dict[str, bytes], list[list[str]]]:
    """The provider's files as secret files of the workload, and its argv (and its captive
    helpers' argvs) pointed at them.

    A workload may run elsewhere (a pod): what the provider wrote in this host's work
    directory reaches it only as files mounted at ``secret_dir``, and the paths the
    workload makes itself (``V2vInput.workload_paths``: a helper's socket) are where it
    sees the work directory, ``workload_dir``, in the argvs and the files; every other
    path stays as it is (an OVA's staged disks reach a pod at the same path, by a share).
    """
    files: dict[str, bytes] = {}
    argv = list(given.argv)
    captive = [list(helper) for helper in given.captive]
    for name in given.files:
        path = Path(name)
        if not path.is_file():
            continue
        key = path.resolve().relative_to(workdir.resolve()).as_posix().replace("/", "_")
        files[key] = path.read_bytes()
        seen = f"{secret_dir}/{key}"

        def point(args: list[str], path: Path = path, seen: str = seen) -> list[str]:
            return [
                seen
                if arg == str(path)
                else arg.replace(f"={path}", f"={seen}").replace(f"=+{path}", f"=+{seen}")
                for arg in args
            ]

        argv = point(argv)
        captive = [point(helper) for helper in captive]
    if workload_dir and workload_dir.rstrip("/") != str(workdir):
        # Only the paths the workload makes itself: the rest of the work directory (an
        # OVA's staged disks) reaches a pod at the same path, through a share.
        for made in given.workload_paths:
            inside = Path(made).resolve().relative_to(workdir.resolve()).as_posix()
            there = f"{workload_dir.rstrip('/')}/{inside}"
            argv = [arg.replace(made, there) for arg in argv]
            captive = [[arg.replace(made, there) for arg in helper] for helper in captive]
            files = {k: data.replace(made.encode(), there.encode()) for k, data in files.items()}
    return argv, files, captive


def run_captive(argv: list[str], captive: Sequence[Sequence[str]]) -> list[str]:
    """``argv`` run inside its captive helpers (``nbdkit --run``), the first outermost.

    Each helper serves while the command runs and exits with the command's status; a
    cancel that ends the workload's process group ends them together.
    """
    for helper in reversed(captive):
        argv = [helper[0], "--run", shlex.join(argv), *helper[1:]]
    return argv
