"""The gateway hands the outbox what the storage policies keep: every reading is judged, the
flat ones are not stored, and an alarm brings the full-rate window around it (from memory
before, live after), marked on each reading."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from gpiozero.pins.mock import MockFactory

from buffer import Outbox
from drivers import DeviceStatus, Reading
from edge.config import SiteConfig
from edge.gateway import Gateway

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "example-site.yaml"
T = 1_767_225_600.0


def site(tmp_path: Path) -> SiteConfig:
    data = yaml.safe_load(EXAMPLE.read_text())
    data["buffer"]["path"] = str(tmp_path / "outbox.sqlite")
    data["storage"] = {"alarm_window": {"pre": "10s", "post": "20s"}}
    return SiteConfig.model_validate(data)


def leak(t: float, value: float) -> Reading:
    return Reading("efm-shop-101", "residual_current", value, "mA", T + t, time.monotonic())


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[tuple[Gateway, list[dict[str, Any]]]]:
    """A gateway on a real outbox; what it submits is noted."""
    gateway = Gateway(site(tmp_path), pin_factory=MockFactory())
    outbox = await Outbox.open(tmp_path / "outbox.sqlite")
    seen: list[dict[str, Any]] = []
    submit = outbox.submit

    def spy(stream: Any, body: Mapping[str, Any], *, at_once: bool = False) -> None:
        if stream == "telemetry":
            seen.append({**body, "at_once": at_once})
        submit(stream, body, at_once=at_once)

    outbox.submit = spy  # type: ignore[method-assign]
    gateway.outbox = outbox
    yield gateway, seen
    await outbox.close()
    gateway.annunciator.close()


async def test_flat_readings_are_judged_but_not_stored(
    gateway: tuple[Gateway, list[dict[str, Any]]],
) -> None:
    gw, seen = gateway
    for t in range(100):
        gw.on_sample(leak(t, 120.0 + (t % 3)))
    assert [r["ts"] - T for r in seen] == [0]  # the first; the rest within 5 mA of the line
    assert gw.storage.polled == 100


async def test_an_alarm_stores_its_window_at_full_rate_marked(
    gateway: tuple[Gateway, list[dict[str, Any]]],
) -> None:
    gw, seen = gateway
    for t in range(50):
        gw.on_sample(leak(t, 120.0))
    gw.on_sample(leak(50, 350.0))  # over the example site's 300 mA
    assert gw.annunciator.sounding
    for t in range(51, 100):
        gw.on_sample(leak(t, 350.0))
    kept = {round(r["ts"] - T): r.get("window") for r in seen}
    assert set(range(40, 71)) <= set(kept), "every poll from 10 s before to 20 s after"
    assert {kept[t] for t in range(40, 49)} == {"pre"}
    # 49 closed the swinging door's line when 50 jumped; 50 was held when the alarm came:
    # both are points of the policy's line.
    assert kept[49] is None
    assert kept[50] is None
    assert {kept[t] for t in range(51, 71)} == {"post"}
    assert not set(range(72, 100)) & set(kept), "after the window the band rules again"
    # The window's readings are durable at once; the band's wait for the commit window.
    assert {r.get("window") is not None for r in seen if r["at_once"]} == {True}
    assert {r["at_once"] for r in seen if r.get("window")} == {True}


async def test_going_offline_stores_the_reading_a_swinging_door_held(
    gateway: tuple[Gateway, list[dict[str, Any]]],
) -> None:
    gw, seen = gateway
    for t in range(5):
        gw.on_sample(leak(t, 120.0 + t))  # a straight rise: one line, the last one held
    assert [r["ts"] - T for r in seen] == [0]
    gw.on_sample(DeviceStatus("efm-shop-101", online=False, ts=T + 10, reason="timeout"))
    assert [r["ts"] - T for r in seen] == [0, 4]


async def test_storage_policy_all_stores_every_reading(tmp_path: Path) -> None:
    config = site(tmp_path)
    config = config.model_copy(
        update={"storage": config.storage.model_copy(update={"policy": "all"})}
    )
    gw = Gateway(config, pin_factory=MockFactory())
    try:
        kept = [gw.storage.offer(leak(t, 120.0)) for t in range(10)]
    finally:
        gw.annunciator.close()
    assert all(len(k) == 1 for k in kept)
