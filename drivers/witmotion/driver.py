"""A WitMotion UART tilt sensor: angle frames in, roll/pitch/yaw (and displacement) out."""

from __future__ import annotations

from drivers.serial_link import SerialSensor
from drivers.tilt import check_gauge_length, displacement_mm, displacement_point
from drivers.types import Sink
from drivers.witmotion.codec import AngleFrame, Frame, decode

__all__ = ["WitMotionSensor"]


class WitMotionSensor(SerialSensor[Frame]):
    """Reads a WitMotion module (10 angle frames a second by default) and reports the latest
    angles at most every ``report_interval`` seconds: tilt moves over days, and ten readings a
    second would only fill the buffer. With ``gauge_length`` (metres) it also reports
    ``roll_displacement`` and ``pitch_displacement`` in mm."""

    def __init__(
        self,
        device_id: str,
        url: str,
        sink: Sink,
        *,
        baudrate: int = 9600,
        report_interval: float = 1.0,
        gauge_length: float | None = None,
        silence: float = 3.0,
    ) -> None:
        super().__init__(device_id, url, baudrate, sink, silence=silence)
        if not report_interval >= 0:
            raise ValueError(f"device {device_id}: report_interval must not be negative")
        self.report_interval = report_interval
        self.gauge_length = None if gauge_length is None else check_gauge_length(gauge_length)
        self._last_report = -float("inf")

    def decode(self, buffer: bytes) -> tuple[int, Frame | None]:
        return decode(buffer)

    def on_frame(self, frame: Frame, ts: float, mono: float) -> None:
        if not isinstance(frame, AngleFrame):
            return  # acceleration, rates, ... are not what the gateway monitors
        if mono - self._last_report < self.report_interval:
            self.stats.suppressed += 1
            return
        self._last_report = mono
        angles = {"roll": frame.roll_deg, "pitch": frame.pitch_deg, "yaw": frame.yaw_deg}
        for axis, degrees in angles.items():
            self.emit(axis, round(degrees, 4), "°", ts, mono)
            if self.gauge_length is not None and axis != "yaw":
                shift = displacement_mm(degrees, self.gauge_length)
                self.emit(displacement_point(axis), shift, "mm", ts, mono)
