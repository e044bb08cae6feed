"""Site configuration: typed model, YAML loading with line numbers, JSON Schema.

The names below are loaded when first used, not with the package: the running gateway
imports the pydantic-free modules of this package (plain, compiled, behaviour, terms,
issues, duration) and must not load the site model with them (docs/architecture.md).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edge.config.issues import ConfigError, ConfigIssue
    from edge.config.loader import check_config_main, load_site, parse_site, report_config
    from edge.config.model import SiteConfig

__all__ = [
    "ConfigError",
    "ConfigIssue",
    "SiteConfig",
    "check_config_main",
    "load_site",
    "parse_site",
    "report_config",
]

_HOMES = {
    "ConfigError": "edge.config.issues",
    "ConfigIssue": "edge.config.issues",
    "SiteConfig": "edge.config.model",
    "check_config_main": "edge.config.loader",
    "load_site": "edge.config.loader",
    "parse_site": "edge.config.loader",
    "report_config": "edge.config.loader",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(home), name)
