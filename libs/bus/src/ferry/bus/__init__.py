"""Ferry JetStream bus: topology, publish, router, key-value state.

This is the only package that imports nats-py; everything other packages need
is re-exported here so that they program against Ferry's names, not the
client library's.
"""

from ferry.bus import cancellation, topology
from ferry.bus.cancellation import Cancellation
from ferry.bus.connection import Bus, Published
from ferry.bus.dial import Credentials
from ferry.bus.errors import (
    BusError,
    Canceled,
    Conflict,
    CorruptEntry,
    InvalidKey,
    NotConnected,
    NotFound,
    PermanentError,
    PublishFailed,
    TemporaryError,
    Unavailable,
)
from ferry.bus.kv import Deleted, Entry, KeyValue
from ferry.bus.router import Context, Intake, Observer, Router
from ferry.bus.topology import TopologySettings, declare

__all__ = [
    "Bus",
    "BusError",
    "Canceled",
    "Cancellation",
    "Conflict",
    "Context",
    "CorruptEntry",
    "Credentials",
    "Deleted",
    "Entry",
    "Intake",
    "InvalidKey",
    "KeyValue",
    "NotConnected",
    "NotFound",
    "Observer",
    "PermanentError",
    "PublishFailed",
    "Published",
    "Router",
    "TemporaryError",
    "TopologySettings",
    "Unavailable",
    "cancellation",
    "declare",
    "topology",
]
