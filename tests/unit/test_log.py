"""Log lines are logfmt that round-trips through the parser the demo and benchmarks use."""

from __future__ import annotations

import logging

from hypothesis import given
from hypothesis import strategies as st

from edge.log import LogfmtFormatter, fields, parse_logfmt


def line_for(message: str, **values: object) -> str:
    record = logging.LogRecord("edge.test", logging.WARNING, __file__, 1, message, None, None)
    for key, value in fields(**values).items():
        setattr(record, key, value)
    return LogfmtFormatter().format(record)


def test_line_has_timestamp_level_logger_message_and_fields() -> None:
    line = line_for("alarm-raised", device="efm-1", value=350.0)
    parsed = parse_logfmt(line)
    assert parsed["level"] == "warning"
    assert parsed["logger"] == "edge.test"
    assert parsed["msg"] == "alarm-raised"
    assert parsed["device"] == "efm-1"
    assert parsed["value"] == "350.0"
    assert parsed["ts"].endswith("Z")
    assert "\n" not in line


@given(st.text(), st.text())
def test_any_message_and_value_round_trip(message: str, value: str) -> None:
    parsed = parse_logfmt(line_for(message, detail=value))
    assert parsed["msg"] == message
    assert parsed["detail"] == value
