"""Places in a file and the issues found at them, without a YAML parser.

:mod:`drivers.yamlpos` reads files into data with these positions; the running gateway takes
the issues of a site file from the process that validated it (edge/config/compiled.py) and
needs only these types, not PyYAML.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

__all__ = ["Position", "YamlIssue"]


class Position(NamedTuple):
    """1-based line and column in the file."""

    line: int
    column: int


@dataclass(frozen=True)
class YamlIssue:
    """One problem with the text, where it is: ``FILE:LINE:COL: field: message``.

    ``field`` is the dotted place (``devices[1].address``); empty for the file as a whole.
    """

    file: str
    line: int
    column: int
    field: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.column}"
        return (
            f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"
        )
