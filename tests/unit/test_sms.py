"""SMS fallback: the PDU codec against the reference vector, the AT dialogue against the
modem simulator (over a real TCP socket), rate limits, and a result event for every message."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge.config.model import Sms
from edge.contract import EventKind
from edge.rules import Transition
from edge.sms import Modem, ModemError, SmsNotifier, decode_submit, submit_pdus
from hil.modem import ModemSimulator


def test_reference_vector_from_devices_md() -> None:
    (pdu,) = submit_pdus("+8613800138000", "告警")
    assert pdu == "0011000D91683108108300F00008A704544A8B66"
    assert len(pdu) // 2 - 1 == 19, "AT+CMGS=19"


def test_long_text_is_split_in_parts_of_67_with_a_concatenation_header() -> None:
    text = "电气火灾监控告警" * 20  # 160 characters
    pdus = submit_pdus("13800138000", text, reference=42)
    parts = [decode_submit(pdu) for pdu in pdus]
    assert [len(p.text) for p in parts] == [67, 67, 26]
    assert {(p.reference, p.parts) for p in parts} == {(42, 3)}
    assert [p.part for p in parts] == [1, 2, 3]
    assert "".join(p.text for p in parts) == text
    assert parts[0].number == "13800138000", "national number, type 0x81"


@given(
    st.text(min_size=1, max_size=300).filter(lambda t: "\x00" not in t),
    st.from_regex(r"\+?[0-9]{3,20}", fullmatch=True),
)
def test_round_trip(text: str, number: str) -> None:
    parts = [decode_submit(pdu) for pdu in submit_pdus(number, text)]
    assert "".join(p.text for p in parts) == text
    assert {p.number for p in parts} == {number}


@pytest.mark.parametrize(
    "number",
    [
        "call me",
        "+86" + "".join(chr(0xFF10 + int(d)) for d in "13800138000"),  # full-width digits
        "".join(chr(0x0660 + d) for d in range(10)),  # Arabic-Indic digits
        "+",
        "12",
        "+8613800138000x",
        "1" * 21,
    ],
)
def test_bad_number_is_refused(number: str) -> None:
    # Full-width and Arabic-Indic digits are digits to str.isdigit(), not to the network.
    with pytest.raises(ValueError, match="not a phone number"):
        submit_pdus(number, "x")


@pytest.mark.parametrize(
    ("vpf", "validity"),
    [(0x18, "62107071035500"), (0x08, "01000000000000"), (0x00, ""), (0x10, "A7")],
)
def test_every_validity_period_format_is_skipped_by_its_length(vpf: int, validity: str) -> None:
    # TP-VPF: absolute and enhanced periods take 7 octets, relative one, none zero.
    # SMSC, first octet, reference, address, PID, DCS, validity, user data (devices.md vector).
    pdu = f"00{0x01 | vpf:02X}00" + "0D91683108108300F0" + "0008" + validity + "04544A8B66"
    decoded = decode_submit(pdu)
    assert (decoded.number, decoded.text) == ("+8613800138000", "告警")


@given(st.binary(max_size=60))
def test_any_bytes_decode_to_a_message_or_a_value_error(data: bytes) -> None:
    try:
        decoded = decode_submit(data.hex())
    except ValueError:
        return
    assert isinstance(decoded.text, str)


def test_a_cut_pdu_is_a_value_error_naming_it() -> None:
    (pdu,) = submit_pdus("+8613800138000", "告警")
    with pytest.raises(ValueError, match="cut short"):
        decode_submit(pdu[:-4])


async def test_modem_dialogue_in_pdu_mode() -> None:
    async with ModemSimulator() as sim:
        references = await Modem(sim.url, timeout=5).send("+8613800138000", "告警")
        assert references == [1]
        (received,) = sim.messages
        assert (received.message.number, received.message.text, received.announced) == (
            "+8613800138000",
            "告警",
            19,
        )
        assert sim.commands[:3] == ["ATE0", "AT+CMGF=0", "AT+CMGS=19"]


async def test_modem_error_and_silence_are_reported() -> None:
    async with ModemSimulator() as sim:
        sim.fail_next = 1
        with pytest.raises(ModemError, match=r"\+CMS ERROR: 500"):
            await Modem(sim.url, timeout=5).send("+8613800138000", "告警")
        sim.mute = True
        with pytest.raises(ModemError, match="no answer"):
            await Modem(sim.url, timeout=0.3).send("+8613800138000", "告警")


class Results:
    """The notifier's result events, and a way to wait for them."""

    def __init__(self) -> None:
        self.events: list[tuple[EventKind, dict[str, Any]]] = []
        self._changed = asyncio.Event()

    def __call__(self, kind: EventKind, body: dict[str, Any]) -> None:
        self.events.append((kind, body))
        self._changed.set()

    async def until(self, kind: EventKind, count: int) -> None:
        async with asyncio.timeout(5):
            while sum(1 for k, _ in self.events if k == kind) < count:
                await self._changed.wait()
                self._changed.clear()


def fire(rule: str = "smoke", device: str = "smoke-101", severity: str = "fire") -> Transition:
    return Transition(
        rule,
        "raised",
        severity,  # type: ignore[arg-type]
        device,
        "smoke_bits",
        1_735_689_600.0,
        1.0,
        None,
        None,
        "alarm-bits",
        "device reports smoke",
        device,
        occupancy={"state": "occupied"},
    )


async def test_notifier_sends_limits_and_reports_every_result() -> None:
    results = Results()
    now = [0.0]
    async with ModemSimulator() as sim:
        config = Sms(
            port=sim.url,
            numbers=["+8613800138000", "+8613900139000"],
            min_interval="5m",
            max_per_hour=2,
        )
        notifier = SmsNotifier(
            config,
            site="Guiyuan demo block",
            places={"smoke-101": "Block 3 1 Shop 101"},
            timezone="Asia/Shanghai",
            report=results,
            modem=Modem(sim.url, timeout=5),
            clock=lambda: now[0],
        )
        task = asyncio.create_task(notifier.run())
        notifier.notify(fire())
        notifier.notify(fire())  # the same alarm again within 5 minutes: held back
        notifier.notify(fire(severity="minor"))  # below the configured severity: nothing
        now[0] = 400.0
        notifier.notify(fire(rule="smoke-2"))
        now[0] = 800.0
        notifier.notify(fire(rule="smoke-3"))  # a third message within the hour: held back
        await results.until("sms-sent", 4)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    sent = [body for kind, body in results.events if kind == "sms-sent"]
    held = [body for kind, body in results.events if kind == "sms-failed"]
    assert [(b["number"], b["rule"]) for b in sent] == [
        ("+8613800138000", "smoke"),
        ("+8613900139000", "smoke"),
        ("+8613800138000", "smoke-2"),
        ("+8613900139000", "smoke-2"),
    ]
    assert [(b["rule"], b["reason"]) for b in held] == [("smoke", "rate limit")] * 2 + [
        ("smoke-3", "rate limit")
    ] * 2
    text = sim.messages[0].message.text
    assert text.startswith("【火警】Guiyuan demo block Block 3 1 Shop 101 室内有人 01-01 08:00")


async def test_failed_send_is_an_event_not_a_crash() -> None:
    results = Results()
    async with ModemSimulator() as sim:
        sim.fail_next = 1
        notifier = SmsNotifier(
            Sms(port=sim.url, numbers=["+8613800138000"]),
            site="s",
            places={},
            timezone="UTC",
            report=results,
            modem=Modem(sim.url, timeout=5),
        )
        task = asyncio.create_task(notifier.run())
        notifier.notify(fire())
        await results.until("sms-failed", 1)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    ((kind, body),) = results.events
    assert kind == "sms-failed"
    assert "+CMS ERROR: 500" in body["reason"]
