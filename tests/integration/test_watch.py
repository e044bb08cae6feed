"""``edge watch`` on the running demo site: one frame, and the live view in a real terminal."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.commission_rig import CommissionRig

pytestmark = pytest.mark.integration

DEADLINE = 60.0
EDGE = [sys.executable, "-m", "edge.cli"]


async def edge(*args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        *EDGE,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), DEADLINE)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_one_frame_names_every_device_value_unit_and_bus(tmp_path: Path) -> None:
    rig = CommissionRig(tmp_path)
    try:
        await rig.start()
        await rig.wait_for_gateway()
        code, out, err = await edge("watch", "--config", str(tmp_path / "site.yaml"), "--once")
        assert code == 0, err
        assert "\x1b[" not in out, "--once prints no escapes"
        for device in ("efm-shop-101", "efm-restaurant-102", "efm-workshop-201"):
            assert device in out
        shop = next(line for line in out.splitlines() if line.startswith("efm-shop-101"))
        assert "online" in shop
        assert any("residual_current" in line and "120 mA" in line for line in out.splitlines()), (
            out
        )
        assert "ALARMS (0)" in out
        assert "lan" in out
        assert "rs485-1" in out
    finally:
        await rig.stop()


async def test_without_a_gateway_it_says_why(tmp_path: Path) -> None:
    code, _, err = await edge("watch", "--socket", str(tmp_path / "control.sock"), "--once")
    assert code == 1
    assert "no control socket (is `edge run` running?)" in err
    (tmp_path / "control.sock").write_text("")
    code, _, err = await edge("watch", "--socket", str(tmp_path / "control.sock"), "--once")
    assert code == 1
    assert "not a socket; refusing to use it" in err


def tmux(server: str, *args: str) -> str:
    """One tmux command on the test's own tmux server; its output."""
    return subprocess.run(
        ["tmux", "-L", server, *args], capture_output=True, text=True, check=False
    ).stdout


@pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux (apt-get install tmux)")
async def test_the_live_view_redraws_in_a_terminal(tmp_path: Path) -> None:
    rig = CommissionRig(tmp_path)
    server = f"edge-watch-{tmp_path.name}"  # a tmux server of this test's own
    try:
        await rig.start()
        await rig.wait_for_gateway()
        command = " ".join([*EDGE, "watch", "--socket", str(rig.socket), "--every", "0.3"])
        size = ["-x", "110", "-y", "60"]
        await asyncio.to_thread(tmux, server, "new-session", "-d", "-s", "watch", *size, command)

        pane = ["capture-pane", "-p", "-t", "watch"]

        async def screen_shows(text: str) -> str:
            async with asyncio.timeout(DEADLINE):
                while text not in (screen := await asyncio.to_thread(tmux, server, *pane)):  # noqa: ASYNC110
                    await asyncio.sleep(0.2)
            return screen

        screen = await screen_shows("ALARMS (0)")
        assert "efm-workshop-201" in screen
        await rig.set("residual_current", 350)
        screen = await screen_shows("ALARMS (1)")
        assert "residual-current-over-limit" in screen
        assert "buzzer ON" in screen
        # Redrawn in place: the header is on the first line, once.
        assert screen.splitlines()[0].startswith("gw-demo-0001")
        assert screen.count("gw-demo-0001") == 1
    finally:
        await asyncio.to_thread(tmux, server, "kill-server")
        await rig.stop()
