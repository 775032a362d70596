"""JSON logs: one object per line, with the service and the ids passed in extra."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from ferry.runtime import logs
from ferry.runtime.settings import LogFormat


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    out = io.StringIO()
    yield out
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in saved_handlers:
        root.addHandler(handler)
    root.setLevel(saved_level)


def test_a_record_is_one_json_object_with_its_ids(stream: io.StringIO) -> None:
    # Given JSON logging for the volume-service
    logs.configure("volume-service", "INFO", LogFormat.JSON, stream)

    # When a handler logs with migration, vm and type in extra
    logging.getLogger("ferry.volume").info(
        "copied %d disks",
        2,
        extra={"migration": "m-1", "vm": "web01", "type": "volume.copy_disks.v1"},
    )

    # Then one line holds one object with every field
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    entry = json.loads(lines[0])
    assert entry["message"] == "copied 2 disks"
    assert entry["level"] == "INFO"
    assert entry["logger"] == "ferry.volume"
    assert entry["service"] == "volume-service"
    assert entry["migration"] == "m-1"
    assert entry["vm"] == "web01"
    assert entry["type"] == "volume.copy_disks.v1"
    assert entry["time"].endswith("+00:00")


def test_ids_are_left_out_when_absent(stream: io.StringIO) -> None:
    # Given JSON logging
    logs.configure("vm-service", "INFO", LogFormat.JSON, stream)

    # When something logs without ids
    logging.getLogger("ferry.runtime").warning("no ids here")

    # Then the object has no id keys
    entry = json.loads(stream.getvalue())
    assert "migration" not in entry
    assert "vm" not in entry


def test_exceptions_stay_on_one_line(stream: io.StringIO) -> None:
    # Given JSON logging
    logs.configure("conversion-service", "INFO", LogFormat.JSON, stream)

    # When an exception is logged
    try:
        raise ValueError("disk 2 is missing")
    except ValueError:
        logging.getLogger("ferry.conversion").exception("conversion failed", extra={"vm": "db1"})

    # Then it is still one line, the traceback inside the object
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    entry = json.loads(lines[0])
    assert "ValueError: disk 2 is missing" in entry["exception"]
    assert entry["vm"] == "db1"


def test_level_filters_and_configure_twice_does_not_double(stream: io.StringIO) -> None:
    # Given logging configured twice at WARNING
    logs.configure("migration-controller", "WARNING", LogFormat.JSON, stream)
    logs.configure("migration-controller", "WARNING", LogFormat.JSON, stream)

    # When an INFO and a WARNING are logged
    logging.getLogger("x").info("hidden")
    logging.getLogger("x").warning("shown")

    # Then only the warning appears, once
    lines = stream.getvalue().splitlines()
    assert [json.loads(line)["message"] for line in lines] == ["shown"]


def test_text_format_shows_ids(stream: io.StringIO) -> None:
    # Given text logging
    logs.configure("vm-service", "INFO", LogFormat.TEXT, stream)

    # When a record with ids is logged
    logging.getLogger("ferry.vm").info("created", extra={"migration": "m", "vm": "v"})

    # Then the line is prose with the ids appended
    line = stream.getvalue().strip()
    assert "created" in line
    assert line.endswith("[migration=m vm=v]")
