"""Simulated UART sensors on pseudo-terminals: a WitMotion tilt module and an LD2410 radar.

Each simulator opens a pty, streams frames at the device's rate through the same codecs the
drivers use, and answers what the device answers (the radar ACKs its configuration commands).
The driver opens :attr:`SerialDeviceSim.path` (or ``link``) like ``/dev/ttyUSB0``.

Faults: ``silent`` (nothing sent), ``checksum`` (every frame corrupted), ``garbage`` (random
bytes mixed between frames), ``wrong-baud`` (only noise, as a port at the wrong baud rate
reads), ``flood`` (frames as fast as the line takes them, ``flood_burst`` per tick), and for
the radar ``no-ack`` (ignores configuration commands).

Run ``python -m hil.serial_sim --help`` for the command line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import random
import signal
import sys
from collections.abc import Sequence
from types import TracebackType
from typing import Final, Literal, Self, TypeAlias, get_args

from drivers.framing import Deframer
from drivers.ld2410 import codec as radar
from drivers.witmotion import codec as wit
from hil.pty_port import PtyPort

__all__ = ["Ld2410Sim", "SerialDeviceSim", "SerialFault", "WitMotionSim", "main"]

log = logging.getLogger(__name__)

SerialFault: TypeAlias = Literal[
    "none", "silent", "checksum", "garbage", "wrong-baud", "flood", "no-ack"
]
SERIAL_FAULTS: Final[tuple[str, ...]] = get_args(SerialFault)


class SerialDeviceSim:
    """Base: a pty, a frame ticker, fault injection. ``async with`` starts and stops it."""

    def __init__(
        self,
        *,
        rate: float = 10.0,
        link: str | os.PathLike[str] | None = None,
        seed: int | None = None,
        flood_burst: int = 50,
    ) -> None:
        if not rate > 0:
            raise ValueError("rate must be positive (frames per second)")
        self.rate = rate
        self.fault: SerialFault = "none"
        self.flood_burst = flood_burst
        self.frames_sent = 0
        self.commands_received = 0
        self._port = PtyPort(link)
        self._random = random.Random(seed)
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        self._port.open(self._readable)
        self._task = asyncio.create_task(self._tick(), name=f"{type(self).__name__} frames")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._port.close()

    @property
    def path(self) -> str:
        """The pty the gateway opens (``/dev/pts/N``); empty until started."""
        return self._port.path

    def set_fault(self, fault: SerialFault) -> None:
        if fault not in SERIAL_FAULTS:
            raise ValueError(f"unknown fault {fault!r} (faults: {', '.join(SERIAL_FAULTS)})")
        self.fault = fault

    # -- subclasses -------------------------------------------------------------------------

    def frame(self) -> bytes:
        """The next frame the device sends."""
        raise NotImplementedError

    def corrupt(self, frame: bytes) -> bytes:
        """The frame with its check broken."""
        return frame[:-1] + bytes([frame[-1] ^ 0x5A])

    def on_bytes(self, data: bytes) -> None:
        """Bytes from the host (commands)."""

    # -- the line ---------------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        if not self._port.is_open:
            return
        # A pty holds a few KiB; a host that does not read loses bytes, as on a real line.
        with contextlib.suppress(BlockingIOError):
            os.write(self._port.device_fd, data)

    def _readable(self) -> None:
        try:
            data = os.read(self._port.device_fd, 4096)
        except OSError:
            return
        self.on_bytes(data)

    def _noise(self, size: int) -> bytes:
        return bytes(self._random.randrange(256) for _ in range(size))

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(1 / self.rate)
            fault = self.fault
            if fault == "silent":
                continue
            if fault == "wrong-baud":
                self.send(self._noise(len(self.frame())))
                continue
            count = self.flood_burst if fault == "flood" else 1
            chunk = b""
            for _ in range(count):
                frame = self.frame()
                if fault == "checksum":
                    frame = self.corrupt(frame)
                elif fault == "garbage":
                    frame = self._noise(self._random.randrange(1, 12)) + frame
                chunk += frame
                self.frames_sent += 1
            self.send(chunk)


class WitMotionSim(SerialDeviceSim):
    """A WitMotion module streaming angle frames; set the angles with :meth:`set_angles`."""

    def __init__(self, *, rate: float = 10.0, **kwargs: object) -> None:
        super().__init__(rate=rate, **kwargs)  # type: ignore[arg-type]
        self.roll = self.pitch = self.yaw = 0.0
        self.temperature = 25.0
        self._commands: Deframer[wit.ConfigCommand] = Deframer(wit.decode_command, limit=256)
        self.commands: list[wit.ConfigCommand] = []

    def set_angles(self, roll: float, pitch: float, yaw: float = 0.0) -> None:
        wit.AngleFrame.from_degrees(roll, pitch, yaw)  # ValueError before anything changes
        self.roll, self.pitch, self.yaw = roll, pitch, yaw

    def frame(self) -> bytes:
        angles = wit.AngleFrame.from_degrees(self.roll, self.pitch, self.yaw, self.temperature)
        return wit.encode(angles)

    def on_bytes(self, data: bytes) -> None:
        for command in self._commands.feed(data):
            self.commands_received += 1
            self.commands.append(command)


class Ld2410Sim(SerialDeviceSim):
    """An LD2410 radar: data frames at ``rate``, ACKs to configuration commands."""

    def __init__(self, *, rate: float = 20.0, **kwargs: object) -> None:
        super().__init__(rate=rate, **kwargs)  # type: ignore[arg-type]
        self.target = radar.TargetFrame(0, 0, 0, 0, 0, 0)
        self.config_mode = False
        self.engineering = True
        self._commands: Deframer[radar.Frame] = Deframer(radar.decode, limit=256)

    def set_target(
        self,
        state: int,
        moving: int = 0,
        still: int = 0,
        *,
        moving_energy: int = 50,
        still_energy: int = 50,
    ) -> None:
        detection = max(moving, still)
        self.target = radar.TargetFrame(
            state, moving, moving_energy, still, still_energy, detection
        )

    def frame(self) -> bytes:
        if self.config_mode:
            return b""  # the radar stops reporting while being configured
        target = self.target
        if self.engineering:
            # 2 max gates, 9 + 9 gate energies, light, output pin: the radar's factory mode.
            target = radar.TargetFrame(
                target.state,
                target.moving_distance,
                target.moving_energy,
                target.still_distance,
                target.still_energy,
                target.detection_distance,
                bytes([8, 8, *range(9), *range(9), 0, 0]),
            )
        return radar.encode(target)

    def corrupt(self, frame: bytes) -> bytes:
        return frame[:-1] + b"\x00" if frame else frame

    def on_bytes(self, data: bytes) -> None:
        for frame in self._commands.feed(data):
            if not isinstance(frame, radar.CommandFrame) or frame.is_ack:
                continue
            self.commands_received += 1
            if self.fault in ("no-ack", "silent", "wrong-baud"):
                continue
            extra = b""
            if frame.command == radar.ENABLE_CONFIG.command:
                self.config_mode = True
                extra = b"\x01\x00\x40\x00"  # protocol version 1, buffer 64
            elif frame.command == radar.END_CONFIG.command:
                self.config_mode = False
            elif frame.command == radar.DISABLE_ENGINEERING.command:
                self.engineering = False
            elif frame.command == 0x0062:
                self.engineering = True
            status = 0 if self.config_mode or frame.command == radar.END_CONFIG.command else 1
            self.send(radar.encode(frame.ack(status, extra)))


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m hil.serial_sim``: serve one simulated UART sensor until SIGINT/SIGTERM."""
    parser = argparse.ArgumentParser(
        prog="python -m hil.serial_sim", description="A simulated UART sensor on a pty."
    )
    parser.add_argument("device", choices=["witmotion", "ld2410"])
    parser.add_argument("--link", required=True, metavar="PATH", help="link the pty here")
    parser.add_argument("--rate", type=float, help="frames per second")
    parser.add_argument("--fault", choices=SERIAL_FAULTS, default="none")
    parser.add_argument("--roll", type=float, default=0.0, help="witmotion: degrees")
    parser.add_argument("--pitch", type=float, default=0.0, help="witmotion: degrees")
    parser.add_argument(
        "--state",
        type=int,
        default=1,
        help="ld2410: target state 0-3, or 4-6 (calibrating, calibrated, calibration failed)",
    )
    parser.add_argument("--distance", type=int, default=150, help="ld2410: cm")
    args = parser.parse_args(argv)

    async def serve() -> int:
        sim: SerialDeviceSim
        try:
            if args.device == "witmotion":
                tilt = WitMotionSim(rate=args.rate or 10.0, link=args.link)
                tilt.set_angles(args.roll, args.pitch)
                sim = tilt
            else:
                presence = Ld2410Sim(rate=args.rate or 20.0, link=args.link)
                presence.set_target(args.state, args.distance, args.distance)
                sim = presence
            sim.set_fault(args.fault)
            await sim.start()
        except (OSError, ValueError) as exc:
            print(f"serial sim: {exc}", file=sys.stderr)
            return 1
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        print(f"{args.device} on {args.link} ({sim.path}), fault {args.fault}", flush=True)
        try:
            await stop.wait()
        finally:
            await sim.stop()
        return 0

    return asyncio.run(serve())


if __name__ == "__main__":
    sys.exit(main())
