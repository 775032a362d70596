"""Keep generated files in step with their source: write them, or say which drifted.

The JSON Schemas and AsyncAPI document (``ferry.proto.schemagen``) and the chart's
CRDs (``ferry.platform.crdgen``) are checked in and checked by ``make test``; both
compare what their generator renders with what is on disk the same way, here.
"""

from __future__ import annotations

from collections.abc import Mapping
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
