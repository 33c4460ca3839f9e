"""The report's page in a real browser: headless Chromium, driven over the DevTools
protocol (a websocket, with aiohttp). The page loads with no request but its own file
(plotly.js is inlined), and hovering a dot of the topic map shows that topic's name.

Needs a ``chromium`` binary (``apt-get install chromium``; ``.ci/run`` installs it);
without one the test is skipped and says why."""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import shutil
import subprocess

import aiohttp
import pytest

from app.read.report import write_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary (apt-get install chromium)")

# Hover the first dot of the map the way a mouse would trigger plotly's hover, then read
# the hover label plotly draws.
HOVER = """
(() => {
  const map = document.getElementById('topic-map');
  Plotly.Fx.hover(map, [{curveNumber: 0, pointNumber: 0}]);
  const label = map.querySelector('.hoverlayer');
  return {hover: label ? label.textContent : null, topic: map.data[0].customdata[0][0]};
})()
"""


class DevTools:
    """A minimal DevTools-protocol client: numbered commands, and the events seen."""

    def __init__(self, socket):
        self.socket = socket
        self.ids = itertools.count(1)
        self.events: list[dict] = []

    async def call(self, method: str, **params) -> dict:
        number = next(self.ids)
        await self.socket.send_json({"id": number, "method": method, "params": params})
        async for message in self.socket:
            data = json.loads(message.data)
            if data.get("id") == number:
                assert "error" not in data, data["error"]
                return data.get("result", {})
            self.events.append(data)
        raise AssertionError("the browser closed the connection")

    async def wait_for(self, method: str, timeout: float = 60.0) -> dict:
        async def wait():
            while True:
                for event in self.events:
                    if event.get("method") == method:
                        return event
                message = await self.socket.receive()
                self.events.append(json.loads(message.data))

        return await asyncio.wait_for(wait(), timeout)


@pytest.mark.results
async def test_the_page_loads_offline_and_a_hover_shows_the_topic(conn, tmp_path):
    page = await write_report(conn, "default", tmp_path / "report")
    browser = subprocess.Popen(
        [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--remote-debugging-port=0", f"--user-data-dir={tmp_path / 'profile'}", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        port = None
        for line in browser.stderr:  # "DevTools listening on ws://127.0.0.1:PORT/devtools/browser/..."
            found = re.search(r"ws://127\.0\.0\.1:(\d+)/", line)
            if found:
                port = int(found.group(1))
                break
        assert port, "Chromium did not start its DevTools server"
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{port}/json/list") as answer:
                target = next(t for t in await answer.json() if t["type"] == "page")
            async with session.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0) as socket:
                tools = DevTools(socket)
                await tools.call("Network.enable")
                await tools.call("Page.enable")
                await tools.call("Page.navigate", url=page.as_uri())
                await tools.wait_for("Page.loadEventFired")
                result = await tools.call("Runtime.evaluate", expression=HOVER, returnByValue=True)
        requests = [e["params"]["request"]["url"] for e in tools.events
                    if e.get("method") == "Network.requestWillBeSent"]
    finally:
        browser.terminate()
        browser.wait(10)
    assert requests and all(url.startswith(("file:", "data:")) for url in requests), requests
    value = result["result"]["value"]
    assert value["hover"] and value["topic"] in value["hover"]
