"""The JSON Schema of the site file, generated from the typed model.

Editors (for example VS Code with the YAML extension) use it to complete keys and flag mistakes
while the site file is being written. It is committed as ``config/site.schema.json``; after a
change to the model, regenerate it with::

    python -m edge.config.schema           # write config/site.schema.json
    python -m edge.config.schema --check   # exit 1 when the committed file is stale

The gateway itself never reads the schema: it validates with the model (see ``loader.py``).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edge.config.duration import PATTERN as DURATION_PATTERN
from edge.config.duration import format_duration
from edge.config.model import SiteConfig
from edge.config.size import PATTERN as SIZE_PATTERN
from edge.config.size import format_size

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "config" / "site.schema.json"
SCHEMA_ID = "urn:city-safety-edge:site-config"
DIALECT = "https://json-schema.org/draft/2020-12/schema"


def _spell_duration_defaults(node: Any) -> None:
    """Defaults of duration fields are held as float seconds; spell them as the file would
    (``1.0`` -> ``"1s"``), so that each default is valid against its own schema."""
    if isinstance(node, dict):
        default = node.get("default")
        if (
            node.get("pattern") == DURATION_PATTERN
            and isinstance(default, int | float)
            and not isinstance(default, bool)
        ):
            node["default"] = format_duration(float(default))
        for value in node.values():
            _spell_duration_defaults(value)
    elif isinstance(node, list):
        for value in node:
            _spell_duration_defaults(value)


def _spell_size_defaults(node: Any) -> None:
    """Defaults of size fields are held as int bytes; spell them as the file would
    (``2147483648`` -> ``"2GiB"``)."""
    if isinstance(node, dict):
        default = node.get("default")
        if node.get("pattern") == SIZE_PATTERN and isinstance(default, int):
            node["default"] = format_size(default)
        for value in node.values():
            _spell_size_defaults(value)
    elif isinstance(node, list):
        for value in node:
            _spell_size_defaults(value)


def site_json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a site file."""
    schema = SiteConfig.model_json_schema()
    _spell_duration_defaults(schema)
    _spell_size_defaults(schema)
    schema["$schema"] = DIALECT
    schema["$id"] = SCHEMA_ID
    schema["title"] = "City safety edge gateway: site file"
    schema["description"] = (
        "One gateway: its identity, field buses, devices, alarm rules, alarm outputs, "
        "uplink to the district platform and local buffer. Durations are strings with a unit "
        "('500ms', '2s', '5m', '1h', '60d', '2w'). The gateway also checks cross-references "
        "(unique ids, existing buses and devices, one device per Modbus address) that a "
        "schema cannot express: run 'edge check-config FILE'."
    )
    return schema


def render_schema() -> str:
    """The schema as committed: indented, keys sorted, ending in a newline."""
    return json.dumps(site_json_schema(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m edge.config.schema",
        description=f"Write the site file's JSON Schema to {SCHEMA_PATH.parent.name}/"
        f"{SCHEMA_PATH.name}.",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="do not write; exit 1 when the committed schema differs from the model",
    )
    args = parser.parse_args(argv)
    rendered = render_schema()
    relative = f"{SCHEMA_PATH.parent.name}/{SCHEMA_PATH.name}"
    if args.check:
        try:
            current = SCHEMA_PATH.read_text(encoding="utf-8")
        except FileNotFoundError:
            current = None
        if current != rendered:
            state = "missing" if current is None else "out of date"
            print(
                f"{relative} is {state}; regenerate it with: python -m edge.config.schema",
                file=sys.stderr,
            )
            return 1
        print(f"{relative} is up to date")
        return 0
    SCHEMA_PATH.write_text(rendered, encoding="utf-8")
    print(f"wrote {relative}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
