"""The controller's providers: one per Provider, closed when it failed and at stop."""

from __future__ import annotations

from ferry.migration_controller.sources import Sources
from ferry.proto.inventory import ProviderType
from ferry.proto.volume import SourceRef


class Opened:
    def __init__(self, name: str, log: list[str], fail_close: bool = False) -> None:
        self.name, self.log, self.fail_close = name, log, fail_close

    async def close(self) -> None:
        self.log.append(f"close {self.name}")
        if self.fail_close:
            raise RuntimeError("session already gone")


def _ref(name: str) -> SourceRef:
    return SourceRef(provider=name, type=ProviderType.VSPHERE, url="https://vc/sdk")


async def test_a_failed_provider_is_closed_and_opened_anew() -> None:
    # Given a source opened once and used twice
    log: list[str] = []
    count = 0

    async def open_provider(ref: SourceRef) -> Opened:
        nonlocal count
        count += 1
        log.append(f"open {ref.provider}#{count}")
        return Opened(f"{ref.provider}#{count}", log)

    sources = Sources(open_provider)  # type: ignore[arg-type]
    first = await sources.get(_ref("vc"))
    assert await sources.get(_ref("vc")) is first

    # When it is forgotten after a failure, then used again
    await sources.forget("vc")
    again = await sources.get(_ref("vc"))

    # Then the old one was closed and a fresh one opened
    assert again is not first
    assert log == ["open vc#1", "close vc#1", "open vc#2"]


async def test_every_provider_is_closed_at_stop_even_when_one_fails_to() -> None:
    # Given two sources, the first of which fails to close
    log: list[str] = []

    async def open_provider(ref: SourceRef) -> Opened:
        return Opened(ref.provider, log, fail_close=ref.provider == "a")

    sources = Sources(open_provider)  # type: ignore[arg-type]
    await sources.get(_ref("a"))
    await sources.get(_ref("b"))

    # When the controller stops
    await sources.close()
    await sources.close()  # twice is harmless

    # Then both were closed once
    assert log == ["close a", "close b"]


async def test_a_provider_whose_object_changed_is_opened_anew() -> None:
    # Given a source opened from revision 1 of its Provider object
    log: list[str] = []
    revision = {"vc": 1}

    async def open_provider(ref: SourceRef) -> Opened:
        log.append(f"open {ref.provider}@{revision[ref.provider]}")
        return Opened(f"{ref.provider}@{revision[ref.provider]}", log)

    async def version(name: str) -> int:
        return revision[name]

    sources = Sources(open_provider, version=version)  # type: ignore[arg-type]
    first = await sources.get(_ref("vc"))
    assert await sources.get(_ref("vc")) is first

    # When `ferry apply` changes the object (another url: the old one may still answer)
    revision["vc"] = 2
    again = await sources.get(_ref("vc"))

    # Then the next use closes the stale provider and opens the changed one
    assert again is not first
    assert log == ["open vc@1", "close vc@1", "open vc@2"]


async def test_without_a_version_a_changed_url_opens_the_source_anew() -> None:
    opened: list[str] = []

    async def open_provider(ref: SourceRef) -> Opened:
        opened.append(ref.url)
        return Opened(ref.url, [])

    sources = Sources(open_provider)  # type: ignore[arg-type]
    await sources.get(SourceRef(provider="ova", type=ProviderType.OVA, url="/srv/a"))
    await sources.get(SourceRef(provider="ova", type=ProviderType.OVA, url="/srv/a"))
    await sources.get(SourceRef(provider="ova", type=ProviderType.OVA, url="/srv/b"))
    assert opened == ["/srv/a", "/srv/b"]
