"""The Modbus master's own transports against small real servers: late answers, garbage."""

from __future__ import annotations

import asyncio
import contextlib
import os
import struct
import tty
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from drivers.modbus.client import LinkDown, NoAnswer, RtuClient, TcpClient
from drivers.modbus.codec import ReadRequest, ReadResponse, decode_request, encode, encode_tcp
from hil.rtu_line import RtuLine

pytestmark = pytest.mark.integration

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def server(handler: Handler) -> AsyncIterator[int]:
    listener = await asyncio.start_server(handler, "127.0.0.1", 0)
    try:
        yield listener.sockets[0].getsockname()[1]
    finally:
        listener.close()
        await listener.wait_closed()


async def test_tcp_matches_answers_by_transaction_and_drops_late_ones() -> None:
    async def late_then_on_time(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            # Request 1 is answered once request 2 has come: late for certain (the client gave
            # up on it), and first on the wire, while the client waits for request 2's answer.
            headers = [await reader.readexactly(12) for _ in range(2)]
            for header in headers:
                transaction = struct.unpack(">H", header[:2])[0]
                writer.write(encode_tcp(transaction, ReadResponse(1, 3, (transaction,))))
            await reader.read()
        writer.close()

    async with server(late_then_on_time) as port:
        client = TcpClient("127.0.0.1", port, timeout=0.5)
        assert await client.connect()
        try:
            with pytest.raises(NoAnswer, match=r"no answer within 0\.5 s"):
                await client.read(1, 3, 0, 1)
            answer = await client.read(1, 3, 0, 1)
        finally:
            client.close()
    assert answer == ReadResponse(1, 3, (2,))  # the answer to request 2, not the stale one
    assert client.stale_answers == 1


async def test_tcp_garbage_drops_the_connection() -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            await reader.readexactly(12)
            writer.write(b"\x00\x01\x12\x34\xff\xff\x01\x03")
            await writer.drain()
            await reader.read()
        writer.close()

    async with server(garbage) as port:
        client = TcpClient("127.0.0.1", port, timeout=0.5)
        assert await client.connect()
        with pytest.raises(LinkDown, match="garbled stream"):
            await client.read(1, 3, 0, 1)
        assert not client.connected
        client.close()


async def test_rtu_names_crc_errors_and_recovers() -> None:
    async with RtuLine({1: "efm-ref"}, baudrate=19200) as line:
        client = RtuClient(line.path, 19200, "N", 1, timeout=0.5)
        assert await client.connect()
        try:
            answer = await client.read(1, 3, 0, 2)
            assert answer == ReadResponse(1, 3, (120, 320))
            line.set_fault(1, "crc")
            with pytest.raises(NoAnswer, match="CRC error"):
                await client.read(1, 3, 0, 2)
            assert client.bad_frames >= 1
            line.set_fault(1, "none")
            await asyncio.sleep(0.01)
            assert await client.read(1, 3, 0, 1) == ReadResponse(1, 3, (120,))
        finally:
            client.close()
    with pytest.raises(LinkDown):
        await client.read(1, 3, 0, 1)


@pytest.mark.parametrize(
    ("noise", "chunk"),
    [
        (b"\x00\xff\x13\x37", 1),  # a few bytes of garbage, the answer a byte at a time
        (bytes(range(256)) * 8, 64),  # 2 KiB of noise: more than the receive buffer holds
    ],
)
async def test_rtu_finds_the_answer_behind_noise_however_the_bytes_arrive(
    noise: bytes, chunk: int
) -> None:
    """A real pseudo-terminal as the line; the test is the slave. The client decodes as bytes
    arrive (the shared capped Deframer), so neither the split nor a flood loses the answer."""
    leader, follower = os.openpty()
    tty.setraw(follower)
    client = RtuClient(os.ttyname(follower), 19200, "N", 1, timeout=5.0)
    try:
        assert await client.connect()
        reading = asyncio.create_task(client.read(7, 3, 0, 2))
        loop = asyncio.get_running_loop()
        request = await loop.run_in_executor(None, os.read, leader, 64)
        assert decode_request(request) == (8, ReadRequest(7, 3, 0, 2))
        wire = noise + encode(ReadResponse(7, 3, (120, 320)))
        for at in range(0, len(wire), chunk):
            os.write(leader, wire[at : at + chunk])
            await asyncio.sleep(0)
        answer = await asyncio.wait_for(reading, 30)
    finally:
        client.close()
        os.close(leader)
        os.close(follower)
    assert answer == ReadResponse(7, 3, (120, 320))
    assert client.bad_frames >= 1
