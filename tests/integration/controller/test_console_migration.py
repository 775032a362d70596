"""Headless Chromium on the console while the real controller runs a migration.

The services are the harness's test routers (each step completes, or is held
until the test lets it go), the controller is the real one, and the console is
its own process reading the bus. A person starts the plan from the page, watches
the pipeline advance and the bytes grow without a reload, and cancels a VM from
the page; the migration then ends as the page says. The screenshots of the plan
and of the running migration are the README's (kept when FERRY_SCREENSHOTS is set).
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from controller_harness import make_vm
from controller_stack import Stack
from test_cli import OVA, ferry, write_plan

from ferry.testing import browser, console

SCREENSHOTS = os.environ.get("FERRY_SCREENSHOTS")


@pytest.fixture
def page(tmp_path: Path) -> Iterator[browser.Browser]:
    missing = browser.available()
    if missing:
        if os.environ.get("CI"):
            pytest.fail(missing)
        pytest.skip(missing)
    opened = browser.Browser(tmp_path / "chromedriver.log")
    yield opened
    opened.close()


def keep(path: Path) -> None:
    if SCREENSHOTS:
        Path(SCREENSHOTS).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(SCREENSHOTS) / path.name)


async def see(page: browser.Browser, check: object, what: str, within: float = 20.0) -> object:
    return await asyncio.to_thread(page.until, check, within, what)  # type: ignore[arg-type]


@pytest.mark.slow  # 5-20 s (a browser, a console and a controller): out of the fast tier
@pytest.mark.timeout(120)
async def test_a_person_starts_watches_and_cancels_a_migration_in_the_browser(
    stack: Stack, tmp_path: Path, page: browser.Browser
) -> None:
    # Given a plan of two VMs, a's conversion and b's VM creation held by the test
    stack.source("src", [make_vm("id-a", OVA), make_vm("id-b", OVA)])
    assert (await ferry(stack, "apply", "-f", str(write_plan(tmp_path)))).exit_code == 0
    stack.services.script[("id-a", "ConvertGuest")] = "hold"
    stack.services.script[("id-b", "CreateVM")] = "hold"
    stack.run_services()
    stack.run_controller()
    (tmp_path / "console").mkdir()
    shown = await asyncio.to_thread(console.start, stack.url, tmp_path / "console")
    try:
        # And the console open in the browser, live, showing the plan and its estimate
        await asyncio.to_thread(page.open, shown.url)
        await see(page, lambda: page.text("#live") == "live", "the live stream")
        plan = '.plan[data-plan="plan1"]'
        # And the source's inventory as the controller read it, before any migration
        source = '.provider[data-provider="src"]'
        rows = f"{source} tbody tr"
        count = "return document.querySelectorAll(arguments[0]).length;"
        await see(page, lambda: page.script(count, rows) == 2, "src's two VMs")
        assert "read " in page.text(f"{source} .read")
        await see(page, lambda: "Estimate (cold)" in page.text(plan), "the plan's estimate")
        # whose throughput (the pair never migrated) comes from a probe of the source that
        # the page did not wait for: its result replaces "probing the source" in place
        await see(
            page,
            lambda: "probe " in page.text(plan) and "probing the source" not in page.text(plan),
            "the probe's result in the plan's estimate",
        )
        keep(await asyncio.to_thread(page.screenshot, tmp_path / "console-plan.png"))
        await asyncio.to_thread(page.script, "window.notReloaded = true;")

        # When the person gives the token and starts the plan from the page
        await asyncio.to_thread(page.type, "#token", shown.token())
        await asyncio.to_thread(page.click, "#token-form button")
        await see(page, lambda: page.text("#token-state") == "accepted", "the token accepted")
        await asyncio.to_thread(page.click, f"{plan} .start-plan")

        # Then the migration appears and a's pipeline reaches its held conversion, half done
        a, b = '.vm[data-vm$="/id-a"]', '.vm[data-vm$="/id-b"]'
        converting = f'{a} .step.Running[data-step="ConvertGuest"]'
        await see(page, lambda: page.text(converting), "a converting")
        half = await asyncio.to_thread(page.text, f"{a} .bytes")
        done_before = await asyncio.to_thread(
            page.script, "return document.querySelectorAll(arguments[0]).length;",
            f"{a} .step.Completed",
        )  # fmt: skip
        keep(await asyncio.to_thread(page.screenshot, tmp_path / "console-migration-run.png"))
        # When the conversion is let go
        stack.services.released.add(("id-a", "ConvertGuest"))
        # Then the pipeline advances past it, and a's bytes grow to the whole disks
        await see(page, lambda: page.text(f"{a} .status") == "Succeeded", "a succeeded")
        done_after = await asyncio.to_thread(
            page.script, "return document.querySelectorAll(arguments[0]).length;",
            f"{a} .step.Completed",
        )  # fmt: skip
        full = await asyncio.to_thread(page.text, f"{a} .bytes")
        assert done_after > done_before, (done_before, done_after)
        assert half != full and full.split(" / ")[0] == full.split(" / ")[1], (half, full)
        # And a shows the estimate the controller recorded, against what happened
        await see(page, lambda: "%)" in page.text(f"{a} .estimated"), "a's estimate error")
        assert page.text(f"{a} .estimated").startswith("estimated ")

        # When the person cancels b, held in CreateVM, from the page
        await see(page, lambda: page.text(f'{b} .step.Running[data-step="CreateVM"]'), "b held")
        await asyncio.to_thread(page.click, f"{b} .cancel-vm")
        # Then b ends Canceled, the migration too, all shown without a reload
        await see(page, lambda: page.text(f"{b} .status") == "Canceled", "b canceled")
        await see(page, lambda: "Canceled" in page.text(".migration h3 .status"), "ended")
        assert await asyncio.to_thread(page.script, "return window.notReloaded === true;")
        name = (await asyncio.to_thread(page.text, ".migration h3 span")).strip()
        vms = await stack.vms(name)
        assert vms["id-a"]["status"] == "Succeeded" and vms["id-b"]["status"] == "Canceled"
        keep(await asyncio.to_thread(page.screenshot, tmp_path / "console-migration.png"))
    finally:
        shown.stop()
