"""What is wrong with a site file, or worth a warning: the types every reader of one shares.

Pydantic-free, so the running gateway can take a site file's issues from the process that
validated it (edge/config/compiled.py) without loading the site model.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

from drivers.positions import YamlIssue

__all__ = ["ConfigError", "ConfigIssue", "ConfigWarning", "url_without_login"]

#: One mistake in a site file, with the place it was found: ``file:line:column: field: message``.
#: ``field`` is the dotted path of the setting (``devices[1].address``); it is empty when the
#: issue concerns the file as a whole (a YAML syntax error, an empty file). The same type as the
#: YAML loader's issues, so a syntax error and a wrong value read alike.
ConfigIssue = YamlIssue


def _issue_order(issue: ConfigIssue) -> tuple[int, int, str, str]:
    return (issue.line, issue.column, issue.field, issue.message)


class ConfigError(Exception):
    """The site file is not usable; ``issues`` lists every problem found, sorted by line."""

    def __init__(self, issues: Iterable[ConfigIssue]) -> None:
        self.issues: list[ConfigIssue] = sorted(issues, key=_issue_order)
        super().__init__(self.issues)

    def __str__(self) -> str:
        return "\n".join(str(issue) for issue in self.issues)


@dataclass(frozen=True, slots=True)
class ConfigWarning:
    """One warning, placed like a :class:`~edge.config.loader.ConfigIssue`."""

    file: str
    line: int
    column: int
    field: str
    message: str
    #: ``note``: what the loader did with a value (a threshold converted to its point's unit);
    #: printed, never taken as an error by ``--strict``.
    kind: Literal["warning", "note"] = "warning"

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}: {self.kind}: {self.field}: {self.message}"


def url_without_login(url: str) -> str:
    """``url`` without the user and password it may carry."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return parts._replace(netloc="***@" + parts.netloc.rpartition("@")[2]).geturl()
