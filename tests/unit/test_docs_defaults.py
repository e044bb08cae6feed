"""What the docs say the defaults and limits are is what the code has, where that is mechanical.

An installer reads docs/config.md, not edge/config/model.py; a default changed in one and not
the other is a gateway that behaves unlike its manual. The checks, each read from the code at
test time (so a changed default fails here until the docs follow):

1. Every row of the key tables of docs/config.md (the sections of :data:`TABLES`) names a
   field of the model class its section describes, and its Default column agrees with the
   field: ``required`` for a required field, ``none`` for a field that defaults to None, and a
   single literal in backticks (``502``, ``300ms``, ``true``) that the field's own type reads
   as its default. Defaults written in words ("the model's") are not checked.
2. The Modbus scheduler's and serial ports' constants that docs/drivers.md quotes
   (:data:`QUOTED`) appear there with the code's values.

docs/architecture.md ("Hand-written where a library exists") lists these checks.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Union, get_args, get_origin

import pytest
import yaml
from pydantic import BaseModel, TypeAdapter, ValidationError

from drivers.modbus import client as modbus_client
from drivers.modbus import schedule
from drivers.serial_link import OPEN_TIMEOUT, WRITE_LIMIT, SerialSensor
from edge.config import model

DOCS = Path(__file__).resolve().parents[2] / "docs"

#: The headings of docs/config.md whose key tables describe one model class each. (The rules
#: and storage tables mix several kinds in one table; they are not checked this way.)
TABLES: dict[str, type[BaseModel]] = {
    "## gateway": model.Gateway,
    "### kind: modbus-tcp": model.ModbusTcpBus,
    "### kind: modbus-rtu": model.ModbusRtuBus,
    "### kind: serial": model.SerialBus,
    "### kind: gpio": model.GpioBus,
    "## devices": model.Device,
    "## zones": model.Zone,
    "## outputs": model.Outputs,
    "## sms": model.Sms,
    "### sms.calls": model.Calls,
    "## uplink": model.Uplink,
    "## commands": model.CommandPolicy,
    "## buffer": model.BufferConfig,
    "## control": model.ControlConfig,
}


@dataclass(frozen=True)
class Row:
    heading: str
    line: int
    key: str
    default: str


def rows() -> Iterator[Row]:
    """The rows of every key table of docs/config.md under a heading of TABLES."""
    heading, columns = "", None
    for number, text in enumerate((DOCS / "config.md").read_text().splitlines(), 1):
        if text.startswith("#"):
            heading, columns = text.strip(), None
            continue
        if not text.startswith("|"):
            columns = None
            continue
        cells = [cell.strip() for cell in text.strip().strip("|").split("|")]
        if columns is None:
            columns = [cell.lower() for cell in cells]
            continue
        if set(text) <= set("|-: ") or heading not in TABLES:
            continue
        if "key" in columns and "default" in columns:
            key = cells[columns.index("key")].strip("`")
            yield Row(heading, number, key, cells[columns.index("default")])


def _model_of(annotation: Any) -> type[BaseModel] | None:
    """The model class inside ``X``, ``X | None``, ``list[X]`` or ``Annotated[X, ...]``."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if get_origin(annotation) in (Annotated, Union, list) or type(annotation).__name__ in (
        "UnionType",
    ):
        for argument in get_args(annotation):
            found = _model_of(argument)
            if found is not None:
                return found
    return None


def field_of(owner: type[BaseModel], key: str) -> tuple[type[BaseModel], str]:
    """The model and field name a dotted key of the docs names; KeyError if none."""
    *path, name = key.split(".")
    for part in path:
        inner = _model_of(owner.model_fields[part].annotation)
        if inner is None:
            raise KeyError(f"{part} is not a section")
        owner = inner
    aliases = {f.alias: n for n, f in owner.model_fields.items() if f.alias}
    name = aliases.get(name, name)
    if name not in owner.model_fields:
        raise KeyError(name)
    return owner, name


CHECKED = list(rows())


def test_the_docs_tables_are_found() -> None:
    # A renamed heading or a reshaped table must not turn the check below into no check.
    assert {row.heading for row in CHECKED} == set(TABLES)
    assert len(CHECKED) >= 80


@pytest.mark.parametrize("row", CHECKED, ids=lambda row: f"{row.heading[3:]}.{row.key}")
def test_each_documented_default_is_the_codes(row: Row) -> None:
    where = f"docs/config.md:{row.line} ({row.heading}, {row.key})"
    try:
        owner, name = field_of(TABLES[row.heading], row.key)
    except KeyError as exc:
        pytest.fail(f"{where}: the model has no such key ({exc})")
    field = owner.model_fields[name]
    said = row.default
    if said.lower() == "required":
        assert field.is_required(), f"{where}: documented as required, the code has a default"
        return
    if said.lower() == "none":
        assert not field.is_required(), f"{where}: documented as optional, the code requires it"
        assert field.get_default(call_default_factory=True) in (None, [], {}), where
        return
    literal = re.fullmatch(r"`([^`{]*)`", said)
    if literal is None:
        return  # a default in words ("the model's") or a template (`edge-{gateway id}`)
    assert not field.is_required(), f"{where}: documented default {said}, the code requires it"
    text = literal[1]
    annotation: Any = field.annotation
    if field.metadata:
        annotation = Annotated[annotation, *field.metadata]
    reader: TypeAdapter[Any] = TypeAdapter(annotation)
    try:  # as YAML reads it (`true`, `502`), else as the text it is (`5` for a version)
        documented = reader.validate_python(yaml.safe_load(text) if text else "")
    except ValidationError:
        documented = reader.validate_python(text)
    actual = field.get_default(call_default_factory=True)
    assert documented == actual, f"{where}: the docs say {said}, the code's default is {actual!r}"


#: Text docs/drivers.md must contain (whitespace and line breaks aside), built from the code.
QUOTED = [
    f"up to {schedule.PROBE_MAX:g} s (`PROBE_MAX`)",
    f"its own backoff ({schedule.RECONNECT_INITIAL:g} s to {schedule.RECONNECT_MAX:g} s)",
    f"reopened with backoff ({SerialSensor.REOPEN_INITIAL:g} s to {SerialSensor.REOPEN_MAX:g} s)",
    f"`WRITE_LIMIT` ({WRITE_LIMIT // 1024} KiB)",
    f"`connect_timeout` ({OPEN_TIMEOUT:g} s for the UART sensors",
    f"`drivers.framing.Deframer` ({modbus_client._BUFFER_CAP // 1024} KiB cap)",
]


@pytest.mark.parametrize("text", QUOTED)
def test_drivers_md_quotes_the_codes_constants(text: str) -> None:
    drivers = " ".join((DOCS / "drivers.md").read_text().split())
    assert text in drivers
