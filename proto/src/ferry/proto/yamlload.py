"""YAML as Kubernetes reads it: a key given twice in one mapping is an error.

PyYAML keeps the last of two equal keys without a word, so a document that says
``kind: Budget`` and, lower down, ``kind: Provider`` (two objects whose ``---`` between
them was forgotten) would be read as the Provider alone and the Budget lost. kubectl
refuses such a document ("mapping key already defined"); so does Ferry, naming the
key and where it is given again.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import yaml
from yaml.constructor import ConstructorError


class StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, yaml.Node] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # ``<<: *anchor`` merges; its keys may be overridden
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.setdefault(key, key_node)
            except TypeError:
                continue  # an unhashable key: SafeLoader says so itself
            if first is not key_node:
                raise ConstructorError(
                    "while constructing a mapping",
                    node.start_mark,
                    f"found duplicate key {key!r} (first given on line "
                    f"{first.start_mark.line + 1}); a missing '---' between two objects?",
                    key_node.start_mark,
                )
        return super().construct_mapping(node, deep=deep)


def load_all(text: str) -> Iterator[Any]:
    """Every document of ``text``, as ``yaml.safe_load_all`` reads them, keys once each."""
    return yaml.load_all(text, Loader=StrictLoader)  # a SafeLoader: no arbitrary objects
