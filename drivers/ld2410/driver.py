"""An HLK-LD2410 presence radar: configured at start-up, then its frames become occupancy."""

from __future__ import annotations

import asyncio
import logging
from typing import Final

from drivers.ld2410.codec import (
    CALIBRATED,
    CALIBRATING,
    DISABLE_ENGINEERING,
    ENABLE_CONFIG,
    END_CONFIG,
    CommandFrame,
    Frame,
    TargetFrame,
    decode,
    encode,
)
from drivers.serial_link import SerialLink, SerialSensor
from drivers.types import Sink

__all__ = ["Ld2410Radar"]

log = logging.getLogger(__name__)

#: Seconds to wait for each configuration ACK.
ACK_TIMEOUT: Final = 1.0
STARTUP: Final = (ENABLE_CONFIG, DISABLE_ENGINEERING, END_CONFIG)


class Ld2410Radar(SerialSensor[Frame]):
    """Reports ``presence`` (0/1), ``target_state`` and the distances and energies.

    While the radar reports its background-noise calibration (target states 4-6, firmware
    2.44+), only ``target_state`` is reported: such a frame says nothing about the room, so it
    neither confirms nor denies presence (the last presence reading ages out as usual), and it
    is a working radar, not a frame error.

    The radar sends 10-20 frames a second. A change of presence is reported at once (it is
    what occupancy and alarms need); otherwise the latest frame is reported at most every
    ``report_interval`` seconds, so a radar flooding frames costs the gateway decoding only.
    """

    def __init__(
        self,
        device_id: str,
        url: str,
        sink: Sink,
        *,
        baudrate: int = 256000,
        report_interval: float = 1.0,
        silence: float = 3.0,
    ) -> None:
        super().__init__(device_id, url, baudrate, sink, silence=silence)
        if not report_interval >= 0:
            raise ValueError(f"device {device_id}: report_interval must not be negative")
        self.report_interval = report_interval
        self._last_report = -float("inf")
        self._presence: bool | None = None
        self._state: int | None = None
        self._acks: asyncio.Queue[CommandFrame] = asyncio.Queue(maxsize=16)
        #: Whether the last start-up sequence was acknowledged in full.
        self.configured = False

    def decode(self, buffer: bytes) -> tuple[int, Frame | None]:
        return decode(buffer)

    async def configure(self, link: SerialLink) -> None:
        """Configuration mode on, basic frames only, configuration mode off.

        A radar that does not acknowledge (an older firmware, a wrong baud rate) is still
        read: the data frames are what matter, and the silence watchdog reports a dead line.
        """
        self.configured = False
        while not self._acks.empty():
            self._acks.get_nowait()
        for command in STARTUP:
            link.write(encode(command))
            try:
                async with asyncio.timeout(ACK_TIMEOUT):
                    while True:
                        ack = await self._acks.get()
                        if ack.command == command.command | 0x0100:
                            break
            except TimeoutError:
                log.warning(
                    "%s: no ACK for command 0x%04X within %g s; reading frames as they come",
                    self.device_id,
                    command.command,
                    ACK_TIMEOUT,
                )
                return
            if ack.status != 0:
                log.warning(
                    "%s: command 0x%04X refused (status %s)",
                    self.device_id,
                    command.command,
                    ack.status,
                )
                return
        self.configured = True
        log.info("%s: radar configured", self.device_id)

    def on_frame(self, frame: Frame, ts: float, mono: float) -> None:
        if isinstance(frame, CommandFrame):
            if frame.is_ack and not self._acks.full():
                self._acks.put_nowait(frame)
            return
        if frame.state != self._state and frame.calibrating:
            _log_calibration(self.device_id, frame.state)
        self._state = frame.state
        changed = frame.presence != self._presence
        if not changed and mono - self._last_report < self.report_interval:
            self.stats.suppressed += 1
            return
        self._presence = frame.presence
        self._last_report = mono
        self._report(frame, ts, mono)

    def _report(self, frame: TargetFrame, ts: float, mono: float) -> None:
        if frame.presence is not None:  # a calibration frame says nothing about the room
            self.emit("presence", 1.0 if frame.presence else 0.0, "", ts, mono)
        self.emit("target_state", float(frame.state), "", ts, mono)
        self.emit("moving_distance", float(frame.moving_distance), "cm", ts, mono)
        self.emit("moving_energy", float(frame.moving_energy), "", ts, mono)
        self.emit("still_distance", float(frame.still_distance), "cm", ts, mono)
        self.emit("still_energy", float(frame.still_energy), "", ts, mono)
        self.emit("detection_distance", float(frame.detection_distance), "cm", ts, mono)


def _log_calibration(device_id: str, state: int) -> None:
    if state == CALIBRATING:
        log.info("%s: background-noise calibration in progress; presence unknown", device_id)
    elif state == CALIBRATED:
        log.info("%s: background-noise calibration done", device_id)
    else:
        log.warning("%s: background-noise calibration failed; presence unknown", device_id)
