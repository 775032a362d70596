"""The chart's CustomResourceDefinitions, generated from the models that validate them locally.

``python -m ferry.platform.crdgen [--check] [OUT_DIR]`` writes one YAML file per
CRD under ``OUT_DIR`` (default: ``charts/ferry/crds`` of the checkout); with
``--check`` it writes nothing and exits non-zero when the checked-in files differ.

Why generated: a Plan applied to a cluster must be refused for the same reasons
``ferry apply`` refuses it locally, so the CRDs' OpenAPI schemas come from the
pydantic models of :mod:`ferry.proto.objects` rather than being written twice.
Kubernetes wants a *structural* schema (apiextensions.k8s.io/v1): no ``$ref``, a
``type`` on every node, ``nullable`` instead of a ``null`` branch, no ``const``,
and only the keywords ``JSONSchemaProps`` knows. :func:`structural` turns
pydantic's JSON Schema into that, failing loudly on anything it cannot say, so a
model change that a CRD cannot express breaks ``make test`` rather than a cluster.
``metadata`` is left to the API server (a CRD may not constrain it beyond name);
``status`` is a subresource, written by the controller only.

Ferry's populator CRD (:data:`ferry.platform.kubernetes.objects.POPULATOR_CRD`) is
written beside them: it is the same object the platform validates its CRs against.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

from ferry.platform.kubernetes.objects import POPULATOR_CRD
from ferry.proto import generated, objects

GROUP = "ferry.dev"
VERSION = "v1alpha1"
DEFAULT_OUT = Path(__file__).resolve().parents[5] / "charts" / "ferry" / "crds"

# JSONSchemaProps fields (apiextensions.k8s.io/v1) that pydantic's schemas use.
_KEPT = {
    "type",
    "format",
    "description",
    "enum",
    "default",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "minLength",
    "maxLength",
    "pattern",
    "minItems",
    "maxItems",
    "required",
    "items",
    "properties",
    "additionalProperties",
    "nullable",
}
_DROPPED = {"title", "discriminator"}  # documentation pydantic adds; nothing to validate


class NotStructural(ValueError):
    """A model says something a structural CRD schema cannot."""


def _resolve(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    ref = node.get("$ref")
    if ref is None:
        return node
    target = dict(defs[ref.rsplit("/", 1)[-1]])
    rest = {k: v for k, v in node.items() if k != "$ref"}
    return {**target, **rest}


def structural(node: dict[str, Any], defs: dict[str, Any], where: str = "$") -> dict[str, Any]:
    """Pydantic JSON Schema → a structural OpenAPI v3 schema, with every ``$ref`` inlined."""
    node = _resolve(node, defs)
    variants = node.get("anyOf")
    if variants is not None:
        kept = [v for v in variants if v.get("type") != "null"]
        if len(kept) != 1:
            raise NotStructural(f"{where}: a union of {len(kept)} types")
        rest = {k: v for k, v in node.items() if k != "anyOf"}
        chosen = structural({**_resolve(kept[0], defs), **rest}, defs, where)
        if len(kept) < len(variants):
            chosen["nullable"] = True
        return chosen
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROPPED:
            continue
        if key == "const":
            out["enum"] = [value]
        elif key in ("exclusiveMinimum", "exclusiveMaximum") and not isinstance(value, bool):
            # JSON Schema 2020 gives the bound itself; OpenAPI v3.0 (what a CRD speaks)
            # gives the bound in minimum/maximum and a boolean flag beside it.
            out["minimum" if key == "exclusiveMinimum" else "maximum"] = value
            out[key] = True
        elif key == "properties":
            out[key] = {
                name: structural(sub, defs, f"{where}.{name}") for name, sub in value.items()
            }
        elif key == "items" or (key == "additionalProperties" and isinstance(value, dict)):
            out[key] = structural(value, defs, f"{where}[]")
        elif key in _KEPT:
            out[key] = value
        else:
            raise NotStructural(f"{where}: keyword {key!r} has no place in a CRD schema")
    if "type" not in out:
        if "enum" in out and all(isinstance(v, str) for v in out["enum"]):
            out["type"] = "string"
        else:
            raise NotStructural(f"{where}: no type")
    if out.get("additionalProperties") is False:
        # pydantic forbids unknown fields; a structural schema may not say so beside
        # ``properties``. The API server drops undeclared fields, and refuses them when
        # the client asks for strict field validation (kubectl's default since 1.27).
        del out["additionalProperties"]
    if out.get("default", 0) is None:
        del out["default"]  # "absent" already means None to the model
    return out


def object_crd(cls: type[objects.FerryObjectBase]) -> dict[str, Any]:
    """The CRD of one Ferry kind, its schema from the model."""
    schema = cls.model_json_schema(mode="validation")
    defs = schema.get("$defs", {})
    properties = {
        name: structural(schema["properties"][name], defs, f"{cls.KIND}.{name}")
        for name in ("spec", "status")
    }
    properties["spec"].pop("default", None)
    properties["status"].pop("default", None)
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{cls.PLURAL}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": cls.KIND,
                "listKind": f"{cls.KIND}List",
                "plural": cls.PLURAL,
                "singular": cls.KIND.lower(),
                "categories": ["ferry"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": (cls.__doc__ or cls.KIND).strip().splitlines()[0],
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                **properties,
                            },
                        }
                    },
                }
            ],
        },
    }


def crds() -> list[dict[str, Any]]:
    """Every CRD the chart installs: Ferry's kinds, then its volume populator."""
    return [object_crd(cls) for cls in objects.KINDS.values()] + [POPULATOR_CRD]


def file_name(crd: dict[str, Any]) -> str:
    return f"{crd['metadata']['name']}.yaml"


class _Dumper(yaml.SafeDumper):
    """Writes a shared sub-schema out in full each time: a CRD file is read by people."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def render() -> dict[str, str]:
    header = "# Generated by `make crds` (ferry.platform.crdgen); edit the models, not this file.\n"
    return {
        file_name(crd): header
        + yaml.dump(crd, Dumper=_Dumper, sort_keys=False, default_flow_style=False)
        for crd in crds()
    }


def main(argv: list[str] | None = None) -> int:
    return generated.main(
        argv,
        description=__doc__,
        render=render,
        default_out=DEFAULT_OUT,
        pattern="*.yaml",
        what="CRDs",
        make_target="crds",
    )


if __name__ == "__main__":
    sys.exit(main())
