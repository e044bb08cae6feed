"""SMS fallback through a 4G modem (SIM800 / SIM7600 AT commands), in PDU mode with UCS2.

Alarm texts are Chinese, and SIM7600's text-mode UCS2 is reported to fail (``+CMS ERROR``), so
every message goes in PDU mode (``AT+CMGF=0``): a hex TPDU after ``AT+CMGS=<octets>``, ended by
Ctrl-Z. UCS2 holds 70 characters in one SMS; a longer text is split into parts of 67 with a
concatenation header (UDH, 8-bit reference) so phones show one message.

* :func:`submit_pdus` / :func:`decode_submit`: the codec, pure code over strings and bytes;
* :class:`Modem`: one AT dialogue over a serial port URL (``/dev/ttyUSB2``, ``socket://...``);
* :class:`SmsNotifier`: which alarms become messages, the rate limits, the send queue, and an
  event for every result (``sms-sent`` / ``sms-failed``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal
from zoneinfo import ZoneInfo

from drivers.serial_link import SerialLink
from edge.config.terms import PHONE_NUMBER
from edge.contract import EventKind
from edge.log import fields
from edge.notify import SEVERITY_WORDS, HourlyLimit, calls_for, notice_fields
from edge.rules import Transition

if TYPE_CHECKING:
    from edge.config.model import Sms

__all__ = [
    "CallResult",
    "Modem",
    "ModemError",
    "ModemLine",
    "SmsNotifier",
    "alarm_text",
    "decode_submit",
    "submit_pdus",
]

log = logging.getLogger("edge.sms")

#: UCS2 code units in one SMS, and in each part of a concatenated one (6 octets of UDH).
SINGLE_UNITS = 70
PART_UNITS = 67
#: Relative validity period 0xA7: 24 hours.
VALIDITY = 0xA7
CTRL_Z = b"\x1a"
ESC = b"\x1b"


#: The site file's own check of a phone number (edge/config/model.py), so both agree.
_NUMBER = PHONE_NUMBER
#: Octets of the validity period by its format (TP-VPF, bits 3-4 of the first octet): none,
#: enhanced (7), relative (1), absolute (7, a time stamp).
_VALIDITY_OCTETS = {0x00: 0, 0x08: 7, 0x10: 1, 0x18: 7}


class ModemError(Exception):
    """The modem refused or did not answer; the message says what it said."""


def _semi_octets(digits: str) -> str:
    padded = digits + ("F" if len(digits) % 2 else "")
    return "".join(padded[i + 1] + padded[i] for i in range(0, len(padded), 2))


def submit_pdus(number: str, text: str, reference: int = 0) -> list[str]:
    """The SMS-SUBMIT TPDUs (hex, with a leading ``00``: the SIM's own SMS centre) carrying
    ``text`` to ``number`` in UCS2; one for a short text, several for a long one.

    ``AT+CMGS=`` takes each PDU's length in octets *without* that leading ``00``.
    """
    # ASCII digits only: str.isdigit() also takes full-width and Arabic-Indic digits, whose
    # semi-octets would not be hex.
    if not _NUMBER.fullmatch(number):
        raise ValueError(f"not a phone number: {number!r} (+ then 3-20 digits 0-9)")
    digits = number.lstrip("+")
    address_type = "91" if number.startswith("+") else "81"
    address = f"{len(digits):02X}{address_type}{_semi_octets(digits)}"
    units = text.encode("utf-16-be")
    if len(units) // 2 <= SINGLE_UNITS:
        chunks = [units]
    else:
        chunks = []
        start = 0
        while start < len(units):
            end = min(start + PART_UNITS * 2, len(units))
            # Never split a surrogate pair (a character outside the BMP) across two parts.
            if end < len(units) and 0xD8 <= units[end - 2] <= 0xDB:
                end -= 2
            chunks.append(units[start:end])
            start = end
        if len(chunks) > 255:
            raise ValueError("text too long for one concatenated SMS (255 parts)")
    pdus = []
    for index, chunk in enumerate(chunks, start=1):
        if len(chunks) == 1:
            first, header = 0x11, b""
        else:
            first = 0x51  # UDHI: the user data starts with a header
            header = bytes([5, 0, 3, reference & 0xFF, len(chunks), index])
        user_data = header + chunk
        pdus.append(
            f"00{first:02X}00{address}0008{VALIDITY:02X}{len(user_data):02X}{user_data.hex().upper()}"
        )
    return pdus


@dataclass(frozen=True)
class Submitted:
    """What :func:`decode_submit` finds in a TPDU."""

    number: str
    text: str
    reference: int | None = None
    part: int = 1
    parts: int = 1


def decode_submit(pdu: str) -> Submitted:
    """Read back an SMS-SUBMIT in UCS2 as sent after ``AT+CMGS`` (SMSC field first).

    Raises ValueError for anything that is not one: not hex, cut short, not UCS2.
    """
    try:
        return _decode_submit(bytes.fromhex(pdu))
    except IndexError:
        raise ValueError(f"SMS-SUBMIT cut short ({len(pdu) // 2} octets)") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"user data is not UCS2: {exc}") from None


def _decode_submit(data: bytes) -> Submitted:
    at = 1 + data[0]  # skip the SMSC field
    first = data[at]
    at += 2  # first octet, message reference
    length, kind = data[at], data[at + 1]
    at += 2
    octets = (length + 1) // 2
    swapped = data[at : at + octets].hex().upper()
    digits = "".join(swapped[i + 1] + swapped[i] for i in range(0, len(swapped), 2))[:length]
    at += octets
    pid, dcs = data[at], data[at + 1]
    if pid != 0 or dcs != 0x08:
        raise ValueError(f"not a UCS2 message (PID {pid:#x}, DCS {dcs:#x})")
    at += 2
    at += _VALIDITY_OCTETS[first & 0x18]
    user_length = data[at]
    user = data[at + 1 : at + 1 + user_length]
    if len(user) != user_length:
        raise IndexError(user_length)
    reference, part, parts = None, 1, 1
    if first & 0x40:
        header_length = user[0]
        header = user[1 : 1 + header_length]
        if len(header) != header_length:
            raise IndexError(header_length)
        if header_length >= 5 and header[0] == 0 and header[1] == 3:
            reference, parts, part = header[2], header[3], header[4]
        user = user[1 + header_length :]
    number = ("+" if kind == 0x91 else "") + digits
    return Submitted(number, user.decode("utf-16-be"), reference, part, parts)


class ModemLine:
    """One AT dialogue at a time on the modem, and an SMS before any call.

    A message waiting for the line goes before a call waiting for it, and a call that is
    ringing sees :attr:`sms_waiting` between its polls and hangs up to let the message
    through (docs/rules.md, Phone calls): an alarm's text never waits behind a ringing phone.
    """

    def __init__(self) -> None:
        self._busy = False
        self._messages_waiting = 0
        self._free = asyncio.Event()

    @property
    def sms_waiting(self) -> bool:
        return self._messages_waiting > 0

    @contextlib.asynccontextmanager
    async def hold(self, *, sms: bool) -> AsyncIterator[None]:
        if sms:
            self._messages_waiting += 1
        try:
            while self._busy or (not sms and self._messages_waiting):
                self._free.clear()
                await self._free.wait()
        finally:
            if sms:
                self._messages_waiting -= 1
                self._free.set()  # a call may wait for the last message to go
        self._busy = True
        try:
            yield
        finally:
            self._busy = False
            self._free.set()


#: How a call ended, by the modem's final result or unsolicited code.
CallOutcome = Literal["answered", "busy", "no-carrier", "no-answer", "error", "gave-way"]
_ENDINGS: dict[bytes, CallOutcome] = {
    b"BUSY": "busy",
    b"NO CARRIER": "no-carrier",
    b"NO ANSWER": "no-answer",
    b"NO DIALTONE": "no-carrier",
}
#: ``+CLCC: <id>,<dir>,<stat>,<mode>,...``: a call we placed (dir 0), voice (mode 0), its state.
_CLCC = re.compile(rb"\+CLCC:\s*\d+,\s*0,\s*(\d),\s*0")
#: SIM7600's unsolicited code when the called party picks up.
_VOICE_BEGIN = b"VOICE CALL: BEGIN"
#: How long the modem may take to read the alarm aloud once (``+CTTS: 0`` when done).
SPEECH_TIME = 30.0


@dataclass(frozen=True)
class CallResult:
    """What one call came to: the outcome, the modem's words, seconds it rang."""

    outcome: CallOutcome
    detail: str
    rang: float
    spoken: bool = False


class Modem:
    """AT dialogue with a modem on a serial port URL, one at a time (:class:`ModemLine`)."""

    def __init__(
        self,
        port: str,
        baudrate: int = 115200,
        *,
        timeout: float = 60.0,
        poll: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.port = port
        self.baudrate = baudrate
        self.timeout = timeout
        #: Seconds between ``AT+CLCC`` polls while a call rings.
        self.poll = poll
        self.clock = clock
        self.line = ModemLine()

    async def send(self, number: str, text: str, reference: int = 0) -> list[int]:
        """Send ``text``; the message references the network gave each part. Raises
        :class:`ModemError` (``+CMS ERROR``, ``ERROR`` or no answer) or ``OSError``."""
        pdus = submit_pdus(number, text, reference)  # a bad number never takes the line
        async with self.line.hold(sms=True):
            link = await SerialLink.open(self.port, self.baudrate)
            try:
                async with asyncio.timeout(self.timeout):
                    await self._command(link, b"ATE0")  # no echo: answers are easier to read
                    await self._command(link, b"AT+CMGF=0")
                    references = []
                    for pdu in pdus:
                        octets = len(pdu) // 2 - 1
                        link.write(f"AT+CMGS={octets}\r".encode())
                        await self._expect_prompt(link)
                        link.write(pdu.encode() + CTRL_Z)
                        answer = await self._until_final(link)
                        found = re.search(rb"\+CMGS:\s*(\d+)", answer)
                        references.append(int(found.group(1)) if found else -1)
                    return references
            except TimeoutError:
                raise ModemError(
                    f"no answer from the modem on {self.port} within {self.timeout:g} s"
                ) from None
            finally:
                await link.close()

    async def call(
        self,
        number: str,
        *,
        ring_time: float,
        speech: str | None = None,
        dialled: Callable[[], None] = lambda: None,
    ) -> CallResult:
        """Call ``number``: ``ATD<number>;``, poll ``AT+CLCC`` until it is answered (state 0,
        or ``VOICE CALL: BEGIN``), ends (``BUSY``, ``NO CARRIER``, ``NO ANSWER``) or has rung
        ``ring_time`` seconds, then ``ATH``. Once answered, ``speech`` is read aloud with
        ``AT+CTTS`` where the modem has it. A call gives way (outcome ``gave-way``) when an SMS
        waits for the line. ``dialled`` is called once the modem took ``ATD`` (the network
        rings the number). Raises :class:`ModemError` (no answer) or ``OSError``."""
        if not _NUMBER.fullmatch(number):
            raise ValueError(f"not a phone number: {number!r} (+ then 3-20 digits 0-9)")
        async with self.line.hold(sms=False):
            link = await SerialLink.open(self.port, self.baudrate)
            try:
                return await self._call(link, number, ring_time, speech, dialled)
            except TimeoutError:
                raise ModemError(
                    f"no answer from the modem on {self.port} within {self.timeout:g} s"
                ) from None
            finally:
                await link.close()

    async def _call(
        self,
        link: SerialLink,
        number: str,
        ring_time: float,
        speech: str | None,
        dialled: Callable[[], None],
    ) -> CallResult:
        async with asyncio.timeout(self.timeout):
            await self._command(link, b"ATE0")
            link.write(f"ATD{number};\r".encode())
            seen, final = await self._until_result(link)
        if final != b"OK":
            # ERROR or a +CME ERROR is the modem refusing; BUSY and the rest are the network.
            return CallResult(_ENDINGS.get(final, "error"), final.decode(errors="replace"), 0.0)
        dialled()
        since = self.clock()
        answered = _VOICE_BEGIN in seen
        try:
            while not answered:
                rang = self.clock() - since
                if rang >= ring_time:
                    return CallResult("no-answer", f"not answered within {ring_time:g} s", rang)
                if self.line.sms_waiting:
                    return CallResult("gave-way", "hung up for an alarm SMS", rang)
                await asyncio.sleep(self.poll)
                async with asyncio.timeout(self.timeout):
                    link.write(b"AT+CLCC\r")
                    seen, final = await self._until_result(link)
                for line in seen.splitlines():
                    ending = _ENDINGS.get(line.strip())
                    if ending is not None:
                        return CallResult(ending, line.strip().decode(), self.clock() - since)
                states = [int(m.group(1)) for m in _CLCC.finditer(seen)]
                if _VOICE_BEGIN in seen or 0 in states:
                    answered = True
                elif final == b"OK" and not states:
                    return CallResult("no-carrier", "the call ended", self.clock() - since)
            rang = self.clock() - since
            spoken = speech is not None and await self._speak(link, speech)
            return CallResult("answered", "answered", rang, spoken)
        finally:
            # Hang up whatever happened: a call left up would hold the modem's only voice line.
            with contextlib.suppress(ModemError, TimeoutError):
                async with asyncio.timeout(self.timeout):
                    await self._command(link, b"ATH")

    async def _speak(self, link: SerialLink, speech: str) -> bool:
        """Read ``speech`` aloud (``AT+CTTS=1``, UCS2 hex: ASCII on the line, no GBK); False
        where the modem has no text-to-speech or the person hung up first."""
        text = speech.encode("utf-16-be").hex().upper()
        async with asyncio.timeout(self.timeout):
            link.write(f'AT+CTTS=1,"{text}"\r'.encode())
            _, final = await self._until_result(link)
        if final != b"OK":
            return False
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(SPEECH_TIME):
                while True:
                    raw = await link.reader.readline()
                    line = raw.strip()
                    if not raw or line in _ENDINGS:
                        return False
                    if line.startswith(b"+CTTS:"):
                        return True
        return True

    async def _command(self, link: SerialLink, command: bytes) -> bytes:
        link.write(command + b"\r")
        return await self._until_final(link)

    @staticmethod
    async def _until_result(link: SerialLink) -> tuple[bytes, bytes]:
        """Lines up to a final result of any kind, and that result (``OK``, ``ERROR``,
        ``+CME ERROR: n``, ``BUSY``, ``NO CARRIER`` ...), without raising for a refusal."""
        seen = b""
        while True:
            line = await link.reader.readline()
            if not line:
                raise ModemError("the modem closed the line")
            seen += line
            text = line.strip()
            if text in (b"OK", b"ERROR") or text in _ENDINGS:
                return seen, text
            if text.startswith((b"+CME ERROR", b"+CMS ERROR")):
                return seen, text

    @staticmethod
    async def _expect_prompt(link: SerialLink) -> None:
        seen = b""
        while b">" not in seen:
            chunk = await link.reader.read(256)
            if not chunk:
                raise ModemError("the modem closed the line")
            seen += chunk
            if b"ERROR" in seen:
                raise ModemError(seen.decode(errors="replace").strip())

    @staticmethod
    async def _until_final(link: SerialLink) -> bytes:
        seen = b""
        while True:
            line = await link.reader.readline()
            if not line:
                raise ModemError("the modem closed the line")
            seen += line
            text = line.strip()
            if text == b"OK":
                return seen
            if text == b"ERROR" or text.startswith((b"+CMS ERROR", b"+CME ERROR")):
                raise ModemError(text.decode(errors="replace"))


def alarm_text(transition: Transition, site: str, place: str, zone: ZoneInfo) -> str:
    """The message: what, where, when, in Chinese first (the venue's people) and the rule."""
    when = datetime.fromtimestamp(transition.ts, zone).strftime("%m-%d %H:%M")
    occupancy = ""
    if transition.occupancy is not None:
        occupancy = {"occupied": " 室内有人", "vacant": " 室内无人", "unknown": " 人员情况不明"}[
            str(transition.occupancy["state"])
        ]
    value = "" if transition.value is None else f" {transition.value:g}"
    return (
        f"【{SEVERITY_WORDS[transition.severity]}】{site} {place}{occupancy} {when} "
        f"{transition.rule_id}: {transition.point}{value} ({transition.reason})"
    )


class SmsNotifier:
    """Turns alarms into messages to the configured numbers, within the rate limits.

    A message is queued for each number when an alarm of at least ``sms.severity`` is raised or
    escalated. Per number, one message per rule and device within ``min_interval`` and at
    most ``max_per_hour``; what the limits hold back is reported (``sms-failed``, reason
    ``rate limit``), never silently dropped. :meth:`run` sends the queue, one at a time.
    """

    def __init__(
        self,
        config: Sms,
        *,
        site: str,
        places: dict[str, str],
        timezone: str,
        report: Callable[[EventKind, dict[str, Any]], None],
        modem: Modem | None = None,
        clock: Callable[[], float] = time.monotonic,
        uplink_online: Callable[[], bool] = lambda: False,
    ) -> None:
        self.config = config
        self.site = site
        self.places = places
        self.zone = ZoneInfo(timezone)
        self.report = report
        self.modem = modem or Modem(config.port, config.baudrate, timeout=config.timeout)
        self.clock = clock
        self.uplink_online = uplink_online
        self._queue: deque[tuple[str, str, Transition]] = deque()
        self._wake = asyncio.Event()
        self._last: dict[tuple[str, str, str], float] = {}
        self._sent = HourlyLimit(config.numbers, config.max_per_hour, clock)
        self._reference = 0

    def notify(self, transition: Transition) -> None:
        """Queue the messages ``transition`` calls for (a no-op for most transitions)."""
        if not calls_for(transition, self.config, self.uplink_online):
            return
        now = self.clock()
        place = self.places.get(transition.device_id, transition.device_id)
        text = alarm_text(transition, self.site, place, self.zone)
        for number in self.config.numbers:
            key = (number, transition.rule_id, transition.device_id)
            if now - self._last.get(key, -1e18) < self.config.min_interval or not (
                self._sent.take(number)
            ):
                self.report("sms-failed", notice_fields(number, transition, reason="rate limit"))
                continue
            self._last[key] = now
            self._queue.append((number, text, transition))
        self._wake.set()

    async def run(self) -> None:
        """Send what is queued, oldest first; runs until cancelled."""
        while True:
            while self._queue:
                number, text, transition = self._queue.popleft()
                self._reference = (self._reference + 1) % 256
                try:
                    references = await self.modem.send(number, text, self._reference)
                except (ModemError, OSError, ValueError) as exc:
                    log.error("sms failed", extra=fields(number=number, error=str(exc)))
                    self.report("sms-failed", notice_fields(number, transition, reason=str(exc)))
                    continue
                log.warning("sms sent", extra=fields(number=number, parts=len(references)))
                self.report(
                    "sms-sent",
                    notice_fields(number, transition, parts=len(references), refs=references),
                )
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await self._wake.wait()
