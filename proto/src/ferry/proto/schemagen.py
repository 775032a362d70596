"""Generate JSON Schema per message and an AsyncAPI document from the structs.

``python -m ferry.proto.schemagen [--check] [OUT_DIR]`` writes
``schemas/<type>.json`` and ``asyncapi.json`` under ``OUT_DIR`` (default: the
``proto/`` folder of the checkout). With ``--check`` it writes nothing and exits
non-zero when the files on disk differ from what the structs produce.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import msgspec

from ferry.proto import envelope, generated, registry, subjects
from ferry.proto.base import Message

DEFAULT_OUT = Path(__file__).resolve().parents[3]  # proto/


def message_schema(cls: type[Message]) -> dict[str, Any]:
    (schema,), components = msgspec.json.schema_components([cls], ref_template="#/$defs/{name}")
    out: dict[str, Any] = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"https://ferry.dev/schemas/{cls.type_name()}.json",
        "title": cls.type_name(),
    }
    out.update(schema)
    out["$defs"] = components
    return out


def _subject_pattern(cls: type[Message]) -> str:
    return f"ferry.{cls.kind}.{cls.owner().value}.{cls.short_name()}.{{migration}}.{{vm}}"


def asyncapi() -> dict[str, Any]:
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    for cls in registry.MESSAGES:
        key = cls.type_name().replace(".", "_")
        messages[key] = {
            "name": cls.type_name(),
            "title": cls.__name__,
            "summary": (cls.__doc__ or "").strip().split("\n")[0],
            "contentType": envelope.CONTENT_TYPE,
            "headers": {
                "type": "object",
                "required": ["ce-id", "ce-source", "ce-type", "ce-specversion", "Nats-Msg-Id"],
                "properties": {
                    "ce-id": {"type": "string"},
                    "ce-source": {"type": "string"},
                    "ce-type": {"const": cls.type_name()},
                    "ce-subject": {"type": "string"},
                    "ce-time": {"type": "string", "format": "date-time"},
                    "ce-specversion": {"const": envelope.SPECVERSION},
                    "ce-datacontenttype": {"const": envelope.CONTENT_TYPE},
                    "Nats-Msg-Id": {"type": "string"},
                },
            },
            "payload": {"$ref": f"schemas/{cls.type_name()}.json"},
        }
        channels[key] = {
            "address": _subject_pattern(cls),
            "messages": {key: {"$ref": f"#/components/messages/{key}"}},
            "parameters": {
                "migration": {"description": "migration id (subject token)"},
                "vm": {"description": "source VM id (subject token)"},
            },
        }
        operations[key] = {
            "action": "receive" if cls.kind == "cmd" else "send",
            "channel": {"$ref": f"#/channels/{key}"},
            "summary": f"{cls.owner().value} {'consumes' if cls.kind == 'cmd' else 'emits'} "
            f"{cls.type_name()}",
        }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "Ferry bus",
            "version": "1",
            "description": "Commands (work queues per service) and events (the audit stream, "
            f"stream {subjects.EVENTS_STREAM}) of Ferry, as CloudEvents 1.0 in the NATS "
            "binding's binary mode.",
        },
        "defaultContentType": envelope.CONTENT_TYPE,
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages},
    }


def render() -> dict[str, str]:
    files: dict[str, str] = {}
    for cls in registry.MESSAGES:
        files[f"schemas/{cls.type_name()}.json"] = _dump(message_schema(cls))
    files["asyncapi.json"] = _dump(asyncapi())
    return files


def _dump(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    return generated.main(
        argv,
        description=__doc__,
        render=render,
        default_out=DEFAULT_OUT,
        pattern="schemas/*.json",
        what="schemas",
        make_target="schemas",
    )


if __name__ == "__main__":
    sys.exit(main())
