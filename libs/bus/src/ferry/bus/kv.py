"""Typed views of JetStream key-value buckets, with compare-and-set as the default.

Current state (plans, migrations, per-VM state) is shared by replicas of
different services, so every write that depends on what was read is a
compare-and-set on the entry's revision: the loser gets :class:`Conflict`
(naming bucket, key and both revisions) and re-reads, instead of silently
overwriting the winner. :meth:`KeyValue.mutate` packages that loop.

Values are msgspec Structs encoded as JSON, so the buckets stay readable with
the ``nats`` CLI and by consumers in other languages.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, TypeVar

import msgspec
from nats.js import errors as js_errors
from nats.js.kv import KeyValue as NatsKeyValue

from ferry.bus.errors import Conflict, CorruptEntry, InvalidKey, NotFound

if TYPE_CHECKING:
    from ferry.bus.connection import Bus

T = TypeVar("T")
R = TypeVar("R")

_VALID_KEY = re.compile(r"^[-/_=.a-zA-Z0-9]+$")
_DELETE_OPS = ("DEL", "PURGE")
_MUTATE_ATTEMPTS = 50
_BACKOFF_FIRST = 0.005
_BACKOFF_MAX = 0.5


def backoff(attempt: int) -> float:
    """Seconds to wait after the ``attempt``-th lost compare-and-set (1, 2, …).

    Exponential with full jitter: writers that lost to each other spread out
    instead of re-reading and colliding again in lockstep.
    """
    return random.uniform(0, min(_BACKOFF_MAX, _BACKOFF_FIRST * 2 ** (attempt - 1)))  # noqa: S311 (jitter, not a secret)


@dataclass(frozen=True, slots=True)
class Entry(Generic[T]):
    """A value as stored, with the revision to pass to ``update``."""

    value: T
    revision: int
    key: str = ""


@dataclass(frozen=True, slots=True)
class Deleted:
    """A key was deleted or purged (only from ``watch(include_deletes=True)``)."""

    key: str
    revision: int


def _check_key(bucket: str, key: str) -> None:
    if not _VALID_KEY.match(key) or key.startswith(".") or key.endswith("."):
        raise InvalidKey(bucket, key)


class KeyValue(Generic[T]):
    """One bucket, read and written as values of one msgspec type."""

    def __init__(self, bus: Bus, bucket: str, type_: type[T]) -> None:
        self.bucket = bucket
        self.type = type_
        self._bus = bus
        self._handle: NatsKeyValue | None = None
        self._encoder = msgspec.json.Encoder()
        self._decoder: msgspec.json.Decoder[T] = msgspec.json.Decoder(type_)

    async def _kv(self) -> NatsKeyValue:
        if self._handle is None:
            self._handle = await self._bus.patiently(
                f"opening bucket {self.bucket}", lambda: self._bus.js.key_value(self.bucket)
            )
        return self._handle

    async def _read(self, key: str, call: Callable[[], Awaitable[R]]) -> R:
        """A read, tried again while the bucket's stream cannot answer (a leader being
        elected in a cluster): reading twice is harmless."""
        return await self._bus.patiently(f"reading {self.bucket}/{key}", call)

    async def _write(
        self, key: str, call: Callable[[], Awaitable[R]], *, repeatable: bool = False
    ) -> R:
        """A write, tried again only while it surely did nothing (a compare-and-set
        repeated after a timeout that came after it was applied would lose to itself)."""
        return await self._bus.patiently(
            f"writing {self.bucket}/{key}", call, repeatable=repeatable
        )

    def _decode(self, key: str, revision: int, data: bytes) -> T:
        try:
            return self._decoder.decode(data)
        except (msgspec.ValidationError, msgspec.DecodeError) as err:
            raise CorruptEntry(self.bucket, key, revision, str(err)) from None

    # -- reads ---------------------------------------------------------------

    async def get(self, key: str) -> Entry[T] | None:
        """The current value, or ``None`` when the key is absent or deleted."""
        _check_key(self.bucket, key)
        kv = await self._kv()
        try:
            raw = await self._read(key, lambda: kv.get(key))
        except js_errors.KeyNotFoundError:
            return None
        revision = raw.revision or 0
        return Entry(self._decode(key, revision, raw.value or b""), revision, key)

    async def _current_revision(self, key: str) -> int:
        entry = await self.get(key)
        return 0 if entry is None else entry.revision

    async def keys(self, prefix: str = "") -> list[str]:
        """Keys that exist now and start with ``prefix``, sorted; ``[]`` when none.

        Not nats-py's ``keys()``: it replays the bucket through a watcher and
        stops at the first message that reports nothing pending, which, while
        another key is being written, can come before every key was seen (a
        key is missed, listed twice, or the list is empty; nats-io/nats.py#842, #995).
        The stream's subjects are one snapshot taken by the server instead;
        keys whose latest entry is a delete or purge marker are then dropped.
        (The server lists at most 100,000 subjects in one answer.)
        """
        kv = await self._kv()
        stream_prefix = f"$KV.{self.bucket}."
        # Token-aligned prefixes are filtered by the server; others client-side.
        pattern = ">" if not prefix or not prefix.endswith(".") else f"{prefix}>"
        info = await self._bus.patiently(
            f"listing {self.bucket}",
            lambda: self._bus.js.stream_info(
                f"KV_{self.bucket}", subjects_filter=stream_prefix + pattern
            ),
        )
        candidates = sorted(
            key
            for subject in info.state.subjects or {}
            if (key := subject.removeprefix(stream_prefix)).startswith(prefix)
        )
        found = []
        for key in candidates:
            try:
                await self._read(key, lambda: kv.get(key))  # noqa: B023 - awaited at once
            except js_errors.KeyNotFoundError:  # deleted or purged: only its marker is left
                continue
            found.append(key)
        return found

    # -- writes --------------------------------------------------------------

    async def create(self, key: str, value: T) -> int:
        """Write ``value`` only if the key does not exist; :class:`Conflict` if it does."""
        _check_key(self.bucket, key)
        kv = await self._kv()
        data = self._encoder.encode(value)
        try:
            return await self._write(key, lambda: kv.create(key, data))
        except js_errors.KeyWrongLastSequenceError:
            raise Conflict(self.bucket, key, 0, await self._current_revision(key)) from None

    async def update(self, key: str, value: T, revision: int) -> int:
        """Write ``value`` only if the entry is still at ``revision``."""
        _check_key(self.bucket, key)
        kv = await self._kv()
        data = self._encoder.encode(value)
        try:
            return await self._write(key, lambda: kv.update(key, data, last=revision))
        except js_errors.KeyWrongLastSequenceError:
            raise Conflict(self.bucket, key, revision, await self._current_revision(key)) from None

    async def put(self, key: str, value: T) -> int:
        """Write unconditionally (for values with a single writer)."""
        _check_key(self.bucket, key)
        kv = await self._kv()
        data = self._encoder.encode(value)
        return await self._write(key, lambda: kv.put(key, data), repeatable=True)

    async def delete(self, key: str, revision: int | None = None) -> None:
        """Delete the key; with ``revision``, only if it is still at that revision."""
        _check_key(self.bucket, key)
        kv = await self._kv()
        try:
            await self._write(
                key, lambda: kv.delete(key, last=revision), repeatable=revision is None
            )
        except js_errors.APIError as err:
            if revision is not None and err.err_code in (10071, 10164):
                raise Conflict(
                    self.bucket, key, revision, await self._current_revision(key)
                ) from None
            raise

    async def remove(self, key: str) -> None:
        """Remove the key with its whole history and no delete marker (retention).

        Unlike :meth:`delete`, nothing of the key is left in the bucket; a watcher is
        not told. For state nobody is watching any more (a finished migration's).
        """
        _check_key(self.bucket, key)
        await self._bus.js.purge_stream(f"KV_{self.bucket}", subject=f"$KV.{self.bucket}.{key}")

    async def mutate(self, key: str, fn: Callable[[T], T], create: T | None = None) -> T:
        """Read, apply ``fn``, write back with compare-and-set; retried on conflict.

        ``create`` is the value to start from when the key does not exist
        (without it a missing key raises :class:`NotFound`). ``fn`` must be pure:
        it may run several times, and after each lost compare-and-set the next try
        waits :func:`backoff`. Returns the value that was written (or the current
        value when ``fn`` changed nothing).
        """
        for attempt in range(1, _MUTATE_ATTEMPTS + 1):
            entry = await self.get(key)
            if entry is None:
                if create is None:
                    raise NotFound(self.bucket, key)
                new = fn(create)
                try:
                    await self.create(key, new)
                except Conflict:
                    await asyncio.sleep(backoff(attempt))
                    continue
                return new
            new = fn(entry.value)
            if new == entry.value:
                return new
            try:
                await self.update(key, new, entry.revision)
            except Conflict:
                await asyncio.sleep(backoff(attempt))
                continue
            return new
        raise Conflict(self.bucket, key, -1, await self._current_revision(key))

    # -- watching ------------------------------------------------------------

    async def watch(
        self,
        prefix: str = "",
        *,
        include_deletes: bool = False,
        ready: asyncio.Event | None = None,
    ) -> AsyncIterator[Entry[T] | Deleted]:
        """Current values under ``prefix`` first, then every change, until the caller stops.

        ``ready`` is set once the current values have all been yielded (or there
        were none), so a caller can tell "snapshot loaded" from "live update".
        Deletes are skipped unless ``include_deletes``.
        """
        kv = await self._kv()
        # Token-aligned prefixes are filtered by the server; others client-side.
        pattern = ">" if not prefix or not prefix.endswith(".") else f"{prefix}>"
        watcher = await kv.watch(pattern)
        try:
            while True:
                raw = await watcher.updates(timeout=None)  # type: ignore[no-untyped-call]
                if raw is None:
                    if ready is not None:
                        ready.set()
                    continue
                if isinstance(raw, type(NatsKeyValue.KeyWatcher.STOP_ITER)):
                    return
                if not raw.key.startswith(prefix):
                    continue
                revision = raw.revision or 0
                if raw.operation in _DELETE_OPS:
                    if include_deletes:
                        yield Deleted(raw.key, revision)
                    continue
                yield Entry(self._decode(raw.key, revision, raw.value or b""), revision, raw.key)
        finally:
            with contextlib.suppress(Exception):  # closing may fail; it does not matter
                await watcher.stop()  # type: ignore[no-untyped-call]
