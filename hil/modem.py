"""A 4G modem simulator for the SMS fallback and alarm calls: the AT dialogue of a SIM800 / SIM7600.

It listens on TCP (the gateway reaches it as ``socket://127.0.0.1:PORT``, as it would a real
modem behind ser2net) and answers ``AT``, ``ATE0``, ``AT+CMGF=0|1`` and ``AT+CMGS`` in PDU
mode: the ``> `` prompt, then the hex PDU up to Ctrl-Z, then ``+CMGS: <mr>`` and ``OK``. Every
message received is decoded and kept in :attr:`ModemSimulator.messages`; ``fail_next`` makes
the next sends answer ``+CMS ERROR: <code>``, ``mute`` makes it stop answering.

Calls: ``ATD<number>;`` answers ``OK`` and the call rings; ``AT+CLCC`` lists it (state 3,
alerting, then 0, active, once answered), ``ATH`` ends it, ``AT+CTTS=1,"<UCS2 hex>"`` (or
``=2,"<text>"``) reads text aloud (``OK``, then ``+CTTS: 0`` when done) unless ``tts`` is off.
What each number does is scripted (:meth:`ModemSimulator.script_call`): answer after some
polls, ``busy`` or ``no-carrier`` (said at the next poll, as the network does), ``no-answer``
(rings for ever), ``error`` (``ATD`` refused) or ``silent`` (``ATD`` never answered). Every
call is kept in :attr:`ModemSimulator.calls`.

    python -m hil.modem --port 7000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import Literal, cast, get_args

from edge.sms import Submitted, decode_submit

__all__ = ["CallScript", "ModemSimulator", "PlacedCall", "Received"]


@dataclass(frozen=True)
class Received:
    """One SMS as the network got it: the decoded PDU and the length ``AT+CMGS`` announced."""

    message: Submitted
    announced: int
    pdu: str


CallBehaviour = Literal["answer", "busy", "no-carrier", "no-answer", "error", "silent"]


@dataclass(frozen=True)
class CallScript:
    """What the called number does: ``answer`` after ``polls`` ``AT+CLCC`` polls, or not."""

    behaviour: CallBehaviour = "answer"
    polls: int = 1
    #: Also say ``VOICE CALL: BEGIN`` when answered, as SIM7600 does.
    voice_begin: bool = False
    #: ``busy`` / ``no-carrier`` as ``ATD``'s own final answer (a modem set to wait for the
    #: connection, ``AT+COLP=1``) rather than at the next poll.
    at_dial: bool = False


@dataclass
class PlacedCall:
    """One call as the network saw it."""

    number: str
    script: CallScript
    answered: bool = False
    ended: str = ""  # "hung up", "busy", "no carrier"
    spoken: list[str] = field(default_factory=list)
    polls: int = 0


class ModemSimulator:
    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port
        self.messages: list[Received] = []
        self.commands: list[str] = []
        #: The next N sends fail with ``+CMS ERROR: <cms_error>``.
        self.fail_next = 0
        self.cms_error = 500
        #: Stop answering at all (a modem that hung).
        self.mute = False
        self.calls: list[PlacedCall] = []
        #: What a number does when called; numbers not scripted answer at the first poll.
        self.call_scripts: dict[str, CallScript] = {}
        #: The modem reads text aloud (SIM7600); off, ``AT+CTTS`` is an ``ERROR`` (SIM800).
        self.tts = True
        self._call: PlacedCall | None = None
        self._server: asyncio.Server | None = None
        self._reference = 0
        self._clients: set[asyncio.Task[None]] = set()

    def script_call(self, number: str, behaviour: CallBehaviour, polls: int = 1) -> None:
        self.call_scripts[number] = CallScript(behaviour, polls)

    @property
    def url(self) -> str:
        return f"socket://{self.host}:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for task in list(self._clients):
                task.cancel()
            await asyncio.gather(*self._clients, return_exceptions=True)
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> ModemSimulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._clients.add(task)
        try:
            await self._dialogue(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._clients.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError, asyncio.CancelledError):
                await writer.wait_closed()

    async def _dialogue(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        pdu_mode = False
        while True:
            raw = await reader.readuntil(b"\r")
            command = raw.decode(errors="replace").strip()
            self.commands.append(command)
            if self.mute:
                continue
            upper = command.upper()
            if upper in ("AT", "ATE0", "ATE1", 'AT+CSCS="UCS2"', 'AT+CSCS="GSM"'):
                writer.write(b"\r\nOK\r\n")
            elif upper.startswith("AT+CMGF="):
                pdu_mode = upper.endswith("=0")
                writer.write(b"\r\nOK\r\n")
            elif upper.startswith("AT+CMGS="):
                if not pdu_mode:
                    writer.write(b"\r\n+CMS ERROR: 304\r\n")  # text mode is not simulated
                    continue
                announced = int(upper.split("=", 1)[1])
                writer.write(b"\r\n> ")
                await writer.drain()
                body = await reader.readuntil(b"\x1a")
                pdu = body[:-1].decode().strip()
                if self.fail_next > 0:
                    self.fail_next -= 1
                    writer.write(f"\r\n+CMS ERROR: {self.cms_error}\r\n".encode())
                elif len(pdu) // 2 - 1 != announced:
                    writer.write(b"\r\n+CMS ERROR: 304\r\n")  # length does not match the PDU
                else:
                    self._reference = (self._reference + 1) % 256
                    self.messages.append(Received(decode_submit(pdu), announced, pdu))
                    writer.write(f"\r\n+CMGS: {self._reference}\r\n\r\nOK\r\n".encode())
            elif upper.startswith("ATD") and upper.endswith(";"):
                if not self._dial(command[3:-1].strip(), writer):
                    continue
            elif upper == "AT+CLCC":
                self._list_calls(writer)
            elif upper == "ATH":
                if self._call is not None:
                    self._call.ended = "hung up"
                    self._call = None
                writer.write(b"\r\nOK\r\n")
            elif upper.startswith("AT+CTTS="):
                self._speak(command.split("=", 1)[1], writer)
            else:
                writer.write(b"\r\nERROR\r\n")
            await writer.drain()

    def _dial(self, number: str, writer: asyncio.StreamWriter) -> bool:
        """Place a call; False when the script says the modem does not answer at all."""
        script = self.call_scripts.get(number, CallScript())
        if script.behaviour == "silent":
            return False
        if script.behaviour == "error" or self._call is not None:
            writer.write(b"\r\nERROR\r\n")  # refused, or the one voice line is in use
            return True
        self._call = PlacedCall(number, script)
        self.calls.append(self._call)
        if script.at_dial and script.behaviour in ("busy", "no-carrier"):
            self._call.ended = script.behaviour.replace("-", " ")
            self._call = None
            writer.write(f"\r\n{script.behaviour.replace('-', ' ').upper()}\r\n".encode())
            return True
        writer.write(b"\r\nOK\r\n")
        return True

    def _list_calls(self, writer: asyncio.StreamWriter) -> None:
        call = self._call
        if call is not None:
            call.polls += 1
            behaviour = call.script.behaviour
            if behaviour in ("busy", "no-carrier"):
                call.ended = behaviour.replace("-", " ")
                self._call = None
                writer.write(f"\r\n{call.ended.upper()}\r\n".encode())
            else:
                if behaviour == "answer" and call.polls >= call.script.polls and not call.answered:
                    call.answered = True
                    if call.script.voice_begin:
                        writer.write(b"\r\nVOICE CALL: BEGIN\r\n")
                state = 0 if call.answered else 3
                writer.write(f'\r\n+CLCC: 1,0,{state},0,0,"{call.number}",129\r\n'.encode())
        writer.write(b"\r\nOK\r\n")

    def _speak(self, argument: str, writer: asyncio.StreamWriter) -> None:
        mode, _, quoted = argument.partition(",")
        text = quoted.strip().strip('"')
        if not self.tts or mode.strip() not in ("1", "2"):
            writer.write(b"\r\nERROR\r\n")
            return
        try:
            spoken = bytes.fromhex(text).decode("utf-16-be") if mode.strip() == "1" else text
        except ValueError:
            writer.write(b"\r\n+CME ERROR: 4\r\n")
            return
        if self._call is not None:
            self._call.spoken.append(spoken)
        writer.write(b"\r\nOK\r\n\r\n+CTTS: 0\r\n")


async def _main(port: int, calls: list[tuple[str, CallBehaviour]], tts: bool) -> None:
    async with ModemSimulator(port=port) as modem:
        modem.tts = tts
        for number, behaviour in calls:
            modem.script_call(number, behaviour)
        print(f"modem simulator on {modem.url}", flush=True)
        await asyncio.Event().wait()


def _call_script(text: str) -> tuple[str, CallBehaviour]:
    number, _, behaviour = text.partition("=")
    options = get_args(CallBehaviour)
    if behaviour not in options:
        raise argparse.ArgumentTypeError(f"NUMBER=one of {', '.join(options)}, not {text!r}")
    return number, cast(CallBehaviour, behaviour)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Simulate a 4G modem's SMS and call AT commands.")
    parser.add_argument("--port", type=int, default=7000)
    parser.add_argument(
        "--call",
        type=_call_script,
        action="append",
        default=[],
        metavar="NUMBER=BEHAVIOUR",
        help="what a called number does (answer, busy, no-carrier, no-answer, error, silent); "
        "numbers not named answer",
    )
    parser.add_argument("--no-tts", action="store_true", help="no text-to-speech (a SIM800)")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_main(args.port, args.call, not args.no_tts))
