"""WitMotion UART and HLK-LD2410 codecs: devices.md vectors, round trips, garbage."""

from __future__ import annotations

import ast
import math
from pathlib import Path
from types import ModuleType

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.framing import Deframer, FrameError
from drivers.ld2410 import codec as radar
from drivers.tilt import displacement_mm
from drivers.witmotion import codec as wit

# --- WitMotion ------------------------------------------------------------------------------


def test_witmotion_vectors_from_the_reference() -> None:
    first = bytes.fromhex("55 53 1C 07 72 FC 00 40 00 00 79")
    assert wit.encode(wit.AngleFrame.from_degrees(10, -5, 90)) == first
    second = bytes.fromhex("55 53 5B 00 D2 FF 00 00 C4 09 A1")
    assert wit.encode(wit.AngleFrame.from_degrees(0.5, -0.25, 0, temperature=25.0)) == second
    consumed, frame = wit.decode(second)
    assert consumed == 11
    assert isinstance(frame, wit.AngleFrame)
    assert frame.roll_deg == pytest.approx(0.5, abs=0.0055)
    assert frame.pitch_deg == pytest.approx(-0.25, abs=0.0055)
    assert frame.temperature == 25.0


def test_witmotion_config_commands() -> None:
    assert wit.encode(wit.UNLOCK) == bytes.fromhex("FF AA 69 88 B5")
    assert wit.encode(wit.SAVE) == bytes.fromhex("FF AA 00 00 00")
    assert wit.decode_command(b"\x00\x12" + wit.encode(wit.UNLOCK)) == (2, None)
    assert wit.decode_command(wit.encode(wit.UNLOCK)) == (5, wit.UNLOCK)


def test_witmotion_bad_checksum_and_unknown_type() -> None:
    frame = bytearray(wit.encode(wit.AngleFrame(1, 2, 3)))
    frame[10] ^= 0x01
    with pytest.raises(FrameError, match="checksum"):
        wit.decode(bytes(frame))
    with pytest.raises(FrameError, match="unknown type"):
        wit.decode(b"\x55\x99")
    assert wit.decode(bytes(frame[:7])) == (0, None)


def test_witmotion_resyncs_inside_a_corrupted_frame() -> None:
    good = wit.encode(wit.AngleFrame.from_degrees(1, 2, 3))
    deframer: Deframer[wit.Frame] = Deframer(wit.decode, limit=256)
    corrupted = bytearray(good)
    corrupted[5] ^= 0xFF
    frames = deframer.feed(b"\x00\x55\x53" + bytes(corrupted) + good + b"\x55")
    assert frames == [wit.AngleFrame.from_degrees(1, 2, 3)]
    assert deframer.errors >= 1
    assert deframer.pending == 1


def test_displacement_over_the_gauge_length() -> None:
    # devices.md: 4 mm over 1 m is 0.229 degrees; over a 3 m storey 0.076 degrees.
    assert displacement_mm(0.229, 1.0) == pytest.approx(4.0, abs=0.01)
    assert displacement_mm(0.0764, 3.0) == pytest.approx(4.0, abs=0.01)
    assert displacement_mm(-0.229, 1.0) == pytest.approx(-4.0, abs=0.01)


angles = st.integers(-0x8000, 0x7FFF)


@given(angles, angles, angles, angles)
def test_witmotion_angle_round_trip(roll: int, pitch: int, yaw: int, extra: int) -> None:
    frame = wit.AngleFrame(roll, pitch, yaw, extra)
    assert wit.decode(wit.encode(frame)) == (11, frame)


@given(
    st.sampled_from([k for k in wit.TYPES if k != wit.ANGLE]),
    st.tuples(angles, angles, angles, angles),
)
def test_witmotion_data_round_trip(kind: int, fields: tuple[int, int, int, int]) -> None:
    frame = wit.DataFrame(kind, fields)
    assert wit.decode(wit.encode(frame)) == (11, frame)


@given(st.floats(-180, 180), st.floats(-180, 180))
def test_witmotion_degrees_survive_to_one_lsb(roll: float, pitch: float) -> None:
    frame = wit.AngleFrame.from_degrees(roll, pitch, 0)
    # +180 and -180 are one direction: compare around the circle.
    for got, wanted in ((frame.roll_deg, roll), (frame.pitch_deg, pitch)):
        error = (got - wanted + 180) % 360 - 180
        assert math.isclose(error, 0, abs_tol=90 / 32768 + 1e-9)


# --- LD2410 ---------------------------------------------------------------------------------

RADAR_VECTOR = bytes.fromhex("F4 F3 F2 F1 0D 00 02 AA 03 78 00 2D 5F 00 3C 6E 00 55 00 F8 F7 F6 F5")


def test_ld2410_vector_from_the_reference() -> None:
    frame = radar.TargetFrame(3, 120, 45, 95, 60, 110)
    assert radar.encode(frame) == RADAR_VECTOR
    assert radar.decode(RADAR_VECTOR) == (23, frame)
    assert frame.presence


def test_ld2410_config_commands_and_acks() -> None:
    assert radar.encode(radar.ENABLE_CONFIG) == bytes.fromhex(
        "FD FC FB FA 04 00 FF 00 01 00 04 03 02 01"
    )
    assert radar.encode(radar.END_CONFIG) == bytes.fromhex("FD FC FB FA 02 00 FE 00 04 03 02 01")
    ack = radar.ENABLE_CONFIG.ack(extra=b"\x01\x00\x40\x00")
    consumed, decoded = radar.decode(radar.encode(ack))
    assert consumed == 18
    assert isinstance(decoded, radar.CommandFrame)
    assert decoded.command == 0x01FF
    assert decoded.is_ack
    assert decoded.status == 0
    assert radar.ENABLE_CONFIG.status is None


def test_ld2410_bad_frames_are_frame_errors() -> None:
    bad_tail = RADAR_VECTOR[:-1] + b"\x00"
    with pytest.raises(FrameError, match="tail"):
        radar.decode(bad_tail)
    with pytest.raises(FrameError, match="impossible"):
        radar.decode(radar.DATA_HEAD + b"\xff\x7f")
    wrong_state = bytearray(RADAR_VECTOR)
    wrong_state[8] = 7
    with pytest.raises(FrameError, match="target state"):
        radar.decode(bytes(wrong_state))
    for cut in range(len(RADAR_VECTOR)):
        assert radar.decode(RADAR_VECTOR[:cut])[1] is None


@pytest.mark.parametrize(
    ("state", "name"),
    [
        (radar.CALIBRATING, "in progress"),
        (radar.CALIBRATED, "done"),
        (radar.CALIBRATION_FAILED, "failed"),
    ],
)
def test_ld2410_calibration_states_decode_and_say_nothing_about_presence(
    state: int, name: str
) -> None:
    # Firmware 2.44+ reports its background-noise calibration as target states 4-6.
    frame = bytearray(RADAR_VECTOR)
    frame[8] = state
    consumed, decoded = radar.decode(bytes(frame))
    assert consumed == len(RADAR_VECTOR), name
    assert isinstance(decoded, radar.TargetFrame)
    assert decoded.state == state
    assert decoded.calibrating
    assert decoded.presence is None
    assert radar.TargetFrame(3, 1, 1, 1, 1, 1).presence is True
    assert radar.TargetFrame(0, 0, 0, 0, 0, 0).presence is False


def test_ld2410_keeps_a_split_header_and_caps_a_flood() -> None:
    deframer: Deframer[radar.Frame] = Deframer(radar.decode, limit=128)
    assert deframer.feed(b"\x00\x11" + RADAR_VECTOR[:2]) == []
    assert deframer.pending == 2
    assert deframer.feed(RADAR_VECTOR[2:]) == [radar.TargetFrame(3, 120, 45, 95, 60, 110)]
    # 1000 frames at once: all decoded, the buffer never grows past its cap.
    frames = deframer.feed(RADAR_VECTOR * 1000)
    assert deframer.pending <= 128
    assert len(frames) >= 5


distance = st.integers(0, 0xFFFF)
energy = st.integers(0, 0xFF)
targets = st.builds(
    radar.TargetFrame,
    st.integers(0, 3),
    distance,
    energy,
    distance,
    energy,
    distance,
    st.binary(max_size=radar.MAX_PAYLOAD - radar.BASIC_LENGTH),
)
commands = st.builds(radar.CommandFrame, st.integers(0, 0xFFFF), st.binary(max_size=62))


@given(st.one_of(targets, commands))
def test_ld2410_round_trip(frame: radar.Frame) -> None:
    data = radar.encode(frame)
    assert radar.decode(data) == (len(data), frame)


@pytest.mark.parametrize("decode", [wit.decode, wit.decode_command, radar.decode])
@given(data=st.binary(max_size=200))
def test_garbage_only_ever_yields_frames_or_frame_errors(decode: object, data: bytes) -> None:
    assert callable(decode)
    deframer: Deframer[object] = Deframer(decode, limit=64)
    # Any exception but FrameError (handled inside feed) fails the test.
    for start in range(0, len(data), 7):
        deframer.feed(data[start : start + 7])
    assert deframer.pending <= 64


@given(st.binary(max_size=100), targets)
def test_ld2410_finds_a_frame_after_any_garbage(noise: bytes, frame: radar.TargetFrame) -> None:
    # A wrong baud rate or line noise before the frame: the frame is still found, because
    # a header inside the noise that claims more bytes is dropped once its tail is wrong,
    # or completed and rejected. Padding after the frame lets every candidate complete.
    deframer: Deframer[radar.Frame] = Deframer(radar.decode, limit=4096)
    frames = deframer.feed(noise + radar.encode(frame) + bytes(80))
    assert frame in frames


@pytest.mark.parametrize("module", [wit, radar])
def test_codecs_import_no_asyncio(module: ModuleType) -> None:
    assert module.__file__ is not None
    tree = ast.parse(Path(module.__file__).read_text(encoding="utf-8"))
    imported = {
        (node.module or "") if isinstance(node, ast.ImportFrom) else alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    }
    assert "struct" in imported
    assert not any(name.startswith("asyncio") for name in imported)
