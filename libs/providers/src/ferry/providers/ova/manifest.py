"""The package manifest (``.mf``): one digest per file, checked before use.

VMware writes ``SHA256(name)= hex``, VirtualBox ``SHA256 (name) = hex``; older
exports use SHA1. Digests are computed streaming, so a multi-GB disk costs a read,
never its size in memory.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

from ferry.providers.ova import errors
from ferry.providers.ova.package import Archive, Location, Package, open_checked, safe_name

_LINE = re.compile(r"^(?P<algo>[A-Za-z0-9-]+)\s*\((?P<name>[^()]+)\)\s*=\s*(?P<hex>[0-9A-Fa-f]+)$")
_ALGORITHMS = {"SHA1": "sha1", "SHA256": "sha256", "SHA512": "sha512"}
CHUNK = 4 * 1024 * 1024


@dataclass(frozen=True)
class Entry:
    name: str
    algorithm: str  # hashlib name
    digest: str  # lowercase hex


def parse(origin: Path, name: str, text: bytes) -> dict[str, Entry]:
    """The manifest's entries by file name; malformed lines are errors, not skipped."""
    where = f"{origin}[{name}]"
    try:
        lines = text.decode("utf-8").splitlines()
    except UnicodeDecodeError:
        raise errors.ManifestError(where, "not UTF-8 text") from None
    entries: dict[str, Entry] = {}
    for number, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line:
            continue
        match = _LINE.match(line)
        if match is None:
            raise errors.ManifestError(where, f"line {number} is not 'ALGO(name)= hex'")
        algorithm = _ALGORITHMS.get(match["algo"].upper())
        if algorithm is None:
            raise errors.ManifestError(where, f"line {number}: unknown digest {match['algo']!r}")
        digest = match["hex"].lower()
        if len(digest) != hashlib.new(algorithm).digest_size * 2:
            raise errors.ManifestError(where, f"line {number}: digest has the wrong length")
        file_name = safe_name(origin, match["name"].strip())
        if file_name in entries:
            raise errors.ManifestError(where, f"{file_name!r} listed twice")
        entries[file_name] = Entry(file_name, algorithm, digest)
    return entries


def digest_of(location: Location, algorithm: str) -> str:
    """Hex digest of one package file, read in chunks."""
    hasher = hashlib.new(algorithm)
    fd = open_checked(location)
    try:
        done = 0
        while done < location.size:
            chunk = os.pread(fd, min(CHUNK, location.size - done), location.offset + done)
            if not chunk:
                raise errors.TruncatedArchiveError(location.path, f"{location.name} is cut short")
            hasher.update(chunk)
            done += len(chunk)
    finally:
        os.close(fd)
    return hasher.hexdigest()


def verify(package: Package, entry: Entry) -> None:
    """Raise :class:`ManifestMismatchError` naming the file when its digest differs."""
    actual = digest_of(package.locate(entry.name), entry.algorithm)
    if actual != entry.digest:
        raise errors.ManifestMismatchError(
            package.source,
            f"{entry.name}: {entry.algorithm} is {actual}, manifest says {entry.digest}",
        )


def of_package(package: Package) -> dict[str, Entry]:
    """The package's manifest entries by file name ({} without a manifest)."""
    name = package.manifest_name()
    if name is None:
        return {}
    entries = parse(package.source, name, package.read_small(name))
    for entry in entries.values():
        package.locate(entry.name)  # a listed file that is missing is an error
    return entries


def package_notes(package: Package, entries: dict[str, Entry]) -> list[str]:
    """Warnings about the package as a whole, shown with each of its VMs."""
    notes = []
    names = package.names()
    if not entries:
        notes.append("the package has no manifest: its files' digests cannot be checked")
    if any(n.lower().endswith(".cert") for n in names):
        notes.append("the package is signed; Ferry does not check the signature")
    if isinstance(package, Archive) and names and names[0] != package.descriptor:
        notes.append("the descriptor is not the archive's first member")
    return notes
