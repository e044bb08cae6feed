"""``edge commission`` beside a running demo site: who may use the page, and the page itself,
walked in the system's headless Chromium on a phone-sized viewport."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

import aiohttp
import aiomqtt
import pytest

from edge.commission.server import outward_address
from edge.contract import decode_payload
from edge.schemas import validate_message
from tests.fixtures.commission_rig import (
    CHROMIUM,
    PHONE,
    CommissionRig,
    browser_missing,
    chromium_args,
    commissioning_site,
)

pytestmark = pytest.mark.integration

DEADLINE = 60.0
#: Set to a folder to keep the walk's screenshots there (docs/commissioning/ for the docs).
SCREENSHOTS_ENV = "EDGE_COMMISSION_SCREENSHOTS"


def base(url: str) -> str:
    return url.split("/?", 1)[0]


async def sign_in(http: aiohttp.ClientSession, url: str) -> tuple[str, str]:
    """Spend the token; returns the session cookie and the CSRF token."""
    async with http.get(url, allow_redirects=False) as response:
        assert response.status == 303, await response.text()
        cookie = SimpleCookie(response.headers["Set-Cookie"])["edge_commission"]
    assert cookie["samesite"] == "Strict"
    assert cookie["httponly"]
    session = cookie.value
    async with http.get(
        f"{base(url)}/api/session", headers={"Cookie": f"edge_commission={session}"}
    ) as response:
        assert response.status == 200
        csrf = (await response.json())["csrf"]
    return session, csrf


async def test_the_token_works_once_and_every_request_is_checked(tmp_path: Path) -> None:
    async with (
        commissioning_site(tmp_path) as (rig, url),
        aiohttp.ClientSession() as http,
    ):
        root = base(url)
        async with http.get(f"{root}/?token=wrong", allow_redirects=False) as response:
            assert response.status == 403
        async with http.get(f"{root}/api/status") as response:
            assert response.status == 401, "no session, no status"
        session, csrf = await sign_in(http, url)
        async with http.get(url, allow_redirects=False) as response:
            assert response.status == 403, "a used token is refused"
            assert "used already" in await response.text()
        cookie = {"Cookie": f"edge_commission={session}"}
        async with http.get(f"{root}/api/status", headers=cookie) as response:
            status = await response.json()
        assert status["ok"], status
        assert {d["id"] for d in status["status"]["devices"]} == {
            "efm-shop-101",
            "efm-restaurant-102",
            "efm-workshop-201",
        }
        # Another host: the default listens on the loopback only, so this machine's own
        # outward address (what another host would reach) is closed.
        outward = outward_address()
        if not outward.startswith("127."):
            with pytest.raises(aiohttp.ClientConnectionError):
                await http.get(f"http://{outward}:{root.rsplit(':', 1)[1]}/")
        # DNS rebinding: a page of another name resolved to this machine.
        evil_host = {**cookie, "Host": f"evil.example:{root.rsplit(':', 1)[1]}"}
        async with http.get(f"{root}/api/status", headers=evil_host) as response:
            assert response.status == 403
        # A cross-site form or fetch: without the CSRF header, or from another origin.
        for headers in (
            cookie,
            {**cookie, "X-CSRF-Token": "guess"},
            {**cookie, "X-CSRF-Token": csrf, "Origin": "http://evil.example"},
        ):
            async with http.post(
                f"{root}/api/selftest", json={"output": "led"}, headers=headers
            ) as response:
                assert response.status == 403, headers
        async with http.post(
            f"{root}/api/answer",
            json={"output": "led", "yes": "maybe"},
            headers={**cookie, "X-CSRF-Token": csrf},
        ) as response:
            assert response.status == 400
        assert not [e for e in rig.log if e.get("msg") == "self-test done"], "nothing was driven"
        # A second edge commission for the same gateway is refused; the first goes on.
        second, first_line = await rig.start_commission()
        assert await asyncio.wait_for(second.wait(), DEADLINE) == 1
        assert second.stderr is not None
        assert "another edge commission is running" in (await second.stderr.read()).decode()
        assert first_line == ""
        async with http.get(f"{root}/api/status", headers=cookie) as response:
            assert (await response.json())["ok"]


async def test_on_every_address_the_url_is_the_outward_one_and_names_are_refused(
    tmp_path: Path,
) -> None:
    """--listen 0.0.0.0:PORT, for a phone on the gateway's network: the printed URL is this
    machine's address; a Host that is a name (DNS rebinding) is still refused."""
    rig = CommissionRig(tmp_path)
    rig.site()
    process = await asyncio.create_subprocess_exec(
        *[sys.executable, "-m", "edge.cli", "commission", "--config", str(tmp_path / "site.yaml")],
        *["--listen", "0.0.0.0:0"],
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        url = (await asyncio.wait_for(process.stdout.readline(), DEADLINE)).decode().strip()
        outward = outward_address()
        assert url.startswith(f"http://{outward}:"), url
        port = base(url).rsplit(":", 1)[1]
        async with aiohttp.ClientSession() as http:
            async with http.get(
                url, headers={"Host": f"gateway.example:{port}"}, allow_redirects=False
            ) as response:
                assert response.status == 403
            session, _ = await sign_in(http, url)
            assert session
    finally:
        process.terminate()
        assert await asyncio.wait_for(process.wait(), DEADLINE) == 0


async def test_it_stops_by_itself_when_idle(tmp_path: Path) -> None:
    rig = CommissionRig(tmp_path)
    try:
        await rig.start()
        await rig.wait_for_gateway()
        process, url = await rig.start_commission("--idle", "1s")
        assert "token=" in url
        assert await asyncio.wait_for(process.wait(), DEADLINE) == 0
        assert process.stdout is not None
        assert "stopped: no request for 1s" in (await process.stdout.read()).decode()
    finally:
        await rig.stop()


async def test_without_a_gateway_it_says_so(tmp_path: Path) -> None:
    rig = CommissionRig(tmp_path)
    rig.site()  # the site file only: nothing runs
    process, url = await rig.start_commission()
    try:
        async with aiohttp.ClientSession() as http:
            session, _ = await sign_in(http, url)
            async with http.get(
                f"{base(url)}/api/status", headers={"Cookie": f"edge_commission={session}"}
            ) as response:
                status = await response.json()
        assert status["ok"] is False
        assert "no control socket" in status["error"]
    finally:
        process.terminate()
        assert await asyncio.wait_for(process.wait(), DEADLINE) == 0


async def _text(page: Any, selector: str) -> str:
    return str(await page.locator(selector).first.inner_text())


@pytest.mark.skipif(browser_missing() is not None, reason=str(browser_missing()))
async def test_the_page_walked_in_chromium(tmp_path: Path) -> None:
    from playwright.async_api import async_playwright  # noqa: PLC0415

    shots = Path(os.environ.get(SCREENSHOTS_ENV) or tmp_path / "screenshots")
    await asyncio.to_thread(shots.mkdir, parents=True, exist_ok=True)
    async with commissioning_site(tmp_path) as (rig, url), async_playwright() as driver:
        browser = await driver.chromium.launch(executable_path=str(CHROMIUM), args=chromium_args())
        try:
            page = await browser.new_page(viewport=PHONE, device_scale_factor=1)
            await page.goto(url)
            assert page.url == f"{base(url)}/", "the token is swapped for a session cookie"
            shop = '[data-device="efm-shop-101"]'
            value = f'{shop} .value[data-point="residual_current"]'
            await page.wait_for_selector(value, timeout=DEADLINE * 1000)
            assert await page.locator(".device").count() == 3
            assert await _text(page, f"{shop} .pill") == "online"
            assert await _text(page, value) == "120 mA"
            assert "efm-ref" in await _text(page, f"{shop} .meta")
            assert await _text(page, "#site") == "Guiyuan demo block"
            await page.wait_for_function(
                "() => document.querySelector('#checks').innerText.includes('valid')",
                timeout=DEADLINE * 1000,
            )
            await page.screenshot(path=shots / "devices.png")

            # Live: the monitor's value changes in the simulator, then on the page.
            await rig.set("residual_current", 135)
            await page.wait_for_function(
                f"() => document.querySelector('{value}').innerText === '135 mA'",
                timeout=DEADLINE * 1000,
            )

            # The passive scan: which configured devices answer, by bus and address.
            await page.click("#scan")
            await page.wait_for_selector("#scan-result li", timeout=DEADLINE * 1000)
            scanned = await page.inner_text("#scan-result")
            assert "lan / 1: efm-shop-101 answers" in scanned
            assert "rs485-1 / 1: efm-workshop-201 answers" in scanned
            # The idle bus is swept, every address; the simulator answers at 1 and 2.
            await page.click('[data-sweep="spare"]')
            await page.wait_for_selector("#scan-result .sweep", timeout=DEADLINE * 1000)
            swept = await _text(page, "#scan-result .sweep")
            assert swept.startswith("spare: answer at 1 (efm-ref), 2 (efm-ref) ("), swept

            # The guided self-test: each output driven on the gateway, then the answer.
            for output, answer in (("buzzer", "yes"), ("led", "no")):
                step = page.locator(f'.step[data-output="{output}"]')
                await step.locator(".run").click()
                await page.wait_for_function(
                    f"""() => !document.querySelector('.step[data-output="{output}"] .run')
                        .disabled""",
                    timeout=DEADLINE * 1000,
                )
                await step.locator(f".{answer}").click()
                await page.wait_for_function(
                    f"""() => document.querySelector('.step[data-output="{output}"] .answer')
                        .innerText.includes('{answer}')""",
                    timeout=DEADLINE * 1000,
                )
            exercised = [e.get("exercised") for e in rig.log if e.get("msg") == "self-test done"]
            assert exercised == ["buzzer continuous,buzzer pulsed,buzzer chirp", "led"], exercised
            # The demo site has no relay: its step cannot be run nor answered.
            assert await page.locator('.step[data-output="relay"] .run').is_disabled()
            assert await page.locator('.step[data-output="relay"] .ask').is_hidden()
            await page.locator("#steps").scroll_into_view_if_needed()
            await page.screenshot(path=shots / "selftest.png")

            # The record: sent to the platform as a commissioned event.
            async with aiomqtt.Client("127.0.0.1", rig.broker.port) as platform:
                await platform.subscribe("district/v1/gw-demo-0001/events", qos=1)
                await page.fill("#by", "Li Wei")
                await page.click("#record-form button[type=submit]")
                await page.wait_for_function(
                    "() => document.querySelector('#record-result').innerText.includes('sent')",
                    timeout=DEADLINE * 1000,
                )
                event = await asyncio.wait_for(_commissioned(platform), DEADLINE)
            assert validate_message(event) == "event", "the contract's event schema takes it"
            assert event["by"] == "Li Wei"
            assert event["gateway"] == "gw-demo-0001"
            assert event["selftest"] == {
                "buzzer": {"heard": True},
                "led": {"seen": False},
                "relay": {"seen": None},
            }
            devices = {d["id"]: d for d in event["devices"]}
            first = devices["efm-shop-101"]["first_readings"]["residual_current"]
            assert (first["value"], first["unit"]) == (120.0, "mA")
            assert devices["efm-workshop-201"]["address"] == 1
            assert event["checks"]["valid"] is True

            # The printable record: one QR label for the gateway and one per device.
            await page.goto(f"{base(url)}/record")
            assert await page.locator(".label svg").count() == 4
            assert "Li Wei" in await page.inner_text("body")
            await page.screenshot(path=shots / "labels.png")
        finally:
            await browser.close()
    for name in ("devices.png", "selftest.png", "labels.png"):
        assert (shots / name).stat().st_size > 1000


async def _commissioned(platform: aiomqtt.Client) -> dict[str, Any]:
    async for message in platform.messages:
        event = decode_payload(bytes(message.payload))
        if event.get("kind") == "commissioned":
            return event
    raise AssertionError("the subscription ended")


def test_the_browser_is_found_where_ci_installs_it() -> None:
    """.ci/run installs Debian's chromium; the browser tests skip, with this reason, without it."""
    reason = browser_missing()
    if shutil.which("chromium") is None:
        assert reason is not None
        assert "apt-get install chromium" in reason
    else:
        assert reason is None or "playwright" in reason
    assert json.dumps(PHONE)
