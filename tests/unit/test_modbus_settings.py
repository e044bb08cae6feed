"""Bus settings and device lists are checked when built, before anything touches a wire."""

from __future__ import annotations

import pytest

from drivers.modbus import ModbusBus, PolledDevice, RtuSettings, TcpSettings, load_model
from drivers.types import DeviceStatus, Reading

EFM = load_model("efm-ref")


def ignore(_: Reading | DeviceStatus) -> None:
    pass


@pytest.mark.parametrize(
    ("baudrate", "gap_ms"),
    [(9600, 4.010), (19200, 2.005), (38400, 1.750), (115200, 1.750), (4800, 8.021)],
)
def test_rtu_frame_gap_is_t35(baudrate: int, gap_ms: float) -> None:
    # Modbus over Serial Line v1.02: 11-bit characters; fixed 1.75 ms above 19200 baud.
    assert RtuSettings("/dev/ttyUSB0", baudrate).frame_gap * 1000 == pytest.approx(gap_ms, abs=5e-4)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: TcpSettings("", 502), "host must not be empty"),
        (lambda: TcpSettings("h", 0), "port 0 is not in 1..65535"),
        (lambda: TcpSettings("h", 502, timeout=0), "timeout must be a positive"),
        (lambda: RtuSettings("/dev/x", parity="X"), "parity must be N, E or O"),  # type: ignore[arg-type]
        (lambda: RtuSettings("/dev/x", stopbits=3), "stopbits must be 1 or 2"),
        (lambda: RtuSettings("/dev/x", baudrate=0), "baudrate 0 must be positive"),
        (lambda: PolledDevice("d", EFM, 1, 0), "poll_interval must be positive"),
        (lambda: PolledDevice("d", EFM, True, 1.0), "address must be an integer"),
    ],
)
def test_settings_refuse_nonsense(build: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build()  # type: ignore[operator]


def test_a_bus_refuses_duplicate_and_out_of_range_addresses() -> None:
    tcp = TcpSettings("127.0.0.1", 1502)
    rtu = RtuSettings("/dev/ttyUSB0")
    with pytest.raises(ValueError, match="devices a and b share address 1"):
        ModbusBus("x", tcp, [PolledDevice("a", EFM, 1, 1), PolledDevice("b", EFM, 1, 1)], ignore)
    with pytest.raises(ValueError, match="device id a is used twice"):
        ModbusBus("x", tcp, [PolledDevice("a", EFM, 1, 1), PolledDevice("a", EFM, 2, 1)], ignore)
    with pytest.raises(ValueError, match=r"address 248 is not in 1\.\.247"):
        ModbusBus("x", rtu, [PolledDevice("a", EFM, 248, 1)], ignore)
    with pytest.raises(ValueError, match=r"address 0 is not in 1\.\.247"):
        ModbusBus("x", rtu, [PolledDevice("a", EFM, 0, 1)], ignore)
    # Modbus TCP allows unit 0 and 248..255 (gateways use them).
    bus = ModbusBus(
        "x", tcp, [PolledDevice("a", EFM, 0, 1), PolledDevice("b", EFM, 255, 1)], ignore
    )
    assert bus.devices_online == {"a": None, "b": None}
