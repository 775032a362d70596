"""Numbers of a descriptor: integers that fit, allocation units, property references.

DSP0004's programmatic units (``byte * 2^30``, ``byte*10^3``, ``byte * 1024``) and
the words exporters write instead (VirtualBox's ``MegaBytes``, ``GB``, ``GiB``)
all mean a factor in bytes; the words are binary, as ovftool and virt-v2v read
them. A capacity may be ``${name}``, a ProductSection property whose value
(for the active deployment configuration) is the number.
"""

from __future__ import annotations

import re

from ferry.providers.ova import errors

MAX_INT = 2**63 - 1
_DIGITS = re.compile(r"^[+-]?\d{1,40}$")
_POWER = re.compile(r"^(\d{1,4})\s*\^\s*(\d{1,3})$")
_REFERENCE = re.compile(r"^\$\{([^{}]{1,200})\}$")
_WORDS: dict[str, int] = {
    "byte": 1,
    "bytes": 1,
    "b": 1,
    **{
        spelling: 2 ** (10 * power)
        for power, names in (
            (1, ("kilobyte", "kilobytes", "kb", "kib", "k")),
            (2, ("megabyte", "megabytes", "mb", "mib", "m")),
            (3, ("gigabyte", "gigabytes", "gb", "gib", "g")),
            (4, ("terabyte", "terabytes", "tb", "tib", "t")),
        )
        for spelling in names
    },
}


def integer(origin: str, what: str, value: str) -> int:
    """A non-negative integer that fits in 63 bits, or :class:`ImageSizeError`."""
    text = value.strip()
    if not _DIGITS.match(text):
        raise errors.ImageSizeError(origin, f"{what} {value!r} is not an integer")
    number = int(text)
    if number < 0:
        raise errors.ImageSizeError(origin, f"{what} {value!r} is negative")
    if number > MAX_INT:
        raise errors.ImageSizeError(origin, f"{what} {value!r} overflows")
    return number


def unit_factor(origin: str, units: str | None) -> int:
    """Bytes per unit for ``byte * 2^30``, ``MegaBytes``, ``byte * 1024`` and friends."""
    if not units or not units.strip():
        return 1
    if len(units) > 100:
        raise errors.OvfFormatError(origin, "allocation units are too long")
    first, *factors = (token.strip() for token in units.split("*"))
    factor = _WORDS.get(first.lower())
    if factor is None:
        raise errors.OvfFormatError(origin, f"unknown allocation units {units!r}")
    for token in factors:
        power = _POWER.match(token)
        if power is not None:
            base, exponent = int(power[1]), int(power[2])
            if base < 2 or exponent > 62:
                raise errors.ImageSizeError(origin, f"allocation units {units!r} overflow")
            factor *= int(base**exponent)
        elif token.isdigit() and len(token) < 20:
            factor *= int(token)
        else:
            raise errors.OvfFormatError(origin, f"unknown allocation units {units!r}")
        if factor > MAX_INT:
            raise errors.ImageSizeError(origin, f"allocation units {units!r} overflow")
    return factor


def scaled(origin: str, what: str, value: str, units: str | None) -> int:
    result = integer(origin, what, value) * unit_factor(origin, units)
    if result > MAX_INT:
        raise errors.ImageSizeError(origin, f"{what} {value} * {units} overflows")
    return result


def resolved(origin: str, what: str, value: str, properties: dict[str, str]) -> str:
    """``value``, or the property it names as ``${name}``."""
    match = _REFERENCE.match(value.strip())
    if match is None:
        return value
    name = match[1].strip()
    if name not in properties:
        raise errors.OvfFormatError(
            origin, f"{what} is {value!r}, a property no ProductSection defines"
        )
    return properties[name]
