"""The typed models of a scenario file refuse in the loader's words, each at its place."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel

from edge.config.duration import parse_duration
from hil.scenario.document import (
    ACTION_ARGS,
    EXPECTATIONS,
    DeviceEntry,
    RampArgs,
    ReadingEntry,
    ScenarioFile,
    SetArgs,
    StepEntry,
    check,
    check_action,
)

MODELS: list[type[BaseModel]] = [
    ScenarioFile,
    DeviceEntry,
    StepEntry,
    ReadingEntry,
    *(m for m in ACTION_ARGS.values() if isinstance(m, type) and issubclass(m, BaseModel)),
    *EXPECTATIONS.values(),
]


def test_an_unknown_key_is_named_with_the_closest_known_one_and_a_missing_one_says_what() -> None:
    _, refusals = check(SetArgs, {"device": "efm-1", "point": "voltage_a", "valeu": 1})
    assert refusals == [
        (("valeu",), "unknown key (did you mean 'value'?)"),
        (("value",), "missing"),
    ]
    _, refusals = check(RampArgs, {"device": "efm-1", "point": "p", "from": 1, "to": 2})
    assert refusals == [(("over",), "missing: a duration like 2s or 500ms")]


def test_nested_refusals_keep_their_place() -> None:
    item = {
        "device": "tilt-1",
        "point": "pitch",
        "start": "2025-01-01",
        "every": "1h",
        "for": "soon",
        "value": {"ramp": {"from": 1, "too": 2}},
    }
    with pytest.raises(ValueError, match=r".+") as duration_error:
        parse_duration("soon")
    _, refusals = check(ReadingEntry, item)
    assert refusals == [
        (("value", "ramp", "too"), "unknown key (did you mean 'to'?)"),
        (("for",), str(duration_error.value)),
        (("value", "ramp", "to"), "missing"),
    ]


def test_a_good_step_action_is_typed() -> None:
    settings, refusals = check_action(
        "ramp", {"device": "d", "point": "p", "from": 1, "to": 2, "over": "2s"}
    )
    assert refusals == []
    assert isinstance(settings, RampArgs)
    assert (settings.from_, settings.to, settings.over) == (1.0, 2.0, 2.0)
    assert check_action("broker", "sideways") == (
        None,
        [((), "must be one of down, up, not 'sideways'")],
    )


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.__name__)
@pytest.mark.parametrize("raw", [5, "text", [1, 2], None, {"zz-unknown": 1}])
def test_every_model_refuses_in_its_own_words(model: type[BaseModel], raw: Any) -> None:
    value, refusals = check(model, raw)
    if value is not None:
        # Only a device may be written as just its id.
        assert (model, raw) == (DeviceEntry, "text")
        return
    assert refusals
    for _, message in refusals:
        assert message
        assert "Input should" not in message
        assert "validation error" not in message
