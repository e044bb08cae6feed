"""An uplink under test: built from a few settings, run for the length of a block."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from buffer import Outbox
from edge import contract
from edge.config.model import Uplink as UplinkConfig
from edge.uplink import Uplink

GATEWAY = "gw-test"
PREFIX = "district/v1"
ALL = contract.fleet_filter(PREFIX)


def make_uplink(outbox: Outbox, *urls: str, **settings: Any) -> Uplink:
    """An uplink to ``urls`` with short test timings; ``settings`` override any of them."""
    config = UplinkConfig.model_validate(
        {
            "brokers": list(urls),
            "batch_interval": "50ms",
            "reconnect_max": "1s",
            "keepalive": "5s",
            **settings,
        }
    )
    return Uplink(config, GATEWAY, outbox, version="0.1.0-test", boot_time=time.time() - 60)


@asynccontextmanager
async def running(uplink: Uplink) -> AsyncIterator[asyncio.Task[None]]:
    """``uplink.run()`` as a task for the block; stopped cleanly after it."""
    task = asyncio.create_task(uplink.run(), name="uplink-under-test")
    try:
        yield task
    finally:
        await uplink.stop()
        await asyncio.wait_for(task, 5)
