"""Validation of generated Kubernetes objects against the real API schemas.

An object that a cluster would reject is a defect we want to see in a unit
test, not in a customer's cluster. KubeVirt and CDI objects are checked against
their published OpenAPI (swagger 2.0) documents, packaged with this library;
core objects (PersistentVolumeClaim, Pod, …) against the upstream schemas that
the ``kubernetes-validate`` package ships.

Checks are strict: a field the API does not define is an error, because the API
server would silently drop it (a typo in ``runStrategy`` would leave a VM that
never starts).

Where the schemas are: the copies packaged with this library (``apischemas/``),
or ``FERRY_SCHEMAS_DIR`` when an operator points it elsewhere on purpose. Nothing
outside the package is searched, so a clone, a wheel and a container validate
against the same documents; a test keeps the packaged copies identical to the
steering ones. If the directory holds no schema, validation fails loudly rather
than passing unchecked.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped,unused-ignore]
import jsonschema.exceptions  # type: ignore[import-untyped,unused-ignore]

ENV_DIR = "FERRY_SCHEMAS_DIR"
_SWAGGER_GLOB = "*.swagger.json"
_API_PATH = re.compile(r"^/apis/([^/]+)/([^/]+)/")


class SchemasNotFound(FileNotFoundError):
    """No directory of API schemas: validation cannot be done, so it must not pass."""


class SchemaValidationError(ValueError):
    """An object does not match its API schema; ``path`` is the JSON path of the error."""

    def __init__(self, kind: str, path: str, message: str, errors: int = 1) -> None:
        self.kind = kind
        self.path = path
        self.message = message
        self.errors = errors
        more = f" (and {errors - 1} more)" if errors > 1 else ""
        super().__init__(f"{kind} is invalid at {path}: {message}{more}")


PACKAGED_DIR = Path(__file__).resolve().parent / "apischemas"


def schemas_dir() -> Path:
    """The directory that holds ``*.swagger.json``; raises :class:`SchemasNotFound`."""
    configured = os.environ.get(ENV_DIR)
    if configured:
        path = Path(configured)
        if not any(path.glob(_SWAGGER_GLOB)):
            raise SchemasNotFound(f"{ENV_DIR}={configured} holds no {_SWAGGER_GLOB} files")
        return path
    if any(PACKAGED_DIR.glob(_SWAGGER_GLOB)):
        return PACKAGED_DIR
    raise SchemasNotFound(f"no {_SWAGGER_GLOB} packaged in {PACKAGED_DIR}; set {ENV_DIR}")


def _strict(definitions: dict[str, Any]) -> dict[str, Any]:
    """Forbid fields a definition does not declare (the API server would drop them)."""
    strict = copy.deepcopy(definitions)
    for schema in strict.values():
        if "properties" in schema and "additionalProperties" not in schema:
            schema["additionalProperties"] = False
    return strict


@functools.cache
def _documents(directory: Path) -> dict[tuple[str, str], dict[str, Any]]:
    """(group, version) → the swagger document that serves it, read once."""
    served: dict[tuple[str, str], dict[str, Any]] = {}
    for file in sorted(directory.glob(_SWAGGER_GLOB)):
        document = json.loads(file.read_text())
        for api_path in document.get("paths", {}):
            match = _API_PATH.match(api_path)
            if match:
                served.setdefault((match[1], match[2]), document)
    return served


@functools.cache
def _validator(directory: Path, group: str, version: str, kind: str) -> jsonschema.Draft4Validator:
    document = _documents(directory).get((group, version))
    name = f"{version}.{kind}"
    if document is None or name not in document.get("definitions", {}):
        raise SchemasNotFound(f"no schema for {group}/{version} {kind} in {directory}")
    schema = {"$ref": f"#/definitions/{name}", "definitions": _strict(document["definitions"])}
    return jsonschema.Draft4Validator(schema)


def _check_custom(obj: Mapping[str, Any], group: str, version: str, kind: str) -> None:
    validator = _validator(schemas_dir(), group, version, kind)
    errors = list(validator.iter_errors(obj))
    if errors:
        first = jsonschema.exceptions.best_match(errors)
        raise SchemaValidationError(kind, first.json_path, first.message, len(errors))


def _check_core(obj: Mapping[str, Any], kind: str) -> None:
    import kubernetes_validate  # type: ignore[import-untyped,unused-ignore]

    try:
        kubernetes_validate.validate(dict(obj), kubernetes_validate.latest_version(), strict=True)
    except kubernetes_validate.ValidationError as error:
        path = "$" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.path)
        raise SchemaValidationError(kind, path, str(error.message)) from None
    except kubernetes_validate.SchemaNotFoundError as error:
        raise SchemasNotFound(error.message) from None


def validate(obj: Mapping[str, Any]) -> None:
    """Raise :class:`SchemaValidationError` unless ``obj`` matches its API's schema.

    The schema is chosen by ``apiVersion`` and ``kind``: groups served by a
    swagger document in the schemas directory (``kubevirt.io``,
    ``cdi.kubevirt.io``) are checked against it, everything else as a core
    Kubernetes object.
    """
    api_version = obj.get("apiVersion")
    kind = obj.get("kind")
    if not isinstance(api_version, str) or not isinstance(kind, str):
        raise SchemaValidationError(str(kind), "$", "apiVersion and kind must be strings")
    group, _, version = api_version.rpartition("/")
    if group and (group, version) in _documents(schemas_dir()):
        _check_custom(obj, group, version, kind)
    else:
        _check_core(obj, kind)
