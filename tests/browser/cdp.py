"""A minimal Chrome DevTools Protocol client for one page, over aiohttp's websocket client.

Only what the demo test needs: evaluate JavaScript, wait for a condition, type text into a field
and click an element with real mouse events (so the page's own handlers run as for a person).
"""

from __future__ import annotations

import asyncio
import itertools
import json

import aiohttp


class CDPError(RuntimeError):
    pass


class CDPPage:
    def __init__(self, ws_url: str) -> None:
        self.ws_url = ws_url
        self._ids = itertools.count(1)

    async def __aenter__(self) -> "CDPPage":
        self._session = aiohttp.ClientSession()
        self._ws = await self._session.ws_connect(self.ws_url, max_msg_size=0)
        return self

    async def __aexit__(self, *exc) -> None:
        await self._ws.close()
        await self._session.close()

    async def send(self, method: str, timeout: float = 30.0, **params) -> dict:
        msg_id = next(self._ids)
        await self._ws.send_str(json.dumps({"id": msg_id, "method": method, "params": params}))
        while True:  # events (no "id") and nothing else arrive in between: skip them
            msg = await asyncio.wait_for(self._ws.receive(), timeout)
            if msg.type != aiohttp.WSMsgType.TEXT:
                raise CDPError(f"{method}: websocket closed ({msg.type})")
            data = json.loads(msg.data)
            if data.get("id") == msg_id:
                if "error" in data:
                    raise CDPError(f"{method}: {data['error']}")
                return data["result"]

    async def evaluate(self, expression: str):
        result = await self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise CDPError(f"JavaScript error in {expression!r}: {result['exceptionDetails'].get('exception', {}).get('description')}")
        return result["result"].get("value")

    async def wait_for(self, expression: str, timeout: float = 30.0, interval: float = 0.1):
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            value = await self.evaluate(expression)
            if value:
                return value
            if loop.time() > deadline:
                raise TimeoutError(f"page: {expression!r} still falsy after {timeout} s")
            await asyncio.sleep(interval)

    async def click(self, selector: str) -> None:
        box = await self.evaluate(
            f"(() => {{ const e = document.querySelector({json.dumps(selector)}); if (!e) return null;"
            " e.scrollIntoView({block: 'center'}); const r = e.getBoundingClientRect();"
            " return {x: r.x + r.width / 2, y: r.y + r.height / 2}; })()")
        if box is None:
            raise CDPError(f"no element matches {selector!r}")
        for kind in ("mousePressed", "mouseReleased"):
            await self.send("Input.dispatchMouseEvent", type=kind, x=box["x"], y=box["y"], button="left", clickCount=1)

    async def type_into(self, selector: str, text: str, clear: bool = True) -> None:
        await self.click(selector)
        if clear:
            await self.evaluate(f"document.querySelector({json.dumps(selector)}).value = ''")
        await self.send("Input.insertText", text=text)
