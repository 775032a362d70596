"""The descriptor's XML, parsed so that no document can do more than describe.

defusedxml with DTDs forbidden: no external entity, no entity expansion, no
network or file access. Every other way a parse can fail (an encoding expat does
not know, a multi-byte encoding, a depth beyond the limit) becomes an
:class:`~ferry.providers.ova.errors.OvaError` of the package, never an exception
that escapes to the caller and hides the other packages.

Exporters disagree on namespaces and on section shapes (oVirt writes
``<Section xsi:type="ovf:DiskSection_Type">``), so elements and attributes are
matched by local name whatever their namespace.
"""

from __future__ import annotations

import xml.etree.ElementTree as StdET
from xml.etree.ElementTree import Element

import defusedxml
import defusedxml.ElementTree as SafeET

from ferry.providers.ova import errors
from ferry.providers.ova.limits import Limits


def parse(origin: str, data: bytes, limits: Limits) -> Element:
    """The root element of ``data``, or the package's rejection in one line."""
    try:
        root: Element = SafeET.fromstring(
            data, forbid_dtd=True, forbid_entities=True, forbid_external=True
        )
    except defusedxml.DefusedXmlException as exc:
        raise errors.UnsafeXmlError(origin, f"refused XML feature: {type(exc).__name__}") from None
    except StdET.ParseError as exc:
        raise errors.OvfFormatError(origin, f"not well-formed XML: {exc}") from None
    except (LookupError, ValueError, UnicodeError) as exc:
        raise errors.OvfFormatError(origin, f"unreadable XML encoding: {exc}") from None
    _check_depth(origin, root, limits.max_element_depth)
    return root


def _check_depth(origin: str, root: Element, limit: int) -> None:
    # Iterative, so a deep document cannot exhaust the interpreter's stack either.
    stack = [(root, 1)]
    while stack:
        element, depth = stack.pop()
        if depth > limit:
            raise errors.OvfFormatError(
                origin, f"XML nested deeper than {limit} elements (setting max_element_depth)"
            )
        stack.extend((child, depth + 1) for child in element)


def local(name: str) -> str:
    return name.rsplit("}", 1)[-1]


def attr(element: Element, name: str) -> str | None:
    for key, value in element.attrib.items():
        if local(key) == name:
            return value
    return None


def children(element: Element, name: str) -> list[Element]:
    return [child for child in element if local(child.tag) == name]


def text(element: Element, name: str) -> str:
    for child in element:
        if local(child.tag) == name:
            return (child.text or "").strip()
    return ""


def is_section(element: Element, kind: str) -> bool:
    """Named section (``DiskSection``) or oVirt's ``Section xsi:type="ovf:DiskSection_Type"``."""
    tag = local(element.tag)
    if tag == kind:
        return True
    xsi = attr(element, "type") or ""
    return tag in ("Section", "Content") and xsi.rsplit(":", 1)[-1] == f"{kind}_Type"


def sections(element: Element, kind: str) -> list[Element]:
    return [child for child in element if is_section(child, kind)]
