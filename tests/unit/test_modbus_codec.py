"""The Modbus RTU codec: devices.md vectors, round trips, and garbage that never escapes."""

from __future__ import annotations

import ast
from pathlib import Path
from types import ModuleType

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers import framing
from drivers.framing import Deframer, FrameError
from drivers.modbus import codec
from drivers.modbus.codec import (
    ExceptionResponse,
    ReadRequest,
    ReadResponse,
    Request,
    Response,
    WriteRequest,
    WriteResponse,
    crc16,
    decode_request,
    decode_response,
    encode,
    read_chars,
)


def test_crc_vectors_from_the_reference() -> None:
    assert crc16(bytes.fromhex("01 03 00 00 00 0A")).to_bytes(2, "little") == bytes.fromhex("C5CD")
    assert crc16(bytes.fromhex("50 03 00 3D 00 03")).to_bytes(2, "little") == bytes.fromhex("9986")


def test_read_request_vectors() -> None:
    assert encode(ReadRequest(1, 3, 0, 10)) == bytes.fromhex("01 03 00 00 00 0A C5 CD")
    # WitMotion WT901C485: roll, pitch, yaw from 0x3D at the default address 0x50.
    frame = bytes.fromhex("50 03 00 3D 00 03 99 86")
    assert encode(ReadRequest(0x50, 3, 0x3D, 3)) == frame
    assert decode_request(frame) == (8, ReadRequest(0x50, 3, 0x3D, 3))


def test_the_wire_cost_of_a_read_matches_the_reference_table() -> None:
    # devices.md: 9600 baud, 25.2 / 45.8 / 68.8 / 309.4 ms for 1 / 10 / 20 / 125 registers.
    for count, ms in ((1, 25.2), (10, 45.8), (20, 68.8), (125, 309.4)):
        assert read_chars(count) * 11 / 9600 * 1000 == pytest.approx(ms, abs=0.05)


def test_a_bad_crc_or_an_unknown_function_is_a_frame_error() -> None:
    frame = bytearray(encode(ReadRequest(1, 3, 0, 10)))
    frame[-1] ^= 1
    with pytest.raises(FrameError, match="CRC"):
        decode_request(bytes(frame))
    with pytest.raises(FrameError, match="function 99"):
        decode_request(bytes([1, 99, 0, 0]))
    # A read answer claiming 0 registers, with a valid CRC.
    empty = bytes([1, 3, 0]) + crc16(bytes([1, 3, 0])).to_bytes(2, "little")
    with pytest.raises(FrameError, match="bad response"):
        decode_response(empty)


def test_truncated_frames_wait_for_more() -> None:
    frame = encode(ReadResponse(7, 4, (1, 2, 3)))
    for cut in range(len(frame)):
        assert decode_response(frame[:cut]) == (0, None)


def test_the_deframer_resyncs_after_garbage_and_caps_its_buffer() -> None:
    good = encode(ReadRequest(2, 4, 100, 2))
    deframer: Deframer[Request] = Deframer(decode_request, limit=64)
    assert deframer.feed(b"\x07\x63\x00" + good[:3]) == []
    assert deframer.feed(good[3:] + good) == [ReadRequest(2, 4, 100, 2)] * 2
    assert deframer.errors >= 1
    assert deframer.pending == 0
    deframer.feed(bytes([1, 16, 0, 0, 0, 100, 200]) + bytes(100))  # claims a long FC16 frame
    assert deframer.pending <= 64


def test_frames_refuse_impossible_fields() -> None:
    with pytest.raises(ValueError, match="count"):
        ReadRequest(1, 3, 0, 126)
    with pytest.raises(ValueError, match="past register 65535"):
        ReadRequest(1, 3, 0xFFFF, 2)
    with pytest.raises(ValueError, match="not a register read"):
        ReadRequest(1, 6, 0, 1)
    with pytest.raises(ValueError, match=r"writes 1\.\.1"):
        WriteRequest(1, 6, 0, (1, 2))


@pytest.mark.parametrize("module", [codec, framing])
def test_the_codec_imports_no_asyncio(module: ModuleType) -> None:
    assert module.__file__ is not None
    tree = ast.parse(Path(module.__file__).read_text(encoding="utf-8"))
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert "__future__" in imported  # the walk sees imports at all
    assert "asyncio" not in imported


# --- hypothesis ---------------------------------------------------------------------------------

units = st.integers(0, 247)
u16 = st.integers(0, 0xFFFF)
requests = st.one_of(
    st.builds(
        lambda unit, function, address, count: ReadRequest(
            unit, function, min(address, 0x10000 - count), count
        ),
        units,
        st.sampled_from([3, 4]),
        u16,
        st.integers(1, 125),
    ),
    st.builds(lambda unit, a, v: WriteRequest(unit, 6, a, (v,)), units, u16, u16),
    st.builds(
        lambda unit, a, values: WriteRequest(
            unit, 16, min(a, 0x10000 - len(values)), tuple(values)
        ),
        units,
        u16,
        st.lists(u16, min_size=1, max_size=123),
    ),
)
responses = st.one_of(
    st.builds(
        lambda unit, function, registers: ReadResponse(unit, function, tuple(registers)),
        units,
        st.sampled_from([3, 4]),
        st.lists(u16, min_size=1, max_size=125),
    ),
    st.builds(WriteResponse, units, st.sampled_from([6, 16]), u16, u16),
    st.builds(ExceptionResponse, units, st.integers(1, 0x7F), st.integers(1, 255)),
)


@given(requests)
def test_requests_round_trip(request: Request) -> None:
    frame = encode(request)
    assert decode_request(frame) == (len(frame), request)


@given(responses)
def test_responses_round_trip(response: Response) -> None:
    frame = encode(response)
    assert decode_response(frame) == (len(frame), response)


@given(st.binary(max_size=300))
def test_garbage_only_ever_yields_frames_or_frame_errors(data: bytes) -> None:
    for decoder in (decode_request, decode_response):
        skip = 0
        try:
            consumed, _ = decoder(data)
        except FrameError as exc:
            consumed, skip = 0, exc.skip
        assert 0 <= consumed <= len(data)
        assert skip >= 0


@given(st.lists(st.binary(max_size=40), max_size=10), requests)
def test_after_garbage_and_a_silence_the_next_frame_is_found(
    noise: list[bytes], request: Request
) -> None:
    deframer: Deframer[Request] = Deframer(decode_request, limit=1024)
    for chunk in noise:
        deframer.feed(chunk)
    # A line goes quiet between frames; the master's frame then starts a clean buffer.
    deframer.clear()
    assert deframer.feed(encode(request)) == [request]
