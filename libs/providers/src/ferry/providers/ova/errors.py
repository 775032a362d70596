"""Why an OVA or OVF package was refused: one class per kind of problem.

OVA files come from outside (a user's upload, an NFS share), so every refusal says
which file and what is wrong with it, and the class tells the caller the kind
without parsing the message.
"""

from __future__ import annotations

from ferry.providers.base import ProviderError


class OvaError(ProviderError):
    """An OVA/OVF package cannot be used; ``path`` is the offending file."""

    def __init__(self, path: object, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = str(path)
        self.problem = problem


class UnsafeMemberError(OvaError):
    """A tar member or file reference could escape the import area (.., absolute, links)."""


class UnsafeMemberTypeError(UnsafeMemberError):
    """A tar member is a symlink, hardlink, device, FIFO or other non-regular file."""


class DuplicateMemberError(OvaError):
    """Two tar members share one name: which one is meant is ambiguous."""


class TooManyMembersError(OvaError):
    """The archive has more members than any real export needs."""


class TruncatedArchiveError(OvaError):
    """The archive ends before its members or its end marker."""


class ArchiveFormatError(OvaError):
    """The file is not an uncompressed tar archive we can index."""


class UnsafeXmlError(OvaError):
    """The descriptor uses DTDs or entities (external entities, expansion bombs)."""


class OvfFormatError(OvaError):
    """The descriptor is not well-formed OVF, or misses what a VM needs."""


class MissingFileError(OvaError):
    """The descriptor or manifest names a file the package does not hold."""


class ManifestError(OvaError):
    """The manifest is malformed or uses an unknown digest."""


class ManifestMismatchError(ManifestError):
    """A file's digest differs from the manifest's."""


class ImageSizeError(OvaError):
    """A size overflows, is negative, or disagrees with the content."""


class DiskFormatError(OvaError):
    """The disk's content is not what the descriptor says, or is unreadable."""


class UnsafeImageError(OvaError):
    """The disk refers to other files: backing file, external data file, outside extents."""


class UnsupportedDiskError(OvaError):
    """A real but unsupported disk layout (encrypted qcow2, split VMDK inside an OVA)."""


class DeploymentOptionError(OvaError):
    """A deployment option was asked for that the descriptor does not offer."""
