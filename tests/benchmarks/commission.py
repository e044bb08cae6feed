"""The commissioning tools on the demo site: the control socket's answer time, the
``edge commission`` process's memory, and the page's first contentful paint in headless Chromium.

- ``control_socket_status_ms``: median round trip of a ``status`` request (every device with
  its live values) on the running gateway's control socket;
- ``commission_rss_mb``: resident memory of the ``edge commission`` process after the page has
  been served and polled (the daemon's own memory is ``demo_site_rss_mb`` of e2e);
- ``commission_page_ms``: first contentful paint of the page (Chromium's own
  ``first-contentful-paint`` entry), a fresh browser context each time, median. Without
  Chromium the key is left out and the reason printed (it is then not in :data:`KEYS`).
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import psutil

from edge.control import ControlClient
from tests.fixtures.commission_rig import (
    CHROMIUM,
    PHONE,
    browser_missing,
    chromium_args,
    commissioning_site,
)

_NO_BROWSER = browser_missing()
KEYS: tuple[str, ...] = ("control_socket_status_ms", "commission_rss_mb") + (
    ("commission_page_ms",) if _NO_BROWSER is None else ()
)
#: A run of a few seconds that goes through every step (tests/integration/test_benchmarks.py).
TINY = {"requests": 20, "page_loads": 1}


async def _status_ms(socket: Path, requests: int) -> float:
    client = ControlClient(socket)
    await client.connect()
    took: list[float] = []
    try:
        for _ in range(requests):
            began = time.perf_counter()
            await client.request("status")
            took.append((time.perf_counter() - began) * 1000)
    finally:
        await client.close()
    return statistics.median(took)


async def _page_ms(url: str, page_loads: int) -> float:
    from playwright.async_api import async_playwright  # noqa: PLC0415

    paints: list[float] = []
    async with async_playwright() as driver:
        browser = await driver.chromium.launch(executable_path=str(CHROMIUM), args=chromium_args())
        try:
            # The token is spent once; later loads reuse the session cookie, as the phone does.
            context = await browser.new_context(viewport=PHONE)
            page = await context.new_page()
            await page.goto(url)
            signed_in = await context.storage_state()
            await context.close()
            root = url.split("/?", 1)[0] + "/"
            for _ in range(page_loads):
                context = await browser.new_context(viewport=PHONE, storage_state=signed_in)
                page = await context.new_page()
                await page.goto(root)
                await page.wait_for_selector(".device .value")
                paint = await page.evaluate(
                    "() => performance.getEntriesByName('first-contentful-paint')[0].startTime"
                )
                paints.append(float(paint))
                await context.close()
        finally:
            await browser.close()
    return statistics.median(paints)


async def run(requests: int = 500, page_loads: int = 10) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="edge-bench-") as workdir:
        async with commissioning_site(Path(workdir)) as (rig, url):
            figures = {"control_socket_status_ms": round(await _status_ms(rig.socket, requests), 3)}
            if _NO_BROWSER is None:
                figures["commission_page_ms"] = round(await _page_ms(url, page_loads), 1)
            else:
                print(f"commission_page_ms: skipped, {_NO_BROWSER}", flush=True)
                # The page is still served and read once, so the memory figure is comparable.
                await _status_ms(rig.socket, 1)
            assert rig.commission is not None
            rss = psutil.Process(rig.commission.pid).memory_info().rss / 2**20
            figures["commission_rss_mb"] = round(rss, 1)
    for key, value in figures.items():
        print(f"  {key}: {value}", flush=True)
    return figures


if __name__ == "__main__":
    print(asyncio.run(run(**TINY)))
