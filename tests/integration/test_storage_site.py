"""Storage policies on the demo site, end to end: the example site's monitors (noisy, as real
ones are) polled by a real gateway, its outbox and uplink, a real Mosquitto, and the reference
receiver as the platform. The receiver reconstructs every point from what it was sent and the
metadata's policies; every reading the gateway polled is within its band of that, and the
readings around an injected alarm all arrived, at full rate, marked as such.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from gpiozero.pins.mock import MockFactory

from drivers.types import DeviceStatus, Reading
from edge.gateway import Gateway
from hil.receiver import Receiver, receive
from hil.simulator import Simulator
from tests.fixtures.broker import Mosquitto
from tests.integration.site import load, site_for

pytestmark = pytest.mark.integration

GW = "gw-demo-0001"
PRE, POST = 2.0, 3.0


async def until(condition: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"timed out after {seconds} s waiting for {what}")
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def platform(receiver: Receiver, url: str) -> AsyncIterator[None]:
    stop, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(
        receive(receiver, url, "district/v1", stop=stop, client_id="platform", ready=ready)
    )
    try:
        await asyncio.wait_for(ready.wait(), 10)
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


def holding(gateway: Gateway) -> bool:
    """Whether a swinging door of the gateway still holds a reading it has not stored."""
    return any(
        point.pending is not None
        for device in gateway.storage._devices.values()
        for point in device.filters.values()
    )


def stored_count(receiver: Receiver) -> int:
    summary = receiver.summary()
    return summary.gateways[GW].readings if GW in summary.gateways else 0


async def test_demo_site_reconstructs_within_the_band_and_keeps_the_alarm_window(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    receiver = Receiver(tmp_path / "rx.sqlite")
    polled: list[Reading] = []
    async with (
        Simulator(
            tcp=("127.0.0.1", 0),
            tcp_devices=[1, 2],
            rtu_link=tmp_path / "rtu",
            rtu_devices=[1],
            noise=0.02,
            seed=7,
        ) as sim,
        platform(receiver, mosquitto.url),
    ):
        site = site_for(sim, tmp_path, broker_url=mosquitto.url, poll_interval="200ms")
        site["storage"] = {"alarm_window": {"pre": f"{PRE:g}s", "post": f"{POST:g}s"}}
        gateway = Gateway(load(site), pin_factory=MockFactory())
        judged = gateway.on_sample

        def recording(sample: Reading | DeviceStatus) -> None:
            if isinstance(sample, Reading):
                polled.append(sample)
            judged(sample)

        gateway.on_sample = recording  # type: ignore[method-assign]
        stop = asyncio.Event()
        task = asyncio.create_task(gateway.run(stop))
        try:
            await until(lambda: len(polled) > 14 * 3 * 15, 30, "three seconds of polls")
            sim.set("tcp", 1, "residual_current", 350.0)
            await until(lambda: bool(gateway.alarms.alarms), 10, "the alarm")
            raised = max(r.ts for r in polled if r.device_id == "efm-shop-101")
            await until(
                lambda: max(r.ts for r in polled) > raised + POST + 1, 30, "the post window"
            )
            # The monitors fall silent: going offline, each hands over the readings its
            # swinging doors still held, and everything stored reaches the platform.
            for bus, unit in (("tcp", 1), ("tcp", 2), ("rtu", 1)):
                sim.set_silent(bus, unit, True)
            await until(lambda: not holding(gateway), 30, "the held readings")
            await until(
                lambda: stored_count(receiver) >= gateway.storage.stored, 20, "every reading"
            )
        finally:
            stop.set()
            await asyncio.wait_for(task, 15)
        kept = gateway.storage.stored

    assert gateway.storage.polled == len(polled)
    assert stored_count(receiver) == kept
    assert kept < len(polled) / 2, "the policies kept most readings off the card and the link"

    verdict = receiver.check_reconstruction(
        GW, [(r.device_id, r.point, r.ts, r.value) for r in polled]
    )
    assert verdict.checked == len(polled)
    assert verdict.missing == 0
    assert verdict.worst <= 1.0, verdict

    # Every reading of the alarm's device from PRE before to POST after the alarm arrived.
    rows = receiver._db.execute(
        "SELECT point, ts, window FROM readings WHERE device = 'efm-shop-101'"
    ).fetchall()
    arrived = {(point, ts) for point, ts, _ in rows}
    marks = {window for _, _, window in rows}
    from edge.contract import iso_utc  # noqa: PLC0415

    window = [
        r for r in polled if r.device_id == "efm-shop-101" and raised - PRE <= r.ts <= raised + POST
    ]
    assert len(window) > 14 * (PRE + POST) / 0.2 * 0.8  # about one poll every 200 ms
    missing = [r for r in window if (r.point, iso_utc(r.ts)) not in arrived]
    assert not missing, f"{len(missing)} readings of the window did not arrive"
    assert marks >= {"pre", "post", None}
