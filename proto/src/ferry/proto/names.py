"""Kubernetes name rules, once: where a name from a user or a source becomes an object
name, a label value or a path component, it is checked (or made) here.

A DNS-1123 label (``[a-z0-9]([-a-z0-9]*[a-z0-9])?``, at most 63 characters) is what a
namespace and a VirtualMachine name must be; it can never hold ``/``, ``..`` or a
leading dot, so a valid label is also a safe single path component. A DNS-1123
subdomain (labels joined by dots, at most 253) is what most other object names must be.
"""

from __future__ import annotations

import re

_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def is_dns1123_label(name: str) -> bool:
    """A Kubernetes object name usable as a namespace or VirtualMachine name (≤ 63 chars)."""
    return len(name) <= 63 and bool(_LABEL.match(name))


def is_dns1123_subdomain(name: str) -> bool:
    """A Kubernetes object name of the common kind (≤ 253 chars, dots allowed)."""
    return len(name) <= 253 and bool(_SUBDOMAIN.match(name))


def to_dns1123_label(name: str) -> str:
    """The nearest DNS-1123 label for a source VM name (``Web_01.corp`` → ``web-01-corp``)."""
    low = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")
    low = re.sub(r"-{2,}", "-", low)[:63].strip("-")
    return low or "vm"
