"""Finding what answers on a bus: the installer's ``edge scan``.

Each address (and baud rate, on a serial line) gets one short read of register 0. Any answer
counts, a Modbus exception too: it proves a device listens at that address. So does an answer
that fails its CRC: something is there, but the line garbles it (wrong parity or baud rate,
no termination, a bad A/B pair), and the installer must hear of it rather than find nothing.
Devices that answered cleanly are then matched against the known models by reading each
model's whole read plan.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace

from drivers.modbus.bus import EXCEPTION_NAMES, BusSettings, RtuSettings, TcpSettings
from drivers.modbus.client import LinkDown, ModbusClient, NoAnswer, RtuClient, TcpClient
from drivers.modbus.codec import ExceptionResponse, ReadResponse, Response
from drivers.modbus.model import DeviceModel, read_plan

__all__ = ["Found", "Progress", "scan"]

#: (probes done, probes in all, what is being probed now)
Progress = Callable[[int, int, str], None]


@dataclass(frozen=True, slots=True)
class Found:
    """A device that answered."""

    address: int
    baudrate: int | None
    #: What register 0 gave: "answers", "exception N (name)", or the CRC error seen.
    answer: str
    #: Models whose every read the device answered in full.
    models: tuple[str, ...] = field(default=())
    #: Only frames that failed their checks came back: a unit is there, the line garbles it.
    garbled: bool = False


def _client(settings: BusSettings) -> ModbusClient:
    if isinstance(settings, TcpSettings):
        return TcpClient(settings.host, settings.port, settings.timeout)
    return RtuClient(
        settings.port, settings.baudrate, settings.parity, settings.stopbits, settings.timeout
    )


async def _read(
    client: ModbusClient, address: int, registers: str, start: int, count: int
) -> Response | None:
    function = 3 if registers == "holding" else 4
    try:
        return await client.read(address, function, start, count)
    except (NoAnswer, LinkDown):
        return None


async def _answers_plan(
    client: ModbusClient, address: int, model: DeviceModel, line: BusSettings
) -> bool:
    """Whether the device answers every read of the model's plan in full: a device with
    another map fails one of them (an exception for registers it lacks, or silence)."""
    for start, count in read_plan(model):
        if isinstance(line, RtuSettings):
            await asyncio.sleep(line.frame_gap)
        reply = await _read(client, address, model.registers, start, count)
        if not isinstance(reply, ReadResponse) or len(reply.registers) != count:
            return False
    return True


async def scan(
    settings: BusSettings,
    addresses: Sequence[int],
    *,
    baudrates: Sequence[int] = (),
    models: Iterable[DeviceModel] = (),
    progress: Progress | None = None,
    bad_frames: dict[int | None, int] | None = None,
) -> list[Found]:
    """Probe ``addresses`` (at each of ``baudrates`` on a serial line; default its own).

    ``bad_frames``, when given, receives the frames that failed their CRC or length check at
    each speed: a line full of them has the wrong baud rate or parity, swapped A/B wires, or
    two devices on one address. Raises ``OSError`` with the reason (no such port, busy,
    not permitted) if the port or server cannot be opened at all.
    """
    candidates = list(models)
    own: list[int | None] = [settings.baudrate] if isinstance(settings, RtuSettings) else [None]
    speeds: list[int | None] = [*baudrates] if isinstance(settings, RtuSettings) else []
    speeds = speeds or own
    total, done = len(speeds) * len(addresses), 0
    found: list[Found] = []
    for speed in speeds:
        line = settings
        if speed is not None and isinstance(settings, RtuSettings):
            line = replace(settings, baudrate=speed)
        client = _client(line)
        try:
            if not await client.connect():
                why = f": {client.last_error}" if client.last_error else ""
                raise OSError(f"cannot open {line.describe()}{why}")
            for address in addresses:
                if progress is not None:
                    at = f" at {speed} baud" if speed else ""
                    progress(done, total, f"address {address}{at}")
                if isinstance(line, RtuSettings):
                    await asyncio.sleep(line.frame_gap)
                bad_before = client.bad_frames
                try:
                    pdu: Response | None = await client.read(address, 3, 0, 1)
                except (NoAnswer, LinkDown) as exc:
                    pdu = None
                    if client.bad_frames > bad_before:
                        # The reason names the first bad frame ("CRC error in a 7-byte ...").
                        reason = exc.reason if isinstance(exc, NoAnswer) else str(exc)
                        found.append(Found(address, speed, reason, garbled=True))
                done += 1
                if pdu is None:
                    continue
                if isinstance(pdu, ExceptionResponse):
                    code = pdu.code
                    answer = f"exception {code} ({EXCEPTION_NAMES.get(code, 'unknown')})"
                else:
                    answer = "answers"
                matches = [
                    model.name
                    for model in candidates
                    if await _answers_plan(client, address, model, line)
                ]
                found.append(Found(address, speed, answer, tuple(matches)))
        finally:
            if bad_frames is not None and client.bad_frames:
                bad_frames[speed] = bad_frames.get(speed, 0) + client.bad_frames
            client.close()
    if progress is not None:
        progress(total, total, "done")
    return found
