"""Headless Chromium on the console: a migration's progress shows up live, without a
reload, and a cancel clicked with the token reaches the controller's queue."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

import pytest

from ferry.bus import Bus
from ferry.proto import subjects
from ferry.proto.subjects import Bucket, Service
from ferry.testing import browser, views
from ferry.testing.bus import eventually
from ferry.testing.console import ConsoleProcess

WEB01 = f'.vm[data-vm="{views.MIGRATION}/web01"]'
SCREENSHOTS = os.environ.get("FERRY_SCREENSHOTS")  # set to keep them (the README's images)


@pytest.fixture
def page(tmp_path: Path) -> browser.Browser:
    missing = browser.available()
    if missing:
        if os.environ.get("CI"):
            pytest.fail(missing)
        pytest.skip(missing)
    opened = browser.Browser(tmp_path / "chromedriver.log")
    yield opened  # type: ignore[misc]
    opened.close()


def keep(path: Path) -> None:
    if SCREENSHOTS:
        Path(SCREENSHOTS).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(SCREENSHOTS) / path.name)


@pytest.mark.timeout(90)
async def test_progress_updates_live_and_cancel_with_token_reaches_the_controller(
    nats_url: str, console_process: ConsoleProcess, page: browser.Browser, tmp_path: Path
) -> None:
    async with await Bus.connect(nats_url, name="test") as bus:
        # Given a running migration, and the page open on it
        await views.seed(bus)
        await bus.publish(views.progress("web01", 0))
        await asyncio.to_thread(page.open, console_process.url)
        await asyncio.to_thread(
            page.until, lambda: page.text(f"{WEB01} .bytes") == "0 B / 4.0 GiB", what="web01 at 0"
        )
        await asyncio.to_thread(
            page.until, lambda: page.text("#live") == "live", what="the live stream"
        )
        pipeline = await asyncio.to_thread(page.text, f"{WEB01} .pipeline")
        assert "StorePowerState" in pipeline and "ConvertGuest \u00d72" in pipeline
        # and the plan's estimate of an OVA source has cold figures only, saying why
        heads = await asyncio.to_thread(page.text, ".plan .estimate thead")
        assert "cold downtime" in heads and "warm" not in heads, heads
        assert "OVA sources cannot run warm" in await asyncio.to_thread(
            page.text, ".plan .estimate"
        )
        await asyncio.to_thread(page.script, "window.notReloaded = true;")

        # When the migration makes progress
        for gib in (1, 3):
            await bus.publish(views.progress("web01", gib * views.GIB))
            # Then the page shows it as it happens, in the VM's line and its disk bar
            await asyncio.to_thread(
                page.until,
                lambda gib=gib: page.text(f"{WEB01} .bytes") == f"{gib}.0 GiB / 4.0 GiB",
                what=f"web01 at {gib} GiB",
            )
        bar = await asyncio.to_thread(
            page.script, "return document.querySelector(arguments[0]).value;", f"{WEB01} progress"
        )
        assert bar == 3 * views.GIB
        assert await asyncio.to_thread(page.script, "return window.notReloaded === true;")
        assert "B/s" in await asyncio.to_thread(page.text, f"{WEB01} .rate")
        shot = await asyncio.to_thread(page.screenshot, tmp_path / "console-progress.png")
        keep(shot)

        # When a person clicks cancel without a token, nothing is sent
        await asyncio.to_thread(page.click, f"{WEB01} .cancel-vm")
        await asyncio.to_thread(
            page.until, lambda: "enter the token" in page.text("#notice"), what="the token hint"
        )
        # and a wrong token is refused
        await asyncio.to_thread(page.type, "#token", "wrong-token-wrong-token-wrong")
        await asyncio.to_thread(page.click, "#token-form button")
        await asyncio.to_thread(
            page.until, lambda: page.text("#token-state") == "refused", what="the refusal"
        )
        stream = subjects.command_stream(Service.CONTROLLER)
        assert (await bus.js.stream_info(stream)).state.messages == 0

        # When they enter the token ferry up printed and click cancel on web01
        await asyncio.to_thread(page.type, "#token", console_process.token())
        await asyncio.to_thread(page.click, "#token-form button")
        await asyncio.to_thread(
            page.until, lambda: page.text("#token-state") == "accepted", what="the token"
        )
        await asyncio.to_thread(page.click, f"{WEB01} .cancel-vm")

        # Then the Migration records it and the controller has the command
        async def canceled() -> bool:
            entry = await bus.kv(Bucket.OBJECTS, dict).get(
                subjects.object_key("Migration", views.MIGRATION)
            )
            return entry is not None and entry.value["spec"].get("cancel") == [{"name": "web01"}]

        async def sent() -> bool:
            return (await bus.js.stream_info(stream)).state.messages == 1

        await eventually(canceled, within=10, what="the cancel recorded")
        await eventually(sent, within=10, what="the cancel command")
        assert "requested" in await asyncio.to_thread(page.text, "#notice")
    # and the page never showed the token
    html = await asyncio.to_thread(page.script, "return document.documentElement.outerHTML;")
    assert console_process.token() not in html
