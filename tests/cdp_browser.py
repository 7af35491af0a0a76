"""A headless Chromium driven over the Chrome DevTools protocol, for tests that need a real
browser: start it, open a page, evaluate JavaScript in it, take a screenshot, stop it.

It speaks the protocol's JSON messages over the page's websocket with aiohttp (already a
dependency), so no WebDriver (and none of its dependencies) is needed; only Debian's
``chromium``. Every call is bounded in time.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

LAUNCH_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--no-first-run", "--window-size=1280,900",
                "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0")


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


class BrowserError(RuntimeError):
    """The browser did not start, or a protocol call failed or timed out."""


class Chromium:
    """One headless browser with one page (use as a context manager)."""

    def __init__(self, binary: str, timeout_s: float = 30.0):
        self.binary = binary
        self.timeout_s = timeout_s
        self._profile = Path(tempfile.mkdtemp(prefix="chromium-profile-"))
        self._loop = asyncio.new_event_loop()
        self._ids = itertools.count(1)
        self._proc: subprocess.Popen | None = None
        self._session: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None

    # -- life cycle -------------------------------------------------------------------

    def __enter__(self) -> "Chromium":
        self._log = (self._profile.parent / f"{self._profile.name}.log").open("wb")
        self._proc = subprocess.Popen(
            [self.binary, *LAUNCH_FLAGS, f"--user-data-dir={self._profile}", "about:blank"],
            stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        port = self._wait_for_port()
        self._run(self._connect(port))
        for domain in ("Page", "Runtime"):
            self.call(f"{domain}.enable")
        return self

    def _wait_for_port(self) -> int:
        """Chromium writes the port it chose to ``DevToolsActivePort`` in its profile."""
        assert self._proc is not None
        active = self._profile / "DevToolsActivePort"
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline and self._proc.poll() is None:
            try:
                first = active.read_text().splitlines()[0]
                if first.isdigit():
                    return int(first)
            except (OSError, IndexError):
                pass
            time.sleep(0.05)
        log = Path(self._log.name).read_text(errors="replace")[-3000:]
        raise BrowserError(f"chromium did not open its DevTools port:\n{log}")

    async def _connect(self, port: int) -> None:
        self._session = aiohttp.ClientSession()
        async with self._session.get(f"http://127.0.0.1:{port}/json/list",
                                     timeout=aiohttp.ClientTimeout(total=10)) as resp:
            targets = await resp.json(content_type=None)
        page = next(t for t in targets if t.get("type") == "page")
        self._ws = await self._session.ws_connect(page["webSocketDebuggerUrl"],
                                                  max_msg_size=64 << 20)

    def __exit__(self, *exc: object) -> None:
        try:
            if self._session is not None:
                self._run(self._close())
        finally:
            if self._proc is not None and self._proc.poll() is None:
                self._proc.terminate()
                try:
                    self._proc.wait(10)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                    self._proc.wait(5)
            self._loop.close()
            self._log.close()
            Path(self._log.name).unlink(missing_ok=True)
            shutil.rmtree(self._profile, ignore_errors=True)

    async def _close(self) -> None:
        if self._ws is not None:
            await self._ws.close()
        assert self._session is not None
        await self._session.close()

    # -- protocol ---------------------------------------------------------------------

    def _run(self, coro):
        return self._loop.run_until_complete(asyncio.wait_for(coro, self.timeout_s))

    async def _call(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        assert self._ws is not None
        msg_id = next(self._ids)
        await self._ws.send_str(json.dumps({"id": msg_id, "method": method, "params": params}))
        while True:
            msg = await self._ws.receive()
            if msg.type != aiohttp.WSMsgType.TEXT:
                raise BrowserError(f"DevTools connection ended during {method}: {msg.type}")
            data = json.loads(msg.data)
            if data.get("id") == msg_id:
                if "error" in data:
                    raise BrowserError(f"{method}: {data['error']}")
                return data.get("result", {})

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        return self._run(self._call(method, params))

    # -- what tests use ---------------------------------------------------------------

    def open(self, url: str) -> None:
        self.call("Page.navigate", url=url)
        self.wait_for("document.readyState === 'complete'")

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (JSON-able values)."""
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True,
                           awaitPromise=True)
        if "exceptionDetails" in result:
            raise BrowserError(f"{expression!r} threw: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout_s: float | None = None) -> Any:
        """Poll a JavaScript expression until it is truthy; its value."""
        deadline = time.monotonic() + (timeout_s or self.timeout_s)
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() >= deadline:
                raise BrowserError(f"still false after {timeout_s or self.timeout_s:g} s: "
                                   f"{expression}")
            time.sleep(0.1)

    def screenshot(self, path: Path) -> None:
        data = self.call("Page.captureScreenshot", format="png")["data"]
        Path(path).write_bytes(base64.b64decode(data))
