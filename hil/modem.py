"""A 4G modem simulator for the SMS fallback: the AT dialogue of a SIM800 / SIM7600.

It listens on TCP (the gateway reaches it as ``socket://127.0.0.1:PORT``, as it would a real
modem behind ser2net) and answers ``AT``, ``ATE0``, ``AT+CMGF=0|1`` and ``AT+CMGS`` in PDU
mode: the ``> `` prompt, then the hex PDU up to Ctrl-Z, then ``+CMGS: <mr>`` and ``OK``. Every
message received is decoded and kept in :attr:`ModemSimulator.messages`; ``fail_next`` makes
the next sends answer ``+CMS ERROR: <code>``, ``mute`` makes it stop answering.

    python -m hil.modem --port 7000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from dataclasses import dataclass

from edge.sms import Submitted, decode_submit

__all__ = ["ModemSimulator", "Received"]


@dataclass(frozen=True)
class Received:
    """One SMS as the network got it: the decoded PDU and the length ``AT+CMGS`` announced."""

    message: Submitted
    announced: int
    pdu: str


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
        self._server: asyncio.Server | None = None
        self._reference = 0
        self._clients: set[asyncio.Task[None]] = set()

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
            else:
                writer.write(b"\r\nERROR\r\n")
            await writer.drain()


async def _main(port: int) -> None:
    async with ModemSimulator(port=port) as modem:
        print(f"modem simulator on {modem.url}", flush=True)
        await asyncio.Event().wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Simulate a 4G modem's SMS AT commands.")
    parser.add_argument("--port", type=int, default=7000)
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_main(args.port))
