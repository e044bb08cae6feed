"""``python -m edge.config.compile``: validate a site file for the running gateway.

The running gateway never loads pydantic (docs/architecture.md, "The site file's model stays
out of the running gateway"); it starts this process instead, with a JSON request on stdin,
and reads one JSON answer on stdout. The site file is validated exactly as ``edge
check-config`` validates it (edge/config/loader.py), so errors, warnings, their positions and
suggestions are the same. The answer holds:

- ``models``: the device models of the site's Modbus devices as data
  (drivers/modbus/model.py's ``model_data``), so that the running gateway reads no model file
  and loads no YAML parser;
- ``classes``: the site model's classes as edge/config/plain.py builds them (names, fields in
  order, aliases, defaults, numeric bounds, the edge/config/behaviour.py mixins they share);
- ``config`` (or ``sections``): the validated tree, each model as ``{"$class": name, ...}``
  with what its mixins worked out beside it (``$handed``: a rule's per-device overrides, the
  site's storage policies);
- or ``issues`` (the file is unusable) or ``os_error`` (it cannot be read).

Requests: ``{"op": "load", "path": ..., "known_models": [...] | null}``, ``{"op": "parse",
"text": ..., "filename": ..., "known_models": ...}`` (or ``"site"``: the site as an object, written
out as YAML here and handed back as ``text``) and ``{"op": "salvage", "text": ...}`` (fault mode:
each section that is valid on its own).
"""

from __future__ import annotations

import json
import sys
import typing
from collections.abc import Iterator
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_core import PydanticUndefined

from drivers.catalog import family_of
from drivers.modbus.model import ModelError, load_model, model_data
from drivers.yamlpos import YamlError, load_yaml
from edge.config import model
from edge.config.issues import ConfigError
from edge.config.loader import load_site_checked, parse_site_checked
from edge.config.plain import CLASS_KEY, DICT_KEY, HANDED_KEY

__all__ = ["SALVAGED", "answer", "describe", "main", "tree_of"]

#: Fault mode's sections, each validated on its own when the whole file is not valid.
SALVAGED: dict[str, type[BaseModel]] = {
    "gateway": model.Gateway,
    "outputs": model.Outputs,
    "uplink": model.Uplink,
    "buffer": model.BufferConfig,
    "commands": model.CommandPolicy,
}


def _models_in(annotation: Any) -> Iterator[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
        return
    for arg in typing.get_args(annotation):
        yield from _models_in(arg)


def _classes(root: type[BaseModel]) -> list[type[BaseModel]]:
    """``root`` and every model class its fields hold, nested ones first."""
    found: dict[str, type[BaseModel]] = {}

    def visit(cls: type[BaseModel]) -> None:
        if cls.__name__ in found:
            if found[cls.__name__] is not cls:
                raise ValueError(f"two model classes are named {cls.__name__}")
            return
        for info in cls.model_fields.values():
            for held in _models_in(info.annotation):
                visit(held)
        found[cls.__name__] = cls

    visit(root)
    return list(found.values())


def describe() -> list[dict[str, Any]]:
    """The site model's classes for edge/config/plain.py's ``build_classes``."""
    from edge.config import behaviour  # noqa: PLC0415

    described = []
    for cls in _classes(model.SiteConfig):
        shared = [
            base
            for base in cls.__mro__[1:]
            if base.__module__ == behaviour.__name__ and base.__name__ in behaviour.__all__
        ]
        # The most derived only: OverLimitChecks brings PointRuleBehaviour with it.
        mixins = [
            base.__name__
            for base in shared
            if not any(other is not base and issubclass(other, base) for other in shared)
        ]
        fields: dict[str, Any] = {}
        for name, info in cls.model_fields.items():
            spec: dict[str, Any] = {}
            if info.alias:
                spec["alias"] = info.alias
            if info.default is not PydanticUndefined:
                spec["default"] = tree_of(info.default)
            elif info.default_factory is not None:
                spec["default"] = tree_of(info.default_factory())  # type: ignore[call-arg]
                spec["factory"] = True
            bounds = {
                bound: getattr(item, bound)
                for item in info.metadata
                for bound in ("gt", "ge", "lt", "le")
                if getattr(item, bound, None) is not None
            }
            if bounds:
                spec["bounds"] = bounds
            fields[name] = spec
        described.append({"name": cls.__name__, "mixins": mixins, "fields": fields})
    return described


def tree_of(value: Any) -> Any:
    """``value`` as JSON data, models as ``{"$class": ...}`` with their handover."""
    if isinstance(value, BaseModel):
        tree: dict[str, Any] = {CLASS_KEY: type(value).__name__}
        for name in type(value).model_fields:
            tree[name] = tree_of(getattr(value, name))
        handover = getattr(value, "handover", None)
        if handover is not None:
            tree[HANDED_KEY] = tree_of(handover())
        return tree
    if isinstance(value, dict):
        data = {str(key): tree_of(item) for key, item in value.items()}
        return {DICT_KEY: data} if any(key.startswith("$") for key in data) else data
    if isinstance(value, list | tuple):
        return [tree_of(item) for item in value]
    if value is None or isinstance(value, str | int | float):
        return value
    raise TypeError(f"no JSON form for {type(value).__name__} in the site config")


def _salvage(text: str) -> dict[str, Any]:
    sections: dict[str, Any] = dict.fromkeys(SALVAGED)
    try:
        # Read as the site loader reads it (keys as written), whatever else is wrong in it.
        data = load_yaml(text, "site").data
    except YamlError:
        return sections
    if not isinstance(data, dict):
        return sections
    for name, section in SALVAGED.items():
        try:
            sections[name] = tree_of(section.model_validate(data.get(name)))
        except ValidationError:
            continue
    return sections


def answer(request: dict[str, Any]) -> dict[str, Any]:
    """The answer to one request (see the module's docstring)."""
    op = request.get("op")
    known = request.get("known_models")
    written: dict[str, str] = {}
    try:
        if op == "load":
            config, warnings = load_site_checked(request["path"], known_models=known)
        elif op == "parse":
            if "site" in request:
                # The object's keys in the order given: the file reads like the installer's own.
                text = yaml.safe_dump(request["site"], sort_keys=False, allow_unicode=True)
                written["text"] = text
            else:
                text = request["text"]
            config, warnings = parse_site_checked(text, request["filename"], known_models=known)
        elif op == "salvage":
            return {"classes": describe(), "sections": _salvage(request["text"])}
        else:
            return {"refused": f"unknown op {op!r}"}
    except ConfigError as exc:
        return {"issues": [[i.file, i.line, i.column, i.field, i.message] for i in exc.issues]}
    except OSError as exc:
        return {"os_error": [exc.errno, exc.strerror, exc.filename, str(exc)]}
    try:
        models = _models_of(config)
    except ModelError as exc:
        return {"issues": [[request.get("filename") or request.get("path"), 1, 1, "", str(exc)]]}
    return {
        **written,
        "models": models,
        "classes": describe(),
        "config": tree_of(config),
        "warnings": [[w.file, w.line, w.column, w.field, w.message, w.kind] for w in warnings],
    }


def _models_of(config: model.SiteConfig) -> list[dict[str, Any]]:
    """The data of the device models the site's Modbus devices use, each once."""
    names = sorted({d.model for d in config.devices if family_of(d.model) == "modbus"})
    found = []
    for name in names:
        loaded = load_model(name)  # read while the site was checked: a broken file is an issue
        try:
            found.append(model_data(loaded))
        except ModelError as exc:
            raise ModelError(f"device model {name}: {exc}") from None
    return found


def main() -> int:
    request = json.loads(sys.stdin.buffer.read())
    # ensure_ascii: the answer stays ASCII whatever the locale of the pipe.
    sys.stdout.write(json.dumps(answer(request), separators=(",", ":")))
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
