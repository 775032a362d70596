"""Headless Chromium from the operating system, driven through chromedriver's W3C API.

Only what a test of a page needs: open a URL, find by CSS, read text, click,
type, run a line of script, take a screenshot. Plain HTTP to chromedriver
(urllib), so nothing beyond the Debian packages ``chromium`` and
``chromium-driver`` is needed, and no browser is ever downloaded.
"""

from __future__ import annotations

import base64
import contextlib
import json
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from ferry.runtime.stack import ports

T = TypeVar("T")

ELEMENT = "element-6066-11e4-a52e-4f735466cecf"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--window-size=1400,1000",
]


def available() -> str | None:
    """Why a browser test cannot run here, or None when it can."""
    for tool in ("chromium", "chromedriver"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (make system-deps)"
    return None


class Browser:
    def __init__(self, log: Path) -> None:
        self.profile = Path(tempfile.mkdtemp(prefix="ferry-chromium-"))
        self.port = ports.free_port()
        self._log = log.open("ab")
        self.driver = subprocess.Popen(
            ["chromedriver", f"--port={self.port}"], stdout=self._log, stderr=subprocess.STDOUT
        )
        self.base = f"http://127.0.0.1:{self.port}"
        self._wait_driver()
        caps = {
            "capabilities": {
                "alwaysMatch": {
                    "browserName": "chrome",
                    "goog:chromeOptions": {
                        "binary": shutil.which("chromium"),
                        "args": [*CHROMIUM_ARGS, f"--user-data-dir={self.profile}"],
                    },
                }
            }
        }
        self.session = self._call("POST", "/session", caps)["sessionId"]

    def _wait_driver(self, within: float = 20.0) -> None:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                urllib.request.urlopen(f"{self.base}/status", timeout=1).close()  # noqa: S310
                return
            time.sleep(0.1)
        raise RuntimeError("chromedriver did not start")

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(  # noqa: S310 - always our chromedriver's http URL
            self.base + path, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310
                return json.loads(response.read())["value"]
        except urllib.error.HTTPError as bad:
            raise RuntimeError(f"webdriver {method} {path}: {bad.read().decode()[:500]}") from None

    def _s(self, path: str) -> str:
        return f"/session/{self.session}{path}"

    def open(self, url: str) -> None:
        self._call("POST", self._s("/url"), {"url": url})

    def script(self, body: str, *args: Any) -> Any:
        return self._call("POST", self._s("/execute/sync"), {"script": body, "args": list(args)})

    def text(self, css: str) -> str:
        found = self.script(
            "const e = document.querySelector(arguments[0]); return e ? e.textContent : null;", css
        )
        return "" if found is None else str(found)

    def click(self, css: str) -> None:
        element = self._call("POST", self._s("/element"), {"using": "css selector", "value": css})
        self._call("POST", self._s(f"/element/{element[ELEMENT]}/click"), {})

    def type(self, css: str, text: str) -> None:
        element = self._call("POST", self._s("/element"), {"using": "css selector", "value": css})
        self._call("POST", self._s(f"/element/{element[ELEMENT]}/value"), {"text": text})

    def screenshot(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(self._call("GET", self._s("/screenshot"))))
        return path

    def until(self, check: Callable[[], T], within: float = 20.0, what: str = "") -> T:
        deadline = time.monotonic() + within
        while True:
            value = check()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"page never showed {what or 'it'}")
            time.sleep(0.1)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._call("DELETE", self._s(""))
        self.driver.terminate()
        try:
            self.driver.wait(10)
        except subprocess.TimeoutExpired:
            self.driver.kill()
            self.driver.wait()
        self._log.close()
        shutil.rmtree(self.profile, ignore_errors=True)
