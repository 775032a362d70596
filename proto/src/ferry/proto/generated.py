"""Keep generated files in step with their source: write them, or say which drifted.

The JSON Schemas and AsyncAPI document (``ferry.proto.schemagen``) and the chart's
CRDs (``ferry.platform.crdgen``) are checked in and checked by ``make test``; both
compare what their generator renders with what is on disk the same way, here.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Mapping
from pathlib import Path


def sync(files: Mapping[str, str], out: Path, pattern: str, *, check: bool) -> list[str]:
    """Paths (relative to ``out``) that differ from ``files`` or are stale.

    ``files`` maps a relative path to its wanted text; a file matching ``pattern``
    under ``out`` that ``files`` does not name is stale. Unless ``check``, the
    differing files are (re)written and the stale ones removed.
    """
    drift: list[str] = []
    for rel, text in files.items():
        path = out / rel
        if (path.read_text() if path.exists() else None) != text:
            drift.append(rel)
            if not check:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text)
    stale = sorted(
        rel for p in out.glob(pattern) if (rel := p.relative_to(out).as_posix()) not in files
    )
    for rel in stale:
        drift.append(rel)
        if not check:
            (out / rel).unlink()
    return drift


def main(
    argv: list[str] | None,
    *,
    description: str | None,
    render: Callable[[], Mapping[str, str]],
    default_out: Path,
    pattern: str,
    what: str,
    make_target: str,
) -> int:
    """The command line every generator shares: write under ``out``, or with
    ``--check`` exit 1 naming what drifted and the ``make`` target that mends it."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("out", nargs="?", type=Path, default=default_out)
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args(argv)
    out: Path = args.out
    files = render()
    drift = sync(files, out, pattern, check=args.check)
    if args.check and drift:
        print(f"{what} drifted from their source: " + ", ".join(drift), file=sys.stderr)
        print(f"run `make {make_target}` and commit the result", file=sys.stderr)
        return 1
    if not args.check:
        print(f"{len(files)} files checked, {len(drift)} written/removed under {out}")
    return 0
