"""Serial ports as URLs, and the loop every UART sensor driver shares.

A port is a URL (pyserial's ``serial_for_url``): a device path (``/dev/ttyUSB0``), a
pseudo-terminal, or ``socket://host:port`` for a serial server such as ser2net, so the field,
the HIL rig and CI run the same driver code. :class:`SerialLink` is the byte stream;
:class:`SerialSensor` is the driver loop: open, configure, read frames through a sans-IO codec,
report readings, notice silence, reopen with backoff. Subclasses only say how to decode and
what a frame means.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import os
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Generic, TypeVar

import serial

from drivers.backoff import Backoff
from drivers.framing import Deframer
from drivers.types import DeviceStatus, Reading, Sink

__all__ = ["SerialLink", "SerialSensor", "SerialStats"]

log = logging.getLogger(__name__)

F = TypeVar("F")
_CHUNK: Final = 4096
#: Receive buffer cap per port: a flood or a wrong baud rate cannot eat the gateway's memory.
BUFFER_LIMIT: Final = 4096


class _Stream(asyncio.Protocol):
    """Socket side of a link: bytes to ``on_data``, the end to ``on_lost``."""

    def __init__(
        self, on_data: Callable[[bytes], None], on_lost: Callable[[Exception | None], None]
    ) -> None:
        self._on_data = on_data
        self._on_lost = on_lost

    def data_received(self, data: bytes) -> None:
        self._on_data(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self._on_lost(exc)


class SerialLink:
    """An open port. Received bytes go to ``on_data`` when given, else into :attr:`reader`;
    :meth:`write` sends. :attr:`lost` tells whether the port went away."""

    def __init__(self, on_data: Callable[[bytes], None] | None) -> None:
        self.reader = asyncio.StreamReader(limit=BUFFER_LIMIT)
        self._on_data = on_data or self.reader.feed_data
        self._transport: asyncio.Transport | None = None
        self._port: serial.SerialBase | None = None
        self._loop = asyncio.get_running_loop()
        #: Set once the port or connection went away (EOF, I/O error).
        self.lost = False
        self._lost_callbacks: list[Callable[[], None]] = []

    @classmethod
    async def open(
        cls,
        url: str,
        baudrate: int,
        *,
        parity: str = "N",
        stopbits: int = 1,
        on_data: Callable[[bytes], None] | None = None,
        connect_timeout: float = 5.0,
    ) -> SerialLink:
        """Open ``url``; ``OSError`` (pyserial's SerialException is one) if it cannot be."""
        link = cls(on_data)
        parsed = urllib.parse.urlparse(url)
        if parsed.scheme == "socket":
            if not parsed.hostname or not parsed.port:
                raise OSError(f"{url}: expected socket://host:port")
            try:
                async with asyncio.timeout(connect_timeout):
                    transport, _ = await link._loop.create_connection(
                        lambda: _Stream(link._on_data, link._gone), parsed.hostname, parsed.port
                    )
            except TimeoutError:
                raise OSError(f"{url}: no connection within {connect_timeout:g} s") from None
            link._transport = transport
            return link
        # Opening a local port is quick and pyserial has no async open; a socket URL (which
        # could block on connect) took the branch above.
        port = serial.serial_for_url(
            url,
            baudrate=baudrate,
            parity=parity,
            stopbits=stopbits,
            timeout=0,
            write_timeout=0,
        )
        link._port = port
        link._loop.add_reader(port.fileno(), link._readable)
        return link

    def on_lost(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` when the port goes away."""
        self._lost_callbacks.append(callback)

    def _gone(self, exc: Exception | None) -> None:
        if self.lost:
            return
        self.lost = True
        if exc is None:
            self.reader.feed_eof()
        else:
            self.reader.set_exception(exc)
        for callback in self._lost_callbacks:
            callback()

    def _readable(self) -> None:
        assert self._port is not None
        try:
            data = os.read(self._port.fileno(), _CHUNK)
        except BlockingIOError:
            return
        except OSError as exc:
            self._loop.remove_reader(self._port.fileno())
            self._gone(exc)
            return
        if not data:
            self._loop.remove_reader(self._port.fileno())
            self._gone(None)
            return
        self._on_data(data)

    def write(self, data: bytes) -> None:
        """Send ``data`` (requests and commands are a few bytes: no flow control needed)."""
        if self._transport is not None:
            self._transport.write(data)
        elif self._port is not None:
            try:
                os.write(self._port.fileno(), data)
            except BlockingIOError:
                pass
            except OSError as exc:
                self._gone(exc)

    async def close(self) -> None:
        """Close the port; safe to call twice."""
        self.close_now()
        await asyncio.sleep(0)  # let the transport finish closing

    def close_now(self) -> None:
        """Close the port without waiting."""
        if self._transport is not None:
            transport, self._transport = self._transport, None
            transport.close()
        if self._port is not None:
            port, self._port = self._port, None
            with contextlib.suppress(OSError, ValueError):
                self._loop.remove_reader(port.fileno())
            port.close()


@dataclass(slots=True)
class SerialStats:
    """Counters per port; they only grow."""

    opens: int = 0
    frames: int = 0
    #: Frames that failed their checks (checksum, tail, impossible fields).
    bad_frames: int = 0
    #: Bytes dropped while resynchronising or by the buffer cap.
    dropped_bytes: int = 0
    readings: int = 0
    #: Frames that carried nothing new to report (rate-limited).
    suppressed: int = 0


class SerialSensor(abc.ABC, Generic[F]):
    """One sensor on one serial port, run until cancelled; never raises for I/O trouble.

    ``silence`` is how long without a valid frame makes the device offline (the reason says
    whether bytes came at all: bytes without frames usually mean a wrong baud rate).
    """

    #: Reopen backoff bounds, in seconds.
    REOPEN_INITIAL: Final = 0.5
    REOPEN_MAX: Final = 10.0

    def __init__(
        self,
        device_id: str,
        url: str,
        baudrate: int,
        sink: Sink,
        *,
        silence: float = 3.0,
    ) -> None:
        if not url:
            raise ValueError(f"device {device_id}: the port URL must not be empty")
        if baudrate <= 0:
            raise ValueError(f"device {device_id}: baudrate {baudrate} must be positive")
        if not silence > 0:
            raise ValueError(f"device {device_id}: silence must be positive")
        self.device_id = device_id
        self.url = url
        self.baudrate = baudrate
        self.silence = silence
        self.stats = SerialStats()
        self._sink = sink
        self._online: bool | None = None
        self._backoff = Backoff(self.REOPEN_INITIAL, self.REOPEN_MAX)
        self._deframer: Deframer[F] = Deframer(self.decode, limit=BUFFER_LIMIT)

    @abc.abstractmethod
    def decode(self, buffer: bytes) -> tuple[int, F | None]:
        """The protocol's codec (see :mod:`drivers.framing`)."""

    @abc.abstractmethod
    def on_frame(self, frame: F, ts: float, mono: float) -> None:
        """Handle one valid frame; emit readings with :meth:`emit`."""

    async def configure(self, link: SerialLink) -> None:
        """Send start-up commands after each open (default: none)."""
        del link

    @property
    def online(self) -> bool | None:
        return self._online

    def emit(self, point: str, value: float, unit: str, ts: float, mono: float) -> None:
        self.stats.readings += 1
        self._sink(Reading(self.device_id, point, value, unit, ts, mono))

    async def run(self) -> None:
        """Open, configure, read; on trouble mark offline once and reopen with backoff."""
        while True:
            try:
                link = await SerialLink.open(self.url, self.baudrate)
            except (OSError, ValueError) as exc:
                self._offline(f"cannot open {self.url}: {exc}")
            else:
                self.stats.opens += 1
                self._deframer.clear()
                try:
                    reason = await self._read(link)
                finally:
                    await link.close()
                self._offline(reason)
            await asyncio.sleep(self._backoff.next_delay())

    async def _read(self, link: SerialLink) -> str:
        configure = asyncio.create_task(self._configure(link), name=f"{self.device_id} configure")
        try:
            last_frame = time.monotonic()
            bytes_since = 0
            while True:
                wait = last_frame + self.silence - time.monotonic()
                try:
                    async with asyncio.timeout(max(wait, 0.0)):
                        data = await link.reader.read(_CHUNK)
                except TimeoutError:
                    if bytes_since:
                        why = (
                            f"{bytes_since} bytes but no valid frame for {self.silence:g} s "
                            f"(wrong baud rate? configured {self.baudrate})"
                        )
                    else:
                        why = f"no data for {self.silence:g} s"
                    self._offline(why)
                    last_frame, bytes_since = time.monotonic(), 0
                    continue
                except OSError as exc:
                    return f"{self.url}: {exc}"
                if not data:
                    return f"{self.url} closed"
                bytes_since += len(data)
                if self._feed(data):
                    last_frame, bytes_since = time.monotonic(), 0
        finally:
            configure.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await configure

    async def _configure(self, link: SerialLink) -> None:
        try:
            await self.configure(link)
        except OSError as exc:
            # The read loop sees the broken port too and reopens it.
            log.warning("%s: configuring failed: %s", self.device_id, exc)

    def _feed(self, data: bytes) -> bool:
        """Decode ``data``; whether any valid frame came out."""
        deframer = self._deframer
        errors, dropped = deframer.errors, deframer.dropped
        frames = deframer.feed(data)
        self.stats.bad_frames += deframer.errors - errors
        self.stats.dropped_bytes += deframer.dropped - dropped
        if deframer.errors > errors:
            log.debug("%s: %s", self.device_id, deframer.last_error)
        if not frames:
            return False
        ts, mono = time.time(), time.monotonic()
        self._backoff.reset()
        if self._online is not True:
            if self._online is False:
                log.info("%s: frames again on %s", self.device_id, self.url)
            self._online = True
            self._sink(DeviceStatus(self.device_id, True, ts))
        for frame in frames:
            self.stats.frames += 1
            self.on_frame(frame, ts, mono)
        return True

    def _offline(self, reason: str) -> None:
        if self._online is False:
            log.debug("%s: still offline: %s", self.device_id, reason)
            return
        log.warning("%s: %s; marking it offline", self.device_id, reason)
        self._online = False
        self._sink(DeviceStatus(self.device_id, False, time.time(), reason))
