"""The engine stand-in's answers: documents written by the SDK's own writer, and faults
shaped as the engine sends them (a ``fault`` document with reason and detail)."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from ovirtsdk4 import types, writer

XML = "application/xml"


def xml(obj: Any, root: str | None = None, status: int = 200) -> web.Response:
    return web.Response(text=writer.Writer.write(obj, root=root), status=status, content_type=XML)


def fault(status: int, reason: str, detail: str) -> web.HTTPException:
    body = writer.Writer.write(types.Fault(reason=reason, detail=detail))
    cls = {400: web.HTTPBadRequest, 404: web.HTTPNotFound, 409: web.HTTPConflict}[status]
    return cls(text=body, content_type=XML)


def conflict(detail: str) -> web.HTTPException:
    """A validation the engine failed (its ``CanDoAction``): 409 Operation Failed."""
    return fault(409, "Operation Failed", detail)


def not_found(what: str) -> web.HTTPException:
    return fault(404, "Not Found", f"{what} not found")
