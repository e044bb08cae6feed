"""Device models: register maps as data, and the pure codec over them.

A device model is a YAML file in ``drivers/models/<name>.yaml`` (see docs/devices/efm-ref.md for
the format). It is loaded once into frozen :class:`DeviceModel` / :class:`Point` objects; the
poller and the simulator both use :func:`read_plan`, :func:`decode` and :func:`encode` on it, so
the two ends of the wire share one map.

This module is pure code over integers: no I/O apart from reading model files, no asyncio.
The running gateway reads no model file: the process that validated its site file hands over
the models the site uses as data (:func:`model_data`), built here again without a YAML parser
(:func:`model_from_data`, :func:`hand_over`); only :func:`parse_model` loads one.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import re
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal, TypeAlias, cast, get_args

if TYPE_CHECKING:
    from collections.abc import Iterable

__all__ = [
    "DEFAULT_MAX_GAP",
    "MODBUS_MAX_READ",
    "MODEL_PATH_VARIABLE",
    "Access",
    "DeviceModel",
    "ModelError",
    "Point",
    "PointType",
    "RegisterTable",
    "WordOrder",
    "decode",
    "encode",
    "forget_models",
    "hand_over",
    "known_models",
    "load_model",
    "load_model_file",
    "model_data",
    "model_from_data",
    "parse_model",
    "read_plan",
]

#: FC03/FC04 read at most 125 registers (Modbus Application Protocol v1.1b, 6.3/6.4).
MODBUS_MAX_READ: Final = 125
#: A separate RTU read costs 20 characters more than extending one (8 request + 5 response
#: header + 7 silent), and a register 2 characters: reading through a gap of up to 9 unmapped
#: registers is cheaper than a second request.
DEFAULT_MAX_GAP: Final = 9

PointType: TypeAlias = Literal["u16", "i16", "u32", "i32", "f32"]
#: ``big``: high word first (AB CD, the Modbus convention); ``little``: low word first (CD AB).
WordOrder: TypeAlias = Literal["big", "little"]
#: ``r``: read-only measurement or status; ``rw``: a setting the master may write.
Access: TypeAlias = Literal["r", "rw"]
#: ``holding``: read with FC03; ``input``: read with FC04.
RegisterTable: TypeAlias = Literal["holding", "input"]

POINT_TYPES: Final[tuple[str, ...]] = get_args(PointType)
_WORD_ORDERS: Final[tuple[str, ...]] = get_args(WordOrder)
_ACCESSES: Final[tuple[str, ...]] = get_args(Access)
_TABLES: Final[tuple[str, ...]] = get_args(RegisterTable)
_SIZE: Final[dict[str, int]] = {"u16": 1, "i16": 1, "u32": 2, "i32": 2, "f32": 2}
#: Raw (unscaled) integer ranges; f32 is checked by struct.
_RAW_RANGE: Final[dict[str, tuple[int, int]]] = {
    "u16": (0, 0xFFFF),
    "i16": (-0x8000, 0x7FFF),
    "u32": (0, 0xFFFF_FFFF),
    "i32": (-0x8000_0000, 0x7FFF_FFFF),
}
_NAME_RE: Final = re.compile(r"^[a-z][a-z0-9_]*$")
_MODEL_NAME_RE: Final = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")


class ModelError(ValueError):
    """A device model is malformed; the message names the file, line and field when known."""


def _decimal_places(value: float) -> int:
    """Digits after the point in the shortest text that reads back as ``value`` once its
    trailing zeros are gone: 0.1 has 1, 250.0 has 0, 1e-07 has 7, 1.5e-05 has 6.

    Read from ``repr``'s text (``0.001``, ``1.5e-05``, ``1e+21``), not through ``decimal``,
    which the running gateway does not load for this alone.
    """
    mantissa, _, exponent = repr(abs(value)).partition("e")
    fraction = mantissa.partition(".")[2].rstrip("0")
    return max(0, len(fraction) - int(exponent or "0"))


@dataclass(frozen=True, slots=True)
class Point:
    """One named value in a device's register map.

    ``value = raw * scale``, where ``raw`` is the register content read as ``type``.
    """

    name: str
    address: int
    type: PointType
    scale: float = 1.0
    unit: str = ""
    description: str = ""
    access: Access = "r"
    #: Only meaningful for 32-bit types.
    word_order: WordOrder = "big"
    #: A typical healthy reading: the simulator starts from it.
    typical: float = 0.0
    #: For bitfields: (bit number, name) pairs, bit 0 the least significant.
    bits: tuple[tuple[int, str], ...] = ()
    #: Alarm-critical: read on the bus's fast lane too, when the device has a fast interval.
    critical: bool = False
    #: The model's default storage policy of the point, as the file writes it (a policy name,
    #: or (key, value) pairs); the gateway checks and applies it (edge/config/storage.py).
    storage: str | tuple[tuple[str, Any], ...] | None = field(default=None, compare=False)
    #: Where an alarm threshold on this point sensibly lies (low, high), in ``unit``.
    plausible: tuple[float, float] | None = None
    #: Decimal places of ``scale``: decoded values are rounded to them, so 3 x 0.1 reads 0.3.
    decimals: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not _NAME_RE.match(self.name):
            raise ModelError(
                f"point name {self.name!r} must be lower case letters, digits and '_', "
                "starting with a letter"
            )
        if self.type not in POINT_TYPES:
            raise ModelError(
                f"point {self.name!r}: unknown type {self.type!r} (known: {', '.join(POINT_TYPES)})"
            )
        if isinstance(self.address, bool) or not isinstance(self.address, int):
            raise ModelError(f"point {self.name!r}: address must be an integer")
        if not 0 <= self.address <= 0xFFFF - self.size + 1:
            raise ModelError(
                f"point {self.name!r}: address {self.address} is outside 0..65535 "
                f"for a {self.size}-register {self.type}"
            )
        if (
            isinstance(self.scale, bool)
            or not isinstance(self.scale, int | float)
            or not math.isfinite(self.scale)
            or self.scale == 0
        ):
            raise ModelError(f"point {self.name!r}: scale must be a finite non-zero number")
        if self.access not in _ACCESSES:
            raise ModelError(f"point {self.name!r}: access must be one of {', '.join(_ACCESSES)}")
        if self.word_order not in _WORD_ORDERS:
            raise ModelError(
                f"point {self.name!r}: word_order must be one of {', '.join(_WORD_ORDERS)}"
            )
        if not isinstance(self.critical, bool):
            raise ModelError(f"point {self.name!r}: critical must be true or false")
        if self.bits:
            if self.type != "u16":
                raise ModelError(f"point {self.name!r}: bits are only allowed on a u16 point")
            seen: set[str] = set()
            for bit, bit_name in self.bits:
                if isinstance(bit, bool) or not isinstance(bit, int) or not 0 <= bit <= 15:
                    raise ModelError(f"point {self.name!r}: bit {bit!r} is not in 0..15")
                if not isinstance(bit_name, str) or not _NAME_RE.match(bit_name):
                    raise ModelError(f"point {self.name!r}: bit {bit} name {bit_name!r} is invalid")
                if bit_name in seen:
                    raise ModelError(f"point {self.name!r}: bit name {bit_name!r} is used twice")
                seen.add(bit_name)
            if len({bit for bit, _ in self.bits}) != len(self.bits):
                raise ModelError(f"point {self.name!r}: a bit number is listed twice")
        # Hold numbers as floats whatever the YAML wrote (``scale: 1`` is an int there).
        object.__setattr__(self, "scale", float(self.scale))
        object.__setattr__(self, "decimals", _decimal_places(self.scale))
        try:
            _to_registers(self, self.typical)
        except ValueError as exc:
            raise ModelError(f"point {self.name!r}: typical value: {exc}") from None
        object.__setattr__(self, "typical", float(self.typical))

    @property
    def size(self) -> int:
        """Number of 16-bit registers the point occupies."""
        return _SIZE.get(self.type, 1)

    @property
    def end(self) -> int:
        """First register address after the point."""
        return self.address + self.size

    def describe_registers(self) -> str:
        """``register 5`` or ``registers 5-6``, for messages."""
        if self.size == 1:
            return f"register {self.address}"
        return f"registers {self.address}-{self.end - 1}"


@dataclass(frozen=True, slots=True)
class DeviceModel:
    """A product's register map: which table to read and the points in it."""

    name: str
    title: str
    registers: RegisterTable
    points: tuple[Point, ...]
    #: Some products answer fewer registers per read than Modbus allows.
    max_read: int = MODBUS_MAX_READ
    #: Longest run of unmapped registers one read may span to save a request. 0 for products
    #: that answer "illegal data address" when a read touches a register they do not have.
    max_gap: int = DEFAULT_MAX_GAP
    _by_name: dict[str, Point] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not _MODEL_NAME_RE.match(self.name):
            raise ModelError(f"model name {self.name!r} must be lower case, e.g. 'efm-ref'")
        if self.registers not in _TABLES:
            raise ModelError(
                f"registers must be one of {', '.join(_TABLES)}, not {self.registers!r}"
            )
        if (
            isinstance(self.max_read, bool)
            or not isinstance(self.max_read, int)
            or not 1 <= self.max_read <= MODBUS_MAX_READ
        ):
            raise ModelError(
                f"max_read {self.max_read!r} must be 1..{MODBUS_MAX_READ} "
                "(FC03/FC04 read at most 125 registers)"
            )
        if (
            isinstance(self.max_gap, bool)
            or not isinstance(self.max_gap, int)
            or not 0 <= self.max_gap < MODBUS_MAX_READ
        ):
            raise ModelError(f"max_gap {self.max_gap!r} must be 0..{MODBUS_MAX_READ - 1}")
        if not self.points:
            raise ModelError("a model needs at least one point")
        by_name: dict[str, Point] = {}
        for point in self.points:
            if point.name in by_name:
                raise ModelError(f"point name {point.name!r} is used twice")
            by_name[point.name] = point
        ordered = sorted(self.points, key=lambda p: p.address)
        for before, after in itertools.pairwise(ordered):
            if after.address < before.end:
                raise ModelError(
                    f"points {before.name!r} ({before.describe_registers()}) and "
                    f"{after.name!r} ({after.describe_registers()}) overlap"
                )
        object.__setattr__(self, "_by_name", by_name)

    @property
    def function_code(self) -> int:
        """The Modbus function that reads this model's registers."""
        return 3 if self.registers == "holding" else 4

    def point(self, name: str) -> Point:
        """The point called ``name``; ``ValueError`` naming the model if there is none."""
        try:
            return self._by_name[name]
        except KeyError:
            raise ValueError(f"model {self.name} has no point {name!r}") from None

    def has_point(self, name: str) -> bool:
        """Whether the model has a point called ``name``."""
        return name in self._by_name


# --------------------------------------------------------------------------------------------
# Codec


def read_plan(
    model: DeviceModel,
    points: Sequence[Point] | None = None,
    *,
    max_gap: int | None = None,
) -> list[tuple[int, int]]:
    """The fewest reads that fetch ``points`` (default: all): ``[(start, count), ...]``.

    Adjacent points are coalesced into one read (one request per block is worth up to 10x on a
    9600-baud line), and so are points separated by at most ``max_gap`` unmapped registers
    (default: the model's ``max_gap``), since reading a short gap costs less than a new request.
    A longer gap starts a new read, and so does reaching ``model.max_read``. A point is never
    split across two reads. Points are taken in address order, so the plan is optimal: each
    read is extended as far as the limits allow before a new one starts.
    """
    gap = model.max_gap if max_gap is None else max_gap
    chosen = model.points if points is None else points
    if not chosen:
        return []
    plan: list[tuple[int, int]] = []
    start = end = -1
    for point in sorted(chosen, key=lambda p: p.address):
        if start >= 0 and end <= point.address <= end + gap and point.end - start <= model.max_read:
            end = point.end
            continue
        if start >= 0:
            plan.append((start, end - start))
        start, end = point.address, point.end
    plan.append((start, end - start))
    return plan


def decode(model: DeviceModel, start: int, registers: Sequence[int]) -> dict[str, float]:
    """Scaled values of the points lying wholly inside ``registers`` (read from ``start``).

    Points only partly inside are left out, so a read of any range is safe to decode.
    Raises ``ValueError`` if a register is not a 16-bit unsigned value.
    """
    for index, register in enumerate(registers):
        if type(register) is not int or not 0 <= register <= 0xFFFF:
            raise ValueError(f"register {start + index} holds {register!r}, not a u16")
    stop = start + len(registers)
    values: dict[str, float] = {}
    for point in model.points:
        if point.address >= start and point.end <= stop:
            offset = point.address - start
            values[point.name] = _from_registers(point, registers[offset : offset + point.size])
    return values


def encode(model: DeviceModel, values: Mapping[str, float]) -> dict[int, int]:
    """Register contents for ``values``: ``{register address: u16}``.

    Raises ``ValueError`` for an unknown point or a value the point's type cannot hold.
    """
    registers: dict[int, int] = {}
    for name, value in values.items():
        point = model.point(name)
        for offset, register in enumerate(_to_registers(point, value)):
            registers[point.address + offset] = register
    return registers


def _from_registers(point: Point, words: Sequence[int]) -> float:
    if point.size == 1:
        raw = words[0]
        if point.type == "i16" and raw & 0x8000:
            raw -= 0x10000
        return _scaled(point, raw)
    high, low = (words[0], words[1]) if point.word_order == "big" else (words[1], words[0])
    if point.type == "f32":
        (number,) = struct.unpack(">f", struct.pack(">HH", high, low))
        return float(number) * point.scale
    raw = (high << 16) | low
    if point.type == "i32" and raw & 0x8000_0000:
        raw -= 0x1_0000_0000
    return _scaled(point, raw)


def _scaled(point: Point, raw: int) -> float:
    return float(round(raw * point.scale, point.decimals))


def _to_registers(point: Point, value: float) -> list[int]:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{point.name} needs a number, not {value!r}")
    if point.type == "f32":
        try:
            packed = struct.pack(">f", value / point.scale)
        except OverflowError:
            raise ValueError(f"{point.name}={value} is out of range for f32") from None
        high, low = struct.unpack(">HH", packed)
    else:
        if not math.isfinite(value):
            raise ValueError(f"{point.name}={value} cannot be held by a {point.type}")
        raw = round(value / point.scale)
        lowest, highest = _RAW_RANGE[point.type]
        if not lowest <= raw <= highest:
            raise ValueError(
                f"{point.name}={value} {point.unit}".rstrip()
                + f" is out of range for {point.type} x {point.scale:g} "
                f"({_scaled(point, lowest):g}..{_scaled(point, highest):g})"
            )
        raw &= 0xFFFF if point.size == 1 else 0xFFFF_FFFF
        if point.size == 1:
            return [raw]
        high, low = raw >> 16, raw & 0xFFFF
    return [high, low] if point.word_order == "big" else [low, high]


# --------------------------------------------------------------------------------------------
# Model files


#: Folders of site-local model files, searched after the shipped ones (``os.pathsep``
#: separated): a product can be added on a gateway by dropping a file there, without a new
#: release. The shipped models win on a name clash, so a stray file cannot change them.
MODEL_PATH_VARIABLE: Final = "EDGE_MODEL_PATH"


def _local_folders() -> list[Path]:
    value = os.environ.get(MODEL_PATH_VARIABLE, "")
    return [Path(part) for part in value.split(os.pathsep) if part]


def known_models() -> list[str]:
    """Names of the model files shipped in ``drivers/models`` and in ``$EDGE_MODEL_PATH``."""
    folder = resources.files("drivers") / "models"
    names = {
        entry.name.removesuffix(".yaml")
        for entry in folder.iterdir()
        if entry.is_file() and entry.name.endswith(".yaml")
    }
    for local in _local_folders():
        with contextlib.suppress(OSError):
            names.update(
                entry.stem
                for entry in local.iterdir()
                if entry.suffix == ".yaml" and _MODEL_NAME_RE.match(entry.stem)
            )
    return sorted(names)


#: Models handed over by the process that validated the site file, by name: what the running
#: gateway uses instead of reading the files again.
_handed: dict[str, DeviceModel] = {}


def hand_over(models: Iterable[DeviceModel]) -> None:
    """Make :func:`load_model` answer with ``models`` (the newest hand-over of a name wins: it
    is what the site file was last validated against)."""
    for model in models:
        _handed[model.name] = model


def load_model(name: str) -> DeviceModel:
    """The model called ``name``: a handed-over one (:func:`hand_over`), else read from
    ``drivers/models/<name>.yaml``, else from the first ``<name>.yaml`` in
    ``$EDGE_MODEL_PATH``."""
    handed = _handed.get(name)
    return handed if handed is not None else _load_model_file(name)


def forget_models() -> None:
    """Drop what :func:`hand_over` and the files gave (for tests that change the files)."""
    _handed.clear()
    _load_model_file.cache_clear()


@cache
def _load_model_file(name: str) -> DeviceModel:
    """Cached: models are immutable."""
    if not _MODEL_NAME_RE.match(name):
        raise ModelError(f"{name!r} is not a model name")
    resource = resources.files("drivers") / "models" / f"{name}.yaml"
    if resource.is_file():
        source = f"drivers/models/{name}.yaml"
        text = _text(resource.read_bytes(), source)
    else:
        local = next(
            (
                folder / f"{name}.yaml"
                for folder in _local_folders()
                if (folder / f"{name}.yaml").is_file()
            ),
            None,
        )
        if local is None:
            raise ModelError(f"unknown device model {name!r} (known: {', '.join(known_models())})")
        source = str(local)
        try:
            raw = local.read_bytes()
        except OSError as exc:
            raise ModelError(f"{source}: cannot read: {exc.strerror or exc}") from None
        text = _text(raw, source)
    model = parse_model(text, source)
    if model.name != name:
        raise ModelError(f"{source}: name is {model.name!r}, but the file is called {name}.yaml")
    return model


def load_model_file(path: str | Path) -> DeviceModel:
    """Load a model from a file anywhere (for drafting a new product's map, and tests)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ModelError(f"{path}: cannot read: {exc.strerror or exc}") from None
    return parse_model(_text(raw, str(path)), str(path))


def _text(raw: bytes, source: str) -> str:
    """A model file's text; ``ModelError`` at the line of a byte that is not UTF-8."""
    from drivers.yamlpos import YamlError, decode  # noqa: PLC0415

    try:
        return decode(raw, source)
    except YamlError as exc:
        raise ModelError(f"{source}:{exc.issue.line}: {exc.issue.message}") from None


def parse_model(text: str, source: str = "<model>") -> DeviceModel:
    """Parse and validate a model file's text; ``source`` names it in error messages."""
    # Here only: the running gateway builds its models from data (model_from_data).
    from drivers.yamlpos import YamlError, load_yaml  # noqa: PLC0415

    try:
        doc = load_yaml(text, source)
    except YamlError as exc:
        problem = exc.issue.message.removeprefix("YAML syntax error: ")
        raise ModelError(f"{source}:{exc.issue.line}: not valid YAML: {problem}") from None
    if doc.issues:
        # A duplicate key or an unsafe tag: the model would silently differ from the file.
        first = doc.issues[0]
        raise ModelError(f"{source}:{first.line}: {first.field}: {first.message}")
    data = doc.data
    if not isinstance(data, dict):
        raise ModelError(f"{source}: a model file is a mapping with name, registers and points")
    top = _Fields(data, source, "model", _MODEL_FIELDS, doc.line(()))
    name = top.get_str("name", required=True)
    title = top.get_str("title", default=name)
    table = top.get_str("registers", default="holding")
    max_read = top.get_int("max_read", default=MODBUS_MAX_READ)
    max_gap = top.get_int("max_gap", default=DEFAULT_MAX_GAP)
    default_order = top.get_str("word_order", default="big")
    raw_points = top.get("points", required=True)
    if not isinstance(raw_points, list) or not raw_points:
        raise ModelError(f"{top.where()}: points must be a non-empty list")

    points: list[Point] = []
    for index, raw in enumerate(raw_points):
        if not isinstance(raw, dict):
            raise ModelError(f"{top.where()}: points[{index}] must be a mapping")
        label = f"point {raw['name']!r}" if isinstance(raw.get("name"), str) else f"points[{index}]"
        fields = _Fields(raw, source, label, _POINT_FIELDS, doc.line(("points", index)))
        arguments: dict[str, Any] = {
            "name": fields.get_str("name", required=True),
            "address": fields.get_int("address", required=True),
            "type": fields.get_str("type", required=True),
            "scale": fields.get_number("scale", default=1.0),
            "unit": fields.get_str("unit", default=""),
            "description": fields.get_str("description", default=""),
            "access": fields.get_str("access", default="r"),
            "word_order": fields.get_str("word_order", default=default_order),
            "typical": fields.get_number("typical", default=0.0),
            "bits": fields.get_bits("bits"),
            "critical": fields.get_bool("critical", default=False),
            "storage": fields.get_storage("storage"),
            "plausible": fields.get_range("plausible"),
        }
        try:
            point = Point(**arguments)
        except ModelError as exc:
            # Point's own checks name the point; add where it is.
            raise ModelError(f"{fields.where()}: {exc}") from None
        if "word_order" in raw and point.size == 1:
            raise ModelError(
                f"{fields.where()}: {fields.label}: word_order only applies to 32-bit types"
            )
        points.append(point)
    try:
        return DeviceModel(
            name=name,
            title=title,
            registers=cast(RegisterTable, table),
            points=tuple(points),
            max_read=max_read,
            max_gap=max_gap,
        )
    except ModelError as exc:
        raise ModelError(f"{source}: {exc}") from None


#: A point's fields in :func:`model_data`'s form, in :class:`Point`'s order.
_POINT_DATA: Final = (
    "name", "address", "type", "scale", "unit", "description", "access", "word_order",
    "typical", "bits", "critical", "storage", "plausible",
)  # fmt: skip
_MODEL_DATA: Final = ("name", "title", "registers", "max_read", "max_gap")
#: What a storage setting of a model may hold to be handed over as JSON.
_JSON_SCALARS: Final = (str, int, float, bool, type(None))


def model_data(model: DeviceModel) -> dict[str, Any]:
    """``model`` as JSON data, for a process that has no YAML parser (:func:`model_from_data`
    builds it back). ``ModelError`` for a storage setting JSON cannot carry (a date, bytes)."""
    points = []
    for point in model.points:
        data = {name: getattr(point, name) for name in _POINT_DATA}
        if not _is_json(point.storage):
            raise ModelError(
                f"point {point.name!r}: storage holds a value that is not text, a number or a list"
            )
        points.append(data)
    return {**{name: getattr(model, name) for name in _MODEL_DATA}, "points": points}


def _is_json(value: object) -> bool:
    if isinstance(value, _JSON_SCALARS):
        return True
    if isinstance(value, list | tuple):
        return all(_is_json(item) for item in value)
    if isinstance(value, dict):
        return all(isinstance(key, str) and _is_json(item) for key, item in value.items())
    return False


def model_from_data(data: Mapping[str, Any]) -> DeviceModel:
    """The :class:`DeviceModel` that :func:`model_data` gave ``data`` for, checked as a model
    file's is; ``ValueError`` (a ``ModelError`` for a model that is wrong, a ``TypeError`` for a
    form that is not :func:`model_data`'s, a ``KeyError`` for a missing field)."""
    points = []
    for raw in data["points"]:
        fields: dict[str, Any] = {name: raw[name] for name in _POINT_DATA}
        fields["bits"] = tuple((bit, name) for bit, name in fields["bits"])
        storage = fields["storage"]
        if isinstance(storage, list):
            fields["storage"] = tuple((key, value) for key, value in storage)
        plausible = fields["plausible"]
        if plausible is not None:
            low, high = plausible
            fields["plausible"] = (low, high)
        points.append(Point(**fields))
    return DeviceModel(**{name: data[name] for name in _MODEL_DATA}, points=tuple(points))


_MODEL_FIELDS: Final = frozenset(
    {"name", "title", "registers", "max_read", "max_gap", "word_order", "points"}
)
_POINT_FIELDS: Final = frozenset(
    {
        "name",
        "address",
        "type",
        "scale",
        "unit",
        "description",
        "access",
        "word_order",
        "typical",
        "bits",
        "critical",
        "storage",
        "plausible",
    }
)


class _Fields:
    """Typed access to one YAML mapping, with errors that say file, line and field."""

    def __init__(
        self, data: dict[str, Any], source: str, label: str, allowed: frozenset[str], line: int
    ) -> None:
        self.data = data
        self.source = source
        self.label = label
        #: The line the mapping starts on.
        self.line = line
        unknown = sorted(key for key in data if key not in allowed)
        if unknown:
            raise ModelError(
                f"{self.where()}: {label}: unknown field {', '.join(unknown)} "
                f"(known: {', '.join(sorted(allowed))})"
            )

    def where(self) -> str:
        return f"{self.source}:{self.line}"

    def get(self, key: str, *, required: bool = False, default: object = None) -> object:
        if key not in self.data:
            if required:
                raise ModelError(f"{self.where()}: {self.label}: {key} is missing")
            return default
        return self.data[key]

    def _wrong(self, key: str, wanted: str, value: object) -> ModelError:
        return ModelError(f"{self.where()}: {self.label}: {key} must be {wanted}, not {value!r}")

    def get_str(self, key: str, *, required: bool = False, default: str = "") -> str:
        value = self.get(key, required=required, default=default)
        if not isinstance(value, str):
            raise self._wrong(key, "text", value)
        return value

    def get_int(self, key: str, *, required: bool = False, default: int = 0) -> int:
        value = self.get(key, required=required, default=default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self._wrong(key, "an integer", value)
        return value

    def get_bool(self, key: str, *, default: bool) -> bool:
        value = self.get(key, default=default)
        if not isinstance(value, bool):
            raise self._wrong(key, "true or false", value)
        return value

    def get_number(self, key: str, *, default: float) -> float:
        value = self.get(key, default=default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self._wrong(key, "a number", value)
        return value

    def get_storage(self, key: str) -> str | tuple[tuple[str, Any], ...] | None:
        value = self.get(key)
        if value is None or isinstance(value, str):
            return value
        if not isinstance(value, dict):
            raise self._wrong(key, "a policy name or a mapping (policy, band, ...)", value)
        return tuple((str(k), v) for k, v in value.items())

    def get_range(self, key: str) -> tuple[float, float] | None:
        value = self.get(key)
        if value is None:
            return None
        if (
            not isinstance(value, list)
            or len(value) != 2
            or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
            or not value[0] < value[1]
        ):
            raise ModelError(f"{self.where()}: {self.label}: {key} must be [low, high], low < high")
        return float(value[0]), float(value[1])

    def get_bits(self, key: str) -> tuple[tuple[int, str], ...]:
        value = self.get(key, default={})
        if not isinstance(value, dict):
            raise self._wrong(key, "a mapping of bit number to name", value)
        bits: list[tuple[int, str]] = []
        for bit, bit_name in value.items():
            # Keys are read as written: a bit number is decimal digits.
            if not (isinstance(bit, str) and bit.isascii() and bit.isdigit()):
                raise self._wrong(f"{key} key", "a bit number 0..15", bit)
            if not isinstance(bit_name, str):
                raise self._wrong(f"{key}[{bit}]", "a name", bit_name)
            bits.append((int(bit), bit_name))
        return tuple(sorted(bits))
