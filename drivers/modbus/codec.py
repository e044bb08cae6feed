"""Modbus RTU frames, sans-IO: bytes in, frozen frames out, and back.

Both ends of the wire use it: the gateway's master (drivers/modbus/client.py, RTU and the MBAP
framing of Modbus TCP) and the line-timed simulator's slaves (hil/rtu_line.py). It is also the
reference for the frame-length arithmetic of the line budget (drivers/modbus/line_budget.py),
and tests check it against pymodbus's frames, an independent implementation. No asyncio here.

Frames carry the unit address and the CRC-16/MODBUS (polynomial 0xA001 reflected, initial
0xFFFF, low byte first on the wire). Covered: FC03/FC04 reads, FC06/FC16 writes and exception
answers, which is everything the gateway's device models use.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final, TypeAlias

from drivers.framing import FrameError

__all__ = [
    "ExceptionResponse",
    "FrameError",
    "ReadRequest",
    "ReadResponse",
    "Request",
    "Response",
    "WriteRequest",
    "WriteResponse",
    "crc16",
    "decode_pdu_response",
    "decode_request",
    "decode_response",
    "decode_tcp_response",
    "encode",
    "encode_pdu",
    "encode_tcp",
    "read_chars",
]

READ_FUNCTIONS: Final = frozenset({3, 4})
WRITE_FUNCTIONS: Final = frozenset({6, 16})
#: FC03/FC04 read 1..125 registers, FC16 writes 1..123 (Modbus Application Protocol v1.1b).
MAX_READ: Final = 125
MAX_WRITE: Final = 123
#: An RTU ADU is at most 256 bytes.
MAX_ADU: Final = 256


def _crc_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_TABLE: Final = _crc_table()


def crc16(data: bytes) -> int:
    """CRC-16/MODBUS of ``data``; on the wire it goes low byte first."""
    crc = 0xFFFF
    for byte in data:
        crc = (crc >> 8) ^ _TABLE[(crc ^ byte) & 0xFF]
    return crc


def _with_crc(body: bytes) -> bytes:
    return body + struct.pack("<H", crc16(body))


def read_chars(count: int) -> int:
    """Characters on the wire for one read of ``count`` registers, silences included.

    8 request + (5 + 2N) response + 2 x 3.5 silent character times (devices.md): the physical
    cost the scheduler's efficiency is measured against.
    """
    return 8 + 5 + 2 * count + 7


def _check_unit(unit: int) -> None:
    # 248-255 are reserved on a serial line but legal unit ids behind Modbus TCP.
    if not 0 <= unit <= 255:
        raise ValueError(f"unit address {unit} is not in 0..255")


def _check_u16(name: str, value: int) -> None:
    if not 0 <= value <= 0xFFFF:
        raise ValueError(f"{name} {value} is not a 16-bit unsigned value")


@dataclass(frozen=True, slots=True)
class ReadRequest:
    """FC03 (holding) or FC04 (input): read ``count`` registers from ``address``."""

    unit: int
    function: int
    address: int
    count: int

    def __post_init__(self) -> None:
        _check_unit(self.unit)
        if self.function not in READ_FUNCTIONS:
            raise ValueError(f"function {self.function} is not a register read (3 or 4)")
        _check_u16("address", self.address)
        if not 1 <= self.count <= MAX_READ:
            raise ValueError(f"count {self.count} is not in 1..{MAX_READ}")
        if self.address + self.count > 0x10000:
            raise ValueError("the read runs past register 65535")


@dataclass(frozen=True, slots=True)
class WriteRequest:
    """FC06 (one register) or FC16 (several): write ``values`` from ``address``."""

    unit: int
    function: int
    address: int
    values: tuple[int, ...]

    def __post_init__(self) -> None:
        _check_unit(self.unit)
        if self.function not in WRITE_FUNCTIONS:
            raise ValueError(f"function {self.function} is not a register write (6 or 16)")
        _check_u16("address", self.address)
        limit = 1 if self.function == 6 else MAX_WRITE
        if not 1 <= len(self.values) <= limit:
            raise ValueError(f"function {self.function} writes 1..{limit} registers")
        for value in self.values:
            _check_u16("register value", value)
        if self.address + len(self.values) > 0x10000:
            raise ValueError("the write runs past register 65535")


@dataclass(frozen=True, slots=True)
class ReadResponse:
    """The registers a read returned."""

    unit: int
    function: int
    registers: tuple[int, ...]

    def __post_init__(self) -> None:
        _check_unit(self.unit)
        if self.function not in READ_FUNCTIONS:
            raise ValueError(f"function {self.function} is not a register read (3 or 4)")
        if not 1 <= len(self.registers) <= MAX_READ:
            raise ValueError(f"a read answers 1..{MAX_READ} registers")
        for value in self.registers:
            _check_u16("register value", value)


@dataclass(frozen=True, slots=True)
class WriteResponse:
    """FC06 echoes address and value; FC16 answers address and register count."""

    unit: int
    function: int
    address: int
    value: int

    def __post_init__(self) -> None:
        _check_unit(self.unit)
        if self.function not in WRITE_FUNCTIONS:
            raise ValueError(f"function {self.function} is not a register write (6 or 16)")
        _check_u16("address", self.address)
        _check_u16("value", self.value)


@dataclass(frozen=True, slots=True)
class ExceptionResponse:
    """A Modbus exception: the request's function with bit 7 set, and a code."""

    unit: int
    function: int
    code: int

    def __post_init__(self) -> None:
        _check_unit(self.unit)
        if not 1 <= self.function <= 0x7F:
            raise ValueError(f"function {self.function} is not in 1..127")
        if not 1 <= self.code <= 0xFF:
            raise ValueError(f"exception code {self.code} is not in 1..255")


Request: TypeAlias = ReadRequest | WriteRequest
Response: TypeAlias = ReadResponse | WriteResponse | ExceptionResponse


def encode_pdu(frame: Request | Response) -> bytes:
    """The PDU of ``frame``: function code and data, without unit address or checksum."""
    if isinstance(frame, ReadRequest):
        return struct.pack(">BHH", frame.function, frame.address, frame.count)
    if isinstance(frame, WriteRequest):
        if frame.function == 6:
            return struct.pack(">BHH", 6, frame.address, frame.values[0])
        count = len(frame.values)
        return struct.pack(f">BHHB{count}H", 16, frame.address, count, 2 * count, *frame.values)
    if isinstance(frame, ReadResponse):
        count = len(frame.registers)
        return struct.pack(f">BB{count}H", frame.function, 2 * count, *frame.registers)
    if isinstance(frame, WriteResponse):
        return struct.pack(">BHH", frame.function, frame.address, frame.value)
    return struct.pack(">BB", frame.function | 0x80, frame.code)


def encode(frame: Request | Response) -> bytes:
    """The RTU frame for ``frame``, CRC included."""
    return _with_crc(bytes([frame.unit]) + encode_pdu(frame))


def encode_tcp(transaction: int, frame: Request | Response) -> bytes:
    """The Modbus TCP ADU for ``frame``: MBAP header (transaction id, protocol 0, length,
    unit) and the PDU; TCP carries no CRC."""
    if not 0 <= transaction <= 0xFFFF:
        raise ValueError(f"transaction id {transaction} is not a u16")
    pdu = encode_pdu(frame)
    return struct.pack(">HHHB", transaction, 0, len(pdu) + 1, frame.unit) + pdu


def decode_pdu_response(unit: int, pdu: bytes) -> Response:
    """The answer in ``pdu`` (function code and data) from ``unit``; FrameError if malformed."""
    if not pdu:
        raise FrameError("empty PDU")
    function = pdu[0]
    try:
        if function & 0x80:
            if len(pdu) != 2:
                raise ValueError(f"exception answer of {len(pdu)} bytes")
            return ExceptionResponse(unit, function & 0x7F, pdu[1])
        if function in READ_FUNCTIONS:
            if len(pdu) < 2 or pdu[1] % 2 or len(pdu) != 2 + pdu[1]:
                raise ValueError("byte count does not match the answer's length")
            return ReadResponse(unit, function, struct.unpack(f">{pdu[1] // 2}H", pdu[2:]))
        if function in WRITE_FUNCTIONS:
            if len(pdu) != 5:
                raise ValueError(f"write answer of {len(pdu)} bytes")
            address, value = struct.unpack(">HH", pdu[1:5])
            return WriteResponse(unit, function, address, value)
    except (ValueError, struct.error) as exc:
        raise FrameError(f"bad response: {exc}") from None
    raise FrameError(f"function {function} is not one this codec decodes")


def decode_tcp_response(buffer: bytes) -> tuple[int, tuple[int, Response] | None]:
    """A Modbus TCP master's view: ``(consumed, (transaction id, answer))`` for the ADU at
    the start of ``buffer``; ``(0, None)`` until it is complete. A length no server sends is a
    FrameError that skips the whole buffer: a TCP stream out of step cannot be resynchronised
    byte by byte, the connection has to go."""
    if len(buffer) < 7:
        return 0, None
    transaction, protocol, length, unit = struct.unpack(">HHHB", buffer[:7])
    if protocol != 0 or not 2 <= length <= 254:
        raise FrameError(
            f"MBAP header with protocol {protocol} and length {length}", skip=len(buffer)
        )
    total = 6 + length
    if len(buffer) < total:
        return 0, None
    return total, (transaction, decode_pdu_response(unit, buffer[7:total]))


def _checked(buffer: bytes, length: int) -> bytes:
    """The first ``length`` bytes if their CRC is right; FrameError (skip 1) if not."""
    frame = buffer[:length]
    if crc16(frame[:-2]) != struct.unpack("<H", frame[-2:])[0]:
        raise FrameError(f"CRC error in a {length}-byte frame starting {frame[:2].hex(' ')}")
    return frame


def decode_request(buffer: bytes) -> tuple[int, Request | None]:
    """A slave's view: the request at the start of ``buffer``.

    Returns ``(0, None)`` until the frame is complete; raises :class:`FrameError` for a bad CRC,
    an unknown function or impossible fields (drop ``skip`` bytes and try again).
    """
    if len(buffer) < 2:
        return 0, None
    function = buffer[1]
    if function in READ_FUNCTIONS or function == 6:
        length = 8
    elif function == 16:
        if len(buffer) < 7:
            return 0, None
        length = 9 + buffer[6]
    else:
        raise FrameError(f"function {function} is not one this codec decodes")
    if len(buffer) < length:
        return 0, None
    frame = _checked(buffer, length)
    unit = frame[0]
    try:
        if function in READ_FUNCTIONS:
            address, count = struct.unpack(">HH", frame[2:6])
            return length, ReadRequest(unit, function, address, count)
        if function == 6:
            address, value = struct.unpack(">HH", frame[2:6])
            return length, WriteRequest(unit, 6, address, (value,))
        address, count, byte_count = struct.unpack(">HHB", frame[2:7])
        if byte_count != 2 * count:
            raise ValueError(f"byte count {byte_count} does not match {count} registers")
        values = struct.unpack(f">{count}H", frame[7 : 7 + byte_count])
        return length, WriteRequest(unit, 16, address, values)
    except ValueError as exc:
        raise FrameError(f"bad request: {exc}") from None


def decode_response(buffer: bytes) -> tuple[int, Response | None]:
    """A master's view: the answer at the start of ``buffer``; same contract as
    :func:`decode_request`."""
    if len(buffer) < 3:
        return 0, None
    function = buffer[1]
    if function & 0x80:
        length = 5
    elif function in READ_FUNCTIONS:
        length = 5 + buffer[2]
    elif function in WRITE_FUNCTIONS:
        length = 8
    else:
        raise FrameError(f"function {function} is not one this codec decodes")
    if len(buffer) < length:
        return 0, None
    frame = _checked(buffer, length)
    return length, decode_pdu_response(frame[0], frame[1:-2])
