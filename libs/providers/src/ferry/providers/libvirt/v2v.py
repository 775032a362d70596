"""virt-v2v's libvirt input: ``-i libvirt -ic URI NAME``, the password in a file.

virt-v2v reads a shut-off domain through the same libvirt URI Ferry uses. The
user name is not secret and travels in the URI (``qemu+ssh://user@host/system``);
the password is written 0600 into the work directory and named with ``-ip``, so it
appears in no argv and no environment.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from ferry.providers.base import V2vInput

PASSWORD_FILE = "libvirt-password"  # noqa: S105 (a file name, not a password)


def with_user(uri: str, username: str) -> str:
    parts = urlsplit(uri)
    if not username or not parts.hostname or parts.username:
        return uri
    netloc = f"{username}@{parts.netloc}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def input_args(uri: str, name: str, workdir: Path, username: str, password: str) -> V2vInput:
    argv = ["-i", "libvirt", "-ic", with_user(uri, username)]
    files: list[str] = []
    if password:
        path = workdir / PASSWORD_FILE
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(password)
        argv += ["-ip", str(path)]
        files.append(str(path))
    return V2vInput(argv=[*argv, name], files=files)
