"""A small asyncio Modbus master for RTU (any serial port) and TCP, on the project's own codec.

Why not pymodbus's client: the bus scheduler needs one thing, "send this read, give me the
answer or say why not within the timeout", at up to hundreds of requests a second on a gateway
with a CPU and memory budget. Here a request is one write and one frame decoded from a
reusable buffer; pymodbus (still used by the simulators) costs about 10 MiB of imports and a
transaction manager per request.

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
from typing import Final

from drivers.framing import FrameError
from drivers.modbus.codec import (
    ReadRequest,
    Response,
    decode_response,
    decode_tcp_response,
    encode,
    encode_tcp,
)
from drivers.serial_link import SerialLink

__all__ = ["LinkDown", "ModbusClient", "NoAnswer", "RtuClient", "TcpClient"]

#: A receive buffer never holds more than a few answers' worth: anything beyond is noise.
_BUFFER_CAP: Final = 1024


class NoAnswer(Exception):
    """No valid answer within the timeout; ``reason`` says what was seen instead."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class LinkDown(ConnectionError):
    """The port or the connection is gone."""


class ModbusClient:
    """Shared by both transports: a receive buffer, a data event, the timeout."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        #: Frames that failed their checks (CRC, length), and stale answers ignored.
        self.bad_frames = 0
        self.stale_answers = 0
        self._buffer = bytearray()
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
        self._buffer += data
        if len(self._buffer) > _BUFFER_CAP:
            del self._buffer[: len(self._buffer) - _BUFFER_CAP]
        self._data.set()

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

    @property
    def connected(self) -> bool:
        return self._link is not None and not self._down

    async def connect(self) -> bool:
        self.close()
        self._down = False
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
        # Anything still in the buffer arrived before this request (a late answer, noise).
        self._buffer.clear()
        link.write(encode(ReadRequest(unit, function, address, count)))
        deadline = asyncio.get_running_loop().time() + self.timeout
        seen: list[str] = []
        while True:
            answer = self._take(seen)
            if answer is not None:
                if answer.unit == unit and answer.function == function:
                    return answer
                # Another slave's (late) answer: not ours, keep listening.
                self.stale_answers += 1
                seen.append(f"an answer from unit {answer.unit}")
                continue
            await self._wait(deadline, seen)

    def _take(self, seen: list[str]) -> Response | None:
        while self._buffer:
            try:
                consumed, frame = decode_response(bytes(self._buffer))
            except FrameError as exc:
                self.bad_frames += 1
                seen.append(str(exc))
                del self._buffer[: exc.skip]
                continue
            if frame is None:
                return None
            del self._buffer[:consumed]
            return frame
        return None


class TcpClient(ModbusClient):
    """Modbus TCP: answers are matched to requests by transaction id, so a late answer to an
    earlier request is recognised and dropped."""

    def __init__(self, host: str, port: int, timeout: float) -> None:
        super().__init__(timeout)
        self.host = host
        self.port = port
        self._transport: asyncio.Transport | None = None
        self._ids = itertools.cycle(range(1, 0x10000))

    @property
    def connected(self) -> bool:
        return self._transport is not None and not self._down

    async def connect(self) -> bool:
        self.close()
        self._down = False
        self._buffer.clear()
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
        assert isinstance(transport, asyncio.Transport)
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
            try:
                consumed, adu = decode_tcp_response(bytes(self._buffer))
            except FrameError as exc:
                # A TCP stream out of step cannot be resynchronised: drop the connection.
                self.bad_frames += 1
                self.close()
                self._down = True
                raise LinkDown(f"garbled stream: {exc}") from None
            if adu is None:
                await self._wait(deadline, seen)
                continue
            del self._buffer[:consumed]
            answer_id, answer = adu
            if answer_id == transaction:
                return answer
            self.stale_answers += 1
            seen.append(f"a late answer to request {answer_id}")


class _TcpProtocol(asyncio.Protocol):
    def __init__(self, client: TcpClient) -> None:
        self._client = client

    def data_received(self, data: bytes) -> None:
        self._client._received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        with contextlib.suppress(Exception):
            self._client._lost()
