"""Serial ports, and the loop every UART sensor driver shares.

A port is a device path (``/dev/ttyUSB0``, a ``/dev/serial/by-id/...`` link), a
pseudo-terminal or a link to one, or ``socket://host:port`` for a serial server such as ser2net,
so the field, the HIL rig and CI run the same driver code; :mod:`drivers.ports` says which
strings are ports. :class:`SerialLink` is the byte stream; :class:`SerialSensor` is the driver
loop: open, configure, read frames through a sans-IO codec, report readings, notice silence,
reopen with backoff. Subclasses only say how to decode and what a frame means.

Nothing here blocks the event loop. A device is opened and configured (termios, modem lines)
in a thread of its own, bounded by a timeout: a USB adapter that hangs in the kernel costs its
own driver an "offline", never the other buses their polls. At most one open per port is in
flight; one that returns after its driver gave up is closed at once. Writes never wait: what
the line does not take now is kept (up to :data:`WRITE_LIMIT` bytes) and written when it can be.
pyserial is used for the plain device path only, never through ``serial_for_url``.
"""

from __future__ import annotations

import abc
import asyncio
import concurrent.futures
import contextlib
import logging
import os
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Generic, TypeVar

from drivers.backoff import Backoff
from drivers.framing import Deframer
from drivers.ports import PortError, SocketPort, parse_port, resolve_device
from drivers.types import DeviceStatus, Reading, Sink

# pyserial is imported where a device path is opened: a site whose buses are all Modbus TCP
# or serial servers never loads it (docs/benchmarks.md, import budget).
if TYPE_CHECKING:
    import serial

__all__ = ["OPEN_TIMEOUT", "WRITE_LIMIT", "SerialLink", "SerialSensor", "SerialStats"]

log = logging.getLogger(__name__)

F = TypeVar("F")
_CHUNK: Final = 4096
#: Receive buffer cap per port: a flood or a wrong baud rate cannot eat the gateway's memory.
BUFFER_LIMIT: Final = 4096
#: Bytes a port may hold back when the line does not take them (a stuck adapter, a simulator
#: that stopped reading); beyond it new writes are dropped whole and counted.
WRITE_LIMIT: Final = 4096
#: Seconds an open (with its termios and modem-line calls) may take: a healthy port opens in
#: milliseconds, a USB control transfer gives up after 5 s.
OPEN_TIMEOUT: Final = 5.0

#: Opens still running in their threads, by port path: a hung one is not started again.
_opening: dict[str, concurrent.futures.Future[serial.Serial]] = {}
_opening_lock = threading.Lock()


def _open_device(path: str, baudrate: int, parity: str, stopbits: int) -> serial.Serial:
    """Check where ``path`` leads, then open and configure it (blocking: a worker thread)."""
    import serial  # noqa: PLC0415

    target = resolve_device(path)
    # exclusive: a port another program holds (a running gateway, a terminal) is refused as
    # busy rather than shared, where two masters would garble each other's frames.
    port = serial.Serial(
        None,
        baudrate=baudrate,
        parity=parity,
        stopbits=stopbits,
        timeout=0,
        write_timeout=0,
        exclusive=True,
    )
    port.port = target
    port.open()
    try:
        # The node opened must be the one checked, and a terminal: nothing is written to a
        # device that is not a serial line.
        opened, checked = os.fstat(port.fileno()), os.stat(target)
        if not (
            stat.S_ISCHR(opened.st_mode)
            and opened.st_rdev == checked.st_rdev
            and os.isatty(port.fileno())
        ):
            raise PortError(f"{path}: {target} changed while it was opened, or is not a tty")
    except BaseException:
        port.close()
        raise
    return port


def _close_quietly(port: serial.Serial) -> None:
    with contextlib.suppress(Exception):
        port.close()


def _close_late(future: concurrent.futures.Future[serial.Serial]) -> None:
    """An open that finished after its driver stopped waiting: nobody will use the port."""
    if not future.cancelled() and future.exception() is None:
        _close_quietly(future.result())


async def _open_in_thread(
    path: str, baudrate: int, parity: str, stopbits: int, within: float
) -> serial.Serial:
    with _opening_lock:
        running = _opening.get(path)
        if running is not None and not running.done():
            raise OSError(
                f"{path}: the previous open has not returned yet (a hung adapter or driver?)"
            )
        future: concurrent.futures.Future[serial.Serial] = concurrent.futures.Future()
        _opening[path] = future

    def work() -> None:
        # Running: a waiter that gives up from now on cannot cancel it; its result is closed
        # instead. One that gave up before the thread started leaves nothing to open.
        try:
            if future.set_running_or_notify_cancel():
                future.set_result(_open_device(path, baudrate, parity, stopbits))
        except BaseException as exc:
            future.set_exception(exc)
        finally:
            with _opening_lock:
                if _opening.get(path) is future:
                    del _opening[path]

    threading.Thread(target=work, name=f"open {path}", daemon=True).start()
    try:
        async with asyncio.timeout(within):
            return await asyncio.wrap_future(future)
    except TimeoutError:
        future.add_done_callback(_close_late)
        raise OSError(f"{path}: the open did not return within {within:g} s") from None
    except asyncio.CancelledError:
        future.add_done_callback(_close_late)
        raise


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
        self._port: serial.Serial | None = None
        self._fd = -1
        self._loop = asyncio.get_running_loop()
        #: Bytes the line has not taken yet (a device port only; a socket has its transport).
        self._unsent = bytearray()
        #: Bytes of writes dropped whole because :data:`WRITE_LIMIT` bytes were still unsent.
        self.dropped_writes = 0
        self._closing: concurrent.futures.Future[None] | None = None
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
        connect_timeout: float = OPEN_TIMEOUT,
    ) -> SerialLink:
        """Open ``url`` within ``connect_timeout`` seconds; ``OSError`` if it cannot be,
        :class:`~drivers.ports.PortError` (a ``ValueError``) if it is not a serial port."""
        port = parse_port(url)
        link = cls(on_data)
        if isinstance(port, SocketPort):
            try:
                async with asyncio.timeout(connect_timeout):
                    transport, _ = await link._loop.create_connection(
                        lambda: _Stream(link._on_data, link._gone), port.host, port.port
                    )
            except TimeoutError:
                raise OSError(f"{url}: no connection within {connect_timeout:g} s") from None
            link._transport = transport
            return link
        device = await _open_in_thread(url, baudrate, parity, stopbits, connect_timeout)
        link._port = device
        link._fd = device.fileno()
        link._loop.add_reader(link._fd, link._readable)
        return link

    def on_lost(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` when the port goes away."""
        self._lost_callbacks.append(callback)

    def _gone(self, exc: Exception | None) -> None:
        if self.lost:
            return
        self.lost = True
        self._stop_watching()
        if exc is None:
            self.reader.feed_eof()
        else:
            self.reader.set_exception(exc)
        for callback in self._lost_callbacks:
            callback()

    def _stop_watching(self) -> None:
        if self._fd >= 0:
            with contextlib.suppress(OSError, ValueError):
                self._loop.remove_reader(self._fd)
            with contextlib.suppress(OSError, ValueError):
                self._loop.remove_writer(self._fd)

    def _readable(self) -> None:
        try:
            data = os.read(self._fd, _CHUNK)
        except BlockingIOError:
            return
        except OSError as exc:
            self._gone(exc)
            return
        if not data:
            self._gone(None)
            return
        self._on_data(data)

    def write(self, data: bytes) -> None:
        """Send ``data`` without waiting: what the line does not take now follows when it can.

        A write goes whole or not at all, and writes reach the line in the order they were
        made: when ``os.write`` takes only part of one (the line's buffer is full), the rest is
        kept and sent, before anything written later, once the port is writable again.
        Requests and commands are a few bytes; a line that holds back :data:`WRITE_LIMIT`
        bytes is not draining, and a write that would pass the limit (or is larger than it) is
        dropped whole (a partial request would only be noise on the bus) and counted in
        :attr:`dropped_writes`. The request then goes unanswered and the device offline.
        """
        if len(data) + self.unsent > WRITE_LIMIT:
            self._drop(data)
            return
        if self._transport is not None:
            self._transport.write(data)
            return
        if self._port is None or self.lost:
            return
        if self._unsent:
            self._unsent += data
            return
        try:
            written = os.write(self._fd, data)
        except BlockingIOError:
            written = 0
        except OSError as exc:
            self._gone(exc)
            return
        if written < len(data):
            self._unsent += data[written:]
            self._loop.add_writer(self._fd, self._writable)

    def _writable(self) -> None:
        try:
            written = os.write(self._fd, self._unsent)
        except BlockingIOError:
            return
        except OSError as exc:
            self._unsent.clear()
            self._gone(exc)
            return
        del self._unsent[:written]
        if not self._unsent:
            self._loop.remove_writer(self._fd)

    def _drop(self, data: bytes) -> None:
        if not self.dropped_writes:
            log.warning(
                "serial line not draining: %d bytes waiting, a write of %d would pass the "
                "%d-byte limit; dropping writes",
                self.unsent,
                len(data),
                WRITE_LIMIT,
            )
        self.dropped_writes += len(data)

    @property
    def unsent(self) -> int:
        """Bytes written but not yet taken by the line."""
        if self._transport is not None:
            return self._transport.get_write_buffer_size()
        return len(self._unsent)

    async def close(self) -> None:
        """Close the port and wait (bounded) until it is closed; safe to call twice."""
        self.close_now()
        closing = self._closing
        if closing is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(OPEN_TIMEOUT):
                    await asyncio.wrap_future(closing)
        await asyncio.sleep(0)  # let the transport finish closing

    def close_now(self) -> None:
        """Close the port without waiting.

        A device is closed in a thread: closing a UART waits for its output to drain (up to
        30 s by default), which must not be the event loop's time.
        """
        if self._transport is not None:
            transport, self._transport = self._transport, None
            transport.close()
        if self._port is not None:
            self._stop_watching()
            port, self._port, self._fd = self._port, None, -1
            self._unsent.clear()
            self._closing = concurrent.futures.Future()
            closing = self._closing

            def close() -> None:
                waited_for = closing.set_running_or_notify_cancel()
                _close_quietly(port)
                if waited_for:
                    closing.set_result(None)

            threading.Thread(target=close, name="close serial port", daemon=True).start()


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
            raise ValueError(f"device {device_id}: the port must not be empty")
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
