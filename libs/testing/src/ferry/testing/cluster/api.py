"""A real HTTP server that speaks the Kubernetes API the way kubernetes-asyncio uses it.

Paths, verbs, ``Status`` errors, label and field selectors, JSON merge patches,
the ``status`` subresource (a stale resourceVersion is a 409 there too), watches
(without a resourceVersion the existing objects first as ``ADDED``; from one, the
changes after it, or 410 Gone once compacted; ``BOOKMARK`` s when allowed; until
``timeoutSeconds``) and ``pods/log`` (with ``follow`` and ``tailLines``). Every
object a client writes is admitted only if it validates against its real schema
(core kinds through ``kubernetes-validate``, KubeVirt and CDI through their
packaged OpenAPI documents, custom resources through their CRD's schema); unknown
fields are refused, where a real server would drop them with a warning — a field
dropped silently is a bug we would rather see here. Immutable specs (PVC, Pod)
are refused as the API server refuses them.

Requests are recorded (method, path, query, body) so a test can see what a client
sent; nothing in the product knows it is talking to this.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import jsonschema  # type: ignore[import-untyped,unused-ignore]
from aiohttp import web

from ferry.platform import schemas
from ferry.testing.cluster.resources import Kind
from ferry.testing.cluster.store import ApiError, Obj, Store, meta

_PATH = re.compile(
    r"^/(?:api/(?P<core>v1)|apis/(?P<group>[^/]+)/(?P<version>[^/]+))"
    r"(?:/namespaces/(?P<ns>[^/]+))?/(?P<plural>[^/]+)(?:/(?P<name>[^/]+))?(?:/(?P<sub>[^/]+))?$"
)

LogSource = Callable[[str, str], Awaitable[tuple[bytes, bool]]]  # (ns, pod) → (bytes, ended)


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: dict[str, str]
    body: Any


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def selector_matches(selector: str, labels: Mapping[str, str]) -> bool:
    """Equality-based and existence label selectors (``a=b,c!=d,e,!f``)."""
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            key, value = term.split("!=", 1)
            if labels.get(key.strip()) == value.strip():
                return False
        elif "=" in term:
            key, value = term.replace("==", "=").split("=", 1)
            if labels.get(key.strip()) != value.strip():
                return False
        elif term.startswith("!"):
            if term[1:] in labels:
                return False
        elif " in " in term or " notin " in term:
            raise ApiError(400, "BadRequest", f"set-based selector not served here: {term}")
        elif term not in labels:
            return False
    return True


def fields_match(selector: str, obj: Obj) -> bool:
    for term in filter(None, selector.split(",")):
        key, _, value = term.replace("==", "=").partition("=")
        if key == "metadata.name":
            have = meta(obj).get("name")
        elif key == "metadata.namespace":
            have = meta(obj).get("namespace")
        elif key == "status.phase":
            have = (obj.get("status") or {}).get("phase")
        elif key == "spec.nodeName":
            have = (obj.get("spec") or {}).get("nodeName")
        else:
            raise ApiError(400, "BadRequest", f'field label not supported: "{key}"')
        if str(have or "") != value:
            return False
    return True


# The API server's request body limit (413 above it), and etcd's for one stored object:
# a write of a larger object fails whole, as "etcdserver: request is too large".
REQUEST_BYTES = 3 * 1024 * 1024
OBJECT_BYTES = 1536 * 1024


def admit(kind: Kind, obj: Obj) -> None:
    """Refuse an object its real API would refuse (422, naming the path; too large: 500)."""
    if len(json.dumps(obj, separators=(",", ":"))) > OBJECT_BYTES:
        raise ApiError(500, "InternalError", "etcdserver: request is too large")
    if kind.schema is not None:
        schema = dict(kind.schema)
        schema["additionalProperties"] = False
        errors = list(jsonschema.Draft4Validator(schema).iter_errors(obj))
        if errors:
            first = jsonschema.exceptions.best_match(errors)
            raise ApiError(
                422, "Invalid", f"{kind.kind} is invalid: {first.json_path}: {first.message}"
            )
        return
    try:
        schemas.validate(obj)
    except schemas.SchemaValidationError as error:
        raise ApiError(422, "Invalid", str(error)) from None


class ApiServer:
    def __init__(self, store: Store, logs: LogSource | None = None) -> None:
        self.store = store
        self.logs = logs
        self.requests: list[Request] = []
        self._watches: set[asyncio.Queue[Any]] = set()
        self.bookmark_seconds = 1.0  # upstream: about a minute; short here, tests are short
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> str:
        app = web.Application(client_max_size=REQUEST_BYTES)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # At stop, watches still open (a service process that died without closing its
        # stream leaves its handler waiting for the next event) are cut after a second,
        # as an API server going away cuts them; aiohttp's default waits a minute.
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- dispatch --------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body: Any = None
        if request.can_read_body:
            raw = await request.read()
            body = json.loads(raw) if raw else None
        self.requests.append(Request(request.method, request.path, dict(request.query), body))
        try:
            match = _PATH.match(request.path)
            if match is None:
                raise ApiError(404, "NotFound", f"no such path {request.path}")
            group = match["group"] or ""
            version = match["core"] or match["version"]
            kind = self.store.kind(group, version, match["plural"])
            namespace = match["ns"] or ""
            name, sub = match["name"] or "", match["sub"] or ""
            across = request.method == "GET" and not name  # a list over every namespace
            if (not kind.namespaced and namespace) or (
                kind.namespaced and not namespace and not across
            ):
                raise ApiError(404, "NotFound", f"{kind.plural} is not served at {request.path}")
            if request.method == "GET" and not name:
                if request.query.get("watch") in ("true", "1"):
                    return await self._watch(request, kind, namespace)
                return web.json_response(self._list(kind, namespace, request.query))
            if request.method == "GET" and sub == "log":
                return await self._log(request, namespace, name)
            return web.json_response(self._write(request.method, kind, namespace, name, sub, body))
        except ApiError as error:
            return web.json_response(error.status(), status=error.code)

    def _list(self, kind: Kind, namespace: str, query: Mapping[str, str]) -> Obj:
        items = [
            obj
            for obj in self.store.list(kind, namespace or None)
            if selector_matches(query.get("labelSelector", ""), meta(obj).get("labels") or {})
            and fields_match(query.get("fieldSelector", ""), obj)
        ]
        return {
            "apiVersion": kind.api_version,
            "kind": f"{kind.kind}List",
            "metadata": {"resourceVersion": str(self.store.revision)},
            "items": items,
        }

    def _write(
        self, method: str, kind: Kind, namespace: str, name: str, sub: str, body: Any
    ) -> Obj:
        if sub and (sub != "status" or not kind.status):
            raise ApiError(404, "NotFound", f"{kind.plural}/{sub} is not served")
        if method == "GET":
            return self.store.require(kind, namespace, name)
        if method == "POST" and not name:
            return self._create(kind, namespace, body)
        if method == "DELETE":
            grace = (body or {}).get("gracePeriodSeconds")
            return self.store.delete(kind, namespace, name, grace)
        if method in ("PATCH", "PUT"):
            there = self.store.require(kind, namespace, name)
            wanted = merge_patch(there, body) if method == "PATCH" else dict(body or {})
            return self._update(kind, there, wanted, sub)
        raise ApiError(405, "MethodNotAllowed", f"{method} is not allowed here")

    def _create(self, kind: Kind, namespace: str, body: Any) -> Obj:
        if not isinstance(body, dict):
            raise ApiError(400, "BadRequest", "the body is not an object")
        if body.get("kind") != kind.kind or body.get("apiVersion") != kind.api_version:
            raise ApiError(
                400, "BadRequest", f"the body is a {body.get('kind')}, not a {kind.kind}"
            )
        sent_ns = meta(body).get("namespace")
        if kind.namespaced and sent_ns and sent_ns != namespace:
            raise ApiError(
                400,
                "BadRequest",
                "the namespace of the provided object does not match the namespace sent on "
                "the request",
            )
        admit(kind, body)
        if kind.namespaced:
            meta(body)["namespace"] = namespace
        if kind.status:
            body.pop("status", None)  # a client cannot set status on create
        return self.store.create(kind, body)

    def _update(self, kind: Kind, there: Obj, wanted: Obj, sub: str) -> Obj:
        if kind.status and sub == "status":
            # Only status changes here; the resourceVersion sent still guards the write (409).
            sent = meta(wanted).get("resourceVersion")
            wanted = {**there, "status": wanted.get("status")}
            wanted["metadata"] = {**there["metadata"], "resourceVersion": sent}
        elif kind.status:
            wanted = {**wanted, "status": there.get("status")}
            if wanted["status"] is None:
                wanted.pop("status")
        for field in ("uid", "creationTimestamp", "namespace", "name"):
            if meta(wanted).get(field) != meta(there).get(field):
                raise ApiError(422, "Invalid", f"metadata.{field}: field is immutable")
        if kind.mutable_spec is not None:
            before, after = there.get("spec") or {}, wanted.get("spec") or {}
            changed = {k for k in {*before, *after} if before.get(k) != after.get(k)}
            if changed - kind.mutable_spec:
                raise ApiError(
                    422,
                    "Invalid",
                    f"{kind.kind} {meta(there)['name']}: spec: Forbidden: field is immutable "
                    f"after creation ({', '.join(sorted(changed - kind.mutable_spec))})",
                )
        admit(kind, wanted)
        return self.store.replace(kind, wanted)

    # -- streams ---------------------------------------------------------------------

    async def _watch(self, request: web.Request, kind: Kind, namespace: str) -> web.StreamResponse:
        """A watch as the API server serves it: from ``resourceVersion`` N, every change
        after N (410 Gone as an ERROR event when N is older than the store keeps); without
        one (or "0"), the current objects as ADDED first; BOOKMARKs (the current revision)
        every ``bookmark_seconds`` when the client allows them."""
        query = request.query
        labels, fields = query.get("labelSelector", ""), query.get("fieldSelector", "")
        seconds = float(query.get("timeoutSeconds", "1800"))
        since = query.get("resourceVersion", "")
        if since not in ("", "0") and not since.isdigit():
            raise ApiError(400, "BadRequest", f"invalid resourceVersion: {since!r}")
        bookmarks = query.get("allowWatchBookmarks") in ("true", "1")
        queue = self.store.subscribe()
        self._watches.add(queue)
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)

        def wanted(obj: Obj) -> bool:
            ns_ok = not namespace or meta(obj).get("namespace") == namespace
            labels_ok = selector_matches(labels, meta(obj).get("labels") or {})
            return ns_ok and labels_ok and fields_match(fields, obj)

        async def send(event: str, obj: Obj) -> None:
            await response.write(json.dumps({"type": event, "object": obj}).encode() + b"\n")

        sent = 0  # the revision of the last change sent (a change is sent once)
        try:
            if since in ("", "0"):
                sent = self.store.revision
                for obj in self.store.list(kind, namespace or None):
                    if wanted(obj):
                        await send("ADDED", obj)
            else:
                sent = int(since)
                try:
                    replay = self.store.since(sent)
                except ApiError as gone:
                    await send("ERROR", gone.status())
                    replay = None
                if replay is None:
                    raise ConnectionResetError  # the watch ends after its ERROR
                for revision, (event, changed, obj) in replay:
                    if changed.key == kind.key and wanted(obj):
                        await send(event, obj)
                    sent = revision
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(seconds):
                    while True:
                        try:
                            async with asyncio.timeout(
                                self.bookmark_seconds if bookmarks else None
                            ):
                                got = await queue.get()
                        except TimeoutError:
                            mark = {"resourceVersion": str(self.store.revision)}
                            await send(
                                "BOOKMARK",
                                {
                                    "kind": kind.kind,
                                    "apiVersion": kind.api_version,
                                    "metadata": mark,
                                },
                            )
                            continue
                        if got is None:  # broken (break_watches): what was in flight is lost
                            raise ConnectionResetError
                        event, changed, obj = got
                        revision = int(meta(obj).get("resourceVersion") or 0)
                        if revision > sent and changed.key == kind.key and wanted(obj):
                            await send(event, obj)
                        sent = max(sent, revision)
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self._watches.discard(queue)
            self.store.unsubscribe(queue)
        with contextlib.suppress(ConnectionResetError):
            await response.write_eof()
        return response

    def break_watches(self) -> None:
        """End every open watch now, dropping the changes it had not sent yet, as a
        connection broken by an API server restart does; clients resume from the last
        resourceVersion they saw."""
        for queue in list(self._watches):
            while not queue.empty():
                queue.get_nowait()
            queue.put_nowait(None)

    async def _log(self, request: web.Request, namespace: str, name: str) -> web.StreamResponse:
        from ferry.testing.cluster.resources import POD

        pod = self.store.require(POD, namespace, name)
        if self.logs is None or not (pod.get("status") or {}).get("containerStatuses"):
            raise ApiError(
                400,
                "BadRequest",
                f'container in pod "{name}" is waiting to start: ContainerCreating',
            )
        follow = request.query.get("follow") in ("true", "1")
        tail = request.query.get("tailLines")
        if tail is not None and not tail.isdigit():
            raise ApiError(400, "BadRequest", f"tailLines: invalid value {tail!r}")
        response = web.StreamResponse(headers={"Content-Type": "text/plain"})
        await response.prepare(request)
        sent = 0
        if tail is not None:  # start that many lines from the end, as the kubelet does
            data, _ended = await self.logs(namespace, name)
            kept = data.splitlines(keepends=True)[-int(tail) :] if int(tail) else []
            sent = len(data) - sum(len(line) for line in kept)
        with contextlib.suppress(ConnectionResetError):  # the reader went away
            while True:
                data, ended = await self.logs(namespace, name)
                if len(data) > sent:
                    await response.write(data[sent:])
                    sent = len(data)
                if ended or not follow:
                    break
                await asyncio.sleep(0.05)
            await response.write_eof()
        return response
