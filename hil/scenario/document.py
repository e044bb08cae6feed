"""A scenario file as written: typed models of its parts (see docs/hil.md#scenario-format).

The loader (hil/scenario/loader.py) reads the file with drivers/yamlpos.py, validates each part
with these models, and only then checks what needs the site: that devices exist, that a
simulator can set a point and serve a value, that labels are defined. These models know
nothing of the site; every check they make is about the shape of what was written, and each
refusal carries the sentence the loader prints at ``file:line`` (``_refuse``), so that a
pydantic error never reaches a rig engineer in pydantic's words.

Every model refuses unknown keys; :func:`check` turns the errors into ``(place, message)``
pairs relative to the part it validated.
"""

from __future__ import annotations

import difflib
import math
import types
import typing
from collections.abc import Callable, Iterable
from datetime import date, datetime
from typing import Annotated, Any, Final, Literal, TypeVar

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    model_validator,
)
from pydantic_core import PydanticCustomError

from drivers.yamlpos import Loc
from edge.config.duration import parse_duration
from hil.scenario.model import ACTIONS, ExpectKind

__all__ = [
    "ACTION_ARGS",
    "EXPECTATIONS",
    "EXPECT_KINDS",
    "TOP_KEYS",
    "DeviceEntry",
    "ReadingEntry",
    "ScenarioFile",
    "StepEntry",
    "check",
    "check_action",
    "hint",
]

EXPECT_KINDS: Final[tuple[ExpectKind, ...]] = typing.get_args(ExpectKind)
#: The top-level keys of a scenario file, in the order the docs give them.
TOP_KEYS: Final = (
    "name",
    "proves",
    "mode",
    "site",
    "devices",
    "steps",
    "expect",
    "duration",
    "seed",
    "readings",
    "phones",
)


def hint(word: str, candidates: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest candidate, or nothing."""
    close = difflib.get_close_matches(word, [str(c) for c in candidates], n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _refuse(message: str) -> PydanticCustomError:
    # The message goes through a context field: pydantic would read braces in a template.
    return PydanticCustomError("scenario", "{message}", {"message": message})


# --------------------------------------------------------------------------------------------
# Values


def _text(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _refuse("missing: a line of text")
    return value.strip()


def _duration(value: Any) -> float:
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise _refuse(str(exc)) from None


def _number(value: Any) -> float:
    if (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and not math.isnan(value)
        and abs(value) < 1e12
    ):
        return float(value)
    raise _refuse(f"must be a number, not {value!r}")


def _count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _refuse(f"a count, not {value!r}")
    return value


def _flag(value: Any) -> bool:
    if not isinstance(value, bool):
        raise _refuse("true or false")
    return value


def _one_of(*options: str) -> Callable[[Any], str]:
    def choose(value: Any) -> str:
        if value not in options:
            raise _refuse(f"one of {', '.join(options)}, not {value!r}")
        return str(value)

    return choose


def _list(*, required: bool) -> Callable[[Any], list[Any] | None]:
    def listed(value: Any) -> list[Any] | None:
        if value is None:
            return None  # the loader says "missing" where a list is required
        if not isinstance(value, list):
            raise _refuse("must be a list")
        if required and not value:
            raise _refuse("must not be empty")
        return value

    return listed


def _moment(value: Any) -> datetime:
    """A date or a date and time as written (ISO 8601); the zone is the site's, added by the
    loader when none is written."""
    if isinstance(value, datetime):
        return value
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day)
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            pass
    raise _refuse(f"a date or time like 2025-01-01 or 2025-01-01T08:00, not {value!r}")


_LABEL_FIRST: Final = frozenset("abcdefghijklmnopqrstuvwxyz0123456789")


def _integer(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _refuse(f"must be an integer, not {value!r}")
    return value


def _phones(value: Any) -> dict[Any, Any]:
    if not isinstance(value, dict):
        raise _refuse("a mapping of phone number to what it does")
    return value


def _values(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _refuse("must be a mapping of point: value")
    return value


def _point(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise _refuse(f"missing: {what}")
    return value


def _positive(value: Any) -> float:
    seconds = _duration(value)
    if seconds <= 0:
        raise _refuse("must be longer than 0 s")
    return seconds


def _not_negative(value: Any) -> float:
    number = _number(value)
    if number < 0:
        raise _refuse("must not be negative")
    return number


_TWO_OR_MORE: Final = "a list of at least two numbers to alternate"


def _alternate(value: Any) -> list[float]:
    try:
        if isinstance(value, list) and len(value) >= 2:
            return [_number(item) for item in value]
    except PydanticCustomError:
        pass
    raise _refuse(_TWO_OR_MORE)


def _ok_or_error(value: Any) -> str:
    if value not in ("ok", "error"):
        raise _refuse(f"ok or error, not {value!r}")
    return str(value)


def _label(value: Any) -> str:
    if not isinstance(value, str) or not _is_label(value):
        raise _refuse("a label is a lower-case word like 'leak-on'")
    return value


def _is_label(text: str) -> bool:
    return (
        0 < len(text) <= 64
        and text[0] in _LABEL_FIRST
        and all(c in _LABEL_FIRST or c in "_-" for c in text)
    )


def _label_ref(value: Any) -> str:
    if not isinstance(value, str):
        raise _refuse(f"a step label (a word like 'leak-on'), not {value!r}")
    return value


Text = Annotated[str, BeforeValidator(_text)]
Duration = Annotated[float, BeforeValidator(_duration)]
Number = Annotated[float, BeforeValidator(_number)]
Count = Annotated[int, BeforeValidator(_count)]
Flag = Annotated[bool, BeforeValidator(_flag)]
Moment = Annotated[datetime, BeforeValidator(_moment)]
#: A step label as referred to (``after``, ``from``, ``until``); whether it exists is the
#: loader's check.
LabelRef = Annotated[str, BeforeValidator(_label_ref)]
_DURATION: Final = "a duration like 2s or 500ms"


class _Part(BaseModel):
    """A mapping of the file: unknown keys refused, anything but a mapping refused with
    ``_not_a_mapping``."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
    _not_a_mapping: typing.ClassVar[str] = "must be a mapping"

    @model_validator(mode="before")
    @classmethod
    def _mapping(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            raise _refuse(cls._not_a_mapping)
        return value


# --------------------------------------------------------------------------------------------
# The top level, devices and replay readings


class ScenarioFile(_Part):
    """The top level. What is required is checked by the loader, so that a value refused here
    is reported once, not also as missing."""

    _not_a_mapping = f"a scenario is a mapping of {', '.join(TOP_KEYS)}"

    name: Text | None = None
    proves: Text | None = None
    mode: Annotated[Literal["live", "replay"], BeforeValidator(_one_of("live", "replay"))] = "live"
    site: Any = None
    devices: Annotated[list[Any] | None, BeforeValidator(_list(required=False))] = None
    steps: Annotated[list[Any] | None, BeforeValidator(_list(required=False))] = None
    expect: Annotated[list[Any] | None, BeforeValidator(_list(required=True))] = None
    # An explicit empty value is refused like any other value that is not a duration.
    duration: Annotated[float | None, BeforeValidator(_duration)] = None
    seed: Annotated[int, BeforeValidator(_integer)] = 1
    readings: Annotated[list[Any] | None, BeforeValidator(_list(required=False))] = None
    phones: Annotated[dict[Any, Any], BeforeValidator(_phones)] = Field(default_factory=dict)


class DeviceEntry(_Part):
    """A simulated device's starting values: ``{id, values}``, or just its id."""

    _not_a_mapping = "a device is a mapping with id and values"

    id: Annotated[str, BeforeValidator(lambda v: _point(v, "the id of a device of the site"))] = (
        Field(description="the id of a device of the site")
    )
    values: Annotated[dict[str, Number], BeforeValidator(_values)] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _just_an_id(cls, value: Any) -> Any:
        return {"id": value} if isinstance(value, str) else value


class Ramp(_Part):
    from_: Number = Field(alias="from")
    to: Number


class Noise(_Part):
    around: Number
    amplitude: Number


_SHAPES: Final = "a number, {ramp: {from, to}} or {noise: {around, amplitude}}"


class ReadingValue(_Part):
    """A constant, ``{ramp: {from, to}}`` or ``{noise: {around, amplitude}}``."""

    _not_a_mapping = _SHAPES

    constant: float | None = None
    ramp: Ramp | None = None
    noise: Noise | None = None

    @model_validator(mode="before")
    @classmethod
    def _one_shape(cls, value: Any) -> Any:
        try:
            return {"constant": _number(value)}
        except PydanticCustomError:
            pass
        if (
            isinstance(value, dict)
            and len(value) == 1
            and next(iter(value)) in ("ramp", "noise")
            and isinstance(next(iter(value.values())), dict)
        ):
            return value
        raise _refuse(_SHAPES)


class ReadingEntry(_Part):
    """Replay input: one point of one device, a reading every ``every`` for ``for``."""

    _not_a_mapping = "a mapping: device, point, start, every, for, value"

    device: Any = None
    point: Annotated[str, BeforeValidator(lambda v: _point(v, "the point the readings are of"))]
    start: Moment = Field(description="a date or time like 2025-01-01 or 2025-01-01T08:00")
    every: Duration = Field(description=_DURATION)
    for_: Duration = Field(alias="for", description=_DURATION)
    value: ReadingValue = Field(description=_SHAPES)
    unit: Annotated[str, BeforeValidator(str)] = ""


# --------------------------------------------------------------------------------------------
# Steps


class _DeviceAction(_Part):
    _not_a_mapping = "a mapping with device and the action's settings"

    device: Any = Field(description="the simulated device")


class _PointAction(_DeviceAction):
    point: Annotated[str, BeforeValidator(lambda v: _point(v, "the point to change"))] = Field(
        description="the point to change"
    )


class SetArgs(_PointAction):
    value: Number


class RampArgs(_PointAction):
    from_: Number = Field(alias="from")
    to: Number
    over: Annotated[float, BeforeValidator(_positive)] = Field(description=_DURATION)


class NoiseArgs(_PointAction):
    around: Number
    amplitude: Annotated[float, BeforeValidator(_not_negative)]
    for_: Annotated[float, BeforeValidator(_positive)] = Field(alias="for", description=_DURATION)
    every: Annotated[float, BeforeValidator(_positive)] = 0.2


class ToggleArgs(_PointAction):
    values: Annotated[list[float], BeforeValidator(_alternate)] = Field(description=_TWO_OR_MORE)
    every: Annotated[float, BeforeValidator(_positive)] = Field(description=_DURATION)
    for_: Annotated[float, BeforeValidator(_positive)] = Field(alias="for", description=_DURATION)


class FaultArgs(_DeviceAction):
    kind: Any = None
    delay: Annotated[float | None, BeforeValidator(_duration)] = None


class PushConfigArgs(_Part):
    _not_a_mapping = "a mapping: site (a path or inline) and expect (ok or error)"

    site: Any = None
    expect: Annotated[Literal["ok", "error"], BeforeValidator(_ok_or_error)] = "ok"


def _what(*options: str) -> Any:
    def choose(value: Any) -> str:
        if value not in options:
            raise _refuse(f"must be one of {', '.join(options)}, not {value!r}")
        return str(value)

    return Annotated[str, BeforeValidator(choose)]


#: Each action's settings: a model, or the type of its one value (a device, a state).
ACTION_ARGS: Final[dict[str, Any]] = {
    "set": SetArgs,
    "ramp": RampArgs,
    "noise": NoiseArgs,
    "toggle": ToggleArgs,
    "fault": FaultArgs,
    "garbage": Any,
    "silent": Any,
    "back": Any,
    "broker": _what("down", "up"),
    "disk": _what("full", "free"),
    "gateway": _what("kill", "restart", "stop", "start"),
    "push-config": PushConfigArgs,
}
assert tuple(ACTION_ARGS) == ACTIONS


class StepEntry(_Part):
    """A step's time and label; its one action (the other key) is checked by
    :func:`check_action`."""

    _not_a_mapping = "a step is a mapping: at, an action, optionally label"

    at: Duration = Field(description=_DURATION)
    label: Annotated[str | None, BeforeValidator(_label)] = None


# --------------------------------------------------------------------------------------------
# Expectations


class _Expect(_Part):
    after: LabelRef = "start"


class _Within(_Expect):
    within: Duration = Field(description=_DURATION)


class _Window(_Part):
    from_: LabelRef = Field("start", alias="from")
    until: LabelRef = "end"


def _on_off(value: Any) -> str:
    if value not in ("on", "off") and not isinstance(value, bool):
        raise _refuse(f"on or off, not {value!r}")
    return "on" if value in ("on", True) else "off"


def _match(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict) or not value:
        raise _refuse("the fields to match, e.g. {kind: alarm-raised, device: efm-1}")
    return value


def _plain(value: Any) -> Any:
    if not isinstance(value, str | int | float | bool):
        raise _refuse("match a field against a plain value")
    return value


def _true(value: Any) -> bool:
    if value is not True:
        raise _refuse("write `true`")
    return True


OnOff = Annotated[str, BeforeValidator(_on_off)]
Match = Annotated[dict[str, Annotated[Any, BeforeValidator(_plain)]], BeforeValidator(_match)]
WriteTrue = Annotated[bool, BeforeValidator(_true)]


class BuzzerExpect(_Within):
    buzzer: OnOff


class LedExpect(_Within):
    led: OnOff


class EventExpect(_Within):
    event: Match
    first: Flag = False


class ReadingExpect(_Within):
    reading: Match


class NoEventExpect(_Window):
    no_event: Match


class NoBuzzerExpect(_Window):
    no_buzzer: Any = None


class _Bounds(_Part):
    equals: Count | None = None
    at_least: Count | None = None
    at_most: Count | None = None


class CountExpect(_Bounds):
    count: Match

    @model_validator(mode="after")
    def _bounded(self) -> CountExpect:
        if self.equals is None and self.at_least is None and self.at_most is None:
            raise _refuse("a count needs equals, at_least or at_most")
        return self


class NoGapsExpect(_Part):
    no_gaps: WriteTrue


class NothingLostExpect(_Part):
    nothing_lost: WriteTrue


class TransitionExpect(_Bounds):
    transition: Match
    not_before: Annotated[datetime | None, BeforeValidator(_moment)] = None


class NoTransitionExpect(_Part):
    no_transition: Match


#: The model of each kind of expectation.
EXPECTATIONS: Final[dict[str, type[_Part]]] = {
    "buzzer": BuzzerExpect,
    "led": LedExpect,
    "event": EventExpect,
    "reading": ReadingExpect,
    "no_event": NoEventExpect,
    "no_buzzer": NoBuzzerExpect,
    "count": CountExpect,
    "no_gaps": NoGapsExpect,
    "nothing_lost": NothingLostExpect,
    "transition": TransitionExpect,
    "no_transition": NoTransitionExpect,
}
assert tuple(EXPECTATIONS) == EXPECT_KINDS


# --------------------------------------------------------------------------------------------
# Validation with the loader's messages


def check_action(action: str, raw: Any) -> tuple[Any, list[tuple[Loc, str]]]:
    """A step's action settings checked by their model (or type): the value, or None and
    the refusals."""
    kind = ACTION_ARGS[action]
    if isinstance(kind, type) and issubclass(kind, BaseModel):
        return check(kind, raw)
    try:
        return TypeAdapter(kind).validate_python(raw), []
    except ValidationError as exc:
        return None, [((), err["msg"]) for err in exc.errors()]


M = TypeVar("M", bound=BaseModel)


def check(model: type[M], raw: Any) -> tuple[M | None, list[tuple[Loc, str]]]:
    """``model`` validated from ``raw``, or None and each refusal as ``(place, message)``, the
    place relative to ``raw``."""
    try:
        return model.model_validate(raw), []
    except ValidationError as exc:
        # Unknown keys first, as a reader goes: "this key is not one" before "that one is missing".
        errors = sorted(exc.errors(), key=lambda err: err["type"] != "extra_forbidden")
        return None, [_refusal(model, err["loc"], err["type"], err["msg"]) for err in errors]


def _refusal(
    model: type[BaseModel], loc: tuple[str | int, ...], kind: str, msg: str
) -> tuple[Loc, str]:
    # The models have no unions but optional ones, so pydantic's loc is the place as written.
    place: Loc = loc
    if kind == "extra_forbidden":
        return place, f"unknown key{hint(str(place[-1]), _keys_at(model, loc[:-1]))}"
    if kind == "missing":
        description = _description(model, loc)
        return place, f"missing: {description}" if description else "missing"
    return place, msg


def _strip(tp: Any) -> Any:
    while True:
        if typing.get_origin(tp) is Annotated:
            tp = typing.get_args(tp)[0]
        elif typing.get_origin(tp) in (typing.Union, types.UnionType):
            members = [
                arg
                for arg in typing.get_args(tp)
                if isinstance(arg, type) and issubclass(arg, BaseModel)
            ]
            if len(members) != 1:
                return tp
            tp = members[0]
        else:
            return tp


def _walk(model: type[BaseModel], loc: tuple[str | int, ...]) -> list[tuple[Any, Any]]:
    """(type, field) at each step of ``loc`` through the models, lists and mappings."""
    steps: list[tuple[Any, Any]] = []
    tp: Any = model
    for part in loc:
        tp = _strip(tp)
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            found = next(
                (f for n, f in tp.model_fields.items() if part in (n, f.alias)),
                None,
            )
            if found is None:
                steps.append((None, None))
                tp = None
                continue
            steps.append((found.annotation, found))
            tp = found.annotation
        elif typing.get_origin(tp) in (list, dict):
            tp = typing.get_args(tp)[-1]
            steps.append((tp, None))
        else:
            steps.append((None, None))
    return steps


def _keys_at(model: type[BaseModel], loc: tuple[str | int, ...]) -> list[str]:
    tp: Any = model if not loc else _walk(model, loc)[-1][0]
    tp = _strip(tp)
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return [f.alias or n for n, f in tp.model_fields.items()]
    return []


def _description(model: type[BaseModel], loc: tuple[str | int, ...]) -> str | None:
    steps = _walk(model, loc)
    field = steps[-1][1] if steps else None
    return None if field is None else field.description
