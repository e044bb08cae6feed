"""The running gateway's site config: plain objects with the site model's names and fields.

The site model (edge/config/model.py, pydantic) is the one description of the site file and
its checks, but pydantic, its core and the model's 37 classes weigh about 12 MiB, a third of
a running gateway. So the gateway validates its site file in a short-lived process
(``python -m edge.config.compile``) that hands over two things as JSON: a description of the
model's classes (names, fields in order, defaults, numeric bounds, the pydantic-free mixins of
edge/config/behaviour.py they share) and the validated tree. This module builds classes from
the description and objects from the tree, without pydantic.

A plain object answers what the run path asks of a model: its fields as attributes (frozen),
equality by fields, ``model_fields``, ``model_dump()``, ``model_dump_json()`` byte for byte as
pydantic writes it (the rule-state fingerprints of edge/rules/engine.py hash it),
``model_copy(update=...)`` and ``validated_copy(update)`` (threshold tuning: the changed
fields' bounds and the class's own checks, with pydantic's messages).
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar, Final, Self

__all__ = [
    "REQUIRED",
    "FieldSpec",
    "Plain",
    "build_classes",
    "from_tree",
    "json_of",
]

#: A field without a default (``FieldSpec.default``).
REQUIRED: Final = object()

#: The key that names a model's class in the tree; a dict of the data holding a key that
#: starts with ``$`` is wrapped as ``{"$dict": {...}}`` so the two never meet.
CLASS_KEY: Final = "$class"
DICT_KEY: Final = "$dict"
#: What the child worked out for an object (edge/config/behaviour.py, ``handover``).
HANDED_KEY: Final = "$handed"

#: pydantic's words for its numeric bounds (``greater_than``, ...), as it says them.
_BOUNDS: Final[dict[str, tuple[Callable[[Any, Any], bool], str]]] = {
    "gt": (lambda value, limit: value > limit, "greater than"),
    "ge": (lambda value, limit: value >= limit, "greater than or equal to"),
    "lt": (lambda value, limit: value < limit, "less than"),
    "le": (lambda value, limit: value <= limit, "less than or equal to"),
}


class FieldSpec:
    """One field of a plain class: what ``model_fields[name]`` gives on a pydantic model."""

    __slots__ = ("_default", "alias", "bounds", "factory", "name")

    def __init__(
        self,
        name: str,
        *,
        alias: str | None = None,
        default: Any = REQUIRED,
        factory: bool = False,
        bounds: Mapping[str, Any] | None = None,
    ) -> None:
        self.name = name
        self.alias = alias
        #: The default as the tree holds it (decoded again for each object that takes it).
        self._default = default
        self.factory = factory
        self.bounds = dict(bounds or {})

    @property
    def default(self) -> Any:
        return REQUIRED if self._default is REQUIRED else _decoded(self._default, {})

    def is_required(self) -> bool:
        return self._default is REQUIRED

    def fresh_default(self, classes: Mapping[str, type[Plain]]) -> Any:
        return _decoded(self._default, classes)

    def check(self, value: Any) -> None:
        """``value`` within this field's numeric bounds; ``ValueError`` in pydantic's words."""
        if not isinstance(value, int | float) or isinstance(value, bool):
            return
        for bound, limit in self.bounds.items():
            holds, words = _BOUNDS[bound]
            if not holds(value, limit):
                raise ValueError(f"{self.name}: Input should be {words} {limit}")


class Plain:
    """Base of the classes :func:`build_classes` makes: slotted, frozen, equal by fields."""

    __slots__ = ("_handed",)

    #: Field name -> :class:`FieldSpec`, in the model's order.
    model_fields: ClassVar[dict[str, FieldSpec]] = {}
    #: Every class of the same description, by name (for nested defaults and siblings).
    _classes: ClassVar[dict[str, type[Plain]]] = {}

    def __init__(self, **values: Any) -> None:
        unknown = set(values) - set(self.model_fields)
        if unknown:
            raise TypeError(f"{type(self).__name__} has no field {', '.join(sorted(unknown))}")
        for name, spec in self.model_fields.items():
            if name in values:
                value = values[name]
            elif spec.is_required():
                raise TypeError(f"{type(self).__name__} needs {name}")
            else:
                value = spec.fresh_default(self._classes)
            object.__setattr__(self, name, value)
        object.__setattr__(self, "_handed", {})

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"{type(self).__name__} is frozen: {name} cannot be set")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"{type(self).__name__} is frozen: {name} cannot be deleted")

    def _values(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in self.model_fields)

    def __eq__(self, other: object) -> bool:
        # Equal to the model it stands for too (same class name, same fields, equal values):
        # pydantic's __eq__ declines a non-model, so Python asks this one.
        fields = getattr(type(other), "model_fields", None)
        if type(other).__name__ != type(self).__name__ or fields is None:
            return NotImplemented
        if list(fields) != list(self.model_fields):
            return False
        return self._values() == tuple(getattr(other, name) for name in self.model_fields)

    def __hash__(self) -> int:
        return hash((type(self).__name__, *self._values()))

    def __repr__(self) -> str:
        inside = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.model_fields)
        return f"{type(self).__name__}({inside})"

    def _handed_over(self, key: str) -> Any:
        """What the validating process worked out for this object under ``key`` (None:
        nothing)."""
        handed: dict[str, Any] = self._handed  # type: ignore[attr-defined]
        return handed.get(key)

    def _sibling(self, name: str) -> type[Plain]:
        return self._classes[name]

    def model_dump(
        self, *, exclude: Iterable[str] | None = None, by_alias: bool = False
    ) -> dict[str, Any]:
        left_out = set(exclude or ())
        return {
            (spec.alias or name) if by_alias else name: _dumped(getattr(self, name))
            for name, spec in self.model_fields.items()
            if name not in left_out
        }

    def model_dump_json(self, *, exclude: Iterable[str] | None = None) -> str:
        """Compact JSON exactly as pydantic's ``model_dump_json`` writes it."""
        left_out = set(exclude or ())
        return json_of(
            {name: getattr(self, name) for name in self.model_fields if name not in left_out}
        )

    def model_copy(self, *, update: Mapping[str, Any] | None = None) -> Self:
        """A copy with ``update`` laid over, not checked (as pydantic's ``model_copy``)."""
        values = {name: getattr(self, name) for name in self.model_fields}
        values.update(update or {})
        copy = type(self)(**values)
        object.__setattr__(copy, "_handed", self._handed)  # type: ignore[attr-defined]
        return copy

    def validated_copy(self, update: Mapping[str, Any]) -> Self:
        """A copy with ``update``, checked as the site model checks it: each changed field's
        bounds, then the class's own checks. ``ValueError`` as ``field: message``."""
        for name, value in update.items():
            self.model_fields[name].check(value)
        copy = self.model_copy(update=update)
        check = getattr(copy, "check", None)
        if check is not None:
            check()
        return copy


def build_classes(description: Iterable[Mapping[str, Any]]) -> dict[str, type[Plain]]:
    """The plain classes of ``description`` (edge/config/compile.py, ``describe``), by name.

    Each one's bases are :class:`Plain` (first: its hooks win over the mixins' model ones)
    and the mixins it names, from edge/config/behaviour.py and nowhere else."""
    from edge.config import behaviour  # noqa: PLC0415 (behaviour imports this module)

    classes: dict[str, type[Plain]] = {}
    for entry in description:
        mixins = []
        for mixin in entry["mixins"]:
            if mixin not in behaviour.__all__:
                raise ValueError(f"class {entry['name']}: {mixin!r} is not a known behaviour")
            mixins.append(getattr(behaviour, mixin))
        fields = {
            name: FieldSpec(
                name,
                alias=spec.get("alias"),
                default=spec.get("default", REQUIRED),
                factory=spec.get("factory", False),
                bounds=spec.get("bounds"),
            )
            for name, spec in entry["fields"].items()
        }
        namespace = {
            "__slots__": tuple(fields),
            "__module__": __name__,
            "__qualname__": entry["name"],
            "model_fields": fields,
            "_classes": classes,
        }
        classes[entry["name"]] = type(entry["name"], (Plain, *mixins), namespace)
    return classes


def from_tree(tree: Any, classes: Mapping[str, type[Plain]]) -> Any:
    """The objects of ``tree`` (the child's JSON), models as instances of ``classes``."""
    return _decoded(tree, classes)


def _decoded(tree: Any, classes: Mapping[str, type[Plain]]) -> Any:
    if isinstance(tree, list):
        return [_decoded(item, classes) for item in tree]
    if not isinstance(tree, dict):
        # One copy of each text: JSON gives every device id, bus and point name its own
        # string, once per place it appears (3,000 of them at a site of 1,000 points).
        return sys.intern(tree) if type(tree) is str else tree
    if DICT_KEY in tree:
        return {key: _decoded(value, classes) for key, value in tree[DICT_KEY].items()}
    name = tree.get(CLASS_KEY)
    if name is None:
        return {key: _decoded(value, classes) for key, value in tree.items()}
    values = {
        key: _decoded(value, classes)
        for key, value in tree.items()
        if key not in (CLASS_KEY, HANDED_KEY)
    }
    made = classes[name](**values)
    handed = tree.get(HANDED_KEY)
    if handed:
        object.__setattr__(made, "_handed", _decoded(handed, classes))
    return made


def _dumped(value: Any) -> Any:
    if isinstance(value, Plain):
        return value.model_dump()
    if isinstance(value, list | tuple):
        return [_dumped(item) for item in value]
    if isinstance(value, dict):
        return {key: _dumped(item) for key, item in value.items()}
    return value


def json_of(value: Any) -> str:
    """``value`` as pydantic-core writes JSON: no spaces, UTF-8 kept, its floats."""
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return str(int(value))
    if isinstance(value, float):
        return _float_json(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, Plain):
        return json_of({name: getattr(value, name) for name in value.model_fields})
    if isinstance(value, list | tuple):
        return "[" + ",".join(json_of(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{json_of(str(k))}:{json_of(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"no JSON for {type(value).__name__}")


def _float_json(value: float) -> str:
    """A float as pydantic-core spells it: Python's shortest repr, but the exponent without
    leading zeros (``1e-7``, ``1e+16``) and the exponent -5 written out (``0.00001234``);
    infinities and NaN as null (its default ``ser_json_inf_nan``)."""
    if not math.isfinite(value):
        return "null"
    text = repr(value)
    mantissa, e, exponent = text.partition("e")
    if not e:
        return text
    power = int(exponent)
    if power == -5:
        sign, digits = ("-", mantissa[1:]) if mantissa.startswith("-") else ("", mantissa)
        return f"{sign}0.0000{digits.replace('.', '')}"
    return f"{mantissa}e{power}" if power < 0 else f"{mantissa}e+{power}"
