"""A small asyncio Modbus master for RTU (any serial port) and TCP, on the project's own codec.

The bus scheduler needs one thing from a client: "send this read, give me the answer or say
why not within the timeout", one request at a time, at up to hundreds of requests a second,
and nothing running between requests (no retries, no reconnect tasks of its own: the schedule
decides those). Here a request is one write, and the answer is decoded as its bytes arrive by
the same capped, resynchronising :class:`~drivers.framing.Deframer` every serial protocol of
the project uses. pymodbus's client, measured against this one on the same simulator, costs
more memory and CPU per request (``python -m tests.benchmarks --only modbus_client``; the
figures and the reasoning are in docs/architecture.md, "Hand-written where a library exists").
pymodbus stays the simulators' server (the ``sim`` extra), so this master is always tested
against an independent implementation.

A client reads one request at a time (a bus is half duplex): :meth:`ModbusClient.read` returns
the answer (a :class:`ReadResponse` or an :class:`ExceptionResponse`), raises
:class:`NoAnswer` with the reason when none came in time, and :class:`LinkDown` when the port
or connection went away.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
from collections import deque
from typing import TYPE_CHECKING, Final

from drivers.framing import Deframer, FrameError
from drivers.modbus.codec import (
    ReadRequest,
    Response,
    decode_response,
    decode_tcp_response,
    encode,
    encode_tcp,
)

if TYPE_CHECKING:
    from drivers.serial_link import SerialLink

__all__ = ["LinkDown", "ModbusClient", "NoAnswer", "RtuClient", "TcpClient"]

#: A receive buffer never holds more than a few answers' worth (an RTU answer is at most 256
#: bytes, a TCP one 260): anything beyond is noise, and the oldest of it is dropped.
_BUFFER_CAP: Final = 1024


class NoAnswer(Exception):
    """No valid answer within the timeout; ``reason`` says what was seen instead."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class LinkDown(ConnectionError):
    """The port or the connection is gone."""


class ModbusClient:
    """Shared by both transports: the link's state, a data event, the timeout."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        #: Frames that failed their checks (CRC, length), and stale answers ignored.
        self.bad_frames = 0
        self.stale_answers = 0
        self._data = asyncio.Event()
        self._down = False
        #: Why the last :meth:`connect` failed ("" when it did not).
        self.last_error = ""

    @property
    def connected(self) -> bool:
        raise NotImplementedError

    async def connect(self) -> bool:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    async def read(self, unit: int, function: int, address: int, count: int) -> Response:
        raise NotImplementedError

    def _received(self, data: bytes) -> None:
        raise NotImplementedError

    def _lost(self) -> None:
        self._down = True
        self._data.set()

    async def _wait(self, deadline: float, seen: list[str]) -> None:
        """Wait for more bytes until ``deadline`` (loop time); NoAnswer when it passes."""
        if self._down:
            raise LinkDown("the link went away")
        self._data.clear()
        remaining = deadline - asyncio.get_running_loop().time()
        try:
            if remaining <= 0:
                raise TimeoutError
            async with asyncio.timeout(remaining):
                await self._data.wait()
        except TimeoutError:
            if seen:
                raise NoAnswer(f"no valid answer within {self.timeout:g} s ({seen[0]})") from None
            raise NoAnswer(f"no answer within {self.timeout:g} s") from None
        if self._down:
            raise LinkDown("the link went away")


class RtuClient(ModbusClient):
    """Modbus RTU on a serial port (device path, pty, or ``socket://`` for RTU over TCP; see
    :mod:`drivers.ports`)."""

    def __init__(self, url: str, baudrate: int, parity: str, stopbits: int, timeout: float) -> None:
        super().__init__(timeout)
        self.url = url
        self.baudrate = baudrate
        self.parity = parity
        self.stopbits = stopbits
        self._link: SerialLink | None = None
        self._deframer: Deframer[Response] = Deframer(self._decode, limit=_BUFFER_CAP)
        self._answers: deque[Response] = deque()
        #: What the line delivered instead of a valid answer since the last request.
        self._seen: list[str] = []

    @property
    def connected(self) -> bool:
        return self._link is not None and not self._down

    async def connect(self) -> bool:
        self.close()
        self._down = False
        # Imported for an RTU bus only: a Modbus TCP site never loads the serial link
        # (docs/benchmarks.md, import budget).
        from drivers.serial_link import SerialLink  # noqa: PLC0415 -- RTU buses only

        try:
            self._link = await SerialLink.open(
                self.url,
                self.baudrate,
                parity=self.parity,
                stopbits=self.stopbits,
                on_data=self._received,
                connect_timeout=max(self.timeout, 1.0),
            )
        except (OSError, ValueError) as exc:
            # ValueError: not a serial port at all (drivers/ports.py says which forms are).
            self.last_error = str(exc)
            return False
        self.last_error = ""
        self._link.on_lost(self._lost)
        return True

    def close(self) -> None:
        if self._link is not None:
            link, self._link = self._link, None
            link.close_now()

    async def read(self, unit: int, function: int, address: int, count: int) -> Response:
        link = self._link
        if link is None or self._down:
            raise LinkDown("not connected")
        # Anything still buffered arrived before this request (a late answer, noise).
        self._deframer.clear()
        self._answers.clear()
        self._seen = seen = []
        link.write(encode(ReadRequest(unit, function, address, count)))
        deadline = asyncio.get_running_loop().time() + self.timeout
        while True:
            while self._answers:
                answer = self._answers.popleft()
                if answer.unit == unit and answer.function == function:
                    return answer
                # Another slave's (late) answer: not ours, keep listening.
                self.stale_answers += 1
                seen.append(f"an answer from unit {answer.unit}")
            await self._wait(deadline, seen)

    def _decode(self, buffer: bytes) -> tuple[int, Response | None]:
        """The codec, noting every frame error for the NoAnswer reason: the first one names
        the cause (a CRC error), the ones after it are resynchronisation."""
        try:
            return decode_response(buffer)
        except FrameError as exc:
            self.bad_frames += 1
            self._seen.append(str(exc))
            raise

    def _received(self, data: bytes) -> None:
        self._answers.extend(self._deframer.feed(data))
        self._data.set()


class TcpClient(ModbusClient):
    """Modbus TCP: answers are matched to requests by transaction id, so a late answer to an
    earlier request is recognised and dropped."""

    def __init__(self, host: str, port: int, timeout: float) -> None:
        super().__init__(timeout)
        self.host = host
        self.port = port
        self._transport: asyncio.Transport | None = None
        self._ids = itertools.cycle(range(1, 0x10000))
        self._deframer: Deframer[tuple[int, Response]] = Deframer(
            decode_tcp_response, limit=_BUFFER_CAP
        )
        self._answers: deque[tuple[int, Response]] = deque()
        #: Why the stream fell out of step ("" while it is not).
        self._garbled = ""

    @property
    def connected(self) -> bool:
        return self._transport is not None and not self._down

    async def connect(self) -> bool:
        self.close()
        self._down = False
        self._deframer.clear()
        self._answers.clear()
        self._garbled = ""
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.timeout):
                transport, _ = await loop.create_connection(
                    lambda: _TcpProtocol(self), self.host, self.port
                )
        except TimeoutError:
            self.last_error = f"no connection within {self.timeout:g} s"
            return False
        except OSError as exc:
            self.last_error = os.strerror(exc.errno) if exc.errno else str(exc)
            return False
        self.last_error = ""
        self._transport = transport
        return True

    def close(self) -> None:
        if self._transport is not None:
            transport, self._transport = self._transport, None
            transport.close()

    async def read(self, unit: int, function: int, address: int, count: int) -> Response:
        transport = self._transport
        if transport is None or self._down:
            raise LinkDown("not connected")
        transaction = next(self._ids)
        transport.write(encode_tcp(transaction, ReadRequest(unit, function, address, count)))
        deadline = asyncio.get_running_loop().time() + self.timeout
        seen: list[str] = []
        while True:
            if self._garbled:
                # A TCP stream out of step cannot be resynchronised: drop the connection.
                self.close()
                self._down = True
                raise LinkDown(f"garbled stream: {self._garbled}")
            while self._answers:
                answer_id, answer = self._answers.popleft()
                if answer_id == transaction:
                    return answer
                self.stale_answers += 1
                seen.append(f"a late answer to request {answer_id}")
            await self._wait(deadline, seen)

    def _received(self, data: bytes) -> None:
        deframer = self._deframer
        errors, dropped = deframer.errors, deframer.dropped
        self._answers.extend(deframer.feed(data))
        if deframer.errors > errors:
            self.bad_frames += deframer.errors - errors
            self._garbled = self._garbled or deframer.last_error
        elif deframer.dropped > dropped:
            # More than a buffer's worth at once: some ADU lost its start.
            self._garbled = self._garbled or f"{deframer.dropped - dropped} bytes beyond the buffer"
        self._data.set()


class _TcpProtocol(asyncio.Protocol):
    def __init__(self, client: TcpClient) -> None:
        self._client = client

    def data_received(self, data: bytes) -> None:
        self._client._received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        with contextlib.suppress(Exception):
            self._client._lost()
