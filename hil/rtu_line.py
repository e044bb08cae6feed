"""A simulated RS-485 line of Modbus RTU slaves, timed like the wire.

A pseudo-terminal moves bytes instantly, which would make any bus benchmark meaningless. This
simulator answers as late as a real line would: each character takes 11 bit times at the
configured baud rate, the request and the answer each occupy the line for their length, the
slave waits the t3.5 silence plus a configurable turnaround before answering, and the answer
is handed over when its last character would have arrived. It also notes requests that start
before the line has been silent for t3.5 after the previous frame (``stats.collisions``): on
a real bus those would corrupt a frame, so the master's pacing is checked too.

Faults per unit: ``silent`` (no answer), ``slow`` (answers ``delay`` seconds late), ``crc``
(a wrong CRC), ``garbage`` (random bytes instead of the answer), ``exception`` (a Modbus
exception code), ``stuck`` (values frozen whatever :meth:`RtuLine.set` says).

The frames are :mod:`drivers.modbus.codec`'s; the register images come from the device models
with :func:`drivers.modbus.model.encode`, so the gateway and the simulator share one map.

Run ``python -m hil.rtu_line --help`` for the command line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import random
import signal
import sys
import termios
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Final, Literal, TypeAlias, get_args

from drivers.framing import Deframer
from drivers.modbus.codec import (
    ExceptionResponse,
    ReadRequest,
    ReadResponse,
    Request,
    Response,
    WriteRequest,
    WriteResponse,
    decode_request,
    encode,
)
from drivers.modbus.model import DeviceModel, decode, load_model
from drivers.modbus.model import encode as encode_values
from hil.pty_port import PtyPort

__all__ = ["Fault", "LineStats", "RtuLine", "char_time", "frame_gap", "main"]

log = logging.getLogger(__name__)

Fault: TypeAlias = Literal["none", "silent", "slow", "crc", "garbage", "exception", "stuck"]
FAULTS: Final[tuple[str, ...]] = get_args(Fault)
_CHUNK: Final = 4096


def char_time(baudrate: int) -> float:
    """Seconds one character takes on the wire: 11 bits whatever the parity."""
    return 11 / baudrate


def frame_gap(baudrate: int) -> float:
    """The t3.5 inter-frame silence; fixed at 1.75 ms above 19200 baud."""
    return 0.00175 if baudrate > 19200 else 3.5 * char_time(baudrate)


@dataclass(slots=True)
class LineStats:
    """What the line saw; counters only grow."""

    requests: int = 0
    answers: int = 0
    #: Requests that began less than t3.5 after the line went quiet; those sent while a frame
    #: was still on the wire are lost, as they would be on a real bus.
    collisions: int = 0
    #: Bytes from the master that did not form a valid request.
    bad_frames: int = 0
    #: Requests sent at another baud rate than the line's (the slaves would read noise).
    wrong_baud: int = 0
    #: Seconds the line carried characters (requests and answers), for utilisation figures.
    busy_seconds: float = 0.0


@dataclass(slots=True)
class _Unit:
    address: int
    model: DeviceModel
    values: dict[str, float]
    fault: Fault = "none"
    delay: float = 0.0
    exception_code: int = 4
    frozen: dict[int, int] | None = None
    requests: int = 0
    first: int = field(init=False)
    end: int = field(init=False)

    def __post_init__(self) -> None:
        self.first = min(point.address for point in self.model.points)
        self.end = max(point.end for point in self.model.points)

    def image(self) -> dict[int, int]:
        if self.frozen is not None:
            return self.frozen
        return encode_values(self.model, self.values)


class RtuLine:
    """Modbus RTU slaves on a line-timed pseudo-terminal. Use ``async with RtuLine(...)``.

    ``units`` maps slave addresses to models (a model or a shipped model's name). ``path`` is
    the serial port the master opens; ``link`` additionally links it at a fixed path.
    """

    def __init__(
        self,
        units: Mapping[int, DeviceModel | str],
        *,
        baudrate: int = 9600,
        turnaround: float = 0.0,
        link: str | os.PathLike[str] | None = None,
        seed: int | None = None,
    ) -> None:
        if not units:
            raise ValueError("a line needs at least one unit")
        if baudrate <= 0:
            raise ValueError(f"baudrate {baudrate} must be positive")
        if turnaround < 0:
            raise ValueError("turnaround must not be negative")
        self._units: dict[int, _Unit] = {}
        for address, model in units.items():
            if isinstance(address, bool) or not isinstance(address, int) or not 1 <= address <= 247:
                raise ValueError(f"unit address {address!r} is not in 1..247")
            resolved = load_model(model) if isinstance(model, str) else model
            typical = {point.name: point.typical for point in resolved.points}
            self._units[address] = _Unit(address, resolved, typical)
        self.baudrate = baudrate
        self.turnaround = turnaround
        self.stats = LineStats()
        self._char = char_time(baudrate)
        self._gap = frame_gap(baudrate)
        self._port = PtyPort(link)
        self._random = random.Random(seed)
        self._deframer: Deframer[Request] = Deframer(decode_request, limit=1024)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._line_free = 0.0
        self._last_rx = 0.0

    # -- lifecycle ------------------------------------------------------------------------------

    async def __aenter__(self) -> RtuLine:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    async def start(self) -> None:
        """Open the pseudo-terminal and start answering."""
        if self._port.is_open:
            raise RuntimeError("the line is already running")
        self._loop = asyncio.get_running_loop()
        self._port.open(self._readable)

    def stop(self) -> None:
        """Stop answering and close the pseudo-terminal. Safe to call twice."""
        self._port.close()

    @property
    def path(self) -> str:
        """The pty the gateway opens (``/dev/pts/N``); empty until started."""
        return self._port.path

    # -- in-process control ---------------------------------------------------------------------

    def _unit(self, address: int) -> _Unit:
        try:
            return self._units[address]
        except KeyError:
            raise ValueError(f"no unit at address {address!r} on this line") from None

    def set(self, address: int, point: str, value: float) -> None:
        """Give a point of a unit a new value; ``ValueError`` for unknown points or bad values."""
        unit = self._unit(address)
        encode_values(unit.model, {point: value})
        unit.values[point] = float(value)

    def values(self, address: int) -> dict[str, float]:
        """The unit's values as it would serve them now."""
        unit = self._unit(address)
        image = unit.image()
        span = [image.get(register, 0) for register in range(unit.first, unit.end)]
        return decode(unit.model, unit.first, span)

    def set_fault(self, address: int, fault: Fault, *, delay: float = 0.0, code: int = 4) -> None:
        """Inject a fault into one unit (``"none"`` clears it); see the module docstring."""
        if fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r} (faults: {', '.join(FAULTS)})")
        if delay < 0 or not 1 <= code <= 255:
            raise ValueError("delay must not be negative and code must be 1..255")
        unit = self._unit(address)
        unit.fault, unit.delay, unit.exception_code = fault, delay, code
        unit.frozen = unit.image() if fault == "stuck" else None

    def requests(self, address: int) -> int:
        """Requests that reached the unit, answered or not."""
        return self._unit(address).requests

    def read_time(self, count: int) -> float:
        """Seconds one read of ``count`` registers occupies this line, silences included."""
        return (8 + 5 + 2 * count) * self._char + 2 * self._gap + self.turnaround

    # -- the wire -------------------------------------------------------------------------------

    def _readable(self) -> None:
        assert self._loop is not None
        try:
            data = os.read(self._port.device_fd, _CHUNK)
        except BlockingIOError:
            return
        except OSError as exc:
            log.warning("rtu line: read failed (%s); no longer answering", exc)
            self._port.stop_reading()
            return
        now = self._loop.time()
        if now - self._last_rx > self._gap:
            # RTU frames are delimited by silence: whatever was half received is abandoned.
            self._deframer.clear()
        self._last_rx = now
        errors = self._deframer.errors
        for request in self._deframer.feed(data):
            self._on_request(request, now)
        self.stats.bad_frames += self._deframer.errors - errors

    def _on_request(self, request: Request, now: float) -> None:
        assert self._loop is not None
        stats = self.stats
        stats.requests += 1
        if not self._master_speed_matches():
            # A pty carries bytes whatever the speed, but the port's settings say what the
            # master configured: at another baud rate real slaves would only see noise.
            stats.wrong_baud += 1
            return
        if now < self._line_free + self._gap - 1e-4:
            stats.collisions += 1
            if now < self._line_free:
                # Sent over a frame still on the wire (a late answer): on RS-485 both are
                # garbled, so no slave sees this request.
                return
        start = now
        request_end = start + len(encode(request)) * self._char
        stats.busy_seconds += request_end - start
        self._line_free = request_end
        unit = self._units.get(request.unit)
        if unit is None:
            return
        unit.requests += 1
        if unit.fault == "silent":
            return
        frame = encode(self._answer(unit, request))
        if unit.fault == "crc":
            frame = frame[:-1] + bytes([frame[-1] ^ 0xFF])
        elif unit.fault == "garbage":
            frame = bytes(self._random.randrange(256) for _ in frame)
        answer_start = request_end + self._gap + self.turnaround
        if unit.fault == "slow":
            answer_start += unit.delay
        answer_end = answer_start + len(frame) * self._char
        stats.busy_seconds += answer_end - answer_start
        self._line_free = answer_end
        # Answers still in flight at stop() find the port closed and are dropped.
        self._loop.call_at(answer_end, self._send, frame)

    def _master_speed_matches(self) -> bool:
        wanted = getattr(termios, f"B{self.baudrate}", None)
        try:
            speed = termios.tcgetattr(self._port.line_fd)[5]
        except termios.error:
            return True
        return wanted is None or speed == wanted

    def _send(self, frame: bytes) -> None:
        if not self._port.is_open:
            return
        with contextlib.suppress(BlockingIOError):
            os.write(self._port.device_fd, frame)
            self.stats.answers += 1

    def _answer(self, unit: _Unit, request: Request) -> Response:
        if unit.fault == "exception":
            return ExceptionResponse(unit.address, request.function, unit.exception_code)
        model = unit.model
        if isinstance(request, ReadRequest):
            if request.function != model.function_code:
                return ExceptionResponse(unit.address, request.function, 1)
            first, end = request.address, request.address + request.count
            if first < unit.first or end > unit.end:
                return ExceptionResponse(unit.address, request.function, 2)
            image = unit.image()
            if model.max_gap == 0 and any(register not in image for register in range(first, end)):
                # A product that declares no gaps rejects reads of registers it does not have.
                return ExceptionResponse(unit.address, request.function, 2)
            registers = tuple(image.get(register, 0) for register in range(first, end))
            return ReadResponse(unit.address, request.function, registers)
        return self._write(unit, request)

    def _write(self, unit: _Unit, request: WriteRequest) -> Response:
        model = unit.model
        end = request.address + len(request.values)
        image = dict(unit.image())
        for offset, value in enumerate(request.values):
            image[request.address + offset] = value
        touched = [p for p in model.points if p.address < end and p.end > request.address]
        if not touched or any(point.access != "rw" for point in touched):
            return ExceptionResponse(unit.address, request.function, 2)
        span = [image.get(register, 0) for register in range(unit.first, unit.end)]
        decoded = decode(model, unit.first, span)
        for point in touched:
            unit.values[point.name] = decoded[point.name]
        value = request.values[0] if request.function == 6 else len(request.values)
        return WriteResponse(unit.address, request.function, request.address, value)


# -- command line ---------------------------------------------------------------------------


def _addresses(text: str) -> list[int]:
    addresses: list[int] = []
    try:
        for part in text.split(","):
            low, sep, high = part.partition("-")
            addresses.extend(range(int(low), int(high) + 1) if sep else [int(low)])
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected addresses like 1-16,20, got {text!r}") from None
    return addresses


def _fault(text: str) -> tuple[int, Fault]:
    address, sep, fault = text.partition("=")
    if not sep or not address.isdigit() or fault not in FAULTS:
        raise argparse.ArgumentTypeError(
            f"expected ADDRESS=FAULT with FAULT one of {', '.join(FAULTS)}, got {text!r}"
        )
    return int(address), fault  # type: ignore[return-value]


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m hil.rtu_line``: serve a line-timed RTU bus until SIGINT/SIGTERM."""
    parser = argparse.ArgumentParser(
        prog="python -m hil.rtu_line",
        description="Modbus RTU slaves on a pseudo-terminal, answering with real line timing.",
    )
    parser.add_argument("--link", required=True, metavar="PATH", help="link the port here")
    parser.add_argument("--model", default="efm-ref", help="device model (default: efm-ref)")
    parser.add_argument("--addresses", type=_addresses, default=[1], metavar="1-16,20")
    parser.add_argument("--baudrate", type=int, default=9600)
    parser.add_argument("--turnaround", type=float, default=0.0, metavar="SECONDS")
    parser.add_argument("--fault", type=_fault, action="append", default=[], metavar="ADDR=FAULT")
    parser.add_argument("--delay", type=float, default=1.0, help="seconds late for 'slow'")
    args = parser.parse_args(argv)

    async def serve() -> int:
        try:
            line = RtuLine(
                dict.fromkeys(args.addresses, args.model),
                baudrate=args.baudrate,
                turnaround=args.turnaround,
                link=args.link,
            )
            for address, fault in args.fault:
                line.set_fault(address, fault, delay=args.delay)
            await line.start()
        except (OSError, ValueError) as exc:
            print(f"rtu line: {exc}", file=sys.stderr)
            return 1
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        print(
            f"modbus-rtu {args.link} ({line.path}, {args.baudrate} baud) "
            f"units {','.join(map(str, args.addresses))} model {args.model}",
            flush=True,
        )
        try:
            await stop.wait()
        finally:
            line.stop()
        return 0

    return asyncio.run(serve())


if __name__ == "__main__":
    sys.exit(main())
