"""Only a signed command runs: forged, altered, replayed, stale, future, retained, unsigned and
flooding commands are refused with an error ack and reach no handler."""

from __future__ import annotations

import base64
import json
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from buffer import Outbox
from edge import contract
from edge.canonical import CanonicalError, canonical_json
from edge.commands import Commands, current_key_class
from edge.schemas import validate
from edge.signing import generate_key, load_key_ring, load_private_key, sign_command, verify
from tests.fixtures.command_keys import KEY_IDS, install, key_ring, sign

NOW = 1_700_000_000.0
GW = "gw-1"
OPERATIONS = KEY_IDS["operations"]


class Clock:
    """Wall clock and monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.wall = NOW
        self.mono = 1000.0

    def advance(self, seconds: float) -> None:
        self.wall += seconds
        self.mono += seconds


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any], str | None]] = []

    async def ping(self, params: Mapping[str, Any]) -> dict[str, Any]:
        self.calls.append(("ping", dict(params), current_key_class()))
        return {"pong": True}

    async def silence(self, params: Mapping[str, Any]) -> dict[str, Any]:
        self.calls.append(("silence", dict(params), current_key_class()))
        return {"silenced": 1}


def gate(
    rec: Recorder,
    clock: Clock | None = None,
    *,
    keys: Any = "test",
    store: Any = None,
    insecure: bool = False,
    per_minute: int = 30,
) -> Commands:
    clock = clock or Clock()
    return Commands(
        GW,
        lambda: "epoch-1",
        {"ping": rec.ping, "silence": rec.silence},
        ttl=60.0,
        clock_synced=lambda: True,
        keys=key_ring() if keys == "test" else keys,
        insecure_unsigned=insecure,
        max_skew=30.0,
        max_per_minute=per_minute,
        store=store,
        now=lambda: clock.wall,
        monotonic=lambda: clock.mono,
    )


def body(
    name: str = "ping", params: dict[str, Any] | None = None, *, cid: str = "c-1", age: float = 1
) -> dict[str, Any]:
    return {
        "schema": contract.SCHEMA_COMMAND,
        "command_id": cid,
        "command": name,
        "issued_at": contract.iso_utc(NOW - age),
        "params": params or {},
    }


def payload(command: dict[str, Any]) -> bytes:
    return json.dumps(command).encode()


async def answer(handler: Commands, raw: bytes, *, retained: bool = False) -> dict[str, Any]:
    ack: dict[str, Any] = json.loads(await handler.handle(raw, retained=retained))
    validate("ack", ack)
    return ack


async def test_a_signed_command_runs_with_its_key_class() -> None:
    rec = Recorder()
    handler = gate(rec)
    ack = await answer(handler, payload(sign(body(), GW)))
    assert (ack["result"], ack["data"]) == ("ok", {"pong": True})
    ack = await answer(handler, payload(sign(body(cid="c-2"), GW, "engineering")))
    assert ack["result"] == "ok"
    assert [c[2] for c in rec.calls] == ["operations", "engineering"]
    assert current_key_class() is None  # only while a handler runs


async def test_both_installed_operations_keys_are_accepted_for_rotation() -> None:
    rec = Recorder()
    handler = gate(rec)
    for cid, key in (("c-a", "operations"), ("c-b", "operations-b")):
        assert (await answer(handler, payload(sign(body(cid=cid), GW, key))))["result"] == "ok"
    assert len(rec.calls) == 2


def _forged(command: dict[str, Any]) -> dict[str, Any]:
    signed = sign(command, GW)
    raw = bytearray(base64.b64decode(signed["signature"]["ed25519"]))
    raw[0] ^= 1
    signed["signature"]["ed25519"] = base64.b64encode(bytes(raw)).decode()
    return signed


def _other_params(command: dict[str, Any]) -> dict[str, Any]:
    signed = sign(command, GW)
    signed["params"] = {"device": "efm-2", "rule": "rc"}  # the signature covered efm-1
    return signed


def _withdrawn_key(command: dict[str, Any]) -> dict[str, Any]:
    # Signed by a key of the right form that this gateway never had installed.
    with tempfile.TemporaryDirectory() as folder:
        generate_key(Path(folder), "operations-withdrawn")
        key, key_id = load_private_key(Path(folder) / "operations-withdrawn.private.pem")
    return sign_command(command, GW, key, key_id)


@pytest.mark.parametrize(
    ("make", "needle"),
    [
        (lambda c: c, "not signed"),
        (_forged, "bad signature"),
        (_other_params, "bad signature"),
        (lambda c: sign(c, "gw-2"), "bad signature"),  # signed for another gateway
        (lambda c: {**sign(c, GW), "issued_at": contract.iso_utc(NOW)}, "bad signature"),
        (lambda c: {**sign(c, GW), "command_id": "c-9"}, "bad signature"),
        (_withdrawn_key, "does not have"),
        (lambda c: {**c, "signature": {"key": OPERATIONS, "ed25519": "AA=="}}, "ed25519"),
        (lambda c: {**c, "signature": "deadbeef"}, "signature"),
    ],
    ids=[
        "unsigned",
        "forged",
        "other-params",
        "other-gateway",
        "other-issued-at",
        "other-command-id",
        "unknown-key",
        "short-signature",
        "not-an-object",
    ],
)
async def test_a_command_not_signed_as_it_arrived_is_refused_and_runs_nothing(
    make: Any, needle: str
) -> None:
    rec = Recorder()
    handler = gate(rec)
    ack = await answer(handler, payload(make(body("silence", {"device": "efm-1", "rule": "rc"}))))
    assert ack["result"] == "error"
    assert needle in ack["error"], ack["error"]
    assert rec.calls == []
    assert handler.executed == 0


async def test_a_forged_command_does_not_take_the_id_the_platform_then_uses() -> None:
    rec = Recorder()
    handler = gate(rec)
    assert (await answer(handler, payload(_forged(body()))))["result"] == "error"
    assert (await answer(handler, payload(sign(body(), GW))))["result"] == "ok"
    assert len(rec.calls) == 1


async def test_without_keys_every_command_is_refused() -> None:
    rec = Recorder()
    for keys in (None, load_key_ring(Path("/nonexistent/command-keys"))):
        handler = gate(rec, keys=keys)
        ack = await answer(handler, payload(sign(body(), GW)))
        assert ack["result"] == "error"
        assert "no command keys" in ack["error"]
    assert rec.calls == []


async def test_insecure_mode_runs_unsigned_commands_as_operations_and_still_checks_signed() -> None:
    rec = Recorder()
    handler = gate(rec, keys=None, insecure=True)
    assert (await answer(handler, payload(body())))["result"] == "ok"
    assert rec.calls == [("ping", {}, "operations")]
    # A command that carries a signature is still checked: insecure is not "anything goes".
    forged = await answer(handler, payload(_forged(body(cid="c-2"))))
    assert forged["result"] == "error"


@pytest.mark.parametrize(
    ("age", "needle"),
    [(61, "older than the 60 s TTL"), (-31, "in the future")],
    ids=["expired", "future"],
)
async def test_expired_and_future_commands_are_refused(age: float, needle: str) -> None:
    rec = Recorder()
    ack = await answer(gate(rec), payload(sign(body(age=age), GW)))
    assert ack["result"] == "error"
    assert needle in ack["error"]
    assert rec.calls == []


async def test_a_command_within_the_clock_skew_runs() -> None:
    rec = Recorder()
    ack = await answer(gate(rec), payload(sign(body(age=-29), GW)))
    assert ack["result"] == "ok"


async def test_a_retained_command_is_ignored() -> None:
    rec = Recorder()
    ack = await answer(gate(rec), payload(sign(body(), GW)), retained=True)
    assert ack["result"] == "error"
    assert "retained" in ack["error"]
    assert rec.calls == []


async def test_a_flood_is_cut_to_the_rate_limit_and_the_rate_recovers() -> None:
    rec = Recorder()
    clock = Clock()
    handler = gate(rec, clock, per_minute=5)
    acks = [await answer(handler, payload(sign(body(cid=f"f-{i}"), GW))) for i in range(20)]
    assert [a["result"] for a in acks] == ["ok"] * 5 + ["error"] * 15
    assert all("rate limit" in a["error"] for a in acks[5:])
    assert len(rec.calls) == 5
    clock.advance(12)  # 5 a minute: one more after 12 s
    assert (await answer(handler, payload(sign(body(cid="late"), GW))))["result"] == "ok"


async def test_a_replay_after_a_restart_is_refused(tmp_path: Path) -> None:
    rec = Recorder()
    signed = payload(sign(body("silence", {"device": "efm-1", "rule": "rc"}), GW))
    async with await Outbox.open(tmp_path / "outbox.sqlite") as outbox:
        first = gate(rec, store=outbox)
        assert (await answer(first, signed))["result"] == "ok"
        # Within the run the platform's retry gets the same answer, without a second run.
        assert (await answer(first, signed))["result"] == "ok"
    assert len(rec.calls) == 1
    async with await Outbox.open(tmp_path / "outbox.sqlite") as outbox:
        again = await answer(gate(rec, store=outbox), signed)
    assert again["result"] == "error"
    assert "was run before" in again["error"]
    assert len(rec.calls) == 1


async def test_seen_ids_are_forgotten_once_their_commands_would_be_expired(tmp_path: Path) -> None:
    rec = Recorder()
    clock = Clock()
    async with await Outbox.open(tmp_path / "outbox.sqlite") as outbox:
        handler = gate(rec, clock, store=outbox)
        await answer(handler, payload(sign(body(cid="old"), GW)))
        assert [e.key for e in await outbox.state_items("commands/seen/")] == ["commands/seen/old"]
        clock.advance(200)  # past twice the TTL plus the skew
        await answer(handler, payload(sign(body(cid="new", age=1 - 200), GW)))
        keys = [e.key for e in await outbox.state_items("commands/seen/")]
    assert keys == ["commands/seen/new"]


async def test_an_oversized_command_is_refused_before_anything_else() -> None:
    rec = Recorder()
    big = sign(body("silence", {"device": "x" * 300_000, "rule": "rc"}), GW)
    ack = await answer(gate(rec), payload(big))
    assert ack["result"] == "error"
    assert "over" in ack["error"]
    assert rec.calls == []


@pytest.mark.parametrize(
    "threshold", [b"NaN", b"1e400", b"123456789012345678901"], ids=["nan", "inf", "huge-integer"]
)
async def test_a_value_without_a_canonical_form_is_refused(threshold: bytes) -> None:
    # Python's json reads NaN and 1e400 (infinity); no signature can cover them.
    rec = Recorder()
    raw = (
        b'{"schema":"edge.command/1","command_id":"c-1","command":"set-threshold",'
        b'"issued_at":"%s","params":{"rule":"rc","threshold":%s},'
        b'"signature":{"key":"%s","ed25519":"%s=="}}'
    ) % (contract.iso_utc(NOW - 1).encode(), threshold, KEY_IDS["operations"].encode(), b"A" * 86)
    ack = await answer(gate(rec), raw)
    assert ack["result"] == "error"
    assert "cannot be checked" in ack["error"], ack["error"]
    assert rec.calls == []


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (1e30, "1e+30"),
        (4.50, "4.5"),
        (2e-3, "0.002"),
        (1e-27, "1e-27"),
        (333333333.33333329, "333333333.3333333"),
        (-0.0, "0"),
        (5e-324, "5e-324"),
        (1.7976931348623157e308, "1.7976931348623157e+308"),
        (9007199254740992.0, "9007199254740992"),
        (295147905179352830000.0, "295147905179352830000"),
        (250.0, "250"),
        (1e21, "1e+21"),
        (1e-7, "1e-7"),
        (0.000001, "0.000001"),
    ],
)
def test_numbers_are_written_as_rfc_8785_writes_them(value: float, text: str) -> None:
    assert canonical_json(value) == text.encode()


_NUMBER = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]*[1-9])?(e[+-][1-9][0-9]*)?")


@settings(max_examples=2000)
@given(st.floats(allow_nan=False, allow_infinity=False))
def test_every_finite_number_is_written_as_ecmascript_writes_it(value: float) -> None:
    """Number::toString's promises, checked apart from how the code keeps them: the text
    reads back as the same double, with as few significant digits as any text that does
    (Python's repr is the shortest), in exponent form exactly outside 1e-6 <= |x| < 1e21."""
    text = canonical_json(value).decode()
    assert _NUMBER.fullmatch(text), text
    assert float(text) == value
    mantissa = text.lstrip("-").partition("e")[0].replace(".", "").strip("0")
    shortest = repr(abs(value)).partition("e")[0].replace(".", "").strip("0")
    assert len(mantissa or "0") == len(shortest or "0"), (text, repr(value))
    assert ("e" in text) == (value != 0 and not 1e-6 <= abs(value) < 1e21), text


def test_canonical_objects_are_sorted_without_whitespace_and_minimally_escaped() -> None:
    value = {"b": [True, None, "x\n\u20ac\x01"], "a": 1, "\u20ac": 2, "\U0001f600": 3}
    assert canonical_json(value) == (
        '{"a":1,"b":[true,null,"x\\n\u20ac\\u0001"],"\u20ac":2,"\U0001f600":3}'.encode()
    )


@pytest.mark.parametrize("value", [float("nan"), float("inf"), 2**53 + 1, "\ud800", {1: 2}])
def test_values_without_a_canonical_form_raise(value: Any) -> None:
    with pytest.raises(CanonicalError):
        canonical_json(value)


def test_the_key_ring_names_files_it_cannot_use(tmp_path: Path) -> None:
    install(tmp_path)
    (tmp_path / "operations-broken.pub").write_text("not a key")
    (tmp_path / "backup.pub").write_text("whatever")
    ring = load_key_ring(tmp_path)
    assert set(ring.keys) == set(KEY_IDS.values())
    assert ring.count("operations") == 2
    assert ring.count("engineering") == 1
    assert len(ring.problems) == 2
    assert any("operations-broken.pub" in p for p in ring.problems)
    assert any("backup.pub" in p and "operations-NAME.pub" in p for p in ring.problems)


def test_a_generated_private_key_is_private_and_never_overwritten(tmp_path: Path) -> None:
    private, public = generate_key(tmp_path, "engineering-2027")
    assert private.stat().st_mode & 0o777 == 0o600
    assert public.name == "engineering-2027.pub"
    with pytest.raises(FileExistsError):
        generate_key(tmp_path, "engineering-2027")
    with pytest.raises(ValueError, match="operations-NAME"):
        generate_key(tmp_path, "admin-1")


_JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**53), max_value=2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=150, deadline=None)
@given(
    params=st.dictionaries(st.text(max_size=8), _JSON_VALUES, max_size=5),
    indent=st.sampled_from([None, 2]),
    ascii_only=st.booleans(),
    sort_keys=st.booleans(),
)
def test_a_signature_survives_however_the_json_is_written(
    params: dict[str, Any], indent: int | None, ascii_only: bool, sort_keys: bool
) -> None:
    # The platform's JSON writer may space, order and escape as it likes: the canonical form
    # of what the gateway parses is the one that was signed.
    signed = sign(body("push-config", params), GW)
    wire = json.dumps(signed, indent=indent, ensure_ascii=ascii_only, sort_keys=sort_keys)
    assert verify(json.loads(wire), GW, key_ring()).key_class == "operations"
